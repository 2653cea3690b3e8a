"""Argument conversion and checks shared by the core's public entry points.

Each function turns what a user may pass (lists, numpy arrays of any dtype, numpy
scalars) into the exact type the C++ core takes, or raises TypeError / ValueError
with a message that names the argument. The values themselves (cycles, negative
costs, a bandwidth <= 0) are checked by the core, which names the offending index.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "as_edges",
    "as_mask",
    "as_real",
    "as_vector",
    "check_factor",
    "check_rtt",
    "check_steps",
]

_INT64_MAX = np.iinfo(np.int64).max


def as_edges(edges: Any) -> npt.NDArray[np.int64]:
    """``edges`` as a C-contiguous (E, 2) int64 array.

    Raises
    ------
    TypeError
        A non-integer dtype.
    ValueError
        A wrong shape, a ragged nested list, or an index beyond int64.
    """
    try:
        a = np.asarray(edges)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise ValueError(f"edges must have shape (E, 2): {exc}") from None
    if a.size == 0 and a.ndim <= 2 and (a.ndim < 2 or a.shape[1] == 2):
        return np.empty((0, 2), dtype=np.int64)
    if a.dtype == object and all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in a.flat
    ):
        # Python ints beyond int64 make numpy fall back to object arrays.
        raise ValueError("edges hold a node index out of range (does not fit in int64)")
    if a.dtype.kind not in "iu":
        raise TypeError(f"edges must be an integer array, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"edges must have shape (E, 2), got {a.shape}")
    if a.dtype.kind == "u" and int(a.max()) > _INT64_MAX:
        raise ValueError("edges hold a node index out of range (above int64)")
    return np.ascontiguousarray(a, dtype=np.int64)


def as_vector(values: Any, name: str) -> npt.NDArray[np.float64]:
    """A 1-D real array as C-contiguous float64; ``name`` is used in messages."""
    try:
        a = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be 1-D numbers: {exc}") from None
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real-valued array, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float64)


def as_real(value: Any, name: str) -> float:
    """A real number (not a bool) as a float; ``name`` is used in messages."""
    if type(value) is float:  # the common case, checked first: this is on the hot path
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def as_mask(on_device: Any, n: int) -> npt.NDArray[np.bool_]:
    """A fresh boolean array of length ``n`` (a copy: callers keep it).

    Integer arrays of zeros and ones are accepted.
    """
    a = np.asarray(on_device)
    if a.dtype.kind == "b" or (a.dtype.kind in "iu" and bool(((a == 0) | (a == 1)).all())):
        out = a.astype(np.bool_, copy=True)
    else:
        raise TypeError(f"on_device must be a boolean array, got dtype {a.dtype}")
    if out.ndim != 1 or out.shape[0] != n:
        raise ValueError(f"on_device must have length {n} (one entry per node), got {a.shape}")
    return out


def check_rtt(rtt_s: Any) -> float:
    """A round-trip time: finite and >= 0."""
    rtt = as_real(rtt_s, "rtt_s")
    if not (math.isfinite(rtt) and rtt >= 0.0):
        raise ValueError(f"rtt_s must be finite and >= 0, got {rtt}")
    return rtt


def check_factor(value: Any, name: str) -> float:
    """A scale factor: finite and > 0."""
    f = as_real(value, name)
    if not (math.isfinite(f) and f > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {f}")
    return f


def check_steps(max_steps: Any) -> int:
    """A search's step limit: an int >= 0 (TypeError / ValueError otherwise)."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)):
        raise TypeError(f"max_steps must be an int, got {type(max_steps).__name__}")
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if max_steps > 2**62:
        raise ValueError(f"max_steps must be <= 2**62, got {max_steps}")
    return int(max_steps)
