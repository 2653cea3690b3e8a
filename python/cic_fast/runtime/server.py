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
- each authenticated connection is served by a *session* thread from a pool that
  always keeps one spare thread started, so the gate only hands sockets over.
  A session reads a request straight into the tensors' memory, runs the tail
  and writes the answer itself: no thread hop on the request path (a hop costs
  more than the whole loopback round trip on small machines: see
  docs/benchmarks.md);
- compute is bounded by ``workers`` slots; a request that finds every slot taken
  waits in an admission queue of ``queue_size`` places, as long as the wait it
  can expect (the requests ahead of it times the mean compute time, over the
  workers) stays under ``max_wait_s``; one that finds the queue full is answered
  ``BUSY`` at once (the connection stays open, the client
  computes that request locally). Each session thread runs torch with
  ``threads`` intra-op threads, so ``workers * threads`` matches the cores.

Why threads and not an event loop: the request path must not change threads
(a hand-off between an event loop and a compute pool costs 0.1-0.6 ms here, the
budget of the whole runtime), and torch releases the GIL while it computes, so a
blocked session thread costs nothing but its stack. The parts an event loop does
best (many idle or hostile sockets, deadlines without threads) are the gate's.

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
from collections import OrderedDict
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

# A session that waits for its next request checks for a drain this often.
_POLL_S = 0.2
# a tail whose mean run time is under this takes the one-thread-at-a-time path
_CHEAP_S = 1e-3


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Tail:
    """A built tail with the boundary it expects: name -> (dtype, shape or None)."""

    def __init__(self, module: Any, expected: dict[str, tuple[str | None, Any]]) -> None:
        self.module = module
        self.expected = expected
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


