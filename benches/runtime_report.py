"""The runtime's per-request overhead, server capacity and hardening, as one report.

Usage::

    python benches/runtime_report.py                           # all sections, ~3 min
    python benches/runtime_report.py --json /tmp/runtime.json > /tmp/runtime.md
    python benches/runtime_report.py --sections overhead --pin same,split
    python benches/runtime_report.py --sections capacity --clients 1,16 --seconds 3
    python benches/runtime_report.py --sections hardening --gap-s 4

Before / after (the same script against two versions of the runtime)::

    git archive <commit> | tar -x -C /tmp/before        # a pristine copy
    cp /work/venv/lib/python3.11/site-packages/cic_fast/_core*.so \\
       /tmp/before/python/cic_fast/                     # or build/_core*.so
    python benches/runtime_report.py --pythonpath /tmp/before/python --label before \\
        --gap-s 4 --json /tmp/runtime_before.json > /tmp/runtime_before.md
    python benches/runtime_report.py --label after \\
        --gap-s 4 --json /tmp/runtime_after.json > /tmp/runtime_after.md

``--pythonpath DIR`` imports ``cic_fast`` from ``DIR`` (the folder that holds the
``cic_fast`` package, with its ``_core`` extension copied in): the import hooks of
an editable install (``_editable*`` finders on ``sys.meta_path``) are removed and
``DIR`` goes first on ``sys.path``, in this process and in every server
subprocess (they are started with the same flag). The report's first line names
the ``cic_fast`` that was imported, and the script stops if it is not under
``DIR`` or if a subprocess imported another one.

Sections (``--sections``, comma-separated):

``overhead``
    A small model (conv, relu, max-pool, linear on a 1x3x32x32 input: 12 KiB)
    served by a `cic_fast.Server` in a subprocess, with the all-server partition
    (only the input on the device). ``Client.infer_partition`` (bandwidth fixed
    at 10 Gbit/s) is timed against a raw-socket echo subprocess that reads
    exactly the INFER frame's bytes and answers exactly the RESULT frame's
    bytes, and against the head and tail computed in-process. Overhead = infer -
    echo - compute. Also the in-process encode/decode of both frames. The three
    are measured in interleaved rounds, so a change of the machine's load
    affects them alike, and once per CPU placement of ``--pin`` (default
    ``same,split``): on a VM a wake-up across CPUs costs more than the whole
    runtime (a 12 KB loopback echo took ~22 us with both ends on one vCPU and
    ~300 us across two, here), and the scheduler picks either at random, so
    the echo and the runtime are only compared on the same placement. The
    bench process runs torch with as many threads as CPUs it is pinned to.
``capacity``
    resnet18 (224x224, weights=None) in a server subprocess with default
    arguments; a "cheap tail" (everything on the device but ``fc`` and the
    output: the server runs a 512->1000 linear) and a "full tail" (all-server:
    the 588 KiB input is sent). One thread drives N raw connections with
    ``selectors`` (HELLO with the model fingerprint, then closed-loop INFER
    frames encoded once; no torch on the request path), for 1, 4, 16 and 64
    clients: requests/s served, refused (``ERROR BUSY``), other errors and
    p50/p95/p99 latency over ``--seconds`` after a 1 s warm-up; the requests
    still in flight at the end are drained, not counted. A connection answered
    BUSY pauses (``--busy-backoff-s``, doubling while refused, at most 1 s)
    before its next request, as a client computing locally would. Also the server's and
    the load generator's CPU use, the server's RSS and thread count.
``hardening``
    (a) the server's RSS growth after 64 connections each sent a 12-byte frame
    header claiming a 64 MiB frame (HELLO, and separately INFER, before any
    handshake), held open 2 s; (b) with 64 idle connections (connected, nothing
    sent) and, separately, 64 dripping connections (a HELLO header claiming
    1000 bytes, then one byte every 0.5 s) held open against a server with
    ``max_clients=64`` (today's default, passed explicitly so that before and
    after compare alike) and otherwise default arguments, the time until a new
    `cic_fast.Client` gets an answer that is not a local fallback (gives up
    after ``--give-up-s``); (c) with
    ``--gap-s G``: a Client against a server started with
    ``timeout_s=min(5, G/2)``, 3 requests G seconds apart, how many fell back.

The models are built with a fixed seed in the bench process and in the server
subprocess alike (bit-identical weights, so the fingerprints agree; the first
request of each server is checked against the in-process result). Everything
runs on 127.0.0.1; every loop is bounded in count and time, every socket has a
timeout (or a deadline in the ``selectors`` loop) and every subprocess is killed
on exit. Progress goes to stderr, the markdown report to stdout. The load average
is part of the report: on a small shared machine the numbers move with it.

Run on purpose (it is not collected by pytest).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

HOST = "127.0.0.1"
SEED = 0
STARTUP_S = 180.0  # most seconds a subprocess may take to listen
CHILD_MAX_LIFE_S = 3600.0  # a subprocess exits on its own after this long
MIB = 1 << 20


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# -- which cic_fast ------------------------------------------------------------------


def use_pythonpath(path: str | None) -> None:
    """Import ``cic_fast`` from ``path`` (see the module docstring); no-op for None.

    Parameters
    ----------
    path : str or None
        The folder holding the ``cic_fast`` package.

    Raises
    ------
    SystemExit
        ``path`` holds no ``cic_fast`` package, or ``cic_fast`` was imported already.
    """
    if path is None:
        return
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "cic_fast", "__init__.py")):
        raise SystemExit(f"--pythonpath {path}: no cic_fast/__init__.py there")
    if "cic_fast" in sys.modules:
        raise SystemExit("cic_fast was imported before --pythonpath could take effect")
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
    sys.path.insert(0, path)


def _cic_source(pythonpath: str | None) -> dict[str, Any]:
    """Where ``cic_fast`` was imported from, and its git state if it is in a checkout."""
    import cic_fast
    from cic_fast.runtime import server as server_mod

    pkg = os.path.dirname(os.path.abspath(cic_fast.__file__))
    if pythonpath is not None and not pkg.startswith(os.path.abspath(pythonpath) + os.sep):
        raise SystemExit(f"cic_fast imported from {pkg}, not from --pythonpath {pythonpath}")
    info: dict[str, Any] = {"cic_fast": pkg, "runtime_server": server_mod.__file__}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        root = git("-C", pkg, "rev-parse", "--show-toplevel")
        head = git("-C", root, "rev-parse", "--short", "HEAD")
        dirty = git("-C", root, "status", "--porcelain", "--", "python/cic_fast")
        info["git"] = head + (" + uncommitted changes in python/cic_fast" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    return info


# -- models --------------------------------------------------------------------------


def build_model(name: str) -> tuple[Any, Any]:
    """The seeded model and its example input (bit-identical in every process).

    Parameters
    ----------
    name : {"small", "resnet18"}
        ``small``: conv 3->16 (3x3), relu, 2x2 max-pool, linear 4096->10 on a
        1x3x32x32 input; ``resnet18``: torchvision's, weights=None, 1x3x224x224.

    Returns
    -------
    model : torch.nn.Module
        In eval mode.
    x : torch.Tensor
        The example input.
    """
    import torch

    torch.manual_seed(SEED)
    if name == "small":
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(16 * 16 * 16, 10),
        )
        shape: tuple[int, ...] = (1, 3, 32, 32)
    elif name == "resnet18":
        import torchvision

        model = torchvision.models.resnet18(weights=None)
        shape = (1, 3, 224, 224)
    else:
        raise ValueError(f"unknown model {name!r}")
    gen = torch.Generator().manual_seed(SEED + 1)
    return model.eval(), torch.randn(shape, generator=gen)


def _leaves(out: Any) -> list[Any]:
    """The model's outputs as a flat list (the models here return one tensor)."""
    return list(out) if isinstance(out, (tuple, list)) else [out]


