"""Turn a PyTorch model into the layer graph of the cost model.

One node per layer as torch.fx symbolic tracing sees it (a leaf module call, a
function call or a tensor method call), plus one node per model input and one
``output`` node that collects the model's results.  Nodes are numbered in the
order of the traced program, which is a topological order.

Rules (see DESIGN.md "The cost model"):

- parameters and buffers (``get_attr``) are not nodes: both sides hold the weights;
- values that do not depend on any model input (constants built inside ``forward``)
  are not nodes either: both halves of a split recompute them, so they are never
  counted as bytes to send;
- nodes with no path to the model's output are dropped;
- the model inputs are the only sources.

In-place operations are handled by extra ordering edges: if a node mutates a value
that other nodes read, every reader that runs after it in the model gets an edge
from it and every earlier reader an edge to it, so no partition can run a reader on
the wrong side of the mutation.

torch is imported lazily: ``import cic_fast`` works without it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cic_fast.frontend import fxsafety

if TYPE_CHECKING:
    import torch
    from torch import fx

__all__ = [
    "SHORT_DTYPES",
    "LayerGraph",
    "TraceError",
    "TracedProgram",
    "as_args",
    "as_traced",
    "dtype_of_label",
    "fetch_attr",
    "placeholder_value",
    "require_program",
    "run_node",
    "target_name",
    "tensor_bytes",
    "trace",
    "value_template",
]

T = TypeVar("T")

LAYER_GRAPH_SCHEMA = "cic_fast.layer_graph"
LAYER_GRAPH_VERSION = 1


class TraceError(RuntimeError):
    """Raised when neither torch.fx nor torch.export can trace a model."""


class _StateWrite(Exception):
    """A traced program writes input data into module state (see `_build`)."""


@dataclass(eq=False)
class TracedProgram:
    """The executable side of a :class:`LayerGraph` (not serialised).

    It is what the later stages are handed instead of the model: `profile` times it
    on its example inputs, `split` and the runtime cut it, and the runtime's model
    fingerprint is computed once per program (see :meth:`memo`).

    Attributes
    ----------
    module : torch.fx.GraphModule
        The traced program; it shares parameters with the original model.
    fx_nodes : list of torch.fx.Node
        ``fx_nodes[i]`` is the fx node of layer-graph node ``i``; the last entry is the
        fx ``output`` node.
    mutates : dict
        Layer index -> tuple of fx nodes whose value that layer modifies in place.
    in_spec, out_spec : pytree specs or None
        Set when the program came from torch.export, whose graph takes flat inputs
        and returns flat outputs.
    example_inputs : tuple
        Copies of the positional arguments `trace` was given: the shapes the graph
        was measured at. Empty for a program built by hand.
    templates : tuple
        Per layer-graph node, the structure of its traced value (see
        `value_template`): what a boundary value looks like on the wire.
    input_meta : tuple or None
        For a torch.export program: per flat input, ``(dtype, shape)`` of a tensor
        or None for another value. torch.export specialises the program to these
        shapes (a branch on a shape is taken once, at trace time, and its guard
        has no path to the output, so the cut parts would drop it): the parts
        refuse any other shape (see :meth:`flatten_inputs`). None for torch.fx,
        whose program keeps shapes symbolic.
    output_spec : pytree spec or None
        Structure of the model's output (``torch.utils._pytree``), from the trace.
    output_meta : tuple or None
        Per output leaf, ``(dtype, shape)`` of a tensor or None for another value,
        from the trace.
    """

    module: Any
    fx_nodes: list[Any]
    mutates: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    in_spec: Any = None
    out_spec: Any = None
    example_inputs: tuple[Any, ...] = ()
    output_spec: Any = None
    output_meta: tuple[Any, ...] | None = None
    input_meta: tuple[Any, ...] | None = None
    templates: tuple[Any, ...] = ()
    _lock: Any = field(default_factory=threading.RLock, init=False, repr=False)
    _memo: dict[str, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def flatten_inputs(
        self, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
    ) -> list[Any]:
        """Map the model's call arguments onto the program's placeholders.

        Raises
        ------
        ValueError
            A torch.export program given inputs of other shapes or dtypes than it
            was traced at (see ``input_meta``).
        """
        if self.in_spec is None:
            if kwargs:
                raise TypeError("keyword inputs need a torch.export trace")
            flat = list(args)
        else:
            from torch.utils import _pytree

            flat, _ = _pytree.tree_flatten((tuple(args), dict(kwargs or {})))
        if self.input_meta is not None:
            self._check_traced_shapes(flat)
        return flat

    def _check_traced_shapes(self, flat: list[Any]) -> None:
        meta = self.input_meta
        assert meta is not None
        if len(flat) != len(meta):
            raise ValueError(f"the model was traced with {len(meta)} inputs, not {len(flat)}")
        for i, (v, m) in enumerate(zip(flat, meta, strict=True)):
            if m is None:
                continue
            dtype = str(getattr(v, "dtype", type(v).__name__)).removeprefix("torch.")
            got = (dtype, tuple(getattr(v, "shape", ())))
            if got != m:
                raise ValueError(
                    f"input {i} is {got[0]}{list(got[1])}; the model was traced by "
                    f"torch.export at {m[0]}{list(m[1])}, and torch.export fixes every "
                    "shape-dependent branch and size at trace time: trace it again at "
                    "this shape"
                )

    def restructure_outputs(self, flat: Any) -> Any:
        """Give the program's outputs the structure the model returns."""
        if self.out_spec is None:
            return flat
        from torch.utils import _pytree

        return _pytree.tree_unflatten(list(flat), self.out_spec)

    def output_structure(self) -> tuple[Any, tuple[Any, ...]]:
        """``(output_spec, output_meta)``: the model's output structure and leaves.

        Taken from the trace; for a program built without them, the module is run
        once on ``example_inputs`` (and the result kept).

        Raises
        ------
        ValueError
            Neither the structure nor example inputs are known.
        """
        # the gate before the lock: a thread waiting for the lock never holds
        # back an export (see fxsafety.ModuleGate)
        with fxsafety.MODULE_GATE, self._lock:
            if self.output_meta is None:
                if not self.example_inputs:
                    raise ValueError(
                        "the traced program knows neither its outputs nor its example inputs"
                    )
                import torch

                with torch.inference_mode():
                    value = self.module(*self.example_inputs)
                self.output_spec, self.output_meta = _output_structure(value)
            return self.output_spec, self.output_meta

    def memo(self, name: str, compute: Callable[[], T]) -> T:
        """``compute()``, computed once per state of the module's weights (thread-safe).

        The value is kept under ``name`` with the identity of every parameter and
        buffer (the tensor object, its storage pointer, dtype, shape and torch's
        version counter, which every in-place write bumps): loading another state
        dict, an optimizer step or replacing a parameter makes the next call
        compute again. Where a version counter is unavailable (inference-mode
        tensors) nothing is kept and every call computes. Concurrent callers of
        the same name wait for one computation. The weights are read inside
        `fxsafety.MODULE_GATE` (a torch.export swaps them for fake tensors).
        """
        with fxsafety.MODULE_GATE, self._lock:  # the gate first, as above
            key = self._state_key()
            hit = self._memo.get(name)
            if key is not None and hit is not None and _same_state(hit[0], key):
                return hit[1]
            value = compute()
            if key is not None:
                self._memo[name] = (key, value)
            return value

    def _state_key(self) -> list[tuple[Any, ...]] | None:
        """Identity of the module's parameters and buffers now (None: not trackable)."""
        import torch

        key: list[tuple[Any, ...]] = []
        for name, t in self.module.state_dict(keep_vars=True).items():
            if not isinstance(t, torch.Tensor):
                key.append((name, None, repr(t)))
                continue
            v = _version(t)
            if v is None:
                return None
            key.append((name, weakref.ref(t), t.data_ptr(), v, t.dtype, tuple(t.shape)))
        return key


