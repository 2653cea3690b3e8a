"""Client.stream: frames pipelined device | link | server over one connection.

End to end (a Server on 127.0.0.1 port 0 in this process, every socket with a
timeout): outputs equal the model's, in frame order, for a forced partition, for
per-frame Planner decisions (that change from frame to frame), for an all-device
stream and for two-input, dict-output frames; on a server closed mid-stream, an
error answer, or a server that never answers, every frame is still answered with
the model's output, the failed ones on the device; ``device_runner`` sees every
device computation. No assertion depends on how fast this machine is: times are
only compared with the sleeps the test itself adds.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from cic_fast.core.cost import sent_set  # noqa: E402
from cic_fast.core.planner import Planner  # noqa: E402
from cic_fast.evaluation.worker import slowed_runner  # noqa: E402
from cic_fast.frontend.profiling import Profile  # noqa: E402
from cic_fast.frontend.tracing import trace  # noqa: E402
from cic_fast.runtime import messages as M  # noqa: E402
from cic_fast.runtime import wire as W  # noqa: E402
from cic_fast.runtime.client import Client  # noqa: E402
from cic_fast.runtime.server import Server  # noqa: E402
from zoo import TwoBranch, TwoInTwoOut, assert_same  # noqa: E402

TIMEOUT_S = 5.0
N_FRAMES = 6


class Setup:
    """A traced model, its Planner (device 10x slower), distinct frames and their outputs."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = TwoBranch().eval()
        self.graph = trace(self.model, torch.randn(1, 3, 32, 32))
        n = self.graph.n_nodes
        dev = Profile.from_times(self.graph, np.full(n, 1e-3))
        self.planner = Planner.from_profiles(self.graph, dev, dev.scaled(0.1))
        self.frames = [torch.randn(1, 3, 32, 32) for _ in range(N_FRAMES)]
        with torch.inference_mode():
            self.expected = [self.model(f) for f in self.frames]

    def client(self, address, **kw) -> Client:
        kw.setdefault("timeout_s", TIMEOUT_S)
        return Client(self.graph, address=address, planner=self.planner, **kw)

    def prefix(self, k: int) -> np.ndarray:
        on = np.zeros(self.graph.n_nodes, dtype=bool)
        on[:k] = True
        return on


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


@pytest.fixture
def server(setup):
    srv = Server(setup.graph, timeout_s=TIMEOUT_S).start()
    yield srv
    srv.close()


def run(cli: Client, frames, **kw):
    """Every output of a stream and the record after each."""
    outs, recs = [], []
    for out in cli.stream(frames, **kw):
        outs.append(out)
        recs.append(cli.last)
    return outs, recs


# -- no server needed ------------------------------------------------------------------


def test_stream_checks_its_arguments_before_reading_a_frame(setup):
    cli = setup.client(("127.0.0.1", 9))
    read = []

    def frames():
        read.append(1)
        yield setup.frames[0]

    bad = np.zeros(setup.graph.n_nodes, dtype=bool)  # the input on the server
    with pytest.raises(ValueError, match="input"):
        cli.stream(frames(), on_device=bad)
    with pytest.raises(ValueError, match="max_in_flight"):
        cli.stream(frames(), max_in_flight=0)
    with pytest.raises(TypeError, match="max_in_flight"):
        cli.stream(frames(), max_in_flight=2.5)
    assert not read


def test_slowed_runner_sleeps_factor_minus_one_times_the_computation():
    own: list[float] = []

    def work():
        t0 = time.perf_counter()
        x = torch.randn(64, 64)
        for _ in range(20):
            x = x @ x / 64
        own.append(time.perf_counter() - t0)
        return 7

    t0 = time.perf_counter()
    assert slowed_runner(3.0)(work) == 7
    total = time.perf_counter() - t0
    assert len(own) == 1
    # the call, then a sleep of twice its duration (a sleep is never shorter)
    assert total >= 3.0 * own[0]


