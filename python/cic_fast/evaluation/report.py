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

__all__ = [
    "METHODS",
    "THROUGHPUT_METHODS",
    "TRACE_METHODS",
    "EvalRow",
    "MethodResult",
    "ThroughputResult",
    "ThroughputRow",
    "format_table",
    "format_throughput_table",
    "format_trace_table",
    "load_rows",
    "plot_latency",
    "plot_trace_run",
    "summarize_trace",
]

METHODS = ("device-only", "server-only", "neurosurgeon", "dads", "cic")

#: The methods of a trace run (``cic-fast evaluate --trace``), in table order:
#: two fixed placements; ``static``, the one partition best at the trace's mean rate
#: (chosen before the run, as a user without CIC would); three that decide per
#: request from the client's bandwidth estimate (best prefix, a full min-cut on the
#: device, the Planner); and ``oracle``, the Planner at the trace's true rate at each
#: request's start: the bound for any decision rule.
TRACE_METHODS = (
    "device-only",
    "server-only",
    "static",
    "neurosurgeon",
    "dads",
    "cic",
    "oracle",
)


#: The methods of a throughput run (``cic-fast evaluate --objective throughput``):
#: the two fixed placements; ``cic-latency``, the latency-optimal split (the latency
#: Planner, = DADS's light-load min cut); ``dads-heavy``, DADS's heavy-load rule DSH
#: (`cic_fast.core.throughput_baselines.dads_heavy_load`); and ``cic-throughput``,
#: the period-optimal split (the Planner with ``objective="throughput"``).
THROUGHPUT_METHODS = ("device-only", "server-only", "cic-latency", "dads-heavy", "cic-throughput")


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


@dataclass
class ThroughputResult:
    """One method's stream at one rate (``evaluate(..., objective="throughput")``).

    Attributes
    ----------
    method : str
    n_on_device, n_nodes : int
        Layers on the device, of all.
    bytes_sent : float
        Boundary bytes per frame.
    predicted_period_s : float
        The partition's pipeline period in the cost model,
        ``max(device_s, transfer_s, server_s)``.
    predicted_latency_s : float
        Its one-request latency in the cost model.
    decision_s : float
        One decision's time on the emulated (slowed) device: the median of
        repeated calls, DSH's single call (it runs up to thousands of min cuts);
        0 for the fixed placements.
    measured : bool
        False if the stream was not run (predicted period over the cap).
    fps : float
        Frames per second of the measured stream (NaN if not run).
    frames : int
        Frames of the stream.
    fallbacks : int
        Frames the client finished locally (should be 0).
    shared_with : str or None
        The method whose measurement of the same partition this one reuses.
    """

    method: str
    n_on_device: int
    n_nodes: int
    bytes_sent: float
    predicted_period_s: float
    predicted_latency_s: float
    decision_s: float
    measured: bool
    fps: float = float("nan")
    frames: int = 0
    fallbacks: int = 0
    shared_with: str | None = None

    @property
    def measured_period_s(self) -> float:
        """1 / fps (NaN if not measured)."""
        return 1.0 / self.fps if self.measured and self.fps > 0 else float("nan")

    @property
    def throughput(self) -> float:
        """Measured frames/s, or 1 / predicted period if not measured."""
        if self.measured and math.isfinite(self.fps):
            return self.fps
        return 1.0 / self.predicted_period_s


@dataclass
class ThroughputRow:
    """All throughput methods for one model at one link rate."""

    model: str
    rate_bps: float
    methods: dict[str, ThroughputResult]

    def gain_over_fixed(self) -> float:
        """CIC's measured fps over the better of device-only and server-only."""
        m = self.methods
        best = max(m["device-only"].throughput, m["server-only"].throughput)
        return m["cic-throughput"].throughput / best

    def gain_over_latency_split(self) -> float:
        """CIC's measured fps over the latency-optimal split's."""
        m = self.methods
        return m["cic-throughput"].throughput / m["cic-latency"].throughput

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model": self.model,
            "rate_bps": self.rate_bps,
            "methods": {k: asdict(v) for k, v in self.methods.items()},
            "cic_fps_over_fixed": self.gain_over_fixed(),
            "cic_fps_over_latency_split": self.gain_over_latency_split(),
        }


