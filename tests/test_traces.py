"""Bandwidth traces: parsing, windowing, replay, and links that follow a trace."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cic_fast.evaluation.link import NetnsLink, TokenBucketLink, netns_available, tbf_args
from cic_fast.evaluation.traces import BandwidthTrace, TraceReplay

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"

# -- parsing ----------------------------------------------------------------------------------


def test_mahimahi_parsing(tmp_path):
    # 0.2 s: 10 deliveries in the first 100 ms (two in ms 5), none in the second
    # 100 ms (an outage), then the last timestamp 200 ms = the length. Looped, the
    # delivery at 200 ms is one at 0 of the next loop.
    lines = [5, 5, *range(10, 90, 10), 200]
    p = tmp_path / "x.up"
    p.write_text("".join(f"{v}\n" for v in lines))
    t = BandwidthTrace.from_mahimahi(p)
    assert t.duration_s == pytest.approx(0.2)
    assert t.starts_s.tolist() == pytest.approx([0.0, 0.1])
    assert t.rates_bps.tolist() == pytest.approx([11 * 12000 / 0.1, 0.0])
    assert t.mean_bps == pytest.approx(11 * 12000 / 0.2)
    assert BandwidthTrace.load(p).rates_bps.tolist() == t.rates_bps.tolist()
    assert t.name == "x.up"
    # a coarser bin, and a last bin cut short by the end of the trace
    t2 = BandwidthTrace.from_mahimahi(p, bin_s=0.15)
    assert t2.starts_s.tolist() == pytest.approx([0.0, 0.15])
    assert t2.rates_bps.tolist() == pytest.approx([11 * 12000 / 0.15, 0.0])


def test_cooked_parsing(tmp_path):
    p = tmp_path / "c"
    p.write_text("10.0\t4.0\n10.5 2.0\n11.0 0\n11.0 1.0\n12.0 9.0\n")
    t = BandwidthTrace.from_cooked(p)
    # times relative to the first; the duplicate 11.0 keeps the last value; the last
    # line only marks the end
    assert t.duration_s == pytest.approx(2.0)
    assert t.starts_s.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert t.rates_bps.tolist() == pytest.approx([4e6, 2e6, 1e6])
    assert t.mean_bps == pytest.approx((4e6 * 0.5 + 2e6 * 0.5 + 1e6) / 2)
    assert BandwidthTrace.load(p).duration_s == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("m", "1\nx\n", r"m:2: not an integer"),
        ("m", "5\n3\n", r"m:2: timestamp 3 ms is below"),
        ("m", "-1\n4\n", r"m:1: negative"),
        ("m", "0\n0\n", r"last timestamp must be > 0"),
        ("m", "\n\n", r"empty trace file"),
        ("c", "0 1\n1 abc\n", r"c:2: not a number"),
        ("c", "0 1\n2 1\n1 1\n", r"c:3: time 1.0 s is below"),
        ("c", "0 1\n1 -2\n", r"c:2: negative rate"),
        ("c", "0 1\n", r"at least two"),
        ("c", "0 1\n1 2 3\n", r"c:2: expected"),
        ("c", "0 nan\n1 1\n", r"c:1: not a finite"),
    ],
)
def test_malformed_traces(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    reader = BandwidthTrace.from_mahimahi if name == "m" else BandwidthTrace.from_cooked
    with pytest.raises(ValueError, match=match):
        reader(p)
    if text.strip():
        with pytest.raises(ValueError, match=match):
            BandwidthTrace.load(p)


def test_bad_traces_and_load_of_unknown_format(tmp_path):
    p = tmp_path / "three"
    p.write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"three:1: neither"):
        BandwidthTrace.load(p)
    with pytest.raises(ValueError):
        BandwidthTrace([0.0, 1.0], [1.0, -1.0], 2.0)
    with pytest.raises(ValueError):
        BandwidthTrace([0.0, 1.0], [1.0, 1.0], 1.0)
    with pytest.raises(ValueError):
        BandwidthTrace([0.5], [1.0], 1.0)
    with pytest.raises(ValueError):
        BandwidthTrace.from_steps([(0.0, 1.0)])


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason=f"no shared traces at {SHARED_TRACES}")
@pytest.mark.parametrize(
    ("rel", "duration_s", "mean_mbps"),
    [
        ("mahimahi/ATT-LTE-driving.up", 1012, 0.83),
        ("mahimahi/TMobile-UMTS-driving.up", 931, 0.94),
        ("hsdpa_norway/norway_bus_1", 154, 2.95),
        ("hsdpa_norway/norway_train_13", 215, 2.02),
        ("hsdpa_norway/norway_tram_55", 297, 1.41),
    ],
)
def test_shared_traces_match_their_readme(rel, duration_s, mean_mbps):
    # the README's durations (whole seconds) and means over 1-s windows
    t = BandwidthTrace.load(SHARED_TRACES / rel)
    assert t.duration_s == pytest.approx(duration_s, rel=0.01, abs=1.0)
    assert t.mean_bps / 1e6 == pytest.approx(mean_mbps, rel=0.03)
    w = t.windows(0.1)
    assert len(w) == int(np.ceil(t.duration_s / 0.1 - 1e-9))


# -- looping and windows ----------------------------------------------------------------------


def test_rate_at_loops_and_trace_is_immutable():
    t = BandwidthTrace.from_steps([(1.0, 8e6), (0.5, 0.0), (1.5, 2e6)])
    assert t.duration_s == 3.0
    assert t.mean_bps == pytest.approx((8e6 + 3e6) / 3)
    for s, r in [(0, 8e6), (0.99, 8e6), (1.0, 0.0), (1.49, 0.0), (1.5, 2e6), (2.99, 2e6)]:
        assert t.rate_at(s) == r
        assert t.rate_at(s + 3.0) == r
        assert t.rate_at(s + 30.0) == r
    assert t.rate_at(-0.5) == 2e6  # looped backwards too
    with pytest.raises(ValueError):
        t.rates_bps[0] = 1.0
    with pytest.raises(AttributeError):
        t.duration_s = 4.0  # type: ignore[misc]
    assert BandwidthTrace.synthetic([1e6, 2e6], 0.5).rates_bps.tolist() == [1e6, 2e6]


def test_windows_are_short_and_keep_the_bits():
    t = BandwidthTrace.from_steps([(0.3, 1e6), (0.3, 0.0), (0.25, 3e6), (0.07, 5e6)])
    for ws in (0.1, 0.05, 0.04, 0.25):
        w = t.windows(ws)
        starts = [s for s, _ in w] + [t.duration_s]
        lengths = np.diff(starts)
        assert np.all(lengths <= ws + 1e-12) and np.all(lengths > 0)
        bits = sum(r * d for (_, r), d in zip(w, lengths, strict=True))
        assert bits == pytest.approx(t.mean_bps * t.duration_s)
    w = t.windows()  # 0.1 s by default
    assert [r for _, r in w[:6]] == [1e6, 1e6, 1e6, 0.0, 0.0, 0.0]  # exact, outage exactly 0
    assert w[8][1] == pytest.approx((0.05 * 3e6 + 0.05 * 5e6) / 0.1)  # a step inside: averaged
    with pytest.raises(ValueError):
        t.windows(0)


# -- the replayer -----------------------------------------------------------------------------


def test_replay_calls_set_rate_on_time():
    # 0.3 s steps, looped once: each change is made within a generous 80 ms of its
    # due time (a loaded 2-core machine), with the right rate, once.
    t = BandwidthTrace.from_steps([(0.3, 4e6), (0.3, 0.0), (0.3, 1e6)])
    calls: list[tuple[float, float]] = []
    t0 = time.monotonic()
    with TraceReplay(
        t, lambda bps: calls.append((time.monotonic() - t0, bps)), duration_s=1.5
    ) as r:
        assert calls and calls[0][1] == 4e6 and calls[0][0] < 0.05  # set before it returns
        assert r.wait(5.0)
    wall = time.monotonic() - t0
    assert 1.45 < wall < 2.5, wall
    due = [(0.0, 4e6), (0.3, 0.0), (0.6, 1e6), (0.9, 4e6), (1.2, 0.0)]
    assert [b for _, b in calls] == [b for _, b in due], calls
    for (at, _), (want, _) in zip(calls, due, strict=True):
        assert want - 0.005 <= at < want + 0.08, calls
    assert not r.running


def test_replay_start_offset_no_loop_and_errors():
    t = BandwidthTrace.from_steps([(0.2, 1.0), (0.2, 2.0)])
    calls: list[float] = []
    with TraceReplay(t, calls.append, start_s=0.2, loop=False) as r:
        assert r.wait(3.0)  # stops at the end of the trace
    assert calls == [2.0]

    def boom(bps: float) -> None:
        if bps == 2.0:
            raise OSError("tc failed")

    r = TraceReplay(t, boom)
    assert r.wait(3.0)
    with pytest.raises(OSError, match="tc failed"):
        r.close()
    with pytest.raises(ValueError):
        TraceReplay(t, calls.append, window_s=0)


def test_replay_close_is_prompt():
    t = BandwidthTrace.from_steps([(100.0, 1.0), (100.0, 2.0)])
    r = TraceReplay(t, lambda bps: None)
    t0 = time.monotonic()
    r.close()
    assert time.monotonic() - t0 < 0.5
    assert not r.running


# -- links following a trace ------------------------------------------------------------------

# 8 Mbit/s for 1 s, 2 Mbit/s for 1 s, then a 1-s outage
PHASES = [(1.0, 8e6), (1.0, 2e6), (1.0, 0.0)]


def _phase_bytes(samples: list[tuple[float, int]], t0: float, skip_s: float) -> list[float]:
    """Bytes received per phase (seconds since t0), leaving the first skip_s of each out."""
    ts = np.array([s[0] - t0 for s in samples])
    n = np.array([s[1] for s in samples], dtype=np.float64)
    out, start = [], 0.0
    for d, _ in PHASES:
        a, b = start + skip_s, start + d
        out.append(float(np.interp(b, ts, n) - np.interp(a, ts, n)) / (b - a))
        start += d
    return out  # bytes per second


def _check_phases(rates_Bps: list[float], outage_max_Bps: float) -> None:
    print("bytes/s per phase:", rates_Bps)
    assert rates_Bps[0] == pytest.approx(PHASES[0][1] / 8, rel=0.3), rates_Bps
    assert rates_Bps[1] == pytest.approx(PHASES[1][1] / 8, rel=0.3), rates_Bps
    assert rates_Bps[2] <= outage_max_Bps, rates_Bps


def _sink() -> tuple[socket.socket, threading.Thread, list[tuple[float, int]]]:
    """A loopback server counting what it receives: (monotonic time, bytes so far)."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(5)
    samples: list[tuple[float, int]] = [(time.monotonic(), 0)]

    def serve() -> None:
        with contextlib.suppress(OSError):
            c, _ = lsock.accept()
            with c:
                c.settimeout(10)
                n = 0
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    d = c.recv(65536)
                    if not d:
                        break
                    n += len(d)
                    samples.append((time.monotonic(), n))

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return lsock, th, samples


