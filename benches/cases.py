"""Benchmark cases: DNN-shaped graphs, a bandwidth where each one splits, and the checks.

Shared by ``test_bench_min_cut.py`` and ``report.py`` so that both time and
verify exactly the same problems.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

import cic_fast
from cic_fast.core.synthetic import dnn_graph
from peers import PEERS

# (label, kind, n_layers, seed). Below 64 layers dnn_graph emits a plain chain,
# and no chain or "mixed" graph of 48..80 layers has an interior optimal split
# at any bandwidth; mixed-64 seed 0 is the smallest with a non-trivial optimum
# (only its last layers go to the server). The other seeds were picked the same
# way: the first whose optimum is a genuine split somewhere in 100 kbit/s..10 Gbit/s.
CASES: tuple[tuple[str, str, int, int], ...] = (
    ("n64", "mixed", 64, 0),
    ("n140", "mixed", 140, 4),
    ("n400", "mixed", 400, 0),
    ("n700", "densenet", 700, 0),
)
# dnn_graph defaults, stated so the report can say which setting was used.
DEVICE_SLOWDOWN = 1.0
SERVER_SPEEDUP = 10.0
RTT_S = 0.0
BANDWIDTH_GRID_BPS: NDArray[np.float64] = np.logspace(5, 10, 61)
REL_TOL = 1e-9

MODES = ("from_arrays", "prepared")


@dataclass(frozen=True)
class Case:
    """One benchmark problem and the bandwidth it is solved at."""

    label: str
    name: str
    edges: NDArray[np.int64]
    device_s: NDArray[np.float64]
    server_s: NDArray[np.float64]
    out_bytes: NDArray[np.float64]
    bandwidth_bps: float
    genuine: bool
    on_device: int
    latency_s: float

    @property
    def n_nodes(self) -> int:
        """Number of layers."""
        return len(self.device_s)

    @property
    def n_edges(self) -> int:
        """Number of (deduplicated) edges."""
        return len(np.unique(self.edges, axis=0))

    @property
    def arrays(
        self,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """``(edges, device_s, server_s, out_bytes)``."""
        return (self.edges, self.device_s, self.server_s, self.out_bytes)


def _is_genuine(p: cic_fast.Partition, n_inputs: int) -> bool:
    # All-device and "send the raw input" are the trivial optima.
    return bool(p.offloads) and int(p.on_device.sum()) > n_inputs


@functools.cache
def get_case(label: str) -> Case:
    """Build the case ``label`` and pick its bandwidth.

    The bandwidth is the middle (in log scale) of the grid points at which the
    optimum is a genuine split; if there is none, the grid's geometric middle.

    Parameters
    ----------
    label : str
        One of the labels in ``CASES``.

    Returns
    -------
    Case
        The graph, its bandwidth and cic_fast's optimum there.
    """
    _, kind, n_layers, seed = next(c for c in CASES if c[0] == label)
    g = dnn_graph(
        n_layers,
        kind=kind,
        seed=seed,
        device_slowdown=DEVICE_SLOWDOWN,
        server_speedup=SERVER_SPEEDUP,
    )
    graph = cic_fast.Graph(g.edges, g.device_s, g.server_s, g.out_bytes)
    n_inputs = len(graph.inputs)
    genuine = [
        float(bw)
        for bw in BANDWIDTH_GRID_BPS
        if _is_genuine(graph.min_cut(float(bw), RTT_S), n_inputs)
    ]
    bw = genuine[len(genuine) // 2] if genuine else float(np.sqrt(1e5 * 1e10))
    p = cic_fast.min_cut(g.edges, g.device_s, g.server_s, g.out_bytes, bw, rtt_s=RTT_S)
    return Case(
        label=label,
        name=g.name,
        edges=g.edges,
        device_s=g.device_s,
        server_s=g.server_s,
        out_bytes=g.out_bytes,
        bandwidth_bps=bw,
        genuine=bool(genuine),
        on_device=int(p.on_device.sum()),
        latency_s=float(p.latency_s),
    )


@functools.cache
def verify(label: str, peer: str, mode: str) -> str | None:
    """Check a peer against cic_fast on one case.

    Parameters
    ----------
    label : str
        Case label.
    peer : str
        Key of ``peers.PEERS``.
    mode : str
        ``"from_arrays"`` or ``"prepared"``.

    Returns
    -------
    str or None
        None when the peer's latency equals cic_fast's (relative 1e-9),
        otherwise a sentence saying what it returned instead.
    """
    case = get_case(label)
    p = PEERS[peer]
    args = (*case.arrays, case.bandwidth_bps, RTT_S)
    try:
        res = p.from_arrays(*args) if mode == "from_arrays" else p.prepare(*args).solve()
    except Exception as exc:  # a crashing peer is reported, not timed
        return f"{peer} raised {type(exc).__name__}: {exc}"
    if math.isclose(res.latency_s, case.latency_s, rel_tol=REL_TOL, abs_tol=0.0):
        return None
    return (
        f"{peer} ({mode}) latency {res.latency_s!r} s with {int(res.on_device.sum())} layers "
        f"on the device; cic_fast {case.latency_s!r} s with {case.on_device}"
    )
