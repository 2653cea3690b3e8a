"""cic_fast: exact, microsecond DNN partitioning between an edge device and a server.

The core primitive is `min_cut`: the latency-optimal device/server partition of
a layer DAG at one bandwidth (see DESIGN.md, "The cost model").
"""

from cic_fast.graph import Graph, min_cut
from cic_fast.partition import Partition

__all__ = ["Graph", "Partition", "min_cut"]
__version__ = "0.1.0"