def _same_state(old: list[tuple[Any, ...]], new: list[tuple[Any, ...]]) -> bool:
    """True if two state keys name the same, unmodified tensors."""
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        if a[0] != b[0] or len(a) != len(b):
            return False
        if len(a) == 3:  # a non-tensor entry
            if a[2] != b[2]:
                return False
        elif a[1]() is not b[1]() or a[2:] != b[2:]:
            return False
    return True


def _plain(value: Any) -> Any:
    """fx's immutable dicts and lists in a node's arguments as the dicts and lists the
    generated code builds (a model's output structure)."""
    from torch.fx.immutable_collections import immutable_dict, immutable_list

    if isinstance(value, immutable_dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, immutable_list):
        return [_plain(v) for v in value]
    if type(value) is tuple:
        return tuple(_plain(v) for v in value)
    return value


def _output_structure(value: Any) -> tuple[Any, tuple[Any, ...]]:
    """(pytree spec, per-leaf (dtype, shape) or None) of a model output."""
    import torch
    from torch.utils import _pytree

    leaves, spec = _pytree.tree_flatten(value)
    meta = tuple((x.dtype, tuple(x.shape)) if isinstance(x, torch.Tensor) else None for x in leaves)
    return spec, meta


@dataclass(eq=False)
class LayerGraph:
    """A model as a DAG of layers, with the sizes the cost model needs.

    Attributes
    ----------
    names, ops, targets : tuple of str
        Per node: unique fx name, fx op (``placeholder``, ``call_module``,
        ``call_function``, ``call_method``, ``output``) and what it calls.
    edges : numpy.ndarray
        (E, 2) int64 array of (u, v) with u < v.
    out_bytes : numpy.ndarray
        int64, bytes of each node's tensor outputs (tuples and dicts included,
        non-tensor outputs count 0).
    flops : numpy.ndarray
        int64, floating point operations per node from torch.utils.flop_counter
        (0 where unsupported).
    inputs : numpy.ndarray
        int64 indices of the model inputs (the placeholders), the only sources.
    shapes : tuple of str
        Readable description of each node's output, e.g. ``f32[1,64,56,56]``.
    method : str
        ``"fx"`` or ``"export"``: the tracer that produced the graph.
    program : TracedProgram or None
        The executable program; None for a graph loaded from JSON.
    """

    names: tuple[str, ...]
    ops: tuple[str, ...]
    targets: tuple[str, ...]
    edges: np.ndarray
    out_bytes: np.ndarray
    flops: np.ndarray
    inputs: np.ndarray
    shapes: tuple[str, ...]
    method: str = "fx"
    program: TracedProgram | None = field(default=None, repr=False)

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return len(self.names)

    @property
    def n_edges(self) -> int:
        """Number of edges."""
        return int(self.edges.shape[0])

    @property
    def output(self) -> int:
        """Index of the ``output`` node (always the last)."""
        return self.n_nodes - 1

    @property
    def fingerprint(self) -> str:
        """Hash of node names, ops, targets and edges.

        Two graphs of the same architecture traced the same way share it; a profile
        records it so that it is never applied to another model.
        """
        h = hashlib.sha256()
        for parts in (self.names, self.ops, self.targets):
            h.update("\x1f".join(parts).encode())
            h.update(b"\x1e")
        h.update(np.ascontiguousarray(self.edges, dtype="<i8").tobytes())
        return h.hexdigest()[:32]

    def successors(self) -> list[list[int]]:
        """Adjacency lists, successors of each node."""
        succ: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for u, v in self.edges.tolist():
            succ[u].append(v)
        return succ

    def predecessors(self) -> list[list[int]]:
        """Adjacency lists, predecessors of each node."""
        pred: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for u, v in self.edges.tolist():
            pred[v].append(u)
        return pred

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the executable program is not included)."""
        return {
            "schema": LAYER_GRAPH_SCHEMA,
            "version": LAYER_GRAPH_VERSION,
            "method": self.method,
            "fingerprint": self.fingerprint,
            "names": list(self.names),
            "ops": list(self.ops),
            "targets": list(self.targets),
            "shapes": list(self.shapes),
            "edges": self.edges.tolist(),
            "out_bytes": self.out_bytes.tolist(),
            "flops": self.flops.tolist(),
            "inputs": self.inputs.tolist(),
        }

    def to_json(self) -> str:
        """Serialise to a JSON string (see :meth:`from_json`)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> LayerGraph:
        """Load a graph written by :meth:`to_json`; ``program`` is None.

        Raises
        ------
        ValueError
            Unknown schema or version, inconsistent lengths or fingerprint.
        """
        d = json.loads(text)
        if d.get("schema") != LAYER_GRAPH_SCHEMA or d.get("version") != LAYER_GRAPH_VERSION:
            raise ValueError(
                f"unknown layer graph schema {d.get('schema')!r} version {d.get('version')!r}"
            )
        n = len(d["names"])
        edges = np.asarray(d["edges"], dtype=np.int64).reshape(-1, 2)
        g = cls(
            names=tuple(d["names"]),
            ops=tuple(d["ops"]),
            targets=tuple(d["targets"]),
            edges=edges,
            out_bytes=np.asarray(d["out_bytes"], dtype=np.int64),
            flops=np.asarray(d["flops"], dtype=np.int64),
            inputs=np.asarray(d["inputs"], dtype=np.int64),
            shapes=tuple(d["shapes"]),
            method=d.get("method", "fx"),
        )
        lengths = {len(g.ops), len(g.targets), len(g.shapes), len(g.out_bytes), len(g.flops)}
        if lengths != {n}:
            raise ValueError("layer graph arrays have inconsistent lengths")
        if d.get("fingerprint") not in (None, g.fingerprint):
            raise ValueError("layer graph fingerprint does not match its contents")
        return g

    def summary(self, *, max_rows: int | None = 60) -> str:
        """A readable table: index, name, op, target, output shape, bytes, MFLOPs.

        Parameters
        ----------
        max_rows : int or None
            Rows shown before eliding the middle; None shows all.
        """
        head = (
            f"LayerGraph ({self.method}): {self.n_nodes} nodes, {self.n_edges} edges, "
            f"inputs {self.inputs.tolist()}, "
            f"{self.flops.sum() / 1e9:.3f} GFLOPs, "
            f"input bytes {int(self.out_bytes[self.inputs].sum())}"
        )
        rows = [
            f"{'#':>4} {'name':<28} {'op':<13} {'target':<28} {'output':<22} "
            f"{'bytes':>10} {'MFLOP':>9}"
        ]
        idx = list(range(self.n_nodes))
        if max_rows is not None and len(idx) > max_rows:
            half = max_rows // 2
            idx = [*idx[:half], -1, *idx[-half:]]
        for i in idx:
            if i < 0:
                rows.append(f"{'...':>4}")
                continue
            rows.append(
                f"{i:>4} {_clip(self.names[i], 28):<28} {self.ops[i]:<13} "
                f"{_clip(self.targets[i], 28):<28} {_clip(self.shapes[i], 22):<22} "
                f"{int(self.out_bytes[i]):>10} {self.flops[i] / 1e6:>9.2f}"
            )
        return "\n".join([head, *rows])


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "~"


