"""Wire format (cic_fast.runtime.wire, .messages) and the server's behaviour on bad frames.

Unit tests: messages round-trip for every dtype and shape; every truncation and
random mutation of a valid payload raises ProtocolError and nothing else
(hypothesis).  Live tests: a Server on 127.0.0.1 port 0 receives malformed,
truncated, oversized, unknown and hypothesis-generated frames over raw sockets; it
answers with an ERROR frame or closes the connection, and a good client is still
served afterwards.  Every socket has a timeout.  The live tests are marked ``slow``.
"""

from __future__ import annotations

import contextlib
import socket
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
nn = torch.nn

from cic_fast.frontend.cutting import build_parts  # noqa: E402
from cic_fast.frontend.profiling import Profile  # noqa: E402
from cic_fast.frontend.tracing import trace  # noqa: E402
from cic_fast.runtime import messages as M  # noqa: E402
from cic_fast.runtime import wire as W  # noqa: E402
from cic_fast.runtime.client import Client  # noqa: E402
from cic_fast.runtime.server import Server  # noqa: E402

TIMEOUT_S = 5.0
LIMITS = W.Limits(max_frame_bytes=1 << 20, max_tensor_bytes=1 << 20)
DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


# -- pure encoding -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4), (1, 1, 1, 1, 5)])
def test_tensor_round_trip(dtype, shape):
    t = (torch.arange(int(np.prod(shape)), dtype=torch.float64) - 3).reshape(shape).to(dtype)
    parts, n = M.encode_request(7, [True, False, True], {"x": t, "y": t.clone()})
    payload = b"".join(bytes(p) for p in parts)
    assert len(payload) == n
    rid, on, tensors = M.decode_request(bytearray(payload), LIMITS)
    assert rid == 7 and on.tolist() == [True, False, True]
    for k in ("x", "y"):
        assert tensors[k].dtype == dtype and tensors[k].shape == t.shape
        assert torch.equal(tensors[k], t)


def test_non_contiguous_and_result_round_trip():
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()
    parts, _ = M.encode_result(3, 0.25, [t, t[1:, ::2]])
    rid, server_s, leaves = M.decode_result(b"".join(bytes(p) for p in parts), LIMITS)
    assert (rid, server_s) == (3, 0.25)
    assert torch.equal(leaves[0], t) and torch.equal(leaves[1], t[1:, ::2])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 200])
def test_mask_round_trip(n):
    on = np.random.default_rng(n).random(n) < 0.5
    data = W.pack_mask(on)
    assert len(data) == (n + 7) // 8
    assert np.array_equal(W.unpack_mask(data, n), on)


def test_mask_padding_bits_refused():
    with pytest.raises(W.ProtocolError, match="padding"):
        W.unpack_mask(b"\xff", 3)


def test_hello_error_round_trip():
    fp, limit = M.decode_hello(M.encode_hello("ab" * 32, 1234), LIMITS, reply=True)
    assert fp == "ab" * 32 and limit == 1234
    e = M.decode_error(M.encode_error(W.ErrorCode.BAD_TENSOR, "nope"), LIMITS)
    assert e.code == W.ErrorCode.BAD_TENSOR and "BAD_TENSOR" in str(e) and "nope" in str(e)


def test_non_tensor_and_unsupported_dtype_refused():
    with pytest.raises(TypeError):
        M.encode_request(1, [True], {"x": 3})
    with pytest.raises(TypeError):
        M.encode_request(1, [True], {"x": torch.zeros(2, dtype=torch.complex64)})


def _request_payload() -> bytes:
    t = torch.randn(2, 3)
    parts, _ = M.encode_request(1, [True, True, False], {"a": t, "b": t.to(torch.int8)})
    return b"".join(bytes(p) for p in parts)


def test_every_truncation_raises_protocol_error():
    payload = _request_payload()
    for k in range(len(payload)):
        with pytest.raises(W.ProtocolError):
            M.decode_request(bytearray(payload[:k]), LIMITS)
    with pytest.raises(W.ProtocolError, match="trailing"):
        M.decode_request(bytearray(payload + b"\0"), LIMITS)


