"""Draw docs/architecture.png: the package's layers (left) and its data flow (right).

Run from the repository root: ``python docs/architecture_diagram.py`` (needs
matplotlib). The output is deterministic: no timestamp or version in the PNG.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).with_name("architecture.png")

# One colour per layer, used in both panels.
COLOURS = {
    "cli": "#f4cccc",
    "evaluation": "#fce5cd",
    "runtime": "#fff2cc",
    "frontend": "#d9ead3",
    "core": "#cfe2f3",
    "cpp": "#d9d2e9",
    "data": "#ffffff",
}

# Layer, what it needs, its modules (one or two lines); top to bottom.
LAYERS = [
    ("cli", "argparse", ["common  demo  profile  split", "plan  serve  evaluate"]),
    (
        "evaluation",
        "subprocesses, tc, cgroups",
        ["link  traces  device", "worker  harness  report"],
    ),
    ("runtime", "sockets, threads", ["wire  messages  fingerprint", "estimator  server  client"]),
    ("frontend", "torch, imported lazily", ["tracing  profiling  cutting", "splitting  models"]),
    (
        "core",
        "numpy + cic_fast._core",
        ["cost  graph  planner  planfile", "baselines  checks  synthetic"],
    ),
    (
        "cpp",
        "no Python; bound by pybind11",
        ["dag  cost  maxflow  network  graph", "envelope  search  compress  plan"],
    ),
]
TITLES = {"cpp": "C++ core: cpp/include/cic"}

# The data flow, top to bottom: (label, layer of the stage, or "data" for a result).
FLOW = [
    ("torch model + example inputs", "data"),
    ("trace  (frontend.tracing)", "frontend"),
    ("LayerGraph: edges, out_bytes, names", "data"),
    ("profile  (frontend.profiling), device and server", "frontend"),
    ("Profile: per-layer seconds", "data"),
    ("Planner  (core.planner): compress, plan; offline", "core"),
    ("Partition = planner.decide(bw)  (core.cost); ~1 us", "data"),
    ("cut / split  (frontend.cutting, splitting)", "frontend"),
    ("head (device)  |  tail (server)", "data"),
    ("Client  <- wire format ->  Server  (runtime)", "runtime"),
    ("evaluate: rows, table, plot  (evaluation)", "evaluation"),
]


def _box(ax, x, y, w, h, colour, *, lw=1.2, dashed=False):
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=0.12",
            facecolor=colour,
            edgecolor="#444444",
            lw=lw,
            ls="--" if dashed else "-",
        )
    )


def _arrow(ax, x0, y0, x1, y1, *, colour="#444444", style="-|>", lw=1.3):
    ax.add_patch(
        FancyArrowPatch(
            (x0, y0), (x1, y1), arrowstyle=style, mutation_scale=14, color=colour, lw=lw
        )
    )


def draw(path: Path = OUT) -> None:
    """Write the diagram to ``path``."""
    plt.rcParams.update({"font.family": "DejaVu Sans"})
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(15, 9), gridspec_kw={"width_ratios": [1.0, 1.0], "wspace": 0.08}
    )
    for ax in (left, right):
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 12)
        ax.axis("off")

    # -- left: the layers ------------------------------------------------------------
    left.text(0.3, 11.6, "Layers: imports point down only", fontsize=14, weight="bold")
    h, gap, top = 1.34, 0.36, 11.2
    for i, (name, needs, modules) in enumerate(LAYERS):
        y = top - (i + 1) * h - i * gap
        _box(left, 0.3, y, 9.4, h, COLOURS[name], dashed=name == "cpp")
        title = TITLES.get(name, f"cic_fast.{name}")
        left.text(0.55, y + h - 0.31, title, fontsize=12.5, weight="bold", va="center")
        left.text(
            9.5,
            y + h - 0.31,
            needs,
            fontsize=10,
            style="italic",
            va="center",
            ha="right",
            color="#333333",
        )
        for j, line in enumerate(modules):
            left.text(
                0.55,
                y + h - 0.74 - 0.38 * j,
                line,
                fontsize=11,
                va="center",
                family="DejaVu Sans Mono",
            )
        if i:
            _arrow(left, 8.9, y + h + gap + 0.03, 8.9, y + h - 0.03, lw=1.6)
            if i == 1:
                left.text(
                    8.75,
                    y + h + gap / 2,
                    "imports",
                    fontsize=9.5,
                    ha="right",
                    va="center",
                    color="#444444",
                )
    left.text(
        0.3,
        0.05,
        "tests/test_architecture.py checks it on the source (ast): no upward import,\n"
        "no other module's _private name, only core imports _core. The arrows:\n"
        "each layer imports the ones below it; the top-level cic_fast only re-exports.",
        fontsize=10,
        color="#333333",
        va="bottom",
    )

    # -- right: the data flow --------------------------------------------------------
    right.text(0.3, 11.6, "Data flow: each stage hands its result on", fontsize=14, weight="bold")
    n = len(FLOW)
    bottom = 0.75
    step = (11.1 - bottom) / n
    bh = step * 0.66
    for i, (label, layer) in enumerate(FLOW):
        y = 11.1 - (i + 1) * step + (step - bh)
        is_data = layer == "data"
        _box(right, 0.6, y, 8.8, bh, COLOURS[layer], lw=0.9 if is_data else 1.4, dashed=is_data)
        right.text(
            5.0,
            y + bh / 2,
            label,
            fontsize=11,
            ha="center",
            va="center",
            style="italic" if is_data else "normal",
            weight="normal" if is_data else "bold",
        )
        if i:
            _arrow(right, 5.0, y + step + 0.02, 5.0, y + bh - 0.02, lw=1.6)
    names = ["core", "frontend", "runtime", "evaluation"]
    handles = [
        FancyBboxPatch((0, 0), 1, 1, facecolor=COLOURS[k], edgecolor="#444444") for k in names
    ]
    handles.append(FancyBboxPatch((0, 0), 1, 1, facecolor="white", edgecolor="#444444", ls="--"))
    right.legend(
        handles,
        [*names, "a result (data)"],
        loc="lower center",
        ncol=5,
        fontsize=10,
        frameon=False,
        bbox_to_anchor=(0.5, -0.01),
    )

    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {sys.argv[1] if len(sys.argv) > 1 else OUT}")
