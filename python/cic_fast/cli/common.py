"""What every ``cic-fast`` command shares: options, loaders, parsers, formats, baselines.

Every command takes its shared options from here (`add_model_args`,
`add_profile_args`, `add_rtt_arg`), formats sizes and rates with the one
`fmt_bytes` and the one `fmt_bps`, and prices the fixed placements it compares
against with `device_only_s` and `fixed_latencies_s`, which go through the cost
model (`cic_fast.core.baselines` and `Graph.evaluate`) like every other price.
torch is imported only when a loader runs.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from cic_fast.core import baselines
from cic_fast.core.graph import Graph
from cic_fast.frontend.models import INPUT_DTYPES

__all__ = [
    "add_model_args",
    "add_profile_args",
    "add_rtt_arg",
    "device_only_s",
    "example_inputs",
    "fixed_latencies_s",
    "fixed_periods_s",
    "fmt_bps",
    "fmt_bytes",
    "load_model_args",
    "load_profiles",
    "parse_bandwidth",
    "parse_csv",
    "parse_shape",
    "resolve_model",
    "rtt_seconds",
    "trace_model",
]


def add_model_args(p: argparse.ArgumentParser) -> None:
    """MODEL (positional, or ``--model MODEL``), --input-shape, --input-dtype, --weights, --seed.

    `resolve_model` reconciles the two spellings of the model after parsing.
    """
    p.add_argument(
        "model",
        nargs="?",
        help="torchvision:NAME or package.module:callable (or give it as --model MODEL)",
    )
    p.add_argument(
        "--model",
        dest="model_flag",
        metavar="MODEL",
        help="the model, as the positional MODEL",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        metavar="SHAPE",
        help="input shape, e.g. 1,3,224,224; repeat for several inputs "
        "(default: the model's canonical shape)",
    )
    p.add_argument(
        "--input-dtype",
        choices=INPUT_DTYPES,
        default="float32",
        help="float32: the model's normalised input; uint8: camera frames, converted "
        "and normalised (ImageNet mean/std) inside the traced graph, so server-only "
        "sends 1 byte per value (default float32; client and server must agree)",
    )
    p.add_argument("--weights", metavar="FILE", help="state dict to load (weights_only=True)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random example input")


def resolve_model(args: argparse.Namespace) -> str | None:
    """Set ``args.model`` from the positional MODEL or ``--model``; an error message, or None.

    Both may be given only if they agree; a command that takes a model needs one.
    """
    if not hasattr(args, "model_flag"):
        return None
    flag = args.model_flag
    del args.model_flag
    if flag is not None and args.model is not None and flag != args.model:
        return f"MODEL given twice: {args.model!r} and --model {flag!r}"
    args.model = args.model or flag
    if args.model is None:
        return "the model is required: MODEL or --model MODEL"
    return None


def add_profile_args(p: argparse.ArgumentParser, *, device_required: bool) -> None:
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


def add_rtt_arg(p: argparse.ArgumentParser, text: str = "round trip time, ms (default 0)") -> None:
    """--rtt-ms, in milliseconds on the command line (`rtt_seconds` reads it); ``text``: help."""
    p.add_argument("--rtt-ms", type=float, default=0.0, help=text)


def rtt_seconds(args: argparse.Namespace) -> float:
    """The round trip of `add_rtt_arg`, in seconds."""
    return float(args.rtt_ms) / 1e3


def load_profiles(args: argparse.Namespace, graph: Any) -> tuple[Any, Any]:
    """The device and server profiles named by `add_profile_args`, checked on ``graph``."""
    from cic_fast.frontend.profiling import Profile

    dev = Profile.load(args.device_profile, graph)
    if args.server_profile:
        return dev, Profile.load(args.server_profile, graph)
    if not args.server_speedup > 0:
        raise ValueError("--server-speedup must be positive")
    return dev, dev.scaled(1.0 / args.server_speedup)


def load_model_args(args: argparse.Namespace) -> Any:
    """The model `add_model_args` names: MODEL, ``--weights`` and ``--input-dtype``."""
    from cic_fast.frontend.models import load_model

    return load_model(args.model, weights=args.weights, input_dtype=args.input_dtype)


def example_inputs(args: argparse.Namespace) -> tuple[Any, ...]:
    """Random example inputs of the shapes ``--input-shape`` names (seeded by ``--seed``).

    Their dtype is ``--input-dtype``'s (`cic_fast.frontend.models.random_inputs`).
    """
    from cic_fast.frontend.models import random_inputs

    shapes = [parse_shape(s) for s in args.input_shape] if args.input_shape else None
    return random_inputs(
        args.model, shapes, input_dtype=getattr(args, "input_dtype", "float32"), seed=args.seed
    )


def trace_model(model: Any, inputs: tuple[Any, ...]) -> Any:
    """`cic_fast.trace`, with a TraceError turned into the ValueError the CLI reports."""
    from cic_fast.frontend.tracing import TraceError, trace

    try:
        return trace(model, inputs)
    except TraceError as e:
        # the CLI reports ValueErrors as clean one-line errors
        raise ValueError(str(e)) from None


def device_only_s(graph: Graph) -> float:
    """Device-only latency, priced by the cost model (`Graph.evaluate`).

    Nothing is sent and no round trip is paid, so the bandwidth it is priced at
    (1 bit/s here) does not matter.
    """
    return graph.evaluate(baselines.device_only(graph.n_nodes), 1.0).latency_s


def fixed_latencies_s(graph: Graph, bandwidth_bps: float, rtt_s: float) -> tuple[float, float]:
    """Device-only and server-only latency at one bandwidth, priced by the cost model.

    The placements are `cic_fast.core.baselines.device_only` / `server_only` (the
    raw input sent) and the price is `Graph.evaluate`, the same formula as the
    optimum they are compared with. Device-only sends nothing and pays no round
    trip, so its latency is the same at every bandwidth.

    Raises
    ------
    ValueError
        If ``bandwidth_bps`` is not finite and > 0, or ``rtt_s`` is negative.
    """
    n = graph.n_nodes
    device = graph.evaluate(baselines.device_only(n), bandwidth_bps, rtt_s).latency_s
    server = graph.evaluate(baselines.server_only(graph.edges, n), bandwidth_bps, rtt_s).latency_s
    return device, server


def fixed_periods_s(graph: Graph, bandwidth_bps: float) -> tuple[float, float]:
    """Device-only and server-only pipeline period at one bandwidth (`Partition.period_s`)."""
    n = graph.n_nodes
    device = graph.evaluate(baselines.device_only(n), bandwidth_bps).period_s
    server = graph.evaluate(baselines.server_only(graph.edges, n), bandwidth_bps).period_s
    return device, server


def fmt_bps(b: float) -> str:
    """A bandwidth for a table: ``12.5 Mbit/s``."""
    if b == 0.0:
        return "0"
    if math.isinf(b):
        return "inf"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if b >= scale:
            return f"{b / scale:.4g} {unit}"
    return f"{b:.4g} bit/s"


def fmt_bytes(n: float) -> str:
    """A size for a table: ``1.2 MB``, ``512 KB``, ``40 B``."""
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def parse_csv(text: str) -> list[str]:
    """Split ``"a, b,,c"`` into ``["a", "b", "c"]`` (empty items dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``) into a shape tuple."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad input shape {text!r}: expected integers like 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"bad input shape {text!r}: dimensions must be positive")
    return shape


_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_bandwidth(text: str) -> float:
    """Parse a bandwidth into bits per second.

    Accepts ``10Mbit``, ``10 Mbit/s``, ``10mbps``, ``1.5Gbit``, ``800kbit``, ``10M``
    and a plain number of bits per second.  Bytes (``MB/s``) are converted with
    the factor 8.
    """
    m = re.fullmatch(
        r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)(bit|bps|b|B)?(?:/s)?\s*", text
    )
    if not m:
        raise ValueError(f"bad bandwidth {text!r}: expected e.g. 10Mbit, 1.5Gbit/s or 1e6")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if m.group(3) == "B":
        value *= 8
    if not value > 0:
        raise ValueError(f"bad bandwidth {text!r}: must be positive")
    return value
