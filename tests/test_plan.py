"""cic_fast.Planner (the CIC all-bandwidth plan) against min_cut and brute force."""

from __future__ import annotations

import hashlib
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cic_fast
from cic_fast.core.planner import Planner
from cic_fast.core.synthetic import KINDS, dnn_graph
from oracles import brute_force, is_valid_partition, latency_of
from zoo import TORCHVISION, tv_model

REL = 1e-9
ABS = 1e-12


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS)


costs_s = st.one_of(st.just(0.0), st.floats(1e-4, 10.0), st.integers(0, 40).map(lambda k: k / 8))
sizes_b = st.one_of(st.just(0), st.integers(1, 10**7))
bandwidths_bps = st.floats(3.0, 11.0).map(lambda e: 10.0**e)  # 1 kbit/s .. 100 Gbit/s
rtts_s = st.one_of(st.just(0.0), st.floats(1e-4, 1.0))


@st.composite
def small_problems(draw: st.DrawFn, max_nodes: int = 10) -> dict[str, Any]:
    """A random DAG (random labels, several sources) with costs, for brute force."""
    n = draw(st.integers(1, max_nodes))
    order = draw(st.permutations(range(n)))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n))
    edges = [(order[min(a, b)], order[max(a, b)]) for a, b in pairs if a != b]
    return {
        "edges": np.array(edges, dtype=np.int64).reshape(-1, 2),
        "device_s": np.array(draw(st.lists(costs_s, min_size=n, max_size=n))),
        "server_s": np.array(draw(st.lists(costs_s, min_size=n, max_size=n))),
        "out_bytes": np.array(draw(st.lists(sizes_b, min_size=n, max_size=n)), dtype=np.float64),
        "rtt_s": draw(rtts_s),
    }


@st.composite
def dnn_problems(draw: st.DrawFn) -> dict[str, Any]:
    """A DNN-shaped graph (cic_fast.core.synthetic) in one of several cost settings."""
    g = dnn_graph(
        draw(st.integers(64, 160)),
        kind=draw(st.sampled_from(KINDS)),
        seed=draw(st.integers(0, 10**6)),
        device_slowdown=draw(st.sampled_from([1.0, 10.0, 40.0])),
        server_speedup=draw(st.sampled_from([3.0, 10.0, 100.0])),
    )
    return {
        "edges": g.edges,
        "device_s": g.device_s,
        "server_s": g.server_s,
        "out_bytes": g.out_bytes,
        "rtt_s": draw(st.one_of(st.just(0.0), st.floats(1e-4, 0.05))),
    }


def arrays(p: dict[str, Any]) -> tuple[Any, ...]:
    return p["edges"], p["device_s"], p["server_s"], p["out_bytes"]


def check_priced(part: cic_fast.Partition, p: dict[str, Any], bw: float) -> None:
    """The decision is a valid partition priced exactly by the cost model."""
    assert part.on_device.dtype == np.bool_
    assert is_valid_partition(part.on_device, p["edges"])
    ref = latency_of(part.on_device, *arrays(p), bw, p["rtt_s"])
    assert close(part.latency_s, ref.latency_s)
    assert close(part.transfer_s, ref.transfer_s)
    assert part.rtt_s == ref.rtt_s
    assert part.bytes_sent == round(ref.bytes_sent)
    np.testing.assert_array_equal(part.sent, ref.sent)
    assert part.bandwidth_bps == bw


# --- exactness -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems(), st.lists(bandwidths_bps, min_size=1, max_size=4))
def test_decide_matches_brute_force(p: dict[str, Any], bws: list[float]) -> None:
    for compress in (True, False):
        planner = Planner(*arrays(p), rtt_s=p["rtt_s"], compress=compress)
        k = planner.stats["K"]
        assert len(planner.breakpoints_bps) == k - 1
        # 2K - 1, plus one per end where the seed ties (plan.hpp)
        assert planner.stats["min_cuts"] <= 2 * k + 1
        for bw in [*bws, *planner.breakpoints_bps]:
            best, _ = brute_force(*arrays(p), bw, p["rtt_s"])
            part = planner.decide(bw)
            assert close(part.latency_s, best), (bw, part, best)
            check_priced(part, p, bw)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dnn_problems(), st.lists(bandwidths_bps, min_size=4, max_size=8))
