"""``cic-fast profile`` / ``cic-fast split`` and model-spec resolution."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from cic_fast.cli import main  # noqa: E402
from cic_fast.cli.common import parse_bandwidth, parse_shape  # noqa: E402
from cic_fast.frontend.models import default_input_shape, load_model  # noqa: E402
from cic_fast.frontend.profiling import Profile  # noqa: E402
from cic_fast.frontend.tracing import trace  # noqa: E402


class TinyNet(nn.Module):
    """Importable as ``test_cli_model:TinyNet`` (pytest puts tests/ on sys.path)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def make_tiny() -> TinyNet:
    return TinyNet(width=6)


class NotAModule:
    pass


ARGS = ["--input-shape", "1,3,16,16"]


def test_profile_then_split(tmp_path, capsys):
    dev = tmp_path / "dev.json"
    rc = main(
        [
            "profile",
            "test_cli_model:TinyNet",
            *ARGS,
            "-o",
            str(dev),
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--no-progress",
            "--summary",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "additivity" in out and "trace" in out and "LayerGraph" in out
    p = Profile.load(dev)
    assert p.platform["threads"] == 1 and p.repeats == 2 and p.warmup == 0
    # what the CLI measured and wrote: every computing layer timed, seconds as units
    # (TinyNet runs in ~50 us), and a loose additivity band (no warm-up: the medians
    # of 2 runs include a cold one) that still fails on a missing or mis-scaled total
    g = trace(TinyNet(), torch.randn(1, 3, 16, 16))
    computes = np.ones(g.n_nodes, dtype=bool)
    computes[[*g.inputs, g.output]] = False
    assert (p.seconds[computes] > 0).all() and (p.seconds[~computes] == 0).all(), p.seconds
    assert p.total_s is not None and 1e-6 < p.total_s < 0.5, p.total_s
    assert p.additivity is not None and 0.2 <= p.additivity <= 5.0, p.additivity
    assert f"additivity {p.additivity:.3f}" in out
    srv = tmp_path / "srv.json"
    p.scaled(0.1).save(srv)
    for bw in ("0.1Mbit", "10Mbit", "10Gbit/s"):
        rc = main(
            [
                "split",
                "test_cli_model:TinyNet",
                *ARGS,
                "--device",
                str(dev),
                "--server",
                str(srv),
                "--bandwidth",
                bw,
                "--rtt-ms",
                "1",
                "--check",
            ]
        )
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "predicted latency" in out and "check: tail(head(x)) == model(x)" in out
    # without --server: the device profile sped up
    rc = main(
        ["split", "test_cli_model:TinyNet", *ARGS, "--device", str(dev), "--bandwidth", "1e9"]
    )
    assert rc == 0


def test_split_rejects_profile_of_other_model(tmp_path, capsys):
    dev = tmp_path / "dev.json"
    assert (
        main(
            [
                "profile",
                "test_cli_model:TinyNet",
                *ARGS,
                "-o",
                str(dev),
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    rc = main(
        ["split", "torchvision:resnet18", *ARGS, "--device", str(dev), "--bandwidth", "10Mbit"]
    )
    assert rc == 2
    assert "does not match" in capsys.readouterr().err


def test_torchvision_spec_and_weights(tmp_path):
    m = load_model("torchvision:resnet18")
    assert not m.training
    path = tmp_path / "w.pt"
    torch.save(m.state_dict(), path)
    m2 = load_model("torchvision:resnet18", weights=path)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # wrapped checkpoints are unwrapped
    torch.save({"state_dict": TinyNet().state_dict()}, path)
    load_model("test_cli_model:TinyNet", weights=path)


def test_weights_are_loaded_safely(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": TinyNet().state_dict(), "obj": NotAModule()}, path)
    with pytest.raises(ValueError, match="refused"):
        load_model("test_cli_model:TinyNet", weights=path)


def test_module_callable_specs():
    assert isinstance(load_model("test_cli_model:make_tiny"), TinyNet)
    assert load_model("test_cli_model:TinyNet", width=5).conv.out_channels == 5
    with pytest.raises(ValueError, match="expected"):
        load_model("resnet18")
    with pytest.raises(ValueError, match="unknown torchvision"):
        load_model("torchvision:no_such_net")
    with pytest.raises(ValueError, match="cannot import"):
        load_model("no_such_package_xyz:Net")
    with pytest.raises(ValueError, match="no attribute"):
        load_model("test_cli_model:Missing")
    with pytest.raises(ValueError, match=r"not an nn\.Module"):
        load_model("test_cli_model:NotAModule")


def test_parsers():
    assert parse_bandwidth("10Mbit") == 10e6
    assert parse_bandwidth("10 Mbit/s") == 10e6
    assert parse_bandwidth("1.5Gbit") == 1.5e9
    assert parse_bandwidth("800kbps") == 800e3
    assert parse_bandwidth("1MB/s") == 8e6
    assert parse_bandwidth("1e6") == 1e6
    for bad in ("", "fast", "-1Mbit", "0"):
        with pytest.raises(ValueError, match="bandwidth"):
            parse_bandwidth(bad)
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("1x3x8x8") == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        parse_shape("1,a")
    with pytest.raises(ValueError, match="shape"):
        parse_shape("1,0")
    assert default_input_shape("torchvision:inception_v3") == (1, 3, 299, 299)
    assert default_input_shape("torchvision:resnet18") == (1, 3, 224, 224)


def test_bad_bandwidth_is_a_clean_cli_error(tmp_path, capsys):
    rc = main(
        [
            "split",
            "test_cli_model:TinyNet",
            "--device",
            str(tmp_path / "x.json"),
            "--bandwidth",
            "lots",
        ]
    )
    assert rc == 2 and "bandwidth" in capsys.readouterr().err


class Untraceable(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: neither fx nor export
            return x * 2
        return x - 1


def test_untraceable_model_is_a_clean_cli_error(tmp_path, capsys):
    rc = main(
        [
            "profile",
            "test_cli_model:Untraceable",
            "--input-shape",
            "2,3",
            "-o",
            str(tmp_path / "p.json"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "if x.sum() > 0" in err
