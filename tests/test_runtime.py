"""Collaborative inference runtime: Server + Client over loopback.

Every server runs in this process on 127.0.0.1 port 0 (a thread), or as a
``cic-fast serve`` subprocess started with a timeout; every socket has a timeout,
so no test can hang.  Models are small (a two-branch CNN, resnet18 and googlenet at
32x32 with 10 classes), one torch thread.

The bandwidth test shapes the link with a user-space token bucket (a TCP proxy
that forwards each chunk only after its serialization time at the chosen rate) and
requires the client's estimate within 25 % of that rate.

Every test that starts a server, a subprocess or a link is marked ``slow``
(``pytest -m 'not slow'`` runs the others).
"""

from __future__ import annotations

import contextlib
import socket
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
nn = torch.nn

from cic_fast.core.cost import sent_set  # noqa: E402
from cic_fast.evaluation.link import TokenBucketLink  # noqa: E402
from cic_fast.runtime.client import Client  # noqa: E402
from cic_fast.runtime.estimator import BandwidthEstimator  # noqa: E402
from cic_fast.runtime.server import Server  # noqa: E402
from threads import run_threads  # noqa: E402
from zoo import Setup, TwoBranch, cli_server  # noqa: E402

TIMEOUT_S = 5.0


def assert_same(a, b) -> None:
    if isinstance(a, tuple | list):
        assert type(a) is type(b) and len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            assert_same(u, v)
    else:
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Setup(TwoBranch(), torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return Setup(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def googlenet():
    torch.manual_seed(0)
    m = torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=False)
    return Setup(m, torch.randn(1, 3, 32, 32))


def closed_down(graph, seeds: np.ndarray) -> np.ndarray:
    """The smallest device set holding ``seeds`` and the inputs, closed under predecessors."""
    pred = graph.predecessors()
    on = np.zeros(graph.n_nodes, dtype=bool)
    stack = [*np.flatnonzero(seeds).tolist(), *graph.inputs.tolist()]
    while stack:
        v = stack.pop()
        if not on[v]:
            on[v] = True
            stack.extend(pred[v])
    return on


# -- round trips -----------------------------------------------------------------------


@pytest.mark.slow
def test_round_trip_forced_partitions_tiny(tiny):
    n = tiny.graph.n_nodes
    with tiny.server() as srv, tiny.client(srv.address) as cli:
        for on in [tiny.all_server(), *(tiny.prefix(k) for k in range(2, n))]:
            out = cli.infer_partition(on, tiny.x)
            assert_same(tiny.expected, out)
            rec = cli.last
            assert rec is not None
            assert not rec.fallback, rec.error
            assert np.array_equal(rec.partition.on_device, on)
            if on.all():
                assert rec.bytes_sent == 0
            else:
                assert rec.bytes_sent == int(
                    tiny.graph.out_bytes[sent_set(tiny.graph.edges, on)].sum()
                )
                assert rec.server_s > 0 and rec.transfer_s >= 0
        assert srv.stats["errors"] == 0
        # the tails were cached: the same partitions again build nothing new
        built = srv.stats["tails_built"]
        cli.infer_partition(tiny.all_server(), tiny.x)
        assert srv.stats["tails_built"] == built


@pytest.mark.slow
def test_tail_cache_is_lru(tiny):
    with tiny.server(cache_size=2) as srv, tiny.client(srv.address) as cli:
        a, b, c = tiny.prefix(2), tiny.prefix(3), tiny.prefix(4)
        for on in (a, b, a, c):  # c evicts b, the least recently used
            assert_same(tiny.expected, cli.infer_partition(on, tiny.x))
        assert srv.cached_tails == 2 and srv.stats["tails_built"] == 3
        cli.infer_partition(a, tiny.x)
        assert srv.stats["tails_built"] == 3
        cli.infer_partition(b, tiny.x)
        assert srv.stats["tails_built"] == 4


@pytest.mark.slow
def test_planner_decisions_resnet(resnet):
    """all-device at a slow link, all-server at a fast one, a middle cut in between."""
    with resnet.server() as srv, resnet.client(srv.address) as cli:
        seen = set()
        for bw in (1e3, 3e4, 1e6, 1e7, 1e10):
            cli.bandwidth_bps = bw
            out = cli.infer(resnet.x)
            assert_same(resnet.expected, out)
            rec = cli.last
            assert rec is not None and not rec.fallback, rec.error
            assert rec.bandwidth_estimate_bps == bw
            assert np.array_equal(rec.partition.on_device, cli.planner.decide(bw).on_device)
            seen.add(int(rec.partition.on_device.sum()))
        n = resnet.graph.n_nodes
        assert n in seen and 1 in seen
        assert len(seen) >= 3, seen  # a middle cut too


@pytest.mark.slow
def test_multi_tensor_cuts_googlenet(googlenet):
    g = googlenet.graph
    rng = np.random.default_rng(0)
    cuts = []
    while len(cuts) < 4:
        seeds = np.zeros(g.n_nodes, dtype=bool)
        seeds[rng.integers(0, g.n_nodes - 1, size=3)] = True
        on = closed_down(g, seeds)
        if not on.all() and len(sent_set(g.edges, on)) >= 2:
            cuts.append(on)
    with googlenet.server() as srv, googlenet.client(srv.address) as cli:
        for on in cuts:
            assert_same(googlenet.expected, cli.infer_partition(on, googlenet.x))
            assert cli.last is not None and not cli.last.fallback, cli.last.error
        assert srv.stats["requests"] == len(cuts)


@pytest.mark.slow
def test_concurrent_clients(tiny):
    n = tiny.graph.n_nodes
    with tiny.server() as srv:

        def work(seed: int) -> None:
            with tiny.client(srv.address) as cli:
                for i in range(6):
                    on = tiny.prefix(1 + (seed + i) % (n - 1))
                    out = cli.infer_partition(on, tiny.x)
                    assert_same(tiny.expected, out)
                    assert cli.last is not None and not cli.last.fallback

        run_threads(work, 6, timeout_s=30)
        assert srv.stats["connections"] >= 6


@pytest.mark.slow
def test_one_client_shared_by_threads(tiny):
    # A Client may be shared: requests from several threads are each answered
    # correctly, with distinct inputs, over its one connection.
    n = tiny.graph.n_nodes
    torch.manual_seed(3)
    xs = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    with torch.inference_mode():
        want = [tiny.model(x) for x in xs]
    # no background probe and no hedge: each would open a connection of its own
    # (a decision that goes device-only under load, a request late under load)
    quiet = {"probe_share": 0.0, "hedge_margin_s": None}
    with tiny.server() as srv, tiny.client(srv.address, **quiet) as cli:

        def work(t: int) -> None:
            for i in range(5):
                k = (t + i) % len(xs)
                on = tiny.prefix(1 + (t * 5 + i) % (n - 1))
                assert_same(want[k], cli.infer_partition(on, xs[k]))
                assert_same(want[k], cli.infer(xs[k]))

        run_threads(work, 4)
        # One connection carries the requests. A foreground probe (when `decide` finds
        # no fresh estimate, which a slow machine reaches mid-test) uses a connection
        # of its own, by design: that is the only other one allowed.
        probed = cli.probe_stats["probes"] > 0
        assert srv.stats["connections"] == 1 + probed, (srv.stats, cli.probe_stats)
        assert srv.stats["requests"] >= 20


@pytest.mark.slow
def test_cheap_path_serves_concurrent_clients_right_and_heavy_tails_never_take_it():
    # Cheap tails (built, mean run time under 1 ms, request wholly received) run one
    # request at a time on the server's session loop, heavy ones on session threads;
    # every answer must still be the model's for distinct inputs from many threads,
    # with cheap and heavy requests mixed. A heavy tail (several ms) never runs on
    # the loop.
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    x = torch.randn(16, 512)  # 32 KiB at the cut: received whole in one read
    s = Setup(model, x)
    n = s.graph.n_nodes
    cheap = s.prefix(n - 2)  # only the last Linear on the server
    heavy = s.all_server()
    xs = [torch.randn(16, 512) for _ in range(6)]
    with torch.inference_mode():
        want = [model(v) for v in xs]
    with s.server() as srv:
        with s.client(srv.address) as cli:  # warm both tails: their run times are known
            for on in (cheap, heavy, cheap):
                assert_same(want[0], cli.infer_partition(on, xs[0]))

        def work(t: int) -> None:
            with s.client(srv.address) as c:
                for i in range(20):
                    k = (t + i) % len(xs)
                    on = heavy if (t + i) % 5 == 0 else cheap
                    assert_same(want[k], c.infer_partition(on, xs[k]))
                    assert c.last is not None and not c.last.fallback, c.last.error

        run_threads(work, 6, timeout_s=60)
        assert srv.stats["errors"] == 0 and srv.stats["busy"] == 0
        assert srv.stats["serial"] > 0, srv.stats
    heavy_only = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10))
    hs = Setup(heavy_only, torch.randn(256, 2048))
    with hs.server() as srv, hs.client(srv.address) as cli:
        for _ in range(6):
            assert_same(hs.expected, cli.infer_partition(hs.all_server(), hs.x))
        assert srv.stats["requests"] == 6 and srv.stats["serial"] == 0, srv.stats
        # requests that follow each other at once keep their session thread: no hop
        # from the loop to a thread and back for each (one per request otherwise)
        assert srv.stats["handoffs"] <= 3, srv.stats


