"""cic_fast.split: head/tail modules for any valid partition.

Invariants checked for every partition tried (optimal ones at 0.1..10^4 Mbit/s,
all-device, all-server, prefix cuts, random down-closed cuts, and every closed set
on small graphs):

1. ``tail(head(x))`` equals ``model(x)``, in the model's output structure;
2. the bytes of the tensors ``head`` returns equal ``partition.bytes_sent``, and
   its keys are the names of ``partition.sent``.

By default the torchvision models run at small inputs to keep the suite fast; set
``CIC_FAST_FULL_MODELS=1`` for canonical input sizes (224, inception 299) and more
random partitions.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import cic_fast

torch = pytest.importorskip("torch")
nn = torch.nn

from cic_fast.core.cost import sent_set  # noqa: E402
from cic_fast.frontend.profiling import Profile, profile  # noqa: E402
from cic_fast.frontend.splitting import Split, split  # noqa: E402
from cic_fast.frontend.tracing import LayerGraph, trace  # noqa: E402
from zoo import (  # noqa: E402
    FULL,
    TORCHVISION,
    NeedsExport,
    TwoInTwoOut,
    ViewMutation,
    tv_model,
)

BANDWIDTHS_MBIT = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4)


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2 if FULL else 1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------- helpers


def flop_profiles(g: LayerGraph, speedup: float = 10.0) -> tuple[Profile, Profile]:
    """Device/server profiles from FLOP counts: a ~2 GFLOP/s device, a faster server."""
    dev = 1e-5 + g.flops / 2e9
    dev[g.inputs] = 0.0
    dev[g.output] = 0.0
    p = Profile.from_times(g, dev)
    return p, p.scaled(1.0 / speedup)


def closed_sets(g: LayerGraph):
    """Every valid partition of a small graph (brute force)."""
    others = [i for i in range(g.n_nodes) if i not in set(g.inputs.tolist())]
    for bits in itertools.product((False, True), repeat=len(others)):
        on = np.ones(g.n_nodes, dtype=bool)
        on[others] = bits
        e = g.edges
        if not (~on[e[:, 0]] & on[e[:, 1]]).any():
            yield on


def down_closed(g: LayerGraph, rng: np.random.Generator) -> np.ndarray:
    """Random valid partition: a few random nodes and all their descendants on the server."""
    succ = g.successors()
    on = np.ones(g.n_nodes, dtype=bool)
    inputs = set(g.inputs.tolist())
    seeds = rng.choice(g.n_nodes, size=min(3, g.n_nodes), replace=False).tolist()
    stack = [s for s in seeds if s not in inputs]
    while stack:
        v = stack.pop()
        if on[v]:
            on[v] = False
            stack.extend(succ[v])
    return on


def prefix(g: LayerGraph, k: int) -> np.ndarray:
    """The first k nodes on the device: always closed (nodes are topologically ordered)."""
    on = np.arange(g.n_nodes) < max(k, int(g.inputs.max()) + 1)
    return on


def check_split(s: Split, model, inputs: tuple, ref) -> None:
    """Both invariants of issue 3, point 3."""
    p = s.partition
    with torch.no_grad():
        sent = s.head(*inputs)
        assert isinstance(sent, dict)
        if p.offloads:
            assert list(sent) == [s.graph.names[i] for i in np.asarray(p.sent).tolist()]
            assert [b.name for b in s.boundary] == list(sent)
            got_bytes = sum(
                t.numel() * t.element_size()
                for v in sent.values()
                for t in torch.utils._pytree.tree_leaves(v)
                if isinstance(t, torch.Tensor)
            )
            assert got_bytes == p.bytes_sent
            assert sum(b.bytes for b in s.boundary) == p.bytes_sent
        else:
            # nothing offloaded: the dict holds the model's outputs, nothing is sent
            assert p.bytes_sent == 0 and s.boundary == ()
            # (constant outputs are recomputed by the tail, never carried)
            feeds_output = {int(u) for u, v in s.graph.edges.tolist() if v == s.graph.output}
            assert list(sent) == [s.graph.names[i] for i in sorted(feeds_output)]
        out = s.tail(sent)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def run_partitions(model, inputs, g, dev, srv, masks) -> int:
    with torch.no_grad():
        ref = model(*inputs)
    seen = set()
    for on in masks:
        key = on.tobytes()
        if key in seen:
            continue
        seen.add(key)
        s = split(
            model,
            inputs,
            bandwidth_bps=10e6,
            device_profile=dev,
            server_profile=srv,
            on_device=on,
            graph=g,
        )
        check_split(s, model, inputs, ref)
    return len(seen)


# ---------------------------------------------------------------- small models


class WithConstants(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.register_buffer("scale", torch.full((16,), 2.0))

    def forward(self, x):
        pos = torch.arange(16, dtype=torch.float32).reshape(1, 16) * self.scale
        big = torch.ones(64, 16)  # large constant: must never be sent
        return self.lin(x + pos) + big[: x.shape[0]], pos.sum()


class InPlace(nn.Module):
    def forward(self, x):
        y = x * 1.5
        s = y.sum(dim=1, keepdim=True)
        y.add_(1.0)
        return torch.relu_(y * 2) + s


class ChunkCat(nn.Module):
    """Tuple-valued layer (chunk) and several branches that meet again."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1)

    def forward(self, x):
        a, b = torch.chunk(self.conv(x), 2, dim=1)
        return torch.cat([a.relu(), b.sigmoid(), x], dim=1).flatten(1)


