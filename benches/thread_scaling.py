"""Thread scaling of ``cic_fast.Graph.min_cut``: one thread against two sharing one Graph.

Usage::

    python benches/thread_scaling.py                 # both graphs, ~8 s each
    python benches/thread_scaling.py --seconds 1 --rounds 15
    python benches/thread_scaling.py --target 1.8    # a stricter bar

The C++ core keeps one immutable problem per Graph and a small pool of solver
workspaces; ``min_cut`` releases the GIL while it solves, so two Python threads
calling it on one Graph should finish about twice as many calls per second as
one thread, on a machine with two free cores. This script measures that on the
two graphs of the benchmark suite's large cases (``dnn_graph(700,
kind="densenet", seed=0)`` and ``dnn_graph(400, kind="mixed", seed=0)``) at
10 Mbit/s, with nothing but the public API.

Exit status 0 when every graph reaches the target ratio (default 1.6x), else 1.
Run on purpose (it is not collected by pytest); the ratio needs two otherwise
idle cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import cic_fast
from cic_fast.core.synthetic import dnn_graph

BANDWIDTH_BPS = 10e6
GRAPHS = (("densenet-700-s0", "densenet", 700), ("mixed-400-s0", "mixed", 400))
TARGET_RATIO = 1.6


def calls_per_second(fn: Callable[[], object], threads: int, seconds: float) -> float:
    """Run ``fn`` in a loop on ``threads`` threads for about ``seconds``; return calls/s.

    Parameters
    ----------
    fn : callable
        The call to repeat (no arguments).
    threads : int
        Number of threads calling it at once, started together.
    seconds : float
        Wall-clock duration of the measurement.

    Returns
    -------
    float
        Calls completed by all threads together, per second of wall-clock time.
    """
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def loop(i: int) -> None:
        start.wait()
        end = deadline[0]
        n = 0
        while True:
            for _ in range(16):  # check the clock every 16 calls
                fn()
            n += 16
            if time.perf_counter() >= end:
                break
        counts[i] = n

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    return sum(counts) / elapsed


def measure(name: str, kind: str, n: int, seconds: float, rounds: int) -> float:
    """Print calls/s with one and two threads on one Graph; return the ratio.

    Parameters
    ----------
    name : str
        Label of the graph in the output.
    kind, n : str, int
        ``dnn_graph`` arguments (seed 0).
    seconds : float
        Duration of each measurement.
    rounds : int
        Pairs of back-to-back measurements (one thread, then two). Each pair's
        ratio compares two runs a fraction of a second apart, so a change in
        the machine's speed (other tenants, frequency) cancels out; the result
        is the median of the pair ratios.

    Returns
    -------
    float
        Median over the pairs of 2-thread calls/s divided by 1-thread calls/s.
    """
    d = dnn_graph(n, kind=kind, seed=0)
    g = cic_fast.Graph(d.edges, d.device_s, d.server_s, d.out_bytes)
    expected = g.min_cut(BANDWIDTH_BPS)

    def call() -> object:
        return g.min_cut(BANDWIDTH_BPS)

    calls_per_second(call, 2, min(seconds, 0.3))  # warm up (workspaces, caches)
    one, two = [], []
    for _ in range(rounds):
        one.append(calls_per_second(call, 1, seconds))
        two.append(calls_per_second(call, 2, seconds))
    # The answers do not depend on which thread or workspace computed them.
    assert g.min_cut(BANDWIDTH_BPS).latency_s == expected.latency_s
    ratios = sorted(b / a for a, b in zip(one, two, strict=True))
    ratio = statistics.median(ratios)
    per_call_us = 1e6 / statistics.median(one)
    print(
        f"{name:18s} {g.n_nodes:5d} {g.n_edges:6d}  {statistics.median(one):10.0f} "
        f"{statistics.median(two):10.0f}  {ratio:5.2f}x   ({per_call_us:.1f} us per call; "
        f"pair ratios {ratios[0]:.2f}..{ratios[-1]:.2f})",
        flush=True,
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    """Measure both graphs and report whether the target ratio holds.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 if every ratio is at least ``--target``, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.4, help="duration per measurement")
    parser.add_argument("--rounds", type=int, default=9, help="1-thread/2-thread pairs per graph")
    parser.add_argument("--target", type=float, default=TARGET_RATIO, help="required ratio")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"cic_fast {cic_fast.__version__}, Python {sys.version.split()[0]}, "
        f"{cores} cores available; min_cut at {BANDWIDTH_BPS / 1e6:g} Mbit/s, "
        f"{args.rounds} pairs of {args.seconds:g} s runs per graph (median pair ratio)"
    )
    header = f"{'graph':18s} {'nodes':>5s} {'edges':>6s}  {'1 thread/s':>10s} {'2 threads/s':>10s}"
    print(f"{header}  ratio")
    ratios = [measure(name, kind, n, args.seconds, args.rounds) for name, kind, n in GRAPHS]
    ok = all(r >= args.target for r in ratios)
    verdict = "met" if ok else "NOT met"
    print(f"[{verdict}] 2 threads on one Graph >= {args.target:g}x one thread's calls/s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