def test_limits_checked_before_allocation():
    # a tensor header claiming 2**32-1 x 2**32-1 float64: refused, nothing allocated
    head = struct.pack("<QI", 1, 1) + W.pack_mask([True]) + struct.pack("<I", 1)
    tensor = (
        struct.pack("<H", 1)
        + b"x"
        + struct.pack("<BB", 4, 2)
        + struct.pack("<II", *[2**32 - 1] * 2)
    )
    with pytest.raises(W.ProtocolError) as e:
        M.decode_request(bytearray(head + tensor), LIMITS)
    assert e.value.code == W.ErrorCode.TOO_LARGE
    many = struct.pack("<QI", 1, 1) + W.pack_mask([True]) + struct.pack("<I", 10**9)
    with pytest.raises(W.ProtocolError) as e:
        M.decode_request(bytearray(many), LIMITS)
    assert e.value.code == W.ErrorCode.TOO_LARGE
    huge_mask = struct.pack("<QI", 1, 2**31)
    with pytest.raises(W.ProtocolError) as e:
        M.decode_request(bytearray(huge_mask), LIMITS)
    assert e.value.code == W.ErrorCode.TOO_LARGE


def test_bad_bool_bytes_refused():
    head = struct.pack("<QI", 1, 1) + W.pack_mask([True]) + struct.pack("<I", 1)
    tensor = struct.pack("<H", 1) + b"x" + struct.pack("<BB", 10, 1) + struct.pack("<I", 2)
    with pytest.raises(W.ProtocolError, match="bool"):
        M.decode_request(bytearray(head + tensor + b"\x01\x07"), LIMITS)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (struct.pack("<4sBBHI", b"XXXX", 1, 3, 0, 0), W.ErrorCode.BAD_FRAME),
        (struct.pack("<4sBBHI", b"CICF", 9, 3, 0, 0), W.ErrorCode.BAD_VERSION),
        (struct.pack("<4sBBHI", b"CICF", 1, 99, 0, 0), W.ErrorCode.UNKNOWN_TYPE),
        (struct.pack("<4sBBHI", b"CICF", 1, 3, 1, 0), W.ErrorCode.BAD_FRAME),
        (struct.pack("<4sBBHI", b"CICF", 1, 3, 0, 2**32 - 1), W.ErrorCode.TOO_LARGE),
    ],
)
def test_parse_header_errors(header, code):
    with pytest.raises(W.ProtocolError) as e:
        W.parse_header(header, LIMITS)
    assert e.value.code == code


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzzed_payloads_raise_only_protocol_error(data):
    payload = bytearray(_request_payload())
    kind = data.draw(st.sampled_from(["flip", "cut", "random"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(payload) - 1))
            payload[i] = data.draw(st.integers(0, 255))
    elif kind == "cut":
        payload = payload[: data.draw(st.integers(0, len(payload)))]
    else:
        payload = bytearray(data.draw(st.binary(max_size=200)))
    for decode in (M.decode_request, M.decode_result):
        with contextlib.suppress(W.ProtocolError):
            decode(bytearray(payload), LIMITS)
    with contextlib.suppress(W.ProtocolError):
        M.decode_hello(payload, LIMITS)
    with contextlib.suppress(W.ProtocolError):
        M.decode_error(payload, LIMITS)


_LAYOUT_DTYPES = ["float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8"]


def _tensor_lists():
    leaf = st.tuples(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6),
        st.sampled_from(_LAYOUT_DTYPES),
        st.lists(st.integers(0, 4), max_size=3).map(tuple),
    )
    return st.lists(leaf, max_size=4, unique_by=lambda x: x[0])


def _random_tensor(dtype: str, shape: tuple[int, ...], rng: np.random.Generator):
    t = torch.from_numpy(rng.integers(-100, 100, size=shape).astype(dtype))
    return t if shape else t.reshape(())


@settings(max_examples=300, deadline=None)
@given(_tensor_lists(), _tensor_lists(), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_tensor_layout_reads_exactly_what_read_tensors_reads(leaves, other, trim, seed):
    """`TensorLayout.read` (the server's shortcut) against the field-by-field parser.

    For the layout's own tensors it returns what `read_tensors` returns, bit for
    bit; for any other tensor list (other names, order, dtypes, shapes; one byte
    short or long) it returns None, so the full parser handles (or refuses) it.
    """
    rng = np.random.default_rng(seed)
    layout = W.TensorLayout(leaves, LIMITS)
    assert layout.usable
    for sent in (leaves, other, list(reversed(leaves))):
        tensors = [(n, _random_tensor(d, s, rng)) for n, d, s in sent]
        parts, _ = W.encode_tensors(tensors)
        data = b"xy" + b"".join(bytes(memoryview(p).cast("B")) for p in parts)
        for payload in (data, data[: len(data) - trim], data + bytes(trim)):
            got = layout.read(memoryview(payload), 2)
            exact = sent == leaves and len(payload) == len(data)
            if not exact:
                assert got is None
                continue
            assert got is not None
            r = W.Reader(memoryview(payload)[2:], LIMITS)
            want = W.read_tensors(r)
            r.end()
            assert list(got) == [n for n, _ in want]
            for (_, w), g in zip(want, got.values(), strict=True):
                assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w)


