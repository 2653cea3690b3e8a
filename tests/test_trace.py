"""cic_fast.trace: PyTorch model -> LayerGraph."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from cic_fast.frontend.tracing import LayerGraph, TraceError, trace  # noqa: E402
from zoo import NeedsExport, TwoInTwoOut  # noqa: E402


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class WithConstants(nn.Module):
    """Constants built inside forward (position indices) and a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.register_buffer("scale", torch.full((16,), 2.0))

    def forward(self, x):
        pos = torch.arange(16, dtype=torch.float32).reshape(1, 16)  # input-independent
        pos = pos * self.scale
        unused = x * 3  # no path to the output: dropped  # noqa: F841
        return self.lin(x + pos) + pos


class InPlace(nn.Module):
    def forward(self, x):
        y = x * 1.5
        s = y.sum(dim=1, keepdim=True)  # reads y before the mutation
        y.add_(1.0)  # in place
        return y * 2 + s


class Untraceable(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x * 2
        return x - 1


def test_chain_graph_structure():
    g = trace(Chain().eval(), torch.randn(2, 8))
    assert g.method == "fx"
    assert g.names == ("x", "a", "relu", "b", "output")
    assert g.ops[0] == "placeholder" and g.ops[-1] == "output"
    assert g.edges.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert g.inputs.tolist() == [0]
    assert g.out_bytes.tolist() == [2 * 8 * 4, 2 * 16 * 4, 2 * 16 * 4, 2 * 4 * 4, 0]
    # 2 * in * out * batch for each Linear
    assert g.flops[1] == 2 * 8 * 16 * 2 and g.flops[3] == 2 * 16 * 4 * 2
    assert g.output == g.n_nodes - 1
    assert g.program is not None and len(g.program.fx_nodes) == g.n_nodes


def test_constants_and_dead_code_are_not_nodes():
    g = trace(WithConstants().eval(), torch.randn(1, 16))
    # arange/reshape/mul with the buffer and the unused x * 3 are all gone
    assert "arange" not in g.names and "mul" not in g.names
    assert all(op != "get_attr" for op in g.ops)
    assert not any(n.startswith("mul") for n in g.names)
    # the only source is the input
    has_pred = np.zeros(g.n_nodes, dtype=bool)
    has_pred[g.edges[:, 1]] = True
    assert np.flatnonzero(~has_pred).tolist() == g.inputs.tolist() == [0]


def test_multi_input_dict_output():
    g = trace(TwoInTwoOut().eval(), (torch.randn(3, 4), torch.randn(3, 6)))
    assert g.inputs.tolist() == [0, 1]
    assert g.names[:2] == ("x", "y")
    # the output node gathers every tensor the model returns
    preds = {u for u, v in g.edges.tolist() if v == g.output}
    assert {g.names[u] for u in preds} == {"add", "a", "tanh"}


def test_in_place_mutation_orders_readers():
    g = trace(InPlace().eval(), torch.randn(2, 3))
    idx = {n: i for i, n in enumerate(g.names)}
    edges = set(map(tuple, g.edges.tolist()))
    # the reader before the mutation must run before it, the reader after must follow it
    assert (idx["sum_1"], idx["add_"]) in edges
    assert (idx["add_"], idx["mul_1"]) in edges
    assert (g.edges[:, 0] < g.edges[:, 1]).all()


@pytest.mark.parametrize("method", ["fx", "export"])
def test_trace_never_changes_the_callers_tensors(method):
    """Defect (issue 12): a model that writes into its input changed the caller's example."""

    class Scales(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x, extra):
            x.mul_(2.0)  # in place, on the input
            extra["k"].add_(1.0)
            return self.lin(x) + extra["k"].sum()

    x = torch.ones(2, 4)
    extra = {"k": torch.zeros(3)}
    trace(Scales().eval(), (x, extra), method=method)
    assert torch.equal(x, torch.ones(2, 4))
    assert torch.equal(extra["k"], torch.zeros(3))


class Autocast(nn.Module):
    """A bfloat16 autocast region inside forward: fx runs it at trace time, unrecorded."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.a(x).relu()
        return self.b(y.float())


def test_a_program_that_differs_from_the_model_is_never_kept():
    """Defect (issue 12): the fx trace dropped the autocast region: wrong values, silently."""
    from cic_fast.core.cost import check_partition
    from cic_fast.frontend.cutting import build_parts

    torch.manual_seed(0)
    model, x = Autocast().eval(), torch.randn(2, 8)
    with pytest.raises(TraceError, match="differs from the model"):
        trace(model, x, method="fx")
    g = trace(model, x)  # auto: torch.export records the region
    assert "wrap_with_autocast" in " ".join(g.targets)
    want = model(x)
    n, cut = g.n_nodes, 0
    for k in range(1, 2**n - 1):  # every offloading partition
        on = np.array([(k >> i) & 1 for i in range(n)], dtype=bool)
        try:
            check_partition(g.edges, n, on)
        except ValueError:
            continue
        head, tail, _ = build_parts(g, on)
        got = tail(head(x))
        assert got.dtype == want.dtype and torch.equal(got, want), on
        cut += 1
    assert cut >= 3


def test_an_optional_argument_left_none_falls_back_to_export():
    """Defect (issue 12): fx took the ``is not None`` branch; the program failed to run."""

    class Optional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x, bias=None):
            y = self.lin(x)
            if bias is not None:
                y = y + bias
            return y.relu()

    from cic_fast.frontend.cutting import build_parts

    model, x = Optional().eval(), torch.randn(2, 4)
    g = trace(model, x)
    assert g.method == "export"
    for k in range(1, g.n_nodes - 1):  # every prefix that offloads something
        on = np.arange(g.n_nodes) < k
        head, tail, _ = build_parts(g, on)
        assert torch.equal(tail(head(x)), model(x)), k


def test_a_model_with_randomness_still_traces_with_fx():
    """Two runs of the model disagree: the check cannot compare, and does not refuse."""

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x) + torch.rand(4)

    g = trace(Noisy().eval(), torch.randn(2, 4))
    assert g.program is not None and g.method == "fx"


def test_export_fallback():
    m = NeedsExport().eval()
    x = torch.randn(2, 8)
    with pytest.raises(TraceError, match=r"torch\.fx failed"):
        trace(m, x, method="fx")
    g = trace(m, x)
    assert g.method == "export"
    assert g.ops[0] == "placeholder" and g.ops[-1] == "output"
    assert "_guards_fn" not in g.targets


def test_untraceable_names_the_construct():
    with pytest.raises(TraceError) as info:
        trace(Untraceable(), torch.randn(2, 3))
    msg = str(info.value)
    assert "torch.fx failed" in msg and "torch.export failed" in msg
    assert "if x.sum() > 0" in msg


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        trace(Chain(), torch.randn(1, 8), method="jit")
    with pytest.raises(TypeError):
        trace(lambda x: x, torch.randn(1, 8))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        trace(Chain(), "not a tensor")


def test_json_round_trip_and_fingerprint():
    g = trace(TwoInTwoOut().eval(), (torch.randn(3, 4), torch.randn(3, 6)))
    h = LayerGraph.from_json(g.to_json())
    assert h.program is None
    assert h.names == g.names and h.targets == g.targets and h.shapes == g.shapes
    np.testing.assert_array_equal(h.edges, g.edges)
    np.testing.assert_array_equal(h.out_bytes, g.out_bytes)
    assert h.fingerprint == g.fingerprint
    assert trace(Chain(), torch.randn(1, 8)).fingerprint != g.fingerprint
    bad = g.to_dict()
    bad["version"] = 99
    import json

    with pytest.raises(ValueError, match="version"):
        LayerGraph.from_json(json.dumps(bad))


def test_summary_is_readable():
    g = trace(Chain().eval(), torch.randn(2, 8))
    s = g.summary()
    assert "5 nodes" in s and "f32[2,16]" in s and "relu" in s


def test_torchvision_resnet18_small():
    tv = pytest.importorskip("torchvision")
    g = trace(tv.models.resnet18(weights=None).eval(), torch.randn(1, 3, 32, 32))
    assert g.n_nodes == 71 and g.n_edges == 78
    assert g.flops.sum() > 0
    assert g.out_bytes[0] == 3 * 32 * 32 * 4
    assert set(g.ops) <= {"placeholder", "call_module", "call_function", "call_method", "output"}


def test_import_does_not_need_torch():
    code = (
        "import sys, cic_fast, cic_fast.frontend, cic_fast.runtime, cic_fast.evaluation, "
        "cic_fast.cli, cic_fast.frontend.models; "
        "assert 'torch' not in sys.modules, 'torch imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
