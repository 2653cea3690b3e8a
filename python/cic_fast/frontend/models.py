"""Resolve a model spec (``torchvision:NAME`` or ``package.module:callable``) and its weights.

Weights are loaded with ``torch.load(..., weights_only=True)``: a state dict file
can then never run code.  torch is imported lazily.
"""

from __future__ import annotations

import importlib
import os
import pickle
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["default_input_shape", "load_model", "load_weights"]

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
