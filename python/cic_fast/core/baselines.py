"""The fixed and prior-work partitions cic_fast is measured against.

``device_only`` and ``server_only`` are the two placements every deployment can
fall back on; `Neurosurgeon` (Kang et al., ASPLOS 2017) picks the best single
split point of the topological order. The full-graph min-cut of DADS (Hu et al.,
INFOCOM 2019) is `cic_fast.min_cut` itself. Every baseline is priced by
`cic_fast.core.cost`, the same cost model as the optimum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from cic_fast.core import cost
from cic_fast.core.checks import as_edges, as_vector, check_rtt

__all__ = ["Neurosurgeon", "device_only", "server_only"]


def device_only(n_nodes: int) -> npt.NDArray[np.bool_]:
    """Every layer on the device (nothing is sent)."""
    return np.ones(n_nodes, dtype=bool)


def server_only(edges: Any, n_nodes: int) -> npt.NDArray[np.bool_]:
    """Only the model inputs (the sources) on the device: the raw input is sent."""
    on = np.zeros(n_nodes, dtype=bool)
    on[cost.sources(as_edges(edges), n_nodes)] = True
    return on


class Neurosurgeon:
    """Best single split point on the topological order.

    Partition ``k`` runs nodes ``0..k-1`` (a prefix of the topological order, closed
    under predecessors) on the device. Each prefix's parts (device seconds of the
    prefix, server seconds of the rest, bytes of prefix nodes with a successor
    outside it) are precomputed, so a decision is one vectorised evaluation of the
    cost model and an argmin.

    Parameters
    ----------
    edges : array_like, shape (E, 2)
        Edges (u, v) with u < v (node indices in topological order).
    device_s, server_s, out_bytes : array_like
        Per-node costs.
    inputs : array_like
        Source nodes (they must be in every prefix).
    rtt_s : float
        Round trip added to offloading partitions.

    Raises
    ------
    ValueError
        Edges that do not go forward in the node order, or a bad ``rtt_s``.
    """

    def __init__(
        self,
        edges: Any,
        device_s: Any,
        server_s: Any,
        out_bytes: Any,
        inputs: Any,
        rtt_s: float = 0.0,
    ) -> None:
        e = as_edges(edges)
        dev = as_vector(device_s, "device_s")
        srv = as_vector(server_s, "server_s")
        ob = as_vector(out_bytes, "out_bytes")
        n = dev.size
        if e.size and bool((e[:, 0] >= e[:, 1]).any()):
            raise ValueError("edges must go forward in the node order (topological)")
        ins = np.asarray(inputs, dtype=np.int64)
        first = int(ins.max()) + 1 if ins.size else 1
        # k = number of device nodes, from the smallest prefix holding every input to n
        ks = np.arange(first, n + 1)
        pre_dev = np.concatenate([[0.0], np.cumsum(dev)])
        suf_srv = np.concatenate([np.cumsum(srv[::-1])[::-1], [0.0]])
        maxsucc = np.full(n, -1, dtype=np.int64)
        if e.size:
            np.maximum.at(maxsucc, e[:, 0], e[:, 1])
        # u is sent by prefix k iff u < k <= maxsucc[u]
        diff = np.zeros(n + 2)
        u = np.flatnonzero(maxsucc >= 0)
        np.add.at(diff, u + 1, ob[u])
        np.add.at(diff, maxsucc[u] + 1, -ob[u])
        sent = np.cumsum(diff)[: n + 1]
        self.n_nodes = n
        self.rtt_s = check_rtt(rtt_s)
        self.ks = ks
        self.device_s = pre_dev[ks]
        self.server_s = suf_srv[ks]
        self.bytes_sent = sent[ks]
        self.offloads = ks < n
        # Everything but the transfer, so that a decision adds one array: the
        # cost model's latency with nothing sent.
        self._fixed_s = cost.latency_s(
            self.device_s, self.server_s, 0.0, 1.0, self.rtt_s, self.offloads
        )

    def latencies_s(self, bandwidth_bps: float) -> npt.NDArray[np.float64]:
        """The latency of every prefix partition at ``bandwidth_bps`` (cost model)."""
        return self._fixed_s + cost.transfer_s(self.bytes_sent, bandwidth_bps)

    def decide_k(self, bandwidth_bps: float) -> int:
        """The number of device nodes of the best prefix at ``bandwidth_bps``."""
        return int(self.ks[int(np.argmin(self.latencies_s(bandwidth_bps)))])

    def decide(self, bandwidth_bps: float) -> npt.NDArray[np.bool_]:
        """The best prefix partition at ``bandwidth_bps`` as a device mask."""
        on = np.zeros(self.n_nodes, dtype=bool)
        on[: self.decide_k(bandwidth_bps)] = True
        return on
