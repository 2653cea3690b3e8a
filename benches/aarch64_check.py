"""Checks of the cic_fast wheel on aarch64, driven by benches/aarch64_check.sh.

Three subcommands (see docs/aarch64.md):

``answers DIR``
    On the build machine (x86_64): build plans of DNN-shaped graphs, save each plan
    file and its graph's arrays into DIR, and write DIR/answers.json: every
    decision of every plan at many bandwidths (each breakpoint, its two
    neighbouring doubles, a log-spaced sweep and an infinitely fast link), plus
    ``Graph.min_cut`` / ``Graph.max_throughput`` answers. Floats are written with
    ``float.hex``, masks as hex of their packed bits: a JSON round trip is exact.

``compare DIR``
    On aarch64: load the plan files written on x86_64, decide at the same
    bandwidths and require every field to be bit-identical (masks, sent sets,
    bytes, latency and its parts, period); the same for the min cuts and max
    throughputs of the saved graphs, and for plans rebuilt here from the saved
    arrays. Exits 1 on any difference, naming it.

``resnet18``
    trace, profile and split torchvision's resnet18 (random weights) on this
    machine; requires ``tail(head(x)) == model(x)`` exactly and the head's
    tensor bytes ``== partition.bytes_sent`` at several bandwidths, and prints the
    profile's platform record and the time of each stage.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import cic_fast
from cic_fast.core.synthetic import dnn_graph

# (kind, layers, seed, device_slowdown, server_speedup, rtt_s, objective)
CASES: tuple[tuple[str, int, int, float, float, float, str], ...] = (
    ("mixed", 400, 0, 10.0, 50.0, 0.005, "latency"),  # the demo's graph
    ("resnet", 300, 1, 1.0, 10.0, 0.0, "latency"),
    ("inception", 300, 2, 4.0, 20.0, 0.002, "latency"),
    ("densenet", 700, 0, 1.0, 10.0, 0.0, "latency"),
    ("transformer", 400, 0, 10.0, 50.0, 0.01, "latency"),
    ("chain", 120, 0, 1.0, 10.0, 0.0, "latency"),
    ("mixed", 200, 3, 10.0, 50.0, 0.005, "throughput"),
    ("resnet", 150, 0, 4.0, 20.0, 0.0, "throughput"),
)
SWEEP = np.geomspace(1e4, 1e11, 2000)  # 10 kbit/s .. 100 Gbit/s
CUT_SWEEP = SWEEP[::16]  # Graph.min_cut
PERIOD_SWEEP = SWEEP[::100]  # Graph.max_throughput (branch and bound: fewer)


def fnum(x: Any) -> str:
    """A number as an exact string: float.hex for floats, str for ints."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    return float(x).hex()


def fmask(mask: Any) -> str:
    a = np.asarray(mask, dtype=bool)
    return f"{a.size}:" + np.packbits(a).tobytes().hex()


def record(p: Any) -> dict[str, str]:
    """Every field of a Partition as exact strings."""
    return {
        "on_device": fmask(p.on_device),
        "sent": ",".join(str(int(i)) for i in np.asarray(p.sent)),
        "bytes_sent": fnum(p.bytes_sent),
        "latency_s": fnum(p.latency_s),
        "device_s": fnum(p.device_s),
        "transfer_s": fnum(p.transfer_s),
        "server_s": fnum(p.server_s),
        "rtt_s": fnum(p.rtt_s),
        "period_s": fnum(p.period_s),
    }


def bandwidths(planner: cic_fast.Planner) -> list[float]:
    bws = [float(b) for b in SWEEP]
    for b in planner.breakpoints_bps:
        bws += [b, math.nextafter(b, 0.0), math.nextafter(b, math.inf)]
    bws.append(math.inf)
    return bws


def case_name(case: tuple[Any, ...]) -> str:
    kind, n, seed, _, _, _, objective = case
    return f"{kind}-{n}-s{seed}-{objective}"


def build(case: tuple[Any, ...], arrays: dict[str, np.ndarray]) -> cic_fast.Planner:
    return cic_fast.Planner(
        arrays["edges"],
        arrays["device_s"],
        arrays["server_s"],
        arrays["out_bytes"],
        rtt_s=case[5],
        objective=case[6],
    )


def plan_answers(planner: cic_fast.Planner, bws: list[float]) -> dict[str, Any]:
    return {
        "breakpoints": [fnum(b) for b in planner.breakpoints_bps],
        "partitions": [fmask(m) for m in planner.partitions],
        "decisions": [[fnum(bw), record(planner.decide(bw))] for bw in bws],
    }


