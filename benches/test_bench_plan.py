"""The CIC decision (Planner.decide) against min-cuts, per model graph.

Run on purpose (plain ``pytest`` only collects ``tests/``)::

    pytest benches/test_bench_plan.py --benchmark-json=plan.json
    CIC_BENCH_SYNTHETIC=1 pytest benches/test_bench_plan.py   # no torch: dnn_graph stand-ins

Groups are ``<model>/decide`` (one decision at 18.88 Mbit/s by each route:
``decide``, min-cut on the compressed graph, ``Graph.min_cut`` on the full
graph, ``cic_fast.min_cut`` from the arrays (DADS), the fastest peer's prepared
solve) and ``<model>/build`` (the offline plan). ``benches/plan_report.py``
prints the same numbers as one table without pytest.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import pytest

import cic_fast
from cic_fast import _core
from cic_fast.core.planner import Planner
from plan_report import BANDWIDTH_BPS, MODELS, RTT_S, Case, model_case, synthetic_case

# Calls shorter than this are repeated inside one round, so that the timer's own
# overhead (~0.1-0.4 us) does not swamp a sub-microsecond decision.
MIN_ROUND_S = 1e-4
TIME_BUDGET_S = 0.3
ROUTES = ("decide", "compressed_min_cut", "graph_min_cut", "min_cut", "pymaxflow", "ortools")


@functools.cache
def case(name: str) -> Case:
    if os.environ.get("CIC_BENCH_SYNTHETIC"):
        return synthetic_case(name)
    pytest.importorskip("torchvision")
    return model_case(name)


def route(c: Case, name: str) -> Callable[[], object]:
    if name == "decide":
        return functools.partial(Planner(*c.arrays, rtt_s=RTT_S).decide, BANDWIDTH_BPS)
    if name == "compressed_min_cut":
        full = cic_fast.Graph(*c.arrays)
        e, d, s, b, *_ = _core.compress(full._core)
        return functools.partial(cic_fast.Graph(e, d, s, b).min_cut, BANDWIDTH_BPS, RTT_S)
    if name == "graph_min_cut":
        return functools.partial(cic_fast.Graph(*c.arrays).min_cut, BANDWIDTH_BPS, RTT_S)
    if name == "min_cut":
        return lambda: cic_fast.min_cut(*c.arrays, BANDWIDTH_BPS, rtt_s=RTT_S)
    peers = pytest.importorskip("peers")
    if name not in peers.PEERS:
        pytest.skip(f"{name} not installed")
    return peers.PEERS[name].prepare(*c.arrays, BANDWIDTH_BPS, RTT_S).solve


@pytest.mark.parametrize("impl", ROUTES)
@pytest.mark.parametrize("model", MODELS)
def test_decision(benchmark: pytest.FixtureRequest, model: str, impl: str) -> None:
    c = case(model)
    fn = route(c, impl)
    benchmark.group = f"{model}/decide"
    benchmark.extra_info.update(n_nodes=len(c.device_s))
    t0 = time.perf_counter()
    for _ in range(10):
        fn()
    one = max((time.perf_counter() - t0) / 10, 1e-8)
    iterations = max(1, int(MIN_ROUND_S / one))
    rounds = max(5, min(2000, int(TIME_BUDGET_S / (one * iterations))))
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)


@pytest.mark.parametrize("model", MODELS)
def test_build(benchmark: pytest.FixtureRequest, model: str) -> None:
    c = case(model)
    benchmark.group = f"{model}/build"
    planner = benchmark(lambda: Planner(*c.arrays, rtt_s=RTT_S))
    benchmark.extra_info.update(
        {k: v for k, v in planner.stats.items() if isinstance(v, (int, float))}
    )
