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
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cic_fast.evaluation.report import EvalRow, MethodResult, format_table

__all__ = ["evaluate"]


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

    from cic_fast.evaluation.device import CpuQuota, cgroup_available
    from cic_fast.evaluation.link import NetnsLink, TokenBucketLink, netns_available
    from cic_fast.frontend.models import load_model
    from cic_fast.frontend.profiling import profile
    from cic_fast.frontend.tracing import trace

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
                    "cic_fast.evaluation.worker",
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
