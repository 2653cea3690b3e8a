"""One place for what cic_fast does to torch's process-wide state, made thread-safe.

Three torch operations cic_fast runs change process-wide state:

- torch.fx symbolic tracing replaces ``torch.nn.Module.__call__`` and
  ``torch.nn.Module.__getattr__`` for the whole process while it traces (and the
  functions registered with ``torch.fx.wrap``, and math functions in the globals of
  each module it calls). Two traces at once interleave their patches (a revert
  can leave ``Module.__call__`` patched for good), and a module run by any other
  thread meanwhile is intercepted by the tracer.
- torch.export (non-strict, through make_fx) patches the same two methods and, for
  the duration, swaps the model's parameters and buffers for fake tensors on the
  module objects themselves (``stateless._reparametrize_module``).
- Building a ``GraphModule`` (its code generation) registers the generated source in
  ``torch.fx.graph_module._loader.eval_cache`` and in ``linecache.cache`` under a
  key numbered by an unlocked counter, and never removes it.

What this module provides:

- `TORCH_GLOBALS_LOCK`: one process-wide re-entrant lock around every such
  operation in cic_fast: fx tracing (`symbolic_trace`), torch.export
  (`export_module`), the FLOP-counting pass of ``trace`` and GraphModule
  construction (`graph_module`). cic_fast's traces and code generation never
  overlap.
- `symbolic_trace`: ``torch.fx.symbolic_trace`` with ``ThreadAwareTracer`` (a
  ``torch.fx.Tracer`` subclass, built on first access since torch is imported
  lazily): while the patch is in place, a module called from another thread runs
  plainly.
- `MODULE_GATE`: a reader/writer gate. Code that runs modules of a traced model
  holds its shared side (``with MODULE_GATE:``; the Head and Tail parts of
  `cic_fast.frontend.cutting` do, as do `TracedProgram.memo` and
  `TracedProgram.output_structure`); a torch.export takes the exclusive side, so it
  waits for them and they wait for it.
- `graph_module` and `forget_source_when_collected`: a GraphModule's generated
  source leaves the two caches when the module is garbage-collected.
- `flop_counter`: a ``FlopCounterMode`` that counts totals without installing
  global module hooks.

Not protected (by design or because it cannot be): code outside cic_fast that
traces, exports or builds GraphModules in this process does not take the lock (its
codegen can still race with ours on the loader's counter, which at worst mislabels
a traceback line); a thread running the model's modules outside `MODULE_GATE` while
a torch.export fallback runs sees export's patches and fake parameters (the
runtime's whole-model calls need ``with MODULE_GATE:`` for that); a torch.export's
own intermediate GraphModules keep their cache entries (a few per export, once
per trace, not per part).

torch is imported lazily.
"""

from __future__ import annotations

import contextlib
import functools
import linecache
import threading
import weakref
from collections.abc import Iterator
from typing import Any

__all__ = [
    "MODULE_GATE",
    "TORCH_GLOBALS_LOCK",
    "ModuleGate",
    "export_module",
    "flop_counter",
    "forget_source_when_collected",
    "graph_module",
    "symbolic_trace",
]


class _Inside(threading.local):
    """Per thread: ``depth``, how many `MODULE_GATE` sections, exclusive sections and
    `TORCH_GLOBALS_LOCK` holds the thread is inside. Only an outermost gate section
    counts the thread as a reader; nested ones are free."""

    depth = 0


_tls = _Inside()