class _Hold:
    """The cheap-request token (see `Server._infer`) while held; `release` is idempotent."""

    __slots__ = ("held", "lock")

    def __init__(self, lock: threading.Lock, held: bool) -> None:
        self.lock = lock
        self.held = held

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()


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
        torch intra-op threads of each session thread (default: usable cores //
        ``workers``, at least 1). By default one thread: every session thread
        that computes with more starts an OpenMP team of its own, and their
        spinning idle threads cost more than the parallelism gains (measured:
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
        self._py_token = threading.Lock()  # the cheap-request path (see _infer)
        for _ in range(workers):
            self._slots.put(None)
        # per session thread: the (mask, tail) of the request it is serving, so that
        # run_tail does not look the tail up a second time
        self._request = threading.local()
        self._waiting = 0
        self._sessions: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
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
            "serial": 0,  # requests answered on the cheap path (see _infer)
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
        return self._gate is not None and self._gate.is_alive() and not self._draining.is_set()

    def start(self) -> Server:
        """Bind, listen and serve in background threads; return self."""
        if self._sock is not None:
            raise RuntimeError("server already started")
        sock = socket.create_server(self._bind, backlog=1024)
        sock.setblocking(False)
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._spawn_session_thread()
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
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    def close(self, timeout_s: float = 2.0) -> None:
        """Drain, then close: refuse new work, let requests in flight finish, join.

        New connections are refused at once; a connection waiting for its next
        request is closed within ~0.2 s; a request being received, computed or
        answered is finished and answered. After ``timeout_s`` every connection
        still open is shut down.
        """
        self.stop()
        deadline = time.monotonic() + timeout_s
        if self._gate is not None and self._gate is not threading.current_thread():
            self._gate.join(max(0.0, deadline - time.monotonic()))
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
        for s in (self._wake_r, self._wake_w):
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
            slot.tail = _Tail(module, expected)
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
        try:
            with torch.inference_mode():
                out = tail.module(tail.module.codec.restore(tensors))
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
        """A client passed its handshake: a client slot and a session, or BUSY."""
        with self._lock:
            busy = len(self._conns) >= self.max_clients
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
        self._sessions.put(conn)

    def _end_session(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.close()
        with self._lock:
            self._conns.discard(conn)

    # -- sessions: one thread per authenticated connection -----------------------------

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
            while (conn := self._sessions.get()) is not None:
                with self._lock:
                    self._idle_threads -= 1
                    spare = self._idle_threads == 0 and not self._draining.is_set()
                if spare:  # keep one thread waiting, so the gate never starts one
                    self._spawn_session_thread()
                try:
                    self._serve_conn(conn)
                finally:
                    self._end_session(conn)
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

    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            self._session(conn, W.SocketReader(conn, self.limits))
        except (OSError, EOFError):
            pass  # peer gone, timed out or shut down by close(): nothing to answer
        except W.ProtocolError as e:
            self._send_error(conn, e.code, str(e))
        except Exception as e:  # never let one client take the server down
            self._send_error(conn, W.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")

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

    def _session(self, conn: socket.socket, reader: W.SocketReader) -> None:
        drained = False
        while True:
            idle_until = time.monotonic() + self.timeout_s
            while not reader.wait(_POLL_S):
                if self._draining.is_set() or time.monotonic() >= idle_until:
                    return
            if self._draining.is_set():
                # a drain answers the request that had already arrived, then closes
                if drained:
                    return
                drained = True
            kind, payload = reader.frame(deadline=time.monotonic() + self.frame_timeout_s)
            if kind == W.MsgType.PROBE:
                n = payload.left
                payload.skip_rest()
                self._reply(conn, W.MsgType.PROBE_OK, [M.encode_probe_ok(n)])
            elif kind == W.MsgType.INFER:
                # all of it buffered: parsing it waits for no byte (see _infer)
                self._infer(conn, payload, whole=payload.left <= reader.buffered)
            else:
                raise W.ProtocolError(
                    W.ErrorCode.UNKNOWN_TYPE, f"unexpected {kind.name} frame from a client"
                )

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

    def _infer(self, conn: socket.socket, payload: W.Payload, *, whole: bool) -> None:
        # The cheap-request path. A thread that runs a request's Python while others
        # also want the GIL hands it over at every torch call and socket call, and
        # waits to get it back: at 16 clients of a 40 us tail that was ~50 futex
        # calls and 250 us of CPU per request, against none and 125 us for one client
        # (strace, /proc). So a request whose bytes have all arrived (`whole`) and
        # whose tail is built and cheap (its mean run time under _CHEAP_S) runs
        # parse, tail and encoding under one token, a thread at a time. The holder
        # waits for nothing (no byte, no tail build, no compute slot: it takes a
        # free slot or leaves the path), so holding it never stalls a request of
        # another path; a heavy tail runs outside it (two of them use both cores).
        hold = _Hold(self._py_token, whole and self._py_token.acquire(timeout=self.timeout_s))
        serial = False
        try:
            try:
                request_id, n, mask = M.read_request_mask(payload)
                t = time.perf_counter()
                hit = self._cached(n, mask) if hold.held else None
                if hit is None or not 0.0 < hit[1].compute_s < _CHEAP_S:
                    hold.release()
                    hit = self._lookup(n, mask)
                on, tail = hit
                # the server's own seconds leave out the time the payload was arriving
                build_s = time.perf_counter() - t
                # each tensor's header is checked before its memory is allocated
                tensors = dict(W.read_tensors(payload, tail.check))
                payload.end()
            except W.ProtocolError as e:
                hold.release()
                if e.fatal:
                    raise
                payload.skip_rest()  # the stream is intact: answer and go on
                self._send_error(conn, e.code, str(e))
                return
            t0 = time.perf_counter() - build_s
            if hold.held and not self._free_worker():
                hold.release()
            try:
                outputs = self._compute(on, tensors, have_worker=hold.held)
            except W.ProtocolError as e:
                hold.release()
                if e.fatal and e.code != W.ErrorCode.BUSY:  # a refused request keeps the connection
                    raise
                self._send_error(conn, e.code, str(e))
                return
            del tensors
            parts, _ = M.encode_result(request_id, time.perf_counter() - t0, outputs)
            serial = hold.held
        finally:
            hold.release()
        with self._lock:
            self.stats["requests"] += 1
            self.stats["serial"] += int(serial)
        self._reply(conn, W.MsgType.RESULT, parts)  # never under the token: it may wait

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
