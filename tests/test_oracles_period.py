"""The stream (pipeline period) oracles of tests/oracles.py checked against each other.

`brute_force_period` (enumeration) and `milp_period` (scipy's HiGHS) are independent
ways to the same optimum; `brute_force_pareto` is checked on hand-computed fronts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from oracles import (
    brute_force_pareto,
    brute_force_period,
    is_valid_partition,
    milp_period,
    period_of,
)


def random_dag(seed: int) -> dict[str, Any]:
    """A small random DAG: permuted labels, several inputs, fan-out, ties and zeros."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 11))
    order = rng.permutation(n)
    density = float(rng.choice([0.15, 0.35, 0.6]))
    edges = [
        (int(order[u]), int(order[v])) for v in range(n) for u in range(v) if rng.random() < density
    ]
    if seed % 3 == 0:
        # Exact binary fractions and zeros: many exact ties between partitions.
        dev = rng.integers(0, 5, n) / 4
        srv = rng.integers(0, 5, n) / 8
        size = rng.integers(0, 3, n) * 125_000.0
    else:
        dev = rng.exponential(1.0, n) * (rng.random(n) > 0.1)
        srv = rng.exponential(0.3, n) * (rng.random(n) > 0.1)
        size = rng.exponential(2e5, n) * (rng.random(n) > 0.1)
    return {
        "edges": np.array(edges, dtype=np.int64).reshape(-1, 2),
        "device_s": dev,
        "server_s": srv,
        "out_bytes": size,
        "bandwidth_bps": float(rng.choice([1e5, 1e6, 8e6, 1e8])),
    }


@pytest.mark.parametrize("seed", range(30))
def test_milp_matches_brute_force(seed: int) -> None:
    pytest.importorskip("scipy")
    p = random_dag(seed)
    exact = brute_force_period(**p)
    milp = milp_period(**p)
    assert is_valid_partition(exact.on_device, p["edges"])
    assert is_valid_partition(milp.on_device, p["edges"])
    assert math.isclose(milp.period_s, exact.period_s, rel_tol=1e-9, abs_tol=1e-12)
    # Both are priced by the same formula.
    again = period_of(milp.on_device, **p)
    assert again.period_s == milp.period_s
    assert exact.period_s == max(exact.device_s, exact.transfer_s, exact.server_s)


def test_period_hand_chain() -> None:
    # input -> a -> b -> c; device 0, 1, 2, 4 s; server 0, 2, 1.9, 2 s; 1 s per 1e6 B.
    p = {
        "edges": [(0, 1), (1, 2), (2, 3)],
        "device_s": [0.0, 1.0, 2.0, 4.0],
        "server_s": [0.0, 2.0, 1.9, 2.0],
        "out_bytes": [1e6, 1e5, 4e5, 9.0],
        "bandwidth_bps": 8e6,
    }
    # Periods: {0}: 5.9, {0,1}: 3.9, {0,1,2}: max(3, 0.4, 2) = 3, all: 7.
    best = brute_force_period(**p)
    assert best.period_s == 3.0
    assert best.on_device.tolist() == [True, True, True, False]
    assert best.bytes_sent == 4e5


def test_all_device_period_is_the_device_sum() -> None:
    # Offloading costs more than it saves: the period is the device sum alone.
    best = brute_force_period([(0, 1)], [0.0, 0.5], [0.0, 0.1], [1e6, 1.0], 1e6)
    assert best.on_device.tolist() == [True, True]
    assert (best.period_s, best.transfer_s, best.server_s) == (0.5, 0.0, 0.0)


def test_pareto_chain_by_hand() -> None:
    # Same chain: (c, bytes) = {0}: (5.9, 1e6), {0,1}: (3.9, 1e5), {0,1,2}: (3, 4e5),
    # all: (7, 0). {0} is dominated by {0,1}.
    front = brute_force_pareto(
        [(0, 1), (1, 2), (2, 3)],
        [0.0, 1.0, 2.0, 4.0],
        [0.0, 2.0, 1.9, 2.0],
        [1e6, 1e5, 4e5, 9.0],
    )
    assert front == [(7.0, 0.0), (pytest.approx(3.9, rel=1e-15), 1e5), (3.0, 4e5)]


def test_pareto_removes_duplicates_and_dominated() -> None:
    # Fan-out 0 -> 1, 0 -> 2, symmetric: {0,1} and {0,2} both give (1, 5); {0} is (2, 5).
    front = brute_force_pareto([(0, 1), (0, 2)], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [5, 0, 0])
    assert front == [(2.0, 0.0), (1.0, 5.0)]


@pytest.mark.parametrize("seed", range(10))
def test_pareto_envelope_is_the_best_period(seed: int) -> None:
    # The lower envelope of max(c, 8 * bytes / bw) over the front is the optimal period.
    p = random_dag(seed)
    front = brute_force_pareto(p["edges"], p["device_s"], p["server_s"], p["out_bytes"])
    cs = [c for c, _ in front]
    assert cs == sorted(cs, reverse=True)
    assert len(set(cs)) == len(cs)
    for bw in (1e4, 1e6, 1e8):
        envelope = min(max(c, 8.0 * b / bw) for c, b in front)
        exact = brute_force_period(**(p | {"bandwidth_bps": bw})).period_s
        assert math.isclose(envelope, exact, rel_tol=1e-12, abs_tol=1e-15)
