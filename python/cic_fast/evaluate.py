"""End-to-end evaluation: a slowed-down device, a shaped link, a server, five methods.

:func:`evaluate` runs, for every model and link rate, the same inference five ways
and measures it end to end over a real socket:

``device-only``
    the whole model on the device;
``server-only``
    the input sent, the whole model on the server;
``neurosurgeon``
    the best single split point on the topological order (only prefix partitions),
    chosen per request by the cost model (Kang et al., ASPLOS 2017);
``dads``
    the optimal partition from a full min-cut of the whole layer graph per request
    (:func:`cic_fast.min_cut`, Hu et al., INFOCOM 2019);
``cic``
    the optimal partition from :meth:`cic_fast.Planner.decide` per request.

The emulation (see docs/evaluation.md):

* the server is a ``cic-fast serve`` subprocess on this machine;
* the device is a worker subprocess (``python -m cic_fast.evaluate worker``) that,
  once set up, joins a cgroup v1 CPU group with ``1 / F`` of one core
  (:class:`~cic_fast.linkemu.CpuQuota`); where cgroups are not allowed, every device
  computation is followed by a sleep of ``F - 1`` times its duration;
* the link is a tbf qdisc on a veth pair between two network namespaces
  (:class:`~cic_fast.linkemu.NetnsLink`) where allowed, else the user-space token
  bucket (:class:`~cic_fast.linkemu.TokenBucketLink`); an extra round trip is added
  in user space;
* profiles: the per-layer times of this machine (one thread), measured with
  :func:`cic_fast.profile`, scaled by ``F`` for the device and by ``F / S`` for the
  server; the server really runs ``S`` times faster than the device: unthrottled
  when ``S == F``, under a cgroup quota of ``S / F`` of a core when ``S < F``.

Per method and rate it reports the end-to-end latency (median, p95 over
``requests`` sequential requests), the decision time, and the throughput of a
stream of frames pipelined across device, link and server (the device computes the
head of frame i+1 while frame i is on the link or on the server).  Methods that
choose the same partition share its measurement; a partition whose predicted
latency exceeds ``max_predicted_s`` is not run (its predicted latency is reported
and marked).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "METHODS",
    "EvalRow",
    "MethodResult",
    "Neurosurgeon",
    "evaluate",
    "format_table",
    "load_rows",
    "plot_latency",
]

METHODS = ("device-only", "server-only", "neurosurgeon", "dads", "cic")


class Neurosurgeon:
    """Best single split point on the topological order.

    Partition ``k`` runs nodes ``0..k-1`` (a prefix of the topological order, closed
    under predecessors) on the device.  Its latency is ``a_k + b_k * 8 / bandwidth``
    (+ rtt if it offloads), with ``a_k`` the device time of the prefix plus the
    server time of the rest and ``b_k`` the bytes of prefix nodes with a successor
    outside it; both are precomputed, so a decision is one vectorised argmin.

    Parameters
    ----------
    edges : array_like, shape (E, 2)
        Edges (u, v) with u < v (node indices in topological order).
    device_s, server_s, out_bytes : array_like
        Per-node costs.
    inputs : array_like
        Source nodes (they must be in every prefix).
    rtt_s : float
        Round trip added to offloading partitions.
    """

    def __init__(
        self,
        edges: Any,
        device_s: Any,
        server_s: Any,
        out_bytes: Any,
        inputs: Any,
        rtt_s: float = 0.0,
    ) -> None:
        e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        dev = np.asarray(device_s, dtype=np.float64)
        srv = np.asarray(server_s, dtype=np.float64)
        ob = np.asarray(out_bytes, dtype=np.float64)
        n = dev.size
        if e.size and bool((e[:, 0] >= e[:, 1]).any()):
            raise ValueError("edges must go forward in the node order (topological)")
        first = int(np.max(np.asarray(inputs, dtype=np.int64))) + 1 if len(inputs) else 1
        # k = number of device nodes, from the smallest prefix holding every input to n
        ks = np.arange(first, n + 1)
        pre_dev = np.concatenate([[0.0], np.cumsum(dev)])
        suf_srv = np.concatenate([np.cumsum(srv[::-1])[::-1], [0.0]])
        maxsucc = np.full(n, -1, dtype=np.int64)
        if e.size:
            np.maximum.at(maxsucc, e[:, 0], e[:, 1])
        # u is sent by prefix k iff u < k <= maxsucc[u]
        diff = np.zeros(n + 2)
        has = maxsucc >= 0
        u = np.flatnonzero(has)
        np.add.at(diff, u + 1, ob[u])
        np.add.at(diff, maxsucc[u] + 1, -ob[u])
        sent = np.cumsum(diff)[: n + 1]
        self.n_nodes = n
        self.ks = ks
        self.a = pre_dev[ks] + suf_srv[ks] + np.where(ks < n, float(rtt_s), 0.0)
        self.b = 8.0 * sent[ks]

    def decide_k(self, bandwidth_bps: float) -> int:
        """The number of device nodes of the best prefix at ``bandwidth_bps``."""
        return int(self.ks[int(np.argmin(self.a + self.b / bandwidth_bps))])

    def decide(self, bandwidth_bps: float) -> np.ndarray:
        """The best prefix partition at ``bandwidth_bps`` as a device mask."""
        on = np.zeros(self.n_nodes, dtype=bool)
        on[: self.decide_k(bandwidth_bps)] = True
        return on


@dataclass
class MethodResult:
    """One method at one rate.

    Attributes
    ----------
    method : str
    n_on_device, n_nodes : int
        Layers on the device, of all.
    bytes_sent : float
        Boundary bytes of the partition.
    predicted_s : float
        Latency of the partition in the cost model.
    decision_s : float
        Median time of one decision on the (slowed) device; 0 for the fixed
        device-only and server-only.
    measured : bool
        False if the partition was not run (predicted latency over the cap).
    latency_s : list of float
        End-to-end latencies of the sequential requests.
    fps : float
        Frames per second of the pipelined stream (NaN if not measured).
    fallbacks : int
        Requests the client had to finish locally (should be 0).
    shared_with : str or None
        The method whose measurement of the same partition this one reuses.
    """

    method: str
    n_on_device: int
    n_nodes: int
    bytes_sent: float
    predicted_s: float
    decision_s: float
    measured: bool
    latency_s: list[float] = field(default_factory=list)
    fps: float = float("nan")
    fallbacks: int = 0
    shared_with: str | None = None

    @property
    def median_s(self) -> float:
        """Median measured latency (the predicted one if not measured)."""
        return float(np.median(self.latency_s)) if self.latency_s else self.predicted_s

    @property
    def p95_s(self) -> float:
        """95th percentile of the measured latencies (predicted if not measured)."""
        return float(np.percentile(self.latency_s, 95)) if self.latency_s else self.predicted_s

    @property
    def throughput(self) -> float:
        """Measured frames/s, or 1 / predicted latency if not measured."""
        return self.fps if self.measured and math.isfinite(self.fps) else 1.0 / self.predicted_s


@dataclass
class EvalRow:
    """All methods for one model at one link rate."""

    model: str
    rate_bps: float
    methods: dict[str, MethodResult]

    def latency_speedup(self) -> float:
        """CIC's median latency speedup over the best of device-only and server-only."""
        m = self.methods
        best = min(m["device-only"].median_s, m["server-only"].median_s)
        return best / m["cic"].median_s

    def throughput_speedup(self) -> float:
        """CIC's throughput over the best of device-only and server-only."""
        m = self.methods
        best = max(m["device-only"].throughput, m["server-only"].throughput)
        return m["cic"].throughput / best

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model": self.model,
            "rate_bps": self.rate_bps,
            "methods": {k: asdict(v) for k, v in self.methods.items()},
            "cic_latency_speedup": self.latency_speedup(),
            "cic_throughput_speedup": self.throughput_speedup(),
        }


