"""Issue 12, point 1: constructs that used to split silently wrong, or not at all.

Each model is traced and then cut at *every* closed partition whose inputs are on
the device (brute force over the small graph), and each cut is checked against
the model: values, dtypes and output structure of ``tail(head(x))``, and the
tensor bytes ``head`` returns equal ``partition.bytes_sent``. A mask that the
cost model accepts must be accepted by ``split`` too.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from cic_fast.core.cost import check_partition  # noqa: E402
from cic_fast.frontend.profiling import Profile  # noqa: E402
from cic_fast.frontend.splitting import split  # noqa: E402
from cic_fast.frontend.tracing import LayerGraph, TraceError, trace  # noqa: E402
from cic_fast.runtime import messages as M  # noqa: E402
from cic_fast.runtime import wire as W  # noqa: E402
from zoo import ViewMutation  # noqa: E402


def closed_masks(g: LayerGraph, limit: int = 2000):
    """Every partition with the inputs on the device and no server->device edge.

    Depth first in node order (topological): a node may join the device only if
    all its predecessors are there; inputs always do.
    """
    preds = g.predecessors()
    inputs = set(g.inputs.tolist())
    on = np.zeros(g.n_nodes, dtype=bool)
    out: list[np.ndarray] = []

    def walk(i: int) -> None:
        if i == g.n_nodes:
            out.append(on.copy())
            assert len(out) <= limit, "brute force is for small graphs"
            return
        can = all(on[p] for p in preds[i])
        for v in (True,) if i in inputs else ((False, True) if can else (False,)):
            on[i] = v
            walk(i + 1)
        on[i] = False

    walk(0)
    return out


def tensor_bytes(value) -> int:
    return sum(
        t.numel() * t.element_size()
        for t in torch.utils._pytree.tree_leaves(value)
        if isinstance(t, torch.Tensor)
    )


def same(got, want) -> None:
    """Equal structure, dtypes and values (bit for bit: the same kernels run)."""
    a, spec_a = torch.utils._pytree.tree_flatten(got)
    b, spec_b = torch.utils._pytree.tree_flatten(want)
    assert spec_a == spec_b
    for x, y in zip(a, b, strict=True):
        assert type(x) is type(y)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
        else:
            assert x == y


def every_cut(model, *inputs, wire: bool = True) -> tuple[LayerGraph, int]:
    """Split at every closed mask and check it; returns (graph, masks checked).

    With ``wire``, the head's dict also goes through the runtime's encoding (an
    INFER frame, as a Client sends it) and the tail runs on what was decoded.
    """
    g = trace(model, inputs)
    with torch.no_grad():
        want = model(*[x.clone() for x in inputs])
    prof = Profile.from_times(g, np.full(g.n_nodes, 1e-3))
    n = 0
    for on in closed_masks(g):
        check_partition(g.edges, g.n_nodes, on)  # the cost model takes it ...
        s = split(g, on_device=on, device_profile=prof, server_profile=prof.scaled(0.1))
        with torch.no_grad():
            sent = s.head(*[x.clone() for x in inputs])
            if s.partition.offloads:
                assert list(sent) == [g.names[i] for i in s.partition.sent.tolist()]
                assert tensor_bytes(sent) == s.partition.bytes_sent
                if wire:
                    codec = s.head.codec
                    try:
                        leaves = dict(codec.flatten(sent))
                    except TypeError as e:
                        # a view and its base, in a model that writes: the Client runs
                        # such a request locally (test_a_view_and_its_base_...)
                        assert "share memory" in str(e)
                        same(s.tail(sent), want)
                        n += 1
                        continue
                    parts, _ = M.encode_request(7, on, leaves)
                    _, got_on, tensors = M.decode_request(b"".join(parts), W.Limits())
                    assert (got_on == on).all()
                    sent = codec.restore(tensors)
            same(s.tail(sent), want)
        n += 1
    return g, n


# ---------------------------------------------------------------- writes into fresh tensors


class FreshAdd(nn.Module):
    """``buf = torch.zeros(...); buf.add_(conv(x))``: an input-free tensor written."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        buf = torch.zeros(1, 8, 4, 4)
        buf.add_(self.c(x))
        return buf.relu()


