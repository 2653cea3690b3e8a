"""The device side of the evaluation: a worker process that decides and measures.

``python -m cic_fast.evaluation.worker CONFIG`` loads the model, traces it once,
builds one Planner from the two profiles and every method's decision rule, and a
`cic_fast.Client` to the server from the traced graph and that Planner; it prints
``{"ready": true, "pid": ...}`` and then answers one JSON line per command read on
stdin: ``{"rate_bps": R}`` -> every method's measurements at that rate (see
`cic_fast.evaluation.report.MethodResult`), ``{"rate_bps": R, "objective":
"throughput"}`` -> every throughput method's stream at that rate (see
`cic_fast.evaluation.report.ThroughputResult`), ``{"trace_run": {...}}`` -> one method's
requests while the orchestrator replays a trace on the link (see
:meth:`DeviceWorker.trace_run`), ``{"quit": true}`` -> exit. The
orchestrator (`cic_fast.evaluation.harness`) moves it into the device's CPU group
after "ready", so set-up runs at full speed.

Only the Client's public API is used: `Client.infer_partition` for the latencies,
`Client.stream` for the throughput, `Client.infer` / `Client.decide` for the
methods that decide from the estimate, and ``device_runner`` for the sleep-scaled
slow device (`cic_fast.evaluation.device.Slowed` around every device computation).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cic_fast.evaluation.device import Slowed
from cic_fast.evaluation.report import (
    METHODS,
    THROUGHPUT_METHODS,
    TRACE_METHODS,
    MethodResult,
    ThroughputResult,
)

__all__ = ["DeviceWorker", "main", "slowed_runner"]

#: Distinct input frames a trace run cycles through (each checked against its own
#: local result).
TRACE_FRAMES = 4


def _median_call_s(fn: Callable[[], Any], budget_s: float = 0.2, max_calls: int = 200) -> float:
    """Median seconds of one call of ``fn`` (at least 3 calls, at most ``max_calls``)."""
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < 3 or (len(times) < max_calls and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def slowed_runner(factor: float) -> Callable[[Callable[[], Any]], Any]:
    """A `cic_fast.Client` ``device_runner`` that makes the device ``factor`` times slower.

    Each device computation runs, then sleeps ``factor - 1`` times its duration
    (`cic_fast.evaluation.device.Slowed`).
    """
    return Slowed(_call, factor)


class DeviceWorker:
    """The device side of the evaluation: decisions, requests and streams."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import torch

        from cic_fast.core.graph import min_cut
        from cic_fast.frontend.models import load_model, random_inputs
        from cic_fast.frontend.profiling import Profile
        from cic_fast.frontend.tracing import trace

        torch.set_num_threads(int(cfg.get("threads", 1)))
        self.cfg = cfg
        dtype = str(cfg.get("input_dtype", "float32"))
        self.model = load_model(cfg["model"], weights=cfg["weights"], input_dtype=dtype)
        seed = int(cfg.get("seed", 0))
        shape = [cfg["input_shape"]]
        self.x = random_inputs(cfg["model"], shape, input_dtype=dtype, seed=seed)[0]
        # traced once; every later stage is handed the graph or the planner
        self.graph = trace(self.model, self.x)
        self._dev_profile = Profile.load(cfg["device_profile"], self.graph)
        self._srv_profile = Profile.load(cfg["server_profile"], self.graph)
        self.rtt_s = float(cfg.get("rtt_s", 0.0))
        self.add_rtt_s = float(cfg.get("add_rtt_s", 0.0))
        self._min_cut = min_cut
        self.trace_mode = bool(cfg.get("trace_mode", False))
        self.device_scale = 1.0
        self._traces: dict[tuple[str, float], tuple[Any, Any]] = {}
        self.build_decisions(1.0)
        self.frames = [self.x] + [
            random_inputs(cfg["model"], shape, input_dtype=dtype, seed=seed + k)[0]
            for k in range(1, TRACE_FRAMES)
        ]
        with torch.inference_mode():
            self.refs = [_leaves(self.model(f)) for f in self.frames]
        self.requests = int(cfg.get("requests", 3))
        self.stream_frames = int(cfg.get("stream_frames", 4))
        self.max_predicted_s = float(cfg.get("max_predicted_s", 12.0))
        self._device_only: tuple[list[float], float, int] | None = None

    def build_decisions(self, device_scale: float) -> None:
        """The decisions and the Client, with the device profile times ``device_scale``."""
        from cic_fast.core.baselines import Neurosurgeon
        from cic_fast.core.planner import Planner
        from cic_fast.runtime.client import Client

        cfg, g = self.cfg, self.graph
        dev = self._dev_profile if device_scale == 1.0 else self._dev_profile.scaled(device_scale)
        srv = self._srv_profile
        self.device_scale = float(device_scale)
        self.planner = Planner.from_profiles(g, dev, srv, rtt_s=self.rtt_s)
        self.core = self.planner.graph
        self.tplanner = self.planner.with_objective("throughput")
        self.neuro = Neurosurgeon(
            g.edges, dev.seconds, srv.seconds, g.out_bytes, g.inputs, self.rtt_s
        )
        runner = None
        if cfg.get("slowdown_method") == "sleep":
            runner = slowed_runner(float(cfg["slowdown"]))
        extra: dict[str, Any] = {}
        timeout_s = float(cfg.get("timeout_s", 60.0))
        if self.trace_mode:
            # a request never waits on a stalled link for long: the hedge (or, without
            # one, this deadline) bounds it near device-only
            timeout_s = min(timeout_s, max(1.0, 3.0 * self.device_only_predicted_s()))
            if cfg.get("hedge_margin_s") is not None:
                extra["hedge_margin_s"] = float(cfg["hedge_margin_s"])
        old = getattr(self, "client", None)
        if old is not None:
            old.close()
        self.client = Client(
            g,
            address=tuple(cfg["address"]),
            planner=self.planner,
            timeout_s=timeout_s,
            bandwidth_bps=None if self.trace_mode else 1e6,
            retry_s=0.0,
            device_runner=runner,
            cache_size=256,
            **extra,
        )

    def device_only_predicted_s(self) -> float:
        """The cost model's device-only latency (with the current device profile)."""
        n = self.graph.n_nodes
        return float(self.core.evaluate(np.ones(n, bool), 1.0, 0.0).latency_s)

    def calibrate(self, runs: int = 3) -> dict[str, float]:
        """Time device-only on the emulated device; scale the device profile to match.

        The per-layer profile is measured on the host at full speed (a CPU quota
        makes per-layer timings bursty) and scaled by F; on the quota-limited
        device the whole model runs slower than that sum (cold caches after each
        throttled period, the client's own work: 1.3-1.9x on this machine), which
        would bias every decision towards the device. Profiling on the device, at
        whole-model granularity: the median of ``runs`` device-only requests (after
        one warm-up) over the prediction is the factor every device time is scaled
        by (the planner, Neurosurgeon, DADS and the Client are rebuilt).
        """
        on = np.ones(self.graph.n_nodes, bool)
        times = []
        for i in range(runs + 1):
            t0 = time.perf_counter()
            self.client.infer_partition(on, self.x)
            if i:
                times.append(time.perf_counter() - t0)
        measured = float(np.median(times))
        predicted = self.device_only_predicted_s()
        return {"device_only_s": measured, "predicted_s": predicted, "scale": measured / predicted}

    def decide(self, method: str, bw: float) -> tuple[np.ndarray, float]:
        g = self.graph
        n = g.n_nodes
        if method == "device-only":
            return np.ones(n, dtype=bool), 0.0
        if method == "server-only":
            on = np.zeros(n, dtype=bool)
            on[g.inputs] = True
            return on, 0.0
        if method == "neurosurgeon":
            return self.neuro.decide(bw), _median_call_s(lambda: self.neuro.decide(bw))
        if method == "dads":

            def full() -> Any:
                return self._min_cut(
                    g.edges,
                    self.core.device_s,
                    self.core.server_s,
                    g.out_bytes,
                    bw,
                    rtt_s=self.rtt_s,
                )

            return full().on_device, _median_call_s(full)
        if method == "cic":
            return self.planner.decide(bw).on_device, _median_call_s(
                lambda: self.planner.decide(bw)
            )
        raise ValueError(f"unknown method {method!r}")

    def decide_throughput(self, method: str, bw: float) -> tuple[np.ndarray, float]:
        """A throughput method's partition at ``bw`` and its decision time (s)."""
        from cic_fast.core.throughput_baselines import dads_heavy_load

        if method in ("device-only", "server-only"):
            return self.decide(method, bw)
        if method == "cic-latency":
            return self.decide("cic", bw)
        if method == "cic-throughput":
            return self.tplanner.decide(bw).on_device, _median_call_s(
                lambda: self.tplanner.decide(bw)
            )
        if method == "dads-heavy":
            g = self.graph
            t0 = time.perf_counter()  # once: DSH runs up to thousands of min cuts
            p = dads_heavy_load(g.edges, self.core.device_s, self.core.server_s, g.out_bytes, bw)
            return p.on_device, time.perf_counter() - t0
        raise ValueError(f"unknown throughput method {method!r}")

    def measure_throughput(self, bw: float) -> dict[str, Any]:
        """Every throughput method's stream at link rate ``bw`` (ThroughputResult dicts)."""
        from cic_fast.runtime import wire as W

        self.client.bandwidth_bps = bw
        results: dict[str, ThroughputResult] = {}
        by_mask: dict[bytes, str] = {}
        for method in THROUGHPUT_METHODS:
            on, dec_s = self.decide_throughput(method, bw)
            part = self.core.evaluate(on, bw, self.rtt_s)
            r = ThroughputResult(
                method,
                int(on.sum()),
                int(on.size),
                float(part.bytes_sent),
                float(part.period_s),
                float(part.latency_s),
                dec_s,
                measured=False,
            )
            key = W.pack_mask(on)
            if key in by_mask:
                src = results[by_mask[key]]
                r.measured, r.fps, r.frames = src.measured, src.fps, src.frames
                r.fallbacks, r.shared_with = src.fallbacks, src.method
            elif r.predicted_period_s <= self.max_predicted_s:
                print(
                    f"  {method}: {r.n_on_device}/{r.n_nodes} on device, stream",
                    file=sys.stderr,
                    flush=True,
                )
                self.stream(on, frames=2)  # warm: the connection, the tail, the caches
                r.fps = self.stream(on)
                r.frames = self.stream_frames
                r.measured = True
                by_mask[key] = method
            results[method] = r
        return {"rate_bps": bw, "methods": {k: asdict(v) for k, v in results.items()}}

    def latencies(self, on: np.ndarray) -> tuple[list[float], int]:
        """Warm up once, then time ``requests`` sequential requests."""
        cli = self.client
        offloads = not bool(on.all())
        lat: list[float] = []
        fallbacks = 0
        for i in range(self.requests + 1):
            cli.infer_partition(on, self.x)
            rec = cli.last
            assert rec is not None
            fallbacks += int(rec.fallback)
            if rec.fallback:
                print(f"fallback: {rec.error}", file=sys.stderr, flush=True)
            if i:
                lat.append(rec.total_s + (self.add_rtt_s if offloads else 0.0))
        return lat, fallbacks

    def stream(self, on: np.ndarray, frames: int | None = None) -> float:
        """Frames per second of ``stream_frames`` frames pipelined device | link | server.

        `Client.stream` on one connection, with as many frames in flight as the
        stream has (the device never waits for an answer before its next head):
        fps = (frames - 1) / (time between the first and the last answer).
        ``frames`` overrides ``stream_frames``.
        """
        cli = self.client
        m = self.stream_frames if frames is None else frames
        done: list[float] = []
        t0 = time.perf_counter()
        outs = cli.stream(itertools.repeat(self.x, m), on_device=on, max_in_flight=max(2, m))
        with contextlib.closing(outs):
            for _ in outs:
                rec = cli.last
                assert rec is not None
                if rec.fallback:
                    raise RuntimeError(f"stream failed: {rec.error}")
                done.append(rec.done_s + self.add_rtt_s)
        if len(done) != m:
            raise RuntimeError("stream failed: incomplete")
        if m >= 2:
            return (m - 1) / (done[-1] - done[0])
        return 1.0 / (done[0] - t0)

    # -- is the cost model right? ------------------------------------------------------

    def plan_check(self, bw: float) -> dict[str, Any]:
        """Every partition of the plan measured at link rate ``bw``.

        Each distinct partition of the plan's segments (and device-only) runs
        ``requests`` timed requests (after a warm-up); the answer gives each one's
        predicted and measured median latency and which one the Planner chose at
        ``bw``, so the caller can say whether the choice was the measured fastest.
        Partitions predicted slower than ``max_predicted_s`` are not run.
        """
        self.client.bandwidth_bps = bw
        chosen = np.asarray(self.planner.decide(bw).on_device, bool)
        masks: dict[bytes, np.ndarray] = {}
        for seg in self.planner.segments:
            masks.setdefault(seg.on_device.tobytes(), np.asarray(seg.on_device, bool))
        dev = np.ones(self.graph.n_nodes, bool)
        masks.setdefault(dev.tobytes(), dev)
        parts = []
        for on in masks.values():
            part = self.core.evaluate(on, bw, self.rtt_s)
            entry: dict[str, Any] = {
                "n_on_device": int(on.sum()),
                "bytes_sent": float(part.bytes_sent),
                "predicted_s": float(part.latency_s),
                "chosen": bool(np.array_equal(on, chosen)),
                "latency_s": [],
                "median_s": None,
                "fallbacks": 0,
            }
            if part.latency_s <= self.max_predicted_s:
                lat, fallbacks = self.latencies(on)
                entry.update(latency_s=lat, median_s=float(np.median(lat)), fallbacks=fallbacks)
            parts.append(entry)
        return {"rate_bps": bw, "partitions": parts}

    # -- trace runs ------------------------------------------------------------------

    def warm(self, rates_bps: Sequence[float]) -> int:
        """Build every partition a trace run may use, at full speed; the count built.

        The plan's partitions (CIC, DADS and the oracle choose among them, ties
        aside), Neurosurgeon's prefixes at ``rates_bps`` and a grid of rates,
        device-only and server-only: each runs one request, so that the head here
        and the tail on the server are built before the clock starts (a real
        deployment builds them at start-up too).
        """
        grid = list(np.geomspace(1e3, 1e9, 61)) + [float(r) for r in rates_bps]
        masks: dict[bytes, np.ndarray] = {}
        for seg in self.planner.segments:
            masks[seg.on_device.tobytes()] = np.asarray(seg.on_device, bool)
        for bw in grid:
            for on in (self.neuro.decide(bw), self.planner.decide(bw).on_device):
                masks.setdefault(np.asarray(on, bool).tobytes(), np.asarray(on, bool))
        for method in ("device-only", "server-only"):
            on, _ = self.decide(method, 1e6)
            masks.setdefault(on.tobytes(), on)
        self.client.bandwidth_bps = 1e9
        try:
            for on in masks.values():
                self.client.infer_partition(on, self.x)
        finally:
            self.client.bandwidth_bps = None if self.trace_mode else 1e6
        return len(masks)

    def _trace_request(self, method: str, true_bps: float, x: Any) -> tuple[Any, np.ndarray]:
        """One request of ``method``: (its output, the partition it ran)."""
        cli = self.client
        g = self.graph
        if method == "cic":
            out = cli.infer(x)
            rec = cli.last
            assert rec is not None
            return out, np.asarray(rec.partition.on_device, bool)
        if method in ("neurosurgeon", "dads"):
            # the same estimate (and probing) as CIC; the decision rule differs, and
            # its time (a full min-cut for DADS) is part of the request
            _, bw, _ = cli.decide()
            if bw is None or cli.server_down:
                on = np.ones(g.n_nodes, bool)
            elif method == "dads":
                on = self._decide_dads(bw)
            else:
                on = self.neuro.decide(bw)
        elif method == "oracle":
            on = (
                np.asarray(self.planner.decide(true_bps).on_device, bool)
                if true_bps > 0
                else np.ones(g.n_nodes, bool)
            )
        elif method == "static":
            on = self._static
        else:
            on, _ = self.decide(method, 1e6)
        return cli.infer_partition(on, x), np.asarray(on, bool)

    def _decide_dads(self, bw: float) -> np.ndarray:
        return self._min_cut(
            self.graph.edges,
            self.core.device_s,
            self.core.server_s,
            self.graph.out_bytes,
            bw,
            rtt_s=self.rtt_s,
        ).on_device

    def load_trace(self, path: str, window_s: float) -> tuple[Any, Any]:
        """(the trace, the trace as replayed: its windows), read once per process.

        `_worker` reads every trace of the run before "ready": parsing a long
        mahimahi file takes ~0.5 s at full speed, 15 s on a 1/30 device.
        """
        from cic_fast.evaluation.traces import BandwidthTrace

        key = (path, window_s)
        if key not in self._traces:
            trace = BandwidthTrace.load(path)
            win = trace.windows(window_s)
            replayed = BandwidthTrace(
                [w for w, _ in win], [r for _, r in win], trace.duration_s, name=trace.name
            )
            self._traces[key] = (trace, replayed)
        return self._traces[key]

    def trace_run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One method for ``duration_s`` while the orchestrator replays a trace.

        ``cmd``: ``method``, ``trace`` (the file), ``start_s``, ``duration_s``,
        ``window_s``, ``fps`` (None: back to back) and ``t0`` (the
        ``time.monotonic()`` at which the replay started: one clock for both
        processes). Each request records its start (``t_s`` since ``t0``), its
        latency, the trace's rate then (``true_bps``, the rate of the replayed
        window), the estimate, the cost model's prediction of the partition it ran
        at the true rate (``predicted_s``, None if infinite: an offload during an
        outage) and at the estimate, which path answered, and whether its output
        differs from local execution.
        """
        import torch

        method = str(cmd["method"])
        if method not in TRACE_METHODS:
            raise ValueError(f"unknown method {method!r}")
        trace, replayed = self.load_trace(str(cmd["trace"]), float(cmd.get("window_s", 0.1)))
        start_s = float(cmd.get("start_s", 0.0))
        duration_s = float(cmd["duration_s"])
        fps = cmd.get("fps")
        t0 = float(cmd["t0"])
        self._static = np.asarray(self.planner.decide(trace.mean_bps).on_device, bool)
        cli = self.client
        # every method starts from nothing known: the same first probe for all
        cli.close()
        cli.estimator.clear()
        cli.bandwidth_bps = None
        requests: list[dict[str, Any]] = []
        i = 0
        while True:
            now = time.monotonic()
            if fps:
                slot = t0 + i / float(fps)
                if slot - t0 >= duration_s:
                    break
                if slot > now:
                    time.sleep(slot - now)
            elif now - t0 >= duration_s:
                break
            t_s = time.monotonic() - t0
            if t_s >= duration_s:
                break
            true_bps = replayed.rate_at(start_s + t_s)
            estimate = cli.estimator.estimate()
            k = i % len(self.frames)
            p0 = time.perf_counter()
            out, on = self._trace_request(method, true_bps, self.frames[k])
            latency = time.perf_counter() - p0
            rec = cli.last
            assert rec is not None
            offloaded = _path(rec) in ("offload", "hedged-offload")
            latency += self.add_rtt_s if offloaded else 0.0
            if method in ("cic", "neurosurgeon", "dads"):
                estimate = rec.bandwidth_estimate_bps
            got = _leaves(out)
            wrong = len(got) != len(self.refs[k]) or not all(
                a.shape == b.shape
                and a.dtype == b.dtype
                and bool(torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4))
                for a, b in zip(got, self.refs[k], strict=False)
            )
            at_true = self.core.evaluate(on, max(true_bps, 1e-300), self.rtt_s).latency_s
            at_est = self.core.evaluate(on, estimate, self.rtt_s).latency_s if estimate else None
            requests.append(
                {
                    "t_s": t_s,
                    "latency_s": latency,
                    "predicted_s": _finite(at_true),
                    "predicted_at_estimate_s": _finite(at_est),
                    "true_bps": true_bps,
                    "estimate_bps": estimate,
                    "path": _path(rec),
                    "on_device": int(on.sum()),
                    "bytes_sent": int(rec.bytes_sent),
                    "wrong": bool(wrong),
                    "error": rec.error,
                }
            )
            i += 1
        cli.close()
        return {"method": method, "n_nodes": int(self.graph.n_nodes), "requests": requests}

    def measure(self, bw: float) -> dict[str, Any]:
        """Every method at link rate ``bw``: a JSON-ready dict of MethodResult dicts."""
        from cic_fast.runtime import wire as W

        self.client.bandwidth_bps = bw
        results: dict[str, MethodResult] = {}
        by_mask: dict[bytes, str] = {}
        for method in METHODS:
            on, dec_s = self.decide(method, bw)
            part = self.core.evaluate(on, bw, self.rtt_s)
            r = MethodResult(
                method,
                int(on.sum()),
                int(on.size),
                float(part.bytes_sent),
                float(part.latency_s),
                dec_s,
                measured=False,
            )
            key = W.pack_mask(on)
            if key in by_mask:
                src = results[by_mask[key]]
                r.measured, r.latency_s, r.fps = src.measured, src.latency_s, src.fps
                r.fallbacks, r.shared_with = src.fallbacks, src.method
            elif on.all() and self._device_only is not None:
                r.latency_s, r.fps, r.fallbacks = self._device_only
                r.measured = True
                by_mask[key] = method
            elif r.predicted_s <= self.max_predicted_s:
                print(
                    f"  {method}: {r.n_on_device}/{r.n_nodes} on device",
                    file=sys.stderr,
                    flush=True,
                )
                r.latency_s, r.fallbacks = self.latencies(on)
                if on.all():
                    # one stage only: the stream is the requests back to back
                    r.fps = len(r.latency_s) / sum(r.latency_s)
                    self._device_only = (r.latency_s, r.fps, r.fallbacks)
                else:
                    r.fps = self.stream(on)
                r.measured = True
                by_mask[key] = method
            results[method] = r
        return {"rate_bps": bw, "methods": {k: asdict(v) for k, v in results.items()}}


def _leaves(out: Any) -> list[Any]:
    """The tensors of a model's output, in order."""
    from torch.utils import _pytree

    return [t.detach() for t in _pytree.tree_leaves(out)]


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _path(rec: Any) -> str:
    """Which path answered a request (`RequestRecord.path`)."""
    path = getattr(rec, "path", None)
    if path:
        return str(path)
    if rec.fallback:
        return "fallback-local"
    return "offload" if rec.bytes_sent or not rec.partition.on_device.all() else "local"