def test_tensor_layout_not_usable_where_read_tensors_checks_more():
    # bool (bytes must be 0 or 1), bfloat16 (no numpy view), unknown shape or dtype,
    # duplicate names, and anything over the reader's limits go to the full parser
    small = W.Limits(max_tensor_bytes=64, max_ndim=2, max_tensors=2, max_name_bytes=3)
    for leaves in (
        [("a", "bool", (2,))],
        [("a", "bfloat16", (2,))],
        [("a", None, (2,))],
        [("a", "float32", None)],
        [("a", "float32", (2,)), ("a", "float32", (2,))],
        [("a", "float32", (17,))],
        [("a", "float32", (1, 1, 1))],
        [("abcd", "float32", (1,))],
        [("a", "int8", ()), ("b", "int8", ()), ("c", "int8", ())],
    ):
        layout = W.TensorLayout(leaves, small)
        assert not layout.usable, leaves
        assert layout.read(memoryview(bytes(64)), 0) is None
    assert W.TensorLayout([("a", "float32", (16,)), ("b", "int8", ())], small).usable


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 200_000), min_size=1, max_size=6),
    st.lists(st.integers(256, 150_000), min_size=1, max_size=8),
)
def test_socket_reader_event_loop_reads_return_every_frame_whole(sizes, chunks):
    """recv_nowait / buffered_frame / consume / reserve / shrink, as the server's loop uses them.

    Frames of any size (some larger than the 4 KiB buffer, which grows to hold one
    and shrinks back after) arrive in arbitrary chunks; each comes out whole and in
    order, and nothing is lost between them.
    """
    frames = [
        W.frame_header(W.MsgType.PROBE, n) + bytes([i % 251]) * n for i, n in enumerate(sizes)
    ]
    data = b"".join(frames)
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        reader = W.SocketReader(b, LIMITS, bufsize=4096)
        got: list[bytes] = []
        sent = 0
        for k in range(100_000):  # bounded: each turn moves bytes or frames along
            if len(got) == len(frames):
                break
            if sent < len(data):
                with contextlib.suppress(BlockingIOError):  # the socket is full: read first
                    sent += a.send(data[sent : sent + chunks[k % len(chunks)]])
            while reader.recv_nowait():
                pass
            while (fr := reader.buffered_frame()) is not None:
                kind, payload = fr
                assert kind == W.MsgType.PROBE
                got.append(W.frame_header(kind, payload.nbytes) + bytes(payload))
                reader.consume(W.HEADER.size + payload.nbytes)
                reader.shrink()
                assert reader.capacity == 4096 or reader.buffered > 4096
            size = reader.next_frame_bytes()
            if size is not None and size > reader.capacity:
                reader.reserve(size)
        assert got == frames
        assert reader.buffered == 0 and reader.capacity == 4096


# -- a live server -----------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


@pytest.fixture(scope="module")
def live():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = trace(model, x)
    srv = Server(model, x, graph=graph, limits=LIMITS, timeout_s=2.0).start()
    yield model, x, graph, srv
    srv.close()


def _raw(srv: Server) -> socket.socket:
    return socket.create_connection(srv.address, timeout=TIMEOUT_S)


def _hello(sock: socket.socket, fp: str) -> None:
    W.send_frame(sock, W.MsgType.HELLO, [M.encode_hello(fp)])
    kind, payload = W.recv_frame(sock, LIMITS)
    assert kind == W.MsgType.HELLO_OK, payload
    assert M.decode_hello(payload, LIMITS, reply=True)[0] == fp


def _expect_error(sock: socket.socket, code: W.ErrorCode) -> None:
    kind, payload = W.recv_frame(sock, LIMITS)
    assert kind == W.MsgType.ERROR
    err = M.decode_error(payload, LIMITS)
    assert err.code == code, err


def _expect_closed(sock: socket.socket) -> None:
    with pytest.raises((EOFError, ConnectionError)):
        W.recv_frame(sock, LIMITS)


def _still_serving(live) -> None:
    model, x, graph, srv = live
    dev = Profile.from_times(graph, np.full(graph.n_nodes, 1e-3))
    with Client(
        model,
        x,
        srv.address,
        device_profile=dev,
        server_profile=dev.scaled(0.1),
        graph=graph,
        bandwidth_bps=1e12,
        timeout_s=TIMEOUT_S,
    ) as cli:
        out = cli.infer(x)
        assert cli.last is not None and not cli.last.fallback, cli.last.error
        with torch.inference_mode():
            assert torch.equal(out, model(x))


