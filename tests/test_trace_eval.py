"""Trace-driven evaluation (``cic-fast evaluate --trace``): the runs and their JSON.

The end-to-end test replays a short synthetic trace (fast, slow, an outage, fast)
on the user-space link, with a sleep-slowed device, through every method, and
checks the schema of ``trace_runs`` and what each request's record must say:
the true rate is the replayed window's, nothing is wrong, the oracle follows the
true rate, the fixed methods never change partition, and the summaries are the
requests' statistics.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from cic_fast.evaluation.report import TRACE_METHODS, format_trace_table, summarize_trace

RUN_KEYS = {
    "model",
    "trace",
    "duration_s",
    "device_slowdown",
    "server_speedup",
    "input_dtype",
    "methods",
}
METHOD_KEYS = {
    "mean_s",
    "p50_s",
    "p95_s",
    "p99_s",
    "requests_per_s",
    "deadline_hit_rate",
    "wrong_outputs",
    "estimate_error_median",
    "requests",
}
REQUEST_KEYS = {"t_s", "latency_s", "predicted_s", "true_bps", "estimate_bps", "path", "on_device"}
PATHS = {"offload", "local", "fallback-local", "hedged-local", "hedged-offload"}


def _req(t, lat, pred, true, est, path="offload", on=3, wrong=False):
    return {
        "t_s": t,
        "latency_s": lat,
        "predicted_s": pred,
        "true_bps": true,
        "estimate_bps": est,
        "path": path,
        "on_device": on,
        "wrong": wrong,
    }


def test_summarize_trace_statistics():
    reqs = [
        _req(0.0, 0.1, 0.1, 1e6, None, "local"),
        _req(0.1, 0.2, 0.1, 1e6, 2e6),
        _req(0.3, 0.3, None, 0.0, 1e6, "hedged-local"),
        _req(0.6, 0.4, 0.2, 4e6, 3e6, wrong=True),
    ]
    s = summarize_trace(reqs, 0.5, deadline_s=0.25)
    lat = np.array([0.1, 0.2, 0.3, 0.4])
    assert s["mean_s"] == pytest.approx(lat.mean())
    assert s["p50_s"] == pytest.approx(np.percentile(lat, 50))
    assert s["p99_s"] == pytest.approx(np.percentile(lat, 99))
    # the last answer came at 1.0 s, after the 0.5 s run: 4 requests in 1.0 s
    assert s["requests_per_s"] == pytest.approx(4.0)
    assert s["deadline_hit_rate"] == pytest.approx(0.5)
    assert s["wrong_outputs"] == 1
    # |2/1 - 1| = 1 and |3/4 - 1| = 0.25 (no estimate, or an outage: not counted)
    assert s["estimate_error_median"] == pytest.approx(0.625)
    # 0.1/0.1, 0.2/0.1, 0.4/0.2 (no finite prediction for the outage)
    assert s["measured_over_predicted_median"] == pytest.approx(2.0)
    assert s["paths"] == {"local": 1, "offload": 2, "hedged-local": 1}
    assert s["n_requests"] == 4 and s["requests"] == reqs
    none = summarize_trace([], 1.0)
    assert none["mean_s"] is None and none["requests_per_s"] == 0.0
    assert none["deadline_hit_rate"] is None and none["estimate_error_median"] is None
    table = format_trace_table(
        [
            {
                "model": "m",
                "trace": "/x/t",
                "methods": {"device-only": s, "cic": s, "oracle": none},
            }
        ]
    )
    assert table.count("\n") == 4 and "| m | t | cic | 250 |" in table


def _parser():
    from cic_fast.cli.evaluate import add_evaluate_parser

    p = argparse.ArgumentParser()
    add_evaluate_parser(p.add_subparsers(dest="cmd"))
    return p


def test_cli_trace_options(tmp_path, capsys):
    a = _parser().parse_args(
        [
            "evaluate", "--out", "d", "--trace", "a.up", "--trace", "b", "--trace-start-s", "5",
            "--duration-s", "60", "--fps", "4", "--methods", "device-only,cic,oracle",
            "--input-dtype", "uint8", "--deadline-ms", "300", "--hedge-margin-ms", "40",
        ]
    )  # fmt: skip
    assert a.trace == ["a.up", "b"] and a.trace_start_s == 5.0 and a.duration_s == 60.0
    assert a.fps == 4.0 and a.methods == ["device-only", "cic", "oracle"]
    assert a.input_dtype == "uint8" and a.deadline_ms == 300.0 and a.hedge_margin_ms == 40.0
    # the models default per mode (the four with a trace)
    assert a.device_slowdown == 8.0 and a.models is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["evaluate", "--out", "d", "--input-dtype", "int8"])
    from cic_fast.cli import main

    trace = tmp_path / "t.txt"
    trace.write_text("0 1\n1 2\n2 0\n")
    for argv, msg in (
        (["--methods", "cic,magic"], "unknown magic"),
        (["--duration-s", "0"], "--duration-s must be > 0"),
    ):
        rc = main(["evaluate", "--out", str(tmp_path / "o"), "--trace", str(trace), *argv])
        assert rc != 0 and msg in capsys.readouterr().err
    rc = main(["evaluate", "--out", str(tmp_path / "o"), "--trace", str(tmp_path / "nope")])
    assert rc != 0 and "no such file" in capsys.readouterr().err


# fast 8 Mbit/s, slow 0.5 Mbit/s, an outage, fast again: 0.6 s each
TRACE = "0 8\n0.6 0.5\n1.2 0\n1.8 8\n2.4 8\n"
DURATION_S = 2.4


@pytest.mark.slow
def test_evaluate_traces_end_to_end_userspace(tmp_path):
    pytest.importorskip("torchvision")
    from cic_fast.evaluation.harness import evaluate_traces
    from cic_fast.evaluation.traces import BandwidthTrace

    path = tmp_path / "steps.txt"
    path.write_text(TRACE)
    runs = evaluate_traces(
        ["resnet18"],
        [path],
        out_dir=tmp_path,
        duration_s=DURATION_S,
        methods=TRACE_METHODS,
        input_dtype="uint8",
        deadline_s=1.0,
        device_slowdown=4.0,
        input_size=64,
        link="userspace",
        slowdown_method="sleep",
        profile_repeats=1,
        timeout_s=30.0,
        log=lambda s: None,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["trace_runs"] == json.loads(json.dumps(runs))
    assert saved["trace_meta"]["link"] == "userspace"
    (run,) = runs
    assert RUN_KEYS <= set(run) and run["input_dtype"] == "uint8"
    assert run["device_slowdown"] == 4.0 and run["duration_s"] == DURATION_S
    assert list(run["methods"]) == list(TRACE_METHODS)
    trace = BandwidthTrace.load(path)
    windows = dict(trace.windows(0.1))
    for name, m in run["methods"].items():
        assert METHOD_KEYS <= set(m), name
        reqs = m["requests"]
        assert reqs and m["wrong_outputs"] == 0, (name, m["paths"])
        assert m["n_requests"] == len(reqs)
        assert m == summarize_trace(reqs, DURATION_S, 1.0) | {"requests": reqs}
        starts = [r["t_s"] for r in reqs]
        assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] < DURATION_S
        for r in reqs:
            assert REQUEST_KEYS <= set(r) and r["path"] in PATHS, r
            # the true rate is the replayed window's at the request's start
            w = max(s for s in windows if s <= r["t_s"] + 1e-12)
            assert r["true_bps"] == pytest.approx(windows[w]) or abs(r["t_s"] - w) < 0.02
        ons = {r["on_device"] for r in reqs}
        if name in ("device-only", "server-only", "static"):
            assert len(ons) == 1, (name, ons)  # chosen before the run
        if name == "device-only":
            assert {r["path"] for r in reqs} == {"local"}
    # the oracle decides at the true rate: device-only in the outage
    oracle = run["methods"]["oracle"]["requests"]
    n_nodes = max(r["on_device"] for r in run["methods"]["device-only"]["requests"])
    assert all(r["on_device"] == n_nodes for r in oracle if r["true_bps"] == 0)
    assert (tmp_path / "trace_resnet18_steps.txt.png").stat().st_size > 1000
