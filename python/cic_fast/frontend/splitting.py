"""Choose (or take) a partition of a traced model and cut it into head and tail.

`split` is the front end's one-call path: take the traced graph (or trace the
model once), decide the partition through the Planner (or price a forced one), and
build the head and tail with `cic_fast.frontend.cutting`. `check_planner` is the
check that a Planner was built for a traced graph (and, given them, for these
profiles and round trip); the runtime uses it too. torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cic_fast.core import cost
from cic_fast.core.graph import Graph
from cic_fast.core.planner import Planner
from cic_fast.frontend.cutting import BoundaryTensor, build_parts, describe_boundary
from cic_fast.frontend.profiling import Profile
from cic_fast.frontend.tracing import LayerGraph, as_traced

if TYPE_CHECKING:
    import torch

__all__ = ["BoundaryTensor", "Split", "check_planner", "split"]


@dataclass(frozen=True, eq=False)
class Split:
    """A model cut in two, with the partition it implements.

    Attributes
    ----------
    head : torch.nn.Module
        Model inputs -> dict ``name -> tensor`` of the boundary.
    tail : torch.nn.Module
        That dict -> the model's outputs.
    partition : cic_fast.Partition
        The core's partition, priced by the cost model.
    boundary : tuple of BoundaryTensor
        What is sent, in node order.
    graph : LayerGraph
        The traced graph the partition indexes.
    """

    head: Any
    tail: Any
    partition: Any
    boundary: tuple[BoundaryTensor, ...]
    graph: LayerGraph

    @property
    def latency_s(self) -> float:
        """Predicted latency, seconds."""
        return float(self.partition.latency_s)

    @property
    def device_s(self) -> float:
        """Predicted time on the device, seconds."""
        return float(self.partition.device_s)

    @property
    def transfer_s(self) -> float:
        """Predicted transfer time, seconds."""
        return float(self.partition.transfer_s)

    @property
    def server_s(self) -> float:
        """Predicted time on the server, seconds."""
        return float(self.partition.server_s)

    @property
    def rtt_s(self) -> float:
        """Round trip counted, seconds."""
        return float(self.partition.rtt_s)

    @property
    def bytes_sent(self) -> int:
        """Bytes sent from the device to the server."""
        return int(self.partition.bytes_sent)

    def summary(self) -> str:
        """Readable description: where the cut falls, what is sent, latency parts."""
        p = self.partition
        on = np.asarray(p.on_device, dtype=bool)
        g = self.graph
        n_dev = int(on.sum())
        lines = [
            f"split of {g.n_nodes} nodes: {n_dev} on the device, {g.n_nodes - n_dev} on the server"
            f" (bandwidth {p.bandwidth_bps / 1e6:g} Mbit/s)",
        ]
        if not p.offloads:
            lines.append("everything stays on the device: nothing is sent")
        else:
            last_dev = max((i for i in range(g.n_nodes) if on[i]), default=-1)
            lines.append(f"last device node: #{last_dev} {g.names[last_dev]}")
            lines.append(f"sent: {len(self.boundary)} value(s), {self.bytes_sent} bytes")
            for b in self.boundary:
                shape = "x".join(map(str, b.shape)) if b.shape is not None else "-"
                lines.append(
                    f"  #{b.index:<4} {b.name:<32} {shape:<18} {b.dtype or '-':<8} {b.bytes} B"
                )
        lines.append(
            f"predicted latency {self.latency_s * 1e3:.3f} ms = device {self.device_s * 1e3:.3f}"
            f" + transfer {self.transfer_s * 1e3:.3f} + server {self.server_s * 1e3:.3f}"
            f" + rtt {self.rtt_s * 1e3:.3f} ms"
        )
        return "\n".join(lines)


def _same_edges(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two (E, 2) edge arrays hold the same set of edges (any order)."""
    a = np.unique(np.asarray(a, dtype=np.int64).reshape(-1, 2), axis=0)
    b = np.unique(np.asarray(b, dtype=np.int64).reshape(-1, 2), axis=0)
    return a.shape == b.shape and bool((a == b).all())


def check_planner(
    graph: LayerGraph,
    planner: Planner,
    *,
    device_profile: Profile | None = None,
    server_profile: Profile | None = None,
    rtt_s: float | None = None,
) -> None:
    """Raise ValueError unless ``planner`` is the splitting model of ``graph``.

    The planner must have the graph's layers (count, and names where it holds
    them), edges and output bytes; given profiles, its costs must be theirs, and
    given ``rtt_s``, its round trip must be it. Nothing is built: the arrays are
    compared.

    Raises
    ------
    ValueError
        The first difference found; the message starts with "planner was built for".
    """
    pg = planner.graph
    if planner.n_nodes != graph.n_nodes or (
        planner.names is not None and tuple(planner.names) != tuple(graph.names)
    ):
        raise ValueError(
            f"planner was built for another graph ({planner.n_nodes} nodes; this traced "
            f"graph has {graph.n_nodes}, or other layer names)"
        )
    if not _same_edges(pg.edges, graph.edges) or not np.array_equal(pg.out_bytes, graph.out_bytes):
        raise ValueError(
            "planner was built for another graph (same size, other edges or output bytes)"
        )
    for side, prof, costs in (
        ("device", device_profile, pg.device_s),
        ("server", server_profile, pg.server_s),
    ):
        if prof is not None and not np.array_equal(prof.seconds, costs):
            raise ValueError(f"planner was built for other profiles (its {side} costs differ)")
    if rtt_s is not None and float(rtt_s) != planner.rtt_s:
        raise ValueError(
            f"planner was built for another rtt_s (planner: {planner.rtt_s}, here: {rtt_s})"
        )