def _request(graph, on, tensors) -> list:
    parts, _ = M.encode_request(1, on, tensors)
    return parts


def _all_server(graph) -> np.ndarray:
    on = np.zeros(graph.n_nodes, dtype=bool)
    on[graph.inputs] = True
    return on


@pytest.mark.slow
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", W.ErrorCode.BAD_FRAME),
        (struct.pack("<4sBBHI", b"CICF", 2, 1, 0, 0), W.ErrorCode.BAD_VERSION),
        (struct.pack("<4sBBHI", b"CICF", 1, 77, 0, 0), W.ErrorCode.UNKNOWN_TYPE),
        (struct.pack("<4sBBHI", b"CICF", 1, 1, 0, 2**31), W.ErrorCode.TOO_LARGE),
        (W.frame_header(W.MsgType.INFER, 0), W.ErrorCode.NOT_READY),
        (W.frame_header(W.MsgType.HELLO, 3) + b"\x01\x00\xff", W.ErrorCode.BAD_FRAME),
    ],
)
def test_bad_first_frame_error_then_close(live, raw, code):
    with _raw(live[3]) as s:
        s.sendall(raw)
        _expect_error(s, code)
        _expect_closed(s)
    _still_serving(live)


@pytest.mark.slow
def test_fingerprint_mismatch_error_frame(live):
    with _raw(live[3]) as s:
        W.send_frame(s, W.MsgType.HELLO, [M.encode_hello("0" * 64)])
        _expect_error(s, W.ErrorCode.FINGERPRINT)
        _expect_closed(s)
    _still_serving(live)


@pytest.mark.slow
def test_request_errors_keep_the_connection(live):
    model, x, graph, srv = live
    head, _, _ = build_parts(graph, _all_server(graph))
    with torch.inference_mode():
        good = head(x)
    name = next(iter(good))
    with _raw(srv) as s:
        _hello(s, srv.fingerprint)
        # input on the server
        W.send_frame(s, W.MsgType.INFER, _request(graph, np.zeros(graph.n_nodes, bool), good))
        _expect_error(s, W.ErrorCode.BAD_PARTITION)
        # everything on the device: nothing to do
        W.send_frame(s, W.MsgType.INFER, _request(graph, np.ones(graph.n_nodes, bool), good))
        _expect_error(s, W.ErrorCode.BAD_PARTITION)
        # not closed under predecessors: conv on the server, relu on the device
        on = _all_server(graph)
        on[graph.names.index("relu")] = True
        W.send_frame(s, W.MsgType.INFER, _request(graph, on, good))
        _expect_error(s, W.ErrorCode.BAD_PARTITION)
        # wrong mask length
        W.send_frame(s, W.MsgType.INFER, _request(graph, _all_server(graph)[:-1], good))
        _expect_error(s, W.ErrorCode.BAD_PARTITION)
        # wrong tensor shape, dtype, name
        for bad in (
            {name: torch.zeros(1, 3, 4, 4)},
            {name: good[name].double()},
            {"nope": good[name]},
            {},
        ):
            W.send_frame(s, W.MsgType.INFER, _request(graph, _all_server(graph), bad))
            _expect_error(s, W.ErrorCode.BAD_TENSOR)
        # and the same connection still works
        W.send_frame(s, W.MsgType.INFER, _request(graph, _all_server(graph), good))
        kind, payload = W.recv_frame(s, LIMITS)
        assert kind == W.MsgType.RESULT
        _, _, leaves = M.decode_result(payload, LIMITS)
        with torch.inference_mode():
            assert torch.equal(leaves[0], model(x))
        # probe
        W.send_frame(s, W.MsgType.PROBE, [bytes(1000)])
        kind, payload = W.recv_frame(s, LIMITS)
        assert kind == W.MsgType.PROBE_OK and struct.unpack("<Q", payload)[0] == 1000
        # a server-to-client frame type from a client: refused, closed
        W.send_frame(s, W.MsgType.RESULT, [b""])
        _expect_error(s, W.ErrorCode.UNKNOWN_TYPE)
        _expect_closed(s)
    _still_serving(live)


@pytest.mark.slow
def test_oversized_tensor_after_hello(live):
    srv = live[3]
    with _raw(srv) as s:
        _hello(s, srv.fingerprint)
        s.sendall(W.frame_header(W.MsgType.INFER, LIMITS.max_frame_bytes + 1))
        _expect_error(s, W.ErrorCode.TOO_LARGE)
        _expect_closed(s)
    _still_serving(live)


