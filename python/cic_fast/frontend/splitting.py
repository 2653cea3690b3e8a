"""Choose (or take) a partition of a traced model and cut it into head and tail.

`split` is the front end's one-call path: trace (unless given the traced graph),
decide the partition through the Planner (or price a forced one), and build the
head and tail with `cic_fast.frontend.cutting`. torch is imported lazily.
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
from cic_fast.frontend.tracing import LayerGraph, trace

if TYPE_CHECKING:
    import torch

__all__ = ["BoundaryTensor", "Split", "split"]


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


def split(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    bandwidth_bps: float | None = None,
    device_profile: Profile,
    server_profile: Profile,
    rtt_s: float = 0.0,
    on_device: Sequence[bool] | np.ndarray | None = None,
    graph: LayerGraph | None = None,
    planner: Planner | None = None,
) -> Split:
    """Choose (or take) a partition and build the head and tail that run it.

    Parameters
    ----------
    model : torch.nn.Module
        The model, in eval mode.
    example_inputs : torch.Tensor or tuple
        One forward call's positional arguments.
    bandwidth_bps : float, optional
        Link bandwidth, bits per second.  Without ``on_device`` the partition is the
        exact optimum at this bandwidth; with it, the bandwidth only prices the
        partition (1 Gbit/s is assumed for pricing when it is None).
    device_profile, server_profile : Profile
        Per-node latency on each side (see :func:`cic_fast.profile`).
    rtt_s : float
        Round trip added when anything is offloaded, seconds.
    on_device : array-like of bool, optional
        Force this partition (indexed like ``trace(model, example_inputs)``).
    graph : LayerGraph, optional
        ``trace(model, example_inputs)`` if already computed.
    planner : Planner, optional
        The splitting model of this graph and these profiles (and ``rtt_s``), if
        already built: the optimum is then its microsecond ``decide``. Without
        it, one is built (a few min-cuts on the compressed graph).

    Returns
    -------
    Split
        ``tail(head(x))`` equals ``model(x)``; the bytes of the tensors ``head``
        returns equal ``partition.bytes_sent`` (when anything is offloaded).

    Raises
    ------
    ValueError
        Profiles that do not match the model, an invalid ``on_device``, no bandwidth.

    Examples
    --------
    >>> s = split(  # doctest: +SKIP
    ...     model, x, bandwidth_bps=10e6, device_profile=dev, server_profile=srv
    ... )
    >>> y = s.tail(s.head(x))  # doctest: +SKIP
    """
    if graph is None:
        graph = trace(model, example_inputs)
    device_profile.check(graph)
    server_profile.check(graph)

    def core() -> Graph:
        return Graph(graph.edges, device_profile.seconds, server_profile.seconds, graph.out_bytes)

    if on_device is None:
        if bandwidth_bps is None:
            raise ValueError("give bandwidth_bps (to optimise) or on_device (to force a partition)")
        if planner is None:
            # builds its own Graph: no second one here
            planner = Planner.from_profiles(graph, device_profile, server_profile, rtt_s=rtt_s)
        elif not planner.matches(core(), rtt_s):
            raise ValueError(
                "planner was built for another graph, other profiles or another rtt_s "
                f"(planner: {planner.n_nodes} nodes, rtt_s={planner.rtt_s}; "
                f"here: {graph.n_nodes} nodes, rtt_s={rtt_s})"
            )
        partition = planner.decide(bandwidth_bps)
    else:
        mask = cost.check_partition(graph.edges, graph.n_nodes, on_device, names=graph.names)
        partition = core().evaluate(mask, 1e9 if bandwidth_bps is None else bandwidth_bps, rtt_s)
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