def all_server(graph: Any) -> np.ndarray:
    """The partition with only the inputs on the device."""
    on = np.zeros(graph.n_nodes, dtype=bool)
    on[graph.inputs] = True
    return on


def all_but_fc(graph: Any) -> np.ndarray:
    """Everything on the device but resnet's ``fc`` and the output node."""
    on = np.ones(graph.n_nodes, dtype=bool)
    names = list(graph.names)
    on[names.index("fc")] = False
    on[names.index("output")] = False
    return on


class Setup:
    """A traced model, a planner, a partition, its head/tail and its frames.

    Parameters
    ----------
    name : str
        See `build_model`.
    partition : callable
        ``partition(graph) -> on_device``.

    Attributes
    ----------
    infer_frame : bytes
        The INFER frame (header + payload) a client sends for this partition.
    result_bytes : int
        Size of the RESULT frame (header + payload) the server answers.
    hello_frame : bytes
        The HELLO frame with this model's fingerprint.
    """

    def __init__(self, name: str, partition: Callable[[Any], np.ndarray]) -> None:
        import torch

        import cic_fast
        from cic_fast.frontend.cutting import build_parts
        from cic_fast.frontend.profiling import Profile
        from cic_fast.runtime import messages as M
        from cic_fast.runtime import wire as W
        from cic_fast.runtime.fingerprint import traced_fingerprint

        self.name = name
        self.model, self.x = build_model(name)
        self.graph = g = cic_fast.trace(self.model, self.x)
        self.on = partition(g)
        self.head, self.tail, _ = build_parts(g, self.on)
        with torch.inference_mode():
            self.sent = self.head(self.x)
            self.outputs = _leaves(self.tail(self.sent))
        self.fingerprint = traced_fingerprint(g)
        hello = M.encode_hello(self.fingerprint)
        self.hello_frame = W.frame_header(W.MsgType.HELLO, len(hello)) + hello
        parts, n = M.encode_request(1, self.on, self.sent)
        self.infer_frame = W.frame_header(W.MsgType.INFER, n) + b"".join(parts)
        self.sent_bytes = sum(t.numel() * t.element_size() for t in self.sent.values())
        _, rn = M.encode_result(1, 0.0, self.outputs)
        self.result_bytes = W.HEADER.size + rn
        n_nodes = g.n_nodes
        dev = Profile.from_times(g, np.full(n_nodes, 1e-4))
        srv = Profile.from_times(g, np.full(n_nodes, 1e-5))
        self.planner = cic_fast.Planner.from_profiles(g, dev, srv)

    def client(self, address: tuple[str, int], **kw: Any) -> Any:
        """A `cic_fast.Client` on this graph and planner, bandwidth fixed at 10 Gbit/s."""
        import cic_fast

        return cic_fast.Client(
            self.graph, address=address, planner=self.planner, bandwidth_bps=1e10, **kw
        )


# -- subprocesses --------------------------------------------------------------------


def _watch_parent(max_life_s: float) -> None:
    """In a subprocess: exit when the parent is gone or after ``max_life_s``."""
    ppid = os.getppid()
    end = time.monotonic() + max_life_s

    def loop() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != ppid or time.monotonic() > end:
                os._exit(0)

    threading.Thread(target=loop, name="watch-parent", daemon=True).start()


def serve_main(argv: list[str]) -> int:
    """Subprocess: build a seeded model, serve it, print the address, wait to be killed.

    Parameters
    ----------
    argv : list of str
        ``MODEL [--timeout-s T] [--max-clients N]``; without options the server
        has its default arguments.

    Returns
    -------
    int
        Never returns normally (killed by the parent, or exits with it).
    """
    p = argparse.ArgumentParser(prog="runtime_report.py _serve")
    p.add_argument("model")
    p.add_argument("--timeout-s", type=float)
    p.add_argument("--max-clients", type=int)
    a = p.parse_args(argv)
    _watch_parent(CHILD_MAX_LIFE_S)
    import cic_fast

    model, x = build_model(a.model)
    kw: dict[str, Any] = {}
    if a.timeout_s is not None:
        kw["timeout_s"] = a.timeout_s
    if a.max_clients is not None:
        kw["max_clients"] = a.max_clients
    srv = cic_fast.Server(model, x, port=0, **kw).start()
    host, port = srv.address
    print(f"listening on {host}:{port} cic_fast={os.path.abspath(cic_fast.__file__)}", flush=True)
    while True:
        time.sleep(1.0)


def echo_main(argv: list[str]) -> int:
    """Subprocess: a raw TCP echo of frame sizes (read exactly REQ bytes, send RESP).

    Parameters
    ----------
    argv : list of str
        ``REQ_BYTES RESP_BYTES``.

    Returns
    -------
    int
        0 after 1000 connections or an hour (normally it is killed first).
    """
    req, resp_len = int(argv[0]), int(argv[1])
    _watch_parent(CHILD_MAX_LIFE_S)
    resp = bytes(resp_len)
    lsock = socket.create_server((HOST, 0))
    lsock.settimeout(CHILD_MAX_LIFE_S)
    host, port = lsock.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    buf = bytearray(req)
    view = memoryview(buf)
    for _ in range(1000):
        conn, _ = lsock.accept()
        conn.settimeout(60.0)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            try:
                while True:
                    got = 0
                    while got < req:
                        k = conn.recv_into(view[got:], req - got)
                        if k == 0:
                            raise EOFError
                        got += k
                    conn.sendall(resp)
            except (OSError, EOFError):
                pass
    return 0