def as_args(example_inputs: Any) -> tuple[Any, ...]:
    """One forward call's positional arguments as a tuple (a lone tensor is wrapped)."""
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a tuple of model arguments")


def require_program(graph: LayerGraph) -> TracedProgram:
    """The executable program of a traced graph.

    Raises
    ------
    ValueError
        The graph has none (it was loaded with :meth:`LayerGraph.from_json`).
    """
    if graph.program is None:
        raise ValueError(
            "the LayerGraph has no program (loaded from JSON?): trace the model to "
            "profile, split or run it"
        )
    return graph.program


def as_traced(
    model: Any, example_inputs: Any = None, *, graph: LayerGraph | None = None
) -> tuple[Any, LayerGraph, tuple[Any, ...]]:
    """Resolve the two ways a stage is given a model; trace at most once.

    A stage (`profile`, `split`, the runtime's `Client` and `Server`) takes either
    the previous stage's result, a traced :class:`LayerGraph`, or the convenience
    form ``(model, example_inputs)`` (optionally with ``graph=trace(model,
    example_inputs)`` to save the trace).

    Parameters
    ----------
    model : torch.nn.Module or LayerGraph
        The model, or the traced graph (with its program).
    example_inputs : torch.Tensor or tuple, optional
        One forward call's positional arguments; only with a model. Without them
        the graph's own are used (``graph=`` must then be given).
    graph : LayerGraph, optional
        ``trace(model, example_inputs)``, if already computed; only with a model.

    Returns
    -------
    module : torch.nn.Module
        What to run whole: the model, or the traced program's module (which shares
        the model's weights) when handed a graph.
    graph : LayerGraph
        The traced graph, with its program.
    args : tuple
        The example inputs.

    Raises
    ------
    TypeError
        ``model`` is neither a module nor a LayerGraph; a LayerGraph given together
        with ``example_inputs`` or another ``graph``; a model without example
        inputs or graph.
    ValueError
        The graph has no program (loaded from JSON).
    TraceError
        The model could not be traced.
    """
    import torch

    if isinstance(model, LayerGraph):
        if example_inputs is not None:
            raise TypeError(
                "a traced LayerGraph holds its example inputs: "
                "give example_inputs only with a model"
            )
        if graph is not None and graph is not model:
            raise TypeError("give the traced graph once: as the model argument or as graph=")
        prog = require_program(model)
        return prog.module, model, prog.example_inputs
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module or a traced LayerGraph, not {type(model).__name__}"
        )
    if graph is None:
        if example_inputs is None:
            raise TypeError("example_inputs are required with a model (or pass the LayerGraph)")
        graph = trace(model, example_inputs)
    prog = require_program(graph)
    args = prog.example_inputs if example_inputs is None else as_args(example_inputs)
    return model, graph, args


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: the construct that failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} `{(f.line or '').strip()}`"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def trace(model: torch.nn.Module, example_inputs: Any, *, method: str = "auto") -> LayerGraph:
    """Trace a model into a :class:`LayerGraph` and measure its tensor sizes.

    Parameters
    ----------
    model : torch.nn.Module
        The model, normally in eval mode (the trace bakes in ``model.training``).
    example_inputs : torch.Tensor or tuple
        Positional arguments of one forward call; sizes are measured on them.
    method : {"auto", "fx", "export"}
        ``"auto"`` tries torch.fx symbolic tracing and falls back to torch.export.

    Returns
    -------
    LayerGraph
        With ``program`` set, so it can be profiled and split.

    Raises
    ------
    TraceError
        Neither tracer could handle the model; the message names the construct.

    Notes
    -----
    Thread-safe: traces are serialised by `fxsafety.TORCH_GLOBALS_LOCK`, and other
    threads may run modules (this model included) during an fx trace. A
    torch.export fallback waits for, and holds back, every thread inside
    `fxsafety.MODULE_GATE`; a thread running this model outside the gate during
    an export would see export's fake parameters.

    Examples
    --------
    >>> g = trace(torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224))
    >>> print(g.summary())  # doctest: +SKIP
    """
    import torch

    if method not in ("auto", "fx", "export"):
        raise ValueError(f"method must be 'auto', 'fx' or 'export', not {method!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError("model must be a torch.nn.Module")
    # The trace runs the model (export, the size and FLOP passes): on copies, so that a
    # model that writes into its input never changes the caller's tensors.
    args = _copied(as_args(example_inputs))
    failures: list[str] = []
    gm = None
    in_spec = out_spec = None
    used = method
    if method in ("auto", "fx"):
        try:
            gm = fxsafety.symbolic_trace(model)
            used = "fx"
        except Exception as e:
            failures.append(f"torch.fx failed{_user_frame(e)}: {_first_line(e)}")
    if gm is not None:
        # fx runs Python at trace time: a context it cannot record (autocast) or a
        # value it folds into a constant makes a program that differs from the model.
        # Compare once on the example; on a difference use torch.export (which records
        # such regions), or refuse: never a silently different program.
        why = _differs_from_model(gm, model, args)
        if why is not None:
            gm = None
            failures.append(f"the torch.fx program differs from the model: {why}")
            if method == "fx":
                raise TraceError(
                    "could not trace the model; "
                    + "; ".join(failures)
                    + " (an autocast region, or input-dependent values folded into the "
                    "trace; method='auto' falls back to torch.export)"
                )
    if gm is not None:
        try:
            # The FLOP-counting pass runs the program; serialised with the tracers.
            with fxsafety.TORCH_GLOBALS_LOCK:
                return _build(gm, args, used, None, None)
        except _StateWrite as e:
            gm = None
            failures.append(f"the torch.fx program {e}")
            if method == "fx":
                raise TraceError(
                    "could not trace the model; " + "; ".join(failures) + " (method='auto' "
                    "falls back to torch.export, which makes such writes out-of-place)"
                ) from None
    if method in ("auto", "export"):
        try:
            gm = fxsafety.export_module(model, args)
            info = getattr(gm.graph._codegen, "pytree_info", None)
            if info is not None:
                in_spec, out_spec = info.in_spec, info.out_spec
            used = "export"
        except Exception as e:
            failures.append(f"torch.export failed{_user_frame(e)}: {_first_line(e)}")
    if gm is None:
        raise TraceError("could not trace the model; " + "; ".join(failures))
    try:
        with fxsafety.TORCH_GLOBALS_LOCK:
            return _build(gm, args, used, in_spec, out_spec)
    except _StateWrite as e:
        raise TraceError(
            f"could not trace the model: the torch.export program {e} (a model that "
            "keeps state across calls in a buffer cannot be split: the device and the "
            "server each hold their own copy)"
        ) from None


def _differs_from_model(gm: Any, model: Any, args: tuple[Any, ...]) -> str | None:
    """Why ``gm(*args)`` differs from ``model(*args)``, or None if it does not.

    Each run gets its own copy of the inputs (a model may write into them). Tensors
    must agree in dtype and shape and in value to 1e-6 relative (the same kernels
    in the same order give the same bits; the tolerance only spares reductions
    that are not bit-stable). A model whose two runs already disagree (randomness
    in ``forward``) cannot be checked this way: None.
    """
    import torch

    with torch.no_grad():
        try:
            want = model(*_copied(args))
        except Exception:
            return None  # the trace's own run reports a failing model
        try:
            got = gm(*_copied(args))
        except Exception as e:
            return f"running it raised {type(e).__name__}: {_first_line(e)}"
        why = _compare(got, want)
        if why is None:
            return None
        again = model(*_copied(args))
        if _compare(again, want) is not None:
            return None  # not deterministic: nothing to compare against
        return why


def _compare(got: Any, want: Any) -> str | None:
    import torch

    a, b = _leaves(got), _leaves(want)
    if len(a) != len(b):
        return f"{len(a)} output values, the model gives {len(b)}"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return f"output {i} is {_describe(x)}, the model gives {_describe(y)}"
        if not isinstance(x, torch.Tensor):
            try:
                same = bool(x == y)
            except Exception:
                same = False
            if not same:
                return f"output {i} is {x!r}, the model gives {y!r}"
            continue
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"output {i} is {_describe(x)}, the model gives {_describe(y)}"
        if torch.equal(x, y):
            continue
        if x.is_floating_point() or x.is_complex():
            if torch.allclose(x, y, rtol=1e-6, atol=1e-7, equal_nan=True):
                continue
            err = float((x.double() - y.double()).abs().max())
            return f"output {i} differs by up to {err:.3g}"
        return f"output {i} has other values"
    return None


def _copied(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with every tensor leaf replaced by a detached copy (structure kept)."""
    import torch
    from torch.utils import _pytree

    def copy(v: Any) -> Any:
        return v.detach().clone() if isinstance(v, torch.Tensor) else v

    return tuple(_pytree.tree_map(copy, a) for a in args)


def _leaves(value: Any) -> list[Any]:
    from torch.utils import _pytree

    try:
        return _pytree.tree_leaves(value)
    except Exception:
        return [value]


def value_template(value: Any) -> Any:
    """The structure of a traced value, with the kind of each leaf (no data).

    A tree of tuples: ``("tensor", dtype, shape, strides)`` (strides None when
    contiguous); ``("int",)``, ``("float",)`` and ``("bool",)`` for Python
    numbers (a size, a scalar computed from the input); ``("const", value)`` for
    any other leaf (None, a string, a dtype, a device: fixed by the traced shapes
    and dtypes); ``("seq", rebuild, children)`` for a tuple, list,
    ``torch.Size``, named tuple or torch structseq (``rebuild`` makes one from a
    list of children); ``("dict", keys, children)``. See
    `cic_fast.frontend.cutting.BoundaryCodec`, which sends values by it.
    """
    import torch

    if isinstance(value, torch.Tensor):
        # the strides too, when not contiguous: code after a cut may depend on them
        # (a ``view`` of a transposed tensor), and the wire carries contiguous data
        dense = value.is_contiguous() or value.layout != torch.strided
        stride = None if dense else tuple(value.stride())
        return ("tensor", str(value.dtype).removeprefix("torch."), tuple(value.shape), stride)
    if isinstance(value, bool):
        return ("bool",)
    if isinstance(value, int):
        return ("int",)
    if isinstance(value, float):
        return ("float",)
    if isinstance(value, dict):
        keys = tuple(value)
        return ("dict", keys, tuple(value_template(value[k]) for k in keys))
    if isinstance(value, (tuple, list)):
        return ("seq", _rebuilder(value), tuple(value_template(v) for v in value))
    return ("const", value)


def _rebuilder(value: Any) -> Callable[[list[Any]], Any]:
    import torch

    cls = type(value)
    if cls in (tuple, list, torch.Size) or hasattr(cls, "n_fields"):  # structseq
        return cls
    if hasattr(cls, "_fields"):  # a named tuple
        return lambda items: cls(*items)
    return tuple if isinstance(value, tuple) else list


def tensor_bytes(value: Any) -> int:
    """Bytes of all tensors in a (possibly nested) value; other leaves count 0."""
    import torch

    return sum(t.numel() * t.element_size() for t in _leaves(value) if isinstance(t, torch.Tensor))


#: The dtype labels of :attr:`LayerGraph.shapes`: torch dtype name -> label (other
#: dtypes are labelled with their torch name, e.g. ``uint8[1,3,224,224]``).
SHORT_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "int64": "i64"}
_LONG_DTYPES = {v: k for k, v in SHORT_DTYPES.items()}


def dtype_of_label(label: str) -> str:
    """The torch dtype name (``"float32"``) of a :attr:`LayerGraph.shapes` label (``"f32"``)."""
    return _LONG_DTYPES.get(label, label)


def _describe(value: Any) -> str:
    import torch

    def one(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            name = str(v.dtype).removeprefix("torch.")
            dt = SHORT_DTYPES.get(name, name)
            return f"{dt}[{','.join(str(s) for s in v.shape)}]"
        if v is None:
            return "None"
        return type(v).__name__

    if isinstance(value, torch.Tensor) or not isinstance(value, (tuple, list, dict)):
        return one(value)
    return "(" + ",".join(one(v) for v in _leaves(value)) + ")"


def target_name(node: fx.Node) -> str:
    """A stable string for what a node calls."""
    t: Any = node.target
    if isinstance(t, str):
        return t
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or str(t)
    if mod in ("_operator", "operator"):
        mod = "operator"
    if type(t).__name__ == "OpOverload":
        return f"aten.{t._opname}.{t._overloadname}" if hasattr(t, "_opname") else str(t)
    return f"{mod}.{name}" if mod else name


def fetch_attr(gm: Any, target: str) -> Any:
    """Value of a dotted attribute path of a module."""
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def run_node(gm: Any, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Execute one fx node with already-evaluated arguments."""
    target: Any = node.target
    if node.op == "call_function":
        return target(*args, **kwargs)
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, target)(*rest, **kwargs)
    if node.op == "call_module":
        return gm.get_submodule(target)(*args, **kwargs)
    if node.op == "get_attr":
        return fetch_attr(gm, target)
    raise ValueError(f"cannot run node of op {node.op!r}")


def placeholder_value(node: fx.Node, flat: list[Any], pos: int) -> Any:
    """Value of the pos-th placeholder: the given input or the default.

    fx traces ``forward(self, *xs)`` into one placeholder (target ``"*xs"``) that
    holds every remaining positional argument, as a tuple.
    """
    if isinstance(node.target, str) and node.target.startswith("*"):
        return tuple(flat[pos:])
    if pos < len(flat):
        return flat[pos]
    if node.args:
        return node.args[0]
    raise TypeError(f"missing model input {node.target!r}")


def _build(gm: Any, args: tuple[Any, ...], method: str, in_spec: Any, out_spec: Any) -> LayerGraph:
    import torch
    from torch import fx

    program = TracedProgram(
        module=gm, fx_nodes=[], in_spec=in_spec, out_spec=out_spec, example_inputs=args
    )
    flat = program.flatten_inputs(args)
    if method == "export":
        program.input_meta = tuple(
            (str(v.dtype).removeprefix("torch."), tuple(v.shape))
            if isinstance(v, torch.Tensor)
            else None
            for v in flat
        )
    nodes: list[fx.Node] = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    out_node = next(n for n in nodes if n.op == "output")

    env: dict[fx.Node, Any] = {}
    flops: dict[fx.Node, int] = {}
    # storage pointer -> nodes whose value lives in it, to find every alias a mutation hits
    by_storage: dict[int, list[fx.Node]] = {}
    mutated: dict[fx.Node, set[fx.Node]] = {}
    pos = 0

    def storages(value: Any) -> set[int]:
        keys = set()
        for t in _leaves(value):
            if isinstance(t, torch.Tensor) and t.numel() > 0 and t.layout == torch.strided:
                keys.add(t.untyped_storage().data_ptr())
        return keys

    with torch.no_grad():
        for node in nodes:
            if node.op == "placeholder":
                env[node] = placeholder_value(node, flat, pos)
                pos += 1
            elif node.op == "output":
                break
            else:
                a = fx.node.map_arg(node.args, lambda n: env[n])
                k = fx.node.map_arg(node.kwargs, lambda n: env[n])
                in_tensors = [t for t in _leaves((a, k)) if isinstance(t, torch.Tensor)]
                before = [_version(t) for t in in_tensors]
                env[node], flops[node] = _run_counted(gm, node, a, k)
                hit = {
                    t.untyped_storage().data_ptr()
                    for t, v in zip(in_tensors, before, strict=True)
                    if v is not None and _version(t) != v and t.numel() > 0
                }
                if hit:
                    victims = {m for key in hit for m in by_storage.get(key, ())}
                    victims.discard(node)
                    if victims:
                        mutated[node] = victims
            for key in storages(env[node]):
                by_storage.setdefault(key, []).append(node)

    # Extra ordering edges for in-place mutation (see module docstring).
    extra: list[tuple[fx.Node, fx.Node]] = []
    for m, victims in mutated.items():
        for x in victims:
            for user in x.users:
                if user is m:
                    continue
                if order[user] > order[m]:
                    extra.append((m, user))
                else:
                    extra.append((user, m))
    preds: dict[fx.Node, set[fx.Node]] = {n: set(n.all_input_nodes) for n in nodes}
    for u, v in extra:
        preds[v].add(u)
    # A constant that an input-dependent node mutates carries input data from then on.
    promoted = {x for m, vs in mutated.items() for x in vs}

    # Input dependence, to a fixpoint because promotion can reach back in order.
    dep = {n: False for n in nodes}
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if dep[n] or n.op == "get_attr":
                continue
            d = n.op == "placeholder" or any(dep[p] for p in preds[n])
            if not d and n in promoted:
                d = any(dep[m] for m, vs in mutated.items() if n in vs)
            if d:
                dep[n] = True
                changed = True

    # Liveness: a path to the output node over data and ordering edges.
    live = {n: False for n in nodes}
    live[out_node] = True
    for n in reversed(nodes):
        if live[n]:
            for p in preds[n]:
                live[p] = True

    # A parameter, buffer or baked constant written with input data: a split could
    # not carry the write to the other side (each side reads its own module state).
    # fx reads an attribute again through a new node that has no edge from the
    # write, so any such write is refused; torch.export's functional program reads
    # the written value from the graph, and writes state back only in dead nodes.
    for m, victims in mutated.items():
        state = [v for v in victims if v.op == "get_attr"]
        if state and dep[m] and (method == "fx" or live[m]):
            raise _StateWrite(
                f"{m.name} ({target_name(m)}){_source_of(m)} writes input data into "
                f"{state[0].target!r}, a parameter, buffer or constant folded into the trace"
            )

    kept = [n for n in nodes if n.op == "placeholder" or n is out_node or (dep[n] and live[n])]
    index = {n: i for i, n in enumerate(kept)}
    placeholders = [index[n] for n in kept if n.op == "placeholder"]
    edge_set: set[tuple[int, int]] = set()
    for n in kept:
        ins = [index[p] for p in preds[n] if p in index]
        if not ins and n.op != "placeholder":
            # The inputs must be the only sources (the cost model pins every source to
            # the device). A node that reads no input yet is kept (the output of a
            # model whose result ignores its inputs, a constant later written with
            # input data) gets edges from the inputs: it may then run on either side,
            # and on the server the inputs are sent (and priced), as the edges say.
            ins = placeholders
        edge_set.update((u, index[n]) for u in ins)
    edges = np.array(sorted(edge_set), dtype=np.int64).reshape(-1, 2)
    assert (edges[:, 0] < edges[:, 1]).all(), "fx order is not topological"

    program.fx_nodes = kept
    program.output_spec, program.output_meta = _output_structure(
        program.restructure_outputs(_plain(fx.node.map_arg(out_node.args[0], lambda n: env[n])))
    )
    program.mutates = {
        index[m]: tuple(sorted(vs, key=order.__getitem__))
        for m, vs in mutated.items()
        if m in index
    }
    program.templates = tuple(None if n is out_node else value_template(env[n]) for n in kept)
    out_bytes = np.array(
        [0 if n is out_node else tensor_bytes(env[n]) for n in kept], dtype=np.int64
    )
    return LayerGraph(
        names=tuple(n.name for n in kept),
        ops=tuple(n.op for n in kept),
        targets=tuple("output" if n is out_node else target_name(n) for n in kept),
        edges=edges,
        out_bytes=out_bytes,
        flops=np.array([flops.get(n, 0) for n in kept], dtype=np.int64),
        inputs=np.array([index[n] for n in kept if n.op == "placeholder"], dtype=np.int64),
        shapes=tuple("-" if n is out_node else _describe(env[n]) for n in kept),
        method=method,
        program=program,
    )


def _source_of(node: Any) -> str:
    """`` at FILE:LINE `code` `` of the model line that made a node, where recorded."""
    trace_text = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace_text.strip().splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File ") and "/torch/" not in lines[i]:
            code = lines[i + 1] if i + 1 < len(lines) else ""
            code = "" if code.startswith("File ") else code
            where = lines[i].removeprefix("File ").split(", in ")[0].replace('", line ', ":")
            return f" at {where.strip(chr(34))} `{code}`"
    return ""


def _run_counted(gm: Any, node: Any, args: Any, kwargs: Any) -> tuple[Any, int]:
    """Run one node of the program on the example and count its FLOPs.

    FLOPs only feed estimates: an operator the counter cannot follow (it has
    failed inside ``torch.cond`` and on tensors that require grad) counts 0 and
    runs again plainly. A node that fails to run is a TraceError naming it.
    """
    if node.op == "get_attr":
        return run_node(gm, node, args, kwargs), 0
    counter = fxsafety.flop_counter()
    try:
        with counter:
            return run_node(gm, node, args, kwargs), int(counter.get_total_flops())
    except Exception:
        pass
    try:
        return run_node(gm, node, args, kwargs), 0
    except Exception as e:
        raise TraceError(
            f"the traced program fails on the example inputs at node {node.name} "
            f"({target_name(node)}): {_first_line(e)}"
        ) from e


def _version(t: Any) -> int | None:
    # Inference-mode tensors have no version counter.
    try:
        return int(t._version)
    except RuntimeError:
        return None