# -- end to end ------------------------------------------------------------------------


@pytest.mark.slow
def test_forced_partition_in_order(setup, server):
    on = setup.prefix(4)
    with setup.client(server.address, bandwidth_bps=1e9) as cli:
        outs, recs = run(cli, setup.frames, on_device=on)
    assert len(outs) == N_FRAMES
    for want, got in zip(setup.expected, outs, strict=True):
        assert_same(want, got)
    nbytes = int(setup.graph.out_bytes[sent_set(setup.graph.edges, on)].sum())
    for r in recs:
        assert not r.fallback, r.error
        assert np.array_equal(r.partition.on_device, on)
        assert r.bytes_sent == nbytes and r.server_s > 0
        assert r.total_s >= r.device_s
    done = [r.done_s for r in recs]
    assert all(b > a for a, b in itertools.pairwise(done)), done
    assert server.stats["requests"] == N_FRAMES and server.stats["errors"] == 0
    assert server.stats["connections"] == 1  # one connection for the whole stream


@pytest.mark.slow
def test_planner_decides_every_frame(setup, server):
    """The bandwidth changes between frames: each frame carries its own partition."""
    rates = [1e3, 1e10, 1e6, 1e3, 1e10, 1e6]
    with setup.client(server.address) as cli:

        def frames():
            for rate, f in zip(rates, setup.frames, strict=True):
                cli.bandwidth_bps = rate  # read when the device gets to this frame
                yield f

        outs, recs = run(cli, frames(), max_in_flight=3)
    for want, got in zip(setup.expected, outs, strict=True):
        assert_same(want, got)
    kinds = set()
    for rate, r in zip(rates, recs, strict=True):
        assert not r.fallback, r.error
        assert r.bandwidth_estimate_bps == rate
        assert np.array_equal(r.partition.on_device, setup.planner.decide(rate).on_device)
        kinds.add(r.partition.n_on_device)
    assert len(kinds) >= 2, kinds  # all-device and offloading frames, interleaved
    done = [r.done_s for r in recs]
    assert done == sorted(done)
    offloaded = sum(r.partition.offloads for r in recs)
    assert server.stats["requests"] == offloaded > 0


@pytest.mark.slow
def test_throughput_objective_splits_for_the_frame_rate(setup, server):
    """objective="throughput": each frame takes the period-optimal partition, not the latency one.

    At 10 Mbit/s this model's latency optimum keeps 11 layers on the device and its
    period optimum 9 (a smaller period, a larger latency).
    """
    rate = 1e7
    lat = setup.planner.decide(rate)
    with setup.client(server.address, bandwidth_bps=rate) as cli:
        thr_planner = cli.planner_for("throughput")
        assert cli.planner_for("throughput") is thr_planner  # built once
        assert cli.planner_for("latency") is setup.planner
        assert cli.planner_for(None) is setup.planner
        thr = thr_planner.decide(rate)
        assert thr.period_s < lat.period_s and thr.latency_s >= lat.latency_s
        outs, recs = run(cli, setup.frames, objective="throughput")
        with pytest.raises(ValueError, match="objective"):
            cli.stream(setup.frames, objective="fps")
    for want, got in zip(setup.expected, outs, strict=True):
        assert_same(want, got)
    for r in recs:
        assert not r.fallback, r.error
        assert np.array_equal(r.partition.on_device, thr.on_device)
    assert server.stats["requests"] == N_FRAMES


@pytest.mark.slow
def test_estimated_bandwidth_probes_once_and_samples(setup, server):
    with setup.client(server.address) as cli:
        assert cli.estimator.estimate() is None
        outs, recs = run(cli, setup.frames, max_in_flight=1)
        assert recs[0].probed and not any(r.probed for r in recs[1:])
        assert all(r.bandwidth_estimate_bps is not None for r in recs)
        assert not any(r.fallback for r in recs), [r.error for r in recs]
        # samples: the probe, and the offloaded frames (one at a time: no wait behind
        # another) whose time was not mostly latency
        sent = [r for r in recs if r.partition.offloads]
        assert sent and all(r.bytes_sent >= cli.estimator.min_bytes for r in sent)
        assert 1 <= len(cli.estimator) <= 1 + len(sent)
    for want, got in zip(setup.expected, outs, strict=True):
        assert_same(want, got)