class _TorchGlobalsLock:
    """A re-entrant lock that also marks its holder as inside `MODULE_GATE`.

    The holder may run modules (``trace`` runs the model) without waiting at the
    gate: no export can start while it holds the lock, since an export needs it.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> None:
        self._lock.acquire()
        _tls.depth += 1

    def __exit__(self, *exc: object) -> None:
        _tls.depth -= 1
        self._lock.release()


#: The process-wide lock around everything cic_fast does that patches or
#: registers torch globals. Re-entrant; use as ``with TORCH_GLOBALS_LOCK:``. Never
#: wait for another thread while holding it.
TORCH_GLOBALS_LOCK = _TorchGlobalsLock()


class ModuleGate:
    """Threads running modules (shared) versus a torch.export (exclusive).

    ``with gate:`` enters the shared side: it waits while an export runs or waits,
    then any number of threads run together. Entries nest freely within a thread
    (and are free for a thread holding `TORCH_GLOBALS_LOCK`). `exclusive` waits
    for the threads inside to leave; new ones wait behind it, so a steady flow of
    requests cannot starve an export.

    Hold the shared side around computation only, never around waiting for
    another thread, a lock or I/O: an export waits for it. Outside an export it
    costs an uncontended lock and two thread-local accesses on entry and on exit
    (about a microsecond in all on a slow 2-core machine).

    Deadlock freedom: a thread inside never waits at the gate again (nesting is
    free, and so is a `TORCH_GLOBALS_LOCK` holder, which no export can overlap), an
    export takes the gate before that lock and may not start from inside either,
    and what cic_fast runs inside (a part's forward, hashing weights) waits for
    nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._readers = 0  # threads counted inside the shared side
        self._waiting = 0  # exports waiting for the exclusive side
        self._writing = False  # an export holds it

    def __enter__(self) -> None:
        tls = _tls
        depth = tls.depth
        if not depth:
            with self._lock:
                while self._writing or self._waiting:
                    self._cond.wait()
                self._readers += 1
        tls.depth = depth + 1

    def __exit__(self, *exc: object) -> None:
        tls = _tls
        depth = tls.depth - 1
        tls.depth = depth
        if not depth:  # the outermost section: this thread was counted
            with self._lock:
                self._readers -= 1
                if self._waiting:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Run alone: no other thread inside the shared side (for torch.export).

        Raises
        ------
        RuntimeError
            The calling thread is inside the gate, an exclusive section or
            `TORCH_GLOBALS_LOCK`: it would wait for itself, or for a reader that
            waits for the lock it holds.
        """
        tls = _tls
        if tls.depth:
            raise RuntimeError(
                "torch.export cannot start inside MODULE_GATE or TORCH_GLOBALS_LOCK "
                "(e.g. from a running part): it would wait for itself"
            )
        with self._lock:
            self._waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            except BaseException:
                self._waiting -= 1
                self._cond.notify_all()  # readers held back by this waiter
                raise
            self._waiting -= 1
            self._writing = True
        tls.depth += 1  # the exporter's own module calls pass the gate
        try:
            yield
        finally:
            tls.depth -= 1
            with self._lock:
                self._writing = False
                self._cond.notify_all()


#: The gate of every module run against torch.export; see `ModuleGate`.
MODULE_GATE = ModuleGate()


@functools.cache
def _tracer_class() -> type:
    """`ThreadAwareTracer`, built on first use (torch is imported lazily)."""
    from torch import fx

    class ThreadAwareTracer(fx.Tracer):
        """``torch.fx.Tracer`` whose module hooks act for the tracing thread only.

        While ``trace`` runs, ``Module.__call__`` and ``Module.__getattr__`` are
        patched for the whole process and route every call to ``call_module`` and
        ``getattr``. Called from any other thread, these return what an unpatched
        call returns: the module run plainly (``forward(*args, **kwargs)``, which
        is the original ``Module.__call__``) and the attribute's value.

        Equivalence with ``fx.Tracer`` for the tracing thread T. ``trace`` only
        records T and then runs ``fx.Tracer.trace``; every method but
        ``call_module`` and ``getattr`` is inherited unchanged; and these two
        delegate to ``fx.Tracer``'s whenever the caller is T. So T makes the same
        calls with the same arguments as under ``fx.Tracer``. Another thread
        returns before reaching ``fx.Tracer``'s methods, so it creates no node or
        proxy and changes none of the tracer's state (module stack, call counts,
        proxy cache): the graph is the one ``fx.Tracer`` records. (One residue of
        torch's wrapper, which runs before ``call_module``: another thread's call
        can autowrap math functions in its module's globals; those wrappers are
        the identity on arguments that are not proxies.)
        """

        def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> Any:
            self._owner = threading.get_ident()
            return super().trace(root, concrete_args)

        def call_module(
            self, m: Any, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if threading.get_ident() != self._owner:
                return forward(*args, **kwargs)
            return super().call_module(m, forward, args, kwargs)

        def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
            if threading.get_ident() != self._owner:
                return attr_val
            return super().getattr(attr, attr_val, parameter_proxy_cache)

    # Importable by name (module __getattr__ below), so GraphModule keeps it as its
    # tracer class and pickling re-traces with it, as with fx.Tracer.
    ThreadAwareTracer.__qualname__ = "ThreadAwareTracer"
    ThreadAwareTracer.__module__ = __name__
    return ThreadAwareTracer


def __getattr__(name: str) -> Any:
    if name == "ThreadAwareTracer":
        return _tracer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def symbolic_trace(root: Any) -> Any:
    """``torch.fx.symbolic_trace(root)``, thread-safe.

    The same steps as torch's (``Tracer().trace(root)``, then ``GraphModule(
    tracer.root, graph, name)``) with ``ThreadAwareTracer``, under
    `TORCH_GLOBALS_LOCK`; the module's source leaves the caches with it. The
    result equals torch's (graph, code, class name); it differs only in the tracer
    class it records (``ThreadAwareTracer``, used to re-trace when unpickled), and
    inside torch.compile's lazy-GraphModule context, where torch's would be a
    ``_LazyGraphModule``.

    Parameters
    ----------
    root : torch.nn.Module

    Returns
    -------
    torch.fx.GraphModule
    """
    from torch import fx

    with TORCH_GLOBALS_LOCK:
        saved = _module_state(root)
        try:
            tracer = _tracer_class()()
            # source lines in node.meta["stack_trace"], for errors that name a node
            tracer.record_stack_traces = True
            graph = tracer.trace(root)
        finally:
            _drop_proxies(root, saved)
        gm = fx.GraphModule(tracer.root, graph, type(root).__name__)
    forget_source_when_collected(gm)
    return gm


# Module attributes that hold torch's own bookkeeping, never a model's cache.
_TORCH_SLOTS = frozenset(
    {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training"}
)


def _module_state(root: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Each submodule's plain attributes, with shallow copies of dicts and lists.

    A model may cache values across calls in its own attributes (timm's LeViT
    keeps attention biases in a dict keyed by device). During an fx trace those
    values are proxies of the trace's graph; left there, the next trace reads a
    proxy of a dead graph and fails (``KeyError: getitem_6``), and the next run
    of the model gets a proxy instead of a tensor.
    """
    state = []
    for m in root.modules():
        snap = {}
        for k, v in vars(m).items():
            if k in _TORCH_SLOTS or (k.startswith("_") and k.endswith("hooks")):
                continue
            snap[k] = (v, v.copy() if isinstance(v, (dict, list)) else None)
        state.append((m, snap))
    return state


