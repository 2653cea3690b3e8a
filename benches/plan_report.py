"""The CIC plan per model: compression, K, build time, decision time and speedups.

Usage::

    python benches/plan_report.py                  # every model, print the table
    python benches/plan_report.py --models resnet18 densenet201
    python benches/plan_report.py --synthetic      # dnn_graph stand-ins (no torch)
    python benches/plan_report.py --json out.json  # also keep the numbers

Each torchvision model (``weights=None``, eval mode, one 224x224 image, 299 for
inception_v3) is traced once with ``cic_fast.trace`` and cached as JSON under
``$CIC_BENCH_CACHE`` (default ``~/.cache/cic_fast_bench``). Costs are a
stand-in for two measured profiles (see `costs`): a slow ARM-class device and a
GPU-class server. Everything timed here is timed in the same process, as the
median of several repeats; ratios compare medians.

Exit status 0 when the acceptance targets of issue 4 hold (decide <= 1 us and
>= 100x faster than the full ``cic_fast.min_cut`` (DADS: the whole
graph, from its arrays) on densenet201, plan build < 10 ms on it,
>= 5x fewer nodes on resnet152 and densenet201), else 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

import cic_fast
from cic_fast import _core
from cic_fast.core.planner import Planner

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = (
    "resnet18",
    "resnet50",
    "resnet152",
    "googlenet",
    "inception_v3",
    "densenet121",
    "densenet201",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "vit_b_16",
    "swin_t",
)
# The cost setting (DESIGN.md, "Scenarios"): a Raspberry-Pi-class device and a
# GPU-class server, per layer: flops / rate + output bytes / memory bandwidth;
# layers that only re-view a tensor cost nothing.
DEVICE_FLOPS = 2e9
DEVICE_MEM_BPS = 2e9
SERVER_FLOPS = 2e11
SERVER_MEM_BPS = 1e11
RTT_S = 0.0
VIEW_TARGETS = {
    "flatten", "view", "reshape", "getitem", "size", "permute", "transpose", "contiguous",
    "dropout", "unsqueeze", "squeeze", "expand", "chunk", "split", "t", "identity",
}  # fmt: skip
# The bandwidth every decision is timed at (a mid-range Wi-Fi link).
BANDWIDTH_BPS = 18.88e6
TARGET_MODEL = "densenet201"
TARGET_DECIDE_S = 1e-6
TARGET_DECIDE_SPEEDUP = 100.0
TARGET_BUILD_S = 10e-3
TARGET_COMPRESSION = 5.0
COMPRESSION_MODELS = ("resnet152", "densenet201")


@dataclass(frozen=True)
class Case:
    """One model graph with its costs."""

    name: str
    edges: NDArray[np.int64]
    device_s: NDArray[np.float64]
    server_s: NDArray[np.float64]
    out_bytes: NDArray[np.float64]

    @property
    def arrays(self) -> tuple[Any, ...]:
        return self.edges, self.device_s, self.server_s, self.out_bytes


def costs(
    flops: NDArray[Any], out_bytes: NDArray[Any], targets: tuple[str, ...]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Device and server seconds per layer from flops, output size and op."""
    f = np.asarray(flops, dtype=np.float64)
    b = np.asarray(out_bytes, dtype=np.float64)
    view = np.array([t.rsplit(".", 1)[-1].lower() in VIEW_TARGETS for t in targets], dtype=bool)
    dev = np.where(view, 0.0, f / DEVICE_FLOPS + b / DEVICE_MEM_BPS)
    srv = np.where(view, 0.0, f / SERVER_FLOPS + b / SERVER_MEM_BPS)
    return dev, srv