def _worker(config_path: str) -> int:
    """``python -m cic_fast.evaluation.worker CONFIG``: answer rate commands on stdin."""
    cfg = json.loads(Path(config_path).read_text())
    try:
        dev = DeviceWorker(cfg)
        if cfg.get("calibrate"):
            # the orchestrator moves this process into the device's CPU group, says
            # so, and moves it out again after the answer (set-up runs at full speed)
            print(json.dumps({"calibrate": True, "pid": os.getpid()}), flush=True)
            sys.stdin.readline()
            cal = dev.calibrate()
            print(json.dumps(cal), flush=True)
            sys.stdin.readline()
            dev.build_decisions(cal["scale"])
        # warm every path at full speed before slowing down
        for method in METHODS:
            dev.decide(method, 1e7)
        warmed = dev.warm(cfg.get("warm_rates_bps", [])) if dev.trace_mode else 0
        for path in cfg.get("traces", []):
            dev.load_trace(path, float(cfg.get("window_s", 0.1)))
    except Exception as e:  # the orchestrator reports it
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    # The orchestrator moves this process into the device's CPU group once it reads
    # "ready" (inside `ip netns exec` the cgroup hierarchy is not mounted), so set-up
    # runs at full speed.
    ready = {
        "ready": True,
        "pid": os.getpid(),
        "partitions": warmed,
        "device_scale": dev.device_scale,
    }
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        try:
            if "trace_run" in cmd:
                out = dev.trace_run(cmd["trace_run"])
            elif "plan_check" in cmd:
                out = dev.plan_check(float(cmd["plan_check"]["rate_bps"]))
            elif cmd.get("objective") == "throughput":
                out = dev.measure_throughput(float(cmd["rate_bps"]))
            else:
                out = dev.measure(float(cmd["rate_bps"]))
        except Exception as e:  # report, do not die: the orchestrator decides
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    dev.client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cic_fast.evaluation.worker CONFIG`` (internal)."""
    p = argparse.ArgumentParser(prog="python -m cic_fast.evaluation.worker")
    p.add_argument("config")
    args = p.parse_args(argv)
    return _worker(args.config)


if __name__ == "__main__":
    sys.exit(main())