@pytest.mark.slow
def test_truncated_frames_then_hangup(live):
    _, x, graph, srv = live
    head, _, _ = build_parts(graph, _all_server(graph))
    with torch.inference_mode():
        good = head(x)
    parts = _request(graph, _all_server(graph), good)
    payload = b"".join(bytes(p) for p in parts)
    frame = W.frame_header(W.MsgType.INFER, len(payload)) + payload
    for cut in (1, 11, 12, 40, len(frame) - 1):
        with _raw(srv) as s:
            _hello(s, srv.fingerprint)
            s.sendall(frame[:cut])
    _still_serving(live)


@pytest.mark.slow
def test_stalled_client_is_dropped(live):
    """A client that sends half a frame and waits is dropped after the server timeout."""
    srv = live[3]
    with _raw(srv) as s:
        _hello(s, srv.fingerprint)
        s.sendall(W.frame_header(W.MsgType.INFER, 100)[:5])
        _still_serving(live)  # others are served meanwhile
        s.settimeout(srv.timeout_s + 3)
        _expect_closed(s)


@pytest.mark.slow
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    after_hello=st.booleans(),
    msg_type=st.integers(0, 255),
    body=st.binary(max_size=300),
    claim=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_fuzzed_frames_leave_server_serving(live, after_hello, msg_type, body, claim):
    srv = live[3]
    with _raw(srv) as s:
        if after_hello:
            _hello(s, srv.fingerprint)
        length = len(body) if claim is None else claim
        with contextlib.suppress(OSError):  # the server may have hung up already
            s.sendall(struct.pack("<4sBBHI", b"CICF", 1, msg_type, 0, length) + body)
            s.shutdown(socket.SHUT_WR)
        # whatever the server does, it answers or closes within its timeout
        with contextlib.suppress(W.ProtocolError, OSError, EOFError):
            while True:
                kind, _ = W.recv_frame(s, LIMITS)
                if kind == W.MsgType.ERROR:
                    break
    assert srv.running


@pytest.mark.slow
def test_server_alive_after_fuzz(live):
    _still_serving(live)
    assert live[3].stats["requests"] >= 1


# -- deadlines and bounded buffers (blocking socket I/O) ---------------------------------


def test_recv_frame_deadline_is_for_the_whole_frame():
    # A peer trickling one byte every 0.1 s never trips a per-recv timeout of 1 s;
    # the deadline bounds the frame as a whole.
    import threading
    import time

    a, b = socket.socketpair()
    a.settimeout(1.0)
    stop = threading.Event()

    def trickle() -> None:
        b.sendall(W.frame_header(W.MsgType.PROBE, 100))
        while not stop.wait(0.1):
            try:
                b.sendall(b"x")
            except OSError:
                return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="deadline"):
            W.recv_frame(a, W.Limits(), deadline=t0 + 0.5)
        assert time.monotonic() - t0 < 0.9  # not 100 x 0.1 s
        assert a.gettimeout() == 1.0  # the socket's own timeout is restored
    finally:
        stop.set()
        a.close()
        b.close()
        t.join(2)


def test_recv_frame_max_payload_refuses_before_reading():
    a, b = socket.socketpair()
    try:
        b.sendall(W.frame_header(W.MsgType.HELLO, 5000) + b"y" * 100)
        with pytest.raises(W.ProtocolError, match="over the limit of 512") as e:
            W.recv_frame(a, W.Limits(), max_payload=512)
        assert e.value.code == W.ErrorCode.TOO_LARGE
    finally:
        a.close()
        b.close()


def test_a_claimed_large_frame_costs_nothing_until_its_bytes_arrive():
    import tracemalloc

    a, b = socket.socketpair()
    try:
        b.sendall(W.frame_header(W.MsgType.PROBE, 60 << 20) + b"z" * 1000)
        b.close()
        tracemalloc.start()
        try:
            with pytest.raises(ConnectionError, match="1000 of 62914560"):
                W.recv_frame(a, W.Limits())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, peak  # at most the first 1 MiB, not 60 MiB
    finally:
        a.close()


def test_send_frame_deadline():
    import time

    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):  # nobody reads b: the buffers fill up
            W.send_frame(a, W.MsgType.PROBE, [bytes(32 << 20)], deadline=t0 + 0.3)
        assert time.monotonic() - t0 < 2.0
    finally:
        a.close()
        b.close()
