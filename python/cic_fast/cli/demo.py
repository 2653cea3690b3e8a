"""``cic-fast demo``: partition a built-in DNN-shaped graph across a sweep of bandwidths."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cic_fast.cli.common import (
    add_rtt_arg,
    device_only_s,
    fixed_latencies_s,
    fmt_bytes,
    rtt_seconds,
)
from cic_fast.core.graph import Graph
from cic_fast.core.planner import Planner
from cic_fast.core.synthetic import KINDS, dnn_graph

__all__ = ["add_demo_parser"]

# DADS's measured links (Mbit/s), then LAN/Wi-Fi-class links.
_DEFAULT_MBIT = (0.13, 0.5, 1.1, 2.0, 5.85, 18.88, 100.0)


def add_demo_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``demo [--layers N --kind K ...]``."""
    demo = sub.add_parser(
        "demo", help="partition a built-in DNN-shaped graph across a sweep of bandwidths"
    )
    demo.add_argument("--layers", type=int, default=400, help="graph size (default 400)")
    demo.add_argument("--kind", choices=KINDS, default="mixed")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--device-slowdown",
        type=float,
        default=10.0,
        help="device time multiplier over the built-in mobile-CPU costs (default 10: "
        "a Raspberry-Pi-class device)",
    )
    demo.add_argument(
        "--server-speedup",
        type=float,
        default=50.0,
        help="server speed over the device (default 50: a GPU server)",
    )
    add_rtt_arg(demo, "round-trip time in ms")
    demo.add_argument(
        "--bandwidth-mbit",
        type=float,
        nargs="+",
        default=list(_DEFAULT_MBIT),
        help="bandwidths to sweep, in Mbit/s",
    )
    demo.set_defaults(func=_run_demo)
    return demo


def _run_demo(args: argparse.Namespace) -> int:
    g = dnn_graph(
        args.layers,
        kind=args.kind,
        seed=args.seed,
        device_slowdown=args.device_slowdown,
        server_speedup=args.server_speedup,
    )
    graph = Graph(g.edges, g.device_s, g.server_s, g.out_bytes)
    rtt_s = rtt_seconds(args)
    print(
        f"{g.name}: {graph.n_nodes} layers, {graph.n_edges} edges; device-only "
        f"{1e3 * device_only_s(graph):.1f} ms, server {args.server_speedup:g}x faster, "
        f"rtt {args.rtt_ms:g} ms"
    )
    t0 = time.perf_counter()
    planner = Planner(g.edges, g.device_s, g.server_s, g.out_bytes, rtt_s=rtt_s)
    build_ms = (time.perf_counter() - t0) * 1e3
    print(
        f"splitting model: {planner.stats['compressed_nodes']} nodes after compression, "
        f"{planner.stats['K']} partitions cover every bandwidth, built in {build_ms:.2f} ms"
    )
    header = (
        f"{'Mbit/s':>8} {'on device':>10} {'sent':>10} {'latency ms':>11} "
        f"{'device-only':>12} {'server-only':>12} {'speedup':>8} {'min-cut us':>11} "
        f"{'plan us':>8}"
    )
    print(header)
    print("-" * len(header))
    for mbit in args.bandwidth_mbit:
        bw = mbit * 1e6
        t0 = time.perf_counter()
        p = graph.min_cut(bw, rtt_s)
        cut_us = (time.perf_counter() - t0) * 1e6
        t0 = time.perf_counter()
        q = planner.decide(bw)
        plan_us = (time.perf_counter() - t0) * 1e6
        if abs(q.latency_s - p.latency_s) > 1e-9 * p.latency_s:
            raise RuntimeError(f"plan and min-cut disagree at {mbit} Mbit/s: {q} vs {p}")
        device_only, server_only = fixed_latencies_s(graph, bw, rtt_s)
        best_single = min(device_only, server_only)
        print(
            f"{mbit:>8g} {p.n_on_device:>6}/{graph.n_nodes:<3} "
            f"{fmt_bytes(p.bytes_sent):>10} {1e3 * p.latency_s:>11.2f} "
            f"{1e3 * device_only:>12.2f} {1e3 * server_only:>12.2f} "
            f"{best_single / p.latency_s:>7.2f}x {cut_us:>11.1f} {plan_us:>8.2f}"
        )
    print(
        "speedup = min(device-only, server-only) / optimum; server-only sends the raw input.\n"
        "min-cut us: one exact Graph.min_cut; plan us: Planner.decide (same answer)."
    )
    return 0
