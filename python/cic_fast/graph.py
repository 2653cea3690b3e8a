"""Exact min-cut partitioning of a layer DAG (the DADS construction, fixed).

`Graph` validates a layer DAG and its per-layer costs once and keeps the flow
network laid out in C++, so that `Graph.min_cut` at a new bandwidth only
re-sets capacities and re-solves. `min_cut` is the one-call form.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from cic_fast import _core
from cic_fast.partition import Partition

__all__ = ["Graph", "min_cut"]

_INT64_MAX = np.iinfo(np.int64).max


def _as_edges(edges: Any) -> npt.NDArray[np.int64]:
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


def _as_vector(values: Any, name: str) -> npt.NDArray[np.float64]:
    try:
        a = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be 1-D numbers: {exc}") from None
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real-valued array, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float64)


def _as_real(value: Any, name: str) -> float:
    if type(value) is float:  # the common case, checked first: this is on the hot path
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _as_partition(on_device: Any, n: int) -> npt.NDArray[np.bool_]:
    a = np.asarray(on_device)
    # Always a copy: the Partition returned keeps it.
    if a.dtype.kind == "b" or (a.dtype.kind in "iu" and bool(((a == 0) | (a == 1)).all())):
        out = a.astype(np.bool_, copy=True)
    else:
        raise TypeError(f"on_device must be a boolean array, got dtype {a.dtype}")
    if out.ndim != 1 or out.shape[0] != n:
        raise ValueError(f"on_device must have length {n} (one entry per node), got {a.shape}")
    return out


def _pack(t: tuple[Any, ...], bandwidth_bps: float) -> Partition:
    on_device, sent, latency, device, transfer, server, rtt, nbytes = t
    return Partition._make(
        on_device, latency, device, transfer, server, rtt, int(nbytes), sent, bandwidth_bps
    )


class Graph:
    """A layer DAG with its per-layer costs, prepared for repeated min-cuts.

    Parameters
    ----------
    edges : array_like of int, shape (E, 2)
        ``(u, v)`` pairs: layer ``v`` consumes the output of layer ``u``.
        Duplicates are allowed and counted once. Nodes with no in-edge are the
        model inputs and always stay on the device.
    device_s, server_s : array_like of float, shape (n,)
        Seconds each layer takes on the device and on the server.
    out_bytes : array_like of float, shape (n,)
        Bytes of each layer's output (sent at most once).

    Raises
    ------
    TypeError
        If ``edges`` is not an integer array or a cost array is not numeric.
    ValueError
        If the shapes disagree, an index is out of range, the graph has a
        cycle, or a cost is negative, NaN or infinite. The message names it.

    Examples
    --------
    >>> g = Graph([(0, 1), (1, 2)], [0.0, 0.05, 0.05], [0.0, 0.005, 0.005],
    ...           [600e3, 1e3, 4e3])
    >>> g.min_cut(10e6).on_device.tolist()
    [True, True, False]
    """

    __slots__ = ("_core",)

    def __init__(self, edges: Any, device_s: Any, server_s: Any, out_bytes: Any) -> None:
        # The core copies what it keeps, so later changes to the caller's
        # arrays cannot desynchronise it.
        self._core = _core.Graph(
            _as_edges(edges),
            _as_vector(device_s, "device_s"),
            _as_vector(server_s, "server_s"),
            _as_vector(out_bytes, "out_bytes"),
        )

    @property
    def n_nodes(self) -> int:
        """Number of layers."""
        return int(self._core.n_nodes)

    @property
    def n_edges(self) -> int:
        """Number of distinct edges."""
        return int(self._core.n_edges)

    @property
    def edges(self) -> npt.NDArray[np.int64]:
        """The distinct edges, shape (E, 2), grouped by source node (a copy)."""
        return self._core.edges

    @property
    def inputs(self) -> npt.NDArray[np.int64]:
        """Indices of the nodes with no in-edge (the model inputs), ascending."""
        return self._core.inputs

    @property
    def device_s(self) -> npt.NDArray[np.float64]:
        """Per-layer device seconds (a copy)."""
        return self._core.device_s

    @property
    def server_s(self) -> npt.NDArray[np.float64]:
        """Per-layer server seconds (a copy)."""
        return self._core.server_s

    @property
    def out_bytes(self) -> npt.NDArray[np.float64]:
        """Per-layer output bytes (a copy)."""
        return self._core.out_bytes

    @property
    def network_size(self) -> tuple[int, int]:
        """Nodes and arc pairs of the flow network the solver runs on."""
        return int(self._core.network_nodes), int(self._core.network_arc_pairs)

    def min_cut(self, bandwidth_bps: float, rtt_s: float = 0.0) -> Partition:
        """Return the exact latency-optimal partition at one bandwidth.

        Parameters
        ----------
        bandwidth_bps : float
            Link bandwidth in bits per second, finite and > 0.
        rtt_s : float, optional
            Round-trip time added when anything is offloaded, finite and >= 0.

        Returns
        -------
        Partition
            The optimum of the cost model (a tie with all-device keeps all on
            the device; other ties give one optimal partition, the same every
            time), with its latency recomputed from the partition.

        Notes
        -----
        The solver allocates nothing per call and releases the GIL; calls on
        one Graph from several threads are serialised.
        """
        bw = _as_real(bandwidth_bps, "bandwidth_bps")
        rtt = _as_real(rtt_s, "rtt_s")
        return _pack(self._core.min_cut(bw, rtt), bw)

    def evaluate(self, on_device: Any, bandwidth_bps: float, rtt_s: float = 0.0) -> Partition:
        """Price a given partition with the cost model.

        Parameters
        ----------
        on_device : array_like of bool, shape (n,)
            True where the layer runs on the device.
        bandwidth_bps : float
            Link bandwidth in bits per second, finite and > 0.
        rtt_s : float, optional
            Round-trip time added when anything is offloaded.

        Returns
        -------
        Partition

        Raises
        ------
        ValueError
            If the partition has the wrong length, puts an input on the server,
            or is not closed under predecessors (data would flow back).
        """
        bw = _as_real(bandwidth_bps, "bandwidth_bps")
        rtt = _as_real(rtt_s, "rtt_s")
        mask = _as_partition(on_device, self.n_nodes)
        return _pack(self._core.evaluate(mask, bw, rtt), bw)

    def __repr__(self) -> str:
        return (
            f"Graph(n_nodes={self.n_nodes}, n_edges={self.n_edges}, inputs={self.inputs.tolist()})"
        )


def min_cut(
    edges: Any,
    device_s: Any,
    server_s: Any,
    out_bytes: Any,
    bandwidth_bps: float,
    *,
    rtt_s: float = 0.0,
) -> Partition:
    """Return the exact latency-optimal device/server partition of a layer DAG.

    This is ``Graph(edges, device_s, server_s, out_bytes).min_cut(bandwidth_bps,
    rtt_s)``; build a `Graph` once to decide at many bandwidths.

    Parameters
    ----------
    edges : array_like of int, shape (E, 2)
        ``(u, v)`` pairs; nodes with no in-edge are inputs, pinned to the device.
    device_s, server_s : array_like of float, shape (n,)
        Per-layer seconds on the device and on the server.
    out_bytes : array_like of float, shape (n,)
        Per-layer output size in bytes.
    bandwidth_bps : float
        Link bandwidth in bits per second.
    rtt_s : float, optional
        Round-trip time added when anything is offloaded.

    Returns
    -------
    Partition

    Examples
    --------
    >>> p = min_cut([(0, 1), (1, 2)], [0.0, 0.05, 0.05], [0.0, 0.005, 0.005],
    ...             [600e3, 1e3, 4e3], bandwidth_bps=10e6)
    >>> p.sent.tolist(), p.bytes_sent
    ([1], 1000)
    """
    return Graph(edges, device_s, server_s, out_bytes).min_cut(bandwidth_bps, rtt_s)
