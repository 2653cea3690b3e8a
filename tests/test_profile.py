"""cic_fast.profile: per-layer latency, the versioned profile file, mismatch detection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from cic_fast.frontend.profiling import PROFILE_VERSION, Profile, profile  # noqa: E402
from cic_fast.frontend.tracing import trace  # noqa: E402


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)  # in place: profiled on fresh copies
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = self.relu(self.bn(self.conv(x)))
        h = h + x.mean(dim=1, keepdim=True)
        return self.fc(h.mean(dim=(2, 3)))


class Other(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)

    def forward(self, x):
        return self.lin(x)


@pytest.fixture(scope="module")
def small():
    m = Small().eval()
    x = torch.randn(1, 3, 16, 16)
    g = trace(m, x)
    p = profile(m, x, graph=g, repeats=3, warmup=1, progress=False, threads=1)
    return m, x, g, p


def check_plausible(p: Profile, g, additivity: tuple[float, float] | None = (0.4, 2.5)) -> None:
    """Bounds a real profile of `Small` meets and a units or bookkeeping bug breaks.

    - total_s (the end-to-end median) lies between 1 us and 0.5 s: Small runs in
      ~70 us on one x86 core; a time kept in ms or us instead of s fails;
    - every layer that computes (all but the input placeholders and the output)
      took > 0 s, and none took as long as the whole model (the largest, the conv,
      is ~30% of it); a layer left untimed, or a total taken from one layer, fails;
    - ``additivity`` (sum of the node medians / total_s) is within the band: it was
      0.77..1.09 over repeated idle one-thread runs, and every measurement of a
      profile is taken within a few ms, so load on a shared 2-core machine inflates
      them together; 0.4..2.5 leaves about 2x either side, and fails on a missing or
      mis-scaled total, or node times summed over the 3 repeats instead of their
      median (~3x).
    """
    computes = np.ones(g.n_nodes, dtype=bool)
    computes[g.inputs] = False
    computes[g.output] = False
    assert p.seconds[~computes].sum() == 0
    assert p.total_s is not None and 1e-6 < p.total_s < 0.5, p.total_s
    assert (p.seconds[computes] > 0).all(), p.seconds
    assert p.seconds.max() < p.total_s, (p.seconds, p.total_s)
    assert p.additivity == pytest.approx(p.seconds.sum() / p.total_s)
    if additivity is not None:
        lo, hi = additivity
        assert lo <= p.additivity <= hi, (p.additivity, p.seconds, p.total_s)


def test_profile_measures_every_node(small):
    _, _, g, p = small
    assert p.n_nodes == g.n_nodes and p.names == g.names
    assert (p.seconds >= 0).all() and math.isfinite(p.sum_s)
    check_plausible(p, g)
    assert p.platform["threads"] == 1
    for key in ("machine", "cpu", "torch", "device", "device_name"):
        assert key in p.platform
    assert p.repeats == 3 and p.warmup == 1


def test_profile_without_graph_and_in_place_semantics(small):
    m, x, g, _ = small
    p = profile(m, x, repeats=1, warmup=0, progress=False)
    assert p.fingerprint == g.fingerprint
    # profiling must not disturb the model: it still computes the same function
    with torch.no_grad():
        torch.testing.assert_close(m(x), g.program.module(x))


def test_save_load_round_trip(small, tmp_path):
    _, _, g, p = small
    path = tmp_path / "dev.json"
    p.save(path)
    d = json.loads(path.read_text())
    assert d["schema"] == "cic_fast.profile" and d["version"] == PROFILE_VERSION
    q = Profile.load(path, g)
    np.testing.assert_array_equal(q.seconds, p.seconds)
    assert q.total_s == p.total_s and q.platform == p.platform and q.names == p.names


def test_profile_of_another_model_is_rejected(small, tmp_path):
    _, _, g, p = small
    other = trace(Other().eval(), torch.randn(1, 5))
    with pytest.raises(ValueError, match="does not match"):
        p.check(other)
    path = tmp_path / "dev.json"
    p.save(path)
    with pytest.raises(ValueError, match="does not match"):
        Profile.load(path, other)
    # same names, other fingerprint
    q = Profile(names=p.names, fingerprint="0" * 32, seconds=p.seconds)
    with pytest.raises(ValueError, match="fingerprint"):
        q.check(g)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 999}, "version"),
        ({"schema": "something.else"}, "schema"),
        ({"seconds": "nan"}, "finite"),
        ({"seconds": "negative"}, "negative"),
        ({"seconds": "short"}, "length"),
        ({"names": None}, "missing"),
    ],
)
def test_bad_profile_files(small, tmp_path, change, message):
    _, _, _, p = small
    d = p.to_dict()
    for k, v in change.items():
        if v is None:
            del d[k]
        elif v == "nan":
            d["seconds"][1] = float("nan")
        elif v == "negative":
            d["seconds"][1] = -1.0
        elif v == "short":
            d["seconds"] = d["seconds"][:-1]
        else:
            d[k] = v
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message):
        Profile.load(path)


def test_from_times_and_scaled(small):
    _, _, g, _ = small
    secs = np.linspace(0.0, 1e-3, g.n_nodes)
    p = Profile.from_times(g, secs, total_s=0.5)
    p.check(g)
    q = p.scaled(0.1)
    np.testing.assert_allclose(q.seconds, secs * 0.1)
    assert q.total_s == pytest.approx(0.05)
    assert q.platform["scaled_by"] == pytest.approx(0.1)
    assert q.scaled(10).platform["scaled_by"] == pytest.approx(1.0)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            p.scaled(bad)
    with pytest.raises(ValueError, match="length"):
        Profile.from_times(g, secs[:-1])
    with pytest.raises(ValueError, match="finite"):
        Profile.from_times(g, np.full(g.n_nodes, np.inf))
    with pytest.raises(ValueError, match="negative"):
        Profile.from_times(g, -np.ones(g.n_nodes))
    with pytest.raises(ValueError, match="1-D"):
        Profile.from_times(g, np.zeros((g.n_nodes, 1)))


def test_bad_profile_arguments(small):
    m, x, g, _ = small
    with pytest.raises(ValueError, match="repeats"):
        profile(m, x, graph=g, repeats=0, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            profile(m, x, graph=g, device="cuda", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_profile(small):
    m, x, g, _ = small
    p = profile(m, x, graph=g, device="cuda", repeats=3, warmup=1, progress=False)
    assert p.platform["device"].startswith("cuda")
    # the band was measured on CPU only: on a GPU, check the device-independent bounds
    check_plausible(p, g, additivity=None)
    # the caller's model stays where it was
    assert next(m.parameters()).device.type == "cpu"