class Child:
    """A subprocess of this script that listens on 127.0.0.1, killed on `close`.

    Parameters
    ----------
    args : list of str
        The subcommand and its arguments (``["_serve", "small"]``).
    pythonpath : str or None
        Passed on as ``--pythonpath``.
    expect_cic : str or None
        The ``cic_fast`` package file the subprocess must have imported.

    Attributes
    ----------
    address : tuple of (str, int)
    pid : int
    """

    def __init__(
        self,
        args: list[str],
        pythonpath: str | None,
        expect_cic: str | None,
        cpus: set[int] | None = None,
    ) -> None:
        cmd = [sys.executable, os.path.abspath(__file__)]
        if pythonpath is not None:
            cmd += ["--pythonpath", pythonpath]
        cmd += args
        self.what = " ".join(args)
        self.err = tempfile.TemporaryFile()
        # pinned before exec, so that every thread the subprocess starts inherits it
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.err,
            preexec_fn=pin,
        )
        self.pid = self.proc.pid
        try:
            line = self._first_line(STARTUP_S)
            words = line.split()
            if words[:2] != ["listening", "on"]:
                raise RuntimeError(f"{self.what}: unexpected first line {line!r}")
            host, port = words[2].rsplit(":", 1)
            self.address = (host, int(port))
            got = next((w.split("=", 1)[1] for w in words[3:] if w.startswith("cic_fast=")), None)
            if expect_cic is not None and got != expect_cic:
                raise RuntimeError(f"{self.what} imported cic_fast from {got}, not {expect_cic}")
        except BaseException:
            self.close()
            raise

    def _first_line(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        end = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in data:
                left = end - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.what}: not listening after {timeout_s:.0f} s")
                if sel.select(min(left, 1.0)):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        raise RuntimeError(f"{self.what} exited: {self.stderr_tail()}")
                    data += chunk
        return data.split(b"\n", 1)[0].decode()

    def stderr_tail(self, n: int = 2000) -> str:
        """The end of the subprocess's stderr."""
        self.err.seek(0)
        return self.err.read().decode(errors="replace")[-n:]

    def status(self) -> dict[str, int]:
        """VmRSS, VmHWM (KiB) and Threads from /proc/PID/status."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(value.split()[0])
        return out

    def cpu_s(self) -> float:
        """User + system CPU seconds of the subprocess (all its threads)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        """Kill the subprocess (TERM, then KILL) and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- blocking raw-socket helpers -----------------------------------------------------


def _connect(address: tuple[str, int], timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout_s)
    sock.settimeout(timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def _read_frame(sock: socket.socket) -> tuple[int, bytearray]:
    from cic_fast.runtime import wire as W

    magic, _, kind, _, length = W.HEADER.unpack(_recv_exact(sock, W.HEADER.size))
    if magic != W.MAGIC:
        raise RuntimeError(f"bad magic {magic!r}")
    if length > 256 * MIB:
        raise RuntimeError(f"frame of {length} bytes")
    return kind, _recv_exact(sock, length)


def _error_text(payload: bytes | bytearray) -> str:
    from cic_fast.runtime import messages as M
    from cic_fast.runtime import wire as W

    try:
        return str(M.decode_error(payload, W.Limits()))
    except Exception as e:  # a report, not a parser test
        return f"undecodable ERROR ({e})"


def check_served(setup: Setup, address: tuple[str, int]) -> None:
    """One handshake and one request over a raw socket; the answer must match in-process.

    Raises
    ------
    RuntimeError
        The server refused the fingerprint or the request, or answered other outputs.
    """
    import torch

    from cic_fast.runtime import messages as M
    from cic_fast.runtime import wire as W

    with _connect(address, 60.0) as sock:
        sock.sendall(setup.hello_frame)
        kind, payload = _read_frame(sock)
        if kind != W.MsgType.HELLO_OK:
            raise RuntimeError(f"handshake refused: {_error_text(payload)}")
        sock.sendall(setup.infer_frame)
        kind, payload = _read_frame(sock)
        if kind != W.MsgType.RESULT:
            raise RuntimeError(f"request refused: {_error_text(payload)}")
        _, _, outs = M.decode_result(payload, W.Limits())
    for got, want in zip(outs, setup.outputs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# -- section 1: per-request overhead -------------------------------------------------


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q) * 1e3)


#: CPU placements of the overhead section: (bench process, server and echo).
PINS = {"same": ({0}, {0}), "split": ({0}, {1}), "none": (None, None)}


def section_overhead(args: argparse.Namespace, cic_file: str) -> list[dict[str, Any]]:
    """The overhead measurement once per CPU placement in ``--pin``.

    On a VM a wake-up across CPUs costs far more than the runtime's own work
    (a 12 KB loopback echo: ~22 us with both ends on one vCPU, ~300 us across
    two, on the machine of docs/benchmarks.md), and the scheduler picks either
    at random: so the echo and the runtime are compared on the same placement.
    """
    out = []
    for pin in args.pin.split(","):
        mine, theirs = PINS[pin.strip()]
        import torch

        before, threads = os.sched_getaffinity(0), torch.get_num_threads()
        if mine is not None:
            os.sched_setaffinity(0, mine)
            torch.set_num_threads(len(mine))  # no more torch threads than CPUs
        try:
            out.append({"pin": pin.strip(), **_overhead_once(args, cic_file, theirs)})
        finally:
            os.sched_setaffinity(0, before)
            torch.set_num_threads(threads)
    return out


def _overhead_once(
    args: argparse.Namespace, cic_file: str, cpus: set[int] | None
) -> dict[str, Any]:
    """Infer vs raw echo vs in-process compute on the small model, all-server partition.

    Returns
    -------
    dict
        Medians and p90s (ms), the overhead, encode/decode costs, fallbacks, sizes.
    """
    import torch

    from cic_fast.runtime import messages as M
    from cic_fast.runtime import wire as W

    _log(f"overhead: building the small model (load {_loadavg()})")
    s = Setup("small", all_server)
    req_len, resp_len = len(s.infer_frame), s.result_bytes
    limits = W.Limits()
    rounds, per_round = args.rounds, max(1, args.requests // args.rounds)
    times: dict[str, list[float]] = {
        k: [] for k in ("infer", "echo", "head", "tail", "server_s", "transfer_s")
    }
    fallbacks: list[str] = []
    cap_s = args.max_measure_s
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(Child(["_serve", "small"], args.pythonpath, cic_file, cpus))
        echo = stack.enter_context(Child(["_echo", str(req_len), str(resp_len)], None, None, cpus))
        _log(f"overhead: server pid {srv.pid} at {srv.address}, echo pid {echo.pid}")
        check_served(s, srv.address)
        client = stack.enter_context(s.client(srv.address))
        esock = stack.enter_context(_connect(echo.address))
        frame = s.infer_frame

        def infer_once() -> float:
            t = time.perf_counter()
            client.infer_partition(s.on, s.x)
            dt = time.perf_counter() - t
            last = client.last
            if last.fallback:
                fallbacks.append(str(last.error))
            else:
                times["server_s"].append(last.server_s)
                times["transfer_s"].append(last.transfer_s)
            return dt

        def echo_once() -> float:
            t = time.perf_counter()
            esock.sendall(frame)
            _recv_exact(esock, resp_len)
            return time.perf_counter() - t

        def compute_once() -> tuple[float, float]:
            with torch.inference_mode():
                t0 = time.perf_counter()
                sent = s.head(s.x)
                t1 = time.perf_counter()
                s.tail(sent)
                t2 = time.perf_counter()
            return t1 - t0, t2 - t1

        _log(f"overhead: warm-up ({args.warmup} of each)")
        for _ in range(args.warmup):
            infer_once()
            echo_once()
            compute_once()
        fallbacks.clear()
        times["server_s"].clear()
        times["transfer_s"].clear()
        _log(f"overhead: {rounds} rounds of {per_round} infer / echo / compute")
        t_end = time.perf_counter() + cap_s
        for r in range(rounds):
            if time.perf_counter() > t_end:
                _log(f"overhead: stopped after {r} rounds ({cap_s:g} s cap)")
                break
            # a pause before each block: the other process's torch threads stop spinning
            time.sleep(args.pause_s)
            times["infer"] += [infer_once() for _ in range(per_round)]
            time.sleep(args.pause_s)
            times["echo"] += [echo_once() for _ in range(per_round)]
            time.sleep(args.pause_s)
            for _ in range(per_round):
                h, t = compute_once()
                times["head"].append(h)
                times["tail"].append(t)

    # in-process codec: encode (+ join, as send_frame does) and decode of both frames
    codec: dict[str, list[float]] = {k: [] for k in ("enc_req", "dec_req", "enc_res", "dec_res")}
    req_payload = b"".join(M.encode_request(1, s.on, s.sent)[0])
    res_payload = b"".join(M.encode_result(1, 0.0, s.outputs)[0])
    for _ in range(args.requests):
        t0 = time.perf_counter()
        b"".join(M.encode_request(1, s.on, s.sent)[0])
        t1 = time.perf_counter()
        M.decode_request(req_payload, limits)
        t2 = time.perf_counter()
        b"".join(M.encode_result(1, 0.0, s.outputs)[0])
        t3 = time.perf_counter()
        M.decode_result(res_payload, limits)
        t4 = time.perf_counter()
        for k, v in zip(codec, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            codec[k].append(v)

    compute = [h + t for h, t in zip(times["head"], times["tail"], strict=True)]
    med = {k: _ms(v, 50) for k, v in times.items() if v}
    p90 = {k: _ms(v, 90) for k, v in times.items() if v}
    med["compute"], p90["compute"] = _ms(compute, 50), _ms(compute, 90)
    codec_us = {k: _ms(v, 50) * 1e3 for k, v in codec.items()}
    out = {
        "model": "small: conv3x3(3->16)+relu+maxpool2+linear(4096->10), input 1x3x32x32",
        "partition": "all-server (only the input on the device)",
        "request_frame_bytes": req_len,
        "result_frame_bytes": resp_len,
        "requests": len(times["infer"]),
        "fallbacks": len(fallbacks),
        "fallback_errors": sorted(set(fallbacks))[:5],
        "median_ms": med,
        "p90_ms": p90,
        "overhead_ms": med["infer"] - med["echo"] - med["compute"],
        "overhead_vs_server_s_ms": med["infer"] - med["echo"] - med["head"] - med["server_s"]
        if "server_s" in med
        else None,
        "codec_median_us": codec_us,
        "codec_total_us": sum(codec_us.values()),
        "loadavg_end": _loadavg(),
    }
    _log(
        f"overhead: infer {med['infer']:.3f} ms, echo {med['echo']:.3f} ms, "
        f"compute {med['compute']:.3f} ms -> overhead {out['overhead_ms']:.3f} ms"
    )
    return out


def format_overhead(runs: list[dict[str, Any]]) -> str:
    """The overhead section as markdown: one table per CPU placement."""
    where = {
        "same": "bench process, server and echo all on CPU 0",
        "split": "bench process on CPU 0, server and echo on CPU 1",
        "none": "no pinning (the scheduler's choice)",
    }
    parts = ["## 1. Per-request overhead"]
    for o in runs:
        parts.append(f"### Placement `{o['pin']}`: {where[o['pin']]}\n\n" + _format_one(o))
    return "\n\n".join(parts)


def _format_one(o: dict[str, Any]) -> str:
    med, p90 = o["median_ms"], o["p90_ms"]
    lines = [
        f"Model {o['model']}; partition {o['partition']}. INFER frame "
        f"{o['request_frame_bytes']} B, RESULT frame {o['result_frame_bytes']} B; "
        f"{o['requests']} requests of each kind in interleaved rounds after a warm-up; "
        f"fallbacks {o['fallbacks']}. Load average at the end: {o['loadavg_end']}.",
        "",
        "| quantity | median ms | p90 ms |",
        "|---|---:|---:|",
        f"| `Client.infer_partition` (wall, in the client) | {med['infer']:.3f} "
        f"| {p90['infer']:.3f} |",
        f"| raw echo of the same bytes (TCP_NODELAY) | {med['echo']:.3f} | {p90['echo']:.3f} |",
        f"| compute in-process: head + tail | {med['compute']:.3f} | {p90['compute']:.3f} |",
        f"| (head / tail alone) | {med['head']:.3f} / {med['tail']:.3f} "
        f"| {p90['head']:.3f} / {p90['tail']:.3f} |",
        f"| **overhead = infer - echo - compute** | **{o['overhead_ms']:.3f}** | |",
    ]
    if "server_s" in med:
        lines += [
            f"| tail time the server reports (`last.server_s`) | {med['server_s']:.3f} "
            f"| {p90['server_s']:.3f} |",
            f"| overhead with the server's tail time instead of the local one "
            f"| {o['overhead_vs_server_s_ms']:.3f} | |",
        ]
    c = o["codec_median_us"]
    lines += [
        "",
        f"In-process codec, median us: encode_request+join {c['enc_req']:.1f}, decode_request "
        f"{c['dec_req']:.1f}, encode_result+join {c['enc_res']:.1f}, decode_result "
        f"{c['dec_res']:.1f}; total {o['codec_total_us']:.1f} us.",
    ]
    if o["fallback_errors"]:
        lines.append(f"Fallback errors: {o['fallback_errors']}")
    return "\n".join(lines)


# -- section 2: capacity -------------------------------------------------------------


class _Conn:
    """One load-generator connection (state machine driven by `drive`)."""

    __slots__ = ("backoff", "deadline", "inbuf", "out", "retry_at", "sock", "state", "t_sent")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.state = "closed"  # closed, hello, wait, pause (after BUSY), idle
        self.out: memoryview | None = None
        self.inbuf = bytearray()
        self.t_sent = 0.0
        self.deadline = 0.0
        self.retry_at = 0.0
        self.backoff = 0.0


def drive(
    address: tuple[str, int],
    hello_frame: bytes,
    infer_frame: bytes,
    clients: int,
    *,
    warmup_s: float,
    seconds: float,
    max_requests: int,
    request_timeout_s: float,
    drain_s: float,
    busy_backoff_s: float = 0.05,
    server: Child | None = None,
) -> dict[str, Any]:
    """Closed-loop load: ``clients`` connections, each sends the next INFER on an answer.

    Parameters
    ----------
    address : tuple of (str, int)
        The server.
    hello_frame, infer_frame : bytes
        Whole frames, sent as they are.
    clients : int
        Connections, driven by this one thread.
    warmup_s, seconds : float
        Answers during the first ``warmup_s`` are not counted; then ``seconds`` are.
    max_requests : int
        Most INFER frames sent in all (the window ends early when reached).
    request_timeout_s : float
        An unanswered handshake or request after this long: the connection is
        dropped (counted) and reopened.
    drain_s : float
        After the window, the most seconds spent waiting for the answers still due.
    busy_backoff_s : float
        After an ``ERROR BUSY`` the connection waits this long before its next
        request (or reconnect, if the server closed it), doubling while it is
        refused (at most 1 s), back to none after a RESULT: as a client that
        computed the request itself would.
    server : Child, optional
        Its CPU time, RSS and threads are sampled at the window's ends.

    Returns
    -------
    dict
        served, refused, errors, timeouts, closed, reconnects, latencies (ms), rates.
    """
    from cic_fast.runtime import wire as W

    hsize, magic = W.HEADER.size, W.MAGIC
    unpack_head = W.HEADER.unpack_from
    t_hello_ok, t_result, t_error = (
        int(W.MsgType.HELLO_OK),
        int(W.MsgType.RESULT),
        int(W.MsgType.ERROR),
    )
    busy = int(W.ErrorCode.BUSY)
    fatal = {int(c) for c in W.FATAL_CODES}
    sel = selectors.DefaultSelector()
    conns = [_Conn() for _ in range(clients)]
    st: dict[str, Any] = {
        "sent": 0,
        "served": 0,
        "refused": 0,
        "refused_total": 0,
        "errors": Counter(),
        "timeouts": 0,
        "closed_by_server": 0,
        "reconnects": 0,
        "connect_failures": 0,
        "unexpected": 0,
    }
    lat: list[float] = []
    t0 = time.perf_counter()
    warm_end = t0 + warmup_s
    end = warm_end + seconds
    sending = True
    counting = False
    window: dict[str, float] = {}
    opened = [0]

    def drop(c: _Conn, now: float, backoff: float) -> None:
        if c.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(c.sock)
            c.sock.close()
        c.sock, c.state, c.out = None, "closed", None
        c.inbuf.clear()
        c.retry_at = now + backoff

    def flush(c: _Conn, now: float) -> None:
        assert c.sock is not None and c.out is not None
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            n = 0
        except OSError:
            st["closed_by_server"] += 1
            drop(c, now, 0.02)
            return
        c.out = c.out[n:]
        if not c.out.nbytes:
            c.out = None
            sel.modify(c.sock, selectors.EVENT_READ, c)

    def send(c: _Conn, frame: bytes, state: str, now: float) -> None:
        assert c.sock is not None
        c.state, c.t_sent, c.deadline = state, now, now + request_timeout_s
        c.out = memoryview(frame)
        if state == "wait":
            st["sent"] += 1
        sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        flush(c, now)

    def open_conn(c: _Conn, now: float) -> None:
        try:
            sock = socket.create_connection(address, timeout=2.0)
        except OSError:
            st["connect_failures"] += 1
            c.retry_at = now + 0.1
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        c.sock = sock
        opened[0] += 1
        if opened[0] > clients:
            st["reconnects"] += 1
        sel.register(sock, selectors.EVENT_READ, c)
        send(c, hello_frame, "hello", time.perf_counter())

    def on_frame(c: _Conn, kind: int, code: int | None, now: float) -> None:
        if kind == t_error:
            if code == busy:
                st["refused_total"] += 1
                if counting:
                    st["refused"] += 1
                # back off like a client would (doubling while refused, up to 1 s)
                c.backoff = min(1.0, max(busy_backoff_s, 2 * c.backoff))
            elif counting:
                st["errors"][code] += 1
            # BUSY after a request may leave the connection open (the reworked
            # protocol): pause, and learn from EOF if the server closed it after all
            if c.state == "hello" or (code in fatal and code != busy):
                drop(c, now, max(c.backoff, 0.02))
                return
            if code == busy:
                c.state, c.retry_at = "pause", now + c.backoff
                return
        elif c.state == "hello":
            if kind != t_hello_ok:
                st["unexpected"] += 1
                drop(c, now, 0.02)
                return
        elif kind == t_result:
            c.backoff = 0.0
            if counting:
                st["served"] += 1
                lat.append(now - c.t_sent)
        else:
            st["unexpected"] += 1
            drop(c, now, 0.02)
            return
        next_request(c, now)

    def next_request(c: _Conn, now: float) -> None:
        if sending and st["sent"] < max_requests:
            send(c, infer_frame, "wait", now)
        else:
            c.state = "idle"

    def readable(c: _Conn, now: float) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            st["closed_by_server"] += 1
            drop(c, now, 0.02)
            return
        buf = c.inbuf
        buf += data
        while len(buf) >= hsize:
            m, _, kind, _, length = unpack_head(buf, 0)
            if m != magic:
                st["unexpected"] += 1
                drop(c, now, 0.02)
                return
            if len(buf) < hsize + length:
                return
            code = struct.unpack_from("<H", buf, hsize)[0] if kind == t_error and length else None
            del buf[: hsize + length]
            on_frame(c, kind, code, now)
            if c.sock is None:
                return

    def sample(tag: str) -> None:
        window[f"{tag}_t"] = time.perf_counter()
        window[f"{tag}_cpu"] = time.process_time()
        if server is not None:
            window[f"{tag}_srv_cpu"] = server.cpu_s()

    snapshot: dict[str, int] = {}
    next_check = drain_end = 0.0
    try:
        for c in conns:
            open_conn(c, time.perf_counter())
        while True:
            now = time.perf_counter()
            if not counting and sending and now >= warm_end:
                counting = True
                sample("start")
            if sending and (now >= end or st["sent"] >= max_requests):
                if not counting:
                    counting = True
                    sample("start")
                sending = counting = False
                sample("end")
                if server is not None:
                    snapshot = server.status()
                drain_end = now + drain_s
            if not sending:
                busy_conns = [c for c in conns if c.state in ("hello", "wait")]
                if not busy_conns or now > drain_end:
                    st["undrained"] = len(busy_conns)
                    break
            if now >= next_check:
                next_check = now + 0.02
                for c in conns:
                    if c.sock is None:
                        if sending and now >= c.retry_at:
                            open_conn(c, now)
                    elif c.state == "pause" and now >= c.retry_at:
                        next_request(c, now)
                    elif c.state in ("hello", "wait") and now > c.deadline:
                        st["timeouts"] += 1
                        drop(c, now, 0.0)
            for key, mask in sel.select(timeout=0.02):
                c = key.data
                now = time.perf_counter()
                if mask & selectors.EVENT_WRITE and c.out is not None:
                    flush(c, now)
                if c.sock is not None and mask & selectors.EVENT_READ:
                    readable(c, now)
    finally:
        for c in conns:
            drop(c, time.perf_counter(), 0.0)
        sel.close()
    span = window["end_t"] - window["start_t"]
    out: dict[str, Any] = {
        "clients": clients,
        "window_s": span,
        "served_per_s": st["served"] / span if span > 0 else 0.0,
        **{k: v for k, v in st.items() if k != "errors"},
        "errors": {str(k): v for k, v in st["errors"].items()},
        "p50_ms": _ms(lat, 50) if lat else None,
        "p95_ms": _ms(lat, 95) if lat else None,
        "p99_ms": _ms(lat, 99) if lat else None,
        "loadgen_cpu_pct": 100 * (window["end_cpu"] - window["start_cpu"]) / span,
    }
    if server is not None:
        out["server_cpu_pct"] = 100 * (window["end_srv_cpu"] - window["start_srv_cpu"]) / span
        out["server_rss_mib"] = snapshot.get("VmRSS", 0) / 1024
        out["server_threads"] = snapshot.get("Threads", 0)
    return out


def section_capacity(args: argparse.Namespace, cic_file: str) -> dict[str, Any]:
    """Requests/s and latency percentiles of resnet18's cheap and full tails.

    Returns
    -------
    dict
        ``rows``: one per (tail, clients), see `drive`.
    """
    _log(f"capacity: building resnet18 twice (cheap / full tail) (load {_loadavg()})")
    setups = {
        "cheap (fc only)": Setup("resnet18", all_but_fc),
        "full (all-server)": Setup("resnet18", all_server),
    }
    rows = []
    with Child(["_serve", "resnet18"], args.pythonpath, cic_file) as srv:
        _log(f"capacity: server pid {srv.pid} at {srv.address}, defaults")
        for tail, s in setups.items():
            check_served(s, srv.address)
            for n in args.clients:
                time.sleep(0.5)  # let the server retire the last cell's connections
                _log(f"capacity: {tail}, {n} clients, {args.seconds:g} s (load {_loadavg()})")
                row = drive(
                    srv.address,
                    s.hello_frame,
                    s.infer_frame,
                    n,
                    warmup_s=args.warmup_s,
                    seconds=args.seconds,
                    max_requests=args.max_requests,
                    request_timeout_s=args.request_timeout_s,
                    drain_s=args.drain_s,
                    busy_backoff_s=args.busy_backoff_s,
                    server=srv,
                )
                row.update(tail=tail, sent_bytes=s.sent_bytes, frame_bytes=len(s.infer_frame))
                row["loadavg"] = _loadavg()
                p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.2f}"
                _log(f"  {row['served_per_s']:.1f} req/s, refused {row['refused']}, p50 {p50} ms")
                rows.append(row)
    return {"rows": rows, "server": "resnet18, default Server arguments"}


def format_capacity(c: dict[str, Any], args: argparse.Namespace) -> str:
    """The capacity section as markdown."""

    def f(v: float | None, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)

    lines = [
        "## 2. Server capacity",
        "",
        f"Server: {c['server']}, one subprocess for all cells. Load generator: one thread, "
        f"`selectors`, closed loop, raw frames encoded once; {args.warmup_s:g} s warm-up, "
        f"{args.seconds:g} s counted per cell, answers still due afterwards drained and not "
        f"counted; after `ERROR BUSY` a connection pauses {args.busy_backoff_s:g} s (doubling "
        "while refused, at most 1 s). Refused = BUSY answers in the window. CPU % is of "
        "one core (200 % = both cores of a 2-core machine); RSS and threads sampled at the "
        "end of each window.",
        "",
        "| tail | INFER frame | clients | served/s | refused | other errors | timeouts "
        "| p50 ms | p95 ms | p99 ms | server CPU % | loadgen CPU % | server RSS MiB "
        "| server threads | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in c["rows"]:
        errs = sum(r["errors"].values()) + r["unexpected"]
        lines.append(
            f"| {r['tail']} | {r['frame_bytes'] / 1024:.1f} KiB | {r['clients']} "
            f"| {r['served_per_s']:.1f} | {r['refused']} | {errs} | {r['timeouts']} "
            f"| {f(r['p50_ms'])} | {f(r['p95_ms'])} | {f(r['p99_ms'])} "
            f"| {f(r.get('server_cpu_pct'), '.0f')} | {f(r['loadgen_cpu_pct'], '.0f')} "
            f"| {f(r.get('server_rss_mib'), '.0f')} | {r.get('server_threads', '-')} "
            f"| {r['loadavg']} |"
        )
    notes = [
        f"{r['tail']} x{r['clients']}: {k}={r[k]}"
        for r in c["rows"]
        for k in ("closed_by_server", "reconnects", "connect_failures", "undrained")
        if r.get(k)
    ]
    if notes:
        lines += ["", "Also: " + "; ".join(notes) + "."]
    return "\n".join(lines)


# -- section 3: hardening ------------------------------------------------------------


def _open_many(address: tuple[str, int], n: int, first: bytes = b"") -> list[socket.socket]:
    """Up to ``n`` connections (each sent ``first``); those that failed are left out."""
    socks = []
    try:
        for _ in range(n):
            try:
                s = _connect(address, 5.0)
            except OSError:
                continue
            socks.append(s)
            if first:
                with contextlib.suppress(OSError):
                    s.sendall(first)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def _closed_by_peer(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the peer has closed or answered (non-blocking peek)."""
    n = 0
    for s in socks:
        timeout = s.gettimeout()
        s.setblocking(False)  # with a timeout, recv would first wait for data
        try:
            s.recv(1, socket.MSG_PEEK)
            n += 1  # b"" (closed) or bytes (an answer, e.g. ERROR)
        except BlockingIOError:
            pass
        except OSError:
            n += 1
        finally:
            s.settimeout(timeout)
    return n