def test_decide_matches_min_cut_on_dnn_graphs(p: dict[str, Any], bws: list[float]) -> None:
    planner = Planner(*arrays(p), rtt_s=p["rtt_s"])
    graph = cic_fast.Graph(*arrays(p))
    bps = planner.breakpoints_bps
    near = [b * f for b in bps for f in (1 - 1e-7, 1.0, 1 + 1e-7)]
    for bw in [*bws, *near]:
        part = planner.decide(bw)
        ref = graph.min_cut(bw, p["rtt_s"])
        assert close(part.latency_s, ref.latency_s), (bw, part, ref)
    check_priced(planner.decide(bws[0]), p, bws[0])
    assert planner.stats["min_cuts"] <= 2 * planner.stats["K"] + 1


def test_chain_example() -> None:
    # input (600 KB) -> conv (50 ms / 5 ms, 1 KB out) -> fc (50 / 5 ms)
    p = Planner([(0, 1), (1, 2)], [0.0, 0.05, 0.05], [0.0, 0.005, 0.005], [600e3, 1e3, 4e3])
    assert p.stats["K"] == 3
    assert p.breakpoints_bps[0] == pytest.approx(8e3 / 0.045)
    assert p.decide(1e3).on_device.tolist() == [True, True, True]
    assert p.decide(10e6).on_device.tolist() == [True, True, False]
    assert p.decide(1e10).on_device.tolist() == [True, False, False]
    fast = p.decide(math.inf)
    assert fast.on_device.tolist() == [True, False, False]
    assert fast.transfer_s == 0.0
    seg = p.segments
    assert [s.lo_bps for s in seg] == [0.0, *p.breakpoints_bps]
    assert [s.hi_bps for s in seg] == [*p.breakpoints_bps, math.inf]
    assert all(a is b.on_device for a, b in zip(p.partitions, seg, strict=True))
    assert seg[1].latency_s(10e6) == p.decide(10e6).latency_s


def test_rtt_is_added_to_offloading_lines_only() -> None:
    args = ([(0, 1), (1, 2)], [0.0, 0.05, 0.05], [0.0, 0.005, 0.005], [600e3, 1e3, 4e3])
    assert Planner(*args, rtt_s=1.0).stats["K"] == 1  # never worth it
    p = Planner(*args, rtt_s=0.01)
    g = cic_fast.Graph(*args)
    for bw in np.logspace(3, 11, 50):
        assert close(p.decide(bw).latency_s, g.min_cut(bw, 0.01).latency_s)
    assert p.decide(1e3).rtt_s == 0.0
    assert p.decide(1e10).rtt_s == 0.01


def test_c_and_python_decide_agree() -> None:
    g = dnn_graph(300, kind="mixed", seed=1)
    p = Planner(g.edges, g.device_s, g.server_s, g.out_bytes, rtt_s=0.003)
    fields = ("latency_s", "device_s", "transfer_s", "server_s", "rtt_s", "bytes_sent")
    for bw in [1e3, 1e6, 1.5e7, 1e9, 1e11, math.inf, 7, np.float64(2e7)]:
        a, b = p.decide(bw), Planner.decide(p, bw)
        assert type(a) is cic_fast.Partition
        for f in (*fields, "bandwidth_bps"):
            assert getattr(a, f) == getattr(b, f)
            assert type(getattr(a, f)) is type(getattr(b, f))
        assert a.on_device is b.on_device
        assert not a.on_device.flags.writeable


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, -math.inf, 0])
def test_decide_rejects_bad_bandwidth(bad: float) -> None:
    p = Planner([(0, 1)], [0.0, 1.0], [0.0, 0.1], [1e3, 1e3])
    with pytest.raises(ValueError, match="bandwidth_bps"):
        p.decide(bad)
    with pytest.raises(ValueError, match="bandwidth_bps"):
        Planner.decide(p, bad)


