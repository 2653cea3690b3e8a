"""The model front end: from a PyTorch model to a layer graph, costs and a runnable split.

Data flows one way: `trace` (tracing) -> LayerGraph -> `profile` (profiling) ->
Profile -> a Planner (core) -> Partition -> `build_parts` (cutting) / `split`
(splitting) -> head and tail. Each stage takes the previous one's result (the
LayerGraph, the Planner) and traces or plans nothing again; ``(model,
example_inputs)`` stays accepted as a convenience that traces once. `models`
loads model specs and weights. torch is imported only when one of these functions
runs: importing this package does not import torch.
"""

from cic_fast.frontend.cutting import BoundaryTensor, build_parts, describe_boundary
from cic_fast.frontend.profiling import Profile, profile
from cic_fast.frontend.splitting import Split, check_planner, split
from cic_fast.frontend.tracing import LayerGraph, TracedProgram, TraceError, as_traced, trace

__all__ = [
    "BoundaryTensor",
    "LayerGraph",
    "Profile",
    "Split",
    "TraceError",
    "TracedProgram",
    "as_traced",
    "build_parts",
    "check_planner",
    "describe_boundary",
    "profile",
    "split",
    "trace",
]
