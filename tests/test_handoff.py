"""Stages hand their results on: nothing is traced, planned or fingerprinted twice.

``profile``, ``split``, ``Client`` and ``Server`` take the traced LayerGraph (and the
Client and ``split`` a Planner) in place of ``(model, example_inputs)`` and the two
profiles. Spies count the traces (``cic_fast.frontend.tracing.trace`` and the
tracers it calls, ``fxsafety.symbolic_trace`` and ``torch.export.export``), the
model fingerprint computations and the core Graphs built; every count is checked
against the convenience form, where it is not zero. Round trips run a Server on
127.0.0.1 port 0 in this process (marked slow).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import cic_fast  # noqa: E402
from cic_fast.core import graph as core_graph  # noqa: E402
from cic_fast.core.planner import Planner  # noqa: E402
from cic_fast.frontend import fxsafety, tracing  # noqa: E402
from cic_fast.frontend.profiling import Profile, profile  # noqa: E402
from cic_fast.frontend.splitting import check_planner, split  # noqa: E402
from cic_fast.frontend.tracing import LayerGraph, trace  # noqa: E402
from cic_fast.runtime import fingerprint  # noqa: E402
from cic_fast.runtime.client import Client  # noqa: E402
from cic_fast.runtime.server import Server  # noqa: E402
from zoo import TwoBranch, TwoInTwoOut, assert_same  # noqa: E402

TIMEOUT_S = 5.0
NOWHERE = ("127.0.0.1", 9)  # a Client connects only when it sends


class Counter:
    """Calls of the spied functions."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.trace = 0
        self.tracers = 0
        self.fingerprints = 0
        self.graphs = 0


@pytest.fixture
def spy(monkeypatch) -> Counter:
    """Count traces, fx/export tracer runs, fingerprint computations and core Graphs."""
    c = Counter()

    def wrap(owner, name, field):
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            setattr(c, field, getattr(c, field) + 1)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    wrap(tracing, "trace", "trace")
    wrap(fxsafety, "symbolic_trace", "tracers")
    wrap(torch.export, "export", "tracers")
    wrap(fingerprint, "model_fingerprint", "fingerprints")
    wrap(core_graph.Graph, "__init__", "graphs")
    return c


class Setup:
    """A model traced once, its profiles (device 10x slower) and its Planner."""

    def __init__(self, rtt_s: float = 0.0) -> None:
        torch.manual_seed(0)
        self.model = TwoBranch(16).eval()
        self.x = torch.randn(1, 3, 16, 16)
        self.graph = trace(self.model, self.x)
        n = self.graph.n_nodes
        self.dev = Profile.from_times(self.graph, np.full(n, 1e-3))
        self.srv = self.dev.scaled(0.1)
        self.planner = Planner.from_profiles(self.graph, self.dev, self.srv, rtt_s=rtt_s)
        with torch.inference_mode():
            self.expected = self.model(self.x)

    def prefix(self, k: int) -> np.ndarray:
        on = np.zeros(self.graph.n_nodes, dtype=bool)
        on[:k] = True
        return on


@pytest.fixture
def setup() -> Setup:
    return Setup()


# -- the traced program remembers what the later stages need ---------------------------


def test_trace_keeps_example_inputs_and_output_structure():
    model = TwoInTwoOut().eval()
    x, y = torch.randn(3, 4), torch.randn(3, 6)
    for method in ("fx", "export"):
        g = trace(model, (x, y), method=method)
        prog = g.program
        # copies (the trace never runs the model on the caller's tensors), equal values
        assert torch.equal(prog.example_inputs[0], x) and torch.equal(prog.example_inputs[1], y)
        assert prog.example_inputs[0] is not x
        assert len(prog.example_inputs) == 2
        out = model(x, y)
        leaves, spec = torch.utils._pytree.tree_flatten(out)
        got_spec, meta = prog.output_structure()
        assert got_spec == spec
        assert meta == tuple((t.dtype, tuple(t.shape)) for t in leaves)
    # a lone tensor is kept as a one-tuple
    z = torch.randn(1, 3, 16, 16)
    kept = trace(TwoBranch(16).eval(), z).program.example_inputs
    assert len(kept) == 1 and torch.equal(kept[0], z)


