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
from cic_fast.evaluation.report import TRACE_METHODS

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
        help="comma-separated torchvision names or specs (default: "
        "resnet18,googlenet,mobilenet_v3_large,vgg16; with --trace: "
        "resnet18,mobilenet_v3_large,efficientnet_b0,googlenet)",
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
        "--stream-frames",
        type=int,
        help="frames of the throughput stream (default 4; 16 with --objective throughput)",
    )
    p.add_argument(
        "--objective",
        choices=["latency", "throughput"],
        default="latency",
        help="latency (default): the five methods' latency and stream fps; throughput: "
        "frames/s of a pipelined stream for device-only, server-only, the latency-optimal "
        "split, DADS's heavy-load rule (DSH) and CIC's period-optimal split, measured beside "
        'the cost model\'s period; DIR/results.json gains "throughput_rows"',
    )
    p.add_argument("--input-size", type=int, default=224, help="input height/width (default 224)")
    p.add_argument(
        "--input-dtype",
        choices=["float32", "uint8"],
        default="float32",
        help="float32 input, or uint8 camera frames with the preprocessing (/255, "
        "normalisation) traced into the model as its first layers (default float32)",
    )
    p.add_argument(
        "--plan-check",
        action="store_true",
        help="instead of the five methods: measure every partition of the plan at each "
        "--rates rate and say whether the Planner's choice was the measured fastest "
        '(within 5%%); DIR/results.json gains "plan_checks"',
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="with --trace or --plan-check: keep the device profile at host x F instead of "
        "scaling it to device-only as timed on the emulated device",
    )
    t = p.add_argument_group(
        "trace replay",
        "With --trace, each method runs for --duration-s seconds per model and trace while "
        "the link follows the trace (--rates is not used); DIR/results.json gains "
        '"trace_runs" and a PNG per run is written.',
    )
    t.add_argument(
        "--trace",
        action="append",
        metavar="FILE",
        help="bandwidth trace (mahimahi *.up/*.down, or 'seconds Mbit/s' lines); repeat "
        "for several",
    )
    t.add_argument(
        "--trace-start-s", type=float, default=0.0, help="where in the trace to start (default 0)"
    )
    t.add_argument("--duration-s", type=float, default=60.0, help="seconds per method (default 60)")
    t.add_argument("--fps", type=float, help="issue requests at this rate (default: back to back)")
    t.add_argument(
        "--methods",
        type=parse_csv,
        help=f"comma-separated subset of {','.join(TRACE_METHODS)} (default: all)",
    )
    t.add_argument(
        "--deadline-ms", type=float, help="report the share of requests answered within it"
    )
    t.add_argument(
        "--hedge-margin-ms",
        type=float,
        help="the client's hedging margin (default: the Client's default)",
    )
    t.add_argument(
        "--window-s",
        type=float,
        default=0.1,
        help="the link's rate is updated at least this often (default 0.1)",
    )
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


FIXED_MODELS = ["resnet18", "googlenet", "mobilenet_v3_large", "vgg16"]
TRACE_MODELS = ["resnet18", "mobilenet_v3_large", "efficientnet_b0", "googlenet"]


def _run_traces(args: argparse.Namespace) -> int:
    from cic_fast.evaluation.harness import evaluate_traces
    from cic_fast.evaluation.report import format_trace_table

    methods = args.methods or list(TRACE_METHODS)
    bad = [m for m in methods if m not in TRACE_METHODS]
    if bad:
        raise ValueError(
            f"--methods: unknown {', '.join(bad)} (choose from {', '.join(TRACE_METHODS)})"
        )
    for path in args.trace:
        if not Path(path).is_file():
            raise ValueError(f"--trace {path}: no such file")
    out = Path(args.out)
    runs = evaluate_traces(
        args.models or TRACE_MODELS,
        args.trace,
        out_dir=out,
        duration_s=args.duration_s,
        trace_start_s=args.trace_start_s,
        fps=args.fps,
        methods=methods,
        input_dtype=args.input_dtype,
        deadline_s=None if args.deadline_ms is None else args.deadline_ms / 1e3,
        device_slowdown=args.device_slowdown,
        server_speedup=args.server_speedup,
        input_size=args.input_size,
        rtt_s=rtt_seconds(args),
        link=args.link,
        slowdown_method=args.slowdown_method,
        window_s=args.window_s,
        hedge_margin_s=None if args.hedge_margin_ms is None else args.hedge_margin_ms / 1e3,
        profile_repeats=args.profile_repeats,
        timeout_s=args.timeout_s,
        plot=not args.no_plot,
        calibrate=not args.no_calibrate,
    )
    table = format_trace_table(runs)
    (out / "trace_results.md").write_text(table + "\n")
    print(table)
    print(
        "latency: ms; vs best fixed = mean / best mean of device-only, server-only, static; "
        "vs oracle = mean / oracle's mean; est. err = median |estimate / true - 1|; "
        "meas/pred = median measured / cost model at the true rate"
    )
    return 0


