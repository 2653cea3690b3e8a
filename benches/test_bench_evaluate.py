"""End-to-end evaluation as a pytest-benchmark entry (one round: it is slow).

Run on purpose (plain ``pytest`` only collects ``tests/``)::

    pytest benches/test_bench_evaluate.py --benchmark-json=evaluate.json
    CIC_EVAL_MODELS=resnet18,vgg16 CIC_EVAL_RATES=0.13,1.1,5.85,18.88,100 \\
        pytest benches/test_bench_evaluate.py

Each model is one benchmark (``evaluate/<model>``): the device slowed down to
``CIC_EVAL_SLOWDOWN`` (default 8) with a cgroup CPU quota where allowed, the link a
tbf qdisc between network namespaces where allowed (else the user-space token
bucket), five methods at every rate.  ``extra_info`` holds, per rate, CIC's latency
speedup over the best of device-only and server-only, its throughput speedup, and
the decision-time ratios DADS / CIC and Neurosurgeon / CIC: ratios, not absolute
times.  The full table is ``cic-fast evaluate`` (docs/evaluation.md).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torchvision")

from cic_fast.evaluation import evaluate, format_table

MODELS = os.environ.get("CIC_EVAL_MODELS", "resnet18,mobilenet_v3_large").split(",")
RATES_MBIT = [float(r) for r in os.environ.get("CIC_EVAL_RATES", "1.1,18.88,100").split(",")]
SLOWDOWN = float(os.environ.get("CIC_EVAL_SLOWDOWN", "8"))
INPUT = int(os.environ.get("CIC_EVAL_INPUT", "224"))


@pytest.mark.parametrize("model", MODELS)
def test_evaluate(benchmark, model, tmp_path):
    benchmark.group = f"evaluate/{model}"
    rows = benchmark.pedantic(
        evaluate,
        args=([model], [r * 1e6 for r in RATES_MBIT]),
        kwargs={
            "out_dir": tmp_path,
            "device_slowdown": SLOWDOWN,
            "requests": 3,
            "stream_frames": 4,
            "input_size": INPUT,
            "log": lambda s: None,
        },
        rounds=1,
        iterations=1,
    )
    print("\n" + format_table(rows))
    for row in rows:
        m = row.methods
        key = f"{row.rate_bps / 1e6:g}Mbit"
        benchmark.extra_info[f"{key}/cic_latency_speedup"] = row.latency_speedup()
        benchmark.extra_info[f"{key}/cic_throughput_speedup"] = row.throughput_speedup()
        benchmark.extra_info[f"{key}/dads_over_cic_decision"] = (
            m["dads"].decision_s / m["cic"].decision_s
        )
        benchmark.extra_info[f"{key}/neurosurgeon_over_cic_decision"] = (
            m["neurosurgeon"].decision_s / m["cic"].decision_s
        )
        assert all(r.fallbacks == 0 for r in m.values())
        # exact methods never predict worse than a prefix or a fixed placement
        assert m["cic"].predicted_s <= min(r.predicted_s for r in m.values()) * (1 + 1e-9)
