"""End-to-end evaluation on one machine: an emulated slow device and link, and a real server.

- `link`: the shaped link (tbf between network namespaces, or a user-space token bucket);
- `traces`: bandwidth traces (mahimahi, cooked) and their replay on a link;
- `device`: the slow device (a cgroup CPU quota, or sleep-scaled compute);
- `worker`: the device process, which decides and measures every method;
- `harness`: `evaluate`, which starts the server and the worker and collects rows;
- `report`: the rows, the table and the plot.

See docs/evaluation.md.
"""

from cic_fast.evaluation.harness import evaluate
from cic_fast.evaluation.report import (
    METHODS,
    EvalRow,
    MethodResult,
    format_table,
    load_rows,
    plot_latency,
)

__all__ = [
    "METHODS",
    "EvalRow",
    "MethodResult",
    "evaluate",
    "format_table",
    "load_rows",
    "plot_latency",
]
