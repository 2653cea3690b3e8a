"""cic_fast: exact, microsecond DNN partitioning between an edge device and a server.

The core primitive is `min_cut`: the latency-optimal device/server partition of
a layer DAG at one bandwidth (see DESIGN.md, "The cost model"). The model front
end (`trace`, `profile`, `split`) turns a PyTorch model into that DAG, measures
its per-layer costs and cuts it into runnable head and tail modules; it needs
torch, which is imported only when those functions are used.
"""

from cic_fast.client import Client
from cic_fast.graph import Graph, min_cut
from cic_fast.partition import Partition
from cic_fast.plan import Planner, PlanSegment
from cic_fast.profile import Profile, profile
from cic_fast.server import Server
from cic_fast.split import BoundaryTensor, Split, split
from cic_fast.trace import LayerGraph, TraceError, trace

__all__ = [
    "BoundaryTensor",
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
    "min_cut",
    "profile",
    "split",
    "trace",
]
__version__ = "0.1.0"
