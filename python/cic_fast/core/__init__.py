"""The core layer: the cost model, exact partitioning and the all-bandwidth plan.

numpy and the C++ extension only (no torch). Modules:

- `cost`: `Partition`, the latency and period formulas, validity and the sent set;
- `graph`: `Graph`, `min_cut` and `max_throughput`, the exact optima at one bandwidth;
- `planner`: `Planner` and `PlanSegment`, the CIC splitting model;
- `planfile`: the plan's file format;
- `baselines`: device-only, server-only and Neurosurgeon;
- `checks`: argument conversion shared by the entry points;
- `synthetic`: DNN-shaped graphs for tests and benchmarks.
"""

from cic_fast.core.cost import BoundedPartition, Partition
from cic_fast.core.graph import Graph, max_throughput, min_cut
from cic_fast.core.planner import Planner, PlanSegment

__all__ = [
    "BoundedPartition",
    "Graph",
    "Partition",
    "PlanSegment",
    "Planner",
    "max_throughput",
    "min_cut",
]
