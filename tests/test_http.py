"""The HTTP form of the wire protocol: `cic_fast.runtime.http` and `Client` over HTTP.

Servers run in this process on 127.0.0.1 port 0 (`HttpServer`, a thread per
connection); every socket has a timeout, so no test can hang. Tests that start a
server are marked ``slow``; the body checks of `HttpService` run without one.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from cic_fast.runtime import http as H  # noqa: E402
from cic_fast.runtime import messages as M  # noqa: E402
from cic_fast.runtime import wire as W  # noqa: E402
from cic_fast.runtime.server import Server  # noqa: E402
from threads import run_threads  # noqa: E402
from zoo import TIMEOUT_S, Setup, TwoBranch, assert_same  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Setup(TwoBranch(), torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return Setup(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32))


def http_server(setup: Setup, **kw) -> H.HttpServer:
    server_kw = {k: kw.pop(k) for k in list(kw) if k not in ("path", "max_connections")}
    server_kw.setdefault("timeout_s", TIMEOUT_S)
    srv = Server(setup.model, setup.x, graph=setup.graph, **server_kw)
    return H.HttpServer(srv, **kw).start()


def hello_frame(fingerprint: str) -> bytes:
    hello = M.encode_hello(fingerprint)
    return W.frame_header(W.MsgType.HELLO, len(hello)) + hello


def infer_body(setup: Setup, on: np.ndarray, fingerprint: str | None = None, rid: int = 7) -> bytes:
    """A valid request body for partition ``on`` (the head run here)."""
    from cic_fast.frontend.cutting import build_parts

    head, _, _ = build_parts(setup.graph, on)
    with torch.inference_mode():
        sent = head(setup.x)
    parts, n = M.encode_request(rid, on, dict(head.codec.flatten(sent)))
    fp = fingerprint or H.HttpService(Server(setup.graph)).fingerprint
    return hello_frame(fp) + W.frame_header(W.MsgType.INFER, n) + b"".join(bytes(p) for p in parts)


def post(address, body: bytes, *, path: str = "/infer", headers=None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT_S)
    try:
        hdrs = {"Content-Type": H.CONTENT_TYPE, **(headers or {})}
        conn.request("POST", path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def error_code(body: bytes) -> int:
    kind, n = W.parse_header(body[: W.HEADER.size], W.Limits())
    assert kind == W.MsgType.ERROR and n == len(body) - W.HEADER.size
    return M.decode_error(body[W.HEADER.size :], W.Limits()).code


def result_of(body: bytes) -> list:
    kind, n = W.parse_header(body[: W.HEADER.size], W.Limits())
    assert kind == W.MsgType.RESULT and n == len(body) - W.HEADER.size
    return M.decode_result(body[W.HEADER.size :], W.Limits())[2]


# -- addresses -------------------------------------------------------------------------


def test_parse_address():
    assert H.parse_address(("h", 7)) == (("h", 7), None)
    assert H.parse_address(["h", np.int64(7)]) == (("h", 7), None)
    (ep, target) = H.parse_address("http://example.org:8000/cic/infer")
    assert ep == ("example.org", 8000) and target is not None
    assert target.path == "/cic/infer" and target.url == "http://example.org:8000/cic/infer"
    assert H.parse_address("http://h")[0] == ("h", 80)
    assert H.parse_address("http://[::1]:9/")[0] == ("::1", 9)
    for bad in ("https://h:1/x", "h:1", "http://:1/", "http://h:99999/"):
        with pytest.raises(ValueError):
            H.parse_address(bad)
    with pytest.raises(TypeError):
        H.parse_address(7)


def test_client_takes_both_address_forms(tiny):
    with tiny.client(("127.0.0.1", 1)) as c:
        assert c.address == ("127.0.0.1", 1) and c.http is None
    with tiny.client("http://127.0.0.1:1/x") as c:
        assert c.address == "http://127.0.0.1:1/x" and c.endpoint == ("127.0.0.1", 1)
    with pytest.raises(ValueError, match="http://host:port/path"):
        tiny.client("ftp://h/x")


# -- the service, on bodies (no server started) -------------------------------------------


def test_service_answers_equal_local(tiny):
    svc = H.HttpService(Server(tiny.graph))
    for k in range(2, tiny.graph.n_nodes):
        on = tiny.prefix(k)
        answer = svc.handle(infer_body(tiny, on))
        assert answer.status == 200, answer.body()
        out = result_of(answer.body())
        ref = tiny.expected
        for a, b in zip(ref, out, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_service_refuses_bad_bodies(tiny):
    svc = H.HttpService(Server(tiny.graph))
    good = infer_body(tiny, tiny.prefix(3))
    fp = svc.fingerprint
    hello = hello_frame(fp)
    cases = {
        "empty": (b"", 400, W.ErrorCode.BAD_FRAME),
        "garbage": (b"x" * 40, 400, W.ErrorCode.BAD_FRAME),
        "no hello": (good[len(hello) :], 400, W.ErrorCode.NOT_READY),
        "truncated": (good[:-5], 400, W.ErrorCode.BAD_FRAME),
        "trailing": (good + b"\0", 400, W.ErrorCode.BAD_FRAME),
        "hello only": (hello, 400, W.ErrorCode.BAD_FRAME),
        "bad version": (hello + b"CICF\x02" + good[len(hello) + 5 :], 400, W.ErrorCode.BAD_VERSION),
        "fingerprint": (hello_frame("0" * 64) + good[len(hello) :], 409, W.ErrorCode.FINGERPRINT),
        "result frame": (
            hello + W.frame_header(W.MsgType.RESULT, 0),
            400,
            W.ErrorCode.UNKNOWN_TYPE,
        ),
        "frame too large": (
            hello + W.frame_header(W.MsgType.INFER, (64 << 20) + 1),
            413,
            W.ErrorCode.TOO_LARGE,
        ),
    }
    # a partition with a server node feeding a device node
    on = tiny.prefix(3)
    on[1] = False
    parts, n = M.encode_request(1, on, {})
    body = hello + W.frame_header(W.MsgType.INFER, n) + b"".join(bytes(p) for p in parts)
    cases["bad partition"] = (body, 422, W.ErrorCode.BAD_PARTITION)
    # the right partition, a tensor of the wrong shape
    parts, n = M.encode_request(1, tiny.prefix(3), {"x": torch.zeros(2, 2)})
    body = hello + W.frame_header(W.MsgType.INFER, n) + b"".join(bytes(p) for p in parts)
    cases["bad tensor"] = (body, 422, W.ErrorCode.BAD_TENSOR)
    parts, n = M.encode_request(1, tiny.prefix(3), {})
    body = hello + W.frame_header(W.MsgType.INFER, n) + b"".join(bytes(p) for p in parts)
    cases["missing tensor"] = (body, 422, W.ErrorCode.BAD_TENSOR)
    for name, (body, status, code) in cases.items():
        answer = svc.handle(body)
        assert (answer.status, answer.code) == (status, code), name
        assert error_code(answer.body()) == code, name
    assert svc.stats["errors"] == len(cases)
    assert svc.handle(good).status == 200  # the service is unharmed


def test_service_checks_length_before_reading(tiny):
    svc = H.HttpService(Server(tiny.graph, limits=W.Limits(max_frame_bytes=1000)))
    assert svc.refuse_length(str(svc.max_body_bytes)) is None
    assert svc.refuse_length(str(svc.max_body_bytes + 1)).status == 413
    assert svc.refuse_length(None).status == 411
    assert svc.refuse_length("12", chunked=True).status == 411
    assert svc.refuse_length("-3").status == 400
    assert svc.refuse_length("1e3").status == 400


def test_run_batch_equals_one_at_a_time(resnet):
    svc = H.HttpService(Server(resnet.graph))
    torch.manual_seed(3)
    for on in (resnet.all_server(), resnet.prefix(20), resnet.prefix(40)):
        reqs = []
        for i in range(5):
            body = bytearray(infer_body(resnet, on, rid=i))
            r = svc.parse(body)
            assert isinstance(r, H.Request)
            # different inputs per request: perturb the boundary tensors
            for t in r.tensors.values():
                if t.is_floating_point():
                    t.add_(torch.randn_like(t) * (i + 1))
            reqs.append(r)
        one = [svc.run(r, admit=False) for r in reqs]
        before = svc.stats["batches"]
        many = svc.run_batch(reqs)
        assert svc.stats["batches"] == before + 1, "the batch was not batched"
        for a, b in zip(one, many, strict=True):
            assert a.status == b.status == 200
            for u, v in zip(result_of(a.body()), result_of(b.body()), strict=True):
                torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
    # a mix of partitions: each group batched on its own, answers in order
    reqs = [
        svc.parse(infer_body(resnet, on, rid=i))
        for i, on in enumerate(
            [resnet.prefix(20), resnet.all_server(), resnet.prefix(20), resnet.all_server()]
        )
    ]
    answers = svc.run_batch(reqs)
    ids = [M.decode_result(a.body()[W.HEADER.size :], W.Limits())[0] for a in answers]
    assert ids == [0, 1, 2, 3]


def test_run_batch_one_at_a_time_when_not_batchable(tiny):
    """A model whose batch dimension is not 0 (or fixed) is never stacked."""

    class FixedBatch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(6, 6)

        def forward(self, x):
            return self.lin(x).reshape(1, 6).sum(0, keepdim=True) * 2

    torch.manual_seed(0)
    s = Setup(FixedBatch(), torch.randn(1, 6))
    svc = H.HttpService(Server(s.graph))
    on = s.prefix(2)
    reqs = [svc.parse(infer_body(s, on, rid=i)) for i in range(3)]
    answers = svc.run_batch(reqs)
    assert [a.status for a in answers] == [200] * 3
    assert svc.stats["batches"] == 0 and svc.stats["unbatchable"] == 1
    for a in answers:
        torch.testing.assert_close(result_of(a.body())[0], s.expected, rtol=0, atol=0)


# -- a server, and the Client over HTTP ---------------------------------------------------


@pytest.mark.slow
def test_round_trips_equal_local(tiny, resnet):
    for setup in (tiny, resnet):
        n = setup.graph.n_nodes
        with http_server(setup) as srv, setup.client(srv.url) as cli:
            ks = range(2, n) if n < 20 else range(2, n, max(1, n // 8))
            for on in [setup.all_server(), *(setup.prefix(k) for k in ks)]:
                out = cli.infer_partition(on, setup.x)
                assert_same(setup.expected, out)
                assert cli.last.path == "offload", cli.last.error
                assert np.array_equal(cli.last.partition.on_device, on)
            assert_same(setup.expected, cli.infer(setup.x))  # the planner's decision
            assert cli.probe() is not None  # PROBE frames over HTTP
            for out in cli.stream([setup.x] * 6, on_device=setup.prefix(3)):
                assert_same(setup.expected, out)
            assert cli.last.path == "offload"
            assert srv.service.stats["errors"] == 0


@pytest.mark.slow
def test_malformed_bodies_get_4xx_and_the_server_goes_on(tiny):
    with http_server(tiny, limits=W.Limits(max_frame_bytes=1 << 20)) as srv:
        addr = srv.address
        good = infer_body(tiny, tiny.prefix(3))
        status, body = post(addr, b"\0" * 30)
        assert status == 400 and error_code(body) == W.ErrorCode.BAD_FRAME
        status, body = post(addr, good, path="/elsewhere")
        assert status == 404
        status, body = post(addr, good[:-3])
        assert status == 400 and error_code(body) == W.ErrorCode.BAD_FRAME
        # oversized: refused from the header alone, the body is never sent
        with socket.create_connection(addr, timeout=TIMEOUT_S) as s:
            s.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
            answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 413")
        # chunked: no length to check first
        with socket.create_connection(addr, timeout=TIMEOUT_S) as s:
            s.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 411")
        # truncated: the body stops short and the client hangs up
        with socket.create_connection(addr, timeout=TIMEOUT_S) as s:
            s.sendall(
                b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + good[:100]
            )
            s.shutdown(socket.SHUT_WR)
            assert s.recv(65536).startswith(b"HTTP/1.1 400")
        # garbage instead of HTTP
        with socket.create_connection(addr, timeout=TIMEOUT_S) as s:
            s.sendall(b"\x00\x01garbage\r\n\r\n")
            s.recv(65536)
        status, body = post(addr, good)
        assert status == 200
        assert_same(tiny.expected, tuple(result_of(body)))


@pytest.mark.slow
def test_fingerprint_mismatch_is_refused_and_answered_locally(tiny):
    torch.manual_seed(5)
    other = Setup(TwoBranch(), tiny.x)  # other weights, same architecture
    with http_server(tiny) as srv, other.client(srv.url) as cli:
        out = cli.infer_partition(other.prefix(3), other.x)
        assert_same(other.expected, out)
        rec = cli.last
        assert rec.fallback and rec.path == "fallback-local"
        assert "FINGERPRINT" in rec.error
        assert srv.service.stats["errors"] >= 1


@pytest.mark.slow
def test_server_down_busy_and_error_pages_fall_back(tiny):
    # nothing listens
    port = H.free_port()
    with tiny.client(f"http://127.0.0.1:{port}/infer", retry_s=0.0) as cli:
        assert_same(tiny.expected, cli.infer_partition(tiny.prefix(3), tiny.x))
        assert cli.last.path == "fallback-local"

    # a proxy's own 500 page (not a frame), then a server that never answers
    def fake(sock: socket.socket, reply: bytes | None, stop: threading.Event) -> None:
        sock.settimeout(0.1)
        conns = []
        while not stop.is_set():
            try:
                c, _ = sock.accept()
            except TimeoutError:
                continue
            conns.append(c)
            if reply is not None:
                c.settimeout(TIMEOUT_S)
                c.recv(1 << 20)
                c.sendall(reply)
        for c in conns:
            c.close()

    page = b"Internal Server Error"
    replies = [
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n" % len(page) + page,
        None,
    ]
    for reply in replies:
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            stop = threading.Event()
            t = threading.Thread(target=fake, args=(lsock, reply, stop), daemon=True)
            t.start()
            url = f"http://127.0.0.1:{lsock.getsockname()[1]}/infer"
            try:
                with tiny.client(url, timeout_s=1.0) as cli:
                    t0 = time.monotonic()
                    assert_same(tiny.expected, cli.infer_partition(tiny.prefix(3), tiny.x))
                    assert cli.last.fallback, cli.last
                    if reply is None:  # the deadline (no estimate: nothing to hedge on)
                        assert "timed out" in cli.last.error
                        assert time.monotonic() - t0 < 3.0
                    else:
                        assert "HTTP 500" in cli.last.error
            finally:
                stop.set()
                t.join(2)

    # BUSY: one worker, no queue, concurrent clients: every answer still right
    with http_server(tiny, workers=1, queue_size=0) as srv:
        clients = [tiny.client(srv.url, retry_s=0.0, hedge_margin_s=None) for _ in range(4)]

        paths: list[str] = []

        def work(i: int) -> None:
            for _ in range(15):
                assert_same(tiny.expected, clients[i].infer_partition(tiny.all_server(), tiny.x))
                paths.append(clients[i].last.path)

        run_threads(work, 4)
        for c in clients:
            c.close()
        assert set(paths) <= {"offload", "fallback-local"}
        assert "offload" in paths
        if "fallback-local" in paths:
            assert srv.service.stats["busy"] > 0


@pytest.mark.slow
def test_too_many_connections_is_busy(tiny):
    with http_server(tiny, max_connections=1) as srv:
        with socket.create_connection(srv.address, timeout=TIMEOUT_S) as hold:
            time.sleep(0.2)  # the first connection holds the only slot
            with socket.create_connection(srv.address, timeout=TIMEOUT_S) as s:
                answer = b""
                while chunk := s.recv(65536):  # answered at once, then closed
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 503")
            assert error_code(answer.split(b"\r\n\r\n", 1)[1]) == W.ErrorCode.BUSY
            hold.close()
        time.sleep(0.3)
        status, _ = post(srv.address, infer_body(tiny, tiny.prefix(3)))
        assert status == 200


def test_frame_prefix_counts_in_send_frame():
    a, b = socket.socketpair()
    with a, b:
        n = W.send_frame(a, W.MsgType.PROBE, [b"abc"], prefix=b"XY")
        assert n == 2 + W.HEADER.size + 3
        got = b.recv(100)
        assert got[:2] == b"XY" and struct.unpack("<I", got[10:14])[0] == 3


@pytest.mark.slow
def test_loadtest_cli_against_tcp_and_http(tmp_path, capsys):
    from cic_fast.cli import main

    torch.manual_seed(1)
    setup = Setup(torchvision.models.squeezenet1_1(), torch.randn(1, 3, 32, 32))
    weights = tmp_path / "w.pt"
    torch.save(setup.model.state_dict(), weights)
    model = ["torchvision:squeezenet1_1", "--weights", str(weights), "--input-shape", "1,3,32,32"]
    with setup.server() as tcp, http_server(setup) as web:
        host, port = tcp.address
        for address, partition in ((f"{host}:{port}", "server"), (web.url, "features_2")):
            report = tmp_path / "r.json"
            argv = ["loadtest", *model, "--address", address, "--devices", "3"]
            argv += ["--duration-s", "1.5", "--partition", partition, "--json", str(report)]
            assert main([*argv, "--quiet"]) == 0
            out = capsys.readouterr().out
            assert "first answer equals the model's: True" in out, out
            import json

            r = json.loads(report.read_text())
            assert r["requests"] > 0 and r["errors"] == {} and r["p99_ms"] >= r["p50_ms"]
        # bounded by the request count too
        argv = ["loadtest", *model, "--address", web.url, "--devices", "2"]
        assert main([*argv, "--duration-s", "30", "--max-requests", "5", "--quiet"]) == 0
        assert " 5 answers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["loadtest", *model])  # --address is required
    assert main(["loadtest", *model, "--address", "nohost", "--quiet"]) == 2


class _BusyServer:
    """A TCP server of the session protocol that accepts the handshake, then answers
    every request BUSY; with ``http``, an HTTP server answering every POST with a
    proxy's own 503 page (text, not a frame), as Ray Serve's proxy does when its
    queue is full. It counts the requests."""

    def __init__(self, http: bool = False) -> None:
        self.http = http
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.requests = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _http_session(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        data = b""
        with conn:
            while not self.stop.is_set():
                try:
                    chunk = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    head, _, rest = data.partition(b"\r\n\r\n")
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(rest) < n:
                        break
                    data = rest[n:]
                    with self.lock:
                        self.requests += 1
                    conn.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: 4\r\n\r\nfull"
                    )

    def _session(self, conn: socket.socket) -> None:
        if self.http:
            return self._http_session(conn)
        limits = W.Limits()
        conn.settimeout(0.2)
        with conn:
            while not self.stop.is_set():
                try:
                    kind, _ = W.recv_frame(conn, limits)
                except TimeoutError:
                    continue
                except (OSError, EOFError, W.ProtocolError):
                    return
                if kind == W.MsgType.HELLO:
                    reply = M.encode_hello("any")
                    conn.sendall(W.frame_header(W.MsgType.HELLO_OK, len(reply)) + reply)
                    continue
                with self.lock:
                    self.requests += 1
                err = M.encode_error(W.ErrorCode.BUSY, "full")
                conn.sendall(W.frame_header(W.MsgType.ERROR, len(err)) + err)

    def close(self) -> None:
        self.stop.set()
        self.acceptor.join(timeout=5)
        self.sock.close()


def test_backoff_doubles_with_jitter_and_a_cap():
    import random

    from cic_fast.runtime.client import backoff_s

    rng = random.Random(0)
    assert backoff_s(0, 1.0, 60.0, rng) == 0.0
    for failures, base in ((1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (500, 60.0)):
        waits = [backoff_s(failures, 1.0, 60.0, rng) for _ in range(200)]
        assert 0.5 * base <= min(waits) and max(waits) < 1.5 * base
        assert max(waits) - min(waits) > 0.5 * base  # jittered, not in step


def test_loadtest_devices_back_off_after_busy_as_a_client_does():
    """A BUSY server is not hit by a loop of refusals: each device waits as the
    Client would (0.5 x, 1 x, 2 x ... retry_s), so 4 devices over 1.2 s with
    retry_s 0.2 send at most 4 requests each (waits >= 0.1, 0.2, 0.4, 0.8 s);
    with retry_s 0 they resend at once."""
    from cic_fast.cli.loadtest import run_load

    torch.manual_seed(1)
    setup = Setup(torchvision.models.squeezenet1_1(), torch.randn(1, 3, 32, 32))
    busy = _BusyServer()
    try:
        host, port = busy.address
        r = run_load(
            f"{host}:{port}", setup.graph, (setup.x,), devices=4, duration_s=1.2, retry_s=0.2
        )
        assert r["requests"] == 0 and r["errors"] == {"BUSY": busy.requests}
        assert 4 <= busy.requests <= 16, busy.requests
        before = busy.requests
        r = run_load(
            f"{host}:{port}", setup.graph, (setup.x,), devices=4, duration_s=0.5, retry_s=0.0
        )
        assert busy.requests - before > 50 and r["errors"]["BUSY"] == busy.requests - before
    finally:
        busy.close()
    # a proxy's 503 page is BUSY too (the connection is kept)
    page = _BusyServer(http=True)
    try:
        host, port = page.address
        r = run_load(
            f"http://{host}:{port}/cic",
            setup.graph,
            (setup.x,),
            devices=2,
            duration_s=0.8,
            retry_s=0.2,
        )
        assert r["errors"] == {"BUSY": page.requests} and 2 <= page.requests <= 8
    finally:
        page.close()
    with pytest.raises(ValueError, match="retry-s"):
        run_load("127.0.0.1:1", setup.graph, (setup.x,), devices=1, duration_s=1, retry_s=-1)


def test_ray_serve_options_bound_the_queue():
    from cic_fast.runtime.ray_serve import ServeOptions

    assert ServeOptions().queued == 16 and ServeOptions(replicas=3).queued == 48
    assert ServeOptions(max_queued=-1).queued == -1  # Ray's own default: no bound
    assert ServeOptions(max_batch=1).ongoing == 8 and ServeOptions(max_batch=8).ongoing == 16
    for bad in ({"max_queued": 0}, {"max_queued": -2}, {"max_ongoing": 0}, {"replicas": 0}):
        with pytest.raises(ValueError):
            ServeOptions(**bad)
