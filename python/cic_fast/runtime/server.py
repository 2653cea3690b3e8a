"""The server side of collaborative inference: run the tail of any partition.

A :class:`Server` holds one model, traced at fixed input shapes (it is given the
traced graph, or traces the model once).  Clients connect,
prove with a fingerprint that they hold the same model (architecture + weights),
then send requests that carry a partition (which layers the device ran) and the
boundary tensors; the server validates both, runs the partition's tail and sends the
model's outputs back.  Tails are built on first use and kept in an LRU cache.

Each connection is served by its own thread; a bad frame, a bad request or a tail
that raises is answered with an ``ERROR`` frame (and, where the stream can no
longer be trusted, the connection is closed) without affecting other clients.
Every socket has a timeout.  See docs/protocol.md.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from cic_fast.core import cost
from cic_fast.frontend.cutting import build_parts, describe_boundary
from cic_fast.frontend.tracing import LayerGraph, as_traced, dtype_of_label
from cic_fast.runtime import messages as M
from cic_fast.runtime import wire as W
from cic_fast.runtime.fingerprint import traced_fingerprint

if TYPE_CHECKING:
    import torch

__all__ = ["Server"]


class _Tail:
    """A built tail with the boundary it expects: name -> (dtype, shape or None)."""

    def __init__(self, module: Any, expected: dict[str, tuple[str | None, Any]]) -> None:
        self.module = module
        self.expected = expected


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
        Most concurrent connections; more are refused with a ``BUSY`` error.
    timeout_s : float
        Socket timeout of each connection: an idle or stalled client is dropped
        after this long.
    graph : LayerGraph, optional
        With a model: ``trace(model, example_inputs)`` if already computed.

    Raises
    ------
    TypeError, ValueError
        See `cic_fast.frontend.tracing.as_traced` (e.g. a graph loaded from JSON,
        which has no program); bad sizes or timeout.

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
    ) -> None:
        if cache_size < 1 or max_clients < 1 or not timeout_s > 0:
            raise ValueError("cache_size and max_clients must be >= 1, timeout_s > 0")
        self.model, self.graph, _ = as_traced(model, example_inputs, graph=graph)
        self.fingerprint = traced_fingerprint(self.graph)
        self.limits = limits or W.Limits()
        self.cache_size = cache_size
        self.max_clients = max_clients
        self.timeout_s = float(timeout_s)
        self._bind = (host, port)
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._tails: OrderedDict[bytes, _Tail] = OrderedDict()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self.stats = {"connections": 0, "requests": 0, "errors": 0, "tails_built": 0}

    # -- lifecycle -----------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on (after :meth:`start`)."""
        if self._sock is None:
            raise RuntimeError("server not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> Server:
        """Bind, listen and serve in a background thread; return self."""
        if self._sock is not None:
            raise RuntimeError("server already started")
        sock = socket.create_server(self._bind, backlog=128)
        sock.settimeout(0.2)  # the accept loop polls the stop flag
        self._sock = sock
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="cic-server-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def serve_forever(self) -> None:
        """Start (if needed) and block until :meth:`close` (or KeyboardInterrupt)."""
        if self._sock is None:
            self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.close()

    def stop(self) -> None:
        """Ask the server to stop; `serve_forever` returns and closes it (signal-safe)."""
        self._stop.set()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop accepting, drop every connection and join the threads."""
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        with self._lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout_s
        threads = [t for _, t in conns]
        if self._accept_thread is not None:
            threads.append(self._accept_thread)
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tails ---------------------------------------------------------------------

    def tail_for(self, on_device: np.ndarray) -> _Tail:
        """The (cached) tail of a partition.

        Raises
        ------
        protocol.ProtocolError
            BAD_PARTITION if the partition is invalid or offloads nothing.
        """
        # the length is part of the key: masks of n and n-1 nodes can pack alike
        key = len(on_device).to_bytes(8, "little") + W.pack_mask(on_device)
        with self._lock:
            tail = self._tails.get(key)
            if tail is not None:
                self._tails.move_to_end(key)
                return tail
        try:
            g = self.graph
            on = cost.check_partition(g.edges, g.n_nodes, on_device, names=g.names)
        except ValueError as e:
            raise W.ProtocolError(W.ErrorCode.BAD_PARTITION, str(e)) from None
        if on.all():
            raise W.ProtocolError(W.ErrorCode.BAD_PARTITION, "partition offloads nothing")
        with self._build_lock:  # one build at a time; a concurrent twin waits, then hits
            with self._lock:
                tail = self._tails.get(key)
            if tail is not None:
                return tail
            _, module, boundary = build_parts(self.graph, on)
            expected = {
                b.name: (None if b.dtype is None else dtype_of_label(b.dtype), b.shape)
                for b in describe_boundary(self.graph, boundary)
            }
            tail = _Tail(module, expected)
            with self._lock:
                self.stats["tails_built"] += 1
                self._tails[key] = tail
                self._tails.move_to_end(key)
                while len(self._tails) > self.cache_size:
                    self._tails.popitem(last=False)
        return tail

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

        tail = self.tail_for(on_device)
        if set(tensors) != set(tail.expected):
            missing = sorted(set(tail.expected) - set(tensors))[:5]
            extra = sorted(set(tensors) - set(tail.expected))[:5]
            raise W.ProtocolError(
                W.ErrorCode.BAD_TENSOR,
                f"boundary tensors do not match the partition (missing {missing}, extra {extra})",
            )
        for name, (dtype, shape) in tail.expected.items():
            t = tensors[name]
            got = str(t.dtype).removeprefix("torch.")
            if (dtype is not None and got != dtype) or (
                shape is not None and tuple(t.shape) != tuple(shape)
            ):
                raise W.ProtocolError(
                    W.ErrorCode.BAD_TENSOR,
                    f"tensor {name!r}: got {got}{list(t.shape)}, "
                    f"expected {dtype}{list(shape or ())}",
                )
        try:
            with torch.inference_mode():
                out = tail.module(tensors)
        except Exception as e:  # the tail is the model's code: report, keep serving
            raise W.ProtocolError(
                W.ErrorCode.INTERNAL, f"tail failed: {type(e).__name__}: {e}"
            ) from None
        leaves, _ = _pytree.tree_flatten(out)
        if not all(isinstance(x, torch.Tensor) for x in leaves):
            raise W.ProtocolError(W.ErrorCode.INTERNAL, "model output holds non-tensor values")
        return leaves

    # -- connections ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)  # e.g. out of file descriptors: back off, keep serving
                continue
            try:
                self._admit(conn)
            except Exception:  # e.g. no thread could be started: drop this one, go on
                with contextlib.suppress(OSError):
                    conn.close()
                with self._lock:
                    self._conns.pop(conn, None)

    def _admit(self, conn: socket.socket) -> None:
        """Start a thread for a new connection, or refuse it with BUSY."""
        conn.settimeout(self.timeout_s)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            busy = len(self._conns) >= self.max_clients
            if not busy:
                t = threading.Thread(
                    target=self._serve_conn, args=(conn,), name="cic-server-conn", daemon=True
                )
                self._conns[conn] = t
                self.stats["connections"] += 1
        if busy:
            self._send_error(conn, W.ErrorCode.BUSY, "too many clients")
            with contextlib.suppress(OSError):
                conn.close()
            return
        t.start()

    def _send_error(self, conn: socket.socket, code: W.ErrorCode, message: str) -> None:
        with self._lock:
            self.stats["errors"] += 1
        with contextlib.suppress(OSError):
            W.send_frame(conn, W.MsgType.ERROR, [M.encode_error(code, message)])

    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            self._session(conn)
        except (OSError, EOFError):
            pass  # peer gone, timed out or closed by close(): nothing to answer
        except W.ProtocolError as e:
            self._send_error(conn, e.code, str(e))
        except Exception as e:  # never let one client take the server down
            self._send_error(conn, W.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._conns.pop(conn, None)

    def _session(self, conn: socket.socket) -> None:
        limits = self.limits
        kind, payload = W.recv_frame(conn, limits)
        if kind != W.MsgType.HELLO:
            raise W.ProtocolError(W.ErrorCode.NOT_READY, f"expected HELLO, got {kind.name}")
        fp, _ = M.decode_hello(payload, limits)
        if fp != self.fingerprint:
            raise W.ProtocolError(
                W.ErrorCode.FINGERPRINT,
                f"model fingerprint {fp[:16]}... is not the server's {self.fingerprint[:16]}...",
            )
        W.send_frame(
            conn,
            W.MsgType.HELLO_OK,
            [M.encode_hello(self.fingerprint, limits.max_frame_bytes)],
        )
        while not self._stop.is_set():
            kind, payload = W.recv_frame(conn, limits)
            if kind == W.MsgType.PROBE:
                W.send_frame(conn, W.MsgType.PROBE_OK, [M.encode_probe_ok(len(payload))])
            elif kind == W.MsgType.INFER:
                request_id, on, tensors = M.decode_request(payload, limits)
                del payload
                t0 = time.perf_counter()
                try:
                    outputs = self.run_tail(on, tensors)
                except W.ProtocolError as e:
                    if e.fatal:
                        raise
                    self._send_error(conn, e.code, str(e))  # the stream is intact: go on
                    continue
                server_s = time.perf_counter() - t0
                parts, _ = M.encode_result(request_id, server_s, outputs)
                with self._lock:
                    self.stats["requests"] += 1
                W.send_frame(conn, W.MsgType.RESULT, parts)
            else:
                raise W.ProtocolError(
                    W.ErrorCode.UNKNOWN_TYPE, f"unexpected {kind.name} frame from a client"
                )
