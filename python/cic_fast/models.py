"""Resolve a model spec (``torchvision:NAME`` or ``package.module:callable``).

Weights are loaded with ``torch.load(..., weights_only=True)``: a state dict file
can then never run code.  torch is imported lazily.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "default_input_shape",
    "load_model",
    "load_weights",
    "parse_bandwidth",
    "parse_shape",
]

# torchvision builders that warn about their default initialisation unless told
_INIT_WEIGHTS = {"inception_v3", "googlenet"}
# models whose canonical input is not 224x224
_INPUT_SIZE = {"inception_v3": 299}


def load_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    eval_mode: bool = True,
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
    **kwargs
        Passed to the builder.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        Malformed spec, unknown torchvision model, or a callable that does not
        return a module.
    """
    import torch

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
    if eval_mode:
        model.eval()
    return model


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict safely (``weights_only=True``, strict key matching).

    A checkpoint that wraps the state dict under ``"state_dict"`` or ``"model"`` is
    unwrapped.
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
    model.load_state_dict(state)


def default_input_shape(spec: str) -> tuple[int, ...]:
    """The canonical input shape of a model spec (1x3x224x224 unless known otherwise)."""
    name = spec.split(":", 1)[-1]
    size = _INPUT_SIZE.get(name, 224)
    return (1, 3, size, size)


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``) into a shape tuple."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad input shape {text!r}: expected integers like 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"bad input shape {text!r}: dimensions must be positive")
    return shape


_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_bandwidth(text: str) -> float:
    """Parse a bandwidth into bits per second.

    Accepts ``10Mbit``, ``10 Mbit/s``, ``10mbps``, ``1.5Gbit``, ``800kbit``, ``10M``
    and a plain number of bits per second.  Bytes (``MB/s``) are converted with
    the factor 8.
    """
    m = re.fullmatch(
        r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)(bit|bps|b|B)?(?:/s)?\s*", text
    )
    if not m:
        raise ValueError(f"bad bandwidth {text!r}: expected e.g. 10Mbit, 1.5Gbit/s or 1e6")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if m.group(3) == "B":
        value *= 8
    if not value > 0:
        raise ValueError(f"bad bandwidth {text!r}: must be positive")
    return value