@pytest.mark.parametrize("bad", [True, "1e6", None])
def test_decide_rejects_non_numbers(bad: Any) -> None:
    p = Planner([(0, 1)], [0.0, 1.0], [0.0, 0.1], [1e3, 1e3])
    with pytest.raises(TypeError):
        p.decide(bad)


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="rtt_s"):
        Planner([(0, 1)], [0.0, 1.0], [0.0, 0.1], [1e3, 1e3], rtt_s=-1.0)
    with pytest.raises(ValueError, match="cycle"):
        Planner([(0, 1), (1, 0)], [0.0, 1.0], [0.0, 0.1], [1e3, 1e3])
    with pytest.raises(ValueError, match="names"):
        Planner([(0, 1)], [0.0, 1.0], [0.0, 0.1], [1e3, 1e3], names=["a"])


# --- rescaled, from_profiles -----------------------------------------------------------


def test_rescaled() -> None:
    g = dnn_graph(200, kind="resnet", seed=3)
    p = Planner(g.edges, g.device_s, g.server_s, g.out_bytes, rtt_s=0.002)
    q = p.rescaled(device=2.0, server=5.0)
    ref = cic_fast.Graph(g.edges, g.device_s * 2.0, g.server_s * 5.0, g.out_bytes)
    for bw in np.logspace(3, 11, 40):
        assert close(q.decide(bw).latency_s, ref.min_cut(bw, 0.002).latency_s)
    busy = p.rescaled(server=1e9)  # a server this slow is never used
    assert busy.stats["K"] == 1 and busy.decide(1e11).on_device.all()
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            p.rescaled(device=bad)


def test_from_profiles() -> None:
    torch = pytest.importorskip("torch")
    from cic_fast.frontend.profiling import Profile
    from cic_fast.frontend.tracing import trace

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 8 * 8, 10),
    ).eval()
    graph = trace(model, torch.randn(1, 3, 32, 32))
    dev_s = np.asarray(graph.flops, float) / 1e9 + np.asarray(graph.out_bytes, float) / 1e9
    dev = Profile.from_times(graph, dev_s)
    srv = Profile.from_times(graph, dev_s / 10)
    p = Planner.from_profiles(graph, dev, srv, rtt_s=0.001)
    assert p.names == graph.names
    g = cic_fast.Graph(graph.edges, dev_s, dev_s / 10, graph.out_bytes)
    for bw in np.logspace(3, 11, 30):
        assert close(p.decide(bw).latency_s, g.min_cut(bw, 0.001).latency_s)
    other = trace(torch.nn.Sequential(torch.nn.ReLU()).eval(), torch.randn(1, 3))
    with pytest.raises(ValueError, match="profile"):
        Planner.from_profiles(other, dev, srv)


@pytest.mark.parametrize("name", [*TORCHVISION, "densenet121"])
def test_torchvision_graphs(name: str) -> None:
    """The plan equals the full min-cut on every model of the front end's test list."""
    pytest.importorskip("torch")
    from cic_fast.frontend.tracing import trace

    model, inputs = tv_model(name)
    graph = trace(model, inputs)
    dev_s = np.asarray(graph.flops, float) / 2e9 + np.asarray(graph.out_bytes, float) / 1e9
    for slow, rtt in ((1.0, 0.0), (30.0, 0.001)):
        p = Planner(graph.edges, dev_s * slow, dev_s / 10, graph.out_bytes, rtt_s=rtt)
        g = cic_fast.Graph(graph.edges, dev_s * slow, dev_s / 10, graph.out_bytes)
        for bw in np.logspace(3, 11, 25):
            assert close(p.decide(bw).latency_s, g.min_cut(bw, rtt).latency_s)
    if graph.n_nodes >= 100:
        assert p.stats["compressed_nodes"] * 5 <= p.stats["original_nodes"]


# --- save / load -----------------------------------------------------------------------