SMALL = [
    (TwoInTwoOut, (torch.randn(3, 4), torch.randn(3, 6))),
    (WithConstants, (torch.randn(4, 16),)),
    (InPlace, (torch.randn(2, 3),)),
    (ViewMutation, (torch.randn(2, 3),)),
    (ChunkCat, (torch.randn(1, 4, 3, 3),)),
    (NeedsExport, (torch.randn(2, 8),)),
]


@pytest.mark.parametrize(("cls", "inputs"), SMALL, ids=[c.__name__ for c, _ in SMALL])
def test_every_closed_partition_of_small_models(cls, inputs):
    model = cls().eval()
    g = trace(model, inputs)
    assert g.n_nodes <= 14
    dev, srv = flop_profiles(g)
    n = run_partitions(model, inputs, g, dev, srv, closed_sets(g))
    assert n >= 3


def test_constants_are_never_sent():
    model = WithConstants().eval()
    x = torch.randn(4, 16)
    g = trace(model, (x,))
    dev, srv = flop_profiles(g)
    for on in closed_sets(g):
        s = split(model, (x,), device_profile=dev, server_profile=srv, on_device=on, graph=g)
        with torch.no_grad():
            sent = s.head(x)
        for v in sent.values():
            if isinstance(v, torch.Tensor):
                assert v.shape[0] == 4  # input-sized data only, never the 64x16 constant
    # only the input on the device: exactly the input is sent
    on = np.zeros(g.n_nodes, dtype=bool)
    on[g.inputs] = True
    s = split(model, (x,), device_profile=dev, server_profile=srv, on_device=on, graph=g)
    assert s.bytes_sent == x.numel() * 4


def test_min_cut_partitions_on_small_model():
    model = TwoInTwoOut().eval()
    inputs = (torch.randn(3, 4), torch.randn(3, 6))
    g = trace(model, inputs)
    dev, srv = flop_profiles(g, speedup=100.0)
    with torch.no_grad():
        ref = model(*inputs)
    for mbit in BANDWIDTHS_MBIT:
        for rtt in (0.0, 0.01):
            s = split(
                model,
                inputs,
                bandwidth_bps=mbit * 1e6,
                device_profile=dev,
                server_profile=srv,
                rtt_s=rtt,
                graph=g,
            )
            check_split(s, model, inputs, ref)
            assert s.latency_s == pytest.approx(s.device_s + s.transfer_s + s.server_s + s.rtt_s)
            assert "predicted latency" in s.summary()


def test_split_uses_the_planner_and_checks_it():
    model, inputs = tv_model("googlenet")
    g = trace(model, inputs)
    dev, srv = flop_profiles(g, speedup=100.0)
    core = cic_fast.Graph(g.edges, dev.seconds, srv.seconds, g.out_bytes)
    planner = cic_fast.Planner.from_profiles(g, dev, srv, rtt_s=0.002)
    for mbit in BANDWIDTHS_MBIT:
        bw = mbit * 1e6
        s = split(model, inputs, bandwidth_bps=bw, device_profile=dev, server_profile=srv,
                  rtt_s=0.002, graph=g, planner=planner)  # fmt: skip
        # the plan's decision is the exact optimum
        assert s.latency_s == pytest.approx(core.min_cut(bw, 0.002).latency_s, rel=1e-9)
    with pytest.raises(ValueError, match="planner was built for"):
        split(model, inputs, bandwidth_bps=1e6, device_profile=dev, server_profile=srv.scaled(0.5),
              rtt_s=0.002, graph=g, planner=planner)  # fmt: skip
    with pytest.raises(ValueError, match="planner was built for"):
        split(model, inputs, bandwidth_bps=1e6, device_profile=dev, server_profile=srv,
              rtt_s=0.0, graph=g, planner=planner)  # fmt: skip


