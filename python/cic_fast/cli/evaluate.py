"""``cic-fast evaluate``: end-to-end comparison on an emulated device and link.

``cic_fast.cli`` calls :func:`add_evaluate_parser` on its subparsers; the handler
returns the exit code.  See :mod:`cic_fast.evaluation` and docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cic_fast.cli.common import add_rtt_arg, parse_csv, rtt_seconds

__all__ = ["add_evaluate_parser"]


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``evaluate --models M,... --rates R,... --out DIR [...]``."""
    p = subparsers.add_parser(
        "evaluate",
        help="measure device-only, server-only, Neurosurgeon, DADS and CIC end to end "
        "on an emulated slow device and shaped link",
        description="Run a server (subprocess) and a slowed-down device (subprocess) on "
        "this machine, shape the link between them, and measure end-to-end latency, "
        "decision time and pipelined throughput of five partitioning methods per model "
        "and link rate. Prints a table, writes DIR/results.json, DIR/results.md and "
        "DIR/evaluation_latency.png.",
    )
    p.add_argument(
        "--models",
        type=parse_csv,
        default=["resnet18", "googlenet", "mobilenet_v3_large", "vgg16"],
        help="comma-separated torchvision names or specs (default: "
        "resnet18,googlenet,mobilenet_v3_large,vgg16)",
    )
    p.add_argument(
        "--rates",
        type=parse_csv,
        default=["0.13", "1.1", "5.85", "18.88", "100"],
        help="comma-separated link rates in Mbit/s (default: DADS's 0.13,1.1,5.85,18.88 and 100)",
    )
    p.add_argument(
        "--device-slowdown",
        type=float,
        default=8.0,
        help="F: device = 1/F of one core of this machine (default 8: a Raspberry Pi "
        "3B-class device)",
    )
    p.add_argument(
        "--server-speedup",
        type=float,
        help="S: server speed over the device, <= F (default F: one full core)",
    )
    p.add_argument(
        "--requests", type=int, default=3, help="timed requests per partition (default 3)"
    )
    p.add_argument(
        "--stream-frames", type=int, default=4, help="frames of the throughput stream (default 4)"
    )
    p.add_argument("--input-size", type=int, default=224, help="input height/width (default 224)")
    add_rtt_arg(p, "extra round trip, ms (default 0)")
    p.add_argument("--link", choices=["auto", "tbf", "userspace"], default="auto")
    p.add_argument("--slowdown-method", choices=["auto", "cgroup", "sleep"], default="auto")
    p.add_argument(
        "--max-predicted-s",
        type=float,
        default=12.0,
        help="do not run partitions predicted slower than this (report the prediction)",
    )
    p.add_argument("--profile-repeats", type=int, default=3)
    p.add_argument("--timeout-s", type=float, default=120.0, help="socket/start-up timeout")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.set_defaults(func=_run_evaluate)
    return p


def _run_evaluate(args: argparse.Namespace) -> int:
    from cic_fast.evaluation.harness import evaluate
    from cic_fast.evaluation.report import format_table, plot_latency

    try:
        rates = [float(r) * 1e6 for r in args.rates]
    except ValueError as e:
        raise ValueError(f"--rates: {e}") from None
    out = Path(args.out)
    rows = evaluate(
        args.models,
        rates,
        out_dir=out,
        device_slowdown=args.device_slowdown,
        server_speedup=args.server_speedup,
        requests=args.requests,
        stream_frames=args.stream_frames,
        input_size=args.input_size,
        rtt_s=rtt_seconds(args),
        link=args.link,
        slowdown_method=args.slowdown_method,
        max_predicted_s=args.max_predicted_s,
        profile_repeats=args.profile_repeats,
        timeout_s=args.timeout_s,
    )
    table = format_table(rows)
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(
        "latency: median/p95 ms; '~' = predicted by the cost model, not run; "
        "CIC lat x = min(device-only, server-only) / CIC; CIC fps x = CIC / "
        "max(device-only, server-only)"
    )
    if not args.no_plot:
        why = plot_latency(rows, out / "evaluation_latency.png")
        print(why or f"plot: {out / 'evaluation_latency.png'}", file=sys.stderr)
    return 0