@pytest.mark.slow
def test_max_clients_busy_then_fallback(tiny):
    with tiny.server(max_clients=1) as srv:
        from cic_fast.runtime import messages as M
        from cic_fast.runtime import wire as W

        hog = socket.create_connection(srv.address, timeout=TIMEOUT_S)
        try:
            # once the hog's handshake is answered, it holds the only slot
            W.send_frame(hog, W.MsgType.HELLO, [M.encode_hello(srv.fingerprint)])
            assert W.recv_frame(hog, W.Limits())[0] == W.MsgType.HELLO_OK
            with tiny.client(srv.address) as cli:
                assert_same(tiny.expected, cli.infer_partition(tiny.all_server(), tiny.x))
                assert cli.last is not None and cli.last.fallback
                assert "BUSY" in (cli.last.error or "")
        finally:
            hog.close()


# -- faults ----------------------------------------------------------------------------


def test_connection_refused_falls_back(tiny):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = s.getsockname()
    s.close()  # nothing listens there now
    with tiny.client(addr, bandwidth_bps=1e10) as cli:
        out = cli.infer(tiny.x)
        assert_same(tiny.expected, out)
        assert cli.last is not None and cli.last.fallback
        # without a bandwidth the probe fails too: computed on the device
        cli.bandwidth_bps = None
        cli._down_until = 0.0
        assert_same(tiny.expected, cli.infer(tiny.x))
        assert cli.last.fallback and cli.last.partition.on_device.all()


