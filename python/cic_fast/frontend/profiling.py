"""Per-layer latency of a traced model on the machine this runs on.

The traced program is executed node by node; each layer-graph node is timed
``repeats`` times after ``warmup`` untimed runs and its median kept.  The model's
end-to-end latency is measured too: layer latencies are not perfectly additive
(caches, thread pools, allocator), so the ratio of the per-node sum to it is
reported as :attr:`Profile.additivity` rather than hidden.

torch is imported lazily.
"""

from __future__ import annotations

import json
import math
import os
import platform as _platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cic_fast.frontend import fxsafety
from cic_fast.frontend.tracing import LayerGraph, as_traced, placeholder_value, run_node

if TYPE_CHECKING:
    import torch

__all__ = ["PROFILE_SCHEMA", "PROFILE_VERSION", "Profile", "profile"]

PROFILE_SCHEMA = "cic_fast.profile"
PROFILE_VERSION = 1


@dataclass(frozen=True, eq=False)
class Profile:
    """Per-node latency of one model on one platform.

    Attributes
    ----------
    names : tuple of str
        Node names of the :class:`~cic_fast.frontend.tracing.LayerGraph` it was measured on.
    fingerprint : str
        That graph's fingerprint; :meth:`check` compares it.
    seconds : numpy.ndarray
        float64 per-node median latency, seconds.
    total_s : float or None
        Measured end-to-end latency of the model, seconds (None if not measured).
    platform : dict
        Where it was measured: machine, processor, threads, torch version, device.
    repeats, warmup : int
        Timed and untimed runs per node.
    """

    names: tuple[str, ...]
    fingerprint: str
    seconds: np.ndarray
    total_s: float | None = None
    platform: dict[str, Any] = field(default_factory=dict)
    repeats: int = 0
    warmup: int = 0

    def __post_init__(self) -> None:
        sec = np.asarray(self.seconds, dtype=np.float64)
        if sec.ndim != 1:
            raise ValueError("profile seconds must be 1-D")
        if len(sec) != len(self.names):
            raise ValueError(
                f"profile has {len(sec)} times for {len(self.names)} nodes (length mismatch)"
            )
        if not np.isfinite(sec).all():
            raise ValueError("profile times must be finite (NaN or inf found)")
        if (sec < 0).any():
            raise ValueError("profile times must not be negative")
        if self.total_s is not None and not (math.isfinite(self.total_s) and self.total_s >= 0):
            raise ValueError("profile total_s must be finite and non-negative")
        sec.setflags(write=False)
        object.__setattr__(self, "seconds", sec)
        object.__setattr__(self, "names", tuple(self.names))

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return len(self.names)

    @property
    def sum_s(self) -> float:
        """Sum of the per-node latencies, seconds."""
        return float(self.seconds.sum())

    @property
    def additivity(self) -> float | None:
        """Per-node sum divided by the measured end-to-end latency (None if unknown)."""
        if not self.total_s:
            return None
        return self.sum_s / self.total_s

    @classmethod
    def from_times(
        cls,
        graph: LayerGraph,
        seconds: Sequence[float] | np.ndarray,
        *,
        total_s: float | None = None,
        platform: dict[str, Any] | None = None,
    ) -> Profile:
        """Build a profile for ``graph`` from given per-node seconds.

        Parameters
        ----------
        graph : LayerGraph
            The graph the times belong to.
        seconds : array-like of float
            One time per node, in the graph's node order.
        total_s : float, optional
            End-to-end latency, if known.
        platform : dict, optional
            Free-form description of the platform.

        Raises
        ------
        ValueError
            Wrong length, NaN/inf or negative times.
        """
        return cls(
            names=graph.names,
            fingerprint=graph.fingerprint,
            seconds=np.asarray(seconds, dtype=np.float64),
            total_s=total_s,
            platform=dict(platform or {"source": "from_times"}),
        )

    def scaled(self, factor: float) -> Profile:
        """The same profile on a platform ``factor`` times slower (0.1 = 10x faster).

        Raises
        ------
        ValueError
            ``factor`` not finite and positive.
        """
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError("scale factor must be a finite positive number")
        plat = dict(self.platform)
        plat["scaled_by"] = float(factor) * float(plat.get("scaled_by", 1.0))
        return Profile(
            names=self.names,
            fingerprint=self.fingerprint,
            seconds=self.seconds * factor,
            total_s=None if self.total_s is None else self.total_s * factor,
            platform=plat,
            repeats=self.repeats,
            warmup=self.warmup,
        )

    def check(self, graph: LayerGraph) -> None:
        """Raise ValueError unless this profile was measured on ``graph``'s model.

        The names are compared first so the message can say which nodes differ.
        """
        if self.names != graph.names:
            mine, theirs = set(self.names), set(graph.names)
            missing = [n for n in graph.names if n not in mine][:5]
            extra = [n for n in self.names if n not in theirs][:5]
            raise ValueError(
                f"profile does not match the graph (other model?): profile has {self.n_nodes} "
                f"nodes, graph {graph.n_nodes}; missing from profile {missing}, unknown {extra}"
            )
        if self.fingerprint != graph.fingerprint:
            raise ValueError(
                "profile does not match the graph: same node names but different "
                "operations or edges (fingerprint mismatch)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the versioned schema."""
        return {
            "schema": PROFILE_SCHEMA,
            "version": PROFILE_VERSION,
            "fingerprint": self.fingerprint,
            "platform": self.platform,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "total_s": self.total_s,
            "sum_s": self.sum_s,
            "additivity": self.additivity,
            "names": list(self.names),
            "seconds": self.seconds.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            Unknown schema or version, missing fields, bad times.
        """
        if not isinstance(d, dict) or d.get("schema") != PROFILE_SCHEMA:
            raise ValueError("not a cic_fast profile (schema field missing or wrong)")
        if d.get("version") != PROFILE_VERSION:
            raise ValueError(
                f"unknown profile schema version {d.get('version')!r} "
                f"(this cic_fast reads version {PROFILE_VERSION})"
            )
        try:
            return cls(
                names=tuple(d["names"]),
                fingerprint=str(d["fingerprint"]),
                seconds=np.asarray(d["seconds"], dtype=np.float64),
                total_s=d.get("total_s"),
                platform=dict(d.get("platform") or {}),
                repeats=int(d.get("repeats", 0)),
                warmup=int(d.get("warmup", 0)),
            )
        except KeyError as e:
            raise ValueError(f"profile is missing field {e.args[0]!r}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the profile as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str], graph: LayerGraph | None = None) -> Profile:
        """Read a profile written by :meth:`save`; with ``graph``, also :meth:`check` it."""
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON: {e}") from None
        p = cls.from_dict(d)
        if graph is not None:
            p.check(graph)
        return p


def platform_info(device: str, threads: int) -> dict[str, Any]:
    """Describe this machine: architecture, CPU model, threads, torch, device."""
    import torch

    cpu = _platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "machine": _platform.machine(),
        "system": _platform.system(),
        "cpu": cpu,
        "threads": threads,
        "torch": torch.__version__,
        "python": _platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["device_name"] = cpu
    return info


def _progress(total: int, enabled: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    """(advance, close) callbacks for a progress bar on stderr, or no-ops."""
    if not enabled:
        return (lambda: None), (lambda: None)
    try:
        from rich.console import Console
        from rich.progress import Progress
    except ImportError:
        try:
            from tqdm import tqdm
        except ImportError:
            return (lambda: None), (lambda: None)
        bar = tqdm(total=total, desc="profiling", unit="layer")
        return (lambda: bar.update(1)), bar.close
    prog = Progress(console=Console(stderr=True), transient=True)
    prog.start()
    task = prog.add_task("profiling", total=total)
    return (lambda: prog.advance(task)), prog.stop


def profile(
    model: torch.nn.Module | LayerGraph,
    example_inputs: Any = None,
    *,
    device: str = "cpu",
    threads: int | None = None,
    repeats: int = 10,
    warmup: int = 2,
    progress: bool = True,
    graph: LayerGraph | None = None,
) -> Profile:
    """Measure the per-node latency of a traced model on this machine.

    Parameters
    ----------
    model : LayerGraph or torch.nn.Module
        The traced graph (``trace(model, example_inputs)``, with its program): it is
        timed on the example inputs it was traced with, and the end-to-end latency
        is that of the traced program (the same computation as the model). Or the
        model itself, in eval mode, with ``example_inputs``: traced once here.
    example_inputs : torch.Tensor or tuple, optional
        One forward call's positional arguments; only with a model (default: those
        of ``graph``).
    device : str
        ``"cpu"`` or a CUDA device; CUDA is timed with events and synchronisation.
    threads : int, optional
        torch intra-op threads while profiling (restored afterwards).
    repeats, warmup : int
        Timed and untimed runs per node and for the end-to-end measurement.
    progress : bool
        Show a progress bar on stderr.
    graph : LayerGraph, optional
        With a model: ``trace(model, example_inputs)`` if already computed.

    Returns
    -------
    Profile
        Median per-node seconds, the measured end-to-end latency and the platform.

    Raises
    ------
    ValueError
        Bad ``repeats``/``warmup``, no CUDA device, or a graph without a program
        (loaded from JSON) or without example inputs.
    TypeError
        See `cic_fast.frontend.tracing.as_traced` (e.g. a LayerGraph given with
        ``example_inputs``).

    Examples
    --------
    >>> g = trace(model, torch.randn(1, 3, 224, 224))  # doctest: +SKIP
    >>> p = profile(g, repeats=5)  # doctest: +SKIP
    >>> p.save("device.json")  # doctest: +SKIP
    """
    import copy

    import torch
    from torch import fx

    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    run_model, graph, inputs = as_traced(model, example_inputs, graph=graph)
    if not inputs and graph.inputs.size:
        raise ValueError(
            "the traced program does not hold its example inputs: give them "
            "(profile(model, example_inputs, graph=graph))"
        )
    prog = graph.program
    assert prog is not None  # as_traced checked it
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available")
    cuda = dev.type == "cuda"

    gm = prog.module
    if dev.type != "cpu":
        # Never move the caller's model: time a copy on the device. Copying a
        # GraphModule generates its code again: serialised, and released with it.
        with fxsafety.TORCH_GLOBALS_LOCK:
            gm = copy.deepcopy(gm)
        fxsafety.forget_source_when_collected(gm)
        gm = gm.to(dev)
        run_model = gm
        inputs = tuple(x.to(dev) if isinstance(x, torch.Tensor) else x for x in inputs)
    flat = prog.flatten_inputs(inputs)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def timed(fn: Callable[[], Any], prepare: Callable[[], Any] | None = None) -> tuple[float, Any]:
        out = None
        samples = []
        for r in range(warmup + repeats):
            if prepare is not None:
                prepare()
            if cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                sync()
                start.record()
                out = fn()
                end.record()
                end.synchronize()
                dt = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                out = fn()
                dt = time.perf_counter() - t0
            if r >= warmup:
                samples.append(dt)
        return statistics.median(samples), out

    old_threads = torch.get_num_threads()
    n_threads = threads if threads is not None else old_threads
    index = {n: i for i, n in enumerate(prog.fx_nodes)}
    # a deep copy (other device) has its own nodes: map them back by position
    orig = dict(zip(gm.graph.nodes, prog.module.graph.nodes, strict=True))
    seconds = np.zeros(graph.n_nodes, dtype=np.float64)
    advance, close = _progress(graph.n_nodes, progress)
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.no_grad():
            env: dict[Any, Any] = {}
            pos = 0
            for node in gm.graph.nodes:
                if node.op == "placeholder":
                    env[node] = placeholder_value(node, flat, pos)
                    pos += 1
                    continue
                if node.op == "output":
                    break
                a = fx.node.map_arg(node.args, lambda n: env[n])
                k = fx.node.map_arg(node.kwargs, lambda n: env[n])
                i = index.get(orig[node])
                if i is None:
                    # constants and dead code: run once, untimed
                    env[node] = run_node(gm, node, a, k)
                    continue
                if i in prog.mutates:
                    # An in-place layer must see fresh inputs at every repetition.
                    box: list[Any] = []

                    def prepare(a: Any = a, k: Any = k, box: list[Any] = box) -> None:
                        box[:] = [_clone((a, k))]

                    def call(node: Any = node, box: list[Any] = box) -> Any:
                        ca, ck = box[0]
                        return run_node(gm, node, ca, ck)

                    seconds[i], _ = timed(call, prepare)
                    env[node] = run_node(gm, node, a, k)
                else:

                    def plain(node: Any = node, a: Any = a, k: Any = k) -> Any:
                        return run_node(gm, node, a, k)

                    seconds[i], env[node] = timed(plain)
                advance()
            sync()
            total_s, _ = timed(lambda: run_model(*inputs))
    finally:
        close()
        if threads is not None:
            torch.set_num_threads(old_threads)
    return Profile(
        names=graph.names,
        fingerprint=graph.fingerprint,
        seconds=seconds,
        total_s=float(total_s),
        platform=platform_info(str(dev), n_threads),
        repeats=repeats,
        warmup=warmup,
    )


def _clone(value: Any) -> Any:
    import torch
    from torch.utils import _pytree

    return _pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, value)