def test_output_structure_of_a_program_built_by_hand(setup):
    prog = setup.graph.program
    # a program without the trace's record runs its module once on its inputs
    bare = tracing.TracedProgram(
        module=prog.module, fx_nodes=prog.fx_nodes, example_inputs=(setup.x,)
    )
    assert bare.output_structure() == prog.output_structure()
    with pytest.raises(ValueError, match="example inputs"):
        tracing.TracedProgram(module=prog.module, fx_nodes=prog.fx_nodes).output_structure()


# -- profile ---------------------------------------------------------------------------


def test_profile_of_a_traced_graph_traces_nothing(setup, spy):
    g = setup.graph
    p = profile(g, repeats=1, warmup=0, progress=False, threads=1)
    assert spy.trace == 0 and spy.tracers == 0
    assert p.names == g.names and p.fingerprint == g.fingerprint
    assert p.n_nodes == g.n_nodes and p.total_s is not None and p.total_s > 0
    p.check(g)
    # the graph= form without inputs uses the graph's own: no trace either
    q = profile(setup.model, graph=g, repeats=1, warmup=0, progress=False, threads=1)
    assert spy.trace == 0 and q.names == g.names
    # the convenience form traces exactly once, and profiles the same graph
    r = profile(setup.model, setup.x, repeats=1, warmup=0, progress=False, threads=1)
    assert spy.trace == 1 and spy.tracers == 1
    assert r.names == p.names and r.fingerprint == p.fingerprint
    assert r.seconds.shape == p.seconds.shape


def test_profile_refuses_what_it_cannot_run(setup):
    g = setup.graph
    with pytest.raises(ValueError, match="program"):
        profile(LayerGraph.from_json(g.to_json()), progress=False)
    with pytest.raises(TypeError, match="example_inputs"):
        profile(g, setup.x, progress=False)
    with pytest.raises(TypeError, match="example_inputs"):
        profile(setup.model, progress=False)
    with pytest.raises(TypeError, match="LayerGraph"):
        profile("resnet18", progress=False)
    bare = LayerGraph(
        g.names,
        g.ops,
        g.targets,
        g.edges,
        g.out_bytes,
        g.flops,
        g.inputs,
        g.shapes,
        program=tracing.TracedProgram(module=g.program.module, fx_nodes=g.program.fx_nodes),
    )
    with pytest.raises(ValueError, match="example inputs"):
        profile(bare, progress=False)


# -- split -----------------------------------------------------------------------------


def test_split_of_a_traced_graph_with_a_planner(spy):
    s0 = Setup(rtt_s=0.002)
    spy.reset()
    g, planner = s0.graph, s0.planner
    seen = set()
    for bw in (1e3, 1e5, 1e7, 1e10):
        s = split(g, bandwidth_bps=bw, planner=planner)
        assert np.array_equal(s.partition.on_device, planner.decide(bw).on_device)
        assert s.partition.latency_s == planner.decide(bw).latency_s
        if s.partition.offloads:
            assert s.rtt_s == 0.002  # the planner's round trip
        with torch.inference_mode():
            assert_same(s0.expected, s.tail(s.head(s0.x)))
        seen.add(s.partition.n_on_device)
    assert len(seen) >= 2, seen
    # a forced partition is priced by the planner's graph
    on = s0.prefix(4)
    s = split(g, on_device=on, bandwidth_bps=1e6, planner=planner)
    assert s.latency_s == planner.graph.evaluate(on, 1e6, 0.002).latency_s
    with torch.inference_mode():
        assert_same(s0.expected, s.tail(s.head(s0.x)))
    assert spy.trace == 0 and spy.tracers == 0
    assert spy.graphs == 0  # nothing re-planned, no Graph built


def test_split_convenience_form_traces_once(setup, spy):
    s = split(
        setup.model,
        setup.x,
        bandwidth_bps=1e7,
        device_profile=setup.dev,
        server_profile=setup.srv,
    )
    assert spy.trace == 1
    with torch.inference_mode():
        assert_same(setup.expected, s.tail(s.head(setup.x)))


