"""``cic-fast profile``: trace a model and time every layer on this machine."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cic_fast.cli.common import add_model_args, example_inputs, load_model_args, trace_model

__all__ = ["add_profile_parser"]


def add_profile_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``profile MODEL -o FILE``: trace, time every layer, write a profile."""
    p = subparsers.add_parser(
        "profile",
        help="measure per-layer latency of a model on this machine",
        description="Trace MODEL, time every layer on this machine, write a JSON profile.",
    )
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--threads", type=int, help="torch threads while profiling")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per layer (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per layer (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--summary", action="store_true", help="print the traced layer graph")
    p.set_defaults(func=_run_profile)
    return p


def _run_profile(args: argparse.Namespace) -> int:
    from cic_fast.frontend.profiling import profile

    model = load_model_args(args)
    inputs = example_inputs(args)
    t0 = time.perf_counter()
    graph = trace_model(model, inputs)
    trace_s = time.perf_counter() - t0
    if args.summary:
        print(graph.summary(max_rows=None))
    t0 = time.perf_counter()
    prof = profile(
        model,
        inputs,
        device=args.device,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        progress=not args.no_progress and sys.stderr.isatty(),
        graph=graph,
    )
    profile_s = time.perf_counter() - t0
    prof.save(args.output)
    ratio = prof.additivity
    print(
        f"{args.model}: {graph.n_nodes} nodes, {graph.n_edges} edges ({graph.method}); "
        f"trace {trace_s:.2f} s, profile {profile_s:.2f} s"
    )
    print(
        f"sum of layers {prof.sum_s * 1e3:.3f} ms, end-to-end {(prof.total_s or 0) * 1e3:.3f} ms, "
        f"additivity {ratio:.3f}"
        if ratio is not None
        else "additivity n/a"
    )
    print(
        f"platform: {prof.platform.get('machine')} {prof.platform.get('device_name')}, "
        f"{prof.platform.get('threads')} threads, torch {prof.platform.get('torch')}"
    )
    print(f"wrote {args.output}")
    return 0
