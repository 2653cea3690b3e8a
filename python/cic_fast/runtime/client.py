"""The device side of collaborative inference.

A :class:`Client` holds the same model as the :class:`~cic_fast.runtime.server.Server`
(the traced graph it is handed, or the model, traced once), a
:class:`~cic_fast.Planner` (handed over, or built from the device and server
profiles) and a :class:`BandwidthEstimator` fed by its own transfers.  For every
request it

1. takes the bandwidth (``client.bandwidth_bps`` if set, else the estimate; a small
   probe when there is no recent estimate);
2. asks the Planner for the optimal partition at that bandwidth (microseconds);
3. runs the head on the device, sends the boundary tensors, receives the outputs;
4. on any network failure (refused, timeout, error frame, fingerprint mismatch,
   malformed answer) runs the tail itself: the caller always gets the model's output;
5. when the answer is late or the link stalls (``hedge_margin_s``), starts the tail
   on the device as well and returns whichever result is ready first.

While its decisions keep everything on the device, a background thread probes the
link at a bounded cost (``probe_share``) so that it notices when offloading pays
again.

`Client.infer` runs one request (`Client.infer_partition` one with a given
partition); `Client.stream` pipelines a sequence of frames over one connection.
``client.last`` (a :class:`RequestRecord`) says what happened. Every computation
on the device goes through ``device_runner`` (to emulate a slower device).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import random
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cic_fast.core import cost
from cic_fast.core.baselines import device_only
from cic_fast.core.cost import Partition
from cic_fast.core.planner import Planner, check_objective
from cic_fast.frontend.cutting import build_parts
from cic_fast.frontend.fxsafety import MODULE_GATE
from cic_fast.frontend.profiling import Profile
from cic_fast.frontend.splitting import check_planner
from cic_fast.frontend.tracing import LayerGraph, as_args, as_traced
from cic_fast.runtime import http as H
from cic_fast.runtime import messages as M
from cic_fast.runtime import wire as W
from cic_fast.runtime.estimator import BandwidthEstimator
from cic_fast.runtime.fingerprint import traced_fingerprint

if TYPE_CHECKING:
    import torch

try:  # the bytes a socket holds that its peer has not acknowledged (Linux: SIOCOUTQ)
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    _TIOCOUTQ = None

__all__ = ["PATHS", "BandwidthEstimator", "Client", "DeviceRunner", "RequestRecord", "backoff_s"]

#: The values of `RequestRecord.path`.
PATHS = ("offload", "local", "fallback-local", "hedged-local", "hedged-offload")

#: ``runner(fn)`` runs one device-side computation ``fn()`` and returns its result.
DeviceRunner = Callable[[Callable[[], Any]], Any]

_NETWORK_ERRORS = (OSError, EOFError, W.ProtocolError, W.RemoteError)


def backoff_s(failures: int, retry_s: float, retry_max_s: float, rng: random.Random) -> float:
    """How long a device leaves the server alone after ``failures`` failures in a row.

    ``retry_s * 2**(failures - 1)``, capped at ``retry_max_s``, times a random
    factor in [0.5, 1.5) so that devices that lost the same server (or were all
    answered BUSY by it) do not come back in step. Used by the Client and by
    ``cic-fast loadtest``'s simulated devices.
    """
    if failures < 1:
        return 0.0
    base = min(retry_max_s, retry_s * 2.0 ** min(failures - 1, 30))
    return base * rng.uniform(0.5, 1.5)


@dataclass
class RequestRecord:
    """What one request (:meth:`Client.infer`, or one frame of :meth:`Client.stream`) did.

    Attributes
    ----------
    partition : Partition
        The partition chosen (priced at ``bandwidth_estimate_bps``); all-device when
        the server was known to be unreachable.
    fallback : bool
        True if the server's answer was not used and the device computed the rest
        (``path`` is ``"fallback-local"`` or ``"hedged-local"``).
    bytes_sent : int
        Bytes of boundary tensors sent (0 if nothing was offloaded or sent, or
        if the server's answer was not used).
    bandwidth_estimate_bps : float or None
        The bandwidth the decision used (None when no estimate could be made).
    device_s, transfer_s, server_s, total_s : float
        Measured seconds: head and local work; network (round trip minus server
        time; in a stream it includes the wait behind earlier frames); tail on the
        server (as the server reports it); the whole request, from its decision to
        its answer. For ``"hedged-local"``: ``device_s`` is the head and the
        local tail, ``transfer_s`` the network wait until the hedge started.
    probed : bool
        True if a bandwidth probe ran before this request: a synchronous one
        (there was no estimate), or a background one that finished since the
        previous decision.
    error : str or None
        Why the server was not used, on fallback (for ``"hedged-local"``: why
        the hedge started).
    done_s : float
        ``time.perf_counter()`` when the answer was available. In a stream, when it
        and every earlier frame's answer were (so it never decreases along a
        stream): ``(m - 1) / (done_s[m-1] - done_s[0])`` is the frame rate of
        ``m`` frames.
    path : str
        Which path answered (one of `PATHS`): ``"offload"``, the server's answer;
        ``"local"``, the decision kept everything on the device;
        ``"fallback-local"``, the server failed, was unreachable (or backed off)
        or refused, and the device computed the rest; ``"hedged-local"``, the
        answer was late or the link stalled, the device finished the request
        first (the connection and its late answer were dropped);
        ``"hedged-offload"``, the device had started on the rest too, but the
        server's answer came first (the local result was discarded).
    predicted_s : float
        The latency the cost model predicted for ``partition`` at the bandwidth
        the decision used (``partition.latency_s``).
    """

    partition: Partition
    fallback: bool
    bytes_sent: int
    bandwidth_estimate_bps: float | None
    device_s: float
    transfer_s: float
    server_s: float
    total_s: float
    probed: bool = False
    error: str | None = None
    done_s: float = 0.0
    path: str = "offload"
    predicted_s: float = 0.0


def _local_record(
    partition: Partition,
    fallback: bool,
    bw: float | None,
    probed: bool,
    t_start: float,
    t0: float,
    error: str | None = None,
) -> RequestRecord:
    """The record of a request the device answered alone, ending now (nothing sent)."""
    t = time.perf_counter()
    return RequestRecord(
        partition=partition,
        fallback=fallback,
        bytes_sent=0,
        bandwidth_estimate_bps=bw,
        device_s=t - t0,
        transfer_s=0.0,
        server_s=0.0,
        total_s=t - t_start,
        probed=probed,
        error=error,
        done_s=t,
        path="fallback-local" if fallback else "local",
        predicted_s=partition.latency_s,
    )


def _unacked(sock: socket.socket) -> int | None:
    """Bytes written to ``sock`` that its peer has not acknowledged yet (None: unknown)."""
    if _TIOCOUTQ is None:
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):  # closed
        return None
    return int(struct.unpack("i", raw)[0])


# struct tcp_info (linux/tcp.h): tcpi_bytes_acked (u64) and tcpi_busy_time (u64, us:
# the time the connection had data in flight or queued) are at these offsets since
# Linux 4.10; shorter (older) structs are not read.
_TCPI_BYTES_ACKED = 120
_TCPI_BUSY_TIME = 168
_TCPI_SIZE = 176


def _tcp_sent(sock: socket.socket) -> tuple[int, float] | None:
    """(bytes the peer acknowledged, seconds busy sending) of ``sock``, from the kernel.

    Timed by the kernel as the acknowledgements arrive, so it is right even when
    this process is starved of CPU (a device computing a model on its one
    core while a probe runs); None where TCP_INFO lacks the fields.
    """
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    except (OSError, ValueError):
        return None
    if len(raw) < _TCPI_SIZE:
        return None
    (acked,) = struct.unpack_from("Q", raw, _TCPI_BYTES_ACKED)
    (busy_us,) = struct.unpack_from("Q", raw, _TCPI_BUSY_TIME)
    return int(acked), busy_us / 1e6


#: The smallest background probe: a burst of 3.2 KB (tbf's bucket) makes a 16 KiB
#: probe read at most 1.25x the rate; the period grows to keep the budget.
_PROBE_MIN_FILL = 16384

#: A probe timed by the kernel (`_tcp_sent`) is a sample when it kept the link busy
#: this long: the busy time counts in jiffies (1-4 ms).
_KERNEL_MIN_BUSY_S = 0.02


class _LocalWon(Exception):
    """Raised through a request's waits once its local finish has won."""


class _HedgePool:
    """At most ``size`` daemon threads that run hedges, started when first needed.

    `submit` never queues behind a busy thread: it returns False when all
    ``size`` are busy (with hedges whose answers lost, which cannot be
    cancelled), and the caller finishes the request in its own thread instead.
    A thread ends after ``idle_s`` without work.
    """

    def __init__(self, size: int, idle_s: float = 30.0) -> None:
        self.size = size
        self.idle_s = idle_s
        self.lock = threading.Lock()
        self.idle = 0  # threads waiting for work and not promised any
        self.threads = 0
        self.started = 0  # threads ever started (for tests and stats)
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.closed = False

    def running(self) -> int:
        """Hedges running now (finished ones' threads are idle or gone)."""
        with self.lock:
            return self.threads - self.idle

    def submit(self, fn: Callable[[], None]) -> bool:
        """Run ``fn()`` in a hedge thread now; False if none is free."""
        with self.lock:
            if self.closed:
                return False
            if self.idle > 0:
                self.idle -= 1  # promised to this job
            elif self.threads < self.size:
                self.threads += 1
                self.started += 1
                threading.Thread(target=self._work, name="cic-hedge", daemon=True).start()
            else:
                return False
        self.jobs.put(fn)
        return True

    def _work(self) -> None:
        while True:
            try:
                fn = self.jobs.get(timeout=self.idle_s)
            except queue.Empty:
                with self.lock:
                    # idle == 0: every idle thread was promised a job that is on
                    # its way; this one may be the one to take it
                    if self.idle > 0:
                        self.idle -= 1
                        self.threads -= 1
                        return
                continue
            if fn is None:
                return
            try:
                fn()
            finally:
                with self.lock:
                    self.idle += 1

    def close(self) -> None:
        """Let the threads end once their current hedge is done."""
        with self.lock:
            self.closed = True
            n = self.threads
        for _ in range(n):
            self.jobs.put(None)


