"""Tracing, cutting and running parts from several threads of one process (issue 9).

torch.fx tracing patches ``torch.nn.Module.__call__`` and ``__getattr__`` for the
whole process, torch.export also swaps the model's parameters for fake tensors,
and every GraphModule's generated source stays in two process-wide caches. These
tests run traces at once (one model shared, and different models), traces while
other threads run the same model, Clients built at once from one model, exports
while other threads run parts of the same model, and parts built and dropped
without end; every result is compared exactly with a single-threaded one.
"""

from __future__ import annotations

import gc
import linecache
import pickle
import socket
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import cic_fast  # noqa: E402
from cic_fast.frontend import fxsafety  # noqa: E402
from cic_fast.frontend.cutting import build_parts  # noqa: E402
from cic_fast.frontend.profiling import Profile  # noqa: E402
from cic_fast.frontend.tracing import LayerGraph, trace  # noqa: E402
from threads import run_threads  # noqa: E402
from zoo import NeedsExport, TwoBranch, TwoInTwoOut, assert_same, tv_model  # noqa: E402

N_THREADS = 8


def assert_same_graph(a: LayerGraph, b: LayerGraph) -> None:
    """Two traces of one model are the same graph: nodes, edges, sizes, program."""
    assert a.method == b.method
    assert a.names == b.names and a.ops == b.ops and a.targets == b.targets
    assert a.shapes == b.shapes
    np.testing.assert_array_equal(a.edges, b.edges)
    np.testing.assert_array_equal(a.out_bytes, b.out_bytes)
    np.testing.assert_array_equal(a.flops, b.flops)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert a.program is not None and b.program is not None
    assert a.program.module.code == b.program.module.code


def patched_methods() -> tuple[object, object]:
    return torch.nn.Module.__call__, torch.nn.Module.__getattr__


# -- the thread-aware tracer is fx.symbolic_trace ------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large"])
def test_thread_aware_tracer_gives_symbolic_trace_s_module(name):
    model, _ = tv_model(name)
    ours = fxsafety.symbolic_trace(model)
    theirs = torch.fx.symbolic_trace(model)
    assert type(ours).__name__ == type(theirs).__name__
    assert ours.code == theirs.code
    assert [(n.op, n.name, str(n.target)) for n in ours.graph.nodes] == [
        (n.op, n.name, str(n.target)) for n in theirs.graph.nodes
    ]
    # pickling re-traces with the tracer class the module keeps
    back = pickle.loads(pickle.dumps(ours))
    assert back.code == ours.code


# -- traces at once --------------------------------------------------------------------


def test_threads_tracing_one_shared_model_get_the_single_threaded_graph():
    model, (x,) = tv_model("resnet18")
    before = patched_methods()
    want = trace(model, x)
    got: list[LayerGraph | None] = [None] * N_THREADS

    def work(i: int) -> None:
        got[i] = trace(model, x)

    run_threads(work, N_THREADS)
    for g in got:
        assert g is not None
        assert_same_graph(g, want)
    assert patched_methods() == before  # every patch reverted


def test_threads_tracing_different_models_get_their_single_threaded_graphs():
    torch.manual_seed(0)
    models = [
        (TwoBranch(16).eval(), (torch.randn(1, 3, 16, 16),)),
        (TwoInTwoOut().eval(), (torch.randn(3, 4), torch.randn(3, 6))),
        tv_model("resnet18"),
        tv_model("mobilenet_v3_large"),
    ]
    want = [trace(m, args) for m, args in models]
    got: list[LayerGraph | None] = [None] * N_THREADS

    def work(i: int) -> None:
        m, args = models[i % len(models)]
        got[i] = trace(m, args)

    run_threads(work, N_THREADS)
    for i, g in enumerate(got):
        assert g is not None
        assert_same_graph(g, want[i % len(models)])