# -- the device worker -------------------------------------------------------------------


class _Slowed:
    """Call ``fn`` and then sleep ``factor - 1`` times its duration."""

    def __init__(self, fn: Any, factor: float) -> None:
        self.fn = fn
        self.factor = float(factor)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        time.sleep((self.factor - 1.0) * (time.perf_counter() - t0))
        return out


def _median_call_s(fn: Callable[[], Any], budget_s: float = 0.2, max_calls: int = 200) -> float:
    """Median seconds of one call of ``fn`` (at least 3 calls, at most ``max_calls``)."""
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < 3 or (len(times) < max_calls and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class _Device:
    """The device side of the evaluation: decisions, requests and streams."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import torch

        from . import min_cut
        from .client import Client
        from .graph import Graph
        from .models import load_model
        from .plan import Planner
        from .profile import Profile
        from .trace import trace

        torch.set_num_threads(int(cfg.get("threads", 1)))
        self.cfg = cfg
        self.model = load_model(cfg["model"], weights=cfg["weights"])
        gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
        self.x = torch.randn(*cfg["input_shape"], generator=gen)
        self.graph = trace(self.model, self.x)
        dev = Profile.load(cfg["device_profile"], self.graph)
        srv = Profile.load(cfg["server_profile"], self.graph)
        self.rtt_s = float(cfg.get("rtt_s", 0.0))
        self.add_rtt_s = float(cfg.get("add_rtt_s", 0.0))
        g = self.graph
        self.core = Graph(g.edges, dev.seconds, srv.seconds, g.out_bytes)
        self.planner = Planner.from_profiles(g, dev, srv, rtt_s=self.rtt_s)
        self.neuro = Neurosurgeon(
            g.edges, dev.seconds, srv.seconds, g.out_bytes, g.inputs, self.rtt_s
        )
        self._min_cut = min_cut
        self.client = Client(
            self.model,
            self.x,
            tuple(cfg["address"]),
            device_profile=dev,
            server_profile=srv,
            timeout_s=float(cfg.get("timeout_s", 60.0)),
            bandwidth_bps=1e6,
            rtt_s=self.rtt_s,
            retry_s=0.0,
            graph=g,
            planner=self.planner,
        )
        if cfg.get("slowdown_method") == "sleep":
            factor = float(cfg["slowdown"])
            self.client.model = _Slowed(self.model, factor)  # type: ignore[assignment]
            parts_for = self.client._parts_for

            def slowed_parts(on_device: np.ndarray) -> tuple[Any, Any]:
                head, tail = parts_for(on_device)
                return _Slowed(head, factor), tail

            self.client._parts_for = slowed_parts  # type: ignore[method-assign]
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
        """Frames per second of ``stream_frames`` frames pipelined device | link+server."""
        import torch

        from . import protocol as P

        cli = self.client
        m = self.stream_frames
        head, _ = cli._parts_for(on)
        sock = cli._connection()
        jobs: queue.Queue[list[Any] | None] = queue.Queue(maxsize=1)
        done: list[float] = []
        errors: list[BaseException] = []
        timeout = cli.timeout_s

        def send() -> None:
            try:
                while (parts := jobs.get(timeout=timeout)) is not None:
                    P.send_frame(sock, P.MsgType.INFER, parts)
            except BaseException as e:
                errors.append(e)

        def receive() -> None:
            try:
                for _ in range(m):
                    kind, _payload = P.recv_frame(sock, cli.limits)
                    if kind != P.MsgType.RESULT:
                        raise P.ProtocolError(P.ErrorCode.UNKNOWN_TYPE, f"got {kind}")
                    done.append(time.perf_counter() + self.add_rtt_s)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=f, daemon=True) for f in (send, receive)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                for _ in range(m):
                    sent = head(self.x)
                    cli._request_id += 1
                    parts, _n = P.encode_request(cli._request_id, on, sent)
                    while not errors:
                        with contextlib.suppress(queue.Full):
                            jobs.put(parts, timeout=0.5)
                            break
                    if errors:
                        break
        finally:
            with contextlib.suppress(queue.Full):
                jobs.put(None, timeout=timeout)
            for t in threads:
                t.join(timeout * (m + 1))
        if errors or len(done) != m:
            cli.close()
            raise RuntimeError(f"stream failed: {errors[0] if errors else 'incomplete'}")
        if m >= 2:
            return (m - 1) / (done[-1] - done[0])
        return 1.0 / (done[0] - t0)

    def measure(self, bw: float) -> dict[str, Any]:
        """Every method at link rate ``bw``: a JSON-ready dict of MethodResult dicts."""
        from . import protocol as P

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
            key = P.pack_mask(on)
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
    """``python -m cic_fast.evaluate worker CONFIG``: answer rate commands on stdin."""
    cfg = json.loads(Path(config_path).read_text())
    dev = _Device(cfg)
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


# -- the orchestrator --------------------------------------------------------------------


class _Proc:
    """A subprocess with a line reader that never blocks forever."""

    def __init__(
        self, cmd: list[str], *, stdin: bool = False, env: dict[str, str] | None = None
    ) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def readline(self, timeout_s: float) -> str:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no answer from {self.cmd[:6]} in {timeout_s:g} s") from None
        if not line:
            raise RuntimeError(f"process {self.cmd[:6]} exited ({self.proc.poll()})")
        return line.strip()

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def _shape_arg(shape: Sequence[int]) -> str:
    return ",".join(str(int(s)) for s in shape)


def evaluate(
    models: Sequence[str],
    rates_bps: Sequence[float],
    *,
    out_dir: str | os.PathLike[str],
    device_slowdown: float = 8.0,
    server_speedup: float | None = None,
    requests: int = 3,
    stream_frames: int = 4,
    input_size: int = 224,
    rtt_s: float = 0.0,
    link: str = "auto",
    slowdown_method: str = "auto",
    max_predicted_s: float = 12.0,
    profile_repeats: int = 3,
    timeout_s: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> list[EvalRow]:
    """Measure every method on every model at every rate (see the module docstring).

    Parameters
    ----------
    models : sequence of str
        Model specs (``torchvision:NAME``; a bare name means torchvision).
    rates_bps : sequence of float
        Link rates, bits per second.
    out_dir : path
        Where weights, profiles, ``results.json`` and the plot go.
    device_slowdown : float
        F: the device runs F times slower than one core of this machine.
    server_speedup : float, optional
        S: the server runs S times faster than the device (default F: one
        unthrottled core).  Must be <= F: the server cannot be faster than this
        machine.
    requests : int
        Timed sequential requests per partition (after one warm-up).
    stream_frames : int
        Frames of the pipelined throughput stream.
    input_size : int
        Input height and width (batch 1, 3 channels).
    rtt_s : float
        Extra round trip, added in user space (and known to the planners).
    link : {"auto", "tbf", "userspace"}
        Link shaping; "auto" uses tbf in network namespaces where allowed.
    slowdown_method : {"auto", "cgroup", "sleep"}
        Device slowdown; "auto" uses a cgroup CPU quota where allowed.
    max_predicted_s : float
        Partitions predicted slower than this are not run.
    profile_repeats : int
        Repeats of the host profile.
    timeout_s : float
        Socket timeout of every connection; bounds on process start-up.
    log : callable, optional
        Progress messages (default: stderr).

    Returns
    -------
    list of EvalRow
        One per (model, rate), models outer.
    """
    import torch

    from .linkemu import CpuQuota, NetnsLink, TokenBucketLink, cgroup_available, netns_available
    from .models import load_model
    from .profile import profile
    from .trace import trace

    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    f = float(device_slowdown)
    s = f if server_speedup is None else float(server_speedup)
    if not f >= 1 or not 0 < s <= f:
        raise ValueError(
            "need device_slowdown >= 1 and 0 < server_speedup <= device_slowdown "
            "(the server runs on this machine: at most one full core)"
        )
    if requests < 1 or stream_frames < 1 or input_size < 16:
        raise ValueError("requests >= 1, stream_frames >= 1 and input_size >= 16 required")
    rates = [float(r) for r in rates_bps]
    if not rates or min(rates) <= 0:
        raise ValueError("rates must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    why_ns = netns_available() if link in ("auto", "tbf") else "user-space link requested"
    if link == "tbf" and why_ns:
        raise ValueError(f"tbf link not available: {why_ns}")
    use_tbf = why_ns is None
    why_cg = cgroup_available() if slowdown_method in ("auto", "cgroup") else "sleep requested"
    if slowdown_method == "cgroup" and why_cg:
        raise ValueError(f"cgroup quota not available: {why_cg}")
    use_cg = why_cg is None and f > 1
    say(
        "link: "
        + (
            "tbf qdisc on a veth pair between network namespaces"
            if use_tbf
            else "user-space token bucket"
        )
        + ("" if use_tbf else f" ({why_ns})")
        + f"; device: {'cgroup CPU quota' if use_cg else 'sleep-scaled compute'} 1/{f:g} core"
        + ("" if use_cg else f" ({why_cg})")
        + f"; server {s:g}x faster than the device"
    )
    meta = {
        "link": "tbf" if use_tbf else "userspace",
        "slowdown_method": "cgroup" if use_cg else ("sleep" if f > 1 else "none"),
        "device_slowdown": f,
        "server_speedup": s,
        "rtt_s": rtt_s,
        "requests": requests,
        "stream_frames": stream_frames,
        "input_size": input_size,
        "max_predicted_s": max_predicted_s,
    }
    rows: list[EvalRow] = []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    tag = f"cic{os.getpid() % 100000}"
    torch_threads = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        netns = stack.enter_context(NetnsLink(rates[0], prefix=tag)) if use_tbf else None
        dev_cg = stack.enter_context(CpuQuota(f"{tag}_device", f)) if use_cg else None
        srv_cg = stack.enter_context(CpuQuota(f"{tag}_server", f / s)) if use_cg and s < f else None
        for spec in models:
            spec = spec if ":" in spec else f"torchvision:{spec}"
            name = spec.split(":", 1)[1]
            say(f"{name}: tracing and profiling on this machine (1 thread)")
            torch.set_num_threads(1)
            try:
                model = load_model(spec)
                shape = (1, 3, input_size, input_size)
                x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
                graph = trace(model, x)
                host = profile(
                    model,
                    x,
                    threads=1,
                    repeats=profile_repeats,
                    warmup=1,
                    progress=False,
                    graph=graph,
                )
            finally:
                torch.set_num_threads(torch_threads)
            mdir = out / name
            mdir.mkdir(exist_ok=True)
            weights = mdir / "weights.pt"
            torch.save(model.state_dict(), weights)
            host.save(mdir / "host_profile.json")
            host.scaled(f).save(mdir / "device_profile.json")
            host.scaled(f / s).save(mdir / "server_profile.json")
            serve = [
                sys.executable, "-m", "cic_fast", "serve", spec,
                "--weights", str(weights), "--input-shape", _shape_arg(shape),
                "--host", netns.server_ip if netns else "127.0.0.1", "--port", "0",
                "--threads", "1", "--timeout-s", str(max(600.0, 10 * timeout_s)),
                "--max-frame-mb", "512",
            ]  # fmt: skip
            server = _Proc(netns.server_cmd(serve) if netns else serve, env=env)
            stack2 = contextlib.ExitStack()
            try:
                stack2.callback(server.stop)
                line = server.readline(timeout_s)
                if not line.startswith("listening on "):
                    raise RuntimeError(f"server said {line!r}")
                host_s, port_s = line.removeprefix("listening on ").rsplit(":", 1)
                if srv_cg is not None:
                    srv_cg.join(server.proc.pid)
                proxy = None
                if netns is None:
                    proxy = TokenBucketLink(
                        (host_s, int(port_s)), rates[0], rtt_s=rtt_s, timeout_s=timeout_s
                    )
                    stack2.callback(proxy.close)
                    address = list(proxy.address)
                else:
                    address = [host_s, int(port_s)]
                cfg = {
                    "model": spec,
                    "weights": str(weights),
                    "input_shape": list(shape),
                    "device_profile": str(mdir / "device_profile.json"),
                    "server_profile": str(mdir / "server_profile.json"),
                    "address": address,
                    "rtt_s": rtt_s,
                    "add_rtt_s": rtt_s if netns is not None else 0.0,
                    "slowdown": f,
                    "slowdown_method": meta["slowdown_method"],
                    "cgroup": str(dev_cg.path) if dev_cg else None,
                    "requests": requests,
                    "stream_frames": stream_frames,
                    "max_predicted_s": max_predicted_s,
                    "timeout_s": max(timeout_s, 3 * max_predicted_s),
                    "threads": 1,
                }
                (mdir / "worker.json").write_text(json.dumps(cfg, indent=1))
                wcmd = [
                    sys.executable,
                    "-m",
                    "cic_fast.evaluate",
                    "worker",
                    str(mdir / "worker.json"),
                ]
                worker = _Proc(netns.device_cmd(wcmd) if netns else wcmd, stdin=True, env=env)
                stack2.callback(worker.stop)
                ready = json.loads(worker.readline(timeout_s))
                if dev_cg is not None:
                    dev_cg.join(int(ready["pid"]))
                # at most 5 partitions run, each (requests + 1 + frames) times, each
                # predicted under the cap; twice that as the margin
                per_rate_s = 10 * (requests + 1 + stream_frames) * max_predicted_s + 4 * timeout_s
                for bw in rates:
                    if netns is not None:
                        netns.set_rate(bw)
                    elif proxy is not None:
                        proxy.rate_bps = bw
                    say(f"{name} at {bw / 1e6:g} Mbit/s")
                    worker.send({"rate_bps": bw})
                    ans = json.loads(worker.readline(per_rate_s))
                    if "error" in ans:
                        raise RuntimeError(f"{name} at {bw:g} bit/s: {ans['error']}")
                    row = EvalRow(
                        name,
                        bw,
                        {k: MethodResult(**v) for k, v in ans["methods"].items()},
                    )
                    rows.append(row)
                    say(format_table([row], header=False))
                with contextlib.suppress(OSError, ValueError):
                    worker.send({"quit": True})
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(timeout_s)
            finally:
                stack2.close()
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "rows": [r.to_dict() for r in rows]}, indent=1)
    )
    return rows


# -- reporting -------------------------------------------------------------------------


def _ms(r: MethodResult, what: str) -> str:
    v = r.median_s if what == "median" else r.p95_s
    return f"{1e3 * v:.0f}" + ("" if r.measured else "~")


def _us(seconds: float) -> str:
    us = 1e6 * seconds
    return f"{us:.1f}" if us < 10 else f"{us:.0f}"


def format_table(rows: Sequence[EvalRow], *, header: bool = True) -> str:
    """A plain-text (markdown) table: one line per model and rate.

    Latency columns are ``median/p95`` in ms; throughput in frames/s; a ``~``
    marks values predicted by the cost model instead of measured.
    """
    cols = ["model", "Mbit/s"]
    cols += [f"{m} ms" for m in METHODS]
    cols += ["CIC lat x", "decide us (NS/DADS/CIC)"]
    cols += [f"{m} fps" for m in METHODS]
    cols += ["CIC fps x", "CIC split"]
    lines = []
    if header:
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
    for row in rows:
        m = row.methods
        cells = [row.model, f"{row.rate_bps / 1e6:g}"]
        cells += [f"{_ms(m[k], 'median')}/{_ms(m[k], 'p95')}" for k in METHODS]
        cells.append(f"{row.latency_speedup():.2f}")
        cells.append("/".join(_us(m[k].decision_s) for k in ("neurosurgeon", "dads", "cic")))
        cells += [f"{m[k].throughput:.2f}" + ("" if m[k].measured else "~") for k in METHODS]
        cells.append(f"{row.throughput_speedup():.2f}")
        c = m["cic"]
        cells.append(f"{c.n_on_device}/{c.n_nodes}, {c.bytes_sent / 1e3:.0f} KB")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_rows(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[EvalRow]]:
    """Read ``results.json`` written by :func:`evaluate`: (meta, rows)."""
    data = json.loads(Path(path).read_text())
    rows = [
        EvalRow(
            r["model"],
            float(r["rate_bps"]),
            {k: MethodResult(**v) for k, v in r["methods"].items()},
        )
        for r in data["rows"]
    ]
    return data["meta"], rows


def plot_latency(rows: Sequence[EvalRow], path: str | os.PathLike[str]) -> str | None:
    """Median latency vs link rate per method (log axes), one panel per model.

    Returns
    -------
    str or None
        None if written, else why not (matplotlib missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        mine = sorted((r for r in rows if r.model == name), key=lambda r: r.rate_bps)
        x = [r.rate_bps / 1e6 for r in mine]
        for k, style in zip(METHODS, ("o-", "s-", "^--", "v--", "x-"), strict=True):
            ax.plot(x, [r.methods[k].median_s for r in mine], style, label=k, ms=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("link rate (Mbit/s)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median end-to-end latency (s)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cic_fast.evaluate worker CONFIG`` (internal)."""
    p = argparse.ArgumentParser(prog="python -m cic_fast.evaluate")
    p.add_argument("role", choices=["worker"])
    p.add_argument("config")
    args = p.parse_args(argv)
    return _worker(args.config)


if __name__ == "__main__":
    sys.exit(main())