@pytest.fixture
def planner() -> Planner:
    g = dnn_graph(240, kind="mixed", seed=2)
    return Planner(
        g.edges,
        g.device_s,
        g.server_s,
        g.out_bytes,
        rtt_s=0.004,
        names=[f"n{i}" for i in range(240)],
    )


def test_save_load_round_trip(planner: Planner, tmp_path: Path) -> None:
    path = tmp_path / "model.plan"
    planner.save(path)
    q = Planner.load(path)
    assert q.breakpoints_bps == planner.breakpoints_bps
    assert q.rtt_s == planner.rtt_s
    assert q.names == planner.names
    assert "load_s" in q.stats and q.stats["K"] == planner.stats["K"]
    for bw in [*np.logspace(3, 11, 60), math.inf]:
        a, b = planner.decide(bw), q.decide(bw)
        np.testing.assert_array_equal(a.on_device, b.on_device)
        assert a.latency_s == b.latency_s
    # and it still re-plans
    assert q.rescaled(server=2.0).stats["K"] >= 1
    # pickling goes through the same checked format
    r = pickle.loads(pickle.dumps(planner))
    assert r.breakpoints_bps == planner.breakpoints_bps
    assert r.decide(3e6).latency_s == planner.decide(3e6).latency_s
    assert Planner.from_bytes(planner.to_bytes()).names == planner.names


def _rewrite(path: Path, payload: bytes, version: int = 1) -> None:
    head = struct.pack(
        "<8sIQ32s", b"CICPLAN\x00", version, len(payload), hashlib.sha256(payload).digest()
    )
    path.write_bytes(head + payload)


