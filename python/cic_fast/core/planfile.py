"""The splitting model's file format (``Planner.save`` / ``Planner.load``).

Layout, all little-endian::

    magic   8 bytes   b"CICPLAN\\0"
    version u32       1
    length  u64       payload bytes
    sha256  32 bytes  of the payload
    payload:
      u64 header length, then a JSON header
        {"n", "E", "K", "rtt_s", "names", "stats", "sizes", "objective"}
      ("objective": "latency" or "throughput"; files without it are latency plans)
      edges (E, 2) i8, device_s n f8, server_s n f8, out_bytes n f8,
      partitions (K, ceil(n / 8)) u1 (np.packbits rows), breakpoints K - 1 f8

A file holds the graph, its costs and the K partitions; the plan is restored
without any min-cut and its breakpoints are re-derived and compared. This module
reads and writes bytes only; `cic_fast.core.planner` turns them into a Planner.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MAGIC", "OBJECTIVES", "VERSION", "PlanFile", "decode", "encode"]

MAGIC = b"CICPLAN\x00"
VERSION = 1
# magic, version (u32), payload length (u64), sha256 of the payload.
_HEADER = struct.Struct("<8sIQ32s")


@dataclass(frozen=True, eq=False)
class PlanFile:
    """The content of a plan file.

    Attributes
    ----------
    edges : numpy.ndarray
        (E, 2) int64.
    device_s, server_s, out_bytes : numpy.ndarray
        float64, n each.
    rtt_s : float
    names : tuple of str or None
    partitions : numpy.ndarray
        (K, n) bool, slowest link first.
    breakpoints_bps : numpy.ndarray
        K - 1 float64, ascending.
    stats : dict
        The build statistics saved with the plan.
    objective : str
        ``"latency"`` or ``"throughput"`` (what the partitions optimise).
    """

    edges: npt.NDArray[np.int64]
    device_s: npt.NDArray[np.float64]
    server_s: npt.NDArray[np.float64]
    out_bytes: npt.NDArray[np.float64]
    rtt_s: float
    names: tuple[str, ...] | None
    partitions: npt.NDArray[np.bool_]
    breakpoints_bps: npt.NDArray[np.float64]
    stats: dict[str, Any]
    objective: str = "latency"


OBJECTIVES = ("latency", "throughput")


def encode(f: PlanFile) -> bytes:
    """The bytes of a plan file."""
    n = f.device_s.shape[0]
    k = f.partitions.shape[0]
    arrays = [
        np.ascontiguousarray(f.edges, dtype="<i8"),
        np.ascontiguousarray(f.device_s, dtype="<f8"),
        np.ascontiguousarray(f.server_s, dtype="<f8"),
        np.ascontiguousarray(f.out_bytes, dtype="<f8"),
        np.packbits(f.partitions.reshape(k, n), axis=1),
        np.asarray(f.breakpoints_bps, dtype="<f8"),
    ]
    meta = {
        "n": n,
        "E": int(f.edges.shape[0]),
        "K": k,
        "rtt_s": f.rtt_s,
        "names": None if f.names is None else list(f.names),
        "stats": f.stats,
        "sizes": [int(a.nbytes) for a in arrays],
        "objective": f.objective,
    }
    head = json.dumps(meta).encode()
    payload = struct.pack("<Q", len(head)) + head + b"".join(a.tobytes() for a in arrays)
    digest = hashlib.sha256(payload).digest()
    return _HEADER.pack(MAGIC, VERSION, len(payload), digest) + payload


def decode(data: bytes, *, name: str = "data") -> PlanFile:
    """Parse and check a plan file's bytes.

    Raises
    ------
    ValueError
        Not a plan file (magic), another version, truncated or trailing bytes,
        a checksum mismatch, or a malformed header or array sizes.
    """
    if len(data) < _HEADER.size or data[:8] != MAGIC:
        raise ValueError(f"{name} is not a cic_fast plan file (bad magic)")
    _, version, length, digest = _HEADER.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"plan file version {version} is not supported (expected {VERSION})")
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise ValueError(
            f"plan file is truncated or has trailing data: {len(payload)} payload bytes, "
            f"header says {length}"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("plan file is corrupt (checksum mismatch)")
    try:
        (hlen,) = struct.unpack_from("<Q", payload)
        meta = json.loads(payload[8 : 8 + hlen])
        n, e, k = int(meta["n"]), int(meta["E"]), int(meta["K"])
        sizes = [int(s) for s in meta["sizes"]]
        expect = [16 * e, 8 * n, 8 * n, 8 * n, k * ((n + 7) // 8), 8 * max(k - 1, 0)]
        if sizes != expect or 8 + hlen + sum(sizes) != len(payload):
            raise ValueError("array sizes disagree with the header")
        offs = np.cumsum([8 + hlen, *sizes])
        buf = memoryview(payload)

        def arr(i: int, dtype: str) -> np.ndarray:
            return np.frombuffer(buf[offs[i] : offs[i + 1]], dtype=dtype).copy()

        names = meta.get("names")
        objective = meta.get("objective", "latency")  # files before the throughput plan
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}")
        return PlanFile(
            edges=arr(0, "<i8").reshape(e, 2),
            device_s=arr(1, "<f8"),
            server_s=arr(2, "<f8"),
            out_bytes=arr(3, "<f8"),
            rtt_s=float(meta["rtt_s"]),
            names=None if names is None else tuple(str(x) for x in names),
            partitions=np.unpackbits(arr(4, "u1").reshape(k, -1), axis=1, count=n).astype(np.bool_),
            breakpoints_bps=arr(5, "<f8"),
            stats=dict(meta.get("stats") or {}),
            objective=objective,
        )
    except (KeyError, TypeError, ValueError, struct.error) as exc:
        raise ValueError(f"plan file is malformed: {exc}") from None