def _run_plan_check(args: argparse.Namespace, rates: list[float]) -> int:
    from cic_fast.evaluation.harness import check_plan

    checks = check_plan(
        args.models or TRACE_MODELS[:3],
        rates,
        out_dir=Path(args.out),
        device_slowdown=args.device_slowdown,
        server_speedup=args.server_speedup,
        requests=args.requests,
        input_size=args.input_size,
        input_dtype=args.input_dtype,
        rtt_s=rtt_seconds(args),
        link=args.link,
        slowdown_method=args.slowdown_method,
        max_predicted_s=args.max_predicted_s,
        profile_repeats=args.profile_repeats,
        timeout_s=args.timeout_s,
        calibrate=not args.no_calibrate,
    )
    lines = [
        "| model | Mbit/s | partitions run | chosen ms (pred) | fastest ms | chosen/fastest "
        "| chosen fastest (5%) | median meas/pred |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        ran = [p for p in c["partitions"] if p["median_s"] is not None]
        chosen = next(p for p in c["partitions"] if p["chosen"])
        ratio = sorted(p["median_s"] / p["predicted_s"] for p in ran)[len(ran) // 2]
        cos = c["chosen_over_fastest"]
        lines.append(
            f"| {c['model']} | {c['rate_bps'] / 1e6:g} | {len(ran)}/{len(c['partitions'])} "
            f"| {1e3 * (c['chosen_s'] or float('nan')):.0f} ({1e3 * chosen['predicted_s']:.0f}) "
            f"| {1e3 * c['fastest_s']:.0f} | {'-' if cos is None else f'{cos:.2f}'} "
            f"| {'yes' if c['chosen_is_fastest'] else 'no'} | {ratio:.2f} |"
        )
    table = "\n".join(lines)
    (Path(args.out) / "plan_check.md").write_text(table + "\n")
    print(table)
    return 0


def _run_throughput(args: argparse.Namespace, rates: list[float]) -> int:
    from cic_fast.evaluation.harness import evaluate_throughput
    from cic_fast.evaluation.report import format_throughput_table

    out = Path(args.out)
    rows = evaluate_throughput(
        args.models or FIXED_MODELS,
        rates,
        out_dir=out,
        device_slowdown=args.device_slowdown,
        server_speedup=args.server_speedup,
        stream_frames=16 if args.stream_frames is None else args.stream_frames,
        input_size=args.input_size,
        input_dtype=args.input_dtype,
        rtt_s=rtt_seconds(args),
        link=args.link,
        slowdown_method=args.slowdown_method,
        max_predicted_s=args.max_predicted_s,
        profile_repeats=args.profile_repeats,
        timeout_s=args.timeout_s,
    )
    table = format_throughput_table(rows)
    (out / "throughput.md").write_text(table + "\n")
    print(table)
    print(
        "fps: measured (cost model: 1 / period); '~' = not run; x fixed = CIC / "
        "max(device-only, server-only); x latency split = CIC / the latency-optimal split; "
        "DSH decide: one DADS heavy-load decision on the emulated device"
    )
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from cic_fast.evaluation.harness import evaluate
    from cic_fast.evaluation.report import format_table, plot_latency

    if args.duration_s is not None and not args.duration_s > 0:
        raise ValueError("--duration-s must be > 0")
    if args.trace:
        return _run_traces(args)
    try:
        rates = [float(r) * 1e6 for r in args.rates]
    except ValueError as e:
        raise ValueError(f"--rates: {e}") from None
    if args.plan_check:
        return _run_plan_check(args, rates)
    if args.objective == "throughput":
        return _run_throughput(args, rates)
    out = Path(args.out)
    rows = evaluate(
        args.models or FIXED_MODELS,
        rates,
        out_dir=out,
        device_slowdown=args.device_slowdown,
        server_speedup=args.server_speedup,
        requests=args.requests,
        stream_frames=4 if args.stream_frames is None else args.stream_frames,
        input_size=args.input_size,
        input_dtype=args.input_dtype,
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