def test_split_refuses_bad_combinations(setup):
    g, planner = setup.graph, setup.planner
    with pytest.raises(ValueError, match="device_profile"):
        split(g, bandwidth_bps=1e6)
    with pytest.raises(ValueError, match="server_profile"):
        split(g, bandwidth_bps=1e6, device_profile=setup.dev)
    with pytest.raises(TypeError, match="example_inputs"):
        split(g, setup.x, bandwidth_bps=1e6, planner=planner)
    with pytest.raises(ValueError, match="program"):
        split(LayerGraph.from_json(g.to_json()), bandwidth_bps=1e6, planner=planner)
    other = trace(TwoInTwoOut().eval(), (torch.randn(3, 4), torch.randn(3, 6)))
    p_other = Planner.from_profiles(
        other,
        Profile.from_times(other, np.full(other.n_nodes, 1e-3)),
        Profile.from_times(other, np.full(other.n_nodes, 1e-4)),
    )
    with pytest.raises(ValueError, match="planner was built for another graph"):
        split(g, bandwidth_bps=1e6, planner=p_other)
    with pytest.raises(ValueError, match="planner was built for other profiles"):
        split(g, bandwidth_bps=1e6, planner=planner, server_profile=setup.srv.scaled(0.5))
    with pytest.raises(ValueError, match="planner was built for another rtt_s"):
        split(g, bandwidth_bps=1e6, planner=planner, rtt_s=0.01)


def test_check_planner_compares_every_array(setup):
    g, planner = setup.graph, setup.planner
    check_planner(g, planner, device_profile=setup.dev, server_profile=setup.srv, rtt_s=0.0)
    # same size, one more byte on one layer: another graph
    more = np.asarray(g.out_bytes).copy()
    more[1] += 1
    p2 = Planner(g.edges, setup.dev.seconds, setup.srv.seconds, more, names=g.names)
    with pytest.raises(ValueError, match="output bytes"):
        check_planner(g, p2)
    # same arrays, other names: another model
    renamed = Planner(g.edges, setup.dev.seconds, setup.srv.seconds, g.out_bytes, names=[
        f"x{i}" for i in range(g.n_nodes)
    ])  # fmt: skip
    with pytest.raises(ValueError, match="names"):
        check_planner(g, renamed)
    # a planner without names (e.g. built from arrays) is compared on the arrays
    check_planner(g, Planner(g.edges, setup.dev.seconds, setup.srv.seconds, g.out_bytes))


# -- Client and Server -----------------------------------------------------------------


def test_client_handed_a_traced_graph_builds_nothing(setup, spy):
    g, planner = setup.graph, setup.planner
    a = Client(g, address=NOWHERE, planner=planner)
    b = Client(g, None, NOWHERE, planner=planner)
    assert spy.trace == 0 and spy.tracers == 0 and spy.graphs == 0
    assert spy.fingerprints == 1  # one per traced graph, not per Client
    for cli in (a, b):
        assert cli.graph is g and cli.planner is planner
        assert cli.model is g.program.module
        assert cli.rtt_s == planner.rtt_s
    assert a.fingerprint == b.fingerprint
    # the convenience form traces once and plans once, as before
    c = Client(setup.model, setup.x, NOWHERE, device_profile=setup.dev, server_profile=setup.srv)
    assert spy.trace == 1 and spy.graphs >= 1
    assert c.model is setup.model
    # the same model and weights: the same fingerprint, whichever way it was given
    assert c.fingerprint == a.fingerprint


def test_client_and_server_refuse_bad_combinations(setup):
    g, planner = setup.graph, setup.planner
    with pytest.raises(TypeError, match="address"):
        Client(g, planner=planner)
    with pytest.raises(TypeError, match="example_inputs"):
        Client(g, NOWHERE, planner=planner)  # the address in the inputs' place
    with pytest.raises(TypeError, match="example_inputs"):
        Client(setup.model, address=NOWHERE, planner=planner)
    with pytest.raises(TypeError, match="LayerGraph"):
        Client("resnet18", address=NOWHERE, planner=planner)
    with pytest.raises(TypeError, match="graph"):
        Client(g, address=NOWHERE, planner=planner, graph=trace(setup.model, setup.x))
    with pytest.raises(ValueError, match="planner="):
        Client(g, address=NOWHERE)
    with pytest.raises(ValueError, match="server_profile"):
        Client(g, address=NOWHERE, device_profile=setup.dev)
    with pytest.raises(ValueError, match="program"):
        Client(LayerGraph.from_json(g.to_json()), address=NOWHERE, planner=planner)
    other = Planner(g.edges, setup.dev.seconds * 2, setup.srv.seconds, g.out_bytes)
    with pytest.raises(ValueError, match="planner was built for other profiles"):
        Client(g, address=NOWHERE, planner=other, device_profile=setup.dev)
    small = trace(TwoInTwoOut().eval(), (torch.randn(3, 4), torch.randn(3, 6)))
    with pytest.raises(ValueError, match="planner was built for another graph"):
        Client(small, address=NOWHERE, planner=planner)
    with pytest.raises(ValueError, match="rtt_s"):
        Client(g, address=NOWHERE, planner=planner, rtt_s=0.5)
    with pytest.raises(TypeError, match="device_runner"):
        Client(g, address=NOWHERE, planner=planner, device_runner=3)
    with pytest.raises(ValueError, match="program"):
        Server(LayerGraph.from_json(g.to_json()))
    with pytest.raises(TypeError, match="example_inputs"):
        Server(g, setup.x)
    with pytest.raises(TypeError, match="example_inputs"):
        Server(setup.model)


