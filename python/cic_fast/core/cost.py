"""The cost model (DESIGN.md, "The cost model"): the one Python place that prices a partition.

A partition puts every layer on the device (D) or the server (S). It is *valid*
when every source (a node with no in-edge: a model input) is in D and no edge
goes from S to D. Its *sent set* is the nodes of D with at least one successor
in S; each sent output crosses the link once. Its latency is

    device_s(D) + 8 * bytes_sent / bandwidth_bps + server_s(S) + (rtt_s if S else 0)

The C++ core prices in exactly this way (``cpp/include/cic/cost.hpp``) for every
partition it returns; this module is the same rule for the partitions Python code
prices itself (plan pieces, baselines, tables) and the validity / sent-set checks
of the model front end and the runtime, which hold only the layer DAG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cic_fast import _core

__all__ = [
    "BoundedPartition",
    "Partition",
    "bounded",
    "check_partition",
    "counted_rtt",
    "latency_s",
    "make_partition",
    "partition_from_core",
    "period_s",
    "price",
    "sent_set",
    "sources",
    "transfer_s",
]


class Partition(_core.PartitionBase):
    """A device/server partition of a layer graph, priced at one bandwidth.

    Immutable: its nine fields are read-only and set once, when the core (or
    `make_partition`) prices it. Compared by identity, like any object.

    Attributes
    ----------
    on_device : numpy.ndarray
        Boolean array of length n: True where the layer runs on the device.
    latency_s : float
        Predicted end-to-end latency, ``device_s + transfer_s + server_s + rtt_s``,
        recomputed from the partition with the cost model (never read off a flow).
    device_s : float
        Sum of the device times of the layers on the device.
    transfer_s : float
        ``8 * bytes_sent / bandwidth_bps``.
    server_s : float
        Sum of the server times of the layers on the server.
    rtt_s : float
        The round-trip time if anything is offloaded, else 0.
    bytes_sent : float
        Bytes transmitted: the outputs of ``sent``, each counted once; the exact sum
        ``transfer_s`` is computed from (a whole number for a traced model).
    sent : numpy.ndarray
        Ascending int64 indices of the layers on the device with at least one
        successor on the server.
    bandwidth_bps : float
        The bandwidth, in bits per second, the partition was priced at.
    """

    __slots__ = ()

    on_device: npt.NDArray[np.bool_]
    latency_s: float
    device_s: float
    transfer_s: float
    server_s: float
    rtt_s: float
    bytes_sent: float
    sent: npt.NDArray[np.int64]
    bandwidth_bps: float

    @property
    def period_s(self) -> float:
        """The pipeline period of a stream split this way: `period_s` of the three parts.

        ``max(device_s, transfer_s, server_s)`` (all-device: ``device_s``): with
        device, link and server working on different frames, one frame leaves
        every ``period_s`` seconds. Recomputed from the partition's own parts.
        """
        return period_s(self.device_s, self.transfer_s, self.server_s)

    @property
    def optimal(self) -> bool:
        """False only for a `max_throughput` answer whose search hit its step limit."""
        return True

    @property
    def gap_s(self) -> float:
        """``period_s`` minus a proven lower bound on the best period (0 when optimal)."""
        return 0.0

    @property
    def offloads(self) -> bool:
        """True if at least one layer runs on the server."""
        return not bool(self.on_device.all())

    @property
    def n_on_device(self) -> int:
        """Number of layers that run on the device."""
        return int(np.count_nonzero(self.on_device))

    def __repr__(self) -> str:
        n = self.on_device.shape[0]
        return (
            f"Partition(on_device={self.n_on_device}/{n}, latency_s={self.latency_s:.6g}, "
            f"device_s={self.device_s:.6g}, transfer_s={self.transfer_s:.6g}, "
            f"server_s={self.server_s:.6g}, rtt_s={self.rtt_s:.6g}, "
            f"bytes_sent={self.bytes_sent:.15g}, sent={self.sent.tolist()}, "
            f"bandwidth_bps={self.bandwidth_bps:.6g})"
        )


class BoundedPartition(Partition):
    """A `Partition` from a search that may have stopped early (`max_throughput`).

    ``optimal`` is False when the search reached its step limit; the partition is
    then the best one found and ``gap_s`` says how far from the optimum it may be
    (its period minus a proven lower bound). Otherwise as `Partition`.
    """

    __slots__ = ("_gap_s", "_optimal")
    _gap_s: float
    _optimal: bool

    @property
    def optimal(self) -> bool:
        """True if no partition has a smaller period (the search finished)."""
        return self._optimal

    @property
    def gap_s(self) -> float:
        """``period_s`` minus a proven lower bound on the best period (0 when optimal)."""
        return self._gap_s

    def __repr__(self) -> str:
        extra = "" if self._optimal else f", optimal=False, gap_s={self._gap_s:.6g}"
        return super().__repr__()[:-1] + extra + ")"

    @classmethod
    def of(cls, p: Partition, optimal: bool, lower_bound_s: float) -> BoundedPartition:
        """``p`` with a search's status: ``gap_s`` is its period minus ``lower_bound_s``."""
        self = cls(
            p.on_device,
            p.latency_s,
            p.device_s,
            p.transfer_s,
            p.server_s,
            p.rtt_s,
            p.bytes_sent,
            p.sent,
            p.bandwidth_bps,
        )
        self._optimal = bool(optimal)
        self._gap_s = 0.0 if optimal else max(0.0, self.period_s - float(lower_bound_s))
        return self