def check_rss(
    args: argparse.Namespace, cic_file: str, msg_name: str, setup: Setup
) -> dict[str, Any]:
    """(a) Server RSS growth after 64 x 12-byte headers claiming 64 MiB, held 2 s."""
    from cic_fast.runtime import wire as W

    header = W.frame_header(W.MsgType[msg_name], 64 << 20)
    with Child(["_serve", "small"], args.pythonpath, cic_file) as srv:
        check_served(setup, srv.address)
        time.sleep(1.0)
        before = srv.status()
        socks = _open_many(srv.address, 64, header)
        try:
            time.sleep(2.0)
            held = srv.status()
            answered = _closed_by_peer(socks)
        finally:
            for s in socks:
                s.close()
        time.sleep(1.0)
        after = srv.status()
    growth = (held["VmRSS"] - before["VmRSS"]) / 1024
    return {
        "check": f"(a) 64 x {msg_name} header claiming 64 MiB (no handshake), held 2 s",
        "result": f"RSS +{growth:.1f} MiB",
        "rss_growth_mib": growth,
        "rss_before_mib": before["VmRSS"] / 1024,
        "rss_held_mib": held["VmRSS"] / 1024,
        "hwm_held_mib": held["VmHWM"] / 1024,
        "rss_after_close_mib": after["VmRSS"] / 1024,
        "threads_held": held["Threads"],
        "closed_or_answered_by_server": answered,
        "connected": len(socks),
        "details": (
            f"{len(socks)}/64 connected; "
            f"RSS {before['VmRSS'] / 1024:.0f} -> {held['VmRSS'] / 1024:.0f} MiB held "
            f"(HWM {held['VmHWM'] / 1024:.0f}), {after['VmRSS'] / 1024:.0f} after close; "
            f"{held['Threads']} threads held; {answered}/64 closed or answered by the server"
        ),
    }


