"""The device side of the evaluation: a worker process that decides and measures.

``python -m cic_fast.evaluation.worker CONFIG`` loads the model, traces it once,
builds one Planner from the two profiles and every method's decision rule, and a
`cic_fast.Client` to the server from the traced graph and that Planner; it prints
``{"ready": true, "pid": ...}`` and then answers one JSON line per command read on
stdin: ``{"rate_bps": R}`` -> every method's measurements at that rate (see
`cic_fast.evaluation.report.MethodResult`), ``{"quit": true}`` -> exit. The
orchestrator (`cic_fast.evaluation.harness`) moves it into the device's CPU group
after "ready", so set-up runs at full speed.

Only the Client's public API is used: `Client.infer_partition` for the latencies,
`Client.stream` for the throughput, and ``device_runner`` for the sleep-scaled
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
from cic_fast.evaluation.report import METHODS, MethodResult

__all__ = ["DeviceWorker", "main", "slowed_runner"]


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

        from cic_fast.core.baselines import Neurosurgeon
        from cic_fast.core.graph import min_cut
        from cic_fast.core.planner import Planner
        from cic_fast.frontend.models import load_model
        from cic_fast.frontend.profiling import Profile
        from cic_fast.frontend.tracing import trace
        from cic_fast.runtime.client import Client

        torch.set_num_threads(int(cfg.get("threads", 1)))
        self.cfg = cfg
        self.model = load_model(cfg["model"], weights=cfg["weights"])
        gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
        self.x = torch.randn(*cfg["input_shape"], generator=gen)
        # traced once; every later stage is handed the graph or the planner
        self.graph = trace(self.model, self.x)
        dev = Profile.load(cfg["device_profile"], self.graph)
        srv = Profile.load(cfg["server_profile"], self.graph)
        self.rtt_s = float(cfg.get("rtt_s", 0.0))
        self.add_rtt_s = float(cfg.get("add_rtt_s", 0.0))
        g = self.graph
        self.planner = Planner.from_profiles(g, dev, srv, rtt_s=self.rtt_s)
        self.core = self.planner.graph
        self.neuro = Neurosurgeon(
            g.edges, dev.seconds, srv.seconds, g.out_bytes, g.inputs, self.rtt_s
        )
        self._min_cut = min_cut
        runner = None
        if cfg.get("slowdown_method") == "sleep":
            runner = slowed_runner(float(cfg["slowdown"]))
        self.client = Client(
            g,
            address=tuple(cfg["address"]),
            planner=self.planner,
            timeout_s=float(cfg.get("timeout_s", 60.0)),
            bandwidth_bps=1e6,
            retry_s=0.0,
            device_runner=runner,
        )
        self.requests = int(cfg.get("requests", 3))
        self.stream_frames = int(cfg.get("stream_frames", 4))
        self.max_predicted_s = float(cfg.get("max_predicted_s", 12.0))
        self._device_only: tuple[list[float], float, int] | None = None

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

    def stream(self, on: np.ndarray) -> float:
        """Frames per second of ``stream_frames`` frames pipelined device | link | server.

        `Client.stream` on one connection, with as many frames in flight as the
        stream has (the device never waits for an answer before its next head):
        fps = (frames - 1) / (time between the first and the last answer).
        """
        cli = self.client
        m = self.stream_frames
        done: list[float] = []
        t0 = time.perf_counter()
        frames = cli.stream(itertools.repeat(self.x, m), on_device=on, max_in_flight=max(2, m))
        with contextlib.closing(frames):
            for _ in frames:
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


def _worker(config_path: str) -> int:
    """``python -m cic_fast.evaluation.worker CONFIG``: answer rate commands on stdin."""
    cfg = json.loads(Path(config_path).read_text())
    dev = DeviceWorker(cfg)
    # warm every path at full speed before slowing down
    for method in METHODS:
        dev.decide(method, 1e7)
    # The orchestrator moves this process into the device's CPU group once it reads
    # "ready" (inside `ip netns exec` the cgroup hierarchy is not mounted), so set-up
    # runs at full speed.
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        try:
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