# A request is checked this many times per hedge margin while it waits (and no
# earlier than one such step after it started, so an answer in time never wakes it).
_HEDGE_STEPS = 8


class _Hedge(W.Tick):
    """Watches one offloaded request from inside its blocking waits, and hedges it.

    A `wire.Tick`: the request's own thread calls it every ``margin / 8`` while
    it waits on the socket (never before the first step, so an answer that
    comes in time costs nothing). It starts the local finish (the tail, in a
    hedge thread) when

    - late: the network part has taken ``predicted + margin`` (``predicted``:
      transfer + server + round trip of the partition at the decision's
      bandwidth; none without a bandwidth) and the local finish is expected
      first: while request bytes are still unacknowledged, the answer is
      expected after the rest is sent at the rate the link carried over the
      last ``margin`` plus the server's predicted time, and a hedge starts only
      if that is later than the tail's predicted device time (``local_s``) from
      now (a hedge that would lose only takes the device's CPU from the next
      request: it cannot be cancelled); once every byte is acknowledged
      (the server is late) there is nothing to extrapolate and it starts; or
    - stalled: bytes are outstanding (written and not acknowledged by the peer,
      or a connect or handshake under way) and neither an acknowledgement nor
      an answer byte came for ``margin``. Progress is sampled at each step, so
      it fires between ``margin`` and ``margin + margin / 8`` after the last
      progress; exactly ``margin`` after the network part started when nothing
      was ever acknowledged.

    Neither starts while ``busy()`` (an earlier hedge's local finish still
    runs). The first to finish claims the request (`claim_network`, or the hedge
    thread); a local win shuts the socket down, which wakes the request's
    thread at once.
    """

    def __init__(
        self,
        device: Callable[[Callable[[], Any]], Any],
        submit: Callable[[Callable[[], None]], bool],
        tail: Any,
        sent: dict[str, Any],
        margin: float,
        predicted_s: float,
        t0: float,
        *,
        local_s: float | None = None,
        total_bytes: int = 0,
        server_s: float = 0.0,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__()
        # True while an earlier hedge's local finish still runs: a device computing
        # one model already gains nothing from starting a second (they share its
        # CPU: three at once made one request take 8 s instead of 4 on googlenet)
        self.busy = busy
        self.local_s = local_s  # the tail's predicted device time (None: always hedge late)
        self.total_bytes = total_bytes  # the request frame's size
        self.server_s = server_s  # predicted server time + round trip
        self.history: deque[tuple[float, int]] = deque()  # (time, acked) of recent steps
        self.device: Callable[[Callable[[], Any]], Any] | None = device  # Client._device
        self.submit = submit  # runs a function in a hedge thread, or returns False
        self.tail = tail
        self.tensors: dict[str, Any] | None = sent
        self.margin = margin
        self.step = margin / _HEDGE_STEPS
        self.t0 = t0
        self.late_at = t0 + predicted_s + margin
        self.at = min(t0 + self.step, self.late_at)
        self.connecting = False
        self.progress_t = t0
        self.last_acked = 0
        self.last_received = 0
        self.started = False
        self.reason = ""
        self.t_hedge = 0.0
        # set once started
        self.lock: threading.Lock | None = None
        self.done: threading.Event | None = None
        self.winner: str | None = None
        self.inline = False  # no hedge thread was free: the caller finishes
        self.out: Any = None
        self.error: BaseException | None = None
        self.local_run_s = 0.0

    def bind(self, sock: socket.socket) -> None:
        """Watch ``sock`` from now on (a new attempt of the request)."""
        self.sock = sock
        self.sent = self.received = self.last_acked = self.last_received = 0

    def delivered(self) -> int:
        """Bytes the peer acknowledged on the current socket plus answer bytes received."""
        sock = self.sock
        unacked = None if sock is None or self.connecting else _unacked(sock)
        acked = self.sent - unacked if unacked is not None else 0
        return max(acked, 0) + self.received

    def __call__(self) -> None:
        now = time.monotonic()
        if self.started:
            if self.winner == "local":
                raise _LocalWon
            self.at = now + self.step
            return
        if self.connecting:
            outstanding, acked = True, self.last_acked
        else:
            unacked = None if self.sock is None else _unacked(self.sock)
            if unacked is None:  # unknown: the bytes the socket took count as progress
                outstanding, acked = True, self.sent
            else:
                outstanding, acked = unacked > 0, self.sent - unacked
        if not outstanding or acked > self.last_acked or self.received > self.last_received:
            # progress, or nothing waits for the link: the stall clock restarts
            self.progress_t = now
            self.last_acked = max(self.last_acked, acked)
            self.last_received = self.received
        hist = self.history
        hist.append((now, max(acked, 0)))
        while len(hist) > 2 and now - hist[1][0] >= self.margin:
            hist.popleft()  # keep the oldest step at least a margin back
        if self.busy is not None and self.busy():
            self.at = now + self.step  # wait for the device to be free, then decide
        elif now - self.progress_t >= self.margin:
            self._start(now, f"the link stalled: no progress for {now - self.progress_t:.3f} s")
        elif now >= self.late_at and self._local_first(now, outstanding):
            self._start(now, f"no answer {now - self.t0:.3f} s after sending (late)")
        else:
            late = now >= self.late_at  # past it, re-checked each step
            self.at = now + self.step if late else min(now + self.step, self.late_at)

    def _local_first(self, now: float, outstanding: bool) -> bool:
        """Late: whether the local finish is expected before the answer (see the class)."""
        if self.local_s is None or not outstanding or len(self.history) < 2:
            return True
        (t_old, a_old), (t_new, a_new) = self.history[0], self.history[-1]
        if t_new - t_old <= 0 or a_new <= a_old:
            return True  # no measured progress: the stall rule decides soon anyway
        rate = (a_new - a_old) / (t_new - t_old)  # bytes/s the link carried lately
        left = max(self.total_bytes - a_new, 0) / rate + self.server_s
        return left > self.local_s

    def _start(self, now: float, reason: str) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.started = True
        self.reason = reason
        self.t_hedge = now
        self.at = now + self.step
        if not self.submit(self._run_local):
            # every hedge thread is busy: give the network up, finish in this thread
            self.winner = "local"
            self.inline = True
            raise _LocalWon

    def _run_local(self) -> None:
        """The hedge thread: the tail on the device; claim the request if still open."""
        device, tail, tensors = self.device, self.tail, self.tensors
        assert device is not None and self.lock is not None and self.done is not None
        t = time.perf_counter()
        try:
            out = device(lambda: tail(tensors))
        except BaseException as e:  # reported by the caller if the network fails too
            self.error = e
            out = None
        self.local_run_s = time.perf_counter() - t
        with self.lock:
            self.out = out
            if self.winner is None and self.error is None:
                self.winner = "local"
                sock = self.sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # wakes the request's thread
        self.device = self.tail = self.tensors = None
        self.done.set()

    def claim_network(self) -> bool:
        """The server's answer is complete: True if it wins (no local finish came first)."""
        if not self.started:
            return True
        assert self.lock is not None
        with self.lock:
            if self.winner is None:
                self.winner = "network"
            return self.winner == "network"

    def wait_local(self) -> Any:
        """After the network failed while the hedge ran: its result (or its error).

        The tail the fallback would have run anyway is already running: waiting
        for it is never longer than running it again.
        """
        assert self.done is not None and self.lock is not None
        with self.lock:
            if self.winner is None:
                self.winner = "failed"  # the hedge thread leaves the socket alone
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.out


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Job:
    """One frame of a stream, from its head to its answer."""

    def __init__(self, partition: Partition, bw: float | None, probed: bool, t_start: float):
        self.partition = partition
        self.bw = bw
        self.probed = probed
        self.t_start = t_start
        self.device_s = 0.0
        self.tail: Any = None
        self.sent: dict[str, Any] | None = None
        self.request_id = 0
        self.parts: list[Any] | None = None
        self.pipe: _Pipe | None = None
        # set by the pipe's threads
        self.done = threading.Event()
        self.overlapped = False
        self.t_send = 0.0
        self.t_recv = 0.0
        self.frame_bytes = 0
        self.reply_bytes = 0
        self.server_s = 0.0
        self.error: BaseException | None = None
        # the answer, once known
        self.out: Any = None
        self.record: RequestRecord | None = None


class _Pipe:
    """One connection carrying a stream: a sender and a receiver thread.

    Requests go out in submission order; the server answers them in order. Any
    failure (a socket error, an ``ERROR`` frame, a malformed answer, `fail`)
    ends the pipe: every unanswered job is marked with the error and released.
    """

    def __init__(
        self,
        conn: _Conn,
        timeout_s: float,
        decode: Callable[[W.MsgType, W.Payload], tuple[int, float, Any]],
    ) -> None:
        self.conn = conn
        self.sock = conn.sock
        self.max_frame_bytes = conn.max_frame_bytes
        # two threads share the socket: one fixed timeout, no per-call deadlines
        self.sock.settimeout(timeout_s)
        self.decode = decode
        self.error: BaseException | None = None
        self.reported = False
        self.lock = threading.Lock()
        self.unanswered: deque[_Job] = deque()
        self.last_progress = time.perf_counter()
        self.sendq: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.recvq: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self.send_loop, name="cic-stream-send", daemon=True),
            threading.Thread(target=self.recv_loop, name="cic-stream-recv", daemon=True),
        ]
        for t in self.threads:
            t.start()

    def submit(self, job: _Job) -> None:
        """Queue a job's request (its ``parts``) for sending."""
        job.pipe = self
        with self.lock:
            if self.error is not None:
                job.error = self.error
                job.done.set()
                return
            self.unanswered.append(job)
        self.sendq.put(job)

    def send_loop(self) -> None:
        try:
            while (job := self.sendq.get()) is not None and self.error is None:
                with self.lock:
                    job.overlapped = bool(self.unanswered) and self.unanswered[0] is not job
                parts, job.parts = job.parts or [], None
                job.t_send = time.perf_counter()
                job.frame_bytes = self.conn.send(W.MsgType.INFER, parts)
                del parts
                self.last_progress = time.perf_counter()
                self.recvq.put(job)
        except BaseException as e:
            self.fail(e)

    def recv_loop(self) -> None:
        try:
            while (job := self.recvq.get()) is not None and self.error is None:
                kind, payload = self.conn.read()
                job.reply_bytes = W.HEADER.size + payload.left
                request_id, job.server_s, job.out = self.decode(kind, payload)
                job.t_recv = self.last_progress = time.perf_counter()
                if request_id != job.request_id:
                    raise W.ProtocolError(W.ErrorCode.BAD_FRAME, "answer to another request")
                with self.lock:
                    self.unanswered.popleft()
                job.done.set()
        except BaseException as e:
            self.fail(e)

    def fail(self, exc: BaseException) -> None:
        """End the pipe: release every unanswered job with ``exc`` (the first error wins)."""
        with self.lock:
            if self.error is None:
                self.error = exc
            jobs = list(self.unanswered)
            self.unanswered.clear()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # unblocks the other thread
        for job in jobs:
            job.error = self.error
            job.done.set()
        self.sendq.put(None)
        self.recvq.put(None)

    def close(self, timeout_s: float) -> _Conn | None:
        """Stop the threads; return the connection if it is healthy and idle, else close it."""
        with self.lock:
            idle = self.error is None and not self.unanswered
        if idle:
            self.sendq.put(None)
            self.recvq.put(None)
        else:
            self.fail(ConnectionAbortedError("stream closed with requests unanswered"))
        for t in self.threads:
            t.join(timeout_s)
        if idle and self.error is None and not any(t.is_alive() for t in self.threads):
            return self.conn
        self.conn.close()
        return None


