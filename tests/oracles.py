"""Independent reference answers for the partitioning cost model (DESIGN.md).

Nothing here uses cic_fast: the tests compare the library against these.

- `latency_of` prices one partition straight from the formula.
- `brute_force` enumerates every valid partition of a small graph (<= 12 nodes).
- `networkx_optimum` solves the DADS min-cut network with networkx on exact
  integer capacities (floats scaled to fixed point), for graphs too big to enumerate.
- `brute_force_period` / `brute_force_pareto` enumerate the same partitions for the
  stream objective (pipeline period, and the (max(device, server), bytes) front);
  `milp_period` solves the period with scipy's MILP (HiGHS), for bigger graphs.
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


def _valid_partitions(e: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every valid partition of an n-node graph, by enumerating the 2**n subsets.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``on_device`` of each valid partition, shape (m, n), and which nodes it
        sends (device nodes with a successor on the server), shape (m, n); both bool.
    """
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
    return b, sends


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
    b, sends = _valid_partitions(e, len(dev))
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


# --- streams: the pipeline period (DESIGN.md "Streams: the throughput objective") ------


@dataclass(frozen=True)
class PeriodResult:
    """A partition priced for a stream: period = max(device, transfer, server)."""

    on_device: np.ndarray
    period_s: float
    device_s: float
    transfer_s: float
    server_s: float
    bytes_sent: float


def period_of(
    on_device: ArrayLike,
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
    bandwidth_bps: float,
) -> PeriodResult:
    """Price a partition's pipeline period with the formula; validity is not checked.

    Parameters
    ----------
    on_device, edges, device_s, server_s, out_bytes, bandwidth_bps
        As in `latency_of`.

    Returns
    -------
    PeriodResult
        The three stage times (exact-rounded sums) and their maximum; all-device
        has transfer and server 0, so its period is the device sum.
    """
    p = latency_of(on_device, edges, device_s, server_s, out_bytes, bandwidth_bps)
    return PeriodResult(
        on_device=p.on_device,
        period_s=max(p.device_s, p.transfer_s, p.server_s),
        device_s=p.device_s,
        transfer_s=p.transfer_s,
        server_s=p.server_s,
        bytes_sent=p.bytes_sent,
    )


def brute_force_period(
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
    bandwidth_bps: float,
) -> PeriodResult:
    """Minimum pipeline period over every valid partition of a graph of at most 12 nodes.

    Parameters
    ----------
    edges, device_s, server_s, out_bytes, bandwidth_bps
        As in `latency_of`.

    Returns
    -------
    PeriodResult
        One optimal partition (the first in enumeration order among the exact minima),
        priced with `period_of`.
    """
    e, dev, srv, size = _arrays(edges, device_s, server_s, out_bytes)
    b, sends = _valid_partitions(e, len(dev))
    rough = np.maximum.reduce([b @ dev, (~b) @ srv, 8.0 * (sends @ size) / bandwidth_bps])
    # Re-price the near-optimal ones exactly; the matrix products above round differently.
    near = np.flatnonzero(rough <= rough.min() * (1 + 1e-9) + 1e-300)
    priced = [period_of(b[i], e, dev, srv, size, bandwidth_bps) for i in near]
    return min(priced, key=lambda p: p.period_s)


def brute_force_pareto(
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
) -> list[tuple[float, float]]:
    """Pareto front of (max(device sum, server sum), bytes sent) over valid partitions.

    A point is on the front when no valid partition has c' <= c and bytes' <= bytes
    with one of the two strict. Over x = 1/bandwidth each partition's period is
    max(c, 8 * bytes * x), so the lower envelope of the front's lines is the best
    period at every bandwidth (DESIGN.md, "Streams").

    Parameters
    ----------
    edges, device_s, server_s, out_bytes
        As in `latency_of` (at most 12 nodes).

    Returns
    -------
    list[tuple[float, float]]
        ``(c, bytes_sent)`` pairs, bytes ascending (so c descending), no duplicates;
        sums exact-rounded (`math.fsum`).
    """
    e, dev, srv, size = _arrays(edges, device_s, server_s, out_bytes)
    b, sends = _valid_partitions(e, len(dev))
    points = sorted(
        (
            math.fsum(size[s].tolist()),
            max(math.fsum(dev[d].tolist()), math.fsum(srv[~d].tolist())),
        )
        for d, s in zip(b, sends, strict=True)
    )
    front: list[tuple[float, float]] = []
    for bytes_sent, c in points:
        # Sorted by bytes then c: a point is kept when it beats every c before it.
        if not front or c < front[-1][0]:
            front.append((c, bytes_sent))
    return front


