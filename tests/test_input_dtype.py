"""uint8 camera input (issue 10, point 3): the preprocessing traced into the graph.

`CameraInput` (``load_model(..., input_dtype="uint8")``, ``--input-dtype uint8``)
takes uint8 NCHW frames and converts and normalises them as the graph's first
layers, so the input node is 1 byte per value and a server-only split sends the
frame, not a float32 tensor four times its size. Checked here: the graph (bytes,
first layers), values against the float model on the same normalised image, every
partition kind through `split` and through a real Server/Client on loopback, the
wire's uint8 tensors, weights files of the plain model, the fingerprint refusing a
float/uint8 mismatch (a ``cic-fast serve --input-dtype uint8`` subprocess), the
CLI flag, and bad values. Models are small (resnet18 with 10 classes at 32x32;
mobilenet_v3_small only where the 224x224 byte count is the point).
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
TF = pytest.importorskip("torchvision.transforms.functional")

from cic_fast.cli import main  # noqa: E402
from cic_fast.cli.common import example_inputs  # noqa: E402
from cic_fast.frontend.models import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_DTYPES,
    CameraInput,
    check_input_dtype,
    load_model,
    load_weights,
    random_inputs,
)
from cic_fast.frontend.profiling import Profile  # noqa: E402
from cic_fast.frontend.splitting import split  # noqa: E402
from cic_fast.frontend.tracing import tensor_bytes, trace  # noqa: E402
from cic_fast.runtime.fingerprint import traced_fingerprint  # noqa: E402
from cic_fast.runtime.wire import Limits, Reader, encode_tensors, read_tensors  # noqa: E402
from zoo import Setup, assert_same, cli_server  # noqa: E402

# the conversion and normalisation: x.float(), / 255, - mean, / std
PREPROCESSING = ("float", "div", "sub", "div")
SIZE = 32
FRAME_BYTES = 3 * SIZE * SIZE  # uint8
FLOAT_BYTES = 4 * FRAME_BYTES


def frame(seed: int = 0, size: int = SIZE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=gen)


def normalised(x: torch.Tensor) -> torch.Tensor:
    """The float model's input for frame ``x``, by torchvision's own normalize."""
    return TF.normalize(x.float() / 255.0, list(IMAGENET_MEAN), list(IMAGENET_STD))


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def wrapped(plain):
    return CameraInput(plain).eval()


@pytest.fixture(scope="module")
def graph(wrapped):
    return trace(wrapped, frame())


# -- the graph ----------------------------------------------------------------------


def test_graph_input_is_the_uint8_frame_and_preprocessing_comes_first():
    model = load_model("torchvision:mobilenet_v3_small", input_dtype="uint8")
    (x,) = random_inputs("torchvision:mobilenet_v3_small", input_dtype="uint8")
    assert x.dtype == torch.uint8 and tuple(x.shape) == (1, 3, 224, 224)
    g = trace(model, x)
    (inp,) = g.inputs.tolist()
    assert g.out_bytes[inp] == 150528 == 224 * 224 * 3
    assert g.shapes[inp] == "uint8[1,3,224,224]"
    first = [inp + 1 + k for k in range(len(PREPROCESSING))]
    for v, op in zip(first, PREPROCESSING, strict=True):
        assert op in g.targets[v], (v, g.targets[v])
        assert g.out_bytes[v] == 602112 and g.shapes[v] == "f32[1,3,224,224]"
    # a chain: the frame feeds the conversion only, the normalised image the model
    succ = {(int(u), int(v)) for u, v in g.edges}
    assert [v for u, v in succ if u == inp] == [first[0]]
    assert all((a, b) in succ for a, b in itertools.pairwise(first))
    assert g.names[first[-1] + 1].startswith("model_")


def test_values_equal_the_float_model_on_the_normalised_image(plain, wrapped):
    for seed in range(3):
        x = frame(seed)
        with torch.inference_mode():
            got = wrapped(x)
            want = plain(normalised(x))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_load_model_uint8_and_weights_of_the_plain_model(tmp_path, plain):
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    m = load_model("torchvision:resnet18", weights=path, input_dtype="uint8", num_classes=10)
    assert isinstance(m, CameraInput) and not m.training
    assert sorted(m.state_dict()) == sorted(
        ["mean", "std", *(f"model.{k}" for k in plain.state_dict())]
    )
    x = frame(1)
    with torch.inference_mode():
        torch.testing.assert_close(m(x), plain(normalised(x)), rtol=1e-4, atol=1e-5)
    # load_weights into a CameraInput: the plain model's file, and its own
    fresh = CameraInput(torchvision.models.resnet18(weights=None, num_classes=10)).eval()
    load_weights(fresh, path)
    assert_same(fresh(x), m(x))
    own = tmp_path / "wrapped.pt"
    torch.save(m.state_dict(), own)
    fresh = CameraInput(torchvision.models.resnet18(weights=None, num_classes=10)).eval()
    load_weights(fresh, own)
    assert_same(fresh(x), m(x))
    # float32 (the default) is the plain model
    f = load_model("torchvision:resnet18", weights=path, input_dtype="float32", num_classes=10)
    assert not isinstance(f, CameraInput)


# -- partitions ---------------------------------------------------------------------


def test_every_partition_kind_through_split(wrapped, graph):
    x = frame(2)
    with torch.inference_mode():
        want = wrapped(x)
    n = graph.n_nodes
    (inp,) = graph.inputs.tolist()
    server_only = np.zeros(n, dtype=bool)
    server_only[inp] = True
    cases = {
        "device-only": (np.ones(n, dtype=bool), 0, None),
        "server-only": (server_only, FRAME_BYTES, torch.uint8),
        # after .float(): the first float32 tensor
        "after conversion": (np.arange(n) <= inp + 1, FLOAT_BYTES, torch.float32),
        "after normalisation": (np.arange(n) <= inp + 4, FLOAT_BYTES, torch.float32),
        "middle": (np.arange(n) < n // 2, None, torch.float32),
    }
    dev = Profile.from_times(graph, np.full(n, 1e-3))
    for kind, (on, nbytes, dtype) in cases.items():
        s = split(graph, on_device=on, device_profile=dev, server_profile=dev.scaled(0.1))
        with torch.inference_mode():
            sent = s.head(x)
            got = s.tail(sent)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=kind)
        if nbytes is not None:
            assert s.bytes_sent == nbytes, kind
        if s.partition.offloads:
            assert tensor_bytes(list(sent.values())) == s.bytes_sent, kind
            assert {t.dtype for t in sent.values()} == {dtype}, kind
        else:
            assert s.bytes_sent == 0, kind


# -- the wire and the runtime ---------------------------------------------------------


def test_wire_carries_uint8_tensors():
    x = frame(3)
    parts, total = encode_tensors([("x", x)])
    data = b"".join(bytes(memoryview(p)) for p in parts)
    assert len(data) == total
    # dtype code 9 = uint8, and the data is the frame's bytes, one per value
    assert total - FRAME_BYTES < 64 and data.endswith(x.numpy().tobytes())
    ((name, got),) = read_tensors(Reader(data, Limits()))
    assert name == "x" and got.dtype == torch.uint8
    assert torch.equal(got, x)


@pytest.mark.slow
def test_uint8_round_trip_through_server_and_client(wrapped):
    setup = Setup(wrapped, frame(4))
    with setup.server() as srv, setup.client(srv.address) as cli:
        for on, nbytes in (
            (setup.all_server(), FRAME_BYTES),
            (setup.prefix(2), FLOAT_BYTES),
            (setup.prefix(setup.graph.n_nodes // 2), None),
        ):
            out = cli.infer_partition(on, setup.x)
            assert_same(setup.expected, out)
            rec = cli.last
            assert rec is not None and not rec.fallback, rec.error
            if nbytes is not None:
                assert rec.bytes_sent == nbytes
        assert srv.stats["errors"] == 0


@pytest.mark.slow
def test_cli_server_uint8_with_plain_weights_and_float_client_refused(tmp_path):
    """``cic-fast serve --input-dtype uint8 --weights plain.pt``; a float client is refused."""
    with cli_server(tmp_path, "--input-dtype", "uint8", "--port", "0") as (fsetup, _, port):
        # the same weights, float and uint8: two fingerprints; the float client is
        # refused in the handshake and serves itself, the uint8 one is served
        usetup = Setup(CameraInput(fsetup.model), frame(5))
        assert traced_fingerprint(fsetup.graph) != traced_fingerprint(usetup.graph)
        with fsetup.client(("127.0.0.1", port), bandwidth_bps=1e10, retry_s=0.0) as cli:
            assert_same(fsetup.expected, cli.infer(fsetup.x))
            assert cli.last is not None and cli.last.fallback
            assert "FINGERPRINT" in (cli.last.error or "")
        with usetup.client(("127.0.0.1", port), bandwidth_bps=1e10) as cli:
            assert_same(usetup.expected, cli.infer_partition(usetup.all_server(), usetup.x))
            assert cli.last is not None and not cli.last.fallback, cli.last.error
            assert cli.last.bytes_sent == FRAME_BYTES


# -- the CLI --------------------------------------------------------------------------


def test_cli_profile_and_split_with_uint8_input(tmp_path, capsys):
    model = ["torchvision:mobilenet_v3_small", "--input-shape", "1,3,32,32"]
    dev = tmp_path / "dev.json"
    rc = main(
        [
            *("profile", *model, "--input-dtype", "uint8", "-o", str(dev)),
            *("--repeats", "1", "--warmup", "0", "--threads", "1", "--no-progress"),
        ]
    )
    assert rc == 0, capsys.readouterr()
    capsys.readouterr()
    # a fast link: server-only, the frame sent as it is; a slow one: device-only
    for bw, sent in (("10Gbit", f"uint8    {FRAME_BYTES} B"), ("1kbit", "nothing is sent")):
        rc = main(
            [
                *("split", *model, "--input-dtype", "uint8", "--device", str(dev)),
                *("--bandwidth", bw, "--check"),
            ]
        )
        out = capsys.readouterr().out
        assert rc == 0, out
        assert sent in out, out
        assert "check: tail(head(x)) == model(x)" in out and ": ok" in out
    # the profile of the uint8 graph does not fit the float graph
    rc = main(["split", *model, "--device", str(dev), "--bandwidth", "1Gbit"])
    assert rc == 2 and "profile does not match the graph" in capsys.readouterr().err


def test_cli_example_inputs_follow_the_flag():
    from cic_fast.cli import build_parser

    p = build_parser()
    for cmd in (["profile", "-o", "x.json"], ["split", "--device", "d", "--bandwidth", "1M"]):
        a = p.parse_args([*cmd, "torchvision:resnet18", "--input-shape", "1,3,8,8"])
        assert a.input_dtype == "float32"
        assert example_inputs(a)[0].dtype == torch.float32
        a = p.parse_args([*cmd, "m:x", "--input-dtype", "uint8", "--input-shape", "1,3,8,8"])
        (x,) = example_inputs(a)
        assert x.dtype == torch.uint8 and tuple(x.shape) == (1, 3, 8, 8)
    for cmd in (["plan"], ["serve"]):
        assert p.parse_args([*cmd, "m:x", "--input-dtype", "uint8"]).input_dtype == "uint8"


def test_cli_bad_input_dtype_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["split", "m:x", "--device", "d", "--bandwidth", "1M", "--input-dtype", "int8"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--input-dtype" in err and "invalid choice" in err and "uint8" in err


# -- bad values -----------------------------------------------------------------------


def test_bad_input_dtype_is_a_value_error():
    assert INPUT_DTYPES == ("float32", "uint8")
    for bad in ("int8", "UINT8", "float", None, 8):
        with pytest.raises(ValueError, match="'float32', 'uint8'"):
            load_model("torchvision:resnet18", input_dtype=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="'float32', 'uint8'"):
            random_inputs("torchvision:resnet18", input_dtype=bad)  # type: ignore[arg-type]
    assert check_input_dtype("uint8") == "uint8"


def test_random_inputs():
    a = random_inputs("torchvision:resnet18", [(1, 3, 8, 8)], input_dtype="uint8", seed=3)
    b = random_inputs("torchvision:resnet18", [(1, 3, 8, 8)], input_dtype="uint8", seed=3)
    assert torch.equal(a[0], b[0]) and a[0].dtype == torch.uint8
    assert int(a[0].min()) >= 0 and int(a[0].max()) <= 255
    big = random_inputs("torchvision:resnet18", [(1, 3, 64, 64)], input_dtype="uint8")[0]
    assert int(big.min()) == 0 and int(big.max()) == 255  # the whole range is drawn
    # float32 keeps the CLI's old inputs: randn from one seeded generator
    f = random_inputs("x:y", [(2, 3), (4,)], seed=7)
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(f[0], torch.randn(2, 3, generator=gen))
    assert torch.equal(f[1], torch.randn(4, generator=gen))
    assert random_inputs("torchvision:inception_v3")[0].shape == (1, 3, 299, 299)
    for shapes in ([(1, 3, 8)], [(1, 1, 8, 8)], [(1, 3, 8, 8), (1, 3, 8, 8)]):
        with pytest.raises(ValueError, match="uint8 input is one"):
            random_inputs("m:x", shapes, input_dtype="uint8")
    for shapes in ([(1, 0, 8)], [()], [(1, 2.5)], []):
        with pytest.raises(ValueError):
            random_inputs("m:x", shapes)  # type: ignore[arg-type]


def test_camera_input_bad_arguments(plain):
    with pytest.raises(TypeError, match=r"nn\.Module"):
        CameraInput(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels"):
        CameraInput(plain, mean=(0.5,), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        CameraInput(plain, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="finite"):
        CameraInput(plain, mean=(0.5, float("nan"), 0.5))
    with pytest.raises(TypeError, match="numbers"):
        CameraInput(plain, mean="abc")
    m = CameraInput(plain).eval()
    with pytest.raises(TypeError, match="uint8"):
        m(normalised(frame()))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        m(frame()[0])
    # one channel: a grey camera with its own statistics
    grey = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()).eval()
    g = CameraInput(grey, mean=[0.5], std=[0.25]).eval()
    x = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    torch.testing.assert_close(g(x), grey((x.float() / 255 - 0.5) / 0.25))


def test_importing_models_does_not_import_torch():
    code = (
        "import sys, cic_fast.frontend.models as m; "
        "assert m.INPUT_DTYPES == ('float32', 'uint8'); "
        "assert 'torch' not in sys.modules; "
        "m.CameraInput; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