def graph_answers(planner: cic_fast.Planner, bws: list[float]) -> list[list[Any]]:
    """``Graph.min_cut`` (latency plans) or ``Graph.max_throughput`` at ``bws``."""
    g, rtt = planner.graph, planner.rtt_s
    if planner.objective == "throughput":
        return [[fnum(bw), record(g.max_throughput(bw, rtt_s=rtt))] for bw in bws]
    return [[fnum(bw), record(g.min_cut(bw, rtt_s=rtt))] for bw in bws]


def graph_key(planner: cic_fast.Planner) -> str:
    return "max_throughput" if planner.objective == "throughput" else "min_cut"


def sent_bandwidths(answers: list[list[Any]]) -> list[float]:
    """The bandwidths of a list of answers, exactly as x86_64 used them.

    They are read from the file, never recomputed: np.geomspace itself (libm's
    log and pow) gives other last bits on aarch64 than on x86_64.
    """
    return [float.fromhex(bw) for bw, _ in answers]


def machine() -> dict[str, str]:
    return {
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cic_fast": str(Path(cic_fast.__file__).parent),
    }


def cmd_answers(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine(), "cases": {}}
    t0 = time.perf_counter()
    for case in CASES:
        name = case_name(case)
        kind, n, seed, slow, speed = case[:5]
        g = dnn_graph(n, kind=kind, seed=seed, device_slowdown=slow, server_speedup=speed)
        arrays = {
            "edges": g.edges,
            "device_s": g.device_s,
            "server_s": g.server_s,
            "out_bytes": g.out_bytes,
        }
        np.savez(out / f"{name}.npz", **arrays)
        planner = build(case, arrays)
        planner.save(out / f"{name}.plan")
        sweep = CUT_SWEEP if planner.objective == "latency" else PERIOD_SWEEP
        result["cases"][name] = {
            **plan_answers(planner, bandwidths(planner)),
            graph_key(planner): graph_answers(planner, [float(b) for b in sweep]),
        }
        print(f"{name}: K={planner.stats['K']}, {len(result['cases'][name]['decisions'])} bws")
    (out / "answers.json").write_text(json.dumps(result, indent=0))
    print(f"answers for {len(CASES)} plans written to {out} in {time.perf_counter() - t0:.1f}s")
    return 0


def diff(label: str, want: Any, got: Any, bad: list[str]) -> int:
    """Compare two answer lists of [bandwidth, record]; return how many were compared."""
    if len(want) != len(got):
        bad.append(f"{label}: {len(want)} answers on x86_64, {len(got)} here")
        return 0
    for (bw_w, rec_w), (bw_g, rec_g) in zip(want, got, strict=True):
        if bw_w != bw_g:
            raise AssertionError(f"{label}: bandwidth {bw_w} != {bw_g}")
        for field, value in rec_w.items():
            if rec_g[field] != value:
                at = f"{label} at {float.fromhex(bw_w)!r} bit/s"
                bad.append(f"{at}: {field} {value} != {rec_g[field]}")
    return len(want)