@pytest.mark.slow
def test_round_trip_handed_on_traces_and_hashes_once(setup, spy):
    g, planner = setup.graph, setup.planner
    with Server(g, timeout_s=TIMEOUT_S).start() as srv:
        cli = Client(g, address=srv.address, planner=planner, timeout_s=TIMEOUT_S)
        with cli:
            for on in (setup.prefix(1), setup.prefix(3), setup.prefix(6)):
                assert_same(setup.expected, cli.infer_partition(on, setup.x))
                assert cli.last is not None and not cli.last.fallback, cli.last.error
            for bw in (1e3, 1e6, 1e10):
                cli.bandwidth_bps = bw
                assert_same(setup.expected, cli.infer(setup.x))
                assert cli.last is not None and not cli.last.fallback, cli.last.error
                assert np.array_equal(cli.last.partition.on_device, planner.decide(bw).on_device)
        assert srv.stats["requests"] >= 4 and srv.stats["errors"] == 0
        # a Client of the convenience form is served by the Server of the graph
        with Client(
            setup.model,
            setup.x,
            srv.address,
            device_profile=setup.dev,
            server_profile=setup.srv,
            bandwidth_bps=1e10,
            timeout_s=TIMEOUT_S,
        ) as conv:
            assert_same(setup.expected, conv.infer(setup.x))
            assert conv.last is not None and not conv.last.fallback, conv.last.error
    assert spy.trace == 1  # the convenience Client's own trace, nothing else
    assert spy.fingerprints == 2  # the graph's (Server + Client), the convenience Client's


# -- the fingerprint cache -------------------------------------------------------------


def test_fingerprint_cache_notices_changed_weights(setup, spy):
    g = setup.graph
    f0 = fingerprint.traced_fingerprint(g)
    assert fingerprint.traced_fingerprint(g) == f0 and spy.fingerprints == 1
    assert f0 == fingerprint.model_fingerprint(setup.model, g)  # the same hash
    spy.fingerprints = 0
    original = {k: v.clone() for k, v in setup.model.state_dict().items()}

    torch.manual_seed(1)
    setup.model.load_state_dict(TwoBranch(16).state_dict())  # copied in place: same tensors
    f1 = fingerprint.traced_fingerprint(g)
    assert f1 != f0 and spy.fingerprints == 1
    assert fingerprint.traced_fingerprint(g) == f1 and spy.fingerprints == 1

    with torch.no_grad():
        setup.model.head.bias.add_(1.0)  # an in-place update
    f2 = fingerprint.traced_fingerprint(g)
    assert f2 not in (f0, f1) and spy.fingerprints == 2

    # a replaced parameter (a new tensor object) of the traced program
    fc = g.program.module.head
    weight = fc.weight
    fc.weight = nn.Parameter(torch.zeros_like(weight))
    f3 = fingerprint.traced_fingerprint(g)
    assert f3 not in (f0, f1, f2) and spy.fingerprints == 3

    fc.weight = weight
    setup.model.load_state_dict(original)
    assert fingerprint.traced_fingerprint(g) == f0 and spy.fingerprints == 4


def test_fingerprint_cache_is_thread_safe(setup, spy):
    g = setup.graph
    results: list[str] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        results.append(fingerprint.traced_fingerprint(g))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and len(set(results)) == 1
    assert spy.fingerprints == 1


def test_top_level_names():
    # the stages are the package's public names, as documented
    assert cic_fast.profile is profile and cic_fast.split is split
    assert cic_fast.Client is Client and cic_fast.Server is Server
