"""Cut a traced model into a runnable head (device) and tail (server).

Given a valid partition of the :class:`~cic_fast.frontend.tracing.LayerGraph` nodes
(see `cic_fast.core.cost.check_partition`), the head runs every device node in
program order and returns a dict ``name -> value`` of exactly the boundary: the
device nodes with a successor on the server (`cic_fast.core.cost.sent_set`, which
is ``Partition.sent``). The tail takes that dict, runs every server node in
program order and returns the model's outputs in the model's own structure.
Parameters, buffers and input-independent constants are not data: each part reads
or recomputes the ones it needs, so they never appear in the dict.

When nothing is offloaded the head's dict holds the model's outputs (the nodes that
feed the ``output`` node) and the tail only restructures them; nothing is sent then
(``bytes_sent == 0``).

Built like torch.fx's ``split_module``: new fx Graphs whose nodes are copies of the
traced program's nodes, wrapped in GraphModules that share the model's parameters.
Their code is generated under `cic_fast.frontend.fxsafety.TORCH_GLOBALS_LOCK`, and
its source leaves torch's caches when the part is collected, so parts rebuilt
without end (the runtime's LRU caches) take bounded memory. A part runs inside
`cic_fast.frontend.fxsafety.MODULE_GATE`, so a torch.export elsewhere in the
process never sees it half-way.

torch is imported lazily.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cic_fast.core import cost
from cic_fast.frontend import fxsafety
from cic_fast.frontend.tracing import LayerGraph

if TYPE_CHECKING:
    from torch import fx

__all__ = ["BoundaryCodec", "BoundaryTensor", "WireLeaf", "build_parts", "describe_boundary"]


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


def build_parts(
    graph: LayerGraph, on_device: Any, *, head: bool = True, tail: bool = True
) -> tuple[Any, Any, np.ndarray]:
    """Build head and tail modules for a device mask (no pricing, no core needed).

    Thread-safe; the parts share the model's parameters.

    Parameters
    ----------
    graph : LayerGraph
        A traced graph (with ``program``).
    on_device : array-like of bool
        A partition; checked with `cic_fast.core.cost.check_partition`.
    head, tail : bool
        Which parts to build (a server needs only the tail); at least one.

    Returns
    -------
    head, tail : torch.nn.Module or None
        None for a part not asked for.
    boundary : numpy.ndarray
        Indices whose values the head returns: the sent nodes, or the output's
        predecessors when nothing is offloaded.

    Raises
    ------
    ValueError
        No program (a graph loaded from JSON), an invalid partition, or neither
        part asked for.
    """
    from torch import fx

    if not (head or tail):
        raise ValueError("build_parts: ask for the head, the tail or both")
    if graph.program is None:
        raise ValueError("graph has no program (loaded from JSON?): trace the model")
    on = cost.check_partition(graph.edges, graph.n_nodes, on_device, names=graph.names)
    prog = graph.program
    gm = prog.module
    nodes: list[fx.Node] = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(prog.fx_nodes)}
    out_node = prog.fx_nodes[-1]
    offloads = not on.all()
    if offloads:
        boundary = cost.sent_set(graph.edges, on)
    else:
        boundary = np.array(sorted(set(graph.predecessors()[graph.output])), dtype=np.int64)
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

    head_cls, tail_cls = _part_classes()
    head_part = tail_part = None
    codec = BoundaryCodec(graph, boundary, on_device=on)
    if head:
        # placeholders + device nodes
        dev_nodes = {prog.fx_nodes[i] for i in range(graph.n_nodes - 1) if on[i]}
        hg = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        need = with_support(dev_nodes | {n for n in nodes if n.op == "placeholder"})
        for n in nodes:
            if n in need and n.op != "output":
                env[n] = hg.node_copy(n, lambda a: env[a])
        hg.output({n.name: env[n] for n in sent_nodes})
        head_part = head_cls(fxsafety.graph_module(gm, hg, "Head"), prog, codec)
    if tail:
        # boundary dict + server nodes
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
        tail_part = tail_cls(fxsafety.graph_module(gm, tg, "Tail"), prog, codec)
    return head_part, tail_part, boundary


@functools.cache
def _part_classes() -> tuple[type, type]:
    """The Head and Tail module classes (built on first use: torch is lazy)."""
    import torch

    class Head(torch.nn.Module):
        """Device part: model inputs -> dict of boundary values.

        ``codec`` (a `BoundaryCodec`) turns that dict into the tensors to send.
        """

        def __init__(self, gm: Any, prog: Any, codec: BoundaryCodec) -> None:
            super().__init__()
            self.gm = gm
            self._prog = prog
            self.codec = codec

        def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            flat = self._prog.flatten_inputs(args, kwargs)
            with fxsafety.MODULE_GATE:
                return self.gm(*flat)

    class Tail(torch.nn.Module):
        """Server part: dict of boundary values -> model outputs.

        ``codec`` (a `BoundaryCodec`) rebuilds that dict from received tensors.
        """

        def __init__(self, gm: Any, prog: Any, codec: BoundaryCodec) -> None:
            super().__init__()
            self.gm = gm
            self._prog = prog
            self.codec = codec

        def forward(self, boundary: Mapping[str, Any]) -> Any:
            with fxsafety.MODULE_GATE:
                # the generated forward itself: `gm` is ours and has no hooks, and
                # GraphModule's call wrapper and Module.__call__ cost ~3 us a call,
                # a tenth of a cheap tail's whole run on the server
                out = self.gm.forward(boundary)
            return self._prog.restructure_outputs(out)

    return Head, Tail


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


@dataclass(frozen=True)
class WireLeaf:
    """One tensor of the boundary as it travels: wire name, dtype, shape.

    A boundary value that is a tensor travels under its node's name; any other
    value (a tuple of tensors, a size, a Python number) travels as its leaves,
    named ``"<node>.<k>"`` (node names hold no dots), Python numbers as 0-d
    tensors (int64, float64, bool).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]


