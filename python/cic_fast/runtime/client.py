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
   malformed answer) runs the tail itself: the caller always gets the model's output.

`Client.infer` runs one request (`Client.infer_partition` one with a given
partition); `Client.stream` pipelines a sequence of frames over one connection.
``client.last`` (a :class:`RequestRecord`) says what happened. Every computation
on the device goes through ``device_runner`` (to emulate a slower device).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import random
import socket
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
from cic_fast.core.planner import Planner
from cic_fast.frontend.cutting import build_parts
from cic_fast.frontend.fxsafety import MODULE_GATE
from cic_fast.frontend.profiling import Profile
from cic_fast.frontend.splitting import check_planner
from cic_fast.frontend.tracing import LayerGraph, as_args, as_traced
from cic_fast.runtime import messages as M
from cic_fast.runtime import wire as W
from cic_fast.runtime.estimator import BandwidthEstimator
from cic_fast.runtime.fingerprint import traced_fingerprint

if TYPE_CHECKING:
    import torch

__all__ = ["BandwidthEstimator", "Client", "DeviceRunner", "RequestRecord"]

#: ``runner(fn)`` runs one device-side computation ``fn()`` and returns its result.
DeviceRunner = Callable[[Callable[[], Any]], Any]

_NETWORK_ERRORS = (OSError, EOFError, W.ProtocolError, W.RemoteError)