def cache_dir() -> Path:
    d = Path(os.environ.get("CIC_BENCH_CACHE", Path.home() / ".cache" / "cic_fast_bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def model_case(name: str) -> Case:
    """Trace (or read the cached trace of) a torchvision model and cost it."""
    from cic_fast.frontend.tracing import LayerGraph

    path = cache_dir() / f"{name}.json"
    if path.exists():
        graph = LayerGraph.from_json(path.read_text())
    else:
        import torch
        import torchvision

        size = 299 if name == "inception_v3" else 224
        kw: dict[str, Any] = {}
        if name in ("inception_v3", "googlenet"):
            kw = {"init_weights": False, "aux_logits": False}
        model = getattr(torchvision.models, name)(weights=None, **kw).eval()
        graph = cic_fast.trace(model, torch.randn(1, 3, size, size))
        path.write_text(graph.to_json())
    dev, srv = costs(graph.flops, graph.out_bytes, graph.targets)
    return Case(
        name, np.asarray(graph.edges), dev, srv, np.asarray(graph.out_bytes, dtype=np.float64)
    )


def synthetic_case(name: str) -> Case:
    """A dnn_graph stand-in of about the model's size and shape (no torch needed)."""
    from cic_fast.core.synthetic import dnn_graph

    shapes = {
        "resnet18": (71, "resnet"), "resnet50": (175, "resnet"), "resnet152": (517, "resnet"),
        "googlenet": (200, "inception"), "inception_v3": (300, "inception"),
        "densenet121": (430, "densenet"), "densenet201": (713, "densenet"),
        "mobilenet_v3_large": (250, "mixed"), "efficientnet_b0": (250, "mixed"),
        "vit_b_16": (240, "transformer"), "swin_t": (300, "transformer"),
    }  # fmt: skip
    n, kind = shapes[name]
    g = dnn_graph(n, kind=kind, seed=0, device_slowdown=10.0, server_speedup=100.0)
    return Case(f"{name}~syn", g.edges, g.device_s, g.server_s, g.out_bytes)


def median_call_s(fn: Callable[[], object], budget_s: float = 0.3) -> float:
    """Median seconds per call over repeats sized to about ``budget_s`` in all."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-8)
    number = max(1, int(2e-3 / one))
    repeat = max(5, min(50, int(budget_s / (one * number))))
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number


def fastest_peer(case: Case) -> tuple[str, float]:
    """The fastest prepared peer solve (PyMaxflow, OR-tools) on the full graph."""
    try:
        from peers import PEERS
    except ImportError:  # pragma: no cover - peers not installed
        return "-", math.nan
    best = ("-", math.inf)
    for name in ("pymaxflow", "ortools"):
        if name not in PEERS:
            continue
        prepared = PEERS[name].prepare(*case.arrays, BANDWIDTH_BPS, RTT_S)
        t = median_call_s(prepared.solve, 0.2)
        if t < best[1]:
            best = (name, t)
    return best


def measure(case: Case, peers: bool = True) -> dict[str, Any]:
    """Every number of one table row."""
    builds = []
    planner = None
    for _ in range(7):
        t0 = time.perf_counter()
        planner = Planner(*case.arrays, rtt_s=RTT_S)
        builds.append(time.perf_counter() - t0)
    assert planner is not None
    st = planner.stats
    full = cic_fast.Graph(*case.arrays)
    c = _core.compress(full._core)
    small = cic_fast.Graph(c[0], c[1], c[2], c[3])
    # exactness spot check across the range
    for bw in np.logspace(3, 11, 33):
        a = planner.decide(bw).latency_s
        b = full.min_cut(bw, RTT_S).latency_s
        if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            raise AssertionError(f"{case.name}: decide {a} != min_cut {b} at {bw}")
    decide = planner.decide
    row = {
        "model": case.name,
        "nodes": st["original_nodes"],
        "edges": st["original_edges"],
        "c_nodes": st["compressed_nodes"],
        "c_edges": st["compressed_edges"],
        "node_ratio": st["original_nodes"] / st["compressed_nodes"],
        "K": st["K"],
        "min_cuts": st["min_cuts"],
        "breakpoints_mbps": [round(b / 1e6, 4) for b in planner.breakpoints_bps],
        "build_s": statistics.median(builds),
        "decide_s": median_call_s(lambda: decide(BANDWIDTH_BPS)),
        "compressed_min_cut_s": median_call_s(lambda: small.min_cut(BANDWIDTH_BPS, RTT_S)),
        "graph_min_cut_s": median_call_s(lambda: full.min_cut(BANDWIDTH_BPS, RTT_S)),
        "min_cut_s": median_call_s(
            lambda: cic_fast.min_cut(*case.arrays, BANDWIDTH_BPS, rtt_s=RTT_S)
        ),
    }
    if peers:
        row["peer"], row["peer_s"] = fastest_peer(case)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | nodes / edges | compressed | ratio | K | min-cuts | build ms | decide ns "
        "| x compressed min-cut | x Graph.min_cut | x min_cut (DADS) | x fastest peer |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        d = r["decide_s"]
        peer = f"{r['peer_s'] / d:,.0f} ({r['peer']})" if "peer_s" in r else "-"
        lines.append(
            f"| {r['model']} | {r['nodes']} / {r['edges']} | {r['c_nodes']} / {r['c_edges']} "
            f"| {r['node_ratio']:.0f}x | {r['K']} | {r['min_cuts']} | {r['build_s'] * 1e3:.2f} "
            f"| {d * 1e9:.0f} | {r['compressed_min_cut_s'] / d:,.0f} "
            f"| {r['graph_min_cut_s'] / d:,.0f} | {r['min_cut_s'] / d:,.0f} | {peer} |"
        )
    return "\n".join(lines)


def acceptance(rows: list[dict[str, Any]]) -> list[str]:
    """The failed targets (empty if all hold or the target models were not run)."""
    by = {r["model"]: r for r in rows}
    failed = []
    t = by.get(TARGET_MODEL)
    if t is not None:
        if t["decide_s"] > TARGET_DECIDE_S:
            failed.append(f"decide {t['decide_s'] * 1e9:.0f} ns > 1 us on {TARGET_MODEL}")
        if t["min_cut_s"] / t["decide_s"] < TARGET_DECIDE_SPEEDUP:
            failed.append(f"decide < 100x faster than min_cut on {TARGET_MODEL}")
        if t["build_s"] > TARGET_BUILD_S:
            failed.append(f"build {t['build_s'] * 1e3:.1f} ms >= 10 ms on {TARGET_MODEL}")
    for m in COMPRESSION_MODELS:
        if m in by and by[m]["node_ratio"] < TARGET_COMPRESSION:
            failed.append(f"compression {by[m]['node_ratio']:.1f}x < 5x on {m}")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--synthetic", action="store_true", help="dnn_graph stand-ins, no torch")
    ap.add_argument("--no-peers", action="store_true", help="skip PyMaxflow / OR-tools")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument(
        "--device-slowdown",
        type=float,
        default=1.0,
        help="multiply every device time (a slower device: more genuine splits)",
    )
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        case = synthetic_case(name) if args.synthetic else model_case(name)
        if args.device_slowdown != 1.0:
            case = Case(
                case.name, case.edges, case.device_s * args.device_slowdown, case.server_s,
                case.out_bytes,
            )  # fmt: skip
        rows.append(measure(case, peers=not args.no_peers))
        print(f"  {name}: done", file=sys.stderr, flush=True)
    print(
        f"Costs: device flops/{DEVICE_FLOPS:.0e} + bytes/{DEVICE_MEM_BPS:.0e}, server "
        f"flops/{SERVER_FLOPS:.0e} + bytes/{SERVER_MEM_BPS:.0e} (views free); device times "
        f"x{args.device_slowdown:g}; rtt {RTT_S} s; "
        f"decisions timed at {BANDWIDTH_BPS / 1e6} Mbit/s. Speedups = their median / decide's."
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    failed = acceptance(rows)
    for f in failed:
        print("TARGET MISSED:", f)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