def check_starved(
    args: argparse.Namespace, cic_file: str, setup: Setup, drip: bool
) -> dict[str, Any]:
    """(b) Time for a new Client to be served while 64 idle or dripping connections hold on."""
    from cic_fast.runtime import wire as W

    give_up = args.give_up_s
    drip_bytes = W.frame_header(W.MsgType.HELLO, 1000) + bytes(1000)
    what = "dripping (1 B / 0.5 s of a HELLO claiming 1000 B)" if drip else "idle (nothing sent)"
    serve = ["_serve", "small", "--max-clients", "64"]
    with Child(serve, args.pythonpath, cic_file) as srv:
        check_served(setup, srv.address)
        time.sleep(0.5)  # the check's connection is retired
        socks = _open_many(srv.address, 64)
        stop = threading.Event()
        send_failed: list[float] = []
        t_start = time.perf_counter()

        def dripper() -> None:
            alive = list(socks)
            i = 0
            while not stop.wait(0.5) and i < 10_000:
                b = drip_bytes[i : i + 1] or b"\0"
                i += 1
                for s in list(alive):
                    try:
                        s.sendall(b)
                    except OSError:
                        alive.remove(s)
                        send_failed.append(time.perf_counter() - t_start)

        th = threading.Thread(target=dripper, name="dripper", daemon=True)
        if drip:
            th.start()
        client = setup.client(srv.address)
        errors: Counter[str] = Counter()
        attempts = 0
        served_at: float | None = None
        try:
            time.sleep(0.5)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < give_up and attempts < 100_000:
                attempts += 1
                client.infer_partition(setup.on, setup.x)
                if not client.last.fallback:
                    served_at = time.perf_counter() - t0
                    break
                errors[str(client.last.error)[:120]] += 1
                time.sleep(0.25)
            held_s = time.perf_counter() - t_start
            dropped = _closed_by_peer(socks)
        finally:
            stop.set()
            if drip:
                th.join(5.0)
            client.close()
            for s in socks:
                s.close()
    result = f"{served_at:.1f} s" if served_at is not None else f">{give_up:g} s"
    top = errors.most_common(2)
    return {
        "check": f"(b) 64 {what}, max_clients=64: time until a new Client is served",
        "result": result,
        "served_after_s": served_at,
        "attempts": attempts,
        "fallback_errors": dict(errors),
        "held_conns_closed_by_server": dropped,
        "drip_send_failures": len(send_failed),
        "connected": len(socks),
        "details": (
            f"{len(socks)}/64 connected; {attempts} attempts; {dropped}/{len(socks)} held "
            f"connections closed or answered by the server after {held_s:.0f} s"
            + (f", {len(send_failed)} drip sends failed" if drip else "")
            + (f"; fallbacks: {top}" if top else "")
        ),
    }


