"""The evaluation's results: per-method measurements, speedups, the table and the plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METHODS", "EvalRow", "MethodResult", "format_table", "load_rows", "plot_latency"]

METHODS = ("device-only", "server-only", "neurosurgeon", "dads", "cic")


@dataclass
class MethodResult:
    """One method at one rate.

    Attributes
    ----------
    method : str
    n_on_device, n_nodes : int
        Layers on the device, of all.
    bytes_sent : float
        Boundary bytes of the partition.
    predicted_s : float
        Latency of the partition in the cost model.
    decision_s : float
        Median time of one decision on the (slowed) device; 0 for the fixed
        device-only and server-only.
    measured : bool
        False if the partition was not run (predicted latency over the cap).
    latency_s : list of float
        End-to-end latencies of the sequential requests.
    fps : float
        Frames per second of the pipelined stream (NaN if not measured).
    fallbacks : int
        Requests the client had to finish locally (should be 0).
    shared_with : str or None
        The method whose measurement of the same partition this one reuses.
    """

    method: str
    n_on_device: int
    n_nodes: int
    bytes_sent: float
    predicted_s: float
    decision_s: float
    measured: bool
    latency_s: list[float] = field(default_factory=list)
    fps: float = float("nan")
    fallbacks: int = 0
    shared_with: str | None = None

    @property
    def median_s(self) -> float:
        """Median measured latency (the predicted one if not measured)."""
        return float(np.median(self.latency_s)) if self.latency_s else self.predicted_s

    @property
    def p95_s(self) -> float:
        """95th percentile of the measured latencies (predicted if not measured)."""
        return float(np.percentile(self.latency_s, 95)) if self.latency_s else self.predicted_s

    @property
    def throughput(self) -> float:
        """Measured frames/s, or 1 / predicted latency if not measured."""
        return self.fps if self.measured and math.isfinite(self.fps) else 1.0 / self.predicted_s


@dataclass
class EvalRow:
    """All methods for one model at one link rate."""

    model: str
    rate_bps: float
    methods: dict[str, MethodResult]

    def latency_speedup(self) -> float:
        """CIC's median latency speedup over the best of device-only and server-only."""
        m = self.methods
        best = min(m["device-only"].median_s, m["server-only"].median_s)
        return best / m["cic"].median_s

    def throughput_speedup(self) -> float:
        """CIC's throughput over the best of device-only and server-only."""
        m = self.methods
        best = max(m["device-only"].throughput, m["server-only"].throughput)
        return m["cic"].throughput / best

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model": self.model,
            "rate_bps": self.rate_bps,
            "methods": {k: asdict(v) for k, v in self.methods.items()},
            "cic_latency_speedup": self.latency_speedup(),
            "cic_throughput_speedup": self.throughput_speedup(),
        }


def _ms(r: MethodResult, what: str) -> str:
    v = r.median_s if what == "median" else r.p95_s
    return f"{1e3 * v:.0f}" + ("" if r.measured else "~")


def _us(seconds: float) -> str:
    us = 1e6 * seconds
    return f"{us:.1f}" if us < 10 else f"{us:.0f}"


def format_table(rows: Sequence[EvalRow], *, header: bool = True) -> str:
    """A plain-text (markdown) table: one line per model and rate.

    Latency columns are ``median/p95`` in ms; throughput in frames/s; a ``~``
    marks values predicted by the cost model instead of measured.
    """
    cols = ["model", "Mbit/s"]
    cols += [f"{m} ms" for m in METHODS]
    cols += ["CIC lat x", "decide us (NS/DADS/CIC)"]
    cols += [f"{m} fps" for m in METHODS]
    cols += ["CIC fps x", "CIC split"]
    lines = []
    if header:
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
    for row in rows:
        m = row.methods
        cells = [row.model, f"{row.rate_bps / 1e6:g}"]
        cells += [f"{_ms(m[k], 'median')}/{_ms(m[k], 'p95')}" for k in METHODS]
        cells.append(f"{row.latency_speedup():.2f}")
        cells.append("/".join(_us(m[k].decision_s) for k in ("neurosurgeon", "dads", "cic")))
        cells += [f"{m[k].throughput:.2f}" + ("" if m[k].measured else "~") for k in METHODS]
        cells.append(f"{row.throughput_speedup():.2f}")
        c = m["cic"]
        cells.append(f"{c.n_on_device}/{c.n_nodes}, {c.bytes_sent / 1e3:.0f} KB")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_rows(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[EvalRow]]:
    """Read ``results.json`` written by :func:`evaluate`: (meta, rows)."""
    data = json.loads(Path(path).read_text())
    rows = [
        EvalRow(
            r["model"],
            float(r["rate_bps"]),
            {k: MethodResult(**v) for k, v in r["methods"].items()},
        )
        for r in data["rows"]
    ]
    return data["meta"], rows


def plot_latency(rows: Sequence[EvalRow], path: str | os.PathLike[str]) -> str | None:
    """Median latency vs link rate per method (log axes), one panel per model.

    Returns
    -------
    str or None
        None if written, else why not (matplotlib missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        mine = sorted((r for r in rows if r.model == name), key=lambda r: r.rate_bps)
        x = [r.rate_bps / 1e6 for r in mine]
        for k, style in zip(METHODS, ("o-", "s-", "^--", "v--", "x-"), strict=True):
            ax.plot(x, [r.methods[k].median_s for r in mine], style, label=k, ms=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("link rate (Mbit/s)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median end-to-end latency (s)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
