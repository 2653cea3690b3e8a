"""The server side of collaborative inference: run the tail of any partition.

A :class:`Server` holds one model, traced at fixed input shapes (it is given the
traced graph, or traces the model once).  Clients connect,
prove with a fingerprint that they hold the same model (architecture + weights),
then send requests that carry a partition (which layers the device ran) and the
boundary tensors; the server validates both, runs the partition's tail and sends the
model's outputs back.  Tails are built on first use and kept in an LRU cache.

Concurrency model (docs/protocol.md, "The server's runtime"):

- one *gate* thread owns the listening socket and every connection that has not
  finished its handshake: non-blocking sockets under a selector, a small buffer
  each (a header, then a HELLO of at most ``2 + max_name_bytes`` bytes), a
  deadline per handshake. It never blocks on a peer, and an unauthenticated
  connection holds no client slot and no thread;
- every authenticated connection, between requests, sits on one *session loop*
  (a selector, non-blocking sockets, a 64 KiB buffer each, a deadline per frame
  from its first byte, an idle timeout). A request that has wholly arrived and
  whose tail is built and cheap (mean run time under 1 ms) is parsed, run and
  answered on the loop itself, one after another;
- anything that could wait goes to a *session* thread from a pool that always
  keeps one spare thread started: a large frame of a tail that is not cheap
  (read straight into its tensors' memory there; a cheap one is buffered whole
  on the loop), a tail to build or an expensive one, a full compute pool, an
  answer the socket does not take at once. The thread serves what has arrived
  on that connection and what follows within ``_LINGER_S``, then gives the
  connection back to the loop (at once for a cheap request);
- compute is bounded by ``workers`` slots; a request that finds every slot taken
  waits in an admission queue of ``queue_size`` places, as long as the wait it
  can expect (the requests ahead of it times the mean compute time, over the
  workers) stays under ``max_wait_s``; one that finds the queue full is answered
  ``BUSY`` at once (the connection stays open, the client
  computes that request locally). Each session thread, and the loop, runs torch
  with ``threads`` intra-op threads, so ``workers * threads`` matches the cores.

Why a loop for the cheap requests and threads for the rest: a cheap tail takes
tens of microseconds, about what the Python around it costs, and threads that
each ran their own cheap requests spent more on handing the GIL to each other
(~50 futex calls and 250 us of CPU per request at 16 clients, against none and
125 us at one client) than on the requests; one thread that takes every ready
connection from one ``epoll`` call has no such cost (1.6-1.9x the requests/s
of a thread per connection with a token around the cheap path at 4-64 clients;
docs/benchmarks.md). An expensive tail releases the GIL while torch computes,
so two of them use both cores from two threads, and a burst of them pays one
hop to a thread and back, not one per request. The parts an event loop does
best (many idle or hostile sockets, deadlines without threads) are the gate's
and the loop's: no connection holds a thread between requests (but for the
``_LINGER_S`` a session thread waits for a burst's next request).

A bad frame, a bad request or a tail that raises is answered with an ``ERROR``
frame (and, where the stream can no longer be trusted, the connection is closed)
without affecting other clients.  :meth:`Server.stop` (SIGTERM in ``cic-fast
serve``) drains: no new connection or request is accepted, requests in flight
finish and are answered, then the connections close.
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import socket
import threading
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

import numpy as np

from cic_fast.core import cost
from cic_fast.frontend.cutting import build_parts
from cic_fast.frontend.tracing import LayerGraph, as_traced
from cic_fast.runtime import messages as M
from cic_fast.runtime import wire as W
from cic_fast.runtime.fingerprint import traced_fingerprint

if TYPE_CHECKING:
    import torch

__all__ = ["Server", "usable_cores"]

# The session loop checks idle connections and frame deadlines this often.
_SWEEP_S = 0.1
# A session thread keeps a connection whose next request comes within this long.
_LINGER_S = 0.05
# a tail whose mean run time is under this runs on the session loop itself
_CHEAP_S = 1e-3


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Tail:
    """A built tail with the boundary it expects: name -> (dtype, shape or None)."""

    def __init__(
        self, module: Any, expected: dict[str, tuple[str | None, Any]], limits: W.Limits
    ) -> None:
        self.module = module
        self.expected = expected
        # the boundary as a client writes it (codec order): matched byte for byte
        self.layout = W.TensorLayout([(k, d, s) for k, (d, s) in expected.items()], limits)
        self.compute_s = 0.0  # moving average of its run time; 0: not run yet

    def check(self, name: str, dtype: str, dims: tuple[int, ...]) -> None:
        """Refuse (BAD_TENSOR) a received tensor header that is not part of the boundary."""
        want = self.expected.get(name)
        if want is None:
            raise W.ProtocolError(
                W.ErrorCode.BAD_TENSOR, f"tensor {name!r} is not in the partition's boundary"
            )
        wdtype, wshape = want
        if (wdtype is not None and dtype != wdtype) or (
            wshape is not None and tuple(dims) != tuple(wshape)
        ):
            raise W.ProtocolError(
                W.ErrorCode.BAD_TENSOR,
                f"tensor {name!r}: got {dtype}{list(dims)}, expected {wdtype}{list(wshape or ())}",
            )


class _TailSlot:
    """One cache entry: the tail, once built by the first request that needed it."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.tail: _Tail | None = None
        self.on: np.ndarray | None = None  # the partition, checked (read-only)
        self.error: BaseException | None = None