def test_threads_running_a_model_while_others_trace_it():
    """Half the threads trace the model, half run it meanwhile: every output exact."""
    model, (x,) = tv_model("resnet18")
    want = trace(model, x)
    with torch.inference_mode():
        expected = model(x)
    tracers = N_THREADS // 2
    got: list[LayerGraph | None] = [None] * tracers
    traced = threading.Barrier(tracers + 1)  # the tracers and the main thread
    done = threading.Event()
    runs = [0] * N_THREADS

    def work(i: int) -> None:
        if i < tracers:
            try:
                for _ in range(3):
                    got[i] = trace(model, x)
            finally:
                traced.wait(60)
            return
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            with torch.inference_mode():
                y = model(x)
            assert_same(y, expected)
            runs[i] += 1

    runner = threading.Thread(target=lambda: (traced.wait(60), done.set()), daemon=True)
    runner.start()
    run_threads(work, N_THREADS)
    runner.join(60)
    for g in got:
        assert g is not None
        assert_same_graph(g, want)
    assert all(runs[i] > 0 for i in range(tracers, N_THREADS))


@pytest.mark.slow
def test_clients_built_at_once_from_one_model():
    """The report of issue 9: Clients built at once from threads, one model shared."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.regnet_y_400mf(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = trace(model, x)
    dev = Profile.from_times(graph, np.full(graph.n_nodes, 1e-3))
    srv = dev.scaled(0.1)
    with torch.inference_mode():
        expected = model(x)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()  # nothing listens: every Client computes locally
    s.close()
    clients: list[cic_fast.Client | None] = [None] * N_THREADS

    def work(i: int) -> None:
        cli = cic_fast.Client(
            model,
            x,
            closed,
            device_profile=dev,
            server_profile=srv,
            bandwidth_bps=1e10,
            timeout_s=5.0,
        )
        clients[i] = cli
        try:
            assert_same(cli.infer(x), expected)
        finally:
            cli.close()

    run_threads(work, N_THREADS, timeout_s=240)
    for cli in clients:
        assert cli is not None
        assert_same_graph(cli.graph, graph)


# -- torch.export against running parts ------------------------------------------------


def test_exports_wait_for_running_parts_of_the_same_model():
    """torch.export swaps the model's parameters for fake tensors while it runs; the
    parts (which share them) run inside MODULE_GATE, so they never see it."""
    torch.manual_seed(0)
    model = TwoBranch(16).eval()
    x = torch.randn(1, 3, 16, 16)
    g = trace(model, x)
    exported = trace(model, x, method="export")
    with torch.inference_mode():
        expected = model(x)
    on = np.zeros(g.n_nodes, dtype=bool)
    on[: g.n_nodes // 2] = True
    head, tail, _ = build_parts(g, on)
    exporters = 2
    finished = threading.Barrier(exporters + 1)
    done = threading.Event()
    runs = [0] * N_THREADS

    def work(i: int) -> None:
        if i < exporters:
            try:
                for _ in range(2):
                    assert_same_graph(trace(model, x, method="export"), exported)
            finally:
                finished.wait(120)
            return
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            with torch.inference_mode():
                y = tail(head(x))
            assert_same(y, expected)
            runs[i] += 1

    waiter = threading.Thread(target=lambda: (finished.wait(120), done.set()), daemon=True)
    waiter.start()
    run_threads(work, N_THREADS, timeout_s=180)
    waiter.join(120)
    assert all(runs[i] > 0 for i in range(exporters, N_THREADS))


def test_export_falls_back_under_the_lock_and_fx_errors_leave_no_patch():
    before = patched_methods()
    x = torch.randn(2, 8)
    want = trace(NeedsExport().eval(), x)
    assert want.method == "export"
    got: list[LayerGraph | None] = [None] * 4

    def work(i: int) -> None:
        got[i] = trace(NeedsExport().eval(), x)

    run_threads(work, 4, timeout_s=120)
    for g in got:
        assert g is not None and g.method == "export"
        assert g.names == want.names and g.shapes == want.shapes
    assert patched_methods() == before


# -- the gate ----------------------------------------------------------------------------


def test_module_gate_readers_and_an_exclusive_section():
    gate = fxsafety.ModuleGate()
    inside = threading.Event()
    leave = threading.Event()
    order: list[str] = []

    def reader() -> None:
        with gate:
            with gate:  # nested entries are free
                inside.set()
                leave.wait(10)
                order.append("reader")

    def writer() -> None:
        inside.wait(10)
        with gate.exclusive():
            order.append("writer")

    t = [threading.Thread(target=f, daemon=True) for f in (reader, writer)]
    for th in t:
        th.start()
    inside.wait(10)
    time.sleep(0.05)
    assert order == []  # the writer waits for the reader
    leave.set()
    for th in t:
        th.join(10)
    assert order == ["reader", "writer"]
    # inside the gate or the torch lock an export would wait for itself: refused
    for outer in (gate, fxsafety.TORCH_GLOBALS_LOCK):
        with outer, pytest.raises(RuntimeError, match="wait for itself"):
            with gate.exclusive():
                pass
    with gate.exclusive(), gate:  # the exporter's own module calls pass
        pass


def test_module_gate_holds_new_readers_behind_an_export():
    gate = fxsafety.ModuleGate()
    entered = threading.Event()
    with gate.exclusive():
        t = threading.Thread(target=lambda: (gate.__enter__(), entered.set()), daemon=True)
        t.start()
        assert not entered.wait(0.1)
    assert entered.wait(10)
    t.join(10)


# -- bounded memory, and a tail without a head -------------------------------------------


def _cache_sizes() -> tuple[int, int]:
    from torch.fx import graph_module

    return len(linecache.cache), len(graph_module._loader.eval_cache)


def test_parts_built_and_dropped_leave_no_generated_source_behind():
    torch.manual_seed(0)
    model = TwoBranch(16).eval()
    x = torch.randn(1, 3, 16, 16)
    g = trace(model, x)
    on = np.zeros(g.n_nodes, dtype=bool)
    on[: g.n_nodes // 2] = True
    with torch.inference_mode():
        expected = model(x)
    for _ in range(5):  # warm up whatever torch caches once
        build_parts(g, on)
    gc.collect()
    lines0, evals0 = _cache_sizes()
    head, tail, _ = build_parts(g, on)
    assert _cache_sizes() == (lines0 + 2, evals0 + 2)  # each part registers its source
    del head, tail
    gc.collect()
    assert _cache_sizes() == (lines0, evals0)
    for i in range(200):
        head, tail, _ = build_parts(g, on, head=i % 2 == 0)
        if head is not None:
            with torch.inference_mode():
                assert_same(tail(head(x)), expected)
        del head, tail
    gc.collect()
    assert _cache_sizes() == (lines0, evals0)


def test_traced_programs_leave_no_generated_source_behind():
    torch.manual_seed(0)
    model = TwoBranch(16).eval()
    x = torch.randn(1, 3, 16, 16)
    trace(model, x)
    gc.collect()
    sizes = _cache_sizes()
    for _ in range(20):
        trace(model, x)
    gc.collect()
    assert _cache_sizes() == sizes


def test_build_parts_builds_only_what_is_asked():
    torch.manual_seed(0)
    model = TwoBranch(16).eval()
    x = torch.randn(1, 3, 16, 16)
    g = trace(model, x)
    on = np.zeros(g.n_nodes, dtype=bool)
    on[: g.n_nodes // 2] = True
    head, tail, boundary = build_parts(g, on)
    no_head, tail_only, b2 = build_parts(g, on, head=False)
    head_only, no_tail, b3 = build_parts(g, on, tail=False)
    assert no_head is None and no_tail is None
    np.testing.assert_array_equal(boundary, b2)
    np.testing.assert_array_equal(boundary, b3)
    with torch.inference_mode():
        assert_same(tail_only(head_only(x)), tail(head(x)))
        assert_same(tail_only(head_only(x)), model(x))
    with pytest.raises(ValueError, match="head, the tail or both"):
        build_parts(g, on, head=False, tail=False)