@pytest.mark.slow
def test_all_device_stream_sends_nothing(setup, server):
    on = np.ones(setup.graph.n_nodes, dtype=bool)
    with setup.client(server.address) as cli:
        outs, recs = run(cli, iter(setup.frames), on_device=on)
    for want, got in zip(setup.expected, outs, strict=True):
        assert_same(want, got)
    assert all(not r.fallback and r.bytes_sent == 0 and r.server_s == 0 for r in recs)
    assert server.stats["requests"] == 0 and server.stats["connections"] == 0


@pytest.mark.slow
def test_two_inputs_and_a_dict_output():
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    g = trace(model, (torch.randn(3, 4), torch.randn(3, 6)))
    dev = Profile.from_times(g, np.full(g.n_nodes, 1e-3))
    planner = Planner.from_profiles(g, dev, dev.scaled(0.1))
    frames = [(torch.randn(3, 4), torch.randn(3, 6)) for _ in range(4)]
    with torch.inference_mode():
        expected = [model(*f) for f in frames]
    on = np.zeros(g.n_nodes, dtype=bool)
    on[g.inputs] = True
    with Server(g, timeout_s=TIMEOUT_S).start() as srv:
        with Client(g, address=srv.address, planner=planner, timeout_s=TIMEOUT_S) as cli:
            outs, recs = run(cli, frames, on_device=on)
            assert all(not r.fallback for r in recs), [r.error for r in recs]
            # infer agrees, with the structure restored from the trace
            assert_same(expected[0], cli.infer_partition(on, *frames[0]))
    for want, got in zip(expected, outs, strict=True):
        assert_same(want, got)


# -- failures --------------------------------------------------------------------------


@pytest.mark.slow
def test_server_closed_mid_stream_every_frame_answered(setup):
    srv = Server(setup.graph, timeout_s=TIMEOUT_S).start()
    on = setup.prefix(4)
    pulled: list[int] = []
    try:
        with setup.client(srv.address, retry_s=0.0) as cli:

            def frames():
                for i, f in enumerate(setup.frames):
                    if i == 3:
                        srv.close()  # frames 0-2 may be in flight now
                    pulled.append(i)
                    yield f

            outs, recs = run(cli, frames(), on_device=on, max_in_flight=3)
    finally:
        srv.close()
    assert pulled == list(range(N_FRAMES))
    assert len(outs) == N_FRAMES  # nothing lost, nothing twice
    for want, got in zip(setup.expected, outs, strict=True):
        assert_same(want, got)
    assert not recs[0].fallback, recs[0].error  # yielded before the server closed
    for r in recs[3:]:  # computed after the server was gone
        assert r.fallback and r.error and r.bytes_sent == 0
    assert all(r.error for r in recs if r.fallback)
    done = [r.done_s for r in recs]
    assert done == sorted(done)