def milp_period(
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
    bandwidth_bps: float,
    *,
    time_limit_s: float = 60.0,
) -> PeriodResult:
    """Minimum pipeline period by a mixed-integer program (scipy.optimize.milp, HiGHS).

    Binary y_v (1 = device), y = 1 on sources, y_u >= y_v on every edge (u, v)
    (closure); binary z_u for each node with successors, z_u >= y_u - y_w for each
    successor w (u is sent when on the device with a successor on the server);
    minimise P >= sum d_v y_v, P >= sum s_v (1 - y_v), P >= sum (8 b_u / bw) z_u.
    Times are divided by the largest per-node time first (HiGHS tolerances are
    absolute) and the gap is 0, so the answer is optimal up to HiGHS's feasibility
    tolerance (~1e-7 of that largest time).

    Parameters
    ----------
    edges, device_s, server_s, out_bytes, bandwidth_bps
        As in `latency_of`; any size.
    time_limit_s : float
        Passed to HiGHS; running out of it is an error, not an answer.

    Returns
    -------
    PeriodResult
        The partition read off y, priced with `period_of` (not the MILP objective).

    Raises
    ------
    RuntimeError
        HiGHS did not prove optimality (time limit, or a failure).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    e, dev, srv, size = _arrays(edges, device_s, server_s, out_bytes)
    n = len(dev)
    transfer = 8.0 * size / bandwidth_bps
    scale = max(float(np.max(dev, initial=0.0)), float(np.max(srv, initial=0.0)))
    scale = max(scale, float(np.max(transfer, initial=0.0)))
    scale = scale if scale > 0 else 1.0
    senders = np.unique(e[:, 0])
    z_of = {int(u): n + k for k, u in enumerate(senders)}
    n_vars = n + len(senders) + 1
    p_var = n_vars - 1

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def constraint(coeffs: dict[int, float], lo: float, hi: float) -> None:
        row = len(lower)
        for col, val in coeffs.items():
            rows.append(row)
            cols.append(col)
            vals.append(val)
        lower.append(lo)
        upper.append(hi)

    for u, w in e.tolist():
        constraint({u: 1.0, w: -1.0}, 0.0, np.inf)  # y_u >= y_w
        constraint({z_of[u]: 1.0, u: -1.0, w: 1.0}, 0.0, np.inf)  # z_u >= y_u - y_w
    d, s, t = dev / scale, srv / scale, transfer / scale
    constraint({p_var: 1.0} | {v: -d[v] for v in range(n)}, 0.0, np.inf)
    constraint({p_var: 1.0} | {v: s[v] for v in range(n)}, math.fsum(s.tolist()), np.inf)
    constraint({p_var: 1.0} | {c: -t[u] for u, c in z_of.items()}, 0.0, np.inf)
    a = coo_array((vals, (rows, cols)), shape=(len(lower), n_vars)).tocsr()

    lb = np.zeros(n_vars)
    ub = np.ones(n_vars)
    has_pred = np.zeros(n, dtype=bool)
    has_pred[e[:, 1]] = True
    lb[:n][~has_pred] = 1.0  # sources stay on the device
    ub[p_var] = np.inf
    integrality = np.ones(n_vars)
    integrality[p_var] = 0
    cost = np.zeros(n_vars)
    cost[p_var] = 1.0
    res = milp(
        cost,
        constraints=LinearConstraint(a, lower, upper),
        integrality=integrality,
        bounds=Bounds(lb, ub),
        options={"mip_rel_gap": 0, "time_limit": time_limit_s},
    )
    if not res.success or res.x is None:
        raise RuntimeError(f"HiGHS did not solve the period MILP: {res.message}")
    on_device = res.x[:n] > 0.5
    if not is_valid_partition(on_device, e):
        raise AssertionError("the MILP returned an invalid partition: the oracle is broken")
    return period_of(on_device, e, dev, srv, size, bandwidth_bps)
