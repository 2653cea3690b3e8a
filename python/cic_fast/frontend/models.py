"""Resolve a model spec (``torchvision:NAME`` or ``package.module:callable``) and its weights.

Weights are loaded with ``torch.load(..., weights_only=True)``: a state dict file
can then never run code.  ``input_dtype="uint8"`` wraps the model in `CameraInput`,
which takes a camera frame's bytes and normalises them inside the model, so the
conversion is traced as the graph's first layers.  torch is imported lazily:
`CameraInput` is built on first access (a module ``__getattr__``).
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_DTYPES",
    "CameraInput",
    "check_input_dtype",
    "default_input_shape",
    "load_model",
    "load_weights",
    "random_inputs",
]

#: The input dtypes `load_model` and `random_inputs` accept.
INPUT_DTYPES = ("float32", "uint8")
#: torchvision's ImageNet normalisation, per RGB channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Declared, not bound: the module ``__getattr__`` builds the class when first asked
# for (it subclasses ``torch.nn.Module``, and torch is imported lazily).
CameraInput: type[Any]

# torchvision builders that warn about their default initialisation unless told
_INIT_WEIGHTS = {"inception_v3", "googlenet"}
# models whose canonical input is not 224x224
_INPUT_SIZE = {"inception_v3": 299}


def load_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    eval_mode: bool = True,
    input_dtype: str = "float32",
    **kwargs: Any,
) -> torch.nn.Module:
    """Build a model from a spec string.

    Parameters
    ----------
    spec : str
        ``torchvision:NAME`` (random weights, ``weights=None``) or
        ``package.module:callable`` (a factory called with ``kwargs``, or an
        ``nn.Module`` instance; dotted attribute paths are allowed after the colon).
    weights : path, optional
        A state dict saved with ``torch.save``; loaded with ``weights_only=True``.
    eval_mode : bool
        Put the model in eval mode (the trace bakes the mode in).
    input_dtype : {"float32", "uint8"}
        ``"uint8"``: the model wrapped in `CameraInput` (it takes uint8 NCHW frames
        and normalises them with the ImageNet mean and std). The weights are
        loaded into the model before it is wrapped, so a plain model's file fits.
    **kwargs
        Passed to the builder.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        Malformed spec, unknown torchvision model, a callable that does not
        return a module, or an ``input_dtype`` other than ``INPUT_DTYPES``.
    """
    import torch

    check_input_dtype(input_dtype)
    if ":" not in spec:
        raise ValueError(
            f"model spec {spec!r}: expected 'torchvision:NAME' or 'package.module:callable'"
        )
    where, name = spec.split(":", 1)
    if not where or not name:
        raise ValueError(f"model spec {spec!r}: empty module or name")
    if where == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {name!r}")
        if name in _INIT_WEIGHTS:
            kwargs.setdefault("init_weights", True)
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    else:
        try:
            obj: Any = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"model spec {spec!r}: cannot import {where!r}: {e}") from None
        for part in name.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ValueError(
                    f"model spec {spec!r}: {where} has no attribute {name!r}"
                ) from None
        model = obj if isinstance(obj, torch.nn.Module) else obj(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model spec {spec!r} gave a {type(model).__name__}, not an nn.Module")
    if weights is not None:
        load_weights(model, weights)
    if input_dtype == "uint8":
        model = _camera_input_class()(model)
    if eval_mode:
        model.eval()
    return model


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict safely (``weights_only=True``, strict key matching).

    A checkpoint that wraps the state dict under ``"state_dict"`` or ``"model"`` is
    unwrapped. Into a `CameraInput`, a file saved from the plain model (its keys
    exactly the wrapped model's) is loaded into the wrapped model; a file saved
    from a `CameraInput` is loaded as it is.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything but tensors and plain containers
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{path}: refused to load (not a plain state dict): {first}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    if isinstance(model, _camera_input_class()) and set(state) == set(model.model.state_dict()):
        model = model.model
    model.load_state_dict(state)


def default_input_shape(spec: str) -> tuple[int, ...]:
    """The canonical input shape of a model spec (1x3x224x224 unless known otherwise)."""
    name = spec.split(":", 1)[-1]
    size = _INPUT_SIZE.get(name, 224)
    return (1, 3, size, size)


def check_input_dtype(input_dtype: str) -> str:
    """``input_dtype`` if it is one of `INPUT_DTYPES`.

    Raises
    ------
    ValueError
        Any other value.
    """
    if not isinstance(input_dtype, str) or input_dtype not in INPUT_DTYPES:
        allowed = ", ".join(repr(d) for d in INPUT_DTYPES)
        raise ValueError(f"input_dtype must be one of {allowed}, not {input_dtype!r}")
    return input_dtype


def random_inputs(
    spec: str,
    shapes: Sequence[Sequence[int]] | None = None,
    *,
    input_dtype: str = "float32",
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Seeded random example inputs for a model spec, one tensor per shape.

    Parameters
    ----------
    spec : str
        The model spec; it gives the default shape (`default_input_shape`).
    shapes : sequence of shapes, optional
        One shape per model input (default: the spec's canonical shape).
    input_dtype : {"float32", "uint8"}
        ``"float32"``: standard normal values (the model's normalised input);
        ``"uint8"``: uniform pixel values in [0, 255], one NCHW frame with 3
        channels (what a `CameraInput` model takes).
    seed : int
        Seed of the generator; the same arguments give the same tensors.

    Returns
    -------
    tuple of torch.Tensor

    Raises
    ------
    ValueError
        A bad ``input_dtype``, a shape with a non-positive or non-integer size, or,
        for uint8, not exactly one 4-D shape with 3 channels.
    """
    import torch

    check_input_dtype(input_dtype)
    if shapes is None:
        shapes = [default_input_shape(spec)]
    checked: list[tuple[int, ...]] = []
    for shape in shapes:
        dims = tuple(shape)
        if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims):
            raise ValueError(f"bad input shape {dims!r}: expected positive integers")
        checked.append(dims)
    if not checked:
        raise ValueError("no input shapes given")
    gen = torch.Generator().manual_seed(seed)
    if input_dtype == "float32":
        return tuple(torch.randn(*s, generator=gen) for s in checked)
    channels = len(IMAGENET_MEAN)
    if len(checked) != 1 or len(checked[0]) != 4 or checked[0][1] != channels:
        raise ValueError(
            f"uint8 input is one NxCxHxW frame with C = {channels}, got shapes {checked}"
        )
    return (torch.randint(0, 256, checked[0], dtype=torch.uint8, generator=gen),)


