"""The messages of the wire protocol: the payload of each frame type (docs/protocol.md).

=========  =========================  =============================================
frame      direction                  payload
=========  =========================  =============================================
HELLO      client -> server           fingerprint (string)
HELLO_OK   server -> client           fingerprint, ``u64`` frame limit
INFER      client -> server           ``u64`` id, ``u32`` n, partition bitmask, tensors
RESULT     server -> client           ``u64`` id, ``f64`` server seconds, tensors
PROBE      client -> server           filler bytes
PROBE_OK   server -> client           ``u64`` number of filler bytes received
ERROR      either way                 ``u16`` code, message (string)
=========  =========================  =============================================

Every decoder reads through a bounds-checked `cic_fast.runtime.wire.Payload` (a payload
in memory, or a frame still arriving on a socket) and requires the payload to be
consumed exactly; `cic_fast.runtime.wire` frames them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cic_fast.runtime import wire as W

__all__ = [
    "decode_error",
    "decode_hello",
    "decode_probe_ok",
    "decode_request",
    "decode_result",
    "encode_error",
    "encode_hello",
    "encode_probe_ok",
    "encode_request",
    "encode_result",
    "read_request_head",
    "read_request_mask",
    "read_result",
]

_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_REQ = struct.Struct("<QI")  # request id, number of nodes
_RES = struct.Struct("<Qd")  # request id, server seconds


def encode_hello(fingerprint: str, max_frame_bytes: int | None = None) -> bytes:
    """HELLO (client: fingerprint) or HELLO_OK (server: fingerprint + frame limit)."""
    out = W.encode_string(fingerprint)
    if max_frame_bytes is not None:
        out += _U64.pack(max_frame_bytes)
    return out


def decode_hello(payload: Any, limits: W.Limits, *, reply: bool = False) -> tuple[str, int | None]:
    """Parse HELLO (``reply=False``) or HELLO_OK; return (fingerprint, limit or None)."""
    r = W.Reader(payload, limits)
    fp = r.string("fingerprint")
    limit = r.unpack(_U64, "frame limit")[0] if reply else None
    r.end()
    return fp, limit


def encode_probe_ok(nbytes: int) -> bytes:
    """PROBE_OK payload: ``u64`` number of filler bytes received."""
    return _U64.pack(nbytes)


def decode_probe_ok(payload: Any, limits: W.Limits) -> int:
    """Parse PROBE_OK: the number of filler bytes the server received."""
    r = W.Reader(payload, limits)
    (n,) = r.unpack(_U64, "probe size")
    r.end()
    return int(n)


def encode_error(code: int, message: str) -> bytes:
    """ERROR payload: ``u16`` code, message (truncated to 1000 bytes)."""
    msg = message.encode("utf-8")[:1000].decode("utf-8", "ignore")
    return _U16.pack(int(code)) + W.encode_string(msg)


def decode_error(payload: Any, limits: W.Limits) -> W.RemoteError:
    """Parse an ERROR payload into the exception to raise."""
    r = W.Reader(payload, limits)
    (code,) = r.unpack(_U16, "error code")
    msg = r.string("error message")
    r.end()
    return W.RemoteError(code, msg)


def encode_request(
    request_id: int, on_device: Any, tensors: Mapping[str, Any]
) -> tuple[list[Any], int]:
    """INFER payload: ``u64`` id, ``u32`` n, mask, ``u32`` count, tensors.

    Returns
    -------
    parts : list of bytes-like
        The payload in pieces (tensor data is not copied).
    nbytes : int
        Payload length.
    """
    on = np.asarray(on_device, dtype=bool)
    head = _REQ.pack(request_id, on.size) + W.pack_mask(on)
    parts, n = W.encode_tensors(list(tensors.items()))
    return [head, *parts], len(head) + n


def read_request_mask(r: W.Payload) -> tuple[int, int, bytes]:
    """The start of an INFER payload: (request id, node count, the packed mask).

    The mask is not unpacked (see `cic_fast.runtime.wire.unpack_mask`): a server
    that has seen it before looks it up as it is.
    """
    request_id, n = r.unpack(_REQ, "request header")
    if n > r.limits.max_nodes:
        raise W.ProtocolError(W.ErrorCode.TOO_LARGE, f"partition of {n} nodes over the limit")
    return request_id, n, bytes(r.take((n + 7) // 8, "partition mask"))


def read_request_head(r: W.Payload) -> tuple[int, np.ndarray]:
    """The start of an INFER payload: (request id, ``on_device`` bool array).

    The boundary tensors follow (`cic_fast.runtime.wire.read_tensors`), so a
    receiver can check the partition before it allocates any of them.
    """
    request_id, n, mask = read_request_mask(r)
    return request_id, W.unpack_mask(mask, n)


def decode_request(payload: Any, limits: W.Limits) -> tuple[int, np.ndarray, dict[str, Any]]:
    """Parse INFER: (request id, ``on_device`` bool array, name -> tensor)."""
    r = W.Reader(payload, limits)
    request_id, on = read_request_head(r)
    tensors = dict(W.read_tensors(r))
    r.end()
    return request_id, on, tensors


def encode_result(
    request_id: int, server_s: float, outputs: Sequence[Any]
) -> tuple[list[Any], int]:
    """RESULT payload: ``u64`` id, ``f64`` server seconds, the flat outputs."""
    head = _RES.pack(request_id, server_s)
    parts, n = W.encode_tensors([(str(i), t) for i, t in enumerate(outputs)])
    return [head, *parts], len(head) + n


def read_result(r: W.Payload, check: W.TensorCheck | None = None) -> tuple[int, float, list[Any]]:
    """Read a RESULT payload: (request id, server seconds, flat output tensors in order).

    ``check`` sees each tensor's header before it is allocated (the client checks
    them against the model's outputs); the payload must end with the last one.
    """
    request_id, server_s = r.unpack(_RES, "result header")
    tensors = W.read_tensors(r, check)
    r.end()
    if [n for n, _ in tensors] != [str(i) for i in range(len(tensors))]:
        raise W.ProtocolError(W.ErrorCode.BAD_FRAME, "result tensors must be named 0, 1, ...")
    if not (math.isfinite(server_s) and server_s >= 0):
        raise W.ProtocolError(W.ErrorCode.BAD_FRAME, f"bad server time {server_s}")
    return request_id, float(server_s), [t for _, t in tensors]


def decode_result(payload: Any, limits: W.Limits) -> tuple[int, float, list[Any]]:
    """Parse RESULT: (request id, server seconds, flat output tensors in order)."""
    return read_result(W.Reader(payload, limits))
