"""Run the min-cut benchmarks (or read a run) and print peer/cic_fast time ratios.

Usage::

    python benches/report.py                     # run the benchmarks, then report
    python benches/report.py --out bench.json    # same, keeping pytest-benchmark's JSON
    python benches/report.py --json bench.json   # report on an earlier run

Each ratio is a peer's median time divided by cic_fast's median in the same
group (same graph, same mode), so a ratio above 1 means cic_fast is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
BENCH_FILE = HERE / "test_bench_min_cut.py"
# The acceptance targets the lead set (see docs/benchmarks.md).
TARGET_FROM_ARRAYS_CASE = "n700"
TARGET_FROM_ARRAYS_PEERS = ("pymaxflow", "ortools")
TARGET_FROM_ARRAYS_RATIO = 5.0


def run_benchmarks(json_path: Path) -> bool:
    """Run the benchmark suite with pytest, writing pytest-benchmark's JSON.

    Parameters
    ----------
    json_path : Path
        Where ``--benchmark-json`` writes.

    Returns
    -------
    bool
        Whether pytest ran the tests (exit status 0, or 1 for failed tests).
    """
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(BENCH_FILE),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        "--benchmark-columns=median,iqr,rounds,iterations",
    ]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ)
    # Idle OpenBLAS worker threads spin for a while after any BLAS call; on a
    # 2-core machine that steals the second core from the timed code. Nothing
    # timed here uses BLAS.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    # A failing peer (wrong answer) fails its test (exit status 1); the report
    # still runs. Other statuses mean pytest itself could not run.
    rc = subprocess.run(cmd, cwd=HERE.parent, env=env, check=False).returncode
    return rc in (0, 1) and json_path.exists()


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def environment() -> list[str]:
    """Describe this machine and the library versions, one item per line.

    Returns
    -------
    list of str
        CPU, cores, Python, numpy, cic_fast and peer versions.
    """
    import cic_fast
    from peers import PEERS

    lines = [
        f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores "
        f"(available to this process: {len(os.sched_getaffinity(0))})",
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"cic_fast {cic_fast.__version__}",
        "peers: " + ", ".join(f"{p.name} {p.version}" for p in PEERS.values()),
    ]
    return lines


def _medians(data: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    for b in data["benchmarks"]:
        p = b["params"]
        out[(p["label"], p["mode"], p["impl"])] = float(b["stats"]["median"])
    return out


def ratio_table(data: dict[str, Any]) -> tuple[str, list[str]]:
    """Format the ratio table and check the acceptance targets.

    Parameters
    ----------
    data : dict
        pytest-benchmark's JSON.

    Returns
    -------
    table : str
        A Markdown table: per case and mode, cic_fast's median and each peer's
        median divided by it.
    verdicts : list of str
        One line per acceptance target, saying whether it is met.
    """
    from cases import CASES, MODES, get_case, verify
    from peers import PEERS

    med = _medians(data)
    peers = list(PEERS)
    head = [
        "case",
        "layers / edges",
        "bandwidth",
        "mode",
        "cic_fast median",
        *[f"{p} / cic_fast" for p in peers],
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    verdicts: list[str] = []
    for label, *_ in CASES:
        case = get_case(label)
        for mode in MODES:
            base = med.get((label, mode, "cic_fast"))
            cells = [
                f"{label} ({case.name})",
                f"{case.n_nodes} / {case.n_edges}",
                f"{case.bandwidth_bps / 1e6:.3g} Mbit/s",
                mode,
                f"{base * 1e6:.1f} us" if base else "missing",
            ]
            ratios: dict[str, float] = {}
            for p in peers:
                t = med.get((label, mode, p))
                if t is not None and base:
                    ratios[p] = t / base
                    cells.append(f"{t / base:.2f}x")
                elif verify(label, p, mode) is not None:
                    cells.append("WRONG")
                else:
                    cells.append("missing")
            rows.append("| " + " | ".join(cells) + " |")
            if mode == "prepared" and ratios:
                fastest = min(ratios, key=ratios.__getitem__)
                ok = ratios[fastest] > 1.0
                verdicts.append(
                    f"[{'met' if ok else 'MISSED'}] {label} prepared: fastest peer {fastest} "
                    f"at {ratios[fastest]:.2f}x cic_fast's time (target > 1x)"
                )
            if mode == "from_arrays" and label == TARGET_FROM_ARRAYS_CASE:
                for p in TARGET_FROM_ARRAYS_PEERS:
                    r = ratios.get(p)
                    ok = r is not None and r >= TARGET_FROM_ARRAYS_RATIO
                    shown = f"{r:.2f}x" if r is not None else "missing"
                    verdicts.append(
                        f"[{'met' if ok else 'MISSED'}] {label} from_arrays: {p} at {shown} "
                        f"cic_fast's time (target >= {TARGET_FROM_ARRAYS_RATIO:g}x)"
                    )
    for label, *_ in CASES:
        for mode in MODES:
            for p in peers:
                problem = verify(label, p, mode)
                if problem is not None:
                    verdicts.append(f"[WRONG] {label} {mode}: {problem}")
    return "\n".join(rows), verdicts


def main(argv: list[str] | None = None) -> int:
    """Entry point: run or read the benchmarks and print the ratio table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 if every acceptance target is met and every peer agreed, 1 if not,
        2 if the benchmarks could not be run.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--json", type=Path, help="read this pytest-benchmark JSON instead of running")
    src.add_argument("--out", type=Path, help="run, and keep pytest-benchmark's JSON here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))

    if args.json is not None:
        data = json.loads(args.json.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.out if args.out is not None else Path(tmp) / "bench.json"
            if not run_benchmarks(path):
                print("pytest did not run the benchmarks; see its output above", file=sys.stderr)
                return 2
            data = json.loads(path.read_text())

    print()
    for line in environment():
        print(line)
    info = data.get("machine_info", {})
    if args.json is not None and info:
        print(f"(run recorded on: {info.get('cpu', {}).get('brand_raw', '?')}, {info.get('node')})")
    pinned = {b.get("extra_info", {}).get("heap_pinned") for b in data["benchmarks"]}
    print(
        "allocator: glibc heap trimming and mmap off (benches/heap.py)"
        if pinned == {True}
        else f"allocator: NOT pinned in every benchmark ({pinned}); timings vary more"
    )
    print()
    table, verdicts = ratio_table(data)
    print(table)
    print()
    for v in verdicts:
        print(v)
    return 0 if all(v.startswith("[met]") for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