def cmd_compare(where: Path) -> int:
    want = json.loads((where / "answers.json").read_text())
    here = machine()
    print(f"answers from {want['machine']['machine']} ({want['machine']['platform']})")
    print(f"compared on  {here['machine']} ({here['platform']}, python {here['python']})")
    bad: list[str] = []
    n_plan = n_graph = n_rebuilt = n_fields = 0
    t0 = time.perf_counter()
    for case in CASES:
        name = case_name(case)
        w = want["cases"][name]
        loaded = cic_fast.Planner.load(where / f"{name}.plan")
        bws = sent_bandwidths(w["decisions"])
        got = plan_answers(loaded, bws)
        if got["breakpoints"] != w["breakpoints"] or got["partitions"] != w["partitions"]:
            bad.append(f"{name}: the loaded plan's pieces differ")
        n = diff(f"{name} decide", w["decisions"], got["decisions"], bad)
        n_plan += n
        n_fields += 9 * n
        key = graph_key(loaded)
        n = diff(f"{name} {key}", w[key], graph_answers(loaded, sent_bandwidths(w[key])), bad)
        n_graph += n
        n_fields += 9 * n
        with np.load(where / f"{name}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        rebuilt = plan_answers(build(case, arrays), bws)
        if rebuilt["breakpoints"] != w["breakpoints"]:
            bad.append(f"{name}: the plan rebuilt here has other breakpoints")
        if rebuilt["partitions"] != w["partitions"]:
            bad.append(f"{name}: the plan rebuilt here has other partitions")
        n = diff(f"{name} rebuilt decide", w["decisions"], rebuilt["decisions"], bad)
        n_rebuilt += n
        n_fields += 9 * n
        print(f"{name}: {len(w['decisions'])} decisions, {len(w[key])} {key}")
    dt = time.perf_counter() - t0
    for line in bad[:20]:
        print("DIFFERENT:", line)
    print(
        f"{len(CASES)} plan files from x86_64: {n_plan} decisions of the loaded plans, "
        f"{n_graph} min_cut/max_throughput answers, {n_rebuilt} decisions of plans rebuilt "
        f"on {here['machine']}; {n_fields} fields compared, {len(bad)} different "
        f"({dt:.1f}s)"
    )
    if bad:
        return 1
    print("bit-identical to x86_64")
    return 0


def check_split(s: Any, x: Any, want: Any) -> tuple[bool, str]:
    """tail(head(x)) == model(x) exactly, and the head's bytes are what is sent."""
    import torch

    p = s.partition
    with torch.no_grad():
        sent = s.head(x)
        same = torch.equal(s.tail(sent), want)
    if p.offloads:
        nbytes = sum(v.numel() * v.element_size() for v in sent.values())
        boundary = sum(b.bytes for b in s.boundary)
        ok_bytes = nbytes == p.bytes_sent == boundary
        what = f"head bytes {nbytes} == bytes_sent {p.bytes_sent:g}: {ok_bytes}"
    else:  # all on the device: the head holds the outputs, nothing is sent
        ok_bytes = p.bytes_sent == 0 and s.boundary == ()
        what = f"all on the device, bytes_sent {p.bytes_sent:g} == 0: {ok_bytes}"
    on = int(np.count_nonzero(p.on_device))
    line = f"{on:3d}/{p.on_device.size} on the device, {what}, tail(head(x)) == model(x): {same}"
    return same and ok_bytes, line


def cmd_resnet18(size: int, repeats: int) -> int:
    import torch
    import torchvision

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, ", end="")
    print(f"{torch.get_num_threads()} threads, machine {platform.machine()}")
    t = time.perf_counter()
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want = model(x)
    print(f"model + reference forward: {time.perf_counter() - t:.2f}s")
    t = time.perf_counter()
    g = cic_fast.trace(model, x)
    print(f"trace: {g.n_nodes} nodes in {time.perf_counter() - t:.2f}s")
    t = time.perf_counter()
    dev = cic_fast.profile(model, x, graph=g, repeats=repeats, progress=False)
    print(f"profile: {repeats} repeats in {time.perf_counter() - t:.2f}s")
    print("profile platform:", json.dumps(dev.platform, sort_keys=True))
    if dev.platform.get("machine") != "aarch64":
        print(f"FAIL: the profile says machine={dev.platform.get('machine')!r}")
        return 1
    # a server 20x faster than this device, 5 ms rtt: every piece of the plan is
    # split once, at a bandwidth inside it
    planner = cic_fast.Planner.from_profiles(g, dev, dev.scaled(0.05), rtt_s=0.005)
    bps = planner.breakpoints_bps
    print(f"plan: K={planner.stats['K']}, breakpoints (Mbit/s) {[round(b / 1e6, 3) for b in bps]}")
    failures = 0
    for seg in planner.segments:
        lo, hi = seg.lo_bps, seg.hi_bps
        bw = hi / 2 if lo == 0 else lo * 2 if math.isinf(hi) else math.sqrt(lo * hi)
        t = time.perf_counter()
        s = cic_fast.split(g, bandwidth_bps=bw, planner=planner)
        ok, line = check_split(s, x, want)
        failures += not ok
        print(f"  {bw / 1e6:10.4g} Mbit/s: {line} ({time.perf_counter() - t:.2f}s)")
    # forced cuts inside the network (any prefix of the nodes is a valid device set)
    for k in (g.n_nodes // 4, g.n_nodes // 2, 3 * g.n_nodes // 4):
        on = np.arange(g.n_nodes) < k
        t = time.perf_counter()
        s = cic_fast.split(g, bandwidth_bps=10e6, planner=planner, on_device=on)
        ok, line = check_split(s, x, want)
        failures += not ok
        print(f"  forced prefix {k:3d}: {line} ({time.perf_counter() - t:.2f}s)")
    print("resnet18 on aarch64:", "OK" if failures == 0 else f"{failures} FAILED")
    return 1 if failures else 0


def pytest_configure(config: Any) -> None:
    """As a pytest plugin (``-p aarch64_check``): no hypothesis deadlines.

    Under qemu the code runs about ten times slower than natively; a deadline
    would time the emulator, not cic_fast. The profile the tests' conftest chose
    (derandomized on CI) is otherwise kept.
    """
    from hypothesis import settings

    settings.register_profile("aarch64-qemu", parent=settings.default, deadline=None)
    settings.load_profile("aarch64-qemu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("answers").add_argument("dir", type=Path)
    sub.add_parser("compare").add_argument("dir", type=Path)
    r = sub.add_parser("resnet18")
    r.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    r.add_argument("--repeats", type=int, default=5, help="profile repeats (default 5)")
    args = ap.parse_args(argv)
    if args.cmd == "answers":
        return cmd_answers(args.dir)
    if args.cmd == "compare":
        return cmd_compare(args.dir)
    return cmd_resnet18(args.size, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