class BoundaryCodec:
    """Turn the head's dict into named tensors for the wire, and back.

    Both ends build it from their own trace of the same model (the runtime's
    fingerprint guarantees they agree), so the structure of each value (which
    leaves, tuple or dict, which Python type) comes from the receiver's trace,
    never from the wire: only tensor data travels. A leaf that is neither a
    tensor nor a Python number (None, a string, a dtype) is fixed by the traced
    shapes and dtypes, is not sent, and is checked on the sending side.

    The cost model counts tensor bytes only (`LayerGraph.out_bytes`): the 8 bytes
    of each Python number on the wire are not priced, like the frame headers.

    Parameters
    ----------
    graph : LayerGraph
        A traced graph (with ``program``).
    indices : numpy.ndarray
        The boundary nodes (`build_parts`' third result).
    on_device : numpy.ndarray, optional
        The partition: whether the receiving side writes in place (see `flatten`).
        Without it, any in-place write in the program counts.
    """

    def __init__(
        self, graph: LayerGraph, indices: np.ndarray, *, on_device: np.ndarray | None = None
    ) -> None:
        if graph.program is None:
            raise ValueError("graph has no program (loaded from JSON?): trace the model")
        templates = graph.program.templates
        self._nodes = [(graph.names[i], templates[i]) for i in np.asarray(indices).tolist()]
        leaves: list[WireLeaf] = []
        for name, tpl in self._nodes:
            if tpl[0] == "tensor":
                leaves.append(WireLeaf(name, tpl[1], tpl[2]))
                continue
            for k, (dtype, shape) in enumerate(_wire_leaves(tpl)):
                leaves.append(WireLeaf(f"{name}.{k}", dtype, shape))
        self.leaves: tuple[WireLeaf, ...] = tuple(leaves)
        # Two boundary tensors whose memory overlaps (a view and its base) arrive as
        # two separate tensors: a write through one on the receiver would miss the
        # other. That matters only where the receiving side writes in place.
        # `mutates`: writer layer -> every node that shared the written memory then
        writers = graph.program.mutates
        self._written = {
            v.name
            for i, victims in writers.items()
            if on_device is None or not on_device[i]
            for v in victims
        }

    def flatten(self, values: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The head's dict as ``(wire name, tensor)`` pairs, in `leaves` order.

        Raises
        ------
        TypeError
            A value whose structure or leaf types differ from the trace's, or, in
            a program that writes in place, two tensors that share memory (the
            caller runs the tail locally instead: the wire cannot keep them one).
        """
        out: list[tuple[str, Any]] = []
        for name, tpl in self._nodes:
            if tpl[0] == "tensor":
                out.append((name, _check_tensor(values[name], name)))
                continue
            flat: list[Any] = []
            _encode(tpl, values[name], flat, name)
            out.extend((f"{name}.{k}", t) for k, t in enumerate(flat))
        if self._written:
            _refuse_shared_memory(out, self._written)
        return out

    def restore(self, tensors: Mapping[str, Any]) -> dict[str, Any]:
        """The head's dict again, from received tensors (checked against `leaves`)."""
        result: dict[str, Any] = {}
        for name, tpl in self._nodes:
            if tpl[0] == "tensor":
                result[name] = _with_traced_strides(tensors[name], tpl)
                continue
            names = (f"{name}.{k}" for k in itertools.count())
            result[name] = _decode(tpl, lambda names=names: tensors[next(names)])
        return result


_SCALARS = {"int": ("int64", int), "float": ("float64", float), "bool": ("bool", bool)}


def _wire_leaves(tpl: Any) -> list[tuple[str, tuple[int, ...]]]:
    kind = tpl[0]
    if kind == "tensor":
        return [(tpl[1], tpl[2])]
    if kind in _SCALARS:
        return [(_SCALARS[kind][0], ())]
    if kind in ("seq", "dict"):
        return [leaf for child in tpl[2] for leaf in _wire_leaves(child)]
    return []  # a constant: not sent


def _refuse_shared_memory(tensors: list[tuple[str, Any]], written: set[str]) -> None:
    """TypeError if a tensor the receiver writes in place overlaps another one.

    ``written`` holds the nodes whose memory a receiving-side layer writes (leaf
    names ``"<node>.<k>"`` count as their node). Disjoint chunks of one storage
    (``split``) are independent and pass.
    """
    import torch

    spans = []
    for name, t in tensors:
        if t.numel() == 0 or t.layout != torch.strided:
            continue
        start = t.data_ptr()
        last = sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride(), strict=True))
        spans.append((start, start + (last + 1) * t.element_size(), name))
    for s0, e0, a in spans:
        if a.split(".")[0] not in written:
            continue
        for s1, e1, b in spans:
            if b != a and s0 < e1 and s1 < e0:
                raise TypeError(
                    f"boundary values {a!r} and {b!r} share memory (a view and its base) "
                    f"and the receiving side writes into {a!r}: sent apart, the write "
                    "would miss the other"
                )