class FailsAfter(Server):
    """Answers ``ok`` requests, then an ERROR frame for every other."""

    def __init__(self, *args, ok: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.ok = ok
        self.seen = 0
        self.seen_lock = threading.Lock()

    def run_tail(self, on_device, tensors):
        with self.seen_lock:
            self.seen += 1
            n = self.seen
        if n > self.ok:
            raise W.ProtocolError(W.ErrorCode.INTERNAL, "out of memory (simulated)")
        return super().run_tail(on_device, tensors)


@pytest.mark.slow
def test_error_answer_mid_stream_finishes_pending_frames_locally(setup):
    calls: list[int] = []

    def runner(fn):
        calls.append(1)
        return fn()

    on = setup.prefix(4)
    with FailsAfter(setup.graph, ok=2, timeout_s=TIMEOUT_S).start() as srv:
        with setup.client(srv.address, retry_s=60.0, device_runner=runner) as cli:
            outs, recs = run(cli, setup.frames, on_device=on, max_in_flight=3)
    for want, got in zip(setup.expected, outs, strict=True):
        assert_same(want, got)
    assert [r.fallback for r in recs] == [False, False] + [True] * (N_FRAMES - 2)
    assert "INTERNAL" in (recs[2].error or "")
    assert all(r.error for r in recs[2:])
    # one head per frame, plus one local tail per frame the server did not answer
    assert len(calls) == N_FRAMES + (N_FRAMES - 2)


class Silent:
    """Completes the handshake, then reads requests and never answers."""

    def __init__(self, fingerprint: str) -> None:
        self.fp = fingerprint
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT_S)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return self.sock.getsockname()[:2]

    def serve(self) -> None:
        with contextlib.suppress(OSError, EOFError, W.ProtocolError):
            conn, _ = self.sock.accept()
            conn.settimeout(TIMEOUT_S)
            self.conns.append(conn)
            W.recv_frame(conn, W.Limits())
            W.send_frame(conn, W.MsgType.HELLO_OK, [M.encode_hello(self.fp, 1 << 26)])
            while True:
                W.recv_frame(conn, W.Limits())

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()
        self.sock.close()


@pytest.mark.slow
def test_silent_server_every_wait_is_bounded(setup):
    srv = Silent(Server(setup.graph).fingerprint)
    try:
        with setup.client(srv.address, timeout_s=0.3, retry_s=60.0) as cli:
            outs, recs = run(cli, setup.frames[:3], on_device=setup.prefix(4))
    finally:
        srv.close()
    for want, got in zip(setup.expected[:3], outs, strict=True):
        assert_same(want, got)
    assert all(r.fallback for r in recs)
    assert "timed out" in (recs[0].error or "") or "stalled" in (recs[0].error or "")


@pytest.mark.slow
def test_stream_closed_early_then_infer_reconnects(setup, server):
    on = setup.prefix(4)
    with setup.client(server.address, bandwidth_bps=1e9) as cli:
        stream = cli.stream(itertools.cycle(setup.frames), on_device=on, max_in_flight=3)
        first = next(stream)
        stream.close()  # answers still due: that connection is dropped
        assert_same(setup.expected[0], first)
        assert_same(setup.expected[1], cli.infer_partition(on, setup.frames[1]))
        assert cli.last is not None and not cli.last.fallback, cli.last.error
        # a stream run to its end leaves its connection to the next request
        run(cli, setup.frames[:2], on_device=on)
        before = server.stats["connections"]
        cli.infer_partition(on, setup.frames[2])
        assert not cli.last.fallback and server.stats["connections"] == before


@pytest.mark.slow
def test_device_runner_sees_every_device_computation(setup, server):
    calls: list[str] = []
    pause_s = 0.02

    def runner(fn):
        out = fn()
        time.sleep(pause_s)  # a slower device
        calls.append("x")
        return out

    offload = setup.prefix(4)
    all_device = np.ones(setup.graph.n_nodes, dtype=bool)
    with setup.client(server.address, bandwidth_bps=1e9, device_runner=runner) as cli:
        _, recs = run(cli, setup.frames, on_device=offload)
        assert len(calls) == N_FRAMES  # one head per frame
        _, recs2 = run(cli, setup.frames, on_device=all_device)
        assert len(calls) == 2 * N_FRAMES  # the whole model per frame
        cli.infer_partition(offload, setup.frames[0])
        cli.infer_partition(all_device, setup.frames[0])
        assert len(calls) == 2 * N_FRAMES + 2
    for r in [*recs, *recs2, cli.last]:
        assert not r.fallback, r.error
        assert r.device_s >= pause_s
