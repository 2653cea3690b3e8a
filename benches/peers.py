"""The DADS min-cut network built with the max-flow libraries a user would reach for.

Every peer solves the same network (``DESIGN.md``, "The cost model" and the
min-cut construction): source = device side, sink = server side; ``v -> sink``
with capacity ``device_s[v]``; ``source -> v`` with capacity ``server_s[v]``
(infinite for inputs, so the raw input cannot upload for free); an auxiliary
node ``u'`` per node with successors, ``u -> u'`` with capacity
``8 * out_bytes[u] / bandwidth_bps`` and ``u' -> w`` infinite for every
successor ``w``; an infinite closure arc ``w -> u`` for every DAG edge.

Capacities are scaled to integers (fixed point) so that every solver is exact on
the integer network: the finite capacities are scaled so that they sum to
``2**46`` and "infinite" is ``2**48``, which keeps every flow and excess below
``2**53`` (igraph computes in doubles, which are exact integers up to there).
scipy's ``maximum_flow`` takes int32 capacities only, so it gets its own scale:
finite capacities sum to ``2**30`` and "infinite" is ``2**31 - 1``. That is a
relative resolution of about 1e-9 of the total cost per arc, coarse enough that
scipy may, on near-ties, return a cut that is optimal for the rounded network but
not for the real one; the benchmark checks for exactly that and reports it.

Each peer offers two entry points:

``from_arrays(edges, device_s, server_s, out_bytes, bandwidth_bps, rtt_s=0.0)``
    build the network from the arrays, solve, read the device side of the cut
    and recompute the latency with the cost model.
``prepare(...)``
    build the network once and return an object whose ``.solve()`` does only
    the solve, reads the cut and recomputes the latency. The capacities of a
    prepared network are fixed at the bandwidth given to ``prepare``.

PyMaxflow's ``maxflow()`` overwrites the capacities with residuals, so a graph
can be solved only once: its prepared ``.solve()`` solves a ``copy()`` of the
pristine graph, and the copy is part of the timed work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import igraph
import maxflow
import networkx as nx
import numpy as np
import ortools
import scipy
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray
from ortools.graph.python import max_flow as ort_max_flow
from scipy.sparse import csgraph

# int64 peers: finite capacities sum to 2**46, "infinite" is 2**48; all flows
# and excesses stay below 2**53, so igraph's double arithmetic is exact too.
INT64_FINITE_TOTAL = 2**46
INT64_INF = 2**48
# scipy's maximum_flow accepts int32 capacities only.
INT32_FINITE_TOTAL = 2**30
INT32_INF = 2**31 - 1


class PeerResult(NamedTuple):
    """What every peer returns: the device side of the cut and its latency."""

    on_device: NDArray[np.bool_]
    latency_s: float


class Prepared(Protocol):
    """A network built once; ``solve`` runs the max-flow and reads the cut."""

    def solve(self) -> PeerResult:
        """Solve the prebuilt network and return the partition it implies."""
        ...


@dataclass(frozen=True)
class Costs:
    """The problem as float64/int64 arrays, with the edges deduplicated."""

    tails: NDArray[np.int64]
    heads: NDArray[np.int64]
    device_s: NDArray[np.float64]
    server_s: NDArray[np.float64]
    out_bytes: NDArray[np.float64]
    bandwidth_bps: float
    rtt_s: float

    @property
    def n(self) -> int:
        """Number of layers."""
        return len(self.device_s)


@dataclass(frozen=True)
class Network:
    """The integer DADS network, terminals kept apart from the inner arcs.

    Layer ``v`` is node ``v``; auxiliary nodes follow (``n .. n_inner - 1``);
    the source is ``n_inner`` and the sink ``n_inner + 1``. ``source_cap`` and
    ``sink_cap`` are per layer (auxiliary nodes have no terminal arcs), which is
    the form PyMaxflow wants; the other peers append them as ordinary arcs.
    """

    n: int
    n_inner: int
    source_cap: NDArray[np.int64]
    sink_cap: NDArray[np.int64]
    tails: NDArray[np.int64]
    heads: NDArray[np.int64]
    caps: NDArray[np.int64]

    @property
    def source(self) -> int:
        """Index of the source (device) terminal."""
        return self.n_inner

    @property
    def sink(self) -> int:
        """Index of the sink (server) terminal."""
        return self.n_inner + 1

    def all_arcs(
        self,
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """Return ``(tails, heads, caps)`` with the terminal arcs included.

        Zero-capacity terminal arcs are dropped: they cannot carry flow.
        """
        layers = np.arange(self.n, dtype=np.int64)
        s_mask = self.source_cap > 0
        t_mask = self.sink_cap > 0
        tails = np.concatenate(
            (self.tails, np.full(int(s_mask.sum()), self.source), layers[t_mask])
        )
        heads = np.concatenate((self.heads, layers[s_mask], np.full(int(t_mask.sum()), self.sink)))
        caps = np.concatenate((self.caps, self.source_cap[s_mask], self.sink_cap[t_mask]))
        return tails, heads, caps


def as_costs(
    edges: ArrayLike,
    device_s: ArrayLike,
    server_s: ArrayLike,
    out_bytes: ArrayLike,
    bandwidth_bps: float,
    rtt_s: float = 0.0,
) -> Costs:
    """Convert the inputs and deduplicate the edges; no validation (trusted input).

    Parameters
    ----------
    edges : array_like
        ``(E, 2)`` integer pairs ``(u, v)``.
    device_s, server_s, out_bytes : array_like
        Per-layer costs, length ``n``.
    bandwidth_bps : float
        Link bandwidth in bits per second.
    rtt_s : float
        Round-trip time added when anything is offloaded.

    Returns
    -------
    Costs
        The arrays as float64/int64 with unique edges.
    """
    dev = np.asarray(device_s, dtype=np.float64)
    n = len(dev)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    # Duplicate edges would add a second, redundant closure/aux arc. Encoding
    # each pair as one int64 makes the dedup 1-D; sort + neighbour compare is
    # several times faster than np.unique here (numpy 2.4 on 2.5k edges).
    keys = np.sort(e[:, 0] * n + e[:, 1])
    if keys.size:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    tails, heads = np.divmod(keys, n)
    return Costs(
        tails=tails,
        heads=heads,
        device_s=dev,
        server_s=np.asarray(server_s, dtype=np.float64),
        out_bytes=np.asarray(out_bytes, dtype=np.float64),
        bandwidth_bps=float(bandwidth_bps),
        rtt_s=float(rtt_s),
    )


def dads_network(costs: Costs, *, finite_total: int, inf: int) -> Network:
    """Build the integer DADS network for ``costs`` (vectorized).

    Parameters
    ----------
    costs : Costs
        The problem.
    finite_total : int
        The finite capacities are scaled so that they sum to about this.
    inf : int
        Capacity of the "infinite" arcs; must exceed ``finite_total`` plus rounding.

    Returns
    -------
    Network
        Terminal capacities per layer and the inner arcs.
    """
    n = costs.n
    has_succ = np.zeros(n, dtype=bool)
    has_succ[costs.tails] = True
    has_pred = np.zeros(n, dtype=bool)
    has_pred[costs.heads] = True
    senders = np.flatnonzero(has_succ)
    aux_of = np.full(n, -1, dtype=np.int64)
    aux_of[senders] = n + np.arange(len(senders))
    transfer_s = 8.0 * costs.out_bytes[senders] / costs.bandwidth_bps

    total = costs.device_s.sum() + costs.server_s.sum() + transfer_s.sum()
    scale = finite_total / total if total > 0 else 1.0

    def fixed(x: NDArray[np.float64]) -> NDArray[np.int64]:
        return np.rint(x * scale).astype(np.int64)

    source_cap = fixed(costs.server_s)
    # Inputs hold the data on the device: tie them to the source.
    source_cap[~has_pred] = inf
    e = len(costs.tails)
    tails = np.concatenate((senders, aux_of[costs.tails], costs.heads))
    heads = np.concatenate((aux_of[senders], costs.heads, costs.tails))
    caps = np.concatenate((fixed(transfer_s), np.full(2 * e, inf, dtype=np.int64)))
    return Network(
        n=n,
        n_inner=n + len(senders),
        source_cap=source_cap,
        sink_cap=fixed(costs.device_s),
        tails=tails,
        heads=heads,
        caps=caps,
    )


def latency(costs: Costs, on_device: NDArray[np.bool_]) -> PeerResult:
    """Price the partition with the cost model, then apply the rtt rule.

    The cut minimizes the latency without rtt; with rtt, an offloading cut
    pays ``rtt_s`` on top, so it is compared with keeping everything on the
    device (the only partition that does not pay it).

    Parameters
    ----------
    costs : Costs
        The problem.
    on_device : ndarray of bool
        The source side of the cut, restricted to the layers.

    Returns
    -------
    PeerResult
        The chosen partition and its latency in seconds.
    """
    dev_total = float(costs.device_s.sum())
    if on_device.all():
        return PeerResult(on_device, dev_total)
    crossing = on_device[costs.tails] & ~on_device[costs.heads]
    sent = np.zeros(costs.n, dtype=bool)
    sent[costs.tails[crossing]] = True
    lat = (
        float(costs.device_s[on_device].sum())
        + float(costs.server_s[~on_device].sum())
        + 8.0 * float(costs.out_bytes[sent].sum()) / costs.bandwidth_bps
        + costs.rtt_s
    )
    if dev_total <= lat:
        return PeerResult(np.ones(costs.n, dtype=bool), dev_total)
    return PeerResult(on_device, lat)


# ---------------------------------------------------------------- PyMaxflow


def _pymaxflow_graph(net: Network) -> maxflow.GraphInt:
    g = maxflow.Graph[int](net.n_inner, len(net.tails))
    g.add_nodes(net.n_inner)
    g.add_grid_tedges(np.arange(net.n), net.source_cap, net.sink_cap)
    g.add_edges(net.tails, net.heads, net.caps, np.zeros_like(net.caps))
    return g


def _pymaxflow_cut(costs: Costs, g: maxflow.GraphInt) -> PeerResult:
    g.maxflow()
    # get_grid_segments is True for the sink (server) segment.
    return latency(costs, ~g.get_grid_segments(np.arange(costs.n)))


class _PyMaxflowPrepared:
    def __init__(self, costs: Costs) -> None:
        self.costs = costs
        self.net = dads_network(costs, finite_total=INT64_FINITE_TOTAL, inf=INT64_INF)
        self.graph = _pymaxflow_graph(self.net)
        # PyMaxflow 1.3.2's copy() corrupts nodes that have no arc (maxflow()
        # on the copy then segfaults); only isolated layers lack inner arcs,
        # and graphs with one are rebuilt per solve instead.
        touched = np.zeros(costs.n, dtype=bool)
        touched[costs.tails] = True
        touched[costs.heads] = True
        self.copy_is_safe = bool(touched.all())

    def solve(self) -> PeerResult:
        # maxflow() leaves residual capacities behind: solve a fresh copy.
        if self.copy_is_safe:
            return _pymaxflow_cut(self.costs, self.graph.copy())
        return _pymaxflow_cut(self.costs, _pymaxflow_graph(self.net))


def pymaxflow_from_arrays(*args: object, **kwargs: object) -> PeerResult:
    """PyMaxflow (Boykov-Kolmogorov): build, solve, read the cut."""
    costs = as_costs(*args, **kwargs)  # type: ignore[arg-type]
    net = dads_network(costs, finite_total=INT64_FINITE_TOTAL, inf=INT64_INF)
    return _pymaxflow_cut(costs, _pymaxflow_graph(net))


def pymaxflow_prepare(*args: object, **kwargs: object) -> Prepared:
    """PyMaxflow: build once; ``solve`` copies the graph and solves the copy."""
    return _PyMaxflowPrepared(as_costs(*args, **kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------- OR-tools


def _ortools_solver(net: Network) -> ort_max_flow.SimpleMaxFlow:
    tails, heads, caps = net.all_arcs()
    smf = ort_max_flow.SimpleMaxFlow()
    smf.add_arcs_with_capacity(tails.astype(np.int32), heads.astype(np.int32), caps)
    return smf


def _ortools_cut(costs: Costs, net: Network, smf: ort_max_flow.SimpleMaxFlow) -> PeerResult:
    status = smf.solve(net.source, net.sink)
    if status != smf.OPTIMAL:
        raise RuntimeError(f"OR-tools SimpleMaxFlow status {status}")
    side = np.asarray(smf.get_source_side_min_cut(), dtype=np.int64)
    on_device = np.zeros(costs.n, dtype=bool)
    on_device[side[side < costs.n]] = True
    return latency(costs, on_device)


class _OrtoolsPrepared:
    def __init__(self, costs: Costs) -> None:
        self.costs = costs
        self.net = dads_network(costs, finite_total=INT64_FINITE_TOTAL, inf=INT64_INF)
        self.smf = _ortools_solver(self.net)

    def solve(self) -> PeerResult:
        # SimpleMaxFlow keeps the arcs and may be solved again.
        return _ortools_cut(self.costs, self.net, self.smf)


def ortools_from_arrays(*args: object, **kwargs: object) -> PeerResult:
    """OR-tools SimpleMaxFlow (push-relabel): build, solve, read the cut."""
    costs = as_costs(*args, **kwargs)  # type: ignore[arg-type]
    net = dads_network(costs, finite_total=INT64_FINITE_TOTAL, inf=INT64_INF)
    return _ortools_cut(costs, net, _ortools_solver(net))


def ortools_prepare(*args: object, **kwargs: object) -> Prepared:
    """OR-tools: build the SimpleMaxFlow once; ``solve`` re-solves it."""
    return _OrtoolsPrepared(as_costs(*args, **kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------- igraph


def _igraph_graph(net: Network) -> tuple[igraph.Graph, list[float]]:
    tails, heads, caps = net.all_arcs()
    g = igraph.Graph(n=net.n_inner + 2, edges=np.column_stack((tails, heads)), directed=True)
    # igraph capacities are doubles; every value is an integer below 2**53.
    return g, caps.astype(np.float64).tolist()


def _igraph_cut(costs: Costs, net: Network, g: igraph.Graph, caps: list[float]) -> PeerResult:
    # GraphBase.st_mincut returns plain lists, (value, cut arcs, source side,
    # sink side) whatever its docstring says; Graph.st_mincut only wraps them
    # in a Cut object, which adds overhead here.
    _, _, part1, _ = igraph.GraphBase.st_mincut(g, net.source, net.sink, caps)
    side = np.asarray(part1, dtype=np.int64)
    on_device = np.zeros(costs.n, dtype=bool)
    on_device[side[side < costs.n]] = True
    return latency(costs, on_device)


class _IgraphPrepared:
    def __init__(self, costs: Costs) -> None:
        self.costs = costs
        self.net = dads_network(costs, finite_total=INT64_FINITE_TOTAL, inf=INT64_INF)
        self.graph, self.caps = _igraph_graph(self.net)

    def solve(self) -> PeerResult:
        return _igraph_cut(self.costs, self.net, self.graph, self.caps)


def igraph_from_arrays(*args: object, **kwargs: object) -> PeerResult:
    """python-igraph st_mincut (push-relabel): build, solve, read the cut."""
    costs = as_costs(*args, **kwargs)  # type: ignore[arg-type]
    net = dads_network(costs, finite_total=INT64_FINITE_TOTAL, inf=INT64_INF)
    g, caps = _igraph_graph(net)
    return _igraph_cut(costs, net, g, caps)


def igraph_prepare(*args: object, **kwargs: object) -> Prepared:
    """igraph: build the Graph and capacity list once; ``solve`` runs st_mincut."""
    return _IgraphPrepared(as_costs(*args, **kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------- networkx


def _networkx_graph(net: Network) -> nx.DiGraph:
    tails, heads, caps = net.all_arcs()
    g = nx.DiGraph()
    # A terminal may have no arc at all (e.g. every device_s is zero).
    g.add_nodes_from(range(net.n_inner + 2))
    g.add_weighted_edges_from(
        zip(tails.tolist(), heads.tolist(), caps.tolist(), strict=True),
        weight="capacity",
    )
    return g


def _networkx_cut(costs: Costs, net: Network, g: nx.DiGraph) -> PeerResult:
    # Default flow_func (preflow_push); integer capacities keep it exact.
    _, (reachable, _) = nx.minimum_cut(g, net.source, net.sink)
    side = np.fromiter(reachable, dtype=np.int64, count=len(reachable))
    on_device = np.zeros(costs.n, dtype=bool)
    on_device[side[side < costs.n]] = True
    return latency(costs, on_device)


class _NetworkxPrepared:
    def __init__(self, costs: Costs) -> None:
        self.costs = costs
        self.net = dads_network(costs, finite_total=INT64_FINITE_TOTAL, inf=INT64_INF)
        self.graph = _networkx_graph(self.net)

    def solve(self) -> PeerResult:
        # minimum_cut builds its own residual network and leaves the graph as is.
        return _networkx_cut(self.costs, self.net, self.graph)


def networkx_from_arrays(*args: object, **kwargs: object) -> PeerResult:
    """networkx minimum_cut (preflow-push): build, solve, read the cut."""
    costs = as_costs(*args, **kwargs)  # type: ignore[arg-type]
    net = dads_network(costs, finite_total=INT64_FINITE_TOTAL, inf=INT64_INF)
    return _networkx_cut(costs, net, _networkx_graph(net))


def networkx_prepare(*args: object, **kwargs: object) -> Prepared:
    """networkx: build the DiGraph once; ``solve`` runs minimum_cut on it."""
    return _NetworkxPrepared(as_costs(*args, **kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------- scipy


def _scipy_matrix(net: Network) -> sp.csr_array:
    tails, heads, caps = net.all_arcs()
    size = net.n_inner + 2
    # No duplicate (tail, head) pairs exist, so the COO -> CSR sum is a no-op.
    return sp.csr_array((caps.astype(np.int32), (tails, heads)), shape=(size, size))


def _scipy_cut(costs: Costs, net: Network, m: sp.csr_array) -> PeerResult:
    res = csgraph.maximum_flow(m, net.source, net.sink, method="dinic")
    # Residual capacity = capacity - flow; reverse arcs have capacity 0 and
    # negative flow, so they get the flow back as residual.
    residual = sp.csr_array(m - res.flow)
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    side = csgraph.breadth_first_order(
        residual, net.source, directed=True, return_predecessors=False
    )
    on_device = np.zeros(costs.n, dtype=bool)
    on_device[side[side < costs.n]] = True
    return latency(costs, on_device)


class _ScipyPrepared:
    def __init__(self, costs: Costs) -> None:
        self.costs = costs
        self.net = dads_network(costs, finite_total=INT32_FINITE_TOTAL, inf=INT32_INF)
        self.matrix = _scipy_matrix(self.net)

    def solve(self) -> PeerResult:
        return _scipy_cut(self.costs, self.net, self.matrix)


def scipy_from_arrays(*args: object, **kwargs: object) -> PeerResult:
    """scipy.sparse.csgraph.maximum_flow (Dinic, int32): build, solve, BFS the residual."""
    costs = as_costs(*args, **kwargs)  # type: ignore[arg-type]
    net = dads_network(costs, finite_total=INT32_FINITE_TOTAL, inf=INT32_INF)
    return _scipy_cut(costs, net, _scipy_matrix(net))


def scipy_prepare(*args: object, **kwargs: object) -> Prepared:
    """scipy: build the CSR matrix once; ``solve`` runs maximum_flow and the residual BFS."""
    return _ScipyPrepared(as_costs(*args, **kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Peer:
    """A peer library: its two entry points and its version."""

    name: str
    version: str
    from_arrays: Callable[..., PeerResult]
    prepare: Callable[..., Prepared]


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("pymaxflow", maxflow.__version__, pymaxflow_from_arrays, pymaxflow_prepare),
        Peer("ortools", ortools.__version__, ortools_from_arrays, ortools_prepare),
        Peer("igraph", igraph.__version__, igraph_from_arrays, igraph_prepare),
        Peer("networkx", nx.__version__, networkx_from_arrays, networkx_prepare),
        Peer("scipy", scipy.__version__, scipy_from_arrays, scipy_prepare),
    )
}
