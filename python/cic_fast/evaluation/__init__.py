"""End-to-end evaluation on one machine: an emulated slow device and link, and a real server.

- `link`: the shaped link (tbf between network namespaces, or a user-space token bucket);
- `traces`: bandwidth traces (mahimahi, cooked) and their replay on a link;
- `device`: the slow device (a cgroup CPU quota, or sleep-scaled compute);
- `worker`: the device process, which decides and measures every method;
- `harness`: `evaluate` (latency) and `evaluate_throughput` (streams), which start the
  server and the worker and collect rows;
- `report`: the rows, the table and the plot.

See docs/evaluation.md.
"""

from cic_fast.evaluation.harness import evaluate, evaluate_throughput
from cic_fast.evaluation.report import (
    METHODS,
    THROUGHPUT_METHODS,
    EvalRow,
    MethodResult,
    ThroughputResult,
    ThroughputRow,
    format_table,
    format_throughput_table,
    load_rows,
    plot_latency,
)

__all__ = [
    "METHODS",
    "THROUGHPUT_METHODS",
    "EvalRow",
    "MethodResult",
    "ThroughputResult",
    "ThroughputRow",
    "evaluate",
    "evaluate_throughput",
    "format_table",
    "format_throughput_table",
    "load_rows",
    "plot_latency",
]