@pytest.mark.slow
def test_server_killed_mid_session_falls_back(tiny):
    srv = tiny.server()
    cli = tiny.client(srv.address, bandwidth_bps=1e10, retry_s=0.0)
    try:
        assert_same(tiny.expected, cli.infer(tiny.x))
        assert cli.last is not None and not cli.last.fallback
        srv.close()
        for _ in range(3):
            assert_same(tiny.expected, cli.infer(tiny.x))
            assert cli.last.fallback and cli.last.error
    finally:
        cli.close()
        srv.close()


@pytest.mark.slow
def test_server_silent_times_out_and_falls_back(tiny):
    """A server that accepts and never answers: the client's timeout bounds the wait.

    Hedging off: with it, the local finish answers after ``hedge_margin_s``
    (tests/test_dynamic_link.py); this is the deadline without it.
    """
    lsock = socket.create_server(("127.0.0.1", 0))
    try:
        with tiny.client(
            lsock.getsockname(), bandwidth_bps=1e10, timeout_s=0.5, hedge_margin_s=None
        ) as cli:
            t0 = time.monotonic()
            assert_same(tiny.expected, cli.infer(tiny.x))
            assert time.monotonic() - t0 < 3
            assert cli.last is not None and cli.last.fallback
            assert "timed out" in (cli.last.error or "")
    finally:
        lsock.close()


@pytest.mark.slow
def test_fingerprint_mismatch_refused_and_served_locally(tiny):
    other = TwoBranch().eval()
    with torch.no_grad():
        other.load_state_dict(tiny.model.state_dict())
        other.head.bias.add_(1.0)  # same architecture, different weights
    with tiny.server() as srv:
        cli = Client(
            other,
            tiny.x,
            srv.address,
            device_profile=tiny.dev,
            server_profile=tiny.srv,
            bandwidth_bps=1e10,
            timeout_s=TIMEOUT_S,
        )
        with cli:
            assert cli.fingerprint != srv.fingerprint
            out = cli.infer(tiny.x)
            with torch.inference_mode():
                assert_same(other(tiny.x), out)
            assert cli.last is not None and cli.last.fallback
            assert "FINGERPRINT" in (cli.last.error or "")
        assert srv.stats["requests"] == 0
        # the server still serves the right model
        with tiny.client(srv.address, bandwidth_bps=1e10) as good:
            assert_same(tiny.expected, good.infer(tiny.x))
            assert good.last is not None and not good.last.fallback