@dataclass
class RequestRecord:
    """What one request (:meth:`Client.infer`, or one frame of :meth:`Client.stream`) did.

    Attributes
    ----------
    partition : Partition
        The partition chosen (priced at ``bandwidth_estimate_bps``); all-device when
        the server was known to be unreachable.
    fallback : bool
        True if the server could not be used and the device computed the rest.
    bytes_sent : int
        Bytes of boundary tensors sent (0 if nothing was offloaded or sent).
    bandwidth_estimate_bps : float or None
        The bandwidth the decision used (None when no estimate could be made).
    device_s, transfer_s, server_s, total_s : float
        Measured seconds: head and local work; network (round trip minus server
        time; in a stream it includes the wait behind earlier frames); tail on the
        server (as the server reports it); the whole request, from its decision to
        its answer.
    probed : bool
        True if a bandwidth probe ran before this request.
    error : str or None
        Why the server was not used, on fallback.
    done_s : float
        ``time.perf_counter()`` when the answer was available. In a stream, when it
        and every earlier frame's answer were (so it never decreases along a
        stream): ``(m - 1) / (done_s[m-1] - done_s[0])`` is the frame rate of
        ``m`` frames.
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
    )


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
                job.frame_bytes = W.send_frame(self.sock, W.MsgType.INFER, parts)
                del parts
                self.last_progress = time.perf_counter()
                self.recvq.put(job)
        except BaseException as e:
            self.fail(e)

    def recv_loop(self) -> None:
        try:
            while (job := self.recvq.get()) is not None and self.error is None:
                kind, payload = self.conn.reader.frame()
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
    """An open connection whose handshake is done, and the reader of its frames."""

    def __init__(self, sock: socket.socket, limits: W.Limits, max_frame_bytes: int | None):
        self.sock = sock
        self.reader = W.SocketReader(sock, limits)
        self.max_frame_bytes = max_frame_bytes
        self.used = -float("inf")  # time.monotonic() of the last answer

    def stale(self) -> bool:
        """True if the server closed it (or wrote unasked) since the last answer.

        An idle connection has nothing to read; anything readable now is an end
        of file, a reset, or bytes nobody asked for: the connection is not
        trusted for the next request.
        """
        return self.reader.wait(0.0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _small_payload(payload: W.Payload, what: str) -> bytes:
    """The payload of a control frame (ERROR, HELLO_OK, PROBE_OK): a few KiB at most."""
    if payload.left > _MAX_CONTROL_BYTES:
        raise W.ProtocolError(
            W.ErrorCode.TOO_LARGE, f"{what} frame of {payload.left} bytes from the server"
        )
    return bytes(payload.take(payload.left, what))


# A probe that took longer than this is shrunk for the next time.
_PROBE_SLOW_S = 0.05
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
    address : tuple of (str, int)
        The server. Required.
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
        probe before the next decision (at most one probe per ``refresh_s``).
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
        computation emulates a slower device.

    Raises
    ------
    TypeError
        No ``address``; a model without ``example_inputs``; a LayerGraph given
        with ``example_inputs`` or another ``graph``; a ``device_runner`` that is
        not callable.
    ValueError
        A graph without a program (loaded from JSON); neither ``planner`` nor both
        profiles; profiles or a planner of another graph (or another ``rtt_s``);
        a bad ``timeout_s`` or ``bandwidth_bps``.

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
        address: tuple[str, int] | None = None,
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
        self.address = (str(address[0]), int(address[1]))
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
        prog = self.graph.program
        assert prog is not None  # as_traced checked it
        self._out_spec, out_meta = prog.output_structure()
        self._out_meta = list(out_meta)
        self.cache_size = int(cache_size)
        self._parts: OrderedDict[bytes, tuple[Any, Any]] = OrderedDict()
        self._parts_lock = threading.Lock()
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

    # -- connection ----------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (the next request reconnects)."""
        with self._lock:
            self._drop_conn()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self, deadline: float) -> _Conn:
        """A new connection, handshake done by ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed before connecting")
        sock = socket.create_connection(self.address, timeout=left)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, self.limits, None)
            hello = [M.encode_hello(self.fingerprint)]
            W.send_frame(sock, W.MsgType.HELLO, hello, deadline=deadline)
            kind, payload = conn.reader.frame(deadline=deadline)
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

    def _connection(self, deadline: float) -> tuple[_Conn, bool]:
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
            conn = self._conn = self._open(deadline)
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
    ) -> tuple[Any, int, int, float]:
        """Send one frame and read its answer with ``read(kind, payload)``.

        Returns (what ``read`` returned, bytes sent, bytes received, seconds from
        the first byte sent to the last byte received). A connection found dead
        before any byte of the answer arrived (the server closed it between
        requests) is replaced and the frame sent again, once: requests have no
        side effects on the server, so a resend is safe.
        """
        for attempt in (0, 1):
            conn, fresh = self._connection(deadline)
            self._check_frame(nbytes, conn.max_frame_bytes)
            t1 = time.perf_counter()
            try:
                conn.reader.frame_started = False
                sent = W.send_frame(conn.sock, msg_type, parts, deadline=deadline)
                kind, payload = conn.reader.frame(deadline=deadline)
            except _STALE_ERRORS:
                self._drop_conn()
                if fresh or attempt or conn.reader.frame_started:
                    raise
                continue
            received = W.HEADER.size + payload.left
            out = read(kind, payload)
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
        base = min(self.retry_max_s, self.retry_s * 2.0 ** min(self._failures - 1, 30))
        self._down_until = time.monotonic() + base * self._rng.uniform(0.5, 1.5)
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
        """
        with self._lock:
            self._last_probe = time.monotonic()
            deadline = self._last_probe + self.timeout_s
            try:
                _, _, _, seconds = self._exchange(
                    W.MsgType.PROBE, [], 0, deadline, self._read_probe_ok(0)
                )
                self.estimator.add_latency(seconds)
                while True:
                    size = self._probe_size
                    _, sent, received, seconds = self._exchange(
                        W.MsgType.PROBE, [bytes(size)], size, deadline, self._read_probe_ok(size)
                    )
                    last = size >= self.probe_max_bytes
                    if self.estimator.add_transfer(8.0 * (sent + received), seconds, force=last):
                        if seconds > _PROBE_SLOW_S:  # the link slowed: probe smaller next time
                            self._probe_size = max(self.probe_bytes, size // 2)
                        break
                    if last:
                        break
                    # mostly latency: a larger probe next, until its wire time shows
                    self._probe_size = min(self.probe_max_bytes, 4 * size)
            except _NETWORK_ERRORS as e:
                self._fail(e)
                return None
            self._failures = 0
            return self.estimator.estimate()

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

    def _price(self, on: np.ndarray, bw: float | None) -> Partition:
        """Price a checked partition (1 Gbit/s when no bandwidth is known)."""
        return self.planner.graph.evaluate(on, bw or 1e9, self.rtt_s)

    # -- inference -----------------------------------------------------------------

    def decide(self) -> tuple[Partition, float | None, bool]:
        """The partition for the next request: (partition, bandwidth used, probed).

        Probes first when there is no estimate, or when its newest sample (or
        the round trip it subtracts) is older than ``refresh_s`` or its window
        (at most one probe per ``refresh_s``: a client
        whose decisions send nothing learns that the link recovered, at a cost
        of ``probe_bytes`` per ``refresh_s``).
        """
        probed = False
        bw = self.bandwidth_bps
        if bw is None:
            bw = self.estimator.estimate()
            now = time.monotonic()
            age = self.estimator.age_s()
            old = (age is not None and age > self.refresh_s) or self.estimator.latency_s() is None
            stale = bw is None or (old and now - self._last_probe >= self.refresh_s)
            if stale and not self.server_down:
                fresh = self.probe()
                probed = fresh is not None
                bw = fresh if fresh is not None else bw
        return self._decide_at(bw), bw, probed

    def _decide_at(self, bw: float | None) -> Partition:
        if bw is None or self.server_down:
            on = device_only(self.graph.n_nodes)
            return self.planner.graph.evaluate(on, bw or 1.0, self.rtt_s)
        return self.planner.decide(bw)

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
                parts, nbytes = M.encode_request(request_id, partition.on_device, sent)
            except (TypeError, ValueError) as e:  # e.g. a non-tensor value at the cut
                return self._local(tail, sent, partition, bw, probed, t_start, t0, str(e))
            device_s = time.perf_counter() - t0
            # timeout_s bounds the whole network part: connect, handshake, send, answer
            deadline = time.monotonic() + self.timeout_s
            try:
                (got_id, server_s, out), frame_bytes, reply_bytes, seconds = self._exchange(
                    W.MsgType.INFER, parts, nbytes, deadline, self._read_result
                )
                if got_id != request_id:
                    raise W.ProtocolError(W.ErrorCode.BAD_FRAME, "answer to another request")
            except W.RemoteError as e:
                # the server refused this request but keeps the connection
                keep = e.code in _KEEPS_CONNECTION or e.code == W.ErrorCode.BUSY
                err = self._fail(e, keep=keep)
                return self._local(tail, sent, partition, bw, probed, t_start, t0, err)
            except _NETWORK_ERRORS as e:
                err = self._fail(e)
                return self._local(tail, sent, partition, bw, probed, t_start, t0, err)
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
        max_in_flight: int = 2,
    ) -> Generator[Any, None, None]:
        """Run the model on a sequence of frames, device, link and server pipelined.

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

        Parameters
        ----------
        frames : iterable
            Each item a tensor or a tuple of the model's positional inputs; read
            one at a time, as the device gets to it.
        on_device : array-like of bool, optional
            Force this partition for every frame (checked now).
        max_in_flight : int
            Most frames whose head has run and whose output is not yielded yet
            (>= 1; 1 runs the frames one after another). A pipeline of device,
            link and server keeps all three busy from 3 on.

        Yields
        ------
        Any
            ``model(*frame)`` for each frame, in order. Closing the generator early
            (``close()``, or dropping it) drops the frames not yet yielded and
            closes the connection if answers are still due.

        Raises
        ------
        ValueError
            An invalid ``on_device``, or ``max_in_flight`` < 1 (raised by this
            call, before any frame is read).
        TypeError
            ``max_in_flight`` not an int; a frame that is neither a tensor nor a
            tuple (raised when it is read).
        """
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError("max_in_flight must be an int")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        forced = None if on_device is None else self._check_partition(on_device)
        return self._stream(iter(frames), forced, max_in_flight)

    def _stream(
        self, frames: Iterator[Any], forced: np.ndarray | None, max_in_flight: int
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
                    partition = self._decide_at(bw)
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
            job.parts, nbytes = M.encode_request(job.request_id, partition.on_device, sent)
        except (TypeError, ValueError) as e:  # e.g. a non-tensor value at the cut
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
                )
                job.sent = job.tail = None
        record = job.record
        assert record is not None
        record.done_s = max(record.done_s, last_done)
        self.last = record
        out, job.out = job.out, None
        return out, record.done_s
