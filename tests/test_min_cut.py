"""cic_fast.min_cut and cic_fast.Graph against independent oracles (tests/oracles.py).

Small random DAGs are checked against brute force over every valid partition,
DNN-shaped graphs against networkx's min cut of the integer DADS network, and
hand-drawn graphs against answers worked out by hand.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cic_fast
from cic_fast.core.synthetic import KINDS, dnn_graph
from oracles import (
    brute_force,
    is_valid_partition,
    latency_of,
    networkx_cut,
    networkx_optimum,
    sent_nodes,
)

REL = 1e-9
ABS = 1e-12

SMALL = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS)


# --- strategies ----------------------------------------------------------------------

costs_s = st.one_of(
    st.just(0.0),
    st.floats(1e-4, 10.0),
    st.integers(0, 40).map(lambda k: k / 8),  # exact binary fractions: many exact ties
)
sizes_b = st.one_of(st.just(0), st.integers(1, 10**7))
bandwidths_bps = st.floats(3.0, 11.0).map(lambda e: 10.0**e)  # log-uniform 1e3..1e11
rtts_s = st.one_of(st.just(0.0), st.floats(1e-4, 1.0))


@st.composite
def small_problems(draw: st.DrawFn, max_nodes: int = 12) -> dict[str, Any]:
    """A random DAG (random labels, duplicates, several sources) with costs."""
    n = draw(st.integers(1, max_nodes))
    order = draw(st.permutations(range(n)))  # topological order != label order
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n))
    edges = [(order[min(a, b)], order[max(a, b)]) for a, b in pairs if a != b]
    if edges and draw(st.booleans()):
        edges += draw(st.lists(st.sampled_from(edges), max_size=4))  # duplicates
    form = draw(st.sampled_from(["list", "int64", "int32", "uint16"]))
    edge_arg: Any = edges if form == "list" else np.array(edges, dtype=form).reshape(-1, 2)
    size = draw(st.lists(sizes_b, min_size=n, max_size=n))
    return {
        "edges": edge_arg,
        "device_s": np.array(draw(st.lists(costs_s, min_size=n, max_size=n))),
        "server_s": np.array(draw(st.lists(costs_s, min_size=n, max_size=n))),
        "out_bytes": np.array(size, dtype=draw(st.sampled_from([np.int64, np.float64]))),
        "bandwidth_bps": draw(bandwidths_bps),
        "rtt_s": draw(rtts_s),
    }


def args_of(p: dict[str, Any]) -> tuple[Any, ...]:
    return (p["edges"], p["device_s"], p["server_s"], p["out_bytes"], p["bandwidth_bps"])


def edges_of(p: dict[str, Any]) -> np.ndarray:
    return np.asarray(p["edges"], dtype=np.int64).reshape(-1, 2)


# --- checks --------------------------------------------------------------------------


def check_partition(
    part: cic_fast.Partition,
    edges: Any,
    device_s: Any,
    server_s: Any,
    out_bytes: Any,
    bandwidth_bps: float,
    rtt_s: float = 0.0,
) -> None:
    """Every field of a Partition agrees with the formula applied to its on_device."""
    n = len(device_s)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    assert isinstance(part.on_device, np.ndarray)
    assert part.on_device.dtype == np.bool_
    assert part.on_device.shape == (n,)
    assert is_valid_partition(part.on_device, e), "inputs on server or not closed"
    ref = latency_of(part.on_device, e, device_s, server_s, out_bytes, bandwidth_bps, rtt_s)
    assert close(part.latency_s, ref.latency_s)
    assert close(part.device_s, ref.device_s)
    assert close(part.server_s, ref.server_s)
    assert close(part.transfer_s, ref.transfer_s)
    assert part.rtt_s == ref.rtt_s
    assert close(part.latency_s, part.device_s + part.transfer_s + part.server_s + part.rtt_s)
    # exact: the sum transfer_s is computed from, never truncated (issue 8)
    assert type(part.bytes_sent) is float
    assert close(part.bytes_sent, ref.bytes_sent)
    assert part.transfer_s == 8.0 * part.bytes_sent / bandwidth_bps
    assert part.sent.dtype == np.int64
    np.testing.assert_array_equal(part.sent, ref.sent)
    assert part.bandwidth_bps == bandwidth_bps
    assert part.offloads == (not part.on_device.all())


def check_same(a: cic_fast.Partition, b: cic_fast.Partition) -> None:
    np.testing.assert_array_equal(a.on_device, b.on_device)
    np.testing.assert_array_equal(a.sent, b.sent)
    assert a.bytes_sent == b.bytes_sent
    for field in ("latency_s", "device_s", "server_s", "transfer_s", "rtt_s"):
        assert close(getattr(a, field), getattr(b, field)), field


# --- the oracles themselves ----------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(small_problems())
def test_oracles_agree(p: dict[str, Any]) -> None:
    best, argmins = brute_force(*args_of(p), p["rtt_s"])
    nxo = networkx_optimum(*args_of(p), p["rtt_s"])
    assert argmins
    assert close(nxo.latency_s, best)
    assert any(np.array_equal(nxo.on_device, d) for d in argmins)


# --- small random graphs vs brute force ----------------------------------------------


@SMALL
@given(small_problems())
def test_min_cut_is_brute_force_optimum(p: dict[str, Any]) -> None:
    best, _ = brute_force(*args_of(p), p["rtt_s"])
    part = cic_fast.min_cut(*args_of(p), rtt_s=p["rtt_s"])
    assert close(part.latency_s, best), (part.latency_s, best)
    check_partition(part, *args_of(p), p["rtt_s"])
    graph = cic_fast.Graph(p["edges"], p["device_s"], p["server_s"], p["out_bytes"])
    again = graph.evaluate(part.on_device, p["bandwidth_bps"], rtt_s=p["rtt_s"])
    check_same(again, part)
    check_same(graph.min_cut(p["bandwidth_bps"], rtt_s=p["rtt_s"]), part)


@settings(max_examples=100, deadline=None)
@given(small_problems(), st.data())
def test_evaluate_prices_any_valid_partition(p: dict[str, Any], data: st.DataObject) -> None:
    """evaluate() on a random closed set (a down-closure of random nodes)."""
    e = edges_of(p)
    n = len(p["device_s"])
    on_device = np.zeros(n, dtype=bool)
    on_device[data.draw(st.lists(st.integers(0, n - 1)))] = True
    has_pred = np.zeros(n, dtype=bool)
    has_pred[e[:, 1]] = True
    on_device |= ~has_pred
    for _ in range(n):  # close under predecessors
        on_device[e[on_device[e[:, 1]], 0]] = True
    graph = cic_fast.Graph(p["edges"], p["device_s"], p["server_s"], p["out_bytes"])
    part = graph.evaluate(on_device, p["bandwidth_bps"], rtt_s=p["rtt_s"])
    np.testing.assert_array_equal(part.on_device, on_device)
    check_partition(part, *args_of(p), p["rtt_s"])
    assert part.latency_s >= graph.min_cut(p["bandwidth_bps"], rtt_s=p["rtt_s"]).latency_s * (
        1 - REL
    )


@settings(max_examples=60, deadline=None)
@given(small_problems(), st.lists(st.tuples(bandwidths_bps, rtts_s), min_size=1, max_size=8))
def test_prepared_graph_reused_equals_fresh(
    p: dict[str, Any], queries: list[tuple[float, float]]
) -> None:
    graph = cic_fast.Graph(p["edges"], p["device_s"], p["server_s"], p["out_bytes"])
    for bw, rtt in queries + queries[::-1]:
        fresh = cic_fast.min_cut(
            p["edges"], p["device_s"], p["server_s"], p["out_bytes"], bw, rtt_s=rtt
        )
        reused = graph.min_cut(bw, rtt_s=rtt)
        assert close(reused.latency_s, fresh.latency_s)
        check_partition(reused, p["edges"], p["device_s"], p["server_s"], p["out_bytes"], bw, rtt)


# --- DNN-shaped graphs vs networkx ---------------------------------------------------

MBITS = (0.1, 1.1, 5.85, 18.88, 100.0, 1e4)  # DADS field links and beyond


def _solve_both(g: Any, mbits: float, rtt_s: float = 0.0) -> None:
    bw = mbits * 1e6
    ref = networkx_optimum(g.edges, g.device_s, g.server_s, g.out_bytes, bw, rtt_s)
    part = cic_fast.min_cut(g.edges, g.device_s, g.server_s, g.out_bytes, bw, rtt_s=rtt_s)
    assert math.isclose(part.latency_s, ref.latency_s, rel_tol=REL), (
        g.name,
        mbits,
        part.latency_s,
        ref.latency_s,
    )
    check_partition(part, g.edges, g.device_s, g.server_s, g.out_bytes, bw, rtt_s)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("seed", "slowdown", "speedup"),
    [(0, 1.0, 10.0), (1, 10.0, 100.0), (2, 30.0, 1000.0)],  # phone/edge GPU/RPi vs GPU
)
def test_dnn_graph_200_matches_networkx(
    kind: str, seed: int, slowdown: float, speedup: float
) -> None:
    g = dnn_graph(200, kind=kind, seed=seed, device_slowdown=slowdown, server_speedup=speedup)
    for mbits in MBITS:
        _solve_both(g, mbits)


@pytest.mark.parametrize("kind", KINDS)
def test_dnn_graph_800_matches_networkx(kind: str) -> None:
    g = dnn_graph(800, kind=kind, seed=7, device_slowdown=10.0, server_speedup=100.0)
    for mbits in (1.1, 18.88):
        _solve_both(g, mbits, rtt_s=0.02)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("regime", ["scaled", "iid"])
def test_dnn_graph_random_costs_matches_networkx(kind: str, regime: str) -> None:
    """DNN structure with scrambled costs: cuts deep inside blocks, across several tensors."""
    g = dnn_graph(400, kind=kind, seed=3, n_inputs=2)
    rng = np.random.default_rng(KINDS.index(kind))
    n = len(g.device_s)
    if regime == "scaled":  # the generator's costs, each off by a random factor
        device = g.device_s * rng.lognormal(0.0, 1.0, n)
        server = device / rng.lognormal(np.log(10.0), 1.5, n)
        size = np.round(g.out_bytes * rng.lognormal(-2.0, 2.0, n))
    else:  # no relation between the two sides: device and server layers interleave
        device = rng.lognormal(-6.0, 1.5, n)
        server = rng.lognormal(-6.0, 1.5, n)
        size = np.round(rng.lognormal(9.0, 2.0, n))
    g = g._replace(device_s=device, server_s=server, out_bytes=size)
    for mbits in (1.1, 18.88, 100.0, 1e3):
        _solve_both(g, mbits)


def test_dnn_graph_relabelled_nodes() -> None:
    """Node ids need not be in topological order."""
    g = dnn_graph(300, kind="mixed", seed=5, device_slowdown=30.0, server_speedup=1000.0)
    perm = np.random.default_rng(0).permutation(len(g.device_s))
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    relabelled = g._replace(
        edges=perm[g.edges],
        device_s=g.device_s[inv],
        server_s=g.server_s[inv],
        out_bytes=g.out_bytes[inv],
    )
    for mbits in (0.13, 1.1, 5.85):
        a = cic_fast.min_cut(g.edges, g.device_s, g.server_s, g.out_bytes, mbits * 1e6)
        b = cic_fast.min_cut(
            relabelled.edges,
            relabelled.device_s,
            relabelled.server_s,
            relabelled.out_bytes,
            mbits * 1e6,
        )
        assert close(a.latency_s, b.latency_s)
        _solve_both(relabelled, mbits)


def test_dnn_graph_prepared_across_bandwidths() -> None:
    g = dnn_graph(500, kind="mixed", seed=2, device_slowdown=30.0, server_speedup=1000.0)
    graph = cic_fast.Graph(g.edges, g.device_s, g.server_s, g.out_bytes)
    assert graph.n_nodes == len(g.device_s)
    assert graph.n_edges == len(np.unique(g.edges, axis=0))
    np.testing.assert_array_equal(graph.inputs, [0])
    mbits = np.geomspace(0.01, 1e5, 40)
    for bw in np.concatenate([mbits, mbits[::-1], mbits[::3]]) * 1e6:
        fresh = cic_fast.min_cut(g.edges, g.device_s, g.server_s, g.out_bytes, float(bw))
        reused = graph.min_cut(float(bw))
        assert close(reused.latency_s, fresh.latency_s)
        check_partition(reused, g.edges, g.device_s, g.server_s, g.out_bytes, float(bw))


def test_threads_share_one_graph() -> None:
    g = dnn_graph(400, kind="densenet", seed=1, device_slowdown=30.0, server_speedup=1000.0)
    graph = cic_fast.Graph(g.edges, g.device_s, g.server_s, g.out_bytes)
    bws = [float(x) for x in np.geomspace(1e4, 1e10, 24)]
    expected = {bw: graph.min_cut(bw, rtt_s=0.01) for bw in bws}
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda bw: (bw, graph.min_cut(bw, rtt_s=0.01)), bws * 8))
    for bw, part in got:
        check_same(part, expected[bw])
        check_partition(part, g.edges, g.device_s, g.server_s, g.out_bytes, bw, 0.01)


# --- hand-drawn graphs ---------------------------------------------------------------

# At 8000 bit/s one byte takes exactly 1 ms: transfer times below are bytes / 1000.
BW = 8000.0


def _solve(
    edges: Any, dev: list[float], srv: list[float], size: list[int], rtt: float = 0.0
) -> cic_fast.Partition:
    part = cic_fast.min_cut(edges, dev, srv, size, BW, rtt_s=rtt)
    check_partition(part, edges, dev, srv, size, BW, rtt)
    _best, argmins = brute_force(edges, dev, srv, size, BW, rtt)
    assert len(argmins) == 1, "hand-drawn cases must have a unique optimum"
    np.testing.assert_array_equal(part.on_device, argmins[0])
    return part


def test_chain() -> None:
    # {0}: 2.0 + 0.3 = 2.3;  {0,1}: 1 + 0.1 + 0.2 = 1.3;  {0,1,2}: 2 + 10 + 0.1;  all: 3.
    part = _solve(
        [(0, 1), (1, 2), (2, 3)], [0, 1, 1, 1], [0, 0.1, 0.1, 0.1], [2000, 100, 10000, 10]
    )
    np.testing.assert_array_equal(part.on_device, [True, True, False, False])
    assert part.latency_s == pytest.approx(1.3, rel=1e-12)
    np.testing.assert_array_equal(part.sent, [1])
    assert part.bytes_sent == 100


def test_diamond_split_across_branches() -> None:
    # {0,1}: 0.1 + 0.2 on the server + two uploads of 1.0 = 2.3; every other set > 6.
    part = _solve(
        [(0, 1), (0, 2), (1, 3), (2, 3)], [0, 0.1, 5, 5], [0, 5, 0.1, 0.1], [1000, 1000, 1000, 10]
    )
    np.testing.assert_array_equal(part.on_device, [True, True, False, False])
    np.testing.assert_array_equal(part.sent, [0, 1])
    assert part.bytes_sent == 2000
    assert part.latency_s == pytest.approx(2.3, rel=1e-12)


def test_output_read_by_two_server_layers_is_sent_once() -> None:
    # {0,1}: 0.1 + 0.3 + 1.0 = 1.4 with node 1's output sent once. Counting it twice
    # would make it 2.4 and all-device (1.9) would win instead.
    edges = [(0, 1), (1, 2), (1, 3), (2, 4), (3, 4)]
    part = _solve(
        edges, [0, 0.1, 0.6, 0.6, 0.6], [0, 10, 0.1, 0.1, 0.1], [5000, 1000, 800, 800, 10]
    )
    np.testing.assert_array_equal(part.on_device, [True, True, False, False, False])
    np.testing.assert_array_equal(part.sent, [1])
    assert part.bytes_sent == 1000
    assert part.transfer_s == pytest.approx(1.0, rel=1e-12)
    assert part.latency_s == pytest.approx(1.4, rel=1e-12)


def test_closure_forbids_server_to_device_flow() -> None:
    # Without closure edges the cut {0,2} | {1} costs 0.1 + 0.1 + 1.0 = 1.2 (node 1's
    # output would come back to the device for free). Valid: {0}: 11.1, {0,1}: 21,
    # all: 10.1.
    args = ([(0, 1), (1, 2)], [0, 10, 0.1], [0, 0.1, 10], [1000, 1000, 1000])
    value, on_device = networkx_cut(*args, BW, closure=False)
    assert value == pytest.approx(1.2) and not is_valid_partition(on_device, args[0])
    part = _solve(*args)
    assert part.on_device.all()
    assert part.latency_s == pytest.approx(10.1, rel=1e-12)
    assert not part.offloads
    assert part.sent.size == 0


def test_input_is_pinned_to_device() -> None:
    # Unpinned, both nodes on the server would cost 0.1 (input "uploaded for free").
    # Valid: {0} pays 1000 s of upload + 0.1; all-device 5.
    args = ([(0, 1)], [0, 5], [0, 0.1], [10**6, 10])
    value, on_device = networkx_cut(*args, BW, pin_inputs=False)
    assert value == pytest.approx(0.1) and not on_device.any()
    part = _solve(*args)
    assert part.on_device.all()
    assert part.latency_s == pytest.approx(5.0, rel=1e-12)


def test_every_input_is_pinned() -> None:
    # Two inputs; the cheap one (1) must still stay on the device, and uploads.
    edges = [(0, 2), (1, 2)]
    part = _solve(edges, [0, 0, 5], [0, 0, 0.1], [100, 50, 10])
    np.testing.assert_array_equal(part.on_device, [True, True, False])
    np.testing.assert_array_equal(part.sent, [0, 1])
    assert part.bytes_sent == 150
    assert part.latency_s == pytest.approx(0.25, rel=1e-12)


def test_rtt_makes_all_device_win() -> None:
    # {0}: 1.0 upload + 0.5 = 1.5 (+rtt); all-device: 2.0.
    args = ([(0, 1)], [0, 2.0], [0, 0.5], [1000, 10])
    fast = _solve(*args, rtt=0.4)
    np.testing.assert_array_equal(fast.on_device, [True, False])
    assert fast.rtt_s == 0.4
    assert fast.latency_s == pytest.approx(1.9, rel=1e-12)
    slow = _solve(*args, rtt=0.6)
    assert slow.on_device.all()
    assert slow.rtt_s == 0.0
    assert slow.latency_s == pytest.approx(2.0, rel=1e-12)
    free = _solve(*args)
    assert free.latency_s == pytest.approx(1.5, rel=1e-12)


def test_single_node() -> None:
    part = _solve(np.empty((0, 2), dtype=np.int64), [0.3], [0.0], [100])
    np.testing.assert_array_equal(part.on_device, [True])
    assert part.latency_s == pytest.approx(0.3, rel=1e-12)
    assert part.sent.size == 0 and part.bytes_sent == 0 and part.transfer_s == 0.0
    assert not part.offloads
    graph = cic_fast.Graph([], [0.3], [0.0], [100])
    assert graph.n_nodes == 1 and graph.n_edges == 0
    np.testing.assert_array_equal(graph.inputs, [0])


def test_no_edges_several_inputs() -> None:
    part = _solve([], [0.5, 0.25, 1.0], [0, 0, 0], [10, 20, 30], rtt=0.1)
    assert part.on_device.all()
    assert part.latency_s == pytest.approx(1.75, rel=1e-12)
    graph = cic_fast.Graph([], [0.5, 0.25, 1.0], [0, 0, 0], [10, 20, 30])
    np.testing.assert_array_equal(graph.inputs, [0, 1, 2])
    assert graph.inputs.dtype == np.int64


def test_duplicate_edges_change_nothing() -> None:
    edges = [(0, 1), (0, 2), (1, 3), (2, 3)]
    args = ([0, 0.1, 5, 5], [0, 5, 0.1, 0.1], [1000, 1000, 1000, 10])
    once = _solve(edges, *args)
    twice = _solve([*edges, (1, 3), (0, 1), (1, 3)], *args)
    check_same(once, twice)
    assert cic_fast.Graph([*edges, (1, 3), (0, 1)], *args).n_edges == 4


def test_zero_costs() -> None:
    # Every valid partition costs 0: any of them is a right answer.
    part = cic_fast.min_cut([(0, 1), (1, 2), (0, 2)], [0, 0, 0], [0, 0, 0], [0, 0, 0], BW)
    assert part.latency_s == 0.0
    check_partition(part, [(0, 1), (1, 2), (0, 2)], [0, 0, 0], [0, 0, 0], [0, 0, 0], BW)


def test_graph_properties() -> None:
    edges = [(3, 1), (1, 0), (2, 0), (3, 0), (3, 0)]  # labels not in topological order
    graph = cic_fast.Graph(edges, [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1])
    assert graph.n_nodes == 4
    assert graph.n_edges == 4
    np.testing.assert_array_equal(graph.inputs, [2, 3])


# --- what `sent` means ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_device", "sent", "bytes_sent"),
    [
        ([1, 0, 0, 0], [0], 1),  # input read by two server layers: uploaded once
        ([1, 1, 0, 0], [0, 1], 11),  # 0 still feeds 2 on the server
        ([1, 0, 1, 0], [0, 2], 101),
        ([1, 1, 1, 0], [1, 2], 110),  # 0's successors are all on the device: not sent
        ([1, 1, 1, 1], [], 0),
    ],
)
def test_sent_semantics(on_device: list[int], sent: list[int], bytes_sent: int) -> None:
    edges = [(0, 1), (0, 2), (1, 3), (2, 3)]
    size = [1, 10, 100, 1000]
    graph = cic_fast.Graph(edges, [1.0] * 4, [0.5] * 4, size)
    d = np.array(on_device, dtype=bool)
    part = graph.evaluate(d, BW, rtt_s=0.25)
    np.testing.assert_array_equal(part.sent, sent)
    np.testing.assert_array_equal(sent_nodes(d, edges), sent)
    assert part.bytes_sent == bytes_sent
    assert part.transfer_s == pytest.approx(bytes_sent / 1000, rel=1e-12)
    assert part.rtt_s == (0.0 if d.all() else 0.25)
    assert part.latency_s == pytest.approx(
        d.sum() * 1.0 + (~d).sum() * 0.5 + bytes_sent / 1000 + part.rtt_s, rel=1e-12
    )


# --- the synthetic generator's contract (the DNN-shaped cases above rely on it) -------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_layers", [1, 7, 63, 64, 200, 712])
def test_dnn_graph_shape(kind: str, n_layers: int) -> None:
    g = dnn_graph(n_layers, kind=kind, seed=4)
    n = len(g.device_s)
    assert n == n_layers
    assert g.edges.dtype == np.int64 and g.edges.shape[1] == 2
    assert (g.edges[:, 0] < g.edges[:, 1]).all()  # topological ids, hence acyclic
    has_pred = np.zeros(n, dtype=bool)
    has_pred[g.edges[:, 1]] = True
    np.testing.assert_array_equal(np.flatnonzero(~has_pred), [0])
    assert g.out_bytes[0] == 3 * 224 * 224 * 4
    busy = g.device_s[1:][g.device_s[1:] > 0]
    assert ((busy >= 1e-5) & (busy <= 1e-2)).all()
    np.testing.assert_allclose(g.server_s, g.device_s / 10.0)
    again = dnn_graph(n_layers, kind=kind, seed=4)
    for a, b in zip(g[1:], again[1:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_dnn_graph_options() -> None:
    g = dnn_graph(300, kind="mixed", seed=1, n_inputs=3, device_slowdown=2.0, server_speedup=4.0)
    base = dnn_graph(300, kind="mixed", seed=1, n_inputs=3)
    assert len(g.device_s) == 300
    has_pred = np.zeros(300, dtype=bool)
    has_pred[g.edges[:, 1]] = True
    assert np.flatnonzero(~has_pred).size == 3 and not has_pred[0]
    np.testing.assert_allclose(g.device_s, 2.0 * base.device_s)
    np.testing.assert_allclose(g.server_s, g.device_s / 4.0)
    assert (g.device_s == 0).any()  # zero-cost pass-through views exist
    dense = dnn_graph(712, kind="densenet")
    assert 2300 < len(dense.edges) < 2700  # DenseNet-201 traced: 712 layers, 2514 edges
    span = g.edges[:, 1] - g.edges[:, 0]
    assert span.max() > 50  # U-Net-like long skips
    with pytest.raises(ValueError, match="kind"):
        dnn_graph(100, kind="lstm")


def test_fractional_bytes_are_reported_exactly():
    # Issue 8: bytes_sent was int(sum) while transfer_s used the real sum.
    edges = [(0, 1), (1, 2)]
    dev, srv, size = [0.0, 1.0, 1.0], [0.0, 0.001, 0.001], [1e6, 2.75, 4.0]
    for part in (
        cic_fast.min_cut(edges, dev, srv, size, 100.0),
        cic_fast.Graph(edges, dev, srv, size).evaluate([True, True, False], 100.0),
        cic_fast.Planner(edges, dev, srv, size).decide(100.0),
    ):
        assert part.sent.tolist() == [1]
        assert part.bytes_sent == 2.75
        assert part.transfer_s == 8.0 * 2.75 / 100.0