def test_load_rejects_damaged_files(planner: Planner, tmp_path: Path) -> None:
    path = tmp_path / "model.plan"
    planner.save(path)
    data = path.read_bytes()
    bad = tmp_path / "bad.plan"
    cases = {
        "magic": b"PK\x03\x04 a zip file, not a plan",
        "magic ": b"",
        "truncated": data[: len(data) - 7],
        "trailing": data + b"\x00",
        "checksum": data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:],
    }
    for what, blob in cases.items():
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=what.strip() if what != "trailing" else "truncated"):
            Planner.load(bad)
    payload = data[52:]
    _rewrite(bad, payload, version=99)
    with pytest.raises(ValueError, match="version"):
        Planner.load(bad)
    # A valid checksum over tampered content: a header that lies about the sizes ...
    hlen = struct.unpack_from("<Q", payload)[0]
    _rewrite(bad, payload[: 8 + hlen] + payload[8 + hlen + 8 :])
    with pytest.raises(ValueError, match="malformed"):
        Planner.load(bad)
    # ... or a partition changed to another valid one (all on the device) that no
    # longer reproduces the breakpoints.
    n, k = planner.n_nodes, planner.stats["K"]
    parts_at = len(payload) - 8 * (k - 1) - k * ((n + 7) // 8)
    tampered = bytearray(payload)
    tampered[parts_at + (k - 1) * ((n + 7) // 8) : len(payload) - 8 * (k - 1)] = b"\xff" * (
        (n + 7) // 8
    )
    _rewrite(bad, bytes(tampered))
    with pytest.raises(ValueError):
        Planner.load(bad)


# --- the CLI command (cli_plan.add_plan_parser; cli.py wires it in as `cic-fast plan`) ---


def tiny_model() -> Any:
    """A model spec for the CLI test: ``test_plan:tiny_model``."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 8 * 8, 10),
    )


def test_cli_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    import argparse

    from cic_fast.cli.plan import add_plan_parser
    from cic_fast.frontend.profiling import Profile
    from cic_fast.frontend.tracing import trace

    model = tiny_model().eval()
    graph = trace(model, torch.randn(1, 3, 32, 32))
    dev_s = np.asarray(graph.flops, float) / 1e8 + np.asarray(graph.out_bytes, float) / 1e8
    Profile.from_times(graph, dev_s).save(tmp_path / "dev.json")
    Profile.from_times(graph, dev_s / 20).save(tmp_path / "srv.json")
    parser = argparse.ArgumentParser()
    add_plan_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "m.plan"
    args = parser.parse_args(
        ["plan", "test_plan:tiny_model", "--input-shape", "1,3,32,32",
         "--device", str(tmp_path / "dev.json"), "--server", str(tmp_path / "srv.json"),
         "--rtt-ms", "1", "-o", str(out)]
    )  # fmt: skip
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "bandwidth" in text and "K = " in text and f"wrote {out}" in text
    p = Planner.load(out)
    assert p.rtt_s == 0.001 and p.names == graph.names
    args = parser.parse_args(["plan", str(out)])
    assert args.func(args) == 0
    assert "K = " in capsys.readouterr().out
    # the throughput plan: periods in the table, the objective in the file
    tout = tmp_path / "t.plan"
    png = tmp_path / "t.png"
    args = parser.parse_args(
        ["plan", "test_plan:tiny_model", "--input-shape", "1,3,32,32",
         "--device", str(tmp_path / "dev.json"), "--server", str(tmp_path / "srv.json"),
         "--objective", "throughput", "-o", str(tout), "--plot", str(png)]
    )  # fmt: skip
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "period (ms)" in text and "objective throughput" in text and "Pareto" in text
    t = Planner.load(tout)
    assert t.objective == "throughput"
    for bw in (1e5, 1e7, 1e9):
        assert t.decide(bw).period_s == t.graph.max_throughput(bw).period_s
    assert png.stat().st_size > 1000


# --- the extension's Plan directly -------------------------------------------------------


def test_core_plan_api() -> None:
    from cic_fast import _core

    g = cic_fast.Graph([(0, 1), (1, 2)], [0.0, 0.05, 0.05], [0.0, 0.005, 0.005], [600e3, 1e3, 4e3])
    plan = _core.Plan(g._core, 0.0)
    assert plan.n_partitions == 3 and plan.n_nodes == 3 and plan.num_solves <= 5
    np.testing.assert_allclose(plan.lines, [[0.1, 0.0], [0.055, 8e3], [0.01, 4.8e6]])
    assert [plan.segment(b) for b in (1e3, 1e7, 1e10, math.inf)] == [0, 1, 2, 2]
    k, latency, dev, transfer, srv, rtt, nbytes = plan.decide(1e7)
    assert k == 1 and latency == dev + transfer + srv + rtt and nbytes == 1e3
    on, sent, *_ = plan.partition(1)
    assert on.tolist() == [True, True, False] and sent.tolist() == [1]
    with pytest.raises(IndexError):
        plan.partition(3)
    with pytest.raises(ValueError, match="bandwidth_bps"):
        plan.decide(math.nan)
    parts = np.array([[1, 1, 1], [1, 0, 0]], dtype=bool)
    two = _core.Plan.from_partitions(g._core, 0.0, parts)
    assert two.n_partitions == 2 and two.num_solves == 0
    with pytest.raises(ValueError, match="shape"):
        _core.Plan.from_partitions(g._core, 0.0, parts[:, :2])
    with pytest.raises(ValueError, match="closed under predecessors"):
        _core.Plan.from_partitions(g._core, 0.0, np.array([[1, 0, 1]], dtype=bool))
    with pytest.raises(ValueError, match="at least one"):
        _core.Plan.from_partitions(g._core, 0.0, np.zeros((0, 3), dtype=bool))
    with pytest.raises(ValueError, match="rtt_s"):
        _core.Plan(g._core, -1.0)
    small, stats = _core.Plan.compressed(g._core, 0.0)
    np.testing.assert_array_equal(small.breakpoints_bps, plan.breakpoints_bps)
    assert stats["original_nodes"] == 3


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from cic_fast.cli.plan import format_plan, plot_plan

    g = dnn_graph(150, kind="mixed", seed=1, device_slowdown=10.0, server_speedup=100.0)
    p = Planner(g.edges, g.device_s, g.server_s, g.out_bytes, rtt_s=0.002)
    plot_plan(p, tmp_path / "plan.png")
    assert (tmp_path / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_plan(p).count("\n") == p.stats["K"] + 2
