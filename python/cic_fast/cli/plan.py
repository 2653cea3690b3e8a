"""``cic-fast plan``: build (or show) the all-bandwidth splitting model of a model.

``cic_fast.cli`` calls :func:`add_plan_parser` on its subparsers; the handler returns
the exit code.  torch is imported only when a model has to be traced.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import numpy as np

from cic_fast.cli.common import (
    add_model_args,
    add_profile_args,
    add_rtt_arg,
    example_inputs,
    fixed_latencies_s,
    fixed_periods_s,
    fmt_bps,
    fmt_bytes,
    load_model_args,
    load_profiles,
    rtt_seconds,
    trace_model,
)

__all__ = ["add_plan_parser", "format_plan", "plot_plan"]


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``plan MODEL --device D.json --server S.json [-o FILE] [--plot PNG] [--objective]``."""
    p = subparsers.add_parser(
        "plan",
        help="the optimal split of a model for every bandwidth (the CIC splitting model)",
        description="Trace MODEL, build its plan from two profiles and print the table of "
        "bandwidth ranges: where the cut falls in each, what is sent and the predicted "
        "latency. MODEL may also be a .plan file written by -o, which is shown as is.",
    )
    add_model_args(p)
    add_profile_args(p, device_required=False)  # a .plan file needs none
    add_rtt_arg(p)
    p.add_argument("-o", "--output", help="write the plan here (Planner.save)")
    p.add_argument("--plot", metavar="PNG", help="draw latency vs bandwidth (needs matplotlib)")
    p.add_argument(
        "--objective",
        choices=["latency", "throughput"],
        default="latency",
        help="latency of one request (default), or the pipeline period of a stream "
        "(max of device, link and server time per frame)",
    )
    p.set_defaults(func=_run_plan)
    return p


def format_plan(planner: Any, names: tuple[str, ...] | None = None, max_names: int = 3) -> str:
    """The plan as a text table, slowest link first.

    Columns: bandwidth range, layers on the device, the layers whose outputs are
    sent (the cut), bytes sent, and the predicted latency at the range's ends
    (`PlanSegment.latency_s`, the cost model; unbounded at a range that starts at 0).
    """
    names = names or planner.names
    n = planner.n_nodes
    throughput = planner.objective == "throughput"
    what = "period (ms)" if throughput else "latency (ms)"
    rows = [("bandwidth", "on device", "sent (cut after)", "bytes", what)]
    for s in planner.segments:
        lo, hi = s.lo_bps, s.hi_bps
        if s.sent.size:
            who = [names[i] if names else str(int(i)) for i in s.sent[:max_names]]
            sent = ", ".join(who) + (
                f" +{s.sent.size - max_names}" if s.sent.size > max_names else ""
            )
        else:
            sent = "-" if s.on_device.all() else "(nothing)"
        price = s.period_s if throughput else s.latency_s
        at_hi = price(hi)  # at hi = inf: no transfer time
        at_lo = price(lo) if lo > 0 else math.inf
        lat = (
            f"{at_hi * 1e3:.4g}" if s.bytes_sent == 0 else f"{at_hi * 1e3:.4g} .. {at_lo * 1e3:.4g}"
        )
        rows.append(
            (
                f"{fmt_bps(lo)} .. {fmt_bps(hi)}",
                f"{int(np.count_nonzero(s.on_device))}/{n}",
                sent,
                fmt_bytes(s.bytes_sent),
                lat,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    st = planner.stats
    if throughput:
        lines.append(
            f"K = {len(planner.segments)} partitions (the Pareto front of max(device, "
            f"server) against bytes); graph {st.get('original_nodes')} nodes / "
            f"{st.get('original_edges')} edges; {st.get('search_steps')} search steps"
            f"{'' if st.get('complete', True) else ' (STOPPED at the limit)'}; "
            f"built in {st.get('build_s', 0.0) * 1e3:.2f} ms"
        )
    else:
        lines.append(
            f"K = {len(planner.segments)} partitions; graph {st.get('original_nodes')} nodes / "
            f"{st.get('original_edges')} edges, compressed to {st.get('compressed_nodes')} / "
            f"{st.get('compressed_edges')}; {st.get('min_cuts')} min-cuts; "
            f"built in {st.get('build_s', 0.0) * 1e3:.2f} ms"
        )
    return "\n".join(lines)


def plot_plan(planner: Any, path: str | os.PathLike[str]) -> None:
    """Latency (or period) vs bandwidth (log axes): the optimum, device-only, server-only."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bps = planner.breakpoints_bps
    lo = min([1e3, *[b / 10 for b in bps]])
    hi = max([1e11, *[b * 10 for b in bps]])
    x = np.logspace(math.log10(lo), math.log10(hi), 400)
    throughput = planner.objective == "throughput"
    if throughput:
        fixed = np.array([fixed_periods_s(planner.graph, float(b)) for b in x])
        best = [planner.decide(float(b)).period_s for b in x]
    else:
        fixed = np.array([fixed_latencies_s(planner.graph, float(b), planner.rtt_s) for b in x])
        best = [planner.decide(float(b)).latency_s for b in x]
    device_only, server_only = fixed[:, 0], fixed[:, 1]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, np.array(best) * 1e3, lw=2.5, label="optimal split (envelope)")
    ax.plot(x, device_only * 1e3, "--", label="device only")
    ax.plot(x, server_only * 1e3, ":", label="server only (send the input)")
    for b in bps:
        ax.axvline(b, color="grey", lw=0.8, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bandwidth (bit/s)")
    ax.set_ylabel("pipeline period (ms)" if throughput else "latency (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run_plan(args: argparse.Namespace) -> int:
    from cic_fast.core.planner import Planner

    if args.model.endswith(".plan") and os.path.exists(args.model):
        planner = Planner.load(args.model)
        label = args.model
    else:
        if not args.device_profile:
            raise ValueError("give --device PROFILE.json (and --server or --server-speedup)")
        model = load_model_args(args)
        graph = trace_model(model, example_inputs(args))
        dev, srv = load_profiles(args, graph)
        planner = Planner.from_profiles(
            graph, dev, srv, rtt_s=rtt_seconds(args), objective=args.objective
        )
        label = args.model
    print(
        f"{label}: {planner.n_nodes} nodes, rtt {planner.rtt_s * 1e3:g} ms, "
        f"objective {planner.objective}"
    )
    print(format_plan(planner))
    if args.output:
        planner.save(args.output)
        print(f"wrote {args.output}")
    if args.plot:
        plot_plan(planner, args.plot)
        print(f"wrote {args.plot}")
    return 0