def _has_proxy(value: Any, depth: int = 3) -> bool:
    from torch import fx

    if isinstance(value, fx.Proxy):
        return True
    if depth == 0:
        return False
    if isinstance(value, dict):
        return any(_has_proxy(v, depth - 1) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_has_proxy(v, depth - 1) for v in value)
    return False


def _drop_proxies(root: Any, saved: list[tuple[Any, dict[str, Any]]]) -> None:
    """Undo what a trace stored in module attributes, where it stored proxies.

    Only attributes that now hold a proxy change: a new one is deleted, a
    replaced one gets its old value back, a dict or list changed in place gets
    its old contents back. Everything else a trace did to the model stays.
    """
    for m, snap in saved:
        d = vars(m)
        for k in list(d):
            if k in _TORCH_SLOTS or not _has_proxy(d[k]):
                continue
            if k not in snap:
                del d[k]
                continue
            old, contents = snap[k]
            if d[k] is old and contents is not None:
                old.clear()
                if isinstance(old, dict):
                    old.update(contents)
                else:
                    old.extend(contents)
            else:
                d[k] = old


def export_module(model: Any, args: tuple[Any, ...]) -> Any:
    """``torch.export.export(model, args, strict=False).module()``, serialised.

    Runs with no thread inside `MODULE_GATE` and under `TORCH_GLOBALS_LOCK`. Other
    threads running the model outside the gate are not protected (see the module
    docstring).

    Returns
    -------
    torch.fx.GraphModule
        The unlifted program; its source leaves the caches with it.
    """
    import torch

    with MODULE_GATE.exclusive(), TORCH_GLOBALS_LOCK:
        ep = torch.export.export(model, args, strict=False)
        if _mutates(ep.graph):
            # Functionalise: ``buf = zeros(); buf.add_(f(x))`` and slice assignment
            # become out-of-place ops (``add``, ``slice_scatter``) whose outputs carry
            # the written data, so no input-free node is ever written with input
            # data (a split could not move such a write across the cut). Only when
            # needed: it costs a second pass over the graph.
            ep = ep.run_decompositions({})
        gm = ep.module()
    forget_source_when_collected(gm)
    return gm


