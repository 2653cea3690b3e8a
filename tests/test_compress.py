"""cic_fast._core.compress: every rule alone, and all together, keep the optimum."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cic_fast
from cic_fast import _core
from cic_fast.core.synthetic import KINDS, dnn_graph
from oracles import brute_force, is_valid_partition
from test_plan import bandwidths_bps, dnn_problems, rtts_s, small_problems

REL = 1e-9
ABS = 1e-12
RULES = {
    "passthrough": {"passthrough": True, "chains": False, "blocks": False},
    "chains": {"passthrough": False, "chains": True, "blocks": False},
    "blocks": {"passthrough": False, "chains": False, "blocks": True},
    "all": {},
}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS)


def compressed(g: cic_fast.Graph, **rules: bool) -> tuple[Any, np.ndarray, dict[str, int]]:
    edges, dev, srv, size, group, start, nodes, offset, stats = _core.compress(g._core, **rules)
    assert offset == 0.0
    assert len(group) == g.n_nodes and group.min() >= 0 and group.max() == len(dev) - 1
    np.testing.assert_array_equal(np.diff(start), np.bincount(group, minlength=len(dev)))
    np.testing.assert_array_equal(group[nodes], np.repeat(np.arange(len(dev)), np.diff(start)))
    # costs are the group sums
    np.testing.assert_allclose(dev, np.bincount(group, g.device_s, len(dev)), rtol=1e-12, atol=0)
    np.testing.assert_allclose(srv, np.bincount(group, g.server_s, len(dev)), rtol=1e-12, atol=0)
    return cic_fast.Graph(edges, dev, srv, size), group, stats


def check_same_optimum(p: dict[str, Any], bws: list[float], rtts: list[float], brute: bool) -> None:
    args = (p["edges"], p["device_s"], p["server_s"], p["out_bytes"])
    full = cic_fast.Graph(*args)
    for rules in RULES.values():
        small, group, _ = compressed(full, **rules)
        assert small.n_nodes <= full.n_nodes
        for bw, rtt in zip(bws, rtts, strict=True):
            best = brute_force(*args, bw, rtt)[0] if brute else full.min_cut(bw, rtt).latency_s
            part = small.min_cut(bw, rtt)
            assert close(part.latency_s, best), (rules, bw, rtt, part.latency_s, best)
            expanded = part.on_device[group]
            assert is_valid_partition(expanded, full.edges)
            assert close(full.evaluate(expanded, bw, rtt).latency_s, part.latency_s)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems(), st.lists(st.tuples(bandwidths_bps, rtts_s), min_size=1, max_size=4))
def test_rules_keep_the_optimum_brute_force(p: dict[str, Any], links: list[Any]) -> None:
    check_same_optimum(p, [b for b, _ in links], [r for _, r in links], brute=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dnn_problems(), st.lists(st.tuples(bandwidths_bps, rtts_s), min_size=4, max_size=8))
def test_rules_keep_the_optimum_dnn_graphs(p: dict[str, Any], links: list[Any]) -> None:
    check_same_optimum(p, [b for b, _ in links], [r for _, r in links], brute=False)


def test_zero_cost_view_merges() -> None:
    # 0 -> 1 (conv) -> 2 (view: 0 s, same bytes) -> 3; 1 -> 4 -> 3
    g = cic_fast.Graph(
        [(0, 1), (1, 2), (2, 3), (1, 4), (4, 3)],
        [0.0, 0.01, 0.0, 0.01, 0.01],
        [0.0, 0.001, 0.0, 0.001, 0.001],
        [6e5, 1e4, 1e4, 10, 1e4],
    )
    small, group, stats = compressed(g, **RULES["passthrough"])
    assert stats["passthrough_merged"] == 1
    assert small.n_nodes == 4 and group[2] == group[3]


def test_chain_hull_drops_dominated_positions() -> None:
    # cutting after node 2 (500 KB out) never beats cutting after 1 or 3
    g = cic_fast.Graph(
        [(0, 1), (1, 2), (2, 3), (3, 4)],
        [0.0, 0.01, 0.01, 0.01, 0.01],
        [0.0, 0.001, 0.001, 0.001, 0.001],
        [6e5, 1e3, 5e5, 1e3, 10],
    )
    _, group, stats = compressed(g, **RULES["chains"])
    assert stats["chain_removed"] >= 1 and group[2] == group[3]


@pytest.mark.parametrize("kind", KINDS)
def test_compression_ratio_on_dnn_graphs(kind: str) -> None:
    g = dnn_graph(400, kind=kind, seed=0)
    full = cic_fast.Graph(g.edges, g.device_s, g.server_s, g.out_bytes)
    small, _, stats = compressed(full)
    assert stats["original_nodes"] == 400 and stats["compressed_nodes"] == small.n_nodes
    assert stats["blocks_not_nested"] == 0
    # the block rule turns every one of these into a path; the chain rule then
    # keeps only the envelope's cut positions
    assert small.n_nodes * 5 <= full.n_nodes, stats


# Found by random search: the block between nodes 1 and 9 has optimal internal cuts
# that are not nested, so it cannot become a path; the block rule must leave it.
NON_NESTED = {
    "edges": [(0, 1), (1, 2), (2, 3), (1, 4), (2, 4), (3, 5), (2, 6), (6, 7), (4, 7), (1, 8),
              (5, 9), (7, 9), (8, 9)],
    "device_s": [0.0020860230620354226, 0.005631644547824209, 0.002911717177613121,
                 0.005029433616463587, 0.0, 0.0, 0.014929893711510357, 0.00596096611800156,
                 0.0038558307184394184, 0.008236904336014485],
    "server_s": [0.0020860230620354226, 0.00011263289095648417, 0.002911717177613121,
                 0.0010058867232927173, 0.0, 0.0, 0.014929893711510357, 0.00596096611800156,
                 0.0007711661436878836, 0.0001647380867202897],
    "out_bytes": [3977.674892420973, 346251.9896847197, 0.0, 830015.7148408105,
                  361.0176114509455, 4423.303447916722, 0.0, 4119.4373495821865,
                  783.5064994066868, 868.552366152814],
}  # fmt: skip


def test_block_with_non_nested_optimal_cuts_is_left_alone() -> None:
    p = {k: np.array(v) for k, v in NON_NESTED.items()}
    g = cic_fast.Graph(p["edges"], p["device_s"], p["server_s"], p["out_bytes"])
    _, _, stats = compressed(g, **RULES["blocks"])
    assert stats["blocks_not_nested"] == 1
    bws = list(np.logspace(3, 11, 17))
    check_same_optimum(p, bws, [0.0] * len(bws), brute=True)
    check_same_optimum(p, bws, [0.002] * len(bws), brute=True)