@pytest.mark.slow
def test_token_bucket_link_follows_a_trace():
    lsock, th, samples = _sink()
    stop = threading.Event()
    try:
        with TokenBucketLink(lsock.getsockname(), 1e6, timeout_s=10) as link:
            s = socket.create_connection(link.address, timeout=5)
            s.settimeout(0.5)

            def send() -> None:
                buf = bytes(65536)
                deadline = time.monotonic() + 10
                while not stop.is_set() and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        s.send(buf)

            sender = threading.Thread(target=send, daemon=True)
            t0 = time.monotonic()
            trace = BandwidthTrace.from_steps(PHASES)
            with TraceReplay(trace, link.set_rate, loop=False) as r:
                sender.start()
                assert r.wait(5.0)
                # the outage is the trace's last window: it stays at 0 after the end
                time.sleep(max(0.0, t0 + 3.0 - time.monotonic()))
            assert link.rate_bps == 0.0
            stop.set()
            sender.join(5)
            rates = _phase_bytes(samples, t0, 0.1)
            s.close()
    finally:
        stop.set()
        lsock.close()
        th.join(5)
    # the user-space link holds every byte in an outage: at most the one chunk that
    # was being written out when it began
    _check_phases(rates, outage_max_Bps=16384)


@pytest.mark.slow
def test_netns_link_follows_a_trace():
    why = netns_available()
    if why:
        pytest.skip(f"no network namespaces with tbf here: {why}")
    assert tbf_args(0)[:3] == ["tbf", "rate", "8000bit"]
    link = NetnsLink(1e6, prefix=f"ctr{os.getpid() % 10000}", net=196)
    try:
        # the sink prints (monotonic time, bytes so far): CLOCK_MONOTONIC is the same
        # in every network namespace
        srv = (
            "import socket,time\ns=socket.create_server(('0.0.0.0',5597))\ns.settimeout(10)\n"
            "print('up',flush=True)\nc,_=s.accept()\nc.settimeout(0.2)\nn=0\n"
            "end=time.monotonic()+3.5\n"
            "while time.monotonic()<end:\n"
            " try: d=c.recv(65536)\n except TimeoutError: continue\n"
            " if not d: break\n n+=len(d)\n print(time.monotonic(),n,flush=True)\n"
        )
        cli = (
            "import socket,time\n"
            f"s=socket.create_connection(('{link.server_ip}',5597),timeout=10)\n"
            "s.settimeout(0.5)\nb=bytes(65536)\nend=time.monotonic()+3.3\n"
            "while time.monotonic()<end:\n"
            " try: s.send(b)\n except TimeoutError: pass\n"
            "s.close()\n"
        )
        proc = subprocess.Popen(
            link.server_cmd([sys.executable, "-u", "-c", srv]), stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
            sender = subprocess.Popen(link.device_cmd([sys.executable, "-c", cli]))
            try:
                t0 = time.monotonic()
                trace = BandwidthTrace.from_steps(PHASES)
                with TraceReplay(trace, link.set_rate, loop=False) as r:
                    assert r.wait(5.0)
                sender.wait(10)
            finally:
                if sender.poll() is None:
                    sender.kill()
                    sender.wait(5)
            proc.wait(20)
            out = proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            assert proc.stdout is not None
            proc.stdout.close()
    finally:
        link.close()
    samples = [(float(a), int(b)) for a, b in (ln.split() for ln in out.split("\n") if ln)]
    samples.insert(0, (t0 - 1.0, 0))
    # tbf in an outage: 8 kbit/s, so about 1000 bytes/s leak (plus one 1600-byte
    # bucket at its start)
    _check_phases(_phase_bytes(samples, t0, 0.2), outage_max_Bps=4000)