class _Session:
    """An authenticated connection: its socket, its reader, where it stands."""

    __slots__ = ("deadline", "idle_until", "looped", "needs_frame", "pending", "reader", "sock")

    def __init__(self, sock: socket.socket, reader: W.SocketReader, idle_until: float) -> None:
        self.sock = sock
        self.reader = reader
        self.idle_until = idle_until  # closed if no request comes by then
        self.deadline = _NEVER  # the frame that has begun must be whole by then
        self.pending: list[Any] = []  # an answer's bytes the socket did not take yet
        self.needs_frame = False  # a thread must read a frame (its bytes are on the socket)
        self.looped = False  # registered with the session loop


_NEVER = float("inf")


def _closed_by_peer(conn: socket.socket) -> bool:
    """True if the peer has closed ``conn`` (or it is closed here): a peek, nothing read."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing to read
    except OSError:
        return True  # reset, or closed by its owner meanwhile


class _Hello:
    """A connection in its handshake: what has arrived of its HELLO frame."""

    __slots__ = ("buf", "deadline", "got", "length")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.buf = bytearray(W.HEADER.size)  # grows to the HELLO's size once validated
        self.got = 0
        self.length = -1


class Server:
    """Serve the tails of one model over TCP.

    Parameters
    ----------
    model : LayerGraph or torch.nn.Module
        The traced graph (``trace(model, example_inputs)``, with its program): its
        shapes are the ones the server accepts, its program's weights (the
        model's, shared) the ones it runs. Or the model, in eval mode, with
        ``example_inputs`` (traced once here unless ``graph`` is given).
    example_inputs : torch.Tensor or tuple, optional
        One forward call's arguments; only with a model.
    host, port : str, int
        Address to listen on; port 0 picks a free port (see :attr:`address`).
    limits : protocol.Limits, optional
        Frame and tensor size limits.
    cache_size : int
        Most tails kept built (least recently used ones are dropped).
    max_clients : int
        Most authenticated connections at once; a client that completes its
        handshake beyond that is refused with ``BUSY``. Connections still in
        their handshake do not count (they are bounded by ``max_handshakes``
        and ``handshake_timeout_s``).
    timeout_s : float
        An authenticated connection with no request for this long is closed;
        also the deadline for writing one answer.
    graph : LayerGraph, optional
        With a model: ``trace(model, example_inputs)`` if already computed.
    workers : int, optional
        Requests computed at once (default: the usable cores).
    threads : int, optional
        torch intra-op threads of each session thread and of the session loop
        (default: usable cores // ``workers``, at least 1). By default one
        thread: every session thread that computes with more starts an OpenMP
        team of its own, and their spinning idle threads cost more than the
        parallelism gains (measured:
        1 worker x 2 threads served a full resnet18 tail at 10-15 requests/s on
        2 cores, 2 workers x 1 thread at 31-34/s). So a server profile meant
        for a default server is taken with one torch thread (``cic-fast profile
        --threads 1``), or the server is started with ``--workers 1 --threads
        N`` to match a profile taken with N.
    queue_size : int, optional
        Requests that may wait for a worker; one more is answered ``BUSY`` at
        once (default: 16 * ``workers``).
    max_wait_s : float
        A request that would wait longer than this for a worker (judged from
        the mean compute time of the recent requests) is answered ``BUSY`` at
        once: a cheap tail may queue deep, an expensive one only a little,
        and no admitted request waits anywhere near a client's timeout.
    handshake_timeout_s : float
        Deadline for a new connection's whole HELLO, from its accept.
    frame_timeout_s : float, optional
        Deadline for a whole request frame, from its first byte (default
        ``timeout_s``): a peer that trickles bytes is dropped.
    max_handshakes : int
        Most connections in their handshake at once; beyond it the oldest is
        dropped.

    Raises
    ------
    TypeError, ValueError
        See `cic_fast.frontend.tracing.as_traced` (e.g. a graph loaded from JSON,
        which has no program); bad sizes or timeouts.

    Examples
    --------
    >>> g = trace(model, x)  # doctest: +SKIP
    >>> with Server(g, port=0).start() as srv:  # doctest: +SKIP
    ...     host, port = srv.address
    """

    def __init__(
        self,
        model: torch.nn.Module | LayerGraph,
        example_inputs: Any = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: W.Limits | None = None,
        cache_size: int = 16,
        max_clients: int = 64,
        timeout_s: float = 30.0,
        graph: LayerGraph | None = None,
        workers: int | None = None,
        threads: int | None = None,
        queue_size: int | None = None,
        max_wait_s: float = 0.5,
        handshake_timeout_s: float = 5.0,
        frame_timeout_s: float | None = None,
        max_handshakes: int = 1024,
    ) -> None:
        cores = usable_cores()
        workers = cores if workers is None else workers
        for name, value in (
            ("cache_size", cache_size),
            ("max_clients", max_clients),
            ("workers", workers),
            ("max_handshakes", max_handshakes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, not {value!r}")
        threads = max(1, cores // workers) if threads is None else threads
        queue_size = 16 * workers if queue_size is None else queue_size
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, not {threads!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError(f"queue_size must be an int >= 0, not {queue_size!r}")
        frame_timeout_s = timeout_s if frame_timeout_s is None else frame_timeout_s
        for name, t in (
            ("timeout_s", timeout_s),
            ("handshake_timeout_s", handshake_timeout_s),
            ("max_wait_s", max_wait_s),
            ("frame_timeout_s", frame_timeout_s),
        ):
            if not (isinstance(t, int | float) and 0 < t < float("inf")):
                raise ValueError(f"{name} must be a finite number > 0, not {t!r}")
        self.model, self.graph, _ = as_traced(model, example_inputs, graph=graph)
        self.fingerprint = traced_fingerprint(self.graph)
        self.limits = limits or W.Limits()
        self.cache_size = cache_size
        self.max_clients = max_clients
        self.timeout_s = float(timeout_s)
        self.workers = workers
        self.threads = threads
        self.queue_size = queue_size
        self.max_wait_s = float(max_wait_s)
        self._service_s = 0.0  # mean compute seconds of a request (moving average)
        self.handshake_timeout_s = float(handshake_timeout_s)
        self.frame_timeout_s = float(frame_timeout_s)
        self.max_handshakes = max_handshakes
        # a HELLO is a fingerprint string: its length prefix and at most max_name_bytes
        self.max_hello_bytes = 2 + self.limits.max_name_bytes
        self._bind = (host, port)
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._draining = threading.Event()
        self._gate: threading.Thread | None = None
        self._lock = threading.Lock()
        self._tails: OrderedDict[bytes, _TailSlot] = OrderedDict()
        # compute slots: a queue of tokens (C-level, cheaper than a Semaphore)
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(workers):
            self._slots.put(None)
        # per session thread: the (mask, tail) of the request it is serving, so that
        # run_tail does not look the tail up a second time
        self._request = threading.local()
        self._waiting = 0
        self._sessions: queue.SimpleQueue[_Session | None] = queue.SimpleQueue()
        self._loop: threading.Thread | None = None
        self._loop_wake_r: socket.socket | None = None
        self._loop_wake_w: socket.socket | None = None
        self._incoming: list[_Session] = []  # handed to the loop, not registered yet
        self._loop_closed = False
        self._session_threads: set[threading.Thread] = set()
        self._idle_threads = 0
        self._conns: set[socket.socket] = set()  # authenticated connections
        self.stats = {
            "connections": 0,
            "requests": 0,
            "errors": 0,
            "tails_built": 0,
            "busy": 0,
            "handshake_timeouts": 0,
            "serial": 0,  # requests answered on the session loop (see _infer_inline)
            "handoffs": 0,  # connections handed from the loop to a session thread
        }

    # -- lifecycle -----------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on (after :meth:`start`)."""
        if self._sock is None:
            raise RuntimeError("server not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def running(self) -> bool:
        """True while the server accepts connections (started, not stopped)."""
        return (
            self._gate is not None
            and self._gate.is_alive()
            and self._loop is not None
            and self._loop.is_alive()
            and not self._draining.is_set()
        )

    def start(self) -> Server:
        """Bind, listen and serve in background threads; return self."""
        if self._sock is not None:
            raise RuntimeError("server already started")
        sock = socket.create_server(self._bind, backlog=1024)
        sock.setblocking(False)
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._loop_wake_r, self._loop_wake_w = socket.socketpair()
        for w in (self._wake_r, self._wake_w, self._loop_wake_r, self._loop_wake_w):
            w.setblocking(False)
        self._spawn_session_thread()
        self._loop = threading.Thread(
            target=self._session_loop, name="cic-server-loop", daemon=True
        )
        self._loop.start()
        self._gate = threading.Thread(target=self._gate_loop, name="cic-server-gate", daemon=True)
        self._gate.start()
        return self

    def serve_forever(self, drain_s: float = 10.0) -> None:
        """Start (if needed) and block until :meth:`stop`; then drain and close.

        Parameters
        ----------
        drain_s : float
            How long requests in flight get to finish after the stop.
        """
        if self._sock is None:
            self.start()
        try:
            while not self._draining.wait(0.5):
                pass
        finally:
            self.close(drain_s)

    def stop(self) -> None:
        """Stop accepting connections and requests (signal-safe); see :meth:`close`."""
        self._draining.set()
        for w in (self._wake_w, self._loop_wake_w):
            if w is not None:
                with contextlib.suppress(OSError):
                    w.send(b"x")

    def close(self, timeout_s: float = 2.0) -> None:
        """Drain, then close: refuse new work, let requests in flight finish, join.

        New connections are refused at once; a connection waiting for its next
        request is closed within 0.05 s; a request being received, computed or
        answered is finished and answered. After ``timeout_s`` every connection
        still open is shut down.
        """
        self.stop()
        deadline = time.monotonic() + timeout_s
        for t in (self._gate, self._loop):
            if t is not None and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            with self._lock:
                if not self._conns:
                    break
            time.sleep(0.01)
        with self._lock:
            conns = list(self._conns)
            threads = list(self._session_threads)
        for conn in conns:  # past the drain deadline
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _ in threads:
            self._sessions.put(None)
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.05, deadline - time.monotonic()))
        for s in (self._wake_r, self._wake_w, self._loop_wake_r, self._loop_wake_w):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tails ---------------------------------------------------------------------

    def tail_for(self, on_device: np.ndarray) -> _Tail:
        """The (cached) tail of a partition.

        Each partition's tail is built once, by the first request that needs it;
        concurrent requests for the same partition wait for that build, requests
        for other partitions (built or not) do not.

        Raises
        ------
        protocol.ProtocolError
            BAD_PARTITION if the partition is invalid or offloads nothing;
            INTERNAL if its tail cannot be built.
        """
        memo = getattr(self._request, "tail", None)
        if memo is not None and memo[0] is on_device:  # this request's own lookup
            return memo[1]  # type: ignore[no-any-return]
        # the length is part of the key: masks of n and n-1 nodes can pack alike
        key = len(on_device).to_bytes(8, "little") + W.pack_mask(on_device)
        with self._lock:
            slot = self._tails.get(key)
            if slot is not None:
                self._tails.move_to_end(key)
        if slot is None:
            try:
                g = self.graph
                on = cost.check_partition(g.edges, g.n_nodes, on_device, names=g.names)
            except ValueError as e:
                raise W.ProtocolError(W.ErrorCode.BAD_PARTITION, str(e)) from None
            if on.all():
                raise W.ProtocolError(W.ErrorCode.BAD_PARTITION, "partition offloads nothing")
            with self._lock:
                slot = self._tails.get(key)
                build = slot is None
                if slot is None:
                    slot = self._tails[key] = _TailSlot()
                    while len(self._tails) > self.cache_size:  # holders keep theirs alive
                        self._tails.popitem(last=False)
            if build:
                on.flags.writeable = False
                slot.on = on
                self._build_tail(key, slot, on)
        if not slot.ready.wait(self.timeout_s):
            raise W.ProtocolError(W.ErrorCode.INTERNAL, "tail build did not finish in time")
        if slot.tail is None:
            raise W.ProtocolError(W.ErrorCode.INTERNAL, f"tail could not be built: {slot.error}")
        self._request.tail = (on_device, slot.tail)
        return slot.tail

    def _build_tail(self, key: bytes, slot: _TailSlot, on: np.ndarray) -> None:
        try:
            _, module, _ = build_parts(self.graph, on, head=False)
            # every tensor the wire carries: boundary values that are not one tensor
            # travel as their leaves (`BoundaryCodec`), each with a known dtype/shape
            expected = {leaf.name: (leaf.dtype, leaf.shape) for leaf in module.codec.leaves}
            slot.tail = _Tail(module, expected, self.limits)
            with self._lock:
                self.stats["tails_built"] += 1
        except Exception as e:  # reported to every request that waited for it
            slot.error = e
            with self._lock:
                if self._tails.get(key) is slot:
                    del self._tails[key]
        finally:
            slot.ready.set()

    @property
    def cached_tails(self) -> int:
        """Number of tails in the cache."""
        with self._lock:
            return len(self._tails)

    def run_tail(self, on_device: np.ndarray, tensors: dict[str, Any]) -> list[Any]:
        """Validate the boundary tensors against the partition and run its tail.

        Returns
        -------
        list of torch.Tensor
            The model's outputs, flattened (``torch.utils._pytree`` order).

        Raises
        ------
        protocol.ProtocolError
            BAD_PARTITION, BAD_TENSOR, or INTERNAL if the tail fails or returns
            something other than tensors.
        """
        import torch
        from torch.utils import _pytree

        memo = getattr(self._request, "tail", None)
        tail = self.tail_for(on_device)
        # A request of this thread's session had each tensor checked (`_Tail.check`:
        # name in the boundary, dtype, shape; names distinct) as it arrived: then
        # as many tensors as the boundary has means exactly the boundary.
        streamed = memo is not None and memo[0] is on_device
        if not (streamed and len(tensors) == len(tail.expected)):
            if set(tensors) != set(tail.expected):
                missing = sorted(set(tail.expected) - set(tensors))[:5]
                extra = sorted(set(tensors) - set(tail.expected))[:5]
                raise W.ProtocolError(
                    W.ErrorCode.BAD_TENSOR,
                    f"boundary tensors do not match the partition (missing {missing}, "
                    f"extra {extra})",
                )
            for name, t in tensors.items():
                tail.check(name, str(t.dtype).removeprefix("torch."), tuple(t.shape))
        part = tail.module  # our Tail: no hooks, so its forward is called directly
        # the session loop runs in inference mode throughout: no guard per request
        inference = torch.is_inference_mode_enabled()
        try:
            with contextlib.nullcontext() if inference else torch.inference_mode():
                out = part.forward(part.codec.restore(tensors))
        except Exception as e:  # the tail is the model's code: report, keep serving
            raise W.ProtocolError(
                W.ErrorCode.INTERNAL, f"tail failed: {type(e).__name__}: {e}"
            ) from None
        leaves, _ = _pytree.tree_flatten(out)
        if not all(isinstance(x, torch.Tensor) for x in leaves):
            raise W.ProtocolError(W.ErrorCode.INTERNAL, "model output holds non-tensor values")
        return leaves

    # -- the gate: accept and handshake, never blocking ------------------------------

    def _gate_loop(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        pending: OrderedDict[socket.socket, _Hello] = OrderedDict()  # oldest first
        try:
            while not self._draining.is_set():
                timeout = 1.0
                if pending:
                    first = next(iter(pending.values()))
                    timeout = min(timeout, max(0.0, first.deadline - time.monotonic()))
                for key, _ in sel.select(timeout):
                    if key.data is None:
                        self._accept_some(sel, pending)
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    else:
                        conn = key.fileobj
                        try:
                            self._hello_step(sel, pending, conn)  # type: ignore[arg-type]
                        except Exception:  # one client never takes the gate down
                            if conn in pending:
                                self._drop(sel, pending, conn)  # type: ignore[arg-type]
                now = time.monotonic()
                while pending:
                    conn, h = next(iter(pending.items()))
                    if h.deadline > now:
                        break
                    with self._lock:
                        self.stats["handshake_timeouts"] += 1
                    self._drop(sel, pending, conn)
        finally:
            for conn in list(pending):
                self._drop(sel, pending, conn)
            with contextlib.suppress(OSError):
                self._sock.close()
            sel.close()

    def _accept_some(
        self, sel: selectors.BaseSelector, pending: OrderedDict[socket.socket, _Hello]
    ) -> None:
        assert self._sock is not None
        for _ in range(64):  # then let the handshakes in progress have a turn
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: free the oldest handshake
                if pending:
                    self._drop(sel, pending, next(iter(pending)))
                else:
                    time.sleep(0.01)  # nothing to free: do not spin on the listening socket
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending[conn] = _Hello(time.monotonic() + self.handshake_timeout_s)
            sel.register(conn, selectors.EVENT_READ, "hello")
            if len(pending) > self.max_handshakes:
                self._drop(sel, pending, next(iter(pending)))

    def _drop(
        self,
        sel: selectors.BaseSelector,
        pending: OrderedDict[socket.socket, _Hello],
        conn: socket.socket,
        error: tuple[W.ErrorCode, str] | None = None,
    ) -> None:
        pending.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn)
        if error is not None:
            self._send_nowait(conn, *error)
        with contextlib.suppress(OSError):
            conn.close()

    def _send_nowait(self, conn: socket.socket, code: W.ErrorCode, message: str) -> None:
        """Best effort: an ERROR frame that fits in the socket's buffer, or nothing."""
        with self._lock:
            self.stats["errors"] += 1
        payload = M.encode_error(code, message)
        with contextlib.suppress(OSError):
            conn.send(W.frame_header(W.MsgType.ERROR, len(payload)) + payload)

    def _hello_step(
        self,
        sel: selectors.BaseSelector,
        pending: OrderedDict[socket.socket, _Hello],
        conn: socket.socket,
    ) -> None:
        h = pending[conn]
        need = len(h.buf)
        try:
            with memoryview(h.buf) as view:
                k = conn.recv_into(view[h.got : need])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sel, pending, conn)
            return
        if k == 0:
            self._drop(sel, pending, conn)
            return
        h.got += k
        if h.got < need:
            return
        try:
            if h.length < 0:  # the header is complete: only a small HELLO may follow
                kind, length = W.parse_header(h.buf, self.limits)
                if kind != W.MsgType.HELLO:
                    raise W.ProtocolError(W.ErrorCode.NOT_READY, f"expected HELLO, got {kind.name}")
                if length > self.max_hello_bytes:
                    raise W.ProtocolError(
                        W.ErrorCode.TOO_LARGE,
                        f"HELLO frame of {length} bytes over the limit of "
                        f"{self.max_hello_bytes} here",
                    )
                h.length = length
                h.buf.extend(bytes(length))
                if length:
                    return
            fp, _ = M.decode_hello(memoryview(h.buf)[W.HEADER.size :], self.limits)
            if fp != self.fingerprint:
                raise W.ProtocolError(
                    W.ErrorCode.FINGERPRINT,
                    f"model fingerprint {fp[:16]}... is not the server's "
                    f"{self.fingerprint[:16]}...",
                )
        except W.ProtocolError as e:
            self._drop(sel, pending, conn, (e.code, str(e)))
            return
        pending.pop(conn)
        sel.unregister(conn)
        self._admit_session(conn)

    def _admit_session(self, conn: socket.socket) -> None:
        """A client passed its handshake: a client slot and the session loop, or BUSY."""
        with self._lock:
            held = list(self._conns) if len(self._conns) >= self.max_clients else []
        # at the limit, a connection its client has closed (its owner has not seen the
        # EOF yet) does not count: a client that reconnects at once is not refused
        live = sum(not _closed_by_peer(c) for c in held)
        with self._lock:
            busy = bool(held) and live >= self.max_clients
            if not busy:
                self._conns.add(conn)
                self.stats["connections"] += 1
        if busy:
            self._send_nowait(conn, W.ErrorCode.BUSY, "too many clients")
            with contextlib.suppress(OSError):
                conn.close()
            return
        ok = M.encode_hello(self.fingerprint, self.limits.max_frame_bytes)
        frame = W.frame_header(W.MsgType.HELLO_OK, len(ok)) + ok
        try:
            sent = conn.send(frame)  # a few dozen bytes into an empty socket buffer
        except OSError:
            sent = -1
        if sent != len(frame):
            self._end_session(conn)
            return
        reader = W.SocketReader(conn, self.limits)
        self._to_loop(_Session(conn, reader, time.monotonic() + self.timeout_s))

    def _end_session(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.close()
        with self._lock:
            self._conns.discard(conn)

    # -- the session loop: every connection between requests, and the cheap requests ---

    def _to_loop(self, s: _Session) -> None:
        """Give a connection to the session loop (from the gate or a session thread)."""
        with self._lock:
            closed = self._loop_closed
            if not closed:
                self._incoming.append(s)
        if closed:  # draining: the loop is gone
            self._end_session(s.sock)
            return
        assert self._loop_wake_w is not None
        with contextlib.suppress(OSError):  # a full wake socket is a wake-up already
            self._loop_wake_w.send(b"x")

    def _session_loop(self) -> None:
        import torch

        torch.set_num_threads(self.threads)  # the cheap tails run on this thread
        with torch.inference_mode():  # every tail run here: entered once, not per request
            self._run_loop()

    def _run_loop(self) -> None:
        assert self._loop_wake_r is not None
        sel = selectors.DefaultSelector()
        sel.register(self._loop_wake_r, selectors.EVENT_READ, None)
        again: deque[_Session] = deque()  # answered a frame and have more bytes buffered
        next_sweep = time.monotonic() + _SWEEP_S
        try:
            while not self._draining.is_set():
                events = sel.select(0.0 if again else _SWEEP_S)
                now = time.monotonic()
                if any(key.data is None for key, _ in events):
                    self._loop_adopt(sel, again, now)
                turn = [(key.data, True) for key, _ in events if key.data is not None]
                # then one frame each of those with more buffered: fair to the others
                turn += [(again.popleft(), False) for _ in range(len(again))]
                for s, receive in turn:
                    if not s.looped:  # handed over or dropped earlier in this turn
                        continue
                    try:
                        self._loop_step(sel, again, s, now, receive=receive)
                    except Exception:  # a bug met by one connection: drop it, keep serving
                        if s.looped:
                            self._loop_drop(sel, s)
                if now >= next_sweep:
                    next_sweep = now + _SWEEP_S
                    for key in list(sel.get_map().values()):
                        s = key.data
                        if s is not None and (
                            s.deadline < now or (s.idle_until < now and not s.reader.buffered)
                        ):
                            self._loop_drop(sel, s)  # a frame past its deadline, or idle
        finally:
            self._loop_close(sel)

    def _loop_adopt(self, sel: selectors.BaseSelector, again: deque[_Session], now: float) -> None:
        assert self._loop_wake_r is not None
        with contextlib.suppress(OSError):  # first: a wake-up sent after the swap stays
            self._loop_wake_r.recv(4096)
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for s in incoming:
            s.idle_until = now + self.timeout_s
            s.reader.shrink()
            try:
                sel.register(s.sock, selectors.EVENT_READ, s)
            except (OSError, ValueError):  # closed meanwhile
                self._end_session(s.sock)
                continue
            s.looped = True
            if s.reader.buffered:  # a request already here: no readable event will say so
                again.append(s)

    def _loop_step(
        self,
        sel: selectors.BaseSelector,
        again: deque[_Session],
        s: _Session,
        now: float,
        *,
        receive: bool,
    ) -> None:
        """Read what has arrived; answer a whole cheap request here, else hand over.

        Anything that could wait (a frame larger than the buffer, a tail to
        build or run for long, a full admission queue, an answer the socket
        does not take at once) goes to a session thread, so the loop never
        blocks. A request it cannot parse goes too, untouched: the thread reads
        it again and answers it like any other.
        """
        reader = s.reader
        try:
            if receive:
                reader.recv_nowait()
                s.idle_until = now + self.timeout_s
            frame = reader.buffered_frame()
            if frame is None:
                size = reader.next_frame_bytes()
                if size is not None and size > reader.capacity:
                    fits = self._cheap_frame(reader, size)
                    if fits is False:
                        self._loop_handoff(sel, s)  # read straight into its tensors, there
                        return
                    if fits:
                        reader.reserve(size)  # the size its own boundary has: vetted
                if reader.buffered and s.deadline == _NEVER:
                    s.deadline = now + self.frame_timeout_s  # a frame has begun
                return
        except W.ProtocolError:
            self._loop_handoff(sel, s)
            return
        except (OSError, EOFError):  # the peer is gone: nothing to answer
            self._loop_drop(sel, s)
            return
        kind, payload = frame
        try:
            served = kind == W.MsgType.INFER and self._infer_inline(s, payload)
        except (OSError, EOFError):
            self._loop_drop(sel, s)
            return
        except Exception as e:  # never let one client take the loop down
            self._send_nowait(s.sock, W.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
            self._loop_drop(sel, s)
            return
        if not served or s.pending:
            self._loop_handoff(sel, s)
            return
        s.deadline = _NEVER
        reader.shrink()  # a connection between requests holds the small buffer
        if reader.buffered:
            again.append(s)

    def _cheap(self, n: int, mask: bytes) -> tuple[np.ndarray, _Tail] | None:
        """`_cached`, if the tail is also cheap (run before, mean under `_CHEAP_S`)."""
        hit = self._cached(n, mask)
        if hit is None or not 0.0 < hit[1].compute_s < _CHEAP_S:
            self._request.tail = None
            return None
        return hit

    def _cheap_frame(self, reader: W.SocketReader, size: int) -> bool | None:
        """Whether a frame larger than the buffer is a cheap request to buffer whole.

        True if it is an INFER whose tail is built and cheap and whose size is
        exactly what that partition's boundary takes (so growing the buffer to
        it allocates nothing the server would refuse); None if its first bytes
        have not all arrived yet; False otherwise (a thread reads it).
        """
        view = reader.peek()
        kind, length = W.parse_header(view[: W.HEADER.size], self.limits)
        if kind != W.MsgType.INFER:
            return False
        r = W.Reader(view[W.HEADER.size : W.HEADER.size + length], self.limits)
        try:
            _, n, mask = M.read_request_mask(r)
        except W.ProtocolError as e:  # truncated: the mask has not all arrived (yet)
            more = r.view.nbytes < min(length, reader.capacity - W.HEADER.size)
            return None if e.code == W.ErrorCode.BAD_FRAME and more else False
        hit = self._cheap(n, mask)
        self._request.tail = None  # only a look: no request of this thread's is served
        if hit is None:
            return False
        layout = hit[1].layout
        return layout.usable and size == W.HEADER.size + r.pos + layout.nbytes

    def _infer_inline(self, s: _Session, payload: memoryview) -> bool:
        """Answer a wholly buffered INFER on the loop if its tail is built and cheap.

        Returns False, with nothing consumed, if not (a session thread serves
        it). A cheap tail takes tens of microseconds; run here, its request has
        no thread hop and no contention for the GIL: at 16 clients of a 40 us
        tail, session threads that each ran their own requests paid ~50 futex
        calls and 250 us of CPU per request, against none and 125 us for one
        client (strace, /proc; docs/benchmarks.md).
        """
        r = W.Reader(payload, self.limits)
        try:
            request_id, n, mask = M.read_request_mask(r)
            hit = self._cheap(n, mask)
            if hit is None:
                return False
            on, tail = hit
            tensors = tail.layout.read(payload, r.pos)  # exactly the boundary, or None
            if tensors is None:
                # each tensor's header is checked before its memory is allocated
                tensors = dict(W.read_tensors(r, tail.check))
                r.end()
        except W.ProtocolError:
            self._request.tail = None
            return False
        if not self._free_worker():  # a thread waits in the admission queue
            self._request.tail = None
            return False
        t0 = time.perf_counter()
        try:
            outputs = self._compute(on, tensors, have_worker=True)
        except W.ProtocolError as e:  # the tail failed: answered, the stream is intact
            kind, parts = W.MsgType.ERROR, [M.encode_error(e.code, str(e))]
            with self._lock:
                self.stats["errors"] += 1
        else:
            del tensors
            kind = W.MsgType.RESULT
            parts, _ = M.encode_result(request_id, time.perf_counter() - t0, outputs)
            with self._lock:
                self.stats["requests"] += 1
                self.stats["serial"] += 1
        s.reader.consume(W.HEADER.size + payload.nbytes)
        s.pending = W.send_frame_nowait(s.sock, kind, parts)
        return True

    def _loop_handoff(self, sel: selectors.BaseSelector, s: _Session) -> None:
        sel.unregister(s.sock)
        s.looped = False
        with self._lock:
            self.stats["handoffs"] += 1
        self._sessions.put(s)

    def _loop_drop(self, sel: selectors.BaseSelector, s: _Session) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(s.sock)
        s.looped = False
        self._end_session(s.sock)

    def _loop_close(self, sel: selectors.BaseSelector) -> None:
        """The loop is done (a drain): a request that has arrived is answered, then closed."""
        with self._lock:
            self._loop_closed = True
            incoming, self._incoming = self._incoming, []
        sessions = [k.data for k in sel.get_map().values() if k.data is not None]
        sel.close()
        for s in [*sessions, *incoming]:
            s.looped = False
            if s.pending or s.reader.buffered or s.reader.wait(0.0):
                s.needs_frame = not s.reader.buffered and not s.pending
                self._sessions.put(s)
            else:
                self._end_session(s.sock)

    # -- session threads: what the loop hands over ----------------------------------------

    def _spawn_session_thread(self) -> None:
        t = threading.Thread(target=self._session_thread, name="cic-server-session", daemon=True)
        with self._lock:
            self._session_threads.add(t)
            self._idle_threads += 1
        t.start()

    def _session_thread(self) -> None:
        import torch

        torch.set_num_threads(self.threads)  # this thread's intra-op threads
        me = threading.current_thread()
        try:
            while (s := self._sessions.get()) is not None:
                with self._lock:
                    self._idle_threads -= 1
                    spare = self._idle_threads == 0 and not self._draining.is_set()
                if spare:  # keep one thread waiting, so a hand-over never starts one
                    self._spawn_session_thread()
                self._serve_session(s)
                with self._lock:
                    self._idle_threads += 1
                    retire = self._idle_threads > 2
                    if retire:
                        self._idle_threads -= 1
                if retire:
                    return
        finally:
            with self._lock:
                self._session_threads.discard(me)

    def _serve_session(self, s: _Session) -> None:
        back = False
        try:
            back = self._session(s)
        except (OSError, EOFError):
            pass  # peer gone, timed out or shut down by close(): nothing to answer
        except W.ProtocolError as e:
            self._send_error(s.sock, e.code, str(e))
        except Exception as e:  # never let one client take the server down
            self._send_error(s.sock, W.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            if back:
                self._to_loop(s)
            else:
                self._end_session(s.sock)

    def _send_error(self, conn: socket.socket, code: W.ErrorCode, message: str) -> None:
        with self._lock:
            self.stats["errors"] += 1
        with contextlib.suppress(OSError):
            W.send_frame(
                conn,
                W.MsgType.ERROR,
                [M.encode_error(code, message)],
                deadline=time.monotonic() + self.timeout_s,
            )

    def _session(self, s: _Session) -> bool:
        """Serve what the loop handed over; True: give the connection back to the loop.

        The thread keeps the connection while its requests follow each other
        within `_LINGER_S` and are not cheap: a client of an expensive tail that
        sends its next request at once is served as by a thread of its own, with
        no hop to the loop and back (two thread wake-ups, 0.2-0.6 ms per request
        on a 2-vCPU VM). After answering a cheap request with nothing more
        arrived, it gives the connection back: the hop then falls between two
        requests, on no request's time.
        """
        conn, reader = s.sock, s.reader
        if s.pending:  # an answer the loop could not send at once
            W.send_buffers(conn, s.pending, time.monotonic() + self.timeout_s)
            s.pending = []
        while True:
            if not (s.needs_frame or reader.buffered):
                if not reader.wait(_LINGER_S) or self._draining.is_set():
                    return not self._draining.is_set()
                reader.recv_nowait()
            s.needs_frame = False
            cheap = False
            # a frame that began on the loop keeps its deadline
            deadline = min(s.deadline, time.monotonic() + self.frame_timeout_s)
            kind, payload = reader.frame(deadline=deadline)
            if kind == W.MsgType.PROBE:
                n = payload.left
                payload.skip_rest()
                self._reply(conn, W.MsgType.PROBE_OK, [M.encode_probe_ok(n)])
            elif kind == W.MsgType.INFER:
                cheap = self._infer(conn, payload)
            else:
                raise W.ProtocolError(
                    W.ErrorCode.UNKNOWN_TYPE, f"unexpected {kind.name} frame from a client"
                )
            s.deadline = _NEVER
            if self._draining.is_set():
                return False  # a drain answers the request that had arrived, then closes
            if cheap and not reader.wait(0.0):
                return True

    def _reply(self, conn: socket.socket, kind: W.MsgType, parts: list[Any]) -> None:
        W.send_frame(conn, kind, parts, deadline=time.monotonic() + self.timeout_s)

    def _cached(self, n: int, mask: bytes) -> tuple[np.ndarray, _Tail] | None:
        """(partition, tail) of a packed mask if its tail is built: nothing unpacked."""
        key = n.to_bytes(8, "little") + mask
        with self._lock:
            slot = self._tails.get(key)
            if slot is not None:
                self._tails.move_to_end(key)
        if slot is not None and slot.ready.is_set() and slot.tail is not None:
            assert slot.on is not None
            self._request.tail = (slot.on, slot.tail)
            return slot.on, slot.tail
        return None

    def _lookup(self, n: int, mask: bytes) -> tuple[np.ndarray, _Tail]:
        """(partition, tail) of a request's packed mask: a cache hit unpacks nothing."""
        hit = self._cached(n, mask)
        if hit is not None:
            return hit
        on = W.unpack_mask(mask, n)
        return on, self.tail_for(on)

    def _infer(self, conn: socket.socket, payload: W.Payload) -> bool:
        """Serve one INFER on a session thread; True if answered and its tail is cheap."""
        try:
            request_id, n, mask = M.read_request_mask(payload)
            t = time.perf_counter()
            on, tail = self._lookup(n, mask)
            # the server's own seconds leave out the time the payload was arriving
            build_s = time.perf_counter() - t
            # each tensor's header is checked before its memory is allocated
            tensors = dict(W.read_tensors(payload, tail.check))
            payload.end()
        except W.ProtocolError as e:
            if e.fatal:
                raise
            payload.skip_rest()  # the stream is intact: answer and go on
            self._send_error(conn, e.code, str(e))
            return False
        t0 = time.perf_counter() - build_s
        try:
            outputs = self._compute(on, tensors, have_worker=False)
        except W.ProtocolError as e:
            if e.fatal and e.code != W.ErrorCode.BUSY:  # a refused request keeps the connection
                raise
            self._send_error(conn, e.code, str(e))
            return False
        del tensors
        parts, _ = M.encode_result(request_id, time.perf_counter() - t0, outputs)
        with self._lock:
            self.stats["requests"] += 1
        self._reply(conn, W.MsgType.RESULT, parts)
        return 0.0 < tail.compute_s < _CHEAP_S

    def compute(self, on_device: np.ndarray, tensors: dict[str, Any]) -> list[Any]:
        """`run_tail` through the compute slots and the admission queue.

        The request waits for one of the ``workers`` slots if the admission
        queue has room for it (see ``queue_size`` and ``max_wait_s``), else it
        is refused at once. The HTTP form of the protocol
        (`cic_fast.runtime.http`) runs its requests through this too.

        Raises
        ------
        protocol.ProtocolError
            BUSY (the request was not run), or what `run_tail` raises.
        """
        return self._compute(on_device, tensors, have_worker=False)

    def _compute(
        self, on_device: np.ndarray, tensors: dict[str, Any], *, have_worker: bool
    ) -> list[Any]:
        if not have_worker and not self._acquire_worker():
            with self._lock:
                self.stats["busy"] += 1
            raise W.ProtocolError(W.ErrorCode.BUSY, "server overloaded: request not run")
        t1 = time.perf_counter()
        try:
            return self.run_tail(on_device, tensors)
        finally:
            self._slots.put(None)
            took = time.perf_counter() - t1
            # moving averages over ~10 requests; the first one sets them
            with self._lock:  # read by _acquire_worker in other session threads
                self._service_s += (0.1 if self._service_s else 1.0) * (took - self._service_s)
            memo = getattr(self._request, "tail", None)
            if memo is not None and memo[0] is on_device:
                tail = memo[1]
                tail.compute_s += (0.1 if tail.compute_s else 1.0) * (took - tail.compute_s)
            self._request.tail = None

    def _free_worker(self) -> bool:
        """A compute slot if one is free now (no waiting)."""
        try:
            self._slots.get_nowait()
            return True
        except queue.Empty:
            return False

    def _acquire_worker(self) -> bool:
        """A compute slot; False (answer BUSY) if the admission queue is full."""
        if self._free_worker():
            return True
        with self._lock:
            ahead = self._waiting + 1
            if ahead > self.queue_size or ahead * self._service_s > self.max_wait_s * self.workers:
                return False
            self._waiting += 1
        try:
            self._slots.get(timeout=self.timeout_s)
            return True
        except queue.Empty:
            return False
        finally:
            with self._lock:
                self._waiting -= 1
