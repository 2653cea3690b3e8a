"""Exact min-cut partitioning of a layer DAG (the DADS construction, fixed).

`Graph` validates a layer DAG and its per-layer costs once and keeps the flow
network laid out in C++, so that `Graph.min_cut` at a new bandwidth only
re-sets capacities and re-solves. `min_cut` is the one-call form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from cic_fast import _core
from cic_fast.core.checks import as_edges, as_mask, as_real, as_vector, check_steps
from cic_fast.core.cost import (
    BoundedPartition,
    Partition,
    bounded,
    make_partition,
    partition_from_core,
)

__all__ = ["MAX_STEPS", "Graph", "core_graph", "max_throughput", "min_cut"]

# The throughput search's default limit (decisions of the branch and bound): far
# above what any traced model needs (a few thousand to a few hundred thousand on
# 700-layer graphs), and about a second of search on an edge CPU.
MAX_STEPS = 20_000_000


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
            as_edges(edges),
            as_vector(device_s, "device_s"),
            as_vector(server_s, "server_s"),
            as_vector(out_bytes, "out_bytes"),
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
        bw = as_real(bandwidth_bps, "bandwidth_bps")
        rtt = as_real(rtt_s, "rtt_s")
        return self._core.min_cut_as(Partition, bw, rtt)

    def max_throughput(
        self, bandwidth_bps: float, rtt_s: float = 0.0, *, max_steps: int = MAX_STEPS
    ) -> BoundedPartition:
        """Return the partition with the smallest pipeline period at one bandwidth.

        The period is ``max(device_s, transfer_s, server_s)`` (DESIGN.md,
        "Streams"): the frame rate of a stream is its inverse. The problem is
        NP-hard on general DAGs; the search is an exact branch and bound over the
        valid partitions (``cpp/include/cic/period.hpp`` states the algorithm and
        why its bounds are valid), which takes well under a millisecond on
        700-layer DNN graphs.

        Parameters
        ----------
        bandwidth_bps : float
            Link bandwidth in bits per second, > 0 (``inf``: no transfer time).
        rtt_s : float, optional
            Only priced into ``latency_s`` of the answer; the period has no rtt.
        max_steps : int, optional
            Limit on the search's decisions. Past it the best partition found is
            returned with ``optimal=False`` and ``gap_s`` (its period minus a
            proven lower bound): never a silent approximation.

        Returns
        -------
        BoundedPartition
            Among optimal partitions the one sending fewest bytes; its period is
            recomputed from the partition with the cost model.

        Notes
        -----
        The search releases the GIL; threads may share one Graph.
        """
        bw = as_real(bandwidth_bps, "bandwidth_bps")
        rtt = as_real(rtt_s, "rtt_s")
        steps = check_steps(max_steps)
        if not bw > 0.0:
            raise ValueError(f"bandwidth_bps must be > 0, got {bw}")
        on, optimal, lower_bound, _ = self._core.min_period(bw, steps)
        # Sums from the core (bandwidth-free), priced at bw by the formula (bw may be inf).
        sums = partition_from_core(self._core.evaluate(on, 1.0, rtt), 1.0)
        p = make_partition(
            sums.on_device,
            sums.sent,
            sums.device_s,
            sums.server_s,
            sums.bytes_sent,
            bw,
            rtt,
            sums.offloads,
        )
        return bounded(p, optimal, lower_bound)

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
        bw = as_real(bandwidth_bps, "bandwidth_bps")
        rtt = as_real(rtt_s, "rtt_s")
        mask = as_mask(on_device, self.n_nodes)
        return partition_from_core(self._core.evaluate(mask, bw, rtt), bw)

    def __repr__(self) -> str:
        return (
            f"Graph(n_nodes={self.n_nodes}, n_edges={self.n_edges}, inputs={self.inputs.tolist()})"
        )


def core_graph(graph: Graph) -> _core.Graph:
    """The prepared C++ problem behind ``graph`` (for the core's own modules).

    The planner builds its plan on it, so that one layer graph is validated and
    laid out once.
    """
    return graph._core


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


def max_throughput(
    edges: Any,
    device_s: Any,
    server_s: Any,
    out_bytes: Any,
    bandwidth_bps: float,
    *,
    rtt_s: float = 0.0,
    max_steps: int = MAX_STEPS,
) -> BoundedPartition:
    """Return the valid partition with the smallest pipeline period (exact).

    ``Graph(edges, device_s, server_s, out_bytes).max_throughput(bandwidth_bps,
    rtt_s, max_steps=max_steps)``: see `Graph.max_throughput`. The period
    ``max(device_s, transfer_s, server_s)`` is on every Partition as
    ``period_s``; frames per second are ``1 / period_s``.

    Examples
    --------
    >>> p = max_throughput([(0, 1), (1, 2)], [0.0, 0.05, 0.05], [0.0, 0.005, 0.005],
    ...                    [600e3, 1e3, 4e3], bandwidth_bps=10e6)
    >>> p.on_device.tolist(), round(p.period_s, 6), p.optimal
    ([True, True, False], 0.05, True)
    """
    return Graph(edges, device_s, server_s, out_bytes).max_throughput(
        bandwidth_bps, rtt_s, max_steps=max_steps
    )
