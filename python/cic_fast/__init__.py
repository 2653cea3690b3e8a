"""cic_fast: exact, microsecond DNN partitioning between an edge device and a server.

The core primitive is `min_cut`: the latency-optimal device/server partition of
a layer DAG at one bandwidth (see DESIGN.md, "The cost model"), and
`max_throughput` the period-optimal one for a stream; `Planner` is the
CIC splitting model, optimal at every bandwidth and decided in well under a
microsecond. The model front end (`trace`, `profile`, `split`) turns a PyTorch
model into that DAG, measures its per-layer costs and cuts it into runnable head
and tail modules; the runtime (`Server`, `Client`) runs the split over a socket.
torch is imported only when the front end or the runtime is used.

The package is layered, and imports run one way only (docs/architecture.md):
``core`` (numpy + the C++ extension) <- ``frontend`` (torch) <- ``runtime`` <-
``evaluation`` <- ``cli``.
"""

from cic_fast.core import (
    BoundedPartition,
    Graph,
    Partition,
    Planner,
    PlanSegment,
    max_throughput,
    min_cut,
)
from cic_fast.frontend import (
    BoundaryTensor,
    LayerGraph,
    Profile,
    Split,
    TraceError,
    profile,
    split,
    trace,
)
from cic_fast.runtime import Client, Server

__all__ = [
    "BoundaryTensor",
    "BoundedPartition",
    "Client",
    "Graph",
    "LayerGraph",
    "Partition",
    "PlanSegment",
    "Planner",
    "Profile",
    "Server",
    "Split",
    "TraceError",
    "max_throughput",
    "min_cut",
    "profile",
    "split",
    "trace",
]
__version__ = "0.1.0"
