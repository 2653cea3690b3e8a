"""End-to-end evaluation (cic_fast.evaluation) and the edge emulation (link, device).

The end-to-end test runs resnet18 at 32x32 through ``evaluate`` with the user-space
token-bucket link and the sleep-scaled device (no root needed): a server and a device
worker subprocess, every method at two rates.  The namespace/tbf and cgroup helpers
are exercised only where the machine allows them (root, cgroup v1), else skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cic_fast.core.baselines import Neurosurgeon
from cic_fast.core.graph import Graph
from cic_fast.core.synthetic import dnn_graph
from cic_fast.evaluation.device import CpuQuota, Slowed, cgroup_available
from cic_fast.evaluation.link import NetnsLink, TokenBucketLink, netns_available, tbf_args
from cic_fast.evaluation.report import METHODS, EvalRow, MethodResult, format_table

# -- Neurosurgeon -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chain", "resnet", "inception"])
@pytest.mark.parametrize("rtt_s", [0.0, 0.01])
def test_neurosurgeon_is_the_best_prefix(kind, rtt_s):
    g = dnn_graph(80, kind=kind, seed=3, device_slowdown=10, server_speedup=50)
    graph = Graph(g.edges, g.device_s, g.server_s, g.out_bytes)
    ns = Neurosurgeon(g.edges, g.device_s, g.server_s, g.out_bytes, graph.inputs, rtt_s)
    n = graph.n_nodes
    first = int(graph.inputs.max()) + 1
    for bw in (1e5, 1.1e6, 5.85e6, 1e8, 1e10):
        on = ns.decide(bw)
        lat = graph.evaluate(on, bw, rtt_s).latency_s
        best = min(
            graph.evaluate(np.arange(n) < k, bw, rtt_s).latency_s for k in range(first, n + 1)
        )
        assert lat == pytest.approx(best, rel=1e-12, abs=1e-15)
        # a prefix is one of the closed sets: never better than the exact min-cut
        assert lat >= graph.min_cut(bw, rtt_s).latency_s * (1 - 1e-9)


def test_neurosurgeon_rejects_non_topological_edges():
    with pytest.raises(ValueError, match="topological"):
        Neurosurgeon([[1, 0]], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0])


# -- the table -------------------------------------------------------------------------------


def _result(method: str, lat: list[float], fps: float, measured: bool = True) -> MethodResult:
    return MethodResult(method, 3, 10, 1e3, lat[0] if lat else 2.0, 1e-6, measured, lat, fps)


def test_row_speedups_and_table():
    m = {
        "device-only": _result("device-only", [1.0, 1.2, 1.1], 0.9),
        "server-only": _result("server-only", [], float("nan"), measured=False),
        "neurosurgeon": _result("neurosurgeon", [0.5, 0.6, 0.5], 2.0),
        "dads": _result("dads", [0.4, 0.4, 0.5], 3.0),
        "cic": _result("cic", [0.4, 0.4, 0.5], 3.0),
    }
    row = EvalRow("toy", 5.85e6, m)
    # best of device-only (median 1.1) and server-only (predicted 2.0)
    assert row.latency_speedup() == pytest.approx(1.1 / 0.4)
    # server-only not run: its throughput is 1 / predicted = 0.5; device-only 0.9
    assert row.throughput_speedup() == pytest.approx(3.0 / 0.9)
    text = format_table([row])
    assert text.count("\n") == 2 and "2000~/2000~" in text and "| 2.75 |" in text
    assert json.loads(json.dumps(row.to_dict()))["cic_latency_speedup"] == pytest.approx(2.75)


# -- the user-space link ----------------------------------------------------------------------


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            while data := conn.recv(65536):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lsock, t


def _round_trip(address: tuple[str, int], nbytes: int) -> float:
    with socket.create_connection(address, timeout=5) as s:
        s.settimeout(5)
        t0 = time.perf_counter()
        s.sendall(bytes(nbytes))
        got = 0
        while got < nbytes:
            chunk = s.recv(65536)
            assert chunk
            got += len(chunk)
        return time.perf_counter() - t0


def test_token_bucket_rate_and_delay():
    lsock, t = _echo_server()
    try:
        # 64 KB each way at 4 Mbit/s: 0.131 s of serialization one way, the last
        # 16 KB chunk's 0.033 s back (the directions overlap chunk by chunk), plus
        # the 0.1 s round trip: ~0.26 s
        with TokenBucketLink(lsock.getsockname(), 4e6, rtt_s=0.1, timeout_s=5) as link:
            dt = _round_trip(link.address, 65536)
        assert 0.131 + 0.1 <= dt < 0.131 * 2 + 0.1 + 0.25, dt
    finally:
        lsock.close()
        t.join(5)


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-transfer"])
def test_token_bucket_close_wakes_its_threads(busy):
    # Regression: close() used to close the sockets without shutting them down, so
    # a pump blocked in recv stayed blocked until its socket timeout (30 s here), and
    # close() waited 2 s per thread. Now it must return well inside one second (a
    # generous margin for a loaded machine: the wake-up itself takes milliseconds)
    # and leave no proxy thread alive, for an idle open connection and for one whose
    # writer waits to forward a chunk due seconds from now (64 KB at 64 kbit/s).
    lsock, t = _echo_server()
    try:
        link = TokenBucketLink(lsock.getsockname(), 64e3 if busy else 50e6, timeout_s=30)
        with socket.create_connection(link.address, timeout=5) as s:
            if busy:
                s.sendall(bytes(65536))
                time.sleep(0.3)  # the first chunk is read and queued, due in ~2 s
            else:  # connected upstream, then idle
                s.sendall(b"ping")
                assert s.recv(4) == b"ping"
            assert len(link.threads) == 5  # accept, and a reader + writer each way
            t0 = time.perf_counter()
            link.close()
            dt = time.perf_counter() - t0
            alive = [th.name for th in link.threads if th.is_alive()]
            assert dt < 1.0, dt
            assert not alive, alive
            # the device side sees the link go down instead of hanging
            s.settimeout(2)
            with contextlib.suppress(ConnectionResetError):
                while s.recv(65536):
                    pass
    finally:
        lsock.close()
        t.join(5)


def test_token_bucket_rejects_bad_arguments():
    with pytest.raises(ValueError):
        TokenBucketLink(("127.0.0.1", 1), 0.0)
    with pytest.raises(ValueError):
        tbf_args(-1)


# -- the sleep-scaled device ----------------------------------------------------------------


def test_slowed_scales_each_call():
    # The fallback slow device: a call of duration d returns after F * d (a sleep
    # never ends early, so the lower bound is hard), and passes values through.
    slow = Slowed(lambda x: time.sleep(0.05) or x + 1, 3.0)
    t0 = time.perf_counter()
    assert slow(1) == 2
    dt = time.perf_counter() - t0
    assert 0.15 <= dt < 0.15 + 0.5, dt  # upper: a generous margin for a loaded machine
    t0 = time.perf_counter()
    assert Slowed(lambda: 7, 1.0)() == 7 and time.perf_counter() - t0 < 0.5


# -- root-only emulation: skipped where not allowed ---------------------------------------------


@pytest.mark.slow
def test_cpu_quota_slows_a_process():
    why = cgroup_available()
    if why:
        pytest.skip(why)
    spin = (
        "import time\nt=time.perf_counter()\nc=time.process_time()\n"
        "while time.process_time()-c<0.1: pass\n"
        "print(time.perf_counter()-t)"
    )
    with CpuQuota(f"cic_test_{os.getpid()}", 4.0) as q:
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys\nsys.stdin.readline()\n{spin}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            q.join(proc.pid)
            out, _ = proc.communicate("go\n", timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        wall = float(out)
        # 0.1 s of CPU at a quarter of a core: ~0.4 s of wall time
        assert 0.25 < wall < 1.5, wall
    assert not q.path.exists()


@pytest.mark.slow
def test_netns_link_shapes_and_cleans_up():
    why = netns_available()
    if why:
        pytest.skip(why)
    link = NetnsLink(8e6, prefix=f"cit{os.getpid() % 10000}", net=197)
    try:
        srv = (
            "import socket\ns=socket.create_server(('0.0.0.0',5599))\ns.settimeout(10)\n"
            "print('up',flush=True)\nc,_=s.accept()\nc.settimeout(10)\nn=0\n"
            "while n<200000:\n d=c.recv(65536)\n if not d: break\n n+=len(d)\nc.sendall(b'x')"
        )
        proc = subprocess.Popen(
            link.server_cmd([sys.executable, "-c", srv]), stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
            cli = (
                "import socket,time\n"
                f"s=socket.create_connection(('{link.server_ip}',5599),timeout=10)\n"
                "t=time.perf_counter()\ns.sendall(bytes(200000))\ns.recv(1)\n"
                "print(time.perf_counter()-t)"
            )
            r = subprocess.run(
                link.device_cmd([sys.executable, "-c", cli]),
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            # 200 KB at 8 Mbit/s: 0.2 s
            assert 0.15 < float(r.stdout) < 0.6, r.stdout
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            assert proc.stdout is not None
            proc.stdout.close()
    finally:
        link.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    assert link.device_ns not in names.stdout and link.server_ns not in names.stdout


# -- end to end -------------------------------------------------------------------------------


# Measured over predicted latency, for every method (see the end-to-end test). On a
# quiet machine it is 1.4..1.6: the cost model leaves out Python and serialisation
# overheads and the result's way back over the same shaped link. Load on the shared
# 2-core machine moves it both ways, because the profile (one sample per layer) and
# the requests run at different times: a CPU hog during the requests took it to 3.3,
# and a test suite running during the profile only to 0.49 (the profile predicted
# 2.4x the quiet time). 0.25..5 holds in both cases; it still fails on gross errors
# (a time in the wrong unit, a profile scaled twice, a ~40 ms stall per request,
# ~5.5x on the 10 ms server-only request at 50 Mbit/s), but it cannot tell a 2x
# modelling error from load: the link's hard bounds below, and
# test_slowed_scales_each_call for the device, are the sharp checks.
MEASURED_OVER_PREDICTED = (0.25, 5.0)
# A stream of pipelined frames finishes a frame every max(stage) seconds, which is
# below one sequential request (0.25..0.6x of it here, quiet or loaded): slower than
# sequential requests by more than this factor means the pipeline or its clock is
# broken.
STREAM_SLOWER_THAN_SEQUENTIAL = 1.5
# The token bucket serialises every frame at the rate, so a stream cannot beat
# rate / (8 * bytes_sent) frames/s. It is timed between two completions, so jitter
# in the server and the return leg (a few ms under load: 1.12x of the bound was
# seen at 2 Mbit/s) can shorten that one gap; 25% covers it. An unshaped link (5x
# and more here) or a frame count off by one (2x) fails.
STREAM_OVER_LINK_BOUND = 1.25


@pytest.mark.slow
def test_evaluate_end_to_end_userspace(tmp_path):
    pytest.importorskip("torchvision")
    from cic_fast.evaluation import evaluate, plot_latency

    rtt_s = 0.002
    rows = evaluate(
        ["resnet18"],
        [2e6, 50e6],
        out_dir=tmp_path,
        device_slowdown=3.0,
        requests=2,
        stream_frames=2,
        input_size=32,
        rtt_s=rtt_s,
        link="userspace",
        slowdown_method="sleep",
        profile_repeats=1,
        timeout_s=30.0,
        log=lambda s: None,
    )
    assert [r.rate_bps for r in rows] == [2e6, 50e6]
    lo, hi = MEASURED_OVER_PREDICTED
    for row in rows:
        bw = row.rate_bps
        assert set(row.methods) == set(METHODS)
        for m in row.methods.values():
            assert m.measured and m.fallbacks == 0 and len(m.latency_s) == 2
            where = (m.method, bw, m.latency_s, m.predicted_s)
            assert all(lo * m.predicted_s <= x <= hi * m.predicted_s for x in m.latency_s), where
            # physics of the shaped link: what is sent takes 8 * bytes / rate, plus rtt
            if m.n_on_device < m.n_nodes:
                assert min(m.latency_s) >= 8 * m.bytes_sent / bw + rtt_s, where
            if m.n_on_device == m.n_nodes:  # one stage: the stream is requests back to back
                assert m.fps == pytest.approx(len(m.latency_s) / sum(m.latency_s))
            else:
                assert m.fps >= 1 / (STREAM_SLOWER_THAN_SEQUENTIAL * m.median_s), (where, m.fps)
                assert m.fps <= STREAM_OVER_LINK_BOUND * bw / (8 * m.bytes_sent), (where, m.fps)
        cic, dads = row.methods["cic"], row.methods["dads"]
        # both exact: the same predicted optimum, and nothing predicts lower
        assert cic.predicted_s == pytest.approx(dads.predicted_s, rel=1e-9)
        assert all(m.predicted_s >= cic.predicted_s * (1 - 1e-9) for m in row.methods.values())
        # fixed placements decide nothing; the plan's binary search beats a full min-cut
        # (~0.3 us against ~20 us on resnet18's 71 layers: 3x is a wide margin)
        assert row.methods["device-only"].decision_s == row.methods["server-only"].decision_s == 0
        assert 0 < cic.decision_s < dads.decision_s / 3, (cic.decision_s, dads.decision_s)
        assert row.methods["neurosurgeon"].decision_s > 0
        # the reported speedups are the measured numbers' ratios
        med = {k: float(np.median(m.latency_s)) for k, m in row.methods.items()}
        assert row.latency_speedup() == pytest.approx(
            min(med["device-only"], med["server-only"]) / med["cic"], rel=1e-12
        )
        fps = {k: m.fps for k, m in row.methods.items()}
        assert row.throughput_speedup() == pytest.approx(
            fps["cic"] / max(fps["device-only"], fps["server-only"]), rel=1e-12
        )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["link"] == "userspace" and len(saved["rows"]) == 2
    assert saved["rows"][0]["cic_latency_speedup"] == pytest.approx(rows[0].latency_speedup())
    assert (tmp_path / "resnet18" / "device_profile.json").exists()
    why = plot_latency(rows, tmp_path / "p.png")
    if why is None:
        assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.slow
def test_evaluate_throughput_end_to_end_userspace(tmp_path):
    pytest.importorskip("torchvision")
    from cic_fast.evaluation import THROUGHPUT_METHODS, evaluate_throughput

    rows = evaluate_throughput(
        ["resnet18"],
        [2e6, 50e6],
        out_dir=tmp_path,
        device_slowdown=3.0,
        stream_frames=4,
        input_size=32,
        link="userspace",
        slowdown_method="sleep",
        profile_repeats=1,
        timeout_s=30.0,
        log=lambda s: None,
    )
    assert [r.rate_bps for r in rows] == [2e6, 50e6]
    lo, hi = MEASURED_OVER_PREDICTED
    for row in rows:
        bw = row.rate_bps
        assert list(row.methods) == list(THROUGHPUT_METHODS)
        best = row.methods["cic-throughput"].predicted_period_s
        for m in row.methods.values():
            where = (m.method, bw, m.fps, m.predicted_period_s)
            assert m.measured and m.fallbacks == 0 and m.frames == 4, where
            # the period-optimal split: no method predicts a smaller period
            assert m.predicted_period_s >= best * (1 - 1e-9), where
            # measured period against the cost model's (see MEASURED_OVER_PREDICTED)
            assert lo * m.predicted_period_s <= m.measured_period_s, where
            assert m.measured_period_s <= hi * max(m.predicted_period_s, 1e-3), where
            if m.n_on_device < m.n_nodes:  # the shaped link bounds any stream
                assert m.fps <= STREAM_OVER_LINK_BOUND * bw / (8 * m.bytes_sent), where
        assert row.methods["dads-heavy"].decision_s > 0
        assert row.gain_over_fixed() == pytest.approx(
            row.methods["cic-throughput"].fps
            / max(row.methods["device-only"].fps, row.methods["server-only"].fps)
        )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["throughput_rows"]) == 2
    assert saved["throughput_meta"]["objective"] == "throughput"


def test_evaluate_rejects_bad_factors(tmp_path):
    from cic_fast.evaluation import evaluate

    with pytest.raises(ValueError, match="server_speedup"):
        evaluate(["resnet18"], [1e6], out_dir=tmp_path, device_slowdown=4, server_speedup=10)
    with pytest.raises(ValueError, match="rates"):
        evaluate(["resnet18"], [0.0], out_dir=tmp_path)


def test_cli_parser_defaults():
    from cic_fast.cli.evaluate import add_evaluate_parser

    p = argparse.ArgumentParser()
    add_evaluate_parser(p.add_subparsers(dest="cmd"))
    a = p.parse_args(["evaluate", "--out", "x", "--models", "resnet18,vgg16", "--rates", "1.1,100"])
    assert a.models == ["resnet18", "vgg16"] and a.rates == ["1.1", "100"]
    assert a.device_slowdown == 8.0 and a.server_speedup is None and a.requests == 3