def check_gap(args: argparse.Namespace, cic_file: str, setup: Setup) -> dict[str, Any]:
    """(c) 3 requests ``gap_s`` apart against a server with ``timeout_s=min(5, gap/2)``."""
    gap = args.gap_s
    tmo = min(5.0, gap / 2)
    fallbacks: list[str] = []
    with Child(["_serve", "small", "--timeout-s", str(tmo)], args.pythonpath, cic_file) as srv:
        with setup.client(srv.address) as client:
            for i in range(3):
                if i:
                    time.sleep(gap)
                client.infer_partition(setup.on, setup.x)
                if client.last.fallback:
                    fallbacks.append(str(client.last.error)[:160])
    return {
        "check": f"(c) 3 requests {gap:g} s apart, server timeout_s={tmo:g}",
        "result": f"{len(fallbacks)} of 3 fell back",
        "fallbacks": len(fallbacks),
        "details": "; ".join(sorted(set(fallbacks))) or "none",
    }


def section_hardening(args: argparse.Namespace, cic_file: str) -> dict[str, Any]:
    """Run the hardening checks (a), (b) and, with ``--gap-s``, (c).

    Returns
    -------
    dict
        ``rows``: one dict per check, with ``check``, ``result`` and ``details``.
    """
    _log(f"hardening: building the small model (load {_loadavg()})")
    s = Setup("small", all_server)
    rows = []
    for msg in ("HELLO", "INFER"):
        _log(f"hardening (a): 64 x {msg} header claiming 64 MiB")
        rows.append(check_rss(args, cic_file, msg, s))
        _log(f"  {rows[-1]['result']}; {rows[-1]['details']}")
    for drip in (False, True):
        _log(f"hardening (b): 64 {'dripping' if drip else 'idle'} connections")
        rows.append(check_starved(args, cic_file, s, drip))
        _log(f"  {rows[-1]['result']}; {rows[-1]['details']}")
    if args.gap_s:
        _log(f"hardening (c): 3 requests {args.gap_s:g} s apart")
        rows.append(check_gap(args, cic_file, s))
        _log(f"  {rows[-1]['result']}; {rows[-1]['details']}")
    return {"rows": rows, "loadavg_end": _loadavg()}