class _Conn:
    """An open connection whose handshake is done, and the reader of its frames.

    Over HTTP (``http`` set) there is no handshake: each request is a ``POST``
    whose body is the client's ``HELLO`` and the request's frame
    (`cic_fast.runtime.http`); `send` and `read` add and strip the HTTP parts.
    """

    def __init__(
        self,
        sock: socket.socket,
        limits: W.Limits,
        max_frame_bytes: int | None,
        http: H.HttpTarget | None = None,
        hello: bytes = b"",
    ):
        self.sock = sock
        self.limits = limits
        self.reader = W.SocketReader(sock, limits)
        self.max_frame_bytes = max_frame_bytes
        self.used = -float("inf")  # time.monotonic() of the last answer
        self.http = http
        self.hello = hello  # over HTTP: the HELLO frame that starts every body
        self.closing = False  # over HTTP: the server said it closes after its answer

    def send(
        self,
        msg_type: W.MsgType,
        parts: list[Any],
        *,
        deadline: float | None = None,
        tick: W.Tick | None = None,
    ) -> int:
        """Send one request frame (over HTTP: in a POST, after the HELLO); bytes written."""
        if self.http is None:
            return W.send_frame(self.sock, msg_type, parts, deadline=deadline, tick=tick)
        nbytes = sum(memoryview(p).nbytes for p in parts)
        body = len(self.hello) + W.HEADER.size + nbytes
        prefix = self.http.request_head(body) + self.hello
        return W.send_frame(self.sock, msg_type, parts, deadline=deadline, tick=tick, prefix=prefix)

    def read(
        self, *, deadline: float | None = None, tick: W.Tick | None = None
    ) -> tuple[W.MsgType, W.Payload]:
        """The next answer's frame type and payload (over HTTP: the body of the answer)."""
        if self.http is None:
            return self.reader.frame(deadline=deadline, tick=tick)
        kind, payload, headers = H.read_response(
            self.reader, self.limits, deadline=deadline, tick=tick
        )
        self.max_frame_bytes = H.frame_limit(headers) or self.max_frame_bytes
        self.closing = headers.get("connection", "").lower() == "close"
        return kind, payload

    def stale(self) -> bool:
        """True if the server closed it (or wrote unasked) since the last answer.

        An idle connection has nothing to read; anything readable now is an end
        of file, a reset, or bytes nobody asked for: the connection is not
        trusted for the next request.
        """
        return self.closing or self.reader.wait(0.0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort(self) -> None:
        """Close at once, discarding what is unsent (a reset, not a FIN after the data).

        For a connection given up mid-request: the rest of the request would
        only load the link, and the late answer is not wanted.
        """
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


def _small_payload(payload: W.Payload, what: str) -> bytes:
    """The payload of a control frame (ERROR, HELLO_OK, PROBE_OK): a few KiB at most."""
    if payload.left > _MAX_CONTROL_BYTES:
        raise W.ProtocolError(
            W.ErrorCode.TOO_LARGE, f"{what} frame of {payload.left} bytes from the server"
        )
    return bytes(payload.take(payload.left, what))


# A probe that took longer than this is shrunk for the next time.
_PROBE_SLOW_S = 0.05
# Frame bytes of one background probe besides its filler, both directions: an
# empty PROBE (12) and its PROBE_OK (20), the filler's header (12) and its
# PROBE_OK (20), and a reconnect's HELLO (12 + 2 + 64) and HELLO_OK (12 + 2 + 64
# + 8): 230, rounded up.
_PROBE_OVERHEAD_BYTES = 256
# Hedge threads per client: hedges whose answer came first cannot be cancelled
# and finish in the background; at most this many at once.
_HEDGE_THREADS = 2
# The prober's thread ends after this long with nothing to do.
_PROBER_IDLE_S = 30.0
# Control frames carry a string or two and an integer.
_MAX_CONTROL_BYTES = 4096
# Errors after which the server keeps the connection open (docs/protocol.md).
_KEEPS_CONNECTION = frozenset(
    {W.ErrorCode.BAD_PARTITION, W.ErrorCode.BAD_TENSOR, W.ErrorCode.INTERNAL}
)
# A connection that fails this way before any byte of the answer was stale:
# the server closed it (idle timeout, restart) while the client did not look.
_STALE_ERRORS = (EOFError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Client:
    """Run a model split between this device and a :class:`~cic_fast.runtime.server.Server`.

    Parameters
    ----------
    model : LayerGraph or torch.nn.Module
        The traced graph (``trace(model, example_inputs)``, with its program):
        nothing is traced again, and the model is the program's module (it shares
        the model's weights). Or the model, in eval mode, with the same weights as
        the server's, and ``example_inputs`` (traced once here unless ``graph`` is
        given).
    example_inputs : torch.Tensor or tuple, optional
        One forward call's arguments (the shapes the server accepts); only with a
        model.
    address : tuple of (str, int), or str
        The server. Required. ``(host, port)``: a `Server` over TCP (a session
        with a handshake); ``"http://host:port/path"``: the HTTP form of the
        protocol (`cic_fast.runtime.http`: a ``cic-fast serve --backend http``
        or ``--backend ray`` server, or anything behind an HTTP load balancer),
        stateless requests on a keep-alive connection. Decisions, estimates,
        deadlines, hedging and fallbacks are the same for both.
    device_profile, server_profile : Profile, optional
        Per-layer seconds on this device and on the server; required without
        ``planner``, checked against it with one.
    timeout_s : float
        Deadline of the network part of one request (connect, handshake, send,
        answer), however the bytes trickle; past it the device finishes the
        request. In a stream, the bound on every wait without progress.
    bandwidth_bps : float, optional
        Fix the bandwidth the decisions use (bits/s); None to estimate it.
    rtt_s : float, optional
        Round trip the Planner adds to offloading partitions (the planner's by
        default, else 0). The bandwidth samples subtract the round trip the
        client measures itself (see `BandwidthEstimator.add_transfer`).
    probe_bytes : int
        Size of the first bandwidth probe.
    probe_max_bytes : int
        Largest probe (see :meth:`probe`).
    retry_s : float
        After a failure, compute locally without contacting the server for about
        this long; each further failure in a row doubles it (with a random
        factor in [0.5, 1.5)), up to ``retry_max_s``. A success resets it.
    retry_max_s : float
        The longest back-off.
    refresh_s : float
        An estimate whose newest sample is older than this is refreshed by a
        probe (at most one per ``refresh_s``), in the background: the request
        that notices it is decided at once on the estimate it has. Only a
        client with no estimate at all probes before its decision.
    hedge_margin_s : float or None
        Hedging (default 0.1 s; None: off). An offloaded request whose network
        part has taken its predicted time (transfer + server + round trip, from
        the partition at the decision's bandwidth) plus this margin, or whose
        bytes made no progress for this long while some were outstanding (no
        acknowledgement from the peer, no answer byte), also starts the tail on
        the device, in a hedge thread; the first result is returned and the
        other dropped (``client.last.path``: ``"hedged-local"`` or
        ``"hedged-offload"``). When the local finish wins the connection is
        dropped with its late answer, and the estimator gets a censored sample
        (`BandwidthEstimator.add_censored`), which is not a server failure:
        no back-off. Bound: once the link stops carrying the request's bytes
        (an outage) the local finish starts within ``1.125 x hedge_margin_s``
        of the last byte it carried (exactly ``hedge_margin_s`` after the
        network part started if it carried none), so such a request takes
        about the device's head + tail time + ``1.125 x hedge_margin_s``. If
        every byte of the request was delivered before the outage, only the
        late rule applies (predicted network time + margin). An answer that
        comes in time costs no thread and no wake-up.
    probe_share : float
        Cost bound of the background probes (default 0.05; 0: off). While the
        decisions keep everything on the device for want of bandwidth (and
        ``bandwidth_bps`` is not fixed), a background thread probes the link on
        a connection of its own, sending at most ``probe_share x
        min_offload_bps`` bits per second on average, frames of both
        directions and reconnects counted (``min_offload_bps``: the lowest
        rate at which any offloading partition beats device-only, the
        planner's lowest offloading breakpoint; the probe only needs to tell
        whether the link is above it, so this is at most ``probe_share`` of
        any link worth offloading to). Each probe is a ping and
        ``background_probe_bytes`` of filler (at least 16 KiB, so that a token
        bucket's burst is a small part of it), every
        ``background_probe_period_s`` (at least ``probe_interval_s``, longer
        where 16 KiB needs it to keep the bound); one that has not finished by
        then is abandoned (connection dropped, a censored sample). Its rate is
        the bytes the peer acknowledged over the time the kernel saw the link
        busy (TCP_INFO, where Linux has it), which the device's own load does
        not stretch. Requests are never delayed by it.
    probe_interval_s : float
        The shortest period of the background probes (default 1 s): a recovery
        of the link is noticed about one or two periods after it.
    estimator : BandwidthEstimator, optional
        Defaults to a median over 8 samples of the last 30 s.
    graph : LayerGraph, optional
        With a model: ``trace(model, example_inputs)``, if already computed.
    planner : Planner, optional
        The splitting model of this graph (see
        `cic_fast.frontend.splitting.check_planner`); the Client uses its
        ``graph`` to price forced partitions and builds no Graph of its own.
    cache_size : int
        Heads kept built (LRU).
    limits : protocol.Limits, optional
        Limits on the frames received.
    device_runner : callable, optional
        ``runner(fn)`` runs every device-side computation ``fn()`` (the head, the
        whole model when nothing is offloaded, a local fallback tail) and returns
        its result; default ``fn()``. E.g. a runner that sleeps after each
        computation emulates a slower device. With hedging, a request's tail
        may run in a hedge thread, also while the next request's head runs (a
        hedge whose server answer came first finishes in the background).

    Attributes
    ----------
    min_offload_bps : float
        The lowest bandwidth at which the planner offloads anything (0: at any;
        inf: never).
    background_probe_bytes : int
        Filler bytes of one background probe.
    background_probe_period_s : float
        Seconds between the starts of two background probes.
    hedges : int
        Hedges started so far.
    probe_stats : dict
        Background probes so far: ``probes`` (started), ``bytes`` (frame bytes
        sent and received by them, handshakes included), ``abandoned``.

    Raises
    ------
    TypeError
        No ``address``; a model without ``example_inputs``; a LayerGraph given
        with ``example_inputs`` or another ``graph``; a ``device_runner`` that is
        not callable.
    ValueError
        A graph without a program (loaded from JSON); neither ``planner`` nor both
        profiles; profiles or a planner of another graph (or another ``rtt_s``);
        a bad ``timeout_s``, ``bandwidth_bps``, ``hedge_margin_s``,
        ``probe_share`` or ``probe_interval_s``.

    Examples
    --------
    >>> g = trace(model, x)  # doctest: +SKIP
    >>> planner = Planner.from_profiles(g, device_profile, server_profile)  # doctest: +SKIP
    >>> with Client(g, address=(host, port), planner=planner) as cli:  # doctest: +SKIP
    ...     y = cli.infer(x)
    """

    def __init__(
        self,
        model: torch.nn.Module | LayerGraph,
        example_inputs: Any = None,
        address: tuple[str, int] | str | None = None,
        *,
        device_profile: Profile | None = None,
        server_profile: Profile | None = None,
        timeout_s: float = 5.0,
        bandwidth_bps: float | None = None,
        rtt_s: float | None = None,
        probe_bytes: int = 16384,
        probe_max_bytes: int = 1 << 20,
        retry_s: float = 1.0,
        retry_max_s: float = 60.0,
        refresh_s: float = 10.0,
        hedge_margin_s: float | None = 0.1,
        probe_share: float = 0.05,
        probe_interval_s: float = 1.0,
        estimator: BandwidthEstimator | None = None,
        graph: LayerGraph | None = None,
        planner: Planner | None = None,
        cache_size: int = 16,
        limits: W.Limits | None = None,
        device_runner: DeviceRunner | None = None,
    ) -> None:
        if address is None:
            if (
                isinstance(example_inputs, tuple)
                and example_inputs[:1]
                and (isinstance(example_inputs[0], str))
            ):
                raise TypeError(
                    "the address is in example_inputs' place: with a LayerGraph, "
                    "give address=(host, port)"
                )
            raise TypeError("Client needs the server's address=(host, port)")
        endpoint, http = H.parse_address(address)
        for name, value in (
            ("timeout_s", timeout_s),
            ("retry_s", retry_s),
            ("retry_max_s", retry_max_s),
            ("refresh_s", refresh_s),
        ):
            positive = name == "timeout_s"
            if not (isinstance(value, int | float) and not isinstance(value, bool)):
                raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
            if not (value > 0 if positive else value >= 0) or value != value:
                raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, not {value}")
        if bandwidth_bps is not None and not bandwidth_bps > 0:
            raise ValueError("bandwidth_bps must be > 0 or None")
        checks: tuple[tuple[str, float | None, str], ...] = (
            ("hedge_margin_s", hedge_margin_s, "a number of seconds > 0, or None"),
            ("probe_share", probe_share, "a number in [0, 1]"),
            ("probe_interval_s", probe_interval_s, "a number of seconds > 0"),
        )
        for name, v, ok in checks:
            if v is None and name == "hedge_margin_s":
                continue
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise TypeError(f"{name} must be {ok}, not {type(v).__name__}")
            if not math.isfinite(v) or (not 0 <= v <= 1 if name == "probe_share" else not v > 0):
                raise ValueError(f"{name} must be {ok}, not {v}")
        if device_runner is not None and not callable(device_runner):
            raise TypeError("device_runner must be a callable runner(fn) -> fn()")
        if planner is None and (device_profile is None or server_profile is None):
            raise ValueError(
                "Client needs planner=, or both device_profile= and server_profile= "
                "(the costs the decisions use)"
            )
        self.model, self.graph, _ = as_traced(model, example_inputs, graph=graph)
        for prof in (device_profile, server_profile):
            if prof is not None:
                prof.check(self.graph)
        if planner is not None:
            check_planner(
                self.graph,
                planner,
                device_profile=device_profile,
                server_profile=server_profile,
                rtt_s=rtt_s,
            )
        else:
            assert device_profile is not None and server_profile is not None
            planner = Planner.from_profiles(
                self.graph, device_profile, server_profile, rtt_s=rtt_s or 0.0
            )
        self.planner = planner
        self.endpoint, self.http = endpoint, http
        self.address: tuple[str, int] | str = endpoint if http is None else http.url
        self.timeout_s = float(timeout_s)
        self.bandwidth_bps = bandwidth_bps
        self.rtt_s = planner.rtt_s
        self.probe_bytes = int(probe_bytes)
        self.probe_max_bytes = max(self.probe_bytes, int(probe_max_bytes))
        self._probe_size = self.probe_bytes
        self.retry_s = float(retry_s)
        self.estimator = estimator if estimator is not None else BandwidthEstimator()
        self.limits = limits or W.Limits()
        self.device_runner = device_runner
        self.fingerprint = traced_fingerprint(self.graph)
        hello = M.encode_hello(self.fingerprint)
        self._hello_frame = W.frame_header(W.MsgType.HELLO, len(hello)) + hello
        prog = self.graph.program
        assert prog is not None  # as_traced checked it
        self._out_spec, out_meta = prog.output_structure()
        self._out_meta = list(out_meta)
        self.cache_size = int(cache_size)
        self._parts: OrderedDict[bytes, tuple[Any, Any]] = OrderedDict()
        self._parts_lock = threading.Lock()
        # the same graph planned for the other objective, built on first use
        self._planners: dict[str, Planner] = {planner.objective: planner}
        self._planners_base = planner
        self._planners_lock = threading.Lock()
        self._checked: OrderedDict[bytes, None] = OrderedDict()  # masks known valid
        self._out_wire = {
            str(i): (str(dtype).removeprefix("torch."), tuple(shape))
            for i, (dtype, shape) in enumerate(self._out_meta)
        }
        self._conn: _Conn | None = None
        self.server_max_frame_bytes: int | None = None
        self.retry_max_s = float(retry_max_s)
        self.refresh_s = float(refresh_s)
        self._down_until = 0.0
        self._failures = 0
        self._last_probe = -float("inf")
        self._rng = random.Random()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self.last: RequestRecord | None = None
        self._device_total_s: float | None = None
        # hedging
        self.hedge_margin_s = None if hedge_margin_s is None else float(hedge_margin_s)
        self.hedges = 0
        self._hedges: _HedgePool | None = None
        # background probes: their cost bound, size and period
        self.probe_share = float(probe_share)
        self.probe_interval_s = float(probe_interval_s)
        self.min_offload_bps = min(
            (seg.lo_bps for seg in planner.segments if not seg.on_device.all()), default=math.inf
        )
        budget_bps = self.probe_share * self.min_offload_bps
        if 0 < budget_bps < math.inf:
            # as large as the budget allows in one interval, but a transfer the
            # estimator takes as a sample, and no larger than any probe
            fill = int(budget_bps * self.probe_interval_s / 8) - _PROBE_OVERHEAD_BYTES
            # at least _PROBE_MIN_FILL: a token bucket's burst (a tbf's few KB, a
            # cell's grant) passes at once, and must be a small part of a sample
            size = max(fill, self.estimator.min_bytes, _PROBE_MIN_FILL)
            size = min(size, self.probe_max_bytes)
            period = max(self.probe_interval_s, 8 * (size + _PROBE_OVERHEAD_BYTES) / budget_bps)
        else:
            size, period = 0, math.inf
        self.background_probe_bytes = size
        self.background_probe_period_s = period
        self.probe_stats = {"probes": 0, "bytes": 0, "abandoned": 0}
        self._probe_cv = threading.Condition(threading.Lock())
        self._prober: threading.Thread | None = None
        self._probe_until = 0.0  # background probes wanted until (monotonic)
        self._probe_refresh = False  # one refresh probe wanted
        self._probe_stop = False
        self._probed_bg = False  # a background probe finished since the last decision
        self._pconn: _Conn | None = None  # the prober's connection (its thread's)

    # -- connection ----------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (the next request reconnects) and stop the background work.

        The background prober stops (its connection is shut down, which ends a
        probe under way) and the idle hedge threads end; a hedge still running
        ends when its tail does. A later request starts them again if needed.
        """
        with self._probe_cv:
            self._probe_stop = True
            prober, self._prober = self._prober, None
            pconn = self._pconn
            self._probe_cv.notify_all()
        if pconn is not None:
            with contextlib.suppress(OSError):
                pconn.sock.shutdown(socket.SHUT_RDWR)
        if prober is not None and prober is not threading.current_thread():
            prober.join(self.timeout_s)
        with self._probe_cv:
            self._probe_stop = False
        with self._lock:
            self._drop_conn()
            pool, self._hedges = self._hedges, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop_conn(self, *, abort: bool = False) -> None:
        if self._conn is not None:
            if abort:
                self._conn.abort()
            else:
                self._conn.close()
            self._conn = None

    def _hedge_running(self) -> bool:
        """True while the local finish of an earlier hedge still runs (it lost, or is late)."""
        pool = self._hedges
        return pool is not None and pool.running() > 0

    def _submit_hedge(self, fn: Callable[[], None]) -> bool:
        """Run a hedge's local finish in a hedge thread (the pool made when first needed)."""
        with self._lock:
            if self._hedges is None:
                self._hedges = _HedgePool(_HEDGE_THREADS)
            self.hedges += 1
            return self._hedges.submit(fn)

    def _open(self, deadline: float, tick: _Hedge | None = None) -> _Conn:
        """A new connection, handshake done by ``deadline`` (watched by ``tick``)."""
        if tick is not None:
            tick.connecting = True  # a connect and a handshake wait on the link alone
        sock = W.connect(self.endpoint, deadline=deadline, tick=tick)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.http is not None:  # stateless: each request carries the fingerprint
                if tick is not None:
                    tick.connecting = False
                return _Conn(sock, self.limits, None, self.http, self._hello_frame)
            conn = _Conn(sock, self.limits, None)
            hello = [M.encode_hello(self.fingerprint)]
            W.send_frame(sock, W.MsgType.HELLO, hello, deadline=deadline, tick=tick)
            kind, payload = conn.reader.frame(deadline=deadline, tick=tick)
            conn.reader.tick = None
            if tick is not None:
                tick.connecting = False
            body = _small_payload(payload, kind.name)
            if kind == W.MsgType.ERROR:
                raise M.decode_error(body, self.limits)
            if kind != W.MsgType.HELLO_OK:
                raise W.ProtocolError(W.ErrorCode.UNKNOWN_TYPE, f"expected HELLO_OK, got {kind}")
            fp, conn.max_frame_bytes = M.decode_hello(body, self.limits, reply=True)
            if fp != self.fingerprint:
                raise W.ProtocolError(W.ErrorCode.FINGERPRINT, "server has another model")
        except BaseException:
            sock.close()
            raise
        return conn

    def _connection(self, deadline: float, tick: _Hedge | None = None) -> tuple[_Conn, bool]:
        """The open connection, or a new one: (connection, True if just opened).

        A connection the server closed while it was idle (its idle timeout, a
        restart) is noticed here and replaced before anything is sent on it.
        """
        conn = self._conn
        # one that answered less than a second ago is not looked at: the resend in
        # `_exchange` covers a close that races with the request anyway
        if conn is not None and time.monotonic() - conn.used > 1.0 and conn.stale():
            self._drop_conn()
            conn = None
        if conn is None:
            conn = self._conn = self._open(deadline, tick)
            self.server_max_frame_bytes = conn.max_frame_bytes
            return conn, True
        return conn, False

    def _exchange(
        self,
        msg_type: W.MsgType,
        parts: list[Any],
        nbytes: int,
        deadline: float,
        read: Callable[[W.MsgType, W.Payload], Any],
        tick: _Hedge | None = None,
    ) -> tuple[Any, int, int, float]:
        """Send one frame and read its answer with ``read(kind, payload)``.

        Returns (what ``read`` returned, bytes sent, bytes received, seconds from
        the first byte sent to the last byte received). A connection found dead
        before any byte of the answer arrived (the server closed it between
        requests) is replaced and the frame sent again, once: requests have no
        side effects on the server, so a resend is safe. ``tick`` (a hedge)
        watches every wait, the connect and handshake included.
        """
        for attempt in (0, 1):
            conn, fresh = self._connection(deadline, tick)
            self._check_frame(nbytes, conn.max_frame_bytes)
            if tick is not None:
                tick.bind(conn.sock)
            t1 = time.perf_counter()
            try:
                conn.reader.frame_started = False
                sent = conn.send(msg_type, parts, deadline=deadline, tick=tick)
                kind, payload = conn.read(deadline=deadline, tick=tick)
            except _STALE_ERRORS:
                if tick is not None and tick.winner == "local":
                    raise _LocalWon from None  # the hedge shut the socket down
                self._drop_conn()
                if fresh or attempt or conn.reader.frame_started:
                    raise
                continue
            received = W.HEADER.size + payload.left
            try:
                out = read(kind, payload)
            finally:
                conn.reader.tick = None
            conn.used = time.monotonic()
            return out, sent, received, time.perf_counter() - t1
        raise AssertionError("unreachable")

    def _fail(self, exc: BaseException, *, keep: bool = False) -> str:
        """After a failure: drop the connection (unless ``keep``) and back off.

        The back-off doubles with each failure in a row (``retry_s``, 2 x, 4 x,
        ... up to ``retry_max_s``), times a random factor in [0.5, 1.5) so that
        devices that lost the same server do not come back in step.
        """
        if not keep:
            self._drop_conn()
        self._failures += 1
        wait = backoff_s(self._failures, self.retry_s, self.retry_max_s, self._rng)
        self._down_until = time.monotonic() + wait
        return _describe(exc)

    @property
    def server_down(self) -> bool:
        """True while the client is backing off after a failure."""
        return time.monotonic() < self._down_until

    @property
    def retry_in_s(self) -> float:
        """Seconds until the client contacts the server again (0 when it would now)."""
        return max(0.0, self._down_until - time.monotonic())

    def probe(self) -> float | None:
        """Time a transfer of filler bytes; add it as a sample; return the estimate.

        The probe starts at ``probe_bytes`` and grows (x4, up to
        ``probe_max_bytes``) while its time is mostly latency, so that on a
        fast link it still measures the rate; the size that worked is where
        the next probe starts (halved when a probe took over 50 ms).

        A probe without filler first measures the round trip that every transfer
        pays (not the handshake's: a new connection's first exchange also pays
        for setting it up, in the kernel, in a proxy, in the server). Returns
        None (and backs off) if the server cannot be reached.

        This probe runs on the client's connection, under its lock: requests
        wait for it. The client calls it itself only when it has no estimate at
        all; its other probes run in the background (see ``refresh_s`` and
        ``probe_share``).
        """
        with self._lock:
            self._last_probe = time.monotonic()
            deadline = self._last_probe + self.timeout_s
            exchange, kernel = self._kernel_timed()
            try:
                self._probe_with(exchange, deadline, kernel=kernel)
            except _NETWORK_ERRORS as e:
                self._fail(e)
                return None
            self._failures = 0
            return self.estimator.estimate()

    def _probe_with(
        self,
        exchange: Callable[..., tuple[Any, int, int, float]],
        deadline: float,
        *,
        size: int = 0,
        kernel: Callable[[], tuple[int, float] | None] | None = None,
        alone: bool = False,
    ) -> None:
        """A ping (the latency), then filler (a rate sample), through ``exchange``.

        ``size`` 0: start at the size that worked last and grow while the probe
        is mostly latency (see `probe`); else one probe of ``size`` bytes,
        recorded even if it is mostly latency (as a lower bound of the rate).
        ``kernel()``, if given, returns the last exchange's (bytes acknowledged,
        seconds the link was busy) as the kernel timed them: when the link was
        busy at least `_KERNEL_MIN_BUSY_S`, that is the sample (bytes over busy
        time: no latency to take off, and no error from this process's own
        scheduling, which a device busy computing stretches by tens of ms).
        ``alone``: that sample alone may show a step (`BandwidthEstimator.add`).
        """
        _, _, _, seconds = exchange(W.MsgType.PROBE, [], 0, deadline, self._read_probe_ok(0))
        self.estimator.add_latency(seconds)
        while True:
            n = size or self._probe_size
            _, sent, received, seconds = exchange(
                W.MsgType.PROBE, [bytes(n)], n, deadline, self._read_probe_ok(n)
            )
            last = bool(size) or n >= self.probe_max_bytes
            timed = kernel() if kernel is not None else None
            if (
                timed is not None
                and timed[1] >= _KERNEL_MIN_BUSY_S
                and timed[0] >= self.estimator.min_bytes
            ):
                self.estimator.add(8.0 * timed[0], timed[1], alone=alone)
                return
            if self.estimator.add_transfer(8.0 * (sent + received), seconds, force=last):
                if not size and seconds > _PROBE_SLOW_S:  # slow link: smaller next time
                    self._probe_size = max(self.probe_bytes, n // 2)
                return
            if last:
                return
            # mostly latency: a larger probe next, until its wire time shows
            self._probe_size = min(self.probe_max_bytes, 4 * n)

    # -- background probes ---------------------------------------------------------

    def _note_decision(self, partition: Partition, bw: float | None, refresh: bool) -> None:
        """Start or stop the background probes after a decision.

        A decision that keeps everything on the device for want of bandwidth
        (estimated, not fixed; the server not backed off) asks for budgeted
        probes during the estimator's ``max_age_s``; an offloading one stops
        them, and asks for one refresh probe if the estimate is old.
        """
        if partition.offloads:
            if self._probe_until:
                self._probe_until = 0.0
            if refresh:
                with self._probe_cv:
                    self._last_probe = time.monotonic()
                    self._probe_refresh = True
                    self._wake_prober()
        elif (
            bw is not None
            and self.bandwidth_bps is None
            and self.background_probe_period_s < math.inf
            and not self.server_down
        ):
            now = time.monotonic()
            with self._probe_cv:
                was = self._probe_until
                self._probe_until = now + self.estimator.max_age_s
                if was <= now or self._prober is None:
                    self._wake_prober()

    def _wake_prober(self) -> None:
        """Start the prober's thread if needed, and wake it (``_probe_cv`` held)."""
        if self._probe_stop:
            return
        if self._prober is None:
            self._prober = threading.Thread(target=self._probe_loop, name="cic-probe", daemon=True)
            self._prober.start()
        self._probe_cv.notify_all()

    def _probe_loop(self) -> None:
        """The prober's thread: budgeted probes while wanted, refresh probes on demand."""
        me = threading.current_thread()
        next_t = 0.0
        idle_since = time.monotonic()
        try:
            while True:
                with self._probe_cv:
                    while True:
                        if self._probe_stop or self._prober is not me:
                            return
                        now = time.monotonic()
                        down = self.server_down
                        budgeted = now < self._probe_until and not down
                        if budgeted:
                            self._probe_refresh = False  # the budgeted probes refresh it
                            idle_since = now
                            if now >= next_t:
                                break
                            wait = next_t - now
                        elif self._probe_refresh and not down:
                            self._probe_refresh = False
                            break
                        else:
                            wait = _PROBER_IDLE_S - (now - idle_since)
                            if wait <= 0:
                                self._prober = None
                                return
                        # bounded: a back-off that ends is not notified
                        self._probe_cv.wait(min(wait, 1.0))
                t = time.monotonic()
                self._background_probe(budgeted)
                if budgeted:
                    next_t = t + self.background_probe_period_s
                idle_since = time.monotonic()
        finally:
            with self._probe_cv:
                conn, self._pconn = self._pconn, None
                if self._prober is me:
                    self._prober = None
            if conn is not None:
                conn.close()

    def _background_probe(self, budgeted: bool) -> None:
        """One probe on the prober's connection; never raises.

        Budgeted: one ``background_probe_bytes`` probe, abandoned (connection
        reset, censored sample) if not done within ``background_probe_period_s``
        (or ``timeout_s``). Else a refresh probe like `probe`, within ``timeout_s``.
        """
        t = time.monotonic()
        self._last_probe = t
        limit = min(self.timeout_s, self.background_probe_period_s) if budgeted else self.timeout_s
        deadline = t + limit
        counter = W.Tick()  # never called (at = inf): counts the bytes, sends resumably
        stats = self.probe_stats
        stats["probes"] += 1

        def exchange(
            msg_type: W.MsgType,
            parts: list[Any],
            nbytes: int,
            deadline: float,
            read: Callable[[W.MsgType, W.Payload], Any],
        ) -> tuple[Any, int, int, float]:
            conn = self._pconn
            if conn is not None and conn.stale():
                conn.close()
                conn = None
            if conn is None:
                conn = self._open(deadline)
                with self._probe_cv:
                    self._pconn = conn
                stats["bytes"] += 2 * (2 * W.HEADER.size + 2 + len(self.fingerprint)) + 8
                counter.sent = counter.received = 0
            self._check_frame(nbytes, conn.max_frame_bytes)
            t1 = time.perf_counter()
            before = _tcp_sent(conn.sock)
            sent = conn.send(msg_type, parts, deadline=deadline, tick=counter)
            kind, payload = conn.read(deadline=deadline, tick=counter)
            received = W.HEADER.size + payload.left
            try:
                out = read(kind, payload)
            finally:
                conn.reader.tick = None
            after = _tcp_sent(conn.sock)
            timed[0] = (
                None
                if before is None or after is None
                else (after[0] - before[0], after[1] - before[1])
            )
            stats["bytes"] += sent + received
            return out, sent, received, time.perf_counter() - t1

        timed: list[tuple[int, float] | None] = [None]  # the last exchange's, by the kernel
        try:
            size = self.background_probe_bytes if budgeted else 0
            self._probe_with(exchange, deadline, size=size, kernel=lambda: timed[0], alone=budgeted)
        except _NETWORK_ERRORS as e:
            with self._probe_cv:
                conn, self._pconn = self._pconn, None
            unacked = None if conn is None else _unacked(conn.sock)
            if conn is not None:
                conn.abort()
            if isinstance(e, TimeoutError):
                # a slow or dead link, not a failed server: a censored sample if
                # a probe frame went out (a connect that waits measures nothing)
                stats["abandoned"] += 1
                delivered = counter.received + max(0, counter.sent - (unacked or 0))
                if counter.sent:
                    self.estimator.add_censored(8.0 * delivered, time.monotonic() - t)
                stats["bytes"] += delivered
            elif not self._probe_stop and not (
                isinstance(e, W.RemoteError) and e.code == W.ErrorCode.BUSY
            ):
                # the server is unreachable or broken: the requests back off too
                # (a BUSY only says that this extra connection is one too many)
                with self._lock:
                    self._fail(e, keep=True)
            return
        self._probed_bg = True

    def _read_probe_ok(self, n: int) -> Callable[[W.MsgType, W.Payload], None]:
        def read(kind: W.MsgType, payload: W.Payload) -> None:
            body = _small_payload(payload, kind.name)
            if kind == W.MsgType.ERROR:
                raise M.decode_error(body, self.limits)
            if kind != W.MsgType.PROBE_OK:
                raise W.ProtocolError(W.ErrorCode.UNKNOWN_TYPE, f"expected PROBE_OK, got {kind}")
            if M.decode_probe_ok(body, self.limits) != n:
                raise W.ProtocolError(W.ErrorCode.BAD_FRAME, "probe size mismatch")

        return read

    def _add_sample(self, nbytes: int, seconds: float) -> None:
        self.estimator.add_transfer(8.0 * nbytes, seconds)

    # -- device computation ------------------------------------------------------

    def _device(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the device: in inference mode, through ``device_runner``."""
        import torch

        def call() -> Any:
            # shared side of the gate: a torch.export in another thread waits for it
            with torch.inference_mode(), MODULE_GATE:
                return fn()

        runner = self.device_runner
        return call() if runner is None else runner(call)

    def _parts_for(self, on_device: np.ndarray) -> tuple[Any, Any]:
        key = W.pack_mask(on_device)
        with self._parts_lock:
            parts = self._parts.get(key)
            if parts is None:
                head, tail, _ = build_parts(self.graph, on_device)
                parts = (head, tail)
                self._parts[key] = parts
                while len(self._parts) > self.cache_size:
                    self._parts.popitem(last=False)
            self._parts.move_to_end(key)
            return parts

    def _check_partition(self, on_device: Any) -> np.ndarray:
        """``on_device`` checked (`cic_fast.core.cost.check_partition`), as a fresh array.

        The graph never changes, so a mask checked once is valid for good: the
        last ``cache_size`` distinct masks skip the check (a forced partition is
        usually the same request after request).
        """
        g = self.graph
        on = np.asarray(on_device)
        key = on.tobytes() if on.dtype == np.bool_ and on.shape == (g.n_nodes,) else None
        if key is not None:
            with self._parts_lock:
                if key in self._checked:
                    return on.copy()
        on = cost.check_partition(g.edges, g.n_nodes, on_device, names=g.names)
        if key is not None:
            with self._parts_lock:
                self._checked[key] = None
                while len(self._checked) > self.cache_size:
                    self._checked.popitem(last=False)
        return on

    def _device_only_s(self) -> float:
        """The model's device time in the cost model (computed once; the graph is fixed)."""
        t = self._device_total_s
        if t is None:
            on = device_only(self.graph.n_nodes)
            t = self._device_total_s = float(self.planner.graph.evaluate(on, 1.0, 0.0).device_s)
        return t

    def _price(self, on: np.ndarray, bw: float | None) -> Partition:
        """Price a checked partition (1 Gbit/s when no bandwidth is known)."""
        return self.planner.graph.evaluate(on, bw or 1e9, self.rtt_s)

    # -- inference -----------------------------------------------------------------

    def decide(self) -> tuple[Partition, float | None, bool]:
        """The partition for the next request: (partition, bandwidth used, probed).

        Probes first (synchronously, see `probe`) only when there is no
        estimate. An estimate whose newest sample (or the round trip it
        subtracts) is older than ``refresh_s`` gets a refresh probe in the
        background (at most one per ``refresh_s``), and a decision that keeps
        everything on the device starts the budgeted background probes (see
        ``probe_share``): neither delays this request. ``probed`` is also True
        when a background probe finished since the previous decision.
        """
        probed, self._probed_bg = self._probed_bg, False
        refresh = False
        bw = self.bandwidth_bps
        if bw is None:
            bw = self.estimator.estimate()
            if bw is None:
                if not self.server_down:
                    bw = self._first_probe()
                    probed = probed or bw is not None
            elif time.monotonic() - self._last_probe >= self.refresh_s:
                age = self.estimator.age_s()
                refresh = (age is not None and age > self.refresh_s) or (
                    self.estimator.latency_s() is None
                )
        partition = self._decide_at(bw)
        self._note_decision(partition, bw, refresh)
        return partition, bw, probed

    def _kernel_timed(
        self,
    ) -> tuple[Callable[..., tuple[Any, int, int, float]], Callable[[], tuple[int, float] | None]]:
        """`_exchange`, and a function giving what the kernel timed of its last call.

        See `_probe_with`: (bytes acknowledged, seconds busy) on the connection,
        None when the exchange opened or replaced it.
        """
        timed: list[tuple[int, float] | None] = [None]

        def exchange(*args: Any) -> tuple[Any, int, int, float]:
            conn = self._conn
            before = None if conn is None else _tcp_sent(conn.sock)
            out = self._exchange(*args)
            same = conn is not None and self._conn is conn
            after = _tcp_sent(conn.sock) if same and conn is not None else None
            timed[0] = (
                None
                if before is None or after is None
                else (after[0] - before[0], after[1] - before[1])
            )
            return out

        return exchange, lambda: timed[0]

    def _first_probe(self) -> float | None:
        """The synchronous probe of a decision without an estimate, bounded by the margin.

        With hedging on, the request it precedes would wait on a dead link for
        up to ``timeout_s`` (the first request of a client started in an outage
        took 2.8 s on a 0.8 s device); bounded by ``hedge_margin_s`` like any
        request, it costs at most that. A probe that needs longer (a slow link:
        16 KiB at 1 Mbit/s is 0.13 s) is no failure: this request runs on the
        device, and the probe goes on in the background with ``timeout_s``.
        """
        if self.hedge_margin_s is None:
            return self.probe()
        with self._lock:
            self._last_probe = time.monotonic()
            deadline = self._last_probe + min(self.timeout_s, self.hedge_margin_s)
            exchange, kernel = self._kernel_timed()
            try:
                self._probe_with(exchange, deadline, kernel=kernel)
            except TimeoutError:
                self._drop_conn(abort=True)  # mid-frame: not reusable
                with self._probe_cv:
                    self._probe_refresh = True
                    self._wake_prober()
                return None
            except _NETWORK_ERRORS as e:
                self._fail(e)
                return None
            self._failures = 0
            return self.estimator.estimate()

    def planner_for(self, objective: str | None) -> Planner:
        """The Planner deciding for ``objective`` (None: `planner`, whatever its objective).

        ``"latency"`` or ``"throughput"``: `planner` if it has that objective, else
        the same graph, costs and rtt planned for it (built once, on first use,
        then shared by every thread).
        """
        if objective is None:
            return self.planner
        objective = check_objective(objective)
        base = self.planner
        with self._planners_lock:
            if self._planners_base is not base:  # planner was replaced: start over
                self._planners_base = base
                self._planners = {base.objective: base}
            p = self._planners.get(objective)
            if p is None:
                p = self._planners[objective] = base.with_objective(objective)
            return p

    def _decide_at(self, bw: float | None, planner: Planner | None = None) -> Partition:
        planner = planner or self.planner
        if bw is None or self.server_down:
            on = device_only(self.graph.n_nodes)
            return planner.graph.evaluate(on, bw or 1.0, self.rtt_s)
        return planner.decide(bw)

    def infer(self, *inputs: Any) -> Any:
        """Run the model on ``inputs``, split at the current bandwidth.

        Returns
        -------
        Any
            Exactly what ``model(*inputs)`` returns (computed in inference mode);
            on a network failure the device computes the rest of the model.
        """
        with self._lock:
            t_start = time.perf_counter()
            partition, bw, probed = self.decide()
            return self._run(partition, bw, probed, t_start, inputs)

    def infer_partition(self, on_device: Any, *inputs: Any) -> Any:
        """Like :meth:`infer`, with a given partition instead of the Planner's.

        For experiments and baselines (best single split, full min-cut, ...).  The
        partition is priced at ``bandwidth_bps`` or the current estimate (no probe).

        Raises
        ------
        ValueError
            If ``on_device`` is not a valid partition of the model's graph.
        """
        on = self._check_partition(on_device)
        with self._lock:
            t_start = time.perf_counter()
            bw = self.bandwidth_bps or self.estimator.estimate()
            return self._run(self._price(on, bw), bw, False, t_start, inputs)

    def _run(
        self,
        partition: Partition,
        bw: float | None,
        probed: bool,
        t_start: float,
        inputs: tuple[Any, ...],
    ) -> Any:
        import torch

        with torch.inference_mode():
            t0 = time.perf_counter()
            if not partition.offloads:
                out = self._device(lambda: self.model(*inputs))
                self.last = _local_record(partition, self.server_down, bw, probed, t_start, t0)
                return out
            head, tail = self._parts_for(partition.on_device)
            sent = self._device(lambda: head(*inputs))
            if self.server_down:
                err = "server unreachable recently: not retried yet"
                return self._local(tail, sent, partition, bw, probed, t_start, t0, err)
            request_id = next(self._ids)
            try:
                wire = dict(head.codec.flatten(sent))
                parts, nbytes = M.encode_request(request_id, partition.on_device, wire)
            except (TypeError, ValueError) as e:  # unlike the trace, or a dtype the wire lacks
                return self._local(tail, sent, partition, bw, probed, t_start, t0, str(e))
            device_s = time.perf_counter() - t0
            # timeout_s bounds the whole network part: connect, handshake, send, answer
            t_net = time.monotonic()
            deadline = t_net + self.timeout_s
            hedge = None
            if self.hedge_margin_s is not None:
                # the late rule needs a prediction, which needs a bandwidth
                net_s = partition.transfer_s + partition.server_s + partition.rtt_s
                hedge = _Hedge(
                    self._device,
                    self._submit_hedge,
                    tail,
                    sent,
                    self.hedge_margin_s,
                    net_s if bw else math.inf,
                    t_net,
                    local_s=max(self._device_only_s() - partition.device_s, 0.0),
                    total_bytes=W.HEADER.size + nbytes,
                    server_s=partition.server_s + partition.rtt_s,
                    busy=self._hedge_running,
                )
            try:
                (got_id, server_s, out), frame_bytes, reply_bytes, seconds = self._exchange(
                    W.MsgType.INFER, parts, nbytes, deadline, self._read_result, hedge
                )
                if got_id != request_id:
                    raise W.ProtocolError(W.ErrorCode.BAD_FRAME, "answer to another request")
            except _LocalWon:
                assert hedge is not None
                return self._hedged_local(hedge, partition, bw, probed, t_start, device_s)
            except _NETWORK_ERRORS as e:
                if hedge is not None and hedge.winner == "local":  # its shutdown woke us
                    return self._hedged_local(hedge, partition, bw, probed, t_start, device_s)
                # a refused request (BUSY, BAD_PARTITION, ...) keeps the connection
                keep = isinstance(e, W.RemoteError) and (
                    e.code in _KEEPS_CONNECTION or e.code == W.ErrorCode.BUSY
                )
                err = self._fail(e, keep=keep)
                if hedge is not None and hedge.started:
                    out = hedge.wait_local()  # the tail is running already
                    self.last = _local_record(partition, True, bw, probed, t_start, t0, err)
                    return out
                return self._local(tail, sent, partition, bw, probed, t_start, t0, err)
            if hedge is not None and not hedge.claim_network():
                return self._hedged_local(hedge, partition, bw, probed, t_start, device_s)
            self._failures = 0
            t3 = time.perf_counter()
            transfer_s = max(seconds - server_s, 0.0)
            self._add_sample(frame_bytes + reply_bytes, transfer_s)
            self.last = RequestRecord(
                partition=partition,
                fallback=False,
                bytes_sent=int(partition.bytes_sent),
                bandwidth_estimate_bps=bw,
                device_s=device_s,
                transfer_s=transfer_s,
                server_s=server_s,
                total_s=t3 - t_start,
                probed=probed,
                done_s=t3,
                path="hedged-offload" if hedge is not None and hedge.started else "offload",
                predicted_s=partition.latency_s,
            )
            return out

    def _hedged_local(
        self,
        hedge: _Hedge,
        partition: Partition,
        bw: float | None,
        probed: bool,
        t_start: float,
        device_s: float,
    ) -> Any:
        """The local finish won: drop the connection with its late answer; a censored sample.

        No back-off: a late answer or a stalled link is not a failed server, and
        the censored sample already keeps the next decisions off a slow link.
        """
        delivered = hedge.delivered()  # before the socket goes
        elapsed = time.monotonic() - hedge.t0
        self._drop_conn(abort=True)
        if hedge.sent and not hedge.connecting:
            # only a request whose data went out bounds the rate: a connect or
            # handshake that waits (a SYN behind a queue the link has not
            # drained yet, say) carried no data to measure
            self.estimator.add_censored(8.0 * delivered, elapsed)
        if hedge.inline:  # no hedge thread was free: the tail runs here
            tail, tensors = hedge.tail, hedge.tensors
            hedge.tail = hedge.tensors = None
            t = time.perf_counter()
            out = self._device(lambda: tail(tensors))
            local_s = time.perf_counter() - t
        else:
            out, local_s = hedge.out, hedge.local_run_s
        t3 = time.perf_counter()
        self.last = RequestRecord(
            partition=partition,
            fallback=True,
            bytes_sent=0,
            bandwidth_estimate_bps=bw,
            device_s=device_s + local_s,
            transfer_s=hedge.t_hedge - hedge.t0,
            server_s=0.0,
            total_s=t3 - t_start,
            probed=probed,
            error=f"hedged: {hedge.reason}",
            done_s=t3,
            path="hedged-local",
            predicted_s=partition.latency_s,
        )
        return out

    @staticmethod
    def _check_frame(nbytes: int, limit: int | None) -> None:
        if limit is not None and nbytes > limit:
            raise W.ProtocolError(
                W.ErrorCode.TOO_LARGE,
                f"request of {nbytes} bytes over the server's frame limit ({limit})",
            )

    def _local(
        self,
        tail: Any,
        sent: dict[str, Any],
        partition: Partition,
        bw: float | None,
        probed: bool,
        t_start: float,
        t0: float,
        error: str,
    ) -> Any:
        """Fallback: run the tail on the device too."""
        out = self._device(lambda: tail(sent))
        self.last = _local_record(partition, True, bw, probed, t_start, t0, error)
        return out

    def _read_result(self, kind: W.MsgType, payload: W.Payload) -> tuple[int, float, Any]:
        """A RESULT frame -> (request id, server seconds, the model's outputs).

        Each output tensor's header is checked against the model's (dtype,
        shape) before it is allocated; its bytes are received straight into it.
        """
        import torch

        if kind == W.MsgType.ERROR:
            raise M.decode_error(_small_payload(payload, "ERROR"), self.limits)
        if kind != W.MsgType.RESULT:
            raise W.ProtocolError(W.ErrorCode.UNKNOWN_TYPE, f"expected RESULT, got {kind}")
        with torch.inference_mode():
            request_id, server_s, leaves = M.read_result(payload, self._check_output)
        return request_id, server_s, self._restructure(leaves)

    def _check_output(self, name: str, dtype: str, dims: tuple[int, ...]) -> None:
        meta = self._out_wire.get(name)
        if meta is None or meta != (dtype, tuple(dims)):
            raise W.ProtocolError(
                W.ErrorCode.BAD_FRAME,
                f"server output {name!r} ({dtype}{list(dims)}) is not the model's",
            )

    def _restructure(self, leaves: list[Any]) -> Any:
        """The model's output structure; each leaf was checked by `_check_output`."""
        from torch.utils import _pytree

        if len(leaves) != len(self._out_meta):
            raise W.ProtocolError(
                W.ErrorCode.BAD_FRAME,
                f"server sent {len(leaves)} outputs, the model has {len(self._out_meta)}",
            )
        return _pytree.tree_unflatten(leaves, self._out_spec)

    # -- streams -------------------------------------------------------------------

    def stream(
        self,
        frames: Iterable[Any],
        *,
        on_device: Any = None,
        max_in_flight: int | None = None,
        objective: str | None = None,
    ) -> Generator[Any, None, None]:
        """Run the model on a sequence of frames, device, link and server pipelined.

        With ``objective="throughput"`` each frame is split where the stream's
        frame rate is highest: the partition with the smallest pipeline period
        ``max(device_s, transfer_s, server_s)`` at the current bandwidth
        (`Planner` with ``objective="throughput"``, built once per Client),
        rather than the lowest latency of one request.

        All frames go over one connection: while frame ``i`` is on the link or on
        the server, the device already computes the head of frame ``i + 1`` (a
        sender and a receiver thread do the network I/O). Outputs are yielded in
        frame order, and after each one ``client.last`` is that frame's
        :class:`RequestRecord` (``done_s`` gives the frame rate).

        Each frame is decided on its own through the Planner at the current
        bandwidth (``bandwidth_bps``, else the estimate, else the stream's last
        one; one probe before the first frame when none is known), unless
        ``on_device`` forces a partition; frames carry their partition, so
        consecutive frames may be split differently. Frames sent while an earlier
        one is unanswered give no bandwidth sample (their round trip includes the
        wait behind it).

        Falls back like :meth:`infer`: on any network failure every unanswered
        frame is finished on the device from the tensors its head produced
        (``fallback=True``), none is lost or answered twice, and later frames
        reconnect once ``retry_s`` has passed. Every answer is the model's output.
        Every wait is bounded by ``timeout_s`` without progress of the connection.
        Frames are not hedged (``hedge_margin_s`` applies to `infer` and
        `infer_partition`): in a pipeline a frame's answer waits behind the
        earlier ones by design, so lateness would need a per-frame prediction
        of that queue; ``path`` is ``"offload"``, ``"local"`` or
        ``"fallback-local"``.

        Parameters
        ----------
        frames : iterable
            Each item a tensor or a tuple of the model's positional inputs; read
            one at a time, as the device gets to it.
        on_device : array-like of bool, optional
            Force this partition for every frame (checked now).
        max_in_flight : int, optional
            Most frames whose head has run and whose output is not yielded yet
            (>= 1; 1 runs the frames one after another). A pipeline of device,
            link and server keeps all three busy from 3 on. Default: 3 for
            ``objective="throughput"``, else 2.
        objective : {None, "latency", "throughput"}, optional
            What each frame's decision optimises; None (default) decides with
            `planner` as `infer` does.

        Yields
        ------
        Any
            ``model(*frame)`` for each frame, in order. Closing the generator early
            (``close()``, or dropping it) drops the frames not yet yielded and
            closes the connection if answers are still due.

        Raises
        ------
        ValueError
            An invalid ``on_device``, ``max_in_flight`` < 1, or an unknown
            ``objective`` (raised by this call, before any frame is read).
        TypeError
            ``max_in_flight`` not an int, ``objective`` not a str; a frame that is
            neither a tensor nor a tuple (raised when it is read).
        """
        planner = self.planner_for(objective)
        if max_in_flight is None:
            max_in_flight = 3 if planner.objective == "throughput" else 2
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError("max_in_flight must be an int")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        forced = None if on_device is None else self._check_partition(on_device)
        return self._stream(iter(frames), forced, max_in_flight, planner)

    def _stream(
        self,
        frames: Iterator[Any],
        forced: np.ndarray | None,
        max_in_flight: int,
        planner: Planner,
    ) -> Generator[Any, None, None]:
        pending: deque[_Job] = deque()
        pipe: _Pipe | None = None
        bw_last: float | None = None
        last_done = -np.inf
        probed = False
        if (
            forced is None
            and self.bandwidth_bps is None
            and self.estimator.estimate() is None
            and not self.server_down
        ):
            probed = self.probe() is not None
        try:
            for frame in frames:
                args = as_args(frame)
                t_start = time.perf_counter()
                if pipe is not None and pipe.error is not None:
                    self._report(pipe)
                bw = self.bandwidth_bps or self.estimator.estimate() or bw_last
                bw_last = bw
                if forced is None:
                    partition = self._decide_at(bw, planner)
                    self._note_decision(partition, bw, False)
                else:
                    partition = self._price(forced, bw)
                job = _Job(partition, bw, probed, t_start)
                probed = False
                pipe = self._stream_head(job, args, pipe)
                pending.append(job)
                while pending and (pending[0].done.is_set() or len(pending) >= max_in_flight):
                    out, last_done = self._stream_finish(pending.popleft(), last_done)
                    yield out
            while pending:
                out, last_done = self._stream_finish(pending.popleft(), last_done)
                yield out
        finally:
            if pipe is not None:
                self._return_pipe(pipe)

    def _stream_head(self, job: _Job, args: tuple[Any, ...], pipe: _Pipe | None) -> _Pipe | None:
        """Run a frame's device part; queue its request on ``pipe`` (opened if needed).

        Returns the pipe later frames use. A frame that is not sent is finished
        here (``job.done`` set, ``job.record`` filled).
        """
        partition = job.partition
        t0 = time.perf_counter()
        if not partition.offloads:
            job.out = self._device(lambda: self.model(*args))
            self._stream_local(job, t0, None, fallback=self.server_down)
            return pipe
        head, job.tail = self._parts_for(partition.on_device)
        job.sent = sent = self._device(lambda: head(*args))
        if pipe is not None and pipe.error is not None:
            # failed: its frames finish locally; back off, and close it
            self._report(pipe)
            self._return_pipe(pipe)
            pipe = None
        if self.server_down:
            self._stream_fallback(job, t0, "server unreachable recently: not retried yet")
            return pipe
        job.request_id = next(self._ids)
        try:
            wire = dict(head.codec.flatten(sent))
            job.parts, nbytes = M.encode_request(job.request_id, partition.on_device, wire)
        except (TypeError, ValueError) as e:  # unlike the trace, or a dtype the wire lacks
            self._stream_fallback(job, t0, str(e))
            return pipe
        job.device_s = time.perf_counter() - t0
        try:
            if pipe is None:
                pipe = self._open_pipe()
            self._check_frame(nbytes, pipe.max_frame_bytes)
        except _NETWORK_ERRORS as e:
            # back off; a pipe already open keeps carrying the earlier frames
            with self._lock:
                self._fail(e, keep=True)
            job.parts = None
            self._stream_fallback(job, t0, _describe(e))
            return pipe
        pipe.submit(job)
        return pipe

    def _stream_local(self, job: _Job, t0: float, error: str | None, *, fallback: bool) -> None:
        t = time.perf_counter()
        job.record = RequestRecord(
            partition=job.partition,
            fallback=fallback,
            bytes_sent=0,
            bandwidth_estimate_bps=job.bw,
            device_s=t - t0,
            transfer_s=0.0,
            server_s=0.0,
            total_s=t - job.t_start,
            probed=job.probed,
            error=error,
            done_s=t,
            path="fallback-local" if fallback else "local",
            predicted_s=job.partition.latency_s,
        )
        job.sent = job.tail = None
        job.done.set()

    def _stream_fallback(self, job: _Job, t0: float, error: str) -> None:
        """Finish an offloading frame on the device from its head's tensors."""
        tail, sent = job.tail, job.sent
        job.out = self._device(lambda: tail(sent))
        self._stream_local(job, t0, error, fallback=True)

    def _open_pipe(self) -> _Pipe:
        """A pipe on the client's connection (taken over), or on a new one."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and conn.stale():
            conn.close()
            conn = None
        if conn is None:
            conn = self._open(time.monotonic() + self.timeout_s)
        return _Pipe(conn, self.timeout_s, self._read_result)

    def _return_pipe(self, pipe: _Pipe) -> None:
        """End a stream's pipe; keep its connection for later requests if it is idle."""
        conn = pipe.close(self.timeout_s)
        if conn is None:
            return
        with self._lock:
            if self._conn is None:
                self._conn = conn
                return
        conn.close()

    def _report(self, pipe: _Pipe) -> None:
        """Back off once after a pipe failed."""
        if not pipe.reported:
            pipe.reported = True
            with self._lock:
                self._fail(pipe.error or ConnectionError("stream failed"), keep=True)

    def _stream_finish(self, job: _Job, last_done: float) -> tuple[Any, float]:
        """Wait (bounded) for a frame's answer or finish it locally; set ``self.last``.

        Returns the frame's output and its ``done_s``.
        """
        pipe = job.pipe
        if job.record is None and pipe is not None:
            while not job.done.wait(self.timeout_s):
                if time.perf_counter() - pipe.last_progress >= self.timeout_s:
                    pipe.fail(TimeoutError(f"stream stalled: no progress for {self.timeout_s} s"))
            if job.error is not None:
                self._report(pipe)
                t0 = time.perf_counter() - job.device_s  # the head's time counts too
                self._stream_fallback(job, t0, _describe(job.error))
            else:
                transfer_s = max(job.t_recv - job.t_send - job.server_s, 0.0)
                if not job.overlapped:
                    self._add_sample(job.frame_bytes + job.reply_bytes, transfer_s)
                job.record = RequestRecord(
                    partition=job.partition,
                    fallback=False,
                    bytes_sent=int(job.partition.bytes_sent),
                    bandwidth_estimate_bps=job.bw,
                    device_s=job.device_s,
                    transfer_s=transfer_s,
                    server_s=job.server_s,
                    total_s=job.t_recv - job.t_start,
                    probed=job.probed,
                    done_s=job.t_recv,
                    path="offload",
                    predicted_s=job.partition.latency_s,
                )
                job.sent = job.tail = None
        record = job.record
        assert record is not None
        record.done_s = max(record.done_s, last_done)
        self.last = record
        out, job.out = job.out, None
        return out, record.done_s
