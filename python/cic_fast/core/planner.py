"""The CIC splitting model: every optimal partition over all bandwidths, decided in ~1 us.

A partition's latency is a line in ``x = 1 / bandwidth``:
``device_s + server_s (+ rtt_s if it offloads) + 8 * bytes_sent * x``. The optimum
over all bandwidths is the lower envelope of a few such lines, so `Planner`
computes it once, offline (exact compression of the graph, then the
Eisner-Severance breakpoint search with at most ``2K - 1`` min-cuts), and
`Planner.decide` is then a binary search over the ``K - 1`` breakpoints.

With ``objective="throughput"`` the plan minimises the pipeline period of a
stream, ``max(device_s, 8 * bytes_sent * x, server_s)`` with ``x = 1 /
bandwidth``, instead: over all bandwidths its pieces are the Pareto front of
``max(device_s, server_s)`` against the bytes sent (an exact branch and bound,
``cpp/include/cic/period.hpp``), and the decision is the same binary search
(``cpp/include/cic/plan.hpp``, ``FromThroughputPartitions``, derives the
breakpoints).

Build it from arrays (`Planner`) or from a traced model and two profiles
(`Planner.from_profiles`); keep it as a file (`Planner.save` / `Planner.load`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from cic_fast import _core
from cic_fast.core import cost, planfile
from cic_fast.core.checks import as_real, check_factor, check_rtt, check_steps
from cic_fast.core.cost import Partition
from cic_fast.core.graph import MAX_STEPS, Graph, core_graph


class TracedGraph(Protocol):
    """What `Planner.from_profiles` reads of a traced model (the front end's LayerGraph).

    The core never imports the front end: any object with these attributes will do.
    """

    @property
    def edges(self) -> npt.NDArray[np.int64]: ...
    @property
    def out_bytes(self) -> npt.NDArray[Any]: ...
    @property
    def names(self) -> Sequence[str]: ...


class CostProfile(Protocol):
    """What `Planner.from_profiles` reads of a profile (the front end's Profile)."""

    @property
    def seconds(self) -> npt.NDArray[np.float64]: ...
    def check(self, graph: Any) -> None: ...


__all__ = ["CostProfile", "PlanSegment", "Planner", "TracedGraph", "check_objective"]


class PlanSegment(NamedTuple):
    """One piece of the plan: the partition that is optimal on a bandwidth range.

    ``lo_bps <= bandwidth < hi_bps`` (``lo_bps`` is 0 for the first piece and
    ``hi_bps`` is inf for the last). Times in seconds, without the transfer,
    which is ``8 * bytes_sent / bandwidth``.
    """

    lo_bps: float
    hi_bps: float
    on_device: npt.NDArray[np.bool_]
    sent: npt.NDArray[np.int64]
    device_s: float
    server_s: float
    rtt_s: float
    bytes_sent: float

    def latency_s(self, bandwidth_bps: float) -> float:
        """Latency of this partition at a bandwidth (bits/s), by the cost model."""
        return float(
            cost.latency_s(self.device_s, self.server_s, self.bytes_sent, bandwidth_bps, self.rtt_s)
        )

    def period_s(self, bandwidth_bps: float) -> float:
        """Pipeline period of this partition at a bandwidth (bits/s), by the cost model."""
        return float(
            cost.period_s(
                self.device_s, cost.transfer_s(self.bytes_sent, bandwidth_bps), self.server_s
            )
        )


def check_objective(objective: Any) -> str:
    """``objective`` if it is ``"latency"`` or ``"throughput"`` (TypeError / ValueError)."""
    if not isinstance(objective, str):
        raise TypeError(f"objective must be a str, got {type(objective).__name__}")
    if objective not in planfile.OBJECTIVES:
        raise ValueError(f"objective must be 'latency' or 'throughput', got {objective!r}")
    return objective


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class Planner:
    """The all-bandwidth splitting model of one layer graph (CIC).

    Parameters
    ----------
    edges : array_like of int, shape (E, 2)
        ``(u, v)`` pairs: layer ``v`` consumes the output of layer ``u``.
    device_s, server_s : array_like of float, shape (n,)
        Seconds each layer takes on the device and on the server.
    out_bytes : array_like of float, shape (n,)
        Bytes of each layer's output.
    rtt_s : float, optional
        Round-trip time added when anything is offloaded.
    compress : bool, optional
        Plan on the exactly compressed graph (default). The result is the same
        either way; compression makes the build faster on large models. The
        compression is exact for latency only: a throughput plan always
        searches the full graph.
    names : sequence of str, optional
        Layer names, kept for display and saved with the plan.
    objective : {"latency", "throughput"}, optional
        What `decide` minimises: the latency of one request (default), or the
        pipeline period ``max(device_s, transfer_s, server_s)`` of a stream
        (``Partition.period_s``; frames per second are its inverse).
    max_steps : int, optional
        The throughput search's step limit (`cic_fast.Graph.max_throughput`).
        If it is reached the plan holds the Pareto points found so far and
        ``stats["complete"]`` is False (a RuntimeWarning says so).

    Raises
    ------
    TypeError, ValueError
        As `Graph` for malformed input; ValueError for a bad ``rtt_s``.

    Examples
    --------
    >>> p = Planner([(0, 1), (1, 2)], [0.0, 0.05, 0.05], [0.0, 0.005, 0.005],
    ...             [600e3, 1e3, 4e3])
    >>> p.decide(10e6).on_device.tolist()
    [True, True, False]
    >>> len(p.breakpoints_bps), p.stats["K"]
    (2, 3)
    """

    # No __slots__: each instance binds ``decide`` to a C function (see `_adopt`)
    # that shadows the method below; the method is the documented reference
    # implementation (the same cost model, in Python), which the tests hold the C
    # one to.

    def __init__(
        self,
        edges: Any,
        device_s: Any,
        server_s: Any,
        out_bytes: Any,
        *,
        rtt_s: float = 0.0,
        compress: bool = True,
        names: Any = None,
        objective: str = "latency",
        max_steps: int = MAX_STEPS,
    ) -> None:
        start = time.perf_counter()
        graph = Graph(edges, device_s, server_s, out_bytes)
        rtt = check_rtt(rtt_s)
        objective = check_objective(objective)
        steps = check_steps(max_steps)
        names_t = None if names is None else tuple(str(x) for x in names)
        if names_t is not None and len(names_t) != graph.n_nodes:
            raise ValueError(f"names has {len(names_t)} entries for {graph.n_nodes} layers")
        stats: dict[str, Any] = {
            "original_nodes": graph.n_nodes,
            "original_edges": graph.n_edges,
        }
        t0 = time.perf_counter()
        if objective == "throughput":
            plan, complete, searched = _core.Plan.throughput(core_graph(graph), rtt, steps)
            stats.update(
                compressed_nodes=graph.n_nodes,
                compressed_edges=graph.n_edges,
                min_cuts=0,
                search_steps=int(searched),
                complete=bool(complete),
            )
            if not complete:
                warnings.warn(
                    f"throughput plan: the search stopped at max_steps={steps}; the plan "
                    "holds the Pareto points found so far (stats['complete'] is False)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        elif compress:
            plan, c_stats = _core.Plan.compressed(core_graph(graph), rtt)
            stats.update(
                compressed_nodes=int(c_stats["compressed_nodes"]),
                compressed_edges=int(c_stats["compressed_edges"]),
                min_cuts=int(plan.num_solves),
                passes={k: int(v) for k, v in c_stats.items()},
            )
        else:
            plan = _core.Plan(core_graph(graph), rtt)
            stats.update(
                compressed_nodes=graph.n_nodes,
                compressed_edges=graph.n_edges,
                min_cuts=int(plan.num_solves),
            )
        stats["plan_s"] = time.perf_counter() - t0
        self._graph = graph
        self._rtt = rtt
        self._names = names_t
        self._objective = objective
        self._adopt(plan)
        stats["K"] = len(self._segs)
        stats["objective"] = objective
        stats["build_s"] = time.perf_counter() - start
        self._stats = stats

    def _adopt(self, plan: Any) -> None:
        """Cache, per piece, everything `decide` needs (read-only arrays)."""
        bps = [float(b) for b in plan.breakpoints_bps]
        segs = []
        segments = []
        bounds = [0.0, *bps, math.inf]
        for k in range(plan.n_partitions):
            on, sent, dev, srv, rtt, nbytes = plan.partition(k)
            on = _readonly(on)
            sent = _readonly(sent)
            nbytes = float(nbytes)
            offloads = not bool(on.all())
            segs.append((on, sent, float(dev), float(srv), float(rtt), nbytes, offloads))
            segments.append(PlanSegment(bounds[k], bounds[k + 1], on, sent, dev, srv, rtt, nbytes))
        self._bps = bps
        self._segs = segs
        self._segments = tuple(segments)
        # The same decision in C (one call, no Python frame, ~5x faster): an instance
        # attribute that shadows the method below, with the same signature.
        self.decide = plan.decide_fn(  # type: ignore[method-assign]
            Partition, [s[:6] for s in segs], as_real
        )

    # -- the online decision ---------------------------------------------------------

    def decide(self, bandwidth_bps: float) -> Partition:
        """Return the optimal partition at a bandwidth, in about a microsecond.

        Optimal for the plan's `objective`: the smallest ``latency_s``, or for a
        throughput plan the smallest ``period_s`` (then among equal periods the
        fewest bytes; ``latency_s`` is still priced, with the plan's rtt).

        Parameters
        ----------
        bandwidth_bps : float
            Link bandwidth in bits per second, > 0. ``math.inf`` (an infinitely
            fast link) gives the last piece with zero transfer time.

        Returns
        -------
        Partition
            The exact optimum of the cost model (the same latency as
            ``min_cut`` within rounding), priced at this bandwidth. At a
            breakpoint, where two pieces tie, the faster-link piece is returned.
            ``on_device`` and ``sent`` are shared read-only arrays.

        Raises
        ------
        ValueError
            If the bandwidth is <= 0, NaN or -inf.
        """
        bw = bandwidth_bps
        if type(bw) is not float:
            bw = as_real(bw, "bandwidth_bps")
        if not bw > 0.0:  # also NaN
            raise ValueError(f"bandwidth_bps must be > 0, got {bw}")
        on, sent, dev, srv, rtt, nbytes, offloads = self._segs[bisect_right(self._bps, bw)]
        return cost.make_partition(on, sent, dev, srv, nbytes, bw, rtt, offloads)

    # -- the plan --------------------------------------------------------------------

    @property
    def breakpoints_bps(self) -> tuple[float, ...]:
        """The ``K - 1`` ascending bandwidths (bits/s) where the optimum changes."""
        return tuple(self._bps)

    @property
    def partitions(self) -> tuple[npt.NDArray[np.bool_], ...]:
        """The ``K`` optimal ``on_device`` masks, slowest link first (read-only)."""
        return tuple(s.on_device for s in self._segments)

    @property
    def segments(self) -> tuple[PlanSegment, ...]:
        """The ``K`` pieces with their bandwidth ranges and costs, slowest link first."""
        return self._segments

    @property
    def stats(self) -> dict[str, Any]:
        """Sizes and timings of the build.

        ``original_nodes``, ``original_edges``, ``compressed_nodes``,
        ``compressed_edges``; ``K`` (partitions); ``min_cuts`` (solves of the
        breakpoint search, on the compressed graph); ``plan_s`` (compression +
        search + re-pricing) and ``build_s`` (all of the constructor), seconds;
        ``passes`` (graph size after each compression rule, blocks replaced);
        ``load_s`` on a plan read by `load` (which keeps the saved build stats).
        """
        return dict(self._stats)

    @property
    def graph(self) -> Graph:
        """The (uncompressed) layer graph the plan is for."""
        return self._graph

    @property
    def rtt_s(self) -> float:
        """The round-trip time the plan was built for."""
        return self._rtt

    @property
    def objective(self) -> str:
        """``"latency"`` or ``"throughput"``: what `decide` minimises."""
        return self._objective

    @property
    def names(self) -> tuple[str, ...] | None:
        """Layer names, if given."""
        return self._names

    def matches(self, graph: Graph, rtt_s: float) -> bool:
        """True if this plan was built from exactly ``graph``'s edges and costs and ``rtt_s``."""
        g = self._graph
        return (
            rtt_s == self._rtt
            and g.n_nodes == graph.n_nodes
            and np.array_equal(g.edges, graph.edges)
            and np.array_equal(g.device_s, graph.device_s)
            and np.array_equal(g.server_s, graph.server_s)
            and np.array_equal(g.out_bytes, graph.out_bytes)
        )

    @property
    def n_nodes(self) -> int:
        """Number of layers."""
        return self._graph.n_nodes

    def rescaled(self, device: float = 1.0, server: float = 1.0) -> Planner:
        """Re-plan with every device time times ``device`` and server time times ``server``.

        For a busier or faster platform (e.g. a loaded server: ``server=3.0``),
        without re-tracing or re-profiling. Factors must be finite and > 0.
        """
        fd = check_factor(device, "device")
        fs = check_factor(server, "server")
        g = self._graph
        return Planner(
            g.edges,
            g.device_s * fd,
            g.server_s * fs,
            g.out_bytes,
            rtt_s=self._rtt,
            names=self._names,
            objective=self._objective,
        )

    def with_objective(self, objective: str) -> Planner:
        """This plan's graph, costs and rtt planned for ``objective`` (self if the same)."""
        if check_objective(objective) == self._objective:
            return self
        g = self._graph
        return Planner(
            g.edges,
            g.device_s,
            g.server_s,
            g.out_bytes,
            rtt_s=self._rtt,
            names=self._names,
            objective=objective,
        )

    @classmethod
    def from_profiles(
        cls,
        graph: TracedGraph,
        device_profile: CostProfile,
        server_profile: CostProfile,
        rtt_s: float = 0.0,
        *,
        objective: str = "latency",
    ) -> Planner:
        """The plan of a traced model from its device and server profiles.

        Raises
        ------
        ValueError
            If a profile was not measured on ``graph``'s model.
        """
        device_profile.check(graph)
        server_profile.check(graph)
        return cls(
            graph.edges,
            device_profile.seconds,
            server_profile.seconds,
            graph.out_bytes,
            rtt_s=rtt_s,
            names=graph.names,
            objective=objective,
        )

    # -- the file --------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the splitting model: a versioned binary file with a SHA-256 checksum.

        It holds the graph, its costs, rtt and the K partitions, so `load` restores
        the plan without any min-cut (and re-derives and checks the breakpoints).
        The file is written to a temporary name and renamed into place.
        """
        data = self.to_bytes()
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def to_bytes(self) -> bytes:
        """The content of the file `save` writes (also what pickling uses)."""
        g = self._graph
        return planfile.encode(
            planfile.PlanFile(
                edges=g.edges,
                device_s=g.device_s,
                server_s=g.server_s,
                out_bytes=g.out_bytes,
                rtt_s=self._rtt,
                names=self._names,
                partitions=np.stack(self.partitions),
                breakpoints_bps=np.asarray(self._bps, dtype=np.float64),
                stats={k: v for k, v in self._stats.items() if k != "passes"},
                objective=self._objective,
            )
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Planner:
        """Read a file written by `save`.

        Raises
        ------
        ValueError
            If the file is not a cic_fast plan, has another version, is truncated
            or corrupt (checksum), or its partitions do not reproduce its
            breakpoints. Never returns a wrong plan.
        """
        with open(path, "rb") as f:
            data = f.read()
        return cls.from_bytes(data, name=repr(os.fspath(path)))

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str = "data") -> Planner:
        """Inverse of `to_bytes`; raises ValueError exactly as `load` does."""
        start = time.perf_counter()
        f = planfile.decode(data, name=name)
        self = cls.__new__(cls)
        self._graph = Graph(f.edges, f.device_s, f.server_s, f.out_bytes)
        self._rtt = check_rtt(f.rtt_s)
        self._names = f.names
        self._objective = f.objective
        k = f.partitions.shape[0]
        build = (
            _core.Plan.from_throughput_partitions
            if f.objective == "throughput"
            else _core.Plan.from_partitions
        )
        plan = build(core_graph(self._graph), self._rtt, f.partitions)
        self._adopt(plan)
        if len(self._segs) != k or not np.array_equal(np.asarray(self._bps), f.breakpoints_bps):
            raise ValueError("plan file is inconsistent: its partitions give other breakpoints")
        stats = dict(f.stats)
        stats["load_s"] = time.perf_counter() - start
        self._stats = stats
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle through the checked file format (the C decider is rebuilt).
        return (Planner.from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (
            f"Planner(n_nodes={self.n_nodes}, K={len(self._segs)}, "
            f"breakpoints_bps={[float(f'{b:.4g}') for b in self._bps]}, rtt_s={self._rtt}"
            + ("" if self._objective == "latency" else f", objective={self._objective!r}")
            + ")"
        )