def format_hardening(h: dict[str, Any]) -> str:
    """The hardening section as markdown."""
    lines = [
        "## 3. Hardening",
        "",
        "Each check against a fresh small-model server (default arguments unless named).",
        "",
        "| check | result | details |",
        "|---|---|---|",
    ]
    for r in h["rows"]:
        details = str(r["details"]).replace("|", "/")
        lines.append(f"| {r['check']} | {r['result']} | {details} |")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pythonpath", help="import cic_fast from this folder (see the docstring)")
    p.add_argument("--label", default="", help="a name for this run in the report")
    p.add_argument(
        "--sections",
        default="overhead,capacity,hardening",
        help="comma-separated: overhead, capacity, hardening",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    g = p.add_argument_group("overhead")
    g.add_argument("--warmup", type=int, default=300, help="warm-up requests of each kind")
    g.add_argument("--requests", type=int, default=2000, help="measured requests of each kind")
    g.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    g.add_argument("--max-measure-s", type=float, default=120.0, help="cap on the measured part")
    g.add_argument("--pause-s", type=float, default=0.2, help="pause before each block")
    g.add_argument(
        "--pin",
        default="same,split",
        help="CPU placements, comma-separated: same (all on CPU 0), split (bench on 0, "
        "server and echo on 1), none",
    )
    g = p.add_argument_group("capacity")
    g.add_argument("--clients", type=_int_list, default=[1, 4, 16, 64], help="e.g. 1,4,16,64")
    g.add_argument("--seconds", type=float, default=5.0, help="counted seconds per cell")
    g.add_argument("--warmup-s", type=float, default=1.0, help="uncounted seconds per cell")
    g.add_argument("--max-requests", type=int, default=200_000, help="cap on requests per cell")
    g.add_argument("--request-timeout-s", type=float, default=30.0, help="per-request deadline")
    g.add_argument("--drain-s", type=float, default=60.0, help="cap on the drain after a cell")
    g.add_argument(
        "--busy-backoff-s", type=float, default=0.05, help="first pause after ERROR BUSY"
    )
    g = p.add_argument_group("hardening")
    g.add_argument("--give-up-s", type=float, default=40.0, help="(b) give up after this long")
    g.add_argument("--gap-s", type=float, default=0.0, help="(c) gap between requests; 0: off")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the report, or a subprocess role (``_serve``, ``_echo``).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--pythonpath")
    known, rest = pre.parse_known_args(argv)
    use_pythonpath(known.pythonpath)
    if rest[:1] == ["_serve"]:
        return serve_main(rest[1:])
    if rest[:1] == ["_echo"]:
        return echo_main(rest[1:])

    args = build_parser().parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"overhead", "capacity", "hardening"}
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}")

    import torch

    import cic_fast

    src = _cic_source(args.pythonpath)
    cic_file = os.path.abspath(cic_fast.__file__)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    server_defaults = {
        k: str(v.default)
        for k, v in inspect.signature(cic_fast.Server).parameters.items()
        if v.default is not inspect.Parameter.empty
    }
    meta = {
        "label": args.label,
        **src,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cores": cores,
        "machine": platform.machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_start": _loadavg(),
        "server_defaults": server_defaults,
        "argv": argv,
    }
    git = src["git"] or "unknown"
    _log(f"cic_fast from {src['cic_fast']} (git {git}), load {meta['loadavg_start']}")
    results: dict[str, Any] = {"meta": meta}
    parts = []
    t0 = time.perf_counter()
    if "overhead" in sections:
        results["overhead"] = section_overhead(args, cic_file)
        parts.append(format_overhead(results["overhead"]))
    if "capacity" in sections:
        results["capacity"] = section_capacity(args, cic_file)
        parts.append(format_capacity(results["capacity"], args))
    if "hardening" in sections:
        results["hardening"] = section_hardening(args, cic_file)
        parts.append(format_hardening(results["hardening"]))
    meta["loadavg_end"] = _loadavg()
    meta["wall_s"] = time.perf_counter() - t0
    title = f"# Runtime report{': ' + args.label if args.label else ''}"
    head = (
        f"cic_fast from `{src['cic_fast']}` (git {src['git'] or 'unknown'}); Python "
        f"{meta['python']}, torch {meta['torch']} ({meta['torch_threads']} threads in the "
        f"bench process; servers keep their defaults), {cores} cores; started "
        f"{meta['started']}, {meta['wall_s']:.0f} s; load average {meta['loadavg_start']} at "
        f"the start, {meta['loadavg_end']} at the end. `Server` defaults: "
        + ", ".join(f"{k}={v}" for k, v in server_defaults.items())
        + "."
    )
    print("\n\n".join([title, head, *parts]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
        _log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