class FreshAddLike(nn.Module):
    """The same with ``x.new_zeros``: fx traces it (the buffer reads x)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        buf = x.new_zeros(1, 8, 4, 4)
        buf.add_(self.c(x))
        return buf.relu() * 2


class SliceAssign(nn.Module):
    """``out[:, :4] = a(x)``: slice assignment into a fresh tensor."""

    def __init__(self, like: bool) -> None:
        super().__init__()
        self.like = like
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        out = x.new_zeros(1, 8, 4, 4) if self.like else torch.zeros(1, 8, 4, 4)
        out[:, :4] = self.a(x)
        out[:, 4:] = self.b(x)
        return out * 2


@pytest.mark.parametrize(
    "model", [FreshAdd(), FreshAddLike(), SliceAssign(False), SliceAssign(True)], ids=repr
)
def test_writes_into_fresh_tensors_split_everywhere(model):
    torch.manual_seed(0)
    g, n = every_cut(model.eval(), torch.randn(1, 3, 4, 4))
    assert n >= 5
    # the inputs are the only sources: no mask is refused for an input-free node
    sources = set(range(g.n_nodes)) - set(g.edges[:, 1].tolist())
    assert sources == set(g.inputs.tolist())


class BufferWrite(nn.Module):
    """Input data written into a buffer, then read: module state each side holds."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("mean", torch.zeros(4))

    def forward(self, x):
        self.mean.copy_(x.mean(0))
        return self.lin(x) + self.mean


def test_a_write_into_module_state_is_never_cut_silently():
    model = BufferWrite().eval()
    with pytest.raises(TraceError, match=r"writes input data into 'mean'"):
        trace(model, torch.randn(3, 4), method="fx")
    # torch.export makes the write out-of-place: the read gets the value from the graph
    g, n = every_cut(model, torch.randn(3, 4))
    assert g.method == "export" and n >= 3


# ---------------------------------------------------------------- inputs, varargs


class WritesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        x.mul_(2)
        return self.c(x) + x


def test_a_model_that_writes_its_input():
    x = torch.randn(1, 3, 4, 4)
    keep = x.clone()
    _, n = every_cut(WritesInput().eval(), x)
    assert n >= 3 and torch.equal(x, keep)


class VarArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, *xs):
        return self.lin(xs[0]) + xs[1] * xs[2]


def test_varargs_with_three_arguments():
    g, n = every_cut(VarArgs().eval(), torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4))
    # fx traces *xs as one input node holding a tuple of the three tensors
    assert len(g.inputs) == 1 and g.shapes[0].count("f32") == 3 and n >= 3


# ---------------------------------------------------------------- non-tensor values at a cut


