"""The throughput objective: `max_throughput`, `Partition.period_s` and the throughput plan.

Exactness against three independent references (tests/oracles.py): brute force
over every valid partition of random DAGs up to 12 nodes (ties, zero costs,
several inputs, fan-out), a scan of every cut point on chains, and a MILP
(scipy / HiGHS) on DNN-shaped graphs of 200-700 layers. The plan is held to
`max_throughput` at random bandwidths and to the brute-force Pareto front; the
step limit, save / load, bad input and threads are checked too.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

import cic_fast
from cic_fast.core import planfile
from cic_fast.core.synthetic import dnn_graph
from oracles import (
    BRUTE_FORCE_MAX_NODES,
    brute_force_pareto,
    brute_force_period,
    milp_period,
)

REL = 1e-9


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-15)


def random_problem(rng: np.random.Generator, n: int, *, ties: bool = False):
    """A random DAG (edges from lower to higher index): several inputs and fan-out likely."""
    edges = [(u, v) for v in range(n) for u in range(v) if rng.random() < 0.35]
    if ties:  # few distinct values: many partitions tie
        dev = rng.choice([0.0, 0.01, 0.02], n)
        srv = rng.choice([0.0, 0.001, 0.002], n)
        size = rng.choice([0.0, 1e3, 2e3], n)
    else:
        dev = np.where(rng.random(n) < 0.15, 0.0, rng.random(n) * 0.05)
        srv = np.where(rng.random(n) < 0.15, 0.0, rng.random(n) * 0.01)
        size = np.where(rng.random(n) < 0.15, 0.0, rng.random(n) * 1e5)
    e = np.array(edges, dtype=np.int64).reshape(-1, 2)
    return e, dev, srv, size


BANDWIDTHS = (1e4, 1e5, 1e6, 1e7, 1e8, math.inf)


@pytest.mark.parametrize("ties", [False, True])
def test_max_throughput_equals_brute_force(ties):
    rng = np.random.default_rng(1 if ties else 2)
    for _ in range(120):
        n = int(rng.integers(1, BRUTE_FORCE_MAX_NODES + 1))
        e, dev, srv, size = random_problem(rng, n, ties=ties)
        g = cic_fast.Graph(e, dev, srv, size)
        for bw in BANDWIDTHS:
            p = g.max_throughput(bw)
            ref = brute_force_period(e, dev, srv, size, bw)
            assert p.optimal and p.gap_s == 0.0
            assert close(p.period_s, ref.period_s), (n, bw, p.period_s, ref.period_s)
            # recomputed from the partition, and valid (evaluate wants a finite rate)
            again = cic_fast.Graph(e, dev, srv, size).evaluate(p.on_device, min(bw, 1e300))
            assert close(p.period_s, again.period_s)


def test_fewest_bytes_among_equal_periods():
    # 0 -> 1 -> 2: server-only, split after 1 and all-device all have period 1 at
    # this bandwidth; all-device sends nothing.
    e = [(0, 1), (1, 2)]
    p = cic_fast.max_throughput(e, [0.0, 0.5, 0.5], [0.0, 1.0, 1.0], [1e3, 1e3, 1e3], 8e3)
    assert p.period_s == 1.0
    assert p.on_device.all() and p.bytes_sent == 0


def test_chain_equals_the_best_cut_point():
    rng = np.random.default_rng(3)
    for n in (2, 5, 30, 120):
        e = np.array([(v, v + 1) for v in range(n - 1)], dtype=np.int64).reshape(-1, 2)
        dev, srv, size = rng.random(n) * 0.02, rng.random(n) * 0.002, rng.random(n) * 1e6
        g = cic_fast.Graph(e, dev, srv, size)
        for bw in (1e5, 1e6, 1e7, 1e8, 1e9):
            best = min(
                g.evaluate(np.arange(n) < k, bw).period_s for k in range(1, n + 1)
            )  # k layers on the device: every valid partition of a chain
            assert close(g.max_throughput(bw).period_s, best)


@pytest.mark.parametrize(
    ("kind", "n", "seed"),
    [
        ("resnet", 200, 0),
        ("inception", 300, 1),
        ("densenet", 700, 0),
        ("transformer", 400, 0),
        ("mixed", 500, 1),
    ],
)
def test_max_throughput_equals_milp_on_dnn_graphs(kind, n, seed):
    g = dnn_graph(n, kind=kind, seed=seed)
    graph = cic_fast.Graph(g.edges, g.device_s, g.server_s, g.out_bytes)
    for bw in (2e6, 2e7, 2e8):
        p = graph.max_throughput(bw)
        ref = milp_period(g.edges, g.device_s, g.server_s, g.out_bytes, bw)
        assert p.optimal
        # HiGHS is exact up to its feasibility tolerance (1e-7 of the largest time)
        tol = 1e-6 * max(g.device_s.max(), g.server_s.max())
        assert p.period_s <= ref.period_s + tol, (bw, p.period_s, ref.period_s)
        assert ref.period_s <= p.period_s + tol


def test_plan_pieces_equal_the_brute_force_front():
    rng = np.random.default_rng(4)
    for _ in range(80):
        n = int(rng.integers(1, 11))
        e, dev, srv, size = random_problem(rng, n, ties=bool(rng.random() < 0.3))
        plan = cic_fast.Planner(e, dev, srv, size, objective="throughput")
        front = brute_force_pareto(e, dev, srv, size)
        got = [(max(s.device_s, s.server_s), s.bytes_sent) for s in plan.segments]
        # brute force sums in another order: equal values may differ in the last bit
        merged: list[tuple[float, float]] = []
        for c, b in front:
            if merged and close(c, merged[-1][0]):
                continue
            merged.append((c, b))
        assert len(got) == len(merged), (got, front)
        for (c1, b1), (c2, b2) in zip(got, merged, strict=True):
            assert close(c1, c2) and close(b1, b2)
        for bw in (*BANDWIDTHS[:-1], *plan.breakpoints_bps):
            best = brute_force_period(e, dev, srv, size, bw).period_s
            assert close(plan.decide(bw).period_s, best)


@pytest.mark.parametrize("kind", ["resnet", "inception", "densenet", "transformer", "mixed"])
def test_plan_decides_as_max_throughput_at_random_bandwidths(kind):
    g = dnn_graph(400, kind=kind, seed=2)
    plan = cic_fast.Planner(g.edges, g.device_s, g.server_s, g.out_bytes, objective="throughput")
    assert plan.objective == "throughput" and plan.stats["complete"]
    graph = plan.graph
    rng = np.random.default_rng(5)
    for bw in 10 ** rng.uniform(4, 10, 40):
        d = plan.decide(float(bw))
        assert close(d.period_s, graph.max_throughput(float(bw)).period_s)
        # the same partition priced by the Graph
        assert d.period_s == graph.evaluate(d.on_device, float(bw)).period_s
    lows = (0.0, *plan.breakpoints_bps)
    for seg, lo in zip(plan.segments, lows, strict=True):
        bw = 2.0 * lo if lo else 1e3
        want = max(seg.device_s, 8.0 * seg.bytes_sent / bw, seg.server_s)
        assert seg.period_s(bw) == want


def test_period_s_is_on_every_partition():
    e, d, s, b = [(0, 1), (1, 2)], [0.0, 0.05, 0.05], [0.0, 0.005, 0.005], [600e3, 1e3, 4e3]
    p = cic_fast.min_cut(e, d, s, b, 10e6)
    assert p.period_s == max(p.device_s, p.transfer_s, p.server_s)
    assert p.optimal and p.gap_s == 0.0
    q = cic_fast.Planner(e, d, s, b).decide(10e6)
    assert q.period_s == max(q.device_s, q.transfer_s, q.server_s)
    alldev = cic_fast.Graph(e, d, s, b).evaluate([True, True, True], 1e6)
    assert alldev.period_s == alldev.device_s


def test_step_limit_gives_the_best_found_and_a_true_gap():
    rng = np.random.default_rng(6)
    hit = 0
    for _ in range(60):
        n = int(rng.integers(6, BRUTE_FORCE_MAX_NODES + 1))
        e, dev, srv, size = random_problem(rng, n)
        best = brute_force_period(e, dev, srv, size, 1e6).period_s
        for steps in (0, 2, 5):
            p = cic_fast.max_throughput(e, dev, srv, size, 1e6, max_steps=steps)
            assert p.period_s >= best * (1 - REL)
            assert p.period_s - p.gap_s <= best * (1 + REL) + 1e-15  # a true lower bound
            if p.optimal:
                assert close(p.period_s, best)
            else:
                hit += 1
                assert "optimal=False" in repr(p)
    assert hit > 0


def test_throughput_plan_past_its_step_limit_warns():
    g = dnn_graph(300, kind="inception", seed=1)
    with pytest.warns(RuntimeWarning, match="max_steps"):
        plan = cic_fast.Planner(
            g.edges, g.device_s, g.server_s, g.out_bytes, objective="throughput", max_steps=10
        )
    assert not plan.stats["complete"]
    assert len(plan.segments) >= 1


def test_save_load_keeps_the_objective(tmp_path):
    g = dnn_graph(300, kind="mixed", seed=0)
    plan = cic_fast.Planner(g.edges, g.device_s, g.server_s, g.out_bytes, objective="throughput")
    plan.save(tmp_path / "t.plan")
    back = cic_fast.Planner.load(tmp_path / "t.plan")
    assert back.objective == "throughput"
    assert back.breakpoints_bps == plan.breakpoints_bps
    for a, b in zip(back.partitions, plan.partitions, strict=True):
        assert np.array_equal(a, b)
    assert back.decide(3e6).period_s == plan.decide(3e6).period_s
    assert "objective='throughput'" in repr(back)


def test_a_file_without_an_objective_is_a_latency_plan():
    g = dnn_graph(120, kind="resnet", seed=0)
    plan = cic_fast.Planner(g.edges, g.device_s, g.server_s, g.out_bytes)
    f = planfile.decode(plan.to_bytes())
    assert f.objective == "latency"
    # re-encode with the header of the first releases (no "objective" key)
    data = _without_objective(plan.to_bytes())
    back = cic_fast.Planner.from_bytes(data)
    assert back.objective == "latency" and back.breakpoints_bps == plan.breakpoints_bps


def _without_objective(data: bytes) -> bytes:
    import hashlib
    import json
    import struct

    head = struct.Struct("<8sIQ32s")
    magic, version, _, _ = head.unpack_from(data)
    payload = data[head.size :]
    (hlen,) = struct.unpack_from("<Q", payload)
    meta = json.loads(payload[8 : 8 + hlen])
    del meta["objective"]
    new_head = json.dumps(meta).encode()
    new_payload = struct.pack("<Q", len(new_head)) + new_head + payload[8 + hlen :]
    return head.pack(magic, version, len(new_payload), hashlib.sha256(new_payload).digest()) + (
        new_payload
    )


def test_bad_input_is_refused_clearly():
    e, d, s, b = [(0, 1)], [0.0, 0.1], [0.0, 0.01], [1e3, 1e3]
    g = cic_fast.Graph(e, d, s, b)
    for bw in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="bandwidth_bps"):
            g.max_throughput(bw)
    with pytest.raises(TypeError, match="bandwidth_bps"):
        g.max_throughput("fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_steps"):
        g.max_throughput(1e6, max_steps=-1)
    with pytest.raises(TypeError, match="max_steps"):
        g.max_throughput(1e6, max_steps=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="objective"):
        cic_fast.Planner(e, d, s, b, objective="fps")
    with pytest.raises(TypeError, match="objective"):
        cic_fast.Planner(e, d, s, b, objective=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cycle"):
        cic_fast.max_throughput([(0, 1), (1, 0)], d, s, b, 1e6)


def test_threads_share_one_graph_and_one_plan():
    g = dnn_graph(500, kind="inception", seed=3)
    graph = cic_fast.Graph(g.edges, g.device_s, g.server_s, g.out_bytes)
    plan = cic_fast.Planner(g.edges, g.device_s, g.server_s, g.out_bytes, objective="throughput")
    rates = [float(x) for x in np.logspace(5, 9, 16)]
    # references from a separate Graph, one thread
    ref = [cic_fast.max_throughput(g.edges, g.device_s, g.server_s, g.out_bytes, r) for r in rates]
    errors: list[str] = []
    start = threading.Barrier(8)

    def work(k: int) -> None:
        start.wait()  # the first calls race on the search's one-time set-up
        for i in range(len(rates)):
            r = rates[(i + k) % len(rates)]
            want = ref[(i + k) % len(rates)]
            got = graph.max_throughput(r)
            dec = plan.decide(r)
            if not np.array_equal(got.on_device, want.on_device):
                errors.append(f"thread {k}: max_throughput differs at {r}")
            if not close(dec.period_s, want.period_s):
                errors.append(f"thread {k}: decide differs at {r}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