def format_throughput_table(rows: Sequence[ThroughputRow], *, header: bool = True) -> str:
    """A markdown table of a throughput run: measured fps (predicted) per method.

    Each method's cell is ``measured fps (predicted fps)``, the prediction being
    ``1 / period_s`` of the cost model; ``~`` marks a stream not run (prediction only).
    """
    cols = ["model", "Mbit/s"]
    cols += [f"{m} fps" for m in THROUGHPUT_METHODS]
    cols += ["x fixed", "x latency split", "CIC split", "DSH decide ms"]
    lines = []
    if header:
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
    for row in rows:
        m = row.methods
        cells = [row.model, f"{row.rate_bps / 1e6:g}"]
        for k in THROUGHPUT_METHODS:
            r = m[k]
            pred = 1.0 / r.predicted_period_s if r.predicted_period_s > 0 else math.inf
            got = f"{r.fps:.2f}" if r.measured else "~"
            cells.append(f"{got} ({pred:.2f})")
        cells.append(f"{row.gain_over_fixed():.2f}")
        cells.append(f"{row.gain_over_latency_split():.2f}")
        c = m["cic-throughput"]
        cells.append(f"{c.n_on_device}/{c.n_nodes}, {c.bytes_sent / 1e3:.0f} KB")
        cells.append(f"{1e3 * m['dads-heavy'].decision_s:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


# -- trace runs ---------------------------------------------------------------------


def summarize_trace(
    requests: Sequence[dict[str, Any]], duration_s: float, deadline_s: float | None = None
) -> dict[str, Any]:
    """One method's entry of a trace run: statistics over its ``requests``.

    Parameters
    ----------
    requests : sequence of dict
        Per request: ``t_s``, ``latency_s``, ``predicted_s`` (the cost model at the
        true rate, None if infinite), ``true_bps``, ``estimate_bps`` (None without
        an estimate), ``path``, ``on_device``, ``wrong`` (and optional extras, kept).
    duration_s : float
        The run's length: requests/s is the count over the time from the run's
        start to the last answer (at least ``duration_s``).
    deadline_s : float, optional
        ``deadline_hit_rate`` is the share answered within it (None without one).

    Returns
    -------
    dict
        ``mean_s``, ``p50_s``, ``p95_s``, ``p99_s``, ``requests_per_s``,
        ``deadline_hit_rate``, ``wrong_outputs``, ``estimate_error_median`` (median
        of ``|estimate / true - 1|`` over requests with both, None if none),
        ``measured_over_predicted_median`` (median of latency / predicted over
        requests with a finite prediction), ``paths`` (count per path),
        ``n_requests`` and ``requests``.
    """
    lat = np.array([float(r["latency_s"]) for r in requests])
    n = len(requests)

    def pct(q: float) -> float | None:
        return float(np.percentile(lat, q)) if n else None

    end = max((float(r["t_s"]) + float(r["latency_s"]) for r in requests), default=0.0)
    errs = [
        abs(float(r["estimate_bps"]) / float(r["true_bps"]) - 1.0)
        for r in requests
        if r.get("estimate_bps") and float(r.get("true_bps") or 0) > 0
    ]
    ratios = [
        float(r["latency_s"]) / float(r["predicted_s"])
        for r in requests
        if r.get("predicted_s") and float(r["predicted_s"]) > 0
    ]
    paths: dict[str, int] = {}
    for r in requests:
        paths[str(r.get("path"))] = paths.get(str(r.get("path")), 0) + 1
    return {
        "mean_s": float(lat.mean()) if n else None,
        "p50_s": pct(50),
        "p95_s": pct(95),
        "p99_s": pct(99),
        "requests_per_s": n / max(float(duration_s), end) if n else 0.0,
        "deadline_hit_rate": (
            float(np.mean(lat <= deadline_s)) if deadline_s is not None and n else None
        ),
        "wrong_outputs": sum(bool(r.get("wrong")) for r in requests),
        "estimate_error_median": float(np.median(errs)) if errs else None,
        "measured_over_predicted_median": float(np.median(ratios)) if ratios else None,
        "paths": paths,
        "n_requests": n,
        "requests": list(requests),
    }


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{1e3 * v:.0f}"


def format_trace_table(runs: Sequence[dict[str, Any]], *, only: str | None = None) -> str:
    """A markdown table of trace runs: one line per (model, trace, method).

    Latencies in ms; ``vs best fixed`` is the method's mean over the best mean of
    device-only, server-only and static (below 1 is better), ``vs oracle`` over
    the oracle's (each shown where those ran). With ``only``, just that method's
    lines, without the header.
    """
    cols = [
        "model", "trace", "method", "mean", "p50", "p95", "p99", "req/s",
        "vs best fixed", "vs oracle", "deadline hit", "wrong", "est. err", "meas/pred", "paths",
    ]  # fmt: skip
    lines = []
    if only is None:
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
    for run in runs:
        ms = run["methods"]
        fixed = [ms[k]["mean_s"] for k in ("device-only", "server-only", "static") if k in ms]
        fixed = [v for v in fixed if v is not None]
        best = min(fixed) if fixed else None
        oracle = ms.get("oracle", {}).get("mean_s")
        for name, m in ms.items():
            if only is not None and name != only:
                continue
            mean = m["mean_s"]
            paths = ", ".join(f"{k} {v}" for k, v in sorted(m["paths"].items()))
            hit = m["deadline_hit_rate"]
            err = m["estimate_error_median"]
            ratio = m.get("measured_over_predicted_median")
            cells = [
                run["model"],
                str(run.get("trace_name") or Path(run["trace"]).name),
                name,
                _fmt_ms(mean),
                _fmt_ms(m["p50_s"]),
                _fmt_ms(m["p95_s"]),
                _fmt_ms(m["p99_s"]),
                f"{m['requests_per_s']:.2f}",
                f"{mean / best:.2f}" if best and mean is not None else "-",
                f"{mean / oracle:.2f}" if oracle and mean is not None else "-",
                "-" if hit is None else f"{100 * hit:.0f}%",
                str(m["wrong_outputs"]),
                "-" if err is None else f"{100 * err:.0f}%",
                "-" if ratio is None else f"{ratio:.2f}",
                paths,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_trace_run(run: dict[str, Any], trace: Any, path: str | os.PathLike[str]) -> str | None:
    """The trace's rate over the run, and each method's request latencies.

    Top: the link's rate (the trace from the run's start) and CIC's estimate at
    each request, if CIC ran; bottom: every request's latency, at its start time,
    one series per method (log scale).

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
    d = float(run["duration_s"])
    start = float(run.get("trace_start_s", 0.0))
    t = np.linspace(0.0, d, max(200, int(d * 20)))
    rate = np.array([trace.rate_at(start + x) for x in t])
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 5.2), sharex=True, gridspec_kw={"height_ratios": [1, 2]}
    )
    top.step(t, rate / 1e6, where="post", color="k", lw=1, label="link rate")
    cic = run["methods"].get("cic")
    if cic:
        pts = [(r["t_s"], r["estimate_bps"]) for r in cic["requests"] if r.get("estimate_bps")]
        if pts:
            xs, ys = zip(*pts, strict=True)
            top.plot(xs, np.array(ys) / 1e6, ".", ms=3, color="tab:red", label="CIC's estimate")
    top.set_ylabel("Mbit/s")
    top.legend(fontsize=7, loc="upper right")
    top.grid(True, alpha=0.3)
    markers = dict(zip(TRACE_METHODS, "os^v<xD", strict=True))
    for name, m in run["methods"].items():
        reqs = m["requests"]
        bottom.plot(
            [r["t_s"] for r in reqs],
            [r["latency_s"] for r in reqs],
            markers.get(name, "o"),
            ms=3,
            alpha=0.7,
            label=f"{name} (mean {1e3 * (m['mean_s'] or 0):.0f} ms)",
        )
    bottom.set_yscale("log")
    bottom.set_xlabel("time in the run (s)")
    bottom.set_ylabel("request latency (s)")
    bottom.grid(True, which="both", alpha=0.3)
    bottom.legend(fontsize=6, ncol=2)
    fig.suptitle(
        f"{run['model']} on {run.get('trace_name') or Path(run['trace']).name} "
        f"from {start:g} s; device = 1/{run['device_slowdown']:g} of a core, "
        f"server {run['server_speedup']:g}x the device; {run.get('input_dtype', 'float32')} input",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
