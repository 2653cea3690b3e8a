"""Independent reference answers for the partitioning cost model (DESIGN.md).

Nothing here uses cic_fast: the tests compare the library against these.

- `latency_of` prices one partition straight from the formula.
- `brute_force` enumerates every valid partition of a small graph (<= 12 nodes).
- `networkx_optimum` solves the DADS min-cut network with networkx on exact
  integer capacities (floats scaled to fixed point), for graphs too big to enumerate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

BRUTE_FORCE_MAX_NODES = 12

# Fixed point for the integer network: the sum of all finite capacities maps to about
# 2**80, so the rounding error of a whole cut (<= one unit per cut edge) is ~1e-21 of it.
_TOTAL_BITS = 80


@dataclass(frozen=True)
class Priced:
    """A partition priced with the DESIGN.md formula (fields mirror cic_fast.Partition)."""

    on_device: np.ndarray
    latency_s: float
    device_s: float
    transfer_s: float
    server_s: float
    rtt_s: float
    bytes_sent: float
    sent: np.ndarray


def _arrays(
    edges: ArrayLike, device_s: ArrayLike, server_s: ArrayLike, out_bytes: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    return (
        e,
        np.asarray(device_s, dtype=np.float64),
        np.asarray(server_s, dtype=np.float64),
        np.asarray(out_bytes, dtype=np.float64),
    )


def is_valid_partition(on_device: ArrayLike, edges: ArrayLike) -> bool:
    """True if every source is on the device and no edge goes server -> device."""
    d = np.asarray(on_device, dtype=bool)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    has_pred = np.zeros(len(d), dtype=bool)
    has_pred[e[:, 1]] = True
    if not d[~has_pred].all():
        return False
    return not np.any(~d[e[:, 0]] & d[e[:, 1]])


def sent_nodes(on_device: ArrayLike, edges: ArrayLike) -> np.ndarray:
    """Sorted device nodes with at least one successor on the server."""
    d = np.asarray(on_device, dtype=bool)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    crossing = d[e[:, 0]] & ~d[e[:, 1]]
    return np.unique(e[crossing, 0]).astype(np.int64)


def latency_of(
    on_device: ArrayLike,
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
    bandwidth_bps: float,
    rtt_s: float = 0.0,
) -> Priced:
    """Price a partition with the DESIGN.md formula; validity is not checked.

    Parameters
    ----------
    on_device : array_like of bool
        True where the layer runs on the device.
    edges, device_s, server_s, out_bytes : array_like
        The graph and its costs, as `cic_fast.min_cut` takes them.
    bandwidth_bps : float
        Link bandwidth in bits per second.
    rtt_s : float
        Round-trip time added when anything runs on the server.

    Returns
    -------
    Priced
        All terms of the latency; sums are exact-rounded (`math.fsum`).
    """
    e, dev, srv, size = _arrays(edges, device_s, server_s, out_bytes)
    d = np.asarray(on_device, dtype=bool)
    sent = sent_nodes(d, e)
    bytes_sent = math.fsum(size[sent].tolist())
    device_total = math.fsum(dev[d].tolist())
    server_total = math.fsum(srv[~d].tolist())
    transfer = 8.0 * bytes_sent / bandwidth_bps
    rtt = float(rtt_s) if not d.all() else 0.0
    return Priced(
        on_device=d.copy(),
        latency_s=math.fsum([device_total, transfer, server_total, rtt]),
        device_s=device_total,
        transfer_s=transfer,
        server_s=server_total,
        rtt_s=rtt,
        bytes_sent=bytes_sent,
        sent=sent,
    )


def brute_force(
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
    bandwidth_bps: float,
    rtt_s: float = 0.0,
    *,
    rel_tie: float = 1e-12,
) -> tuple[float, list[np.ndarray]]:
    """Minimum latency over every valid partition of a graph of at most 12 nodes.

    Parameters
    ----------
    edges, device_s, server_s, out_bytes, bandwidth_bps, rtt_s
        As in `latency_of`.
    rel_tie : float
        Partitions within this relative distance of the minimum count as optimal.

    Returns
    -------
    tuple[float, list[numpy.ndarray]]
        The minimum latency (formula, `math.fsum`) and every optimal ``on_device``.
    """
    e, dev, srv, size = _arrays(edges, device_s, server_s, out_bytes)
    n = len(dev)
    if not 1 <= n <= BRUTE_FORCE_MAX_NODES:
        raise ValueError(f"brute force needs 1..{BRUTE_FORCE_MAX_NODES} nodes, got {n}")
    masks = np.arange(1 << n, dtype=np.int64)
    pred = [0] * n
    succ = [0] * n
    for u, v in e.tolist():
        pred[v] |= 1 << u
        succ[u] |= 1 << v
    sources = sum(1 << v for v in range(n) if pred[v] == 0)
    valid = (masks & sources) == sources
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(bool)
    for v in range(n):
        # v on the device needs every predecessor on the device too.
        valid &= ~bits[:, v] | ((masks & pred[v]) == pred[v])
    candidates = masks[valid]
    b = bits[valid]
    # A device node is sent when some successor is on the server (not in the mask).
    sends = np.stack([b[:, u] & ((~candidates & succ[u]) != 0) for u in range(n)], axis=1)
    rough = b @ dev + (~b) @ srv + 8.0 * (sends @ size) / bandwidth_bps
    rough = rough + np.where(b.all(axis=1), 0.0, rtt_s)
    # Re-price the near-optimal ones exactly; the matrix products above round differently.
    near = np.flatnonzero(rough <= rough.min() * (1 + 1e-9) + 1e-300)
    priced = [latency_of(b[i], e, dev, srv, size, bandwidth_bps, rtt_s) for i in near]
    best = min(p.latency_s for p in priced)
    argmins = [p.on_device for p in priced if p.latency_s <= best * (1 + rel_tie) + 1e-300]
    return best, argmins


def dads_network(
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
    bandwidth_bps: float,
    *,
    closure: bool = True,
    pin_inputs: bool = True,
) -> tuple[nx.DiGraph, Any, Any]:
    """The DESIGN.md min-cut network with integer capacities.

    Source side = device. Node ``("v", i)`` is layer i, ``("aux", u)`` carries u's
    upload once however many server-side successors read it.

    Parameters
    ----------
    edges, device_s, server_s, out_bytes, bandwidth_bps
        As in `latency_of`.
    closure, pin_inputs : bool
        Leave out the closure edges or the input pinning (plain DADS), to show
        that a hand-drawn test case depends on them.

    Returns
    -------
    tuple[networkx.DiGraph, source, sink]
    """
    e, dev, srv, size = _arrays(edges, device_s, server_s, out_bytes)
    n = len(dev)
    transfer = 8.0 * size / bandwidth_bps
    total = math.fsum(dev.tolist()) + math.fsum(srv.tolist()) + math.fsum(transfer.tolist())
    exp = _TOTAL_BITS - (math.frexp(total)[1] if total > 0 else 0)

    def fixed(x: float) -> int:
        return round(math.ldexp(float(x), exp))

    caps = [fixed(x) for x in np.concatenate([dev, srv, transfer])]
    # "Infinite" = more than every finite capacity together: no min cut can use one.
    inf = sum(caps) + 1
    s, t = "source", "sink"
    g = nx.DiGraph()
    g.add_nodes_from([s, t])
    g.add_nodes_from(("v", i) for i in range(n))
    has_pred = np.zeros(n, dtype=bool)
    has_pred[e[:, 1]] = True
    for i in range(n):
        g.add_edge(("v", i), t, capacity=caps[i])
        # Pinning: a model input's data lives on the device; it cannot run on the server.
        pinned = pin_inputs and not has_pred[i]
        g.add_edge(s, ("v", i), capacity=inf if pinned else caps[n + i])
    for u, w in e.tolist():
        g.add_edge(("v", u), ("aux", u), capacity=caps[2 * n + u])
        g.add_edge(("aux", u), ("v", w), capacity=inf)
        if closure:
            # w on the device forces u on the device (no server -> device flow).
            g.add_edge(("v", w), ("v", u), capacity=inf)
    return g, s, t


def networkx_cut(
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
    bandwidth_bps: float,
    **network: bool,
) -> tuple[float, np.ndarray]:
    """Min cut of `dads_network` (options passed on): its value in seconds and source side.

    The value is the fixed-point cut value scaled back, accurate to ~1e-20 relative.
    """
    _, dev, srv, size = _arrays(edges, device_s, server_s, out_bytes)
    g, s, t = dads_network(edges, dev, srv, size, bandwidth_bps, **network)
    value, (source_side, _) = nx.minimum_cut(g, s, t)
    on_device = np.zeros(len(dev), dtype=bool)
    for node in source_side:
        if isinstance(node, tuple) and node[0] == "v":
            on_device[node[1]] = True
    transfer = 8.0 * size / bandwidth_bps
    total = math.fsum(dev.tolist()) + math.fsum(srv.tolist()) + math.fsum(transfer.tolist())
    exp = _TOTAL_BITS - (math.frexp(total)[1] if total > 0 else 0)
    return math.ldexp(value, -exp), on_device


def networkx_optimum(
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
    bandwidth_bps: float,
    rtt_s: float = 0.0,
) -> Priced:
    """Optimal partition from networkx's min cut of the integer DADS network.

    Parameters
    ----------
    edges, device_s, server_s, out_bytes, bandwidth_bps, rtt_s
        As in `latency_of`.

    Returns
    -------
    Priced
        The min cut's source side, priced with the formula; with ``rtt_s > 0`` the
        all-device partition instead where that is cheaper.
    """
    e, dev, srv, size = _arrays(edges, device_s, server_s, out_bytes)
    n = len(dev)
    _, on_device = networkx_cut(e, dev, srv, size, bandwidth_bps)
    if not is_valid_partition(on_device, e):
        raise AssertionError("networkx returned an invalid cut: the oracle is broken")
    best = latency_of(on_device, e, dev, srv, size, bandwidth_bps, rtt_s)
    # rtt is paid by every offloading partition alike, so the min cut stays the best
    # offloading one; only all-device (which pays no rtt) can beat it.
    everything = latency_of(np.ones(n, dtype=bool), e, dev, srv, size, bandwidth_bps, rtt_s)
    return everything if everything.latency_s <= best.latency_s else best