@pytest.mark.slow
def test_error_frame_falls_back(tiny):
    """A server that answers a request with an error frame: the device computes."""
    from cic_fast.runtime import wire as W

    class Failing(Server):
        def run_tail(self, on_device, tensors):
            raise W.ProtocolError(W.ErrorCode.INTERNAL, "out of memory (simulated)")

    with Failing(tiny.model, tiny.x, graph=tiny.graph, timeout_s=TIMEOUT_S).start() as srv:
        with tiny.client(srv.address, bandwidth_bps=1e10, retry_s=0.0) as cli:
            for _ in range(2):
                assert_same(tiny.expected, cli.infer(tiny.x))
                assert cli.last is not None and cli.last.fallback
                assert "INTERNAL" in (cli.last.error or "")
        assert srv.stats["errors"] == 2


@pytest.mark.slow
def test_request_over_server_frame_limit_served_locally(tiny):
    from cic_fast.runtime import wire as W

    with tiny.server(limits=W.Limits(max_frame_bytes=1024)) as srv:
        with tiny.client(srv.address, bandwidth_bps=1e10) as cli:
            assert_same(tiny.expected, cli.infer_partition(tiny.all_server(), tiny.x))
            assert cli.last is not None and cli.last.fallback
            assert "frame limit" in (cli.last.error or "")
        assert srv.stats["requests"] == 0


# -- bandwidth ---------------------------------------------------------------------------


def test_estimator_median_window_and_age():
    est = BandwidthEstimator(window=3, max_age_s=10.0, min_bytes=100)
    assert est.estimate() is None
    est.add(8 * 50, 1.0, now=0.0)  # too small to be a sample
    assert est.estimate(now=0.0) is None
    for bps in (1e6, 2e6, 100e6, 3e6):
        est.add(bps * 0.01, 0.01, now=1.0)
    assert est.estimate(now=1.0) == pytest.approx(3e6)  # median of the last 3
    assert est.estimate(now=20.0) is None  # stale
    est.add(1e6, 0.0)
    assert len(est) == 3


@pytest.mark.slow
@pytest.mark.parametrize("rate_mbit", [1.0, 4.0])
def test_bandwidth_estimate_converges_on_shaped_link(resnet, rate_mbit):
    """Estimate within 25 % of a token-bucket link's rate after a few requests.

    The device is 100x slower than the server, so at these rates the Planner
    offloads the 12 KB input: every request is a sample.
    """
    rate = rate_mbit * 1e6
    dev = resnet.dev.scaled(10.0)
    srv = resnet.dev.scaled(0.1)
    with resnet.server() as srv_, contextlib.closing(TokenBucketLink(srv_.address, rate)) as link:
        cli = Client(
            resnet.model,
            resnet.x,
            link.address,
            device_profile=dev,
            server_profile=srv,
            graph=resnet.graph,
            timeout_s=TIMEOUT_S,
        )
        with cli:
            # the first decision probes within the hedge margin: 16 KiB fits in it at
            # 10 Mbit/s, not at 1 (that request runs on the device, and the probe
            # ends in the background)
            assert_same(resnet.expected, cli.infer(resnet.x))
            assert cli.last is not None and (cli.last.probed or cli.last.path == "local")
            t0 = time.monotonic()
            while cli.estimator.estimate() is None and time.monotonic() - t0 < TIMEOUT_S:
                time.sleep(0.02)
            for _ in range(8):
                assert_same(resnet.expected, cli.infer(resnet.x))
                assert cli.last is not None and not cli.last.fallback, cli.last.error
                assert cli.last.bytes_sent > 0
            est = cli.estimator.estimate()
            assert est is not None
            assert abs(est - rate) / rate < 0.25, (est, rate)
            assert cli.last.bandwidth_estimate_bps is not None


# -- the CLI server in a subprocess ------------------------------------------------------


@pytest.mark.slow
def test_cli_serve_subprocess_and_kill(tmp_path):
    """``cic-fast serve`` as a process; SIGKILL mid-session -> the client falls back."""
    with cli_server(tmp_path, "--port", "0") as (setup, proc, port):
        with setup.client(("127.0.0.1", port), bandwidth_bps=1e10, retry_s=0.0) as cli:
            assert_same(setup.expected, cli.infer(setup.x))
            assert cli.last is not None and not cli.last.fallback, cli.last.error
            assert cli.last.bytes_sent > 0
            proc.kill()
            proc.wait(10)
            assert_same(setup.expected, cli.infer(setup.x))
            assert cli.last.fallback