class Sizes(nn.Module):
    """Shape integers (a torch.Size, its items, their product) cross many cuts."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        b, n, c = x.shape
        return self.lin(x).reshape(b * n, c).sum(0)


class Structured(nn.Module):
    """Tuple-valued nodes (chunk, topk's structseq) and a scalar from the data."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        a, b = self.lin(x).chunk(2, dim=-1)
        top = torch.topk(x, 2)
        scale = x.abs().max().item()
        return torch.cat([a * x.shape[0], b / scale], -1), top.values, top.indices


@pytest.mark.parametrize(
    ("model", "x"), [(Sizes(), torch.randn(2, 3, 8)), (Structured(), torch.randn(2, 8))], ids=repr
)
def test_non_tensor_values_travel_on_the_wire(model, x):
    g, n = every_cut(model.eval(), x)
    assert n >= 10
    assert any(not s.startswith(("f32", "i64", "-", "bool")) for s in g.shapes), g.shapes


def test_codec_refuses_a_value_unlike_the_trace():
    g = trace(Sizes().eval(), torch.randn(2, 3, 8))
    size = g.names.index(next(n for n, s in zip(g.names, g.shapes, strict=True) if "int" in s))
    on = np.arange(g.n_nodes) <= size
    s = split(g, on_device=on, device_profile=Profile.from_times(g, np.ones(g.n_nodes)),
              server_profile=Profile.from_times(g, np.ones(g.n_nodes)))  # fmt: skip
    sent = s.head(torch.randn(2, 3, 8))
    bad = {k: ((1.5, 2, 3) if k == g.names[size] else v) for k, v in sent.items()}
    with pytest.raises(TypeError, match="not int"):
        s.head.codec.flatten(bad)
    leaves = {leaf.name for leaf in s.head.codec.leaves}
    assert {name for name, _ in s.head.codec.flatten(sent)} == leaves


class Transposed(nn.Module):
    """A non-contiguous tensor at the cut, and a ``view`` after it that needs its strides."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        y = self.lin(x).transpose(1, 2) * 2  # (2, 6, 4), not contiguous
        return y.transpose(1, 2).view(2, 24) + 1


@pytest.mark.parametrize("method", ["fx", "export"])
def test_a_non_contiguous_tensor_keeps_its_layout_across_the_wire(method):
    model, x = Transposed().eval(), torch.randn(2, 4, 6)
    g = trace(model, x, method=method)
    mul = next(i for i, s in enumerate(g.names) if s.startswith("mul"))
    assert g.program.templates[mul][3] is not None  # traced strides recorded
    _, n = every_cut(model, x)  # the wire sends it contiguous; the tail gets the layout back
    assert n >= 4


# ---------------------------------------------------------------- torch.cond, grads, constants


class Cond(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cond(
            x.sum() > 0, lambda t: self.lin(t).relu(), lambda t: self.lin(t) * 2, (x,)
        )


class Constant(nn.Module):
    """A result that ignores the input: the output node reads no input."""

    def forward(self, x):
        return torch.ones(3) * 2


def test_torch_cond_splits():
    torch.manual_seed(1)
    _, n = every_cut(Cond().eval(), torch.randn(2, 4))
    assert n >= 3


def test_parameters_that_require_grad():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)).eval()
    assert all(p.requires_grad for p in model.parameters())
    _, n = every_cut(model, torch.randn(2, 4))
    assert n == 5  # a chain of 5 nodes after the input: 5 cut points


def test_an_output_that_reads_no_input_goes_anywhere():
    _, n = every_cut(Constant().eval(), torch.randn(2, 4))
    assert n == 2  # all-device, and the output on the server


# ---------------------------------------------------------------- traces repeated, shapes


class CachesAcrossCalls(nn.Module):
    """timm's LeViT caches attention biases in a dict keyed by device."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bias = nn.Parameter(torch.randn(4, 4))
        self.register_buffer("idx", torch.tensor([1, 0, 3, 2]))
        self.cache: dict[str, torch.Tensor] = {}

    def biases(self, device):
        key = str(device)
        if key not in self.cache:
            self.cache[key] = self.bias[:, self.idx]
        return self.cache[key]

    def forward(self, x):
        return self.lin(x) @ self.biases(x.device)


def test_tracing_the_same_model_twice():
    model, x = CachesAcrossCalls().eval(), torch.randn(2, 4)
    first = trace(model, x)
    second = trace(model, x)
    assert first.method == second.method == "fx"
    assert first.fingerprint == second.fingerprint
    assert all(isinstance(v, torch.Tensor) for v in model.cache.values())
    every_cut(model, x)
    with torch.no_grad():
        same(model(x), first.program.module(x))


class BranchOnShape(nn.Module):
    """fx cannot branch on a shape; torch.export takes the branch once, at trace time."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        y = self.c(x)
        if x.shape[-1] > 2:
            return y[..., ::2, ::2]
        return y


def test_an_export_trace_refuses_other_shapes():
    model = BranchOnShape().eval()
    g, n = every_cut(model, torch.randn(1, 3, 4, 4))
    assert g.method == "export" and n >= 2
    prof = Profile.from_times(g, np.full(g.n_nodes, 1e-3))
    for k in range(1, g.n_nodes):
        s = split(g, on_device=np.arange(g.n_nodes) < k, device_profile=prof, server_profile=prof)
        with pytest.raises(ValueError, match=r"traced by torch.export at float32\[1, 3, 4, 4\]"):
            s.head(torch.randn(1, 3, 2, 2))
        with torch.no_grad():
            same(s.tail(s.head(torch.randn(1, 3, 4, 4) * 0 + 1)), model(torch.ones(1, 3, 4, 4)))


def test_a_server_runs_tails_fed_with_non_tensor_values():
    """Over a real socket: no fallback, the model's answer, at cuts carrying sizes,
    tuples, a structseq and a Python float."""
    from cic_fast.runtime import Client, Server

    model, x = Structured().eval(), torch.randn(2, 8)
    g = trace(model, x)
    prof = Profile.from_times(g, np.full(g.n_nodes, 1e-3))
    masks = [on for on in closed_masks(g) if not on.all()]
    carrying = [
        on for on in masks if any(not g.shapes[i].startswith("f32") for i in sent_of(g, on))
    ]
    assert len(carrying) >= 10
    with torch.no_grad():
        want = model(x)
    with Server(g) as srv:
        srv.start()
        with Client(g, None, srv.address, device_profile=prof, server_profile=prof) as cli:
            for on in carrying[:: max(1, len(carrying) // 12)]:
                same(cli.infer_partition(on, x), want)
                assert cli.last is not None and not cli.last.fallback, cli.last.error


def sent_of(g: LayerGraph, on: np.ndarray) -> list[int]:
    from cic_fast.core.cost import sent_set

    return sent_set(g.edges, on).tolist()


def test_a_view_and_its_base_are_never_sent_apart_in_a_model_that_writes():
    """The wire would make two tensors of one: such a request is answered locally."""
    from cic_fast.runtime import Client, Server

    # a tensor and a view of it both cross some cuts, and the view is written
    model, x = ViewMutation().eval(), torch.randn(2, 3)
    g = trace(model, x)
    prof = Profile.from_times(g, np.full(g.n_nodes, 1e-3))
    with torch.no_grad():
        want = model(x.clone())
    shared = 0
    with Server(g) as srv:
        srv.start()
        with Client(g, None, srv.address, device_profile=prof, server_profile=prof) as cli:
            for on in closed_masks(g):
                if on.all():
                    continue
                same(cli.infer_partition(on, x.clone()), want)
                assert cli.last is not None
                if cli.last.fallback:
                    assert "share memory" in (cli.last.error or "")
                    shared += 1
    assert shared >= 1  # the cut {x, mul, view} sends `a` and its view `flat`