def _check_stats(name: str, values: Sequence[float]) -> tuple[float, ...]:
    """``values`` as floats: a non-empty sequence of finite numbers."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, not {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be non-empty and finite, got {values!r}")
    return out


_CLASSES: dict[str, type] = {}


def _camera_input_class() -> type[Any]:
    """The `CameraInput` class, defined on first use (it subclasses ``torch.nn.Module``)."""
    if "CameraInput" in _CLASSES:
        return _CLASSES["CameraInput"]
    import torch

    class CameraInput(torch.nn.Module):
        """A model that takes camera frames: uint8 NCHW in, normalised float inside.

        ``forward(x)`` is ``model((x.float() / 255 - mean) / std)``. The four steps
        are operations of this module, so `cic_fast.trace` records them as the
        graph's first layers and its input node is the uint8 frame (1 byte per
        value: 150528 bytes for 1x3x224x224, against 602112 as float32). A
        server-only split then sends the frame itself.

        Parameters
        ----------
        model : torch.nn.Module
            The model that takes the normalised float32 image (kept as ``.model``,
            so this module's state dict is ``mean``, ``std`` and ``model.*``).
        mean, std : sequence of float
            Per-channel normalisation (default: ImageNet's), in [0, 1] pixel units;
            registered as buffers of shape (1, C, 1, 1), so the trace keeps them
            and the runtime's model fingerprint covers them.

        Raises
        ------
        TypeError
            ``model`` is not an ``nn.Module``, or ``mean`` / ``std`` are not
            sequences of numbers; in ``forward``, an input that is not uint8.
        ValueError
            ``mean`` and ``std`` of different lengths, not finite, or a ``std`` that
            is not positive; in ``forward``, an input that is not N x C x H x W
            with C = ``len(mean)``.
        """

        mean: torch.Tensor
        std: torch.Tensor

        def __init__(
            self,
            model: torch.nn.Module,
            mean: Sequence[float] = IMAGENET_MEAN,
            std: Sequence[float] = IMAGENET_STD,
        ) -> None:
            super().__init__()
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
            m = _check_stats("mean", mean)
            s = _check_stats("std", std)
            if len(m) != len(s):
                raise ValueError(f"mean has {len(m)} channels, std {len(s)}")
            if not all(v > 0 for v in s):
                raise ValueError(f"std must be positive, got {std!r}")
            self.model = model
            self.channels = len(m)
            self.register_buffer("mean", torch.tensor(m, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> Any:
            # A real tensor is checked; an fx Proxy is not a Tensor and skips the
            # checks, so they leave no node in the traced graph.
            if isinstance(x, torch.Tensor):
                if x.dtype != torch.uint8:
                    raise TypeError(f"CameraInput takes uint8 frames, not {x.dtype}")
                if x.dim() != 4 or x.shape[1] != self.channels:
                    raise ValueError(
                        f"CameraInput takes N x {self.channels} x H x W frames, "
                        f"not {tuple(x.shape)}"
                    )
            return self.model(x.float().div(255.0).sub(self.mean).div(self.std))

    # pickle and repr find it where users import it from
    CameraInput.__module__ = __name__
    CameraInput.__qualname__ = "CameraInput"
    _CLASSES["CameraInput"] = CameraInput
    return CameraInput


def __getattr__(name: str) -> Any:
    # `CameraInput` needs torch: it is built when first asked for, so importing
    # this module stays torch-free.
    if name == "CameraInput":
        return _camera_input_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