def _mutates(graph: Any) -> bool:
    """Whether an exported graph holds an in-place (schema-mutable) operator."""
    for n in graph.nodes:
        schema = getattr(n.target, "_schema", None)
        if n.op == "call_function" and schema is not None and schema.is_mutable:
            return True
    return False


def graph_module(root: Any, graph: Any, class_name: str) -> Any:
    """``torch.fx.GraphModule(root, graph, class_name=class_name)``, serialised.

    Code generation runs under `TORCH_GLOBALS_LOCK` (the loader's counter is not
    locked), and the generated source leaves the caches when the module is
    collected.
    """
    from torch import fx

    with TORCH_GLOBALS_LOCK:
        gm = fx.GraphModule(root, graph, class_name=class_name)
    forget_source_when_collected(gm)
    return gm


def forget_source_when_collected(gm: Any) -> None:
    """Remove ``gm``'s generated source from fx's loader and ``linecache`` when it dies.

    ``GraphModule.recompile`` compiles ``gm.code`` under a file name (the key) that
    it stores, with the source, in ``torch.fx.graph_module._loader.eval_cache`` and,
    lazily, in ``linecache.cache``; both keep it for the life of the process. The
    key is the ``co_filename`` of the class's generated ``forward``. Nothing is
    registered when that entry is not ``gm``'s own source (a module recompiled
    since, or a key shared by equal code).
    """
    from torch.fx import graph_module as fx_graph_module

    code = getattr(getattr(type(gm), "forward", None), "__code__", None)
    src = getattr(gm, "code", None)
    if code is None or not isinstance(src, str):
        return
    key: str = code.co_filename
    if fx_graph_module._loader.eval_cache.get(key) is not src:
        return
    weakref.finalize(gm, _forget_source, key, src).atexit = False


def _forget_source(key: str, src: object) -> None:
    # Runs in whichever thread drops the module: no lock, single dict operations.
    from torch.fx import graph_module as fx_graph_module

    cache = fx_graph_module._loader.eval_cache
    if cache.get(key) is src:
        cache.pop(key, None)
        linecache.cache.pop(key, None)


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s ModuleTracker: every count goes to
    ``"Global"`` (the total), and no module hooks are installed."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def flop_counter() -> Any:
    """A ``FlopCounterMode(display=False)`` whose ``get_total_flops`` is exact and
    that installs no global module hooks.

    The counting itself is a torch dispatch mode, local to the thread; the mode's
    ModuleTracker only attributes counts to modules (through process-wide forward
    hooks), which cic_fast does not use.
    """
    from torch.utils.flop_counter import FlopCounterMode
    from torch.utils.module_tracker import ModuleTracker

    counter = FlopCounterMode(display=False)
    if isinstance(getattr(counter, "mod_tracker", None), ModuleTracker):
        counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    return counter
