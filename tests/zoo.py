"""Models shared by the test modules (imported as ``zoo``; tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest

try:  # the model list is needed where torch is not installed too
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - torch is in the test extras
    torch = None  # type: ignore[assignment]

#: ``CIC_FAST_FULL_MODELS=1``: canonical input sizes (224) instead of small ones.
FULL = os.environ.get("CIC_FAST_FULL_MODELS") == "1"

#: The torchvision models of issue 3's test list (plus googlenet).
TORCHVISION = [
    "alexnet",
    "vgg16",
    "resnet18",
    "resnet50",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "inception_v3",
    "googlenet",
    "convnext_tiny",
    "swin_t",
    "vit_b_16",
]


def tv_model(name: str) -> tuple[Any, tuple[Any, ...]]:
    """A torchvision model (weights=None, eval) and one example input.

    Inputs are 32x32 (alexnet 64, vit_b_16 built for 32) unless FULL: the graph's
    shape, not its resolution, is what most tests exercise. inception_v3 always
    takes the 299x299 input the issue names.
    """
    tv = pytest.importorskip("torchvision")
    kw: dict[str, Any] = {}
    if name in ("inception_v3", "googlenet"):
        kw = {"init_weights": True, "aux_logits": False}
    size = 224
    if name == "inception_v3":
        size = 299
    elif not FULL:
        size = 32
        if name == "vit_b_16":
            kw["image_size"] = 32
        elif name == "alexnet":
            size = 64
    torch.manual_seed(0)
    model = tv.models.get_model(name, weights=None, **kw).eval()
    return model, (torch.randn(1, 3, size, size),)


if torch is not None:

    class TwoInTwoOut(nn.Module):
        """Two inputs, a dict output holding a tuple."""

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(6, 4)

        def forward(self, x: Any, y: Any) -> dict[str, Any]:
            h = self.a(x)
            return {"sum": h + self.b(y), "parts": (h, torch.tanh(y))}

    class ViewMutation(nn.Module):
        """A value mutated through a view, read before and after the mutation."""

        def forward(self, x: Any) -> Any:
            a = x * 2
            before = a.mean()
            flat = a.view(-1)
            flat.mul_(3.0)  # changes `a` too
            return a + before, flat.sum()

    class NeedsExport(nn.Module):
        """Shape-dependent Python control flow: fx cannot trace it, torch.export can."""

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x: Any) -> dict[str, Any]:
            if x.shape[-1] > 4:
                x = torch.relu(self.lin(x))
            return {"out": x * 2, "aux": (x.sum(),)}

    class TwoBranch(nn.Module):
        """A small CNN with two parallel branches and a tuple output, for ``size``-pixel inputs."""

        def __init__(self, size: int = 32) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a = nn.Conv2d(8, 4, 3, padding=1)
            self.b = nn.Conv2d(8, 4, 1)
            self.head = nn.Linear(8 * (size // 2) ** 2, 5)

        def forward(self, x: Any) -> tuple[Any, Any]:
            y = torch.relu(self.stem(x))
            y = torch.cat([torch.relu(self.a(y)), torch.sigmoid(self.b(y))], dim=1)
            y = nn.functional.max_pool2d(y, 2)
            logits = self.head(torch.flatten(y, 1))
            return logits, logits.softmax(-1)


def assert_same(a: Any, b: Any) -> None:
    """Exactly equal outputs: the same structure, dtypes, shapes and values."""
    if isinstance(a, dict):
        assert type(b) is dict and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, tuple | list):
        assert type(a) is type(b) and len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            assert_same(u, v)
    else:
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# Socket timeout of the servers and clients the runtime tests build.
TIMEOUT_S = 5.0


class Setup:
    """A model, its graph and profiles (device 10x slower than the server)."""

    def __init__(self, model, x, device_layer_s: float = 1e-3, server_factor: float = 0.1):
        import numpy as np
        import torch

        from cic_fast.frontend.profiling import Profile
        from cic_fast.frontend.tracing import trace

        self.model = model.eval()
        self.x = x
        self.graph = trace(self.model, x)
        n = self.graph.n_nodes
        self.dev = Profile.from_times(self.graph, np.full(n, device_layer_s))
        self.srv = self.dev.scaled(server_factor)
        with torch.inference_mode():
            self.expected = self.model(x)

    def server(self, **kw):
        from cic_fast.runtime.server import Server

        kw.setdefault("timeout_s", TIMEOUT_S)
        return Server(self.model, self.x, graph=self.graph, **kw).start()

    def client(self, address, **kw):
        from cic_fast.runtime.client import Client

        kw.setdefault("timeout_s", TIMEOUT_S)
        return Client(
            self.model,
            self.x,
            address,
            device_profile=self.dev,
            server_profile=self.srv,
            graph=self.graph,
            **kw,
        )

    def all_server(self):
        import numpy as np

        on = np.zeros(self.graph.n_nodes, dtype=bool)
        on[self.graph.inputs] = True
        return on

    def prefix(self, k: int):
        import numpy as np

        on = np.zeros(self.graph.n_nodes, dtype=bool)
        on[:k] = True
        on[self.graph.inputs] = True
        return on


@contextlib.contextmanager
def cli_server(tmp_path, *flags: str, model_flag: bool = False):
    """``cic-fast serve`` of a seeded squeezenet1_1 (32x32) as a subprocess.

    Yields ``(setup, proc, port)``: the same model in this process (a `Setup`),
    the server process, its port. The model goes in as ``--model MODEL`` when
    ``model_flag``, else positionally. The process is killed and reaped on exit.
    """
    import subprocess
    import sys
    import threading

    import torch
    import torchvision

    torch.manual_seed(1)
    setup = Setup(torchvision.models.squeezenet1_1(), torch.randn(1, 3, 32, 32))
    weights = tmp_path / "w.pt"
    torch.save(setup.model.state_dict(), weights)
    model = ["--model"] if model_flag else []
    cmd = [sys.executable, "-m", "cic_fast", "serve", *model, "torchvision:squeezenet1_1"]
    cmd += ["--weights", str(weights), "--input-shape", "1,3,32,32", "--threads", "1", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(90)
        if not box or not box[0].startswith("listening on 127.0.0.1:"):
            proc.kill()
            raise AssertionError(f"server did not start: {box} {proc.stderr.read()}")
        yield setup, proc, int(box[0].strip().rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
