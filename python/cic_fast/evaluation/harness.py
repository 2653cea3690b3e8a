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
* the device is a worker subprocess (``python -m cic_fast.evaluation.worker``) that,
  once set up, joins a cgroup v1 CPU group with ``1 / F`` of one core
  (:class:`~cic_fast.evaluation.device.CpuQuota`); where cgroups are not allowed, every device
  computation is followed by a sleep of ``F - 1`` times its duration;
* the link is a tbf qdisc on a veth pair between two network namespaces
  (:class:`~cic_fast.evaluation.link.NetnsLink`) where allowed, else the user-space token
  bucket (:class:`~cic_fast.evaluation.link.TokenBucketLink`); an extra round trip is added
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
from pathlib import Path
from typing import Any

from cic_fast.evaluation.report import (
    TRACE_METHODS,
    EvalRow,
    MethodResult,
    ThroughputResult,
    ThroughputRow,
    format_table,
    format_throughput_table,
)

__all__ = [
    "SETUP_RATE_BPS",
    "check_plan",
    "evaluate",
    "evaluate_throughput",
    "evaluate_traces",
]


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


class _Lab:
    """The emulated device, link and server CPU shared by every model of one run."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        *,
        device_slowdown: float,
        server_speedup: float | None,
        link: str,
        slowdown_method: str,
        first_rate_bps: float,
        say: Callable[[str], None],
    ) -> None:
        from cic_fast.evaluation.device import CpuQuota, cgroup_available
        from cic_fast.evaluation.link import NetnsLink, netns_available

        # the factors were checked by `_check_common` before any set-up
        f = float(device_slowdown)
        s = f if server_speedup is None else float(server_speedup)
        if link not in ("auto", "tbf", "userspace"):
            raise ValueError(f"link must be auto, tbf or userspace, not {link!r}")
        if slowdown_method not in ("auto", "cgroup", "sleep"):
            raise ValueError(
                f"slowdown_method must be auto, cgroup or sleep, not {slowdown_method!r}"
            )
        self.f, self.s = f, s
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
        self.link = "tbf" if use_tbf else "userspace"
        self.slowdown_method = "cgroup" if use_cg else ("sleep" if f > 1 else "none")
        self.tag = f"cic{os.getpid() % 100000}"
        self.netns = (
            stack.enter_context(NetnsLink(first_rate_bps, prefix=self.tag)) if use_tbf else None
        )
        self.dev_cg = stack.enter_context(CpuQuota(f"{self.tag}_device", f)) if use_cg else None
        self.srv_cg = (
            stack.enter_context(CpuQuota(f"{self.tag}_server", f / s)) if use_cg and s < f else None
        )
        self.env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


class _Rig:
    """One model on the lab: host profile, files, the server and the device worker.

    Use as a context manager; on exit the worker and the server are stopped.
    ``set_rate`` changes the link (tbf or the user-space proxy).
    """

    def __init__(
        self,
        lab: _Lab,
        spec: str,
        *,
        out: Path,
        input_size: int,
        input_dtype: str,
        rtt_s: float,
        profile_repeats: int,
        first_rate_bps: float,
        timeout_s: float,
        worker_cfg: dict[str, Any],
        say: Callable[[str], None],
    ) -> None:
        self.lab = lab
        self.spec = spec if ":" in spec else f"torchvision:{spec}"
        self.name = self.spec.split(":", 1)[1]
        self.out = out
        self.input_size = input_size
        self.input_dtype = input_dtype
        self.rtt_s = rtt_s
        self.profile_repeats = profile_repeats
        self.first_rate_bps = first_rate_bps
        self.timeout_s = timeout_s
        self.worker_cfg = worker_cfg
        self.say = say
        self.proxy: Any = None
        self.calibration: dict[str, Any] | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Rig:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def set_rate(self, rate_bps: float) -> None:
        """The link's rate, both directions (0: an outage)."""
        if self.lab.netns is not None:
            self.lab.netns.set_rate(rate_bps)
        elif self.proxy is not None:
            self.proxy.set_rate(rate_bps)

    def _profile(self) -> tuple[Path, tuple[int, ...]]:
        """Trace and profile the model on this machine (1 thread); write the files."""
        import torch

        from cic_fast.frontend.models import load_model, random_inputs
        from cic_fast.frontend.profiling import profile
        from cic_fast.frontend.tracing import trace

        lab = self.lab
        self.say(f"{self.name}: tracing and profiling on this machine (1 thread)")
        mdir = self.out / self.name
        mdir.mkdir(parents=True, exist_ok=True)
        weights = mdir / "weights.pt"
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        shape = (1, 3, self.input_size, self.input_size)
        try:
            # one set of weights for the profile, the device and the server: the plain
            # model's, which `load_model(..., input_dtype=...)` takes as they are
            torch.save(load_model(self.spec).state_dict(), weights)
            model = load_model(self.spec, weights=weights, input_dtype=self.input_dtype)
            (x,) = random_inputs(self.spec, [shape], input_dtype=self.input_dtype, seed=0)
            graph = trace(model, x)
            host = profile(
                model,
                x,
                threads=1,
                repeats=self.profile_repeats,
                warmup=1,
                progress=False,
                graph=graph,
            )
        finally:
            torch.set_num_threads(torch_threads)
        host.save(mdir / "host_profile.json")
        host.scaled(lab.f).save(mdir / "device_profile.json")
        host.scaled(lab.f / lab.s).save(mdir / "server_profile.json")
        self.mdir = mdir
        return weights, shape

    def _start(self) -> None:
        from cic_fast.evaluation.link import TokenBucketLink

        lab, netns, t = self.lab, self.lab.netns, self.timeout_s
        weights, shape = self._profile()
        mdir = self.mdir
        serve = [
            sys.executable, "-m", "cic_fast", "serve", "--model", self.spec,
            "--weights", str(weights), "--input-shape", _shape_arg(shape),
            "--input-dtype", self.input_dtype,
            "--host", netns.server_ip if netns else "127.0.0.1", "--port", "0",
            "--threads", "1", "--timeout-s", str(max(600.0, 10 * t)),
            "--max-frame-mb", "512",
        ]  # fmt: skip
        server = _Proc(netns.server_cmd(serve) if netns else serve, env=lab.env)
        self._stack.callback(server.stop)
        line = server.readline(t)
        if not line.startswith("listening on "):
            raise RuntimeError(f"server said {line!r}")
        host_s, port_s = line.removeprefix("listening on ").rsplit(":", 1)
        if lab.srv_cg is not None:
            lab.srv_cg.join(server.proc.pid)
        if netns is None:
            self.proxy = TokenBucketLink(
                (host_s, int(port_s)), self.first_rate_bps, rtt_s=self.rtt_s, timeout_s=t
            )
            self._stack.callback(self.proxy.close)
            address = list(self.proxy.address)
        else:
            address = [host_s, int(port_s)]
        cfg = {
            "model": self.spec,
            "weights": str(weights),
            "input_shape": list(shape),
            "input_dtype": self.input_dtype,
            "device_profile": str(mdir / "device_profile.json"),
            "server_profile": str(mdir / "server_profile.json"),
            "address": address,
            "rtt_s": self.rtt_s,
            "add_rtt_s": self.rtt_s if netns is not None else 0.0,
            "slowdown": lab.f,
            "slowdown_method": lab.slowdown_method,
            "cgroup": str(lab.dev_cg.path) if lab.dev_cg else None,
            "threads": 1,
            **self.worker_cfg,
        }
        (mdir / "worker.json").write_text(json.dumps(cfg, indent=1))
        wcmd = [sys.executable, "-m", "cic_fast.evaluation.worker", str(mdir / "worker.json")]
        self.worker = _Proc(netns.device_cmd(wcmd) if netns else wcmd, stdin=True, env=lab.env)
        self._stack.callback(self._quit)
        self._stack.callback(self.worker.stop)
        # set-up (imports, trace, warm-up requests) runs at full speed and link rate
        ready = json.loads(self.worker.readline(t + 600.0))
        if ready.get("calibrate"):
            from cic_fast.evaluation.device import CpuQuota

            # device-only timed on the emulated device (see DeviceWorker.calibrate)
            if lab.dev_cg is not None:
                lab.dev_cg.join(int(ready["pid"]))
            self.worker.send({"go": True})
            self.calibration = json.loads(self.worker.readline(t + 600.0))
            if lab.dev_cg is not None:
                CpuQuota.leave(int(ready["pid"]))
            self.worker.send({"go": True})
            c = self.calibration
            if "error" in c:
                raise RuntimeError(f"{self.name}: device calibration failed: {c['error']}")
            self.say(
                f"{self.name}: device-only on the emulated device {1e3 * c['device_only_s']:.0f}"
                f" ms, profile x F predicts {1e3 * c['predicted_s']:.0f} ms: device profile"
                f" scaled by {c['scale']:.2f}"
            )
            ready = json.loads(self.worker.readline(t + 600.0))
        if "error" in ready:
            raise RuntimeError(f"{self.name}: worker set-up failed: {ready['error']}")
        self.ready = ready
        if lab.dev_cg is not None:
            lab.dev_cg.join(int(ready["pid"]))

    def _quit(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.worker.send({"quit": True})
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.worker.proc.wait(self.timeout_s)

    def ask(self, cmd: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send the worker one command; its JSON answer (RuntimeError if it failed)."""
        self.worker.send(cmd)
        ans: dict[str, Any] = json.loads(self.worker.readline(timeout_s))
        if "error" in ans:
            raise RuntimeError(f"{self.name}: {ans['error']}")
        return ans


def _check_common(f: float, s: float | None, input_size: int) -> None:
    if not f >= 1 or (s is not None and not 0 < s <= f):
        raise ValueError(
            "need device_slowdown >= 1 and 0 < server_speedup <= device_slowdown "
            "(the server runs on this machine: at most one full core)"
        )
    if input_size < 16:
        raise ValueError("input_size >= 16 required")


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
    input_dtype: str = "float32",
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
    input_dtype : {"float32", "uint8"}
        The model's input: a float32 tensor, or a uint8 camera frame with the
        preprocessing traced into the graph (`cic_fast.frontend.models.load_model`).
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
    return _fixed_rates(
        models,
        rates_bps,
        objective="latency",
        out_dir=out_dir,
        device_slowdown=device_slowdown,
        server_speedup=server_speedup,
        requests=requests,
        stream_frames=stream_frames,
        input_size=input_size,
        input_dtype=input_dtype,
        rtt_s=rtt_s,
        link=link,
        slowdown_method=slowdown_method,
        max_predicted_s=max_predicted_s,
        profile_repeats=profile_repeats,
        timeout_s=timeout_s,
        log=log,
    )[0]


def evaluate_throughput(
    models: Sequence[str],
    rates_bps: Sequence[float],
    *,
    out_dir: str | os.PathLike[str],
    device_slowdown: float = 8.0,
    server_speedup: float | None = None,
    stream_frames: int = 16,
    input_size: int = 224,
    input_dtype: str = "float32",
    rtt_s: float = 0.0,
    link: str = "auto",
    slowdown_method: str = "auto",
    max_predicted_s: float = 12.0,
    profile_repeats: int = 3,
    timeout_s: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> list[ThroughputRow]:
    """Frames per second of a pipelined stream, per method, model and rate.

    The emulation is :func:`evaluate`'s. For each rate every method of
    `cic_fast.evaluation.report.THROUGHPUT_METHODS` decides a partition (the
    throughput Planner's ``decide`` timed like :func:`evaluate`'s decisions, DSH
    once: it runs up to thousands of min cuts), and that partition streams
    ``stream_frames`` frames over one connection with every frame in flight
    (`cic_fast.Client.stream`, after a two-frame warm-up): fps = (frames - 1) /
    (time from the first answer to the last). Each result carries the cost
    model's period beside the measured one. Methods that choose the same
    partition share its stream. Writes ``results.json`` (``throughput_meta``,
    ``throughput_rows``) and returns one `ThroughputRow` per (model, rate).
    """
    return _fixed_rates(
        models,
        rates_bps,
        objective="throughput",
        out_dir=out_dir,
        device_slowdown=device_slowdown,
        server_speedup=server_speedup,
        requests=1,
        stream_frames=stream_frames,
        input_size=input_size,
        input_dtype=input_dtype,
        rtt_s=rtt_s,
        link=link,
        slowdown_method=slowdown_method,
        max_predicted_s=max_predicted_s,
        profile_repeats=profile_repeats,
        timeout_s=timeout_s,
        log=log,
    )[1]


def _fixed_rates(
    models: Sequence[str],
    rates_bps: Sequence[float],
    *,
    objective: str,
    out_dir: str | os.PathLike[str],
    device_slowdown: float,
    server_speedup: float | None,
    requests: int,
    stream_frames: int,
    input_size: int,
    input_dtype: str,
    rtt_s: float,
    link: str,
    slowdown_method: str,
    max_predicted_s: float,
    profile_repeats: int,
    timeout_s: float,
    log: Callable[[str], None] | None,
) -> tuple[list[EvalRow], list[ThroughputRow]]:
    """The fixed-rate runs of :func:`evaluate` (latency) and :func:`evaluate_throughput`."""

    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    _check_common(float(device_slowdown), server_speedup, input_size)
    if requests < 1 or stream_frames < 1:
        raise ValueError("requests >= 1 and stream_frames >= 1 required")
    rates = [float(r) for r in rates_bps]
    if not rates or min(rates) <= 0:
        raise ValueError("rates must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[EvalRow] = []
    trows: list[ThroughputRow] = []
    command: dict[str, Any] = {} if objective == "latency" else {"objective": objective}
    with contextlib.ExitStack() as stack:
        lab = _Lab(
            stack,
            device_slowdown=device_slowdown,
            server_speedup=server_speedup,
            link=link,
            slowdown_method=slowdown_method,
            first_rate_bps=rates[0],
            say=say,
        )
        meta = {
            "link": lab.link,
            "slowdown_method": lab.slowdown_method,
            "device_slowdown": lab.f,
            "server_speedup": lab.s,
            "rtt_s": rtt_s,
            "requests": requests,
            "stream_frames": stream_frames,
            "input_size": input_size,
            "input_dtype": input_dtype,
            "max_predicted_s": max_predicted_s,
            "objective": objective,
        }
        worker_cfg = {
            "requests": requests,
            "stream_frames": stream_frames,
            "max_predicted_s": max_predicted_s,
            "timeout_s": max(timeout_s, 3 * max_predicted_s),
        }
        # at most 5 partitions run, each (requests + 1 + frames) times, each
        # predicted under the cap; twice that as the margin
        per_rate_s = 10 * (requests + 1 + stream_frames) * max_predicted_s + 4 * timeout_s
        for spec in models:
            with _Rig(
                lab,
                spec,
                out=out,
                input_size=input_size,
                input_dtype=input_dtype,
                rtt_s=rtt_s,
                profile_repeats=profile_repeats,
                first_rate_bps=rates[0],
                timeout_s=timeout_s,
                worker_cfg=worker_cfg,
                say=say,
            ) as rig:
                for bw in rates:
                    rig.set_rate(bw)
                    say(f"{rig.name} at {bw / 1e6:g} Mbit/s")
                    ans = rig.ask({"rate_bps": bw, **command}, per_rate_s)
                    if objective == "throughput":
                        trow = ThroughputRow(
                            rig.name,
                            bw,
                            {k: ThroughputResult(**v) for k, v in ans["methods"].items()},
                        )
                        trows.append(trow)
                        say(format_throughput_table([trow], header=False))
                        continue
                    row = EvalRow(
                        rig.name,
                        bw,
                        {k: MethodResult(**v) for k, v in ans["methods"].items()},
                    )
                    rows.append(row)
                    say(format_table([row], header=False))
    if objective == "throughput":
        _write_results(
            out, {"throughput_meta": meta, "throughput_rows": [r.to_dict() for r in trows]}
        )
    else:
        _write_results(out, {"meta": meta, "rows": [r.to_dict() for r in rows]})
    return rows, trows


def _write_results(out: Path, update: dict[str, Any]) -> None:
    """Write ``results.json``, keeping what an earlier run of the other kind wrote there.

    A fixed-rate run writes ``meta`` and ``rows``; a trace run ``trace_meta`` and
    ``trace_runs``: both may share one directory.
    """
    path = out / "results.json"
    data: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(path.read_text())
            if isinstance(old, dict):
                data = old
    data.update(update)
    data.setdefault("meta", {})
    data.setdefault("rows", [])
    path.write_text(json.dumps(data, indent=1))


def evaluate_traces(
    models: Sequence[str],
    traces: Sequence[str | os.PathLike[str]],
    *,
    out_dir: str | os.PathLike[str],
    duration_s: float,
    trace_start_s: float = 0.0,
    fps: float | None = None,
    methods: Sequence[str] = TRACE_METHODS,
    input_dtype: str = "float32",
    deadline_s: float | None = None,
    device_slowdown: float = 8.0,
    server_speedup: float | None = None,
    input_size: int = 224,
    rtt_s: float = 0.0,
    link: str = "auto",
    slowdown_method: str = "auto",
    window_s: float = 0.1,
    hedge_margin_s: float | None = None,
    profile_repeats: int = 3,
    timeout_s: float = 120.0,
    plot: bool = True,
    calibrate: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Replay bandwidth traces on the link and measure each method over them.

    For each model and trace, each method runs for ``duration_s`` seconds with the
    link following the trace from ``trace_start_s`` (the same start for every
    method), the device issuing requests back to back (or at ``fps``). See
    `cic_fast.evaluation.report.TRACE_METHODS` for the methods and
    docs/evaluation.md for the emulation.

    Parameters
    ----------
    models : sequence of str
        Model specs (a bare name means torchvision).
    traces : sequence of path
        Trace files (`cic_fast.evaluation.traces.BandwidthTrace.load`: mahimahi
        ``*.up``/``*.down`` or two-column ``seconds Mbit/s``).
    out_dir : path
        Where the files, ``results.json`` (its ``trace_runs``) and the plots go.
    duration_s : float
        Seconds each method runs.
    trace_start_s : float
        Where in the trace every method starts.
    fps : float, optional
        Issue requests at this rate (a request late for its slot starts at once);
        default back to back.
    methods : sequence of str
        A subset of `TRACE_METHODS`.
    input_dtype : {"float32", "uint8"}
        See :func:`evaluate`.
    deadline_s : float, optional
        Each run reports the share of requests answered within it.
    device_slowdown, server_speedup, input_size, rtt_s, link, slowdown_method
        See :func:`evaluate`.
    window_s : float
        The link's rate is updated at least this often (`TraceReplay`).
    hedge_margin_s : float, optional
        The client's hedging margin (default: the Client's).
    profile_repeats, timeout_s, log
        See :func:`evaluate`.
    plot : bool
        Write one PNG per run (``trace_<model>_<trace>.png``).
    calibrate : bool
        Time device-only on the emulated device before the runs and scale the
        device profile so that the cost model predicts it
        (`cic_fast.evaluation.worker.DeviceWorker.calibrate`; the factor is in
        each run's ``device_scale``).

    Returns
    -------
    list of dict
        The ``trace_runs`` entries of ``results.json`` (schema in docs/evaluation.md).
    """
    from cic_fast.evaluation.report import format_trace_table, plot_trace_run, summarize_trace
    from cic_fast.evaluation.traces import BandwidthTrace, TraceReplay

    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    _check_common(float(device_slowdown), server_speedup, input_size)
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError("duration_s must be > 0")
    if fps is not None and not fps > 0:
        raise ValueError("fps must be > 0")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError("deadline must be > 0")
    bad = [m for m in methods if m not in TRACE_METHODS]
    if bad or not methods:
        raise ValueError(f"unknown method(s) {bad}: choose from {', '.join(TRACE_METHODS)}")
    if not traces:
        raise ValueError("at least one trace file required")
    loaded = [(str(p), BandwidthTrace.load(Path(p))) for p in traces]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        # set-up runs on a fast link; each run then starts the trace
        lab = _Lab(
            stack,
            device_slowdown=device_slowdown,
            server_speedup=server_speedup,
            link=link,
            slowdown_method=slowdown_method,
            first_rate_bps=SETUP_RATE_BPS,
            say=say,
        )
        meta = {
            "link": lab.link,
            "slowdown_method": lab.slowdown_method,
            "device_slowdown": lab.f,
            "server_speedup": lab.s,
            "rtt_s": rtt_s,
            "input_size": input_size,
            "input_dtype": input_dtype,
            "window_s": window_s,
            "fps": fps,
            "deadline_s": deadline_s,
        }
        worker_cfg: dict[str, Any] = {
            "timeout_s": timeout_s,
            "trace_mode": True,
            "traces": [path for path, _ in loaded],
            "window_s": window_s,
            "calibrate": calibrate,
            "hedge_margin_s": hedge_margin_s,
            "warm_rates_bps": sorted({float(r) for _, t in loaded for r in t.rates_bps if r > 0}),
        }
        for spec in models:
            with _Rig(
                lab,
                spec,
                out=out,
                input_size=input_size,
                input_dtype=input_dtype,
                rtt_s=rtt_s,
                profile_repeats=profile_repeats,
                first_rate_bps=SETUP_RATE_BPS,
                timeout_s=timeout_s,
                worker_cfg=worker_cfg,
                say=say,
            ) as rig:
                for path, trace in loaded:
                    run: dict[str, Any] = {
                        "model": rig.name,
                        "trace": path,
                        "trace_name": trace.name,
                        "trace_start_s": float(trace_start_s),
                        "duration_s": float(duration_s),
                        "device_slowdown": lab.f,
                        "server_speedup": lab.s,
                        "input_dtype": input_dtype,
                        "link": lab.link,
                        "fps": fps,
                        "deadline_s": deadline_s,
                        "trace_mean_bps": trace.mean_bps,
                        "device_scale": rig.ready.get("device_scale", 1.0),
                        "methods": {},
                    }
                    for method in methods:
                        say(f"{rig.name} on {trace.name}: {method} for {duration_s:g} s")
                        rig.set_rate(trace.rate_at(trace_start_s))
                        with TraceReplay(
                            trace, rig.set_rate, window_s=window_s, start_s=trace_start_s
                        ) as replay:
                            t0 = time.monotonic() - replay.elapsed_s()
                            ans = rig.ask(
                                {
                                    "trace_run": {
                                        "method": method,
                                        "trace": path,
                                        "start_s": float(trace_start_s),
                                        "duration_s": float(duration_s),
                                        "window_s": window_s,
                                        "fps": fps,
                                        "t0": t0,
                                    }
                                },
                                duration_s + 4 * timeout_s,
                            )
                        requests = ans["requests"]
                        run["methods"][method] = summarize_trace(requests, duration_s, deadline_s)
                        say(format_trace_table([run], only=method))
                        # the next method starts from the trace's start, on a drained link
                        rig.set_rate(SETUP_RATE_BPS)
                        time.sleep(SETTLE_S)
                    runs.append(run)
                    if plot:
                        png = out / f"trace_{rig.name}_{_slug(trace.name)}.png"
                        why = plot_trace_run(run, trace, png)
                        say(why or f"plot: {png}")
                    _write_results(out, {"trace_meta": meta, "trace_runs": runs})
    _write_results(out, {"trace_meta": meta, "trace_runs": runs})
    return runs


def check_plan(
    models: Sequence[str],
    rates_bps: Sequence[float],
    *,
    out_dir: str | os.PathLike[str],
    device_slowdown: float = 8.0,
    server_speedup: float | None = None,
    requests: int = 3,
    input_size: int = 224,
    input_dtype: str = "float32",
    rtt_s: float = 0.0,
    link: str = "auto",
    slowdown_method: str = "auto",
    max_predicted_s: float = 12.0,
    profile_repeats: int = 3,
    timeout_s: float = 120.0,
    tolerance: float = 0.05,
    calibrate: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Is the cost model right? Measure every partition of the plan on fixed links.

    For each model and rate, every distinct partition of the plan (and
    device-only) runs ``requests`` timed requests; the entry says whether the
    Planner's choice at that rate was the measured fastest within ``tolerance``
    (its median at most ``1 + tolerance`` times the fastest median).

    Parameters are those of :func:`evaluate`; ``tolerance`` is the 5 % above;
    ``calibrate`` as in :func:`evaluate_traces`.

    Returns
    -------
    list of dict
        ``results.json``'s ``plan_checks``: per (model, rate) ``model``,
        ``rate_bps``, ``partitions`` (each: ``n_on_device``, ``bytes_sent``,
        ``predicted_s``, ``chosen``, ``latency_s``, ``median_s``), ``chosen_s``,
        ``fastest_s``, ``chosen_over_fastest`` and ``chosen_is_fastest``.
    """
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    _check_common(float(device_slowdown), server_speedup, input_size)
    rates = [float(r) for r in rates_bps]
    if not rates or min(rates) <= 0 or requests < 1:
        raise ValueError("rates must be positive and requests >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checks: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        lab = _Lab(
            stack,
            device_slowdown=device_slowdown,
            server_speedup=server_speedup,
            link=link,
            slowdown_method=slowdown_method,
            first_rate_bps=rates[0],
            say=say,
        )
        worker_cfg = {
            "requests": requests,
            "max_predicted_s": max_predicted_s,
            "timeout_s": max(timeout_s, 3 * max_predicted_s),
            "calibrate": calibrate,
        }
        for spec in models:
            with _Rig(
                lab,
                spec,
                out=out,
                input_size=input_size,
                input_dtype=input_dtype,
                rtt_s=rtt_s,
                profile_repeats=profile_repeats,
                first_rate_bps=rates[0],
                timeout_s=timeout_s,
                worker_cfg=worker_cfg,
                say=say,
            ) as rig:
                for bw in rates:
                    rig.set_rate(bw)
                    say(f"{rig.name} at {bw / 1e6:g} Mbit/s: every partition of the plan")
                    ans = rig.ask({"plan_check": {"rate_bps": bw}}, 3600.0)
                    parts = ans["partitions"]
                    ran = [p for p in parts if p["median_s"] is not None]
                    fastest = min(p["median_s"] for p in ran)
                    chosen = next(p for p in parts if p["chosen"])
                    c = chosen["median_s"]
                    check = {
                        "model": rig.name,
                        "rate_bps": bw,
                        "device_slowdown": lab.f,
                        "server_speedup": lab.s,
                        "input_dtype": input_dtype,
                        "device_scale": rig.ready.get("device_scale", 1.0),
                        "partitions": parts,
                        "chosen_s": c,
                        "fastest_s": fastest,
                        "chosen_over_fastest": None if c is None else c / fastest,
                        "chosen_is_fastest": c is not None and c <= (1 + tolerance) * fastest,
                    }
                    checks.append(check)
                    for p in parts:
                        med = p["median_s"]
                        say(
                            f"  {'*' if p['chosen'] else ' '} {p['n_on_device']} on device, "
                            f"{p['bytes_sent'] / 1e3:.1f} KB: predicted "
                            f"{1e3 * p['predicted_s']:.0f} ms, measured "
                            + ("-" if med is None else f"{1e3 * med:.0f} ms")
                        )
                    _write_results(out, {"plan_checks": checks})
    _write_results(out, {"plan_checks": checks})
    return checks


#: The link's rate while a model is set up and between trace runs (a fast link, so
#: that queued bytes drain and the warm-up requests are quick).
SETUP_RATE_BPS = 1e9
#: Seconds between two runs, on the fast link.
SETTLE_S = 0.5


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "trace"
