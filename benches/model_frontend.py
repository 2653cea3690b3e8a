"""Per-model numbers of the PyTorch front end: trace, profile, split, checked.

Run ``python benches/model_frontend.py [--models a,b] [--repeats 5]``. For each
torchvision model (weights=None, 224x224, inception_v3 299x299) it prints one
row: node and edge count, trace time, profile time (``repeats`` timed runs of
every node after one warm-up), the additivity ratio (sum of per-node medians over
the measured end-to-end latency), how many distinct optimal partitions the sweep
0.1 .. 10^4 Mbit/s produced, and how many partitions were executed and checked
(``tail(head(x)) == model(x)`` and the bytes ``head`` returns equal
``partition.bytes_sent``). The server profile is the measured device profile
scaled 10x faster. Not part of the test run: it takes minutes.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torchvision

from cic_fast.frontend.profiling import profile
from cic_fast.frontend.splitting import split
from cic_fast.frontend.tracing import trace

MODELS = (
    "alexnet,vgg16,resnet18,resnet50,mobilenet_v3_large,efficientnet_b0,inception_v3,"
    "googlenet,convnext_tiny,swin_t,vit_b_16,resnet152,densenet201"
)
SWEEP_MBIT = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 1e4)


def _leaves(value):
    return [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def _check(s, model_out, inputs) -> None:
    with torch.no_grad():
        sent = s.head(*inputs)
        out = s.tail(sent)
    torch.testing.assert_close(out, model_out, rtol=1e-4, atol=1e-4)
    if s.partition.offloads:
        got = sum(t.numel() * t.element_size() for t in _leaves(sent))
        assert got == s.partition.bytes_sent, (got, s.partition.bytes_sent)


def _partitions(g, rng: np.random.Generator, sweep: list[np.ndarray]) -> list[np.ndarray]:
    """The sweep's optima, all-device, all-server, prefixes and random closed sets."""
    masks = list(sweep)
    masks.append(np.ones(g.n_nodes, dtype=bool))
    on = np.zeros(g.n_nodes, dtype=bool)
    on[g.inputs] = True
    masks.append(on)
    first = int(g.inputs.max()) + 1
    for k in rng.integers(first, g.n_nodes, size=3):
        masks.append(np.arange(g.n_nodes) < k)  # nodes are topologically ordered
    succ = g.successors()
    inputs = set(g.inputs.tolist())
    for _ in range(3):
        on = np.ones(g.n_nodes, dtype=bool)
        stack = [int(v) for v in rng.choice(g.n_nodes, size=3) if int(v) not in inputs]
        while stack:
            v = stack.pop()
            if on[v]:
                on[v] = False
                stack.extend(succ[v])
        masks.append(on)
    unique = {m.tobytes(): m for m in masks}
    return list(unique.values())


def run(name: str, repeats: int) -> dict:
    branchy = name in ("inception_v3", "googlenet")
    kw = {"init_weights": True, "aux_logits": False} if branchy else {}
    size = 299 if name == "inception_v3" else 224
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kw).eval()
    x = (torch.randn(1, 3, size, size),)
    t0 = time.perf_counter()
    g = trace(model, x)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dev = profile(model, x, graph=g, repeats=repeats, warmup=1, progress=False)
    profile_s = time.perf_counter() - t0
    srv = dev.scaled(0.1)
    sweep = []
    for mbit in SWEEP_MBIT:
        bw = mbit * 1e6
        s = split(model, x, bandwidth_bps=bw, device_profile=dev, server_profile=srv, graph=g)
        sweep.append(np.asarray(s.partition.on_device, dtype=bool))
    n_optimal = len({m.tobytes() for m in sweep})
    with torch.no_grad():
        ref = model(*x)
    masks = _partitions(g, np.random.default_rng(1), sweep)
    for on in masks:
        s = split(model, x, bandwidth_bps=10e6, device_profile=dev, server_profile=srv,
                  on_device=on, graph=g)  # fmt: skip
        _check(s, ref, x)
    return {
        "model": name,
        "input": size,
        "nodes": g.n_nodes,
        "edges": g.n_edges,
        "trace_s": round(trace_s, 2),
        "profile_s": round(profile_s, 2),
        "end_to_end_ms": round(dev.total_s * 1e3, 1),
        "additivity": round(dev.additivity, 3),
        "optimal_partitions": n_optimal,
        "partitions_checked": len(masks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, repeats={args.repeats}")  # fmt: skip
    cols = ("model", "input", "nodes", "edges", "trace_s", "profile_s", "end_to_end_ms",
            "additivity", "optimal_partitions", "partitions_checked")  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name in args.models.split(","):
        row = run(name, args.repeats)
        print("| " + " | ".join(str(row[c]) for c in cols) + " |", flush=True)


if __name__ == "__main__":
    main()
