"""cic_fast.min_cut against the max-flow libraries a user would pick, on DNN-shaped graphs.

Run on purpose (plain ``pytest`` only collects ``tests/``)::

    pytest benches/test_bench_min_cut.py --benchmark-json=bench.json
    python benches/report.py --json bench.json

Groups are ``<case>/<mode>``:

``from_arrays``
    ``cic_fast.min_cut(arrays...)`` against each peer's ``from_arrays``: build
    the network from numpy arrays, solve, read the partition, price it.
``prepared``
    ``cic_fast.Graph`` built once, ``graph.min_cut(bw)`` timed, against each
    peer's network built once and only its solve (+ reading the cut) timed.

A peer whose latency differs from cic_fast's (relative 1e-9) fails its test
with the two answers and is not timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest

import cic_fast
import heap
from cases import CASES, MODES, RTT_S, get_case, verify
from peers import PEERS

IMPLS = ("cic_fast", *PEERS)
# Per benchmark: about this much timed work, with at least MIN_ROUNDS rounds
# (networkx on the 700-layer graph takes ~0.2 s a call and gets MIN_ROUNDS).
TIME_BUDGET_S = 0.5
MIN_ROUNDS = 5
MAX_ROUNDS = 2000
# Calls shorter than this are repeated inside one round so timer overhead stays small.
MIN_ROUND_S = 5e-5


def _target(label: str, mode: str, impl: str) -> Callable[[], object]:
    case = get_case(label)
    args = (*case.arrays, case.bandwidth_bps)
    if impl == "cic_fast":
        if mode == "from_arrays":
            return lambda: cic_fast.min_cut(*args, rtt_s=RTT_S)
        graph = cic_fast.Graph(*case.arrays)
        return lambda: graph.min_cut(case.bandwidth_bps, RTT_S)
    peer = PEERS[impl]
    if mode == "from_arrays":
        return lambda: peer.from_arrays(*args, RTT_S)
    return peer.prepare(*args, RTT_S).solve


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label", [c[0] for c in CASES])
def test_min_cut(request: pytest.FixtureRequest, label: str, mode: str, impl: str) -> None:
    """Time one implementation on one case and mode."""
    case = get_case(label)
    if impl != "cic_fast":
        problem = verify(label, impl, mode)
        if problem is not None:
            pytest.fail(f"wrong answer, not timed: {problem}")
    # Requested only now: an unused benchmark fixture warns, and warnings are errors.
    benchmark = request.getfixturevalue("benchmark")
    benchmark.group = f"{label}/{mode}"
    benchmark.extra_info.update(
        case=case.name,
        n_nodes=case.n_nodes,
        n_edges=case.n_edges,
        bandwidth_bps=case.bandwidth_bps,
        genuine_split=case.genuine,
        on_device=case.on_device,
        impl=impl,
        mode=mode,
        heap_pinned=heap.PINNED,
    )
    fn = _target(label, mode, impl)
    t_call = math.inf
    for _ in range(2):  # the first call may pay one-off costs (imports, caches)
        t0 = time.perf_counter()
        fn()
        t_call = min(t_call, time.perf_counter() - t0)
    iterations = max(1, math.ceil(MIN_ROUND_S / max(t_call, 1e-9)))
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, TIME_BUDGET_S / (t_call * iterations))))
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