def bounded(p: Partition, optimal: bool, lower_bound_s: float) -> BoundedPartition:
    """``p`` as a `BoundedPartition` with its search status (`BoundedPartition.of`)."""
    return BoundedPartition.of(p, optimal, lower_bound_s)


# -- the formula ---------------------------------------------------------------------


def period_s(device_s: Any, transfer_s: Any, server_s: Any) -> Any:
    """The pipeline period of a partition from its parts (scalars, or arrays elementwise).

    ``max(device_s, transfer_s, server_s)``: the slowest of the three stages a
    stream's frames pass through. The rtt does not count: with frames in flight
    back to back, a round trip delays each frame but not the rate.
    """
    if isinstance(device_s, np.ndarray) or isinstance(transfer_s, np.ndarray):
        return np.maximum(np.maximum(device_s, transfer_s), server_s)
    return max(device_s, transfer_s, server_s)


def transfer_s(bytes_sent: Any, bandwidth_bps: Any) -> Any:
    """Seconds to send ``bytes_sent`` bytes at ``bandwidth_bps`` (scalars or arrays).

    ``8 * b / bw``, in that order: for ``b = 0`` at a denormal bandwidth,
    ``b * (8 / bw)`` would be ``0 * inf = nan``.
    """
    return 8.0 * bytes_sent / bandwidth_bps


def counted_rtt(rtt_s: Any, offloads: Any) -> Any:
    """The round trip a partition pays: ``rtt_s`` if it offloads, else 0 (arrays too)."""
    if isinstance(offloads, (bool, np.bool_)):
        return rtt_s + 0.0 if offloads else 0.0  # + 0.0 turns -0.0 into 0.0
    return np.where(offloads, rtt_s + 0.0, 0.0)


def latency_s(
    device_s: Any,
    server_s: Any,
    bytes_sent: Any,
    bandwidth_bps: Any,
    rtt_s: Any = 0.0,
    offloads: Any = True,
) -> Any:
    """The latency of a partition from its parts (scalars, or arrays elementwise).

    ``device_s + transfer_s(bytes_sent, bandwidth_bps) + server_s + counted_rtt``,
    summed in that order (the core's order, so results agree to the bit).
    """
    return (
        device_s + transfer_s(bytes_sent, bandwidth_bps) + server_s + counted_rtt(rtt_s, offloads)
    )


def make_partition(
    on_device: npt.NDArray[np.bool_],
    sent: npt.NDArray[np.int64],
    device_s: float,
    server_s: float,
    bytes_sent: float,
    bandwidth_bps: float,
    rtt_s: float,
    offloads: bool,
) -> Partition:
    """A Partition from its sums, priced with the formula at ``bandwidth_bps``.

    The arrays are kept as given (no copy): pass arrays nobody else writes.
    """
    t = transfer_s(bytes_sent, bandwidth_bps)
    rtt = counted_rtt(rtt_s, offloads)
    return Partition(
        on_device,
        device_s + t + server_s + rtt,
        device_s,
        t,
        server_s,
        rtt,
        float(bytes_sent),
        sent,
        bandwidth_bps,
    )