def test_split_rejects_bad_requests():
    model = TwoInTwoOut().eval()
    inputs = (torch.randn(3, 4), torch.randn(3, 6))
    g = trace(model, inputs)
    dev, srv = flop_profiles(g)
    kw = dict(device_profile=dev, server_profile=srv, graph=g)
    with pytest.raises(ValueError, match="bandwidth_bps"):
        split(model, inputs, **kw)
    on = np.ones(g.n_nodes, dtype=bool)
    on[g.inputs[0]] = False
    with pytest.raises(ValueError, match="input"):
        split(model, inputs, on_device=on, bandwidth_bps=1e6, **kw)
    with pytest.raises(ValueError, match="length"):
        split(model, inputs, on_device=on[:-1], bandwidth_bps=1e6, **kw)
    on = np.ones(g.n_nodes, dtype=bool)
    u = int(g.edges[g.edges[:, 0] >= 2][0, 0])  # a non-input node with a successor
    on[u] = False
    with pytest.raises(ValueError, match="closed"):
        split(model, inputs, on_device=on, bandwidth_bps=1e6, **kw)
    other = trace(InPlace().eval(), (torch.randn(2, 3),))
    wrong, _ = flop_profiles(other)
    with pytest.raises(ValueError, match="does not match"):
        split(model, inputs, bandwidth_bps=1e6, device_profile=wrong, server_profile=srv, graph=g)
    loaded = LayerGraph.from_json(g.to_json())
    with pytest.raises(ValueError, match="program"):
        split(
            model, inputs, bandwidth_bps=1e6, device_profile=dev, server_profile=srv, graph=loaded
        )


# ---------------------------------------------------------------- torchvision


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_partitions(name):
    model, inputs = tv_model(name)
    g = trace(model, inputs)
    assert (g.edges[:, 0] < g.edges[:, 1]).all()
    dev, srv = flop_profiles(g)
    masks = []
    for mbit in BANDWIDTHS_MBIT:
        s = split(
            model,
            inputs,
            bandwidth_bps=mbit * 1e6,
            device_profile=dev,
            server_profile=srv,
            graph=g,
        )
        masks.append(np.asarray(s.partition.on_device, dtype=bool))
    all_server = np.zeros(g.n_nodes, dtype=bool)
    all_server[g.inputs] = True
    masks += [np.ones(g.n_nodes, dtype=bool), all_server]
    rng = np.random.default_rng(sum(map(ord, name)))
    n_random = 8 if FULL else 3
    masks += [prefix(g, int(k)) for k in rng.integers(1, g.n_nodes, size=n_random)]
    masks += [down_closed(g, rng) for _ in range(n_random)]
    n = run_partitions(model, inputs, g, dev, srv, masks)
    assert n >= 4


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_cut_through_several_branches(name):
    model, inputs = tv_model(name)
    g = trace(model, inputs)
    dev, srv = flop_profiles(g)
    sizes = [len(sent_set(g.edges, prefix(g, k))) for k in range(g.n_nodes)]
    widest = int(np.argmax(sizes))
    assert sizes[widest] >= 3, "expected a cut through an inception block's branches"
    # the widest cut and two more cutting through at least three branches
    wide = [k for k in range(g.n_nodes) if sizes[k] >= 3]
    ks = [widest, *wide[:: max(1, len(wide) // 2)][:2]]
    n = run_partitions(model, inputs, g, dev, srv, [prefix(g, k) for k in ks])
    assert n >= 1


def test_measured_profile_end_to_end(tmp_path):
    """trace -> profile -> save/load -> min-cut split at every bandwidth -> run."""
    model, inputs = tv_model("resnet18")
    g = trace(model, inputs)
    dev = profile(model, inputs, graph=g, repeats=2, warmup=1, progress=False, threads=1)
    dev.save(tmp_path / "dev.json")
    dev = Profile.load(tmp_path / "dev.json", g)
    srv = dev.scaled(0.1)
    with torch.no_grad():
        ref = model(*inputs)
    for mbit in BANDWIDTHS_MBIT:
        s = split(
            model,
            inputs,
            bandwidth_bps=mbit * 1e6,
            device_profile=dev,
            server_profile=srv,
            rtt_s=0.005,
            graph=g,
        )
        check_split(s, model, inputs, ref)
