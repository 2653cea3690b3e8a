"""``cic-fast profile`` and ``cic-fast split``: the model commands of the CLI.

``cic_fast.cli`` calls :func:`add_profile_parser` and :func:`add_split_parser` on its
subparsers; each sets ``func`` to a handler that returns the exit code.  torch is
imported only when a handler runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

__all__ = ["add_profile_parser", "add_split_parser"]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision:NAME or package.module:callable")
    p.add_argument(
        "--input-shape",
        action="append",
        metavar="SHAPE",
        help="input shape, e.g. 1,3,224,224; repeat for several inputs "
        "(default: the model's canonical shape)",
    )
    p.add_argument("--weights", metavar="FILE", help="state dict to load (weights_only=True)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random example input")


def _add_profile_args(p: argparse.ArgumentParser, *, device_required: bool) -> None:
    """--device / --server / --server-speedup, shared by the commands that plan."""
    p.add_argument(
        "--device", dest="device_profile", required=device_required, help="device profile JSON"
    )
    p.add_argument(
        "--server",
        dest="server_profile",
        help="server profile JSON (default: the device profile / --server-speedup)",
    )
    p.add_argument(
        "--server-speedup",
        type=float,
        default=10.0,
        help="without --server: server is this many times faster (default 10)",
    )


def _load_profiles(args: argparse.Namespace, graph: Any) -> tuple[Any, Any]:
    """The device and server profiles named by ``_add_profile_args``, checked on ``graph``."""
    from .profile import Profile

    dev = Profile.load(args.device_profile, graph)
    if args.server_profile:
        return dev, Profile.load(args.server_profile, graph)
    if not args.server_speedup > 0:
        raise ValueError("--server-speedup must be positive")
    return dev, dev.scaled(1.0 / args.server_speedup)


def add_profile_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``profile MODEL -o FILE``: trace, time every layer, write a profile."""
    p = subparsers.add_parser(
        "profile",
        help="measure per-layer latency of a model on this machine",
        description="Trace MODEL, time every layer on this machine, write a JSON profile.",
    )
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--threads", type=int, help="torch threads while profiling")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per layer (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per layer (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--summary", action="store_true", help="print the traced layer graph")
    p.set_defaults(func=_run_profile)
    return p


def add_split_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``split MODEL --device D.json --server S.json --bandwidth 10Mbit``."""
    p = subparsers.add_parser(
        "split",
        help="find the best device/server split of a model and show it",
        description="Partition MODEL at one bandwidth from two profiles and print where the "
        "cut falls, what is sent and the predicted latency parts.",
    )
    _add_model_args(p)
    _add_profile_args(p, device_required=True)
    p.add_argument("--bandwidth", required=True, help="link bandwidth, e.g. 10Mbit, 1.5Gbit/s")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="round trip time, ms (default 0)")
    p.add_argument(
        "--check",
        action="store_true",
        help="run head and tail on the example input and check them against the model",
    )
    p.set_defaults(func=_run_split)
    return p


def _example_inputs(args: argparse.Namespace) -> tuple[Any, ...]:
    import torch

    from .models import default_input_shape, parse_shape

    shapes = [parse_shape(s) for s in args.input_shape] if args.input_shape else None
    if shapes is None:
        shapes = [default_input_shape(args.model)]
    gen = torch.Generator().manual_seed(args.seed)
    return tuple(torch.randn(*s, generator=gen) for s in shapes)


def _trace(model: Any, inputs: tuple[Any, ...]) -> Any:
    from .trace import TraceError, trace

    try:
        return trace(model, inputs)
    except TraceError as e:
        # the CLI reports ValueErrors as clean one-line errors
        raise ValueError(str(e)) from None


def _run_profile(args: argparse.Namespace) -> int:
    from .models import load_model
    from .profile import profile

    model = load_model(args.model, weights=args.weights)
    inputs = _example_inputs(args)
    t0 = time.perf_counter()
    graph = _trace(model, inputs)
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


def _run_split(args: argparse.Namespace) -> int:
    import torch

    from .models import load_model, parse_bandwidth
    from .split import split
    from .trace import tensor_bytes

    bandwidth = parse_bandwidth(args.bandwidth)
    model = load_model(args.model, weights=args.weights)
    inputs = _example_inputs(args)
    graph = _trace(model, inputs)
    dev, srv = _load_profiles(args, graph)
    s = split(
        model,
        inputs,
        bandwidth_bps=bandwidth,
        device_profile=dev,
        server_profile=srv,
        rtt_s=args.rtt_ms / 1e3,
        graph=graph,
    )
    print(f"{args.model}: {graph.n_nodes} nodes")
    print(s.summary())
    all_dev = dev.sum_s
    print(f"device only would take {all_dev * 1e3:.3f} ms (predicted)")
    if args.check:
        with torch.no_grad():
            sent = s.head(*inputs)
            got = s.tail(sent)
            want = model(*inputs)
        try:
            torch.testing.assert_close(got, want)
        except AssertionError as e:
            raise ValueError(f"check failed: tail(head(x)) differs from model(x): {e}") from None
        nbytes = tensor_bytes(list(sent.values())) if s.partition.offloads else 0
        if nbytes != s.bytes_sent:
            raise ValueError(
                f"check failed: head returned {nbytes} bytes, partition says {s.bytes_sent}"
            )
        print(f"check: tail(head(x)) == model(x), head returned {nbytes} bytes: ok")
    return 0