def partition_from_core(packed: tuple[Any, ...], bandwidth_bps: float) -> Partition:
    """The Partition of a ``cic_fast._core`` result tuple, priced there by the C++ model.

    ``packed`` is ``(on_device, sent, latency_s, device_s, transfer_s, server_s, rtt_s,
    bytes_sent)`` as returned by ``_core.Graph.min_cut`` and ``evaluate``.
    """
    on_device, sent, latency, device, transfer, server, rtt, nbytes = packed
    return Partition(on_device, latency, device, transfer, server, rtt, nbytes, sent, bandwidth_bps)


# -- validity and the sent set -------------------------------------------------------


def sources(edges: npt.NDArray[np.int64], n_nodes: int) -> npt.NDArray[np.int64]:
    """Ascending indices of the nodes with no in-edge (the model inputs)."""
    has_pred = np.zeros(n_nodes, dtype=bool)
    if edges.size:
        has_pred[edges[:, 1]] = True
    return np.flatnonzero(~has_pred).astype(np.int64)


def _name(names: Sequence[str] | None, v: int) -> str:
    return f"node {v}" if names is None else f"node {v} ({names[v]})"


def check_partition(
    edges: npt.NDArray[np.int64],
    n_nodes: int,
    on_device: Any,
    *,
    names: Sequence[str] | None = None,
) -> npt.NDArray[np.bool_]:
    """Check that ``on_device`` is a valid partition and return it as a fresh bool array.

    Parameters
    ----------
    edges : numpy.ndarray
        (E, 2) int64 (u, v) pairs.
    n_nodes : int
        Number of nodes.
    on_device : array_like of bool
        True where the node runs on the device (0/1 integers are accepted).
    names : sequence of str, optional
        Node names, used in messages.

    Raises
    ------
    ValueError
        Wrong length, non-boolean values, a source (model input) on the server, or
        an edge from the server to the device (not closed under predecessors).
    """
    on = np.asarray(on_device)
    if on.ndim != 1 or len(on) != n_nodes:
        raise ValueError(f"on_device must have length {n_nodes} (one entry per node)")
    if on.dtype != np.bool_:
        if not np.isin(on, (0, 1)).all():
            raise ValueError("on_device must be boolean")
    on = on.astype(np.bool_, copy=True)
    src = sources(edges, n_nodes)
    off = src[~on[src]]
    if off.size:
        raise ValueError(
            f"{_name(names, int(off[0]))} is a model input but on the server "
            "(every model input must be on the device)"
        )
    if edges.size:
        back = ~on[edges[:, 0]] & on[edges[:, 1]]
        if back.any():
            u, v = (int(x) for x in edges[back][0])
            raise ValueError(
                f"partition is not closed under predecessors: {_name(names, u)} (server) "
                f"feeds {_name(names, v)} (device)"
            )
    return on


def sent_set(
    edges: npt.NDArray[np.int64], on_device: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """Ascending indices of the device nodes with at least one successor on the server."""
    if edges.size == 0:
        return np.zeros(0, dtype=np.int64)
    cross = on_device[edges[:, 0]] & ~on_device[edges[:, 1]]
    return np.unique(edges[cross, 0]).astype(np.int64)


def price(
    edges: npt.NDArray[np.int64],
    device_s: npt.NDArray[np.float64],
    server_s: npt.NDArray[np.float64],
    out_bytes: npt.NDArray[np.float64],
    on_device: Any,
    bandwidth_bps: float,
    rtt_s: float = 0.0,
) -> Partition:
    """Check a partition and price it with the cost model (numpy; no core needed).

    `cic_fast.Graph.evaluate` gives the same partition, priced by the C++ core
    (sums may differ in the last bit: numpy adds pairwise).

    Raises
    ------
    ValueError
        See `check_partition`.
    """
    on = check_partition(edges, len(device_s), on_device)
    sent = sent_set(edges, on)
    return make_partition(
        on,
        sent,
        float(np.sum(device_s[on])),
        float(np.sum(server_s[~on])),
        float(np.sum(out_bytes[sent])),
        bandwidth_bps,
        rtt_s,
        not bool(on.all()),
    )
