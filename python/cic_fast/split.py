"""Cut a traced model into a runnable head (device) and tail (server).

Given a partition of the :class:`~cic_fast.trace.LayerGraph` nodes (closed under
predecessors, inputs on the device), the head runs every device node in program order
and returns a dict ``name -> value`` of exactly the boundary: the device nodes with a
successor on the server (``Partition.sent``).  The tail takes that dict, runs every
server node in program order and returns the model's outputs in the model's own
structure.  Parameters, buffers and input-independent constants are not data: each
part reads or recomputes the ones it needs, so they never appear in the dict.

When nothing is offloaded the head's dict holds the model's outputs (the nodes that
feed the ``output`` node) and the tail only restructures them; nothing is sent then
(``bytes_sent == 0``).

Built like torch.fx's ``split_module``: new fx Graphs whose nodes are copies of the
traced program's nodes, wrapped in GraphModules that share the model's parameters.

torch is imported lazily.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .plan import Planner
from .profile import Profile
from .trace import LayerGraph, trace

if TYPE_CHECKING:
    import torch

__all__ = ["BoundaryTensor", "Split", "boundary_of", "build_parts", "split"]


@dataclass(frozen=True)
class BoundaryTensor:
    """One value the head sends to the tail.

    Attributes
    ----------
    name : str
        Node name, the key in the head's dict.
    index : int
        Node index in the layer graph.
    shape : tuple of int or None
        Tensor shape (None for a non-tensor or a tuple of tensors).
    dtype : str or None
        Tensor dtype (None for a non-tensor or a tuple).
    bytes : int
        Bytes of its tensors (the node's ``out_bytes``).
    """

    name: str
    index: int
    shape: tuple[int, ...] | None
    dtype: str | None
    bytes: int


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


def boundary_of(graph: LayerGraph, on_device: np.ndarray) -> np.ndarray:
    """Indices of device nodes with at least one successor on the server (sorted)."""
    on = np.asarray(on_device, dtype=bool)
    e = graph.edges
    if e.size == 0:
        return np.zeros(0, dtype=np.int64)
    cross = on[e[:, 0]] & ~on[e[:, 1]]
    return np.unique(e[cross, 0]).astype(np.int64)


def validate_partition(graph: LayerGraph, on_device: Any) -> np.ndarray:
    """Check a device mask against the graph's rules and return it as a bool array.

    Raises
    ------
    ValueError
        Wrong length, an input on the server, or data flowing server -> device.
    """
    on = np.asarray(on_device)
    if on.ndim != 1 or len(on) != graph.n_nodes:
        raise ValueError(f"on_device must have length {graph.n_nodes} (one entry per node)")
    if on.dtype != np.bool_:
        if not np.isin(on, (0, 1)).all():
            raise ValueError("on_device must be boolean")
        on = on.astype(bool)
    if not on[graph.inputs].all():
        raise ValueError("every model input must be on the device")
    e = graph.edges
    if e.size and (~on[e[:, 0]] & on[e[:, 1]]).any():
        u, v = e[(~on[e[:, 0]] & on[e[:, 1]])][0]
        raise ValueError(
            f"partition is not closed under predecessors: {graph.names[u]} (server) feeds "
            f"{graph.names[v]} (device)"
        )
    return on


def build_parts(graph: LayerGraph, on_device: Any) -> tuple[Any, Any, np.ndarray]:
    """Build head and tail modules for a device mask (no pricing, no core needed).

    Parameters
    ----------
    graph : LayerGraph
        A traced graph (with ``program``).
    on_device : array-like of bool
        Valid partition (see :func:`validate_partition`).

    Returns
    -------
    head, tail : torch.nn.Module
    boundary : numpy.ndarray
        Indices whose values the head returns: the sent nodes, or the output's
        predecessors when nothing is offloaded.
    """
    from torch import fx

    if graph.program is None:
        raise ValueError("graph has no program (loaded from JSON?): trace the model")
    on = validate_partition(graph, on_device)
    prog = graph.program
    gm = prog.module
    nodes: list[fx.Node] = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(prog.fx_nodes)}
    out_node = prog.fx_nodes[-1]
    offloads = not on.all()
    if offloads:
        boundary = boundary_of(graph, on)
    else:
        boundary = np.array(graph_preds(graph, graph.output), dtype=np.int64)
    sent_nodes = [prog.fx_nodes[i] for i in boundary.tolist()]

    def with_support(members: set[fx.Node]) -> set[fx.Node]:
        """Add the constants and attributes the members read (they are not nodes)."""
        need = set(members)
        for n in reversed(nodes):
            if n in need:
                for p in n.all_input_nodes:
                    if p not in index:
                        need.add(p)
        return need

    # head: placeholders + device nodes
    dev_nodes = {prog.fx_nodes[i] for i in range(graph.n_nodes - 1) if on[i]}
    hg = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    need = with_support(dev_nodes | {n for n in nodes if n.op == "placeholder"})
    for n in nodes:
        if n in need and n.op != "output":
            env[n] = hg.node_copy(n, lambda a: env[a])
    hg.output({n.name: env[n] for n in sent_nodes})
    head_gm = fx.GraphModule(gm, hg, class_name="Head")

    # tail: boundary dict + server nodes
    tg = fx.Graph()
    tenv: dict[fx.Node, fx.Node] = {}
    box = tg.placeholder("boundary")
    for n in sent_nodes:
        tenv[n] = tg.call_function(operator.getitem, (box, n.name))
    srv_nodes = {prog.fx_nodes[i] for i in range(graph.n_nodes - 1) if not on[i]}
    need = with_support(srv_nodes | {out_node})
    for n in nodes:
        if n in need and n not in tenv and n.op != "output":
            tenv[n] = tg.node_copy(n, lambda a: tenv[a])
    tg.output(fx.node.map_arg(out_node.args[0], lambda a: tenv[a]))
    tail_gm = fx.GraphModule(gm, tg, class_name="Tail")

    head_cls, tail_cls = _part_classes()
    return head_cls(head_gm, prog), tail_cls(tail_gm, prog), boundary


def graph_preds(graph: LayerGraph, v: int) -> list[int]:
    """Predecessors of node v."""
    e = graph.edges
    return sorted(set(e[e[:, 1] == v, 0].tolist()))


@functools.cache
def _part_classes() -> tuple[type, type]:
    """The Head and Tail module classes (built on first use: torch is lazy)."""
    import torch

    class Head(torch.nn.Module):
        """Device part: model inputs -> dict of boundary values."""

        def __init__(self, gm: Any, prog: Any) -> None:
            super().__init__()
            self.gm = gm
            self._prog = prog

        def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return self.gm(*self._prog.flatten_inputs(args, kwargs))

    class Tail(torch.nn.Module):
        """Server part: dict of boundary values -> model outputs."""

        def __init__(self, gm: Any, prog: Any) -> None:
            super().__init__()
            self.gm = gm
            self._prog = prog

        def forward(self, boundary: Mapping[str, Any]) -> Any:
            return self._prog.restructure_outputs(self.gm(boundary))

    return Head, Tail


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
        Per-node latency on each side (see :func:`~cic_fast.profile.profile`).
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
    import cic_fast

    if graph is None:
        graph = trace(model, example_inputs)
    device_profile.check(graph)
    server_profile.check(graph)

    def core() -> cic_fast.Graph:
        return cic_fast.Graph(
            graph.edges, device_profile.seconds, server_profile.seconds, graph.out_bytes
        )

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
        mask = validate_partition(graph, on_device)
        partition = core().evaluate(mask, 1e9 if bandwidth_bps is None else bandwidth_bps, rtt_s)
    head, tail, boundary = build_parts(graph, partition.on_device)
    if partition.offloads and not np.array_equal(boundary, np.asarray(partition.sent)):
        raise RuntimeError("internal error: head boundary differs from the core's sent set")
    return Split(
        head=head,
        tail=tail,
        partition=partition,
        boundary=describe_boundary(
            graph, boundary if partition.offloads else np.zeros(0, np.int64)
        ),
        graph=graph,
    )


def describe_boundary(graph: LayerGraph, indices: np.ndarray) -> tuple[BoundaryTensor, ...]:
    """Name, shape, dtype and bytes of each boundary node (from the traced sizes)."""
    out = []
    for i in np.asarray(indices).tolist():
        desc = graph.shapes[i]
        shape: tuple[int, ...] | None = None
        dtype: str | None = None
        if desc.endswith("]") and not desc.startswith("("):
            dtype, dims = desc[:-1].split("[", 1)
            shape = tuple(int(d) for d in dims.split(",") if d)
        out.append(BoundaryTensor(graph.names[i], i, shape, dtype, int(graph.out_bytes[i])))
    return tuple(out)