def split(
    model: torch.nn.Module | LayerGraph,
    example_inputs: Any = None,
    *,
    bandwidth_bps: float | None = None,
    device_profile: Profile | None = None,
    server_profile: Profile | None = None,
    rtt_s: float | None = None,
    on_device: Sequence[bool] | np.ndarray | None = None,
    graph: LayerGraph | None = None,
    planner: Planner | None = None,
) -> Split:
    """Choose (or take) a partition and build the head and tail that run it.

    Parameters
    ----------
    model : LayerGraph or torch.nn.Module
        The traced graph (with its program), or the model in eval mode with
        ``example_inputs`` (traced once here unless ``graph`` is given).
    example_inputs : torch.Tensor or tuple, optional
        One forward call's positional arguments; only with a model.
    bandwidth_bps : float, optional
        Link bandwidth, bits per second.  Without ``on_device`` the partition is the
        exact optimum at this bandwidth; with it, the bandwidth only prices the
        partition (1 Gbit/s is assumed for pricing when it is None).
    device_profile, server_profile : Profile, optional
        Per-node latency on each side (see :func:`cic_fast.profile`). Required
        without ``planner`` (which holds the costs); with it, checked against it.
    rtt_s : float, optional
        Round trip added when anything is offloaded, seconds: the planner's by
        default, else 0.
    on_device : array-like of bool, optional
        Force this partition (indexed like the traced graph).
    graph : LayerGraph, optional
        With a model: ``trace(model, example_inputs)`` if already computed.
    planner : Planner, optional
        The splitting model of this graph (see :func:`check_planner`): the optimum
        is then its microsecond ``decide``, and the profiles are not needed.
        Without it, one is built from the profiles (a few min-cuts on the
        compressed graph).

    Returns
    -------
    Split
        ``tail(head(x))`` equals ``model(x)``; the bytes of the tensors ``head``
        returns equal ``partition.bytes_sent`` (when anything is offloaded).

    Raises
    ------
    ValueError
        Profiles that do not match the model, a planner for another graph (other
        profiles, other ``rtt_s``), neither a planner nor both profiles, an invalid
        ``on_device``, no bandwidth, a graph without a program.
    TypeError
        See `cic_fast.frontend.tracing.as_traced`.

    Examples
    --------
    >>> g = trace(model, x)  # doctest: +SKIP
    >>> s = split(g, bandwidth_bps=10e6, planner=planner)  # doctest: +SKIP
    >>> y = s.tail(s.head(x))  # doctest: +SKIP
    """
    _, graph, _ = as_traced(model, example_inputs, graph=graph)
    if planner is None and (device_profile is None or server_profile is None):
        raise ValueError("give planner=, or both device_profile= and server_profile= (the costs)")
    if device_profile is not None:
        device_profile.check(graph)
    if server_profile is not None:
        server_profile.check(graph)
    if planner is not None:
        check_planner(
            graph,
            planner,
            device_profile=device_profile,
            server_profile=server_profile,
            rtt_s=rtt_s,
        )
        rtt = planner.rtt_s
    else:
        rtt = 0.0 if rtt_s is None else float(rtt_s)

    if on_device is None:
        if bandwidth_bps is None:
            raise ValueError("give bandwidth_bps (to optimise) or on_device (to force a partition)")
        if planner is None:
            assert device_profile is not None and server_profile is not None
            # builds its own Graph: no second one here
            planner = Planner.from_profiles(graph, device_profile, server_profile, rtt_s=rtt)
        partition = planner.decide(bandwidth_bps)
    else:
        mask = cost.check_partition(graph.edges, graph.n_nodes, on_device, names=graph.names)
        if planner is not None:
            core = planner.graph
        else:
            assert device_profile is not None and server_profile is not None
            core = Graph(
                graph.edges, device_profile.seconds, server_profile.seconds, graph.out_bytes
            )
        partition = core.evaluate(mask, 1e9 if bandwidth_bps is None else bandwidth_bps, rtt)
    head, tail, boundary = build_parts(graph, partition.on_device)
    return Split(
        head=head,
        tail=tail,
        partition=partition,
        boundary=describe_boundary(
            graph, boundary if partition.offloads else np.zeros(0, np.int64)
        ),
        graph=graph,
    )