def _check_tensor(value: Any, where: str) -> Any:
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"boundary value {where!r} is a {type(value).__name__}, not a tensor")
    return value


def _encode(tpl: Any, value: Any, flat: list[Any], where: str) -> None:
    import torch

    kind = tpl[0]
    if kind == "tensor":
        flat.append(_check_tensor(value, where))
    elif kind in _SCALARS:
        dtype, cls = _SCALARS[kind]
        if type(value) is not cls:
            raise TypeError(f"boundary value {where!r} is a {type(value).__name__}, not {kind}")
        flat.append(torch.tensor(value, dtype=getattr(torch, dtype)))
    elif kind == "seq":
        children = tpl[2]
        if not isinstance(value, (tuple, list)) or len(value) != len(children):
            raise TypeError(f"boundary value {where!r} does not have its traced structure")
        for i, (c, v) in enumerate(zip(children, value, strict=True)):
            _encode(c, v, flat, f"{where}[{i}]")
    elif kind == "dict":
        keys, children = tpl[1], tpl[2]
        if not isinstance(value, dict) or tuple(value) != keys:
            raise TypeError(f"boundary value {where!r} does not have its traced structure")
        for k, c in zip(keys, children, strict=True):
            _encode(c, value[k], flat, f"{where}[{k!r}]")
    else:
        const = tpl[1]
        if not (value is const or (type(value) is type(const) and value == const)):
            raise TypeError(
                f"boundary value {where!r} is {value!r}; the trace saw {const!r}, which is "
                "not sent (only tensors and Python numbers travel)"
            )


def _with_traced_strides(t: Any, tpl: Any) -> Any:
    """A received (contiguous) tensor laid out with the strides it had in the trace.

    Data crosses the wire contiguous, but the code after the cut may depend on the
    layout (``view`` works on a tensor whose transpose is contiguous, not on the
    transpose of a contiguous one): a boundary tensor that was not contiguous when
    traced gets its traced strides back (one copy). Any other shape (a batch of
    requests stacked by a server) is left as it is.
    """
    stride = tpl[3]
    if stride is None or tuple(t.shape) != tpl[2] or tuple(t.stride()) == stride:
        return t
    if 0 in stride:  # an expanded tensor: its elements share memory; no copy fits
        return t
    import torch

    out = torch.empty_strided(tpl[2], stride, dtype=t.dtype, device=t.device)
    return out.copy_(t)


def _decode(tpl: Any, take: Any) -> Any:
    kind = tpl[0]
    if kind == "tensor":
        return _with_traced_strides(take(), tpl)
    if kind in _SCALARS:
        return _SCALARS[kind][1](take().item())
    if kind == "seq":
        return tpl[1]([_decode(c, take) for c in tpl[2]])
    if kind == "dict":
        return {k: _decode(c, take) for k, c in zip(tpl[1], tpl[2], strict=True)}
    return tpl[1]
