"""The HTTP form of the wire protocol: stateless ``POST`` requests carrying the same frames.

A request body (``Content-Type: application/octet-stream``) is two frames of
docs/protocol.md back to back: a ``HELLO`` (the model fingerprint), then one
``INFER`` (request id, partition mask, boundary tensors) or ``PROBE`` (filler). The
answer body is one frame: ``RESULT`` / ``PROBE_OK`` with status 200, or ``ERROR`` with
the status of its code (`STATUS`). Every request stands alone, so any replica behind
a load balancer can answer any request; a connection may carry many requests
(HTTP/1.1 keep-alive).

This module holds both sides of that form:

- `HttpService`: what a server does with a body: the length checked before the
  body is read (`HttpService.refuse_length`), the frames validated exactly as the
  TCP server does (it runs on a :class:`~cic_fast.runtime.server.Server`'s tail
  cache, validation and admission queue), the tail run, alone or batched with
  other requests for the same partition (`HttpService.run_batch`);
- `HttpServer`: that service behind the standard library's threading HTTP server
  (``cic-fast serve --backend http``); `cic_fast.runtime.ray_serve` puts it behind
  Ray Serve;
- `HttpTarget` and `read_response`: the client's side (`Client` with
  ``address="http://host:port/path"``).

Nothing received is unpickled; the body's length is checked against the limits
before a byte of it is read.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from cic_fast.runtime import messages as M
from cic_fast.runtime import wire as W

if TYPE_CHECKING:
    from cic_fast.runtime.server import Server

__all__ = [
    "BATCH_HEADER",
    "CONTENT_TYPE",
    "LIMIT_HEADER",
    "STATUS",
    "Answer",
    "HttpServer",
    "HttpService",
    "HttpTarget",
    "Request",
    "frame_limit",
    "free_port",
    "page_error_code",
    "parse_address",
    "read_response",
]

#: The media type of request and answer bodies.
CONTENT_TYPE = "application/octet-stream"
#: Response header with the server's ``max_frame_bytes`` (what ``HELLO_OK`` says over TCP).
LIMIT_HEADER = "X-CIC-Max-Frame-Bytes"
#: Response header of a batching server: how many requests the answer's tail call ran.
BATCH_HEADER = "X-CIC-Batch"

#: HTTP status of an ``ERROR`` frame's code.
STATUS: dict[W.ErrorCode, int] = {
    W.ErrorCode.BAD_FRAME: 400,
    W.ErrorCode.BAD_VERSION: 400,
    W.ErrorCode.UNKNOWN_TYPE: 400,
    W.ErrorCode.TOO_LARGE: 413,
    W.ErrorCode.FINGERPRINT: 409,
    W.ErrorCode.BAD_PARTITION: 422,
    W.ErrorCode.BAD_TENSOR: 422,
    W.ErrorCode.NOT_READY: 400,
    W.ErrorCode.INTERNAL: 500,
    W.ErrorCode.BUSY: 503,
}

# The longest HTTP head (status line and headers) a client reads.
_MAX_HEAD_BYTES = 16384
# The longest body of an answer that is not a frame (a proxy's own error page).
_MAX_TEXT_BYTES = 4096


# -- the server's side ---------------------------------------------------------------


@dataclass
class Answer:
    """An answer body: one frame, and the HTTP status it goes with.

    Attributes
    ----------
    status : int
        200, or `STATUS` of the error's code.
    parts : list of bytes-like
        The frame (header first); tensor data is not copied.
    code : ErrorCode or None
        The ``ERROR`` frame's code, None for a ``RESULT`` or ``PROBE_OK``.
    batch : int
        Requests in the tail call that computed this ``RESULT`` (`BATCH_HEADER`).
    """

    status: int
    parts: list[Any]
    code: W.ErrorCode | None = None
    batch: int = 1

    @property
    def nbytes(self) -> int:
        """The body's length."""
        return sum(memoryview(p).nbytes for p in self.parts)

    def body(self) -> bytes:
        """The body in one piece."""
        return b"".join(self.parts)

    @staticmethod
    def error(code: W.ErrorCode, message: str) -> Answer:
        """An ``ERROR`` frame with its status."""
        payload = M.encode_error(code, message)
        return Answer(
            STATUS.get(code, 400), [W.frame_header(W.MsgType.ERROR, len(payload)), payload], code
        )

    @staticmethod
    def frame(kind: W.MsgType, parts: list[Any], nbytes: int) -> Answer:
        """A 200 answer: one frame of ``kind`` with ``parts`` (``nbytes`` long)."""
        return Answer(200, [W.frame_header(kind, nbytes), *parts])


@dataclass
class Request:
    """A validated ``INFER`` body, ready to run.

    Attributes
    ----------
    request_id : int
        The id the ``RESULT`` repeats.
    on_device : numpy.ndarray
        The partition (checked).
    key : bytes
        The partition as a cache key (node count and packed mask).
    tensors : dict
        Boundary tensors by wire name, each checked against the partition.
    t0 : float
        `time.perf_counter` when the body started to be parsed (the server's
        seconds count from there).
    """

    request_id: int
    on_device: np.ndarray
    key: bytes
    tensors: dict[str, Any]
    t0: float = field(default_factory=time.perf_counter)


class HttpService:
    """The HTTP form of the protocol on a :class:`~cic_fast.runtime.server.Server`'s tails.

    The server need not be started: the service uses its fingerprint, limits,
    tail cache (`Server.tail_for`), validation and compute slots
    (`Server.compute`), so the HTTP and TCP forms validate and run requests
    alike.

    Parameters
    ----------
    server : Server
        The model's server (its ``cache_size``, ``limits``, ``workers`` apply).
    verify_batches : bool
        Before a partition's requests are first batched, the batch is also run
        one request at a time and the answers compared (`run_batch`).

    Attributes
    ----------
    max_body_bytes : int
        The largest request body: a ``HELLO`` and a frame of ``max_frame_bytes``.
    stats : dict
        ``requests`` answered with a RESULT, ``errors``, ``busy``, ``batches``
        (tail calls that ran more than one request), ``batched`` (requests in
        them), ``unbatchable`` (partitions found unfit for batching).
    """

    def __init__(self, server: Server, *, verify_batches: bool = True) -> None:
        self.server = server
        self.limits = server.limits
        self.fingerprint = server.fingerprint
        self.max_hello_bytes = server.max_hello_bytes
        self.max_body_bytes = 2 * W.HEADER.size + self.max_hello_bytes + self.limits.max_frame_bytes
        self.verify_batches = verify_batches
        self._lock = threading.Lock()
        # partition key -> True (batched answers verified), False (never batch)
        self._batchable: OrderedDict[bytes, bool] = OrderedDict()
        self.stats = {
            "requests": 0,
            "errors": 0,
            "busy": 0,
            "batches": 0,
            "batched": 0,
            "unbatchable": 0,
        }

    # -- parsing -------------------------------------------------------------------

    def refuse_length(self, content_length: str | None, chunked: bool = False) -> Answer | None:
        """Check a request's ``Content-Length`` before its body is read; None if it is fine.

        A body without a length (chunked) or with one that is not a number is
        refused (411 / 400), one over `max_body_bytes` is refused (413) unread.
        """
        if chunked or content_length is None:
            answer = Answer.error(W.ErrorCode.BAD_FRAME, "a body needs a Content-Length")
            answer.status = 411
            return self.count(answer)
        try:
            n = int(content_length.strip())
        except ValueError:
            n = -1
        if n < 0 or not content_length.strip().isdigit():
            return self.count(Answer.error(W.ErrorCode.BAD_FRAME, "bad Content-Length"))
        if n > self.max_body_bytes:
            return self.count(
                Answer.error(
                    W.ErrorCode.TOO_LARGE,
                    f"body of {n} bytes over the limit of {self.max_body_bytes}",
                )
            )
        return None

    def count(self, answer: Answer) -> Answer:
        """Count an error answer in `stats`; return it."""
        with self._lock:
            self.stats["errors"] += 1
            if answer.code == W.ErrorCode.BUSY:
                self.stats["busy"] += 1
        return answer

    def parse(self, body: bytes | bytearray | memoryview) -> Request | Answer:
        """Validate a request body: a `Request` to run, or the `Answer` (PROBE_OK, ERROR).

        The ``HELLO``'s fingerprint must be the server's (409 otherwise); the
        second frame must fill the rest of the body exactly; an ``INFER`` is
        checked like the TCP server checks it (partition, then each tensor's
        header before it is allocated).
        """
        t0 = time.perf_counter()
        try:
            r = W.Reader(body, self.limits)
            kind, n = W.parse_header(bytes(r.take(W.HEADER.size, "frame header")), self.limits)
            if kind != W.MsgType.HELLO:
                raise W.ProtocolError(W.ErrorCode.NOT_READY, f"expected HELLO, got {kind.name}")
            if n > self.max_hello_bytes:
                raise W.ProtocolError(
                    W.ErrorCode.TOO_LARGE, f"HELLO frame of {n} bytes over {self.max_hello_bytes}"
                )
            fp, _ = M.decode_hello(r.take(n, "HELLO payload"), self.limits)
            if fp != self.fingerprint:
                raise W.ProtocolError(
                    W.ErrorCode.FINGERPRINT,
                    f"model fingerprint {fp[:16]}... is not the server's "
                    f"{self.fingerprint[:16]}...",
                )
            kind, n = W.parse_header(bytes(r.take(W.HEADER.size, "frame header")), self.limits)
            if n != r.left:
                raise W.ProtocolError(
                    W.ErrorCode.BAD_FRAME,
                    f"{kind.name} frame of {n} bytes in a body with {r.left} bytes left",
                )
            payload = W.Reader(r.take(n, f"{kind.name} payload"), self.limits)
            if kind == W.MsgType.PROBE:
                return Answer.frame(W.MsgType.PROBE_OK, [M.encode_probe_ok(n)], 8)
            if kind != W.MsgType.INFER:
                raise W.ProtocolError(
                    W.ErrorCode.UNKNOWN_TYPE, f"unexpected {kind.name} frame from a client"
                )
            request_id, nodes, mask = M.read_request_mask(payload)
            on = W.unpack_mask(mask, nodes)
            tail = self.server.tail_for(on)
            tensors = dict(W.read_tensors(payload, tail.check))
            payload.end()
            if len(tensors) != len(tail.expected):  # names were checked, and are distinct
                missing = sorted(set(tail.expected) - set(tensors))[:5]
                raise W.ProtocolError(
                    W.ErrorCode.BAD_TENSOR, f"boundary tensors missing: {missing}"
                )
        except W.ProtocolError as e:
            return self.count(Answer.error(e.code, str(e)))
        key = nodes.to_bytes(8, "little") + mask
        return Request(request_id, on, key, tensors, t0)

    # -- running -------------------------------------------------------------------

    def _result(self, req: Request, outputs: list[Any]) -> Answer:
        parts, n = M.encode_result(req.request_id, time.perf_counter() - req.t0, outputs)
        with self._lock:
            self.stats["requests"] += 1
        return Answer.frame(W.MsgType.RESULT, parts, n)

    def run(self, req: Request, *, admit: bool = True) -> Answer:
        """Run one request's tail: the RESULT, or an ERROR (BUSY when not admitted).

        ``admit``: through the server's compute slots and admission queue
        (`Server.compute`); False runs it at once (Ray Serve queues requests itself).
        """
        try:
            if admit:
                outputs = self.server.compute(req.on_device, req.tensors)
            else:
                outputs = self.server.run_tail(req.on_device, req.tensors)
        except W.ProtocolError as e:
            return self.count(Answer.error(e.code, str(e)))
        except Exception as e:  # never let one request take the service down
            return self.count(Answer.error(W.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))
        return self._result(req, outputs)

    def handle(self, body: bytes | bytearray | memoryview, *, admit: bool = True) -> Answer:
        """`parse` then `run`: the answer to one request body (never raises)."""
        try:
            req = self.parse(body)
        except Exception as e:  # a bug, not the body's fault: still an answer
            return self.count(Answer.error(W.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))
        return req if isinstance(req, Answer) else self.run(req, admit=admit)

    def run_batch(self, reqs: list[Request]) -> list[Answer]:
        """Answer several requests; those that share a partition run as one tail call.

        A partition is batched when its tail is batchable: every boundary tensor
        and every model output has the example's batch size ``b`` as its first
        dimension (the model's batch dimension is 0), so the requests' tensors
        are concatenated along dimension 0 and each answer is its slice of
        ``b`` rows. The first time a partition is batched the requests are also
        run one at a time and the answers compared (``verify_batches``); a
        partition whose batched answers differ, or whose batched call fails, is
        never batched again. Others run one at a time. Answers come in the
        order of ``reqs``. Runs at once (no admission queue).
        """
        groups: OrderedDict[bytes, list[int]] = OrderedDict()
        for i, r in enumerate(reqs):
            groups.setdefault(r.key, []).append(i)
        answers: list[Answer | None] = [None] * len(reqs)
        for key, idx in groups.items():
            group = [reqs[i] for i in idx]
            outs = self._batched(key, group) if len(group) > 1 else None
            for j, (i, r) in enumerate(zip(idx, group, strict=True)):
                if outs is None:
                    answers[i] = self.run(r, admit=False)
                else:
                    answer = answers[i] = self._result(r, outs[j])
                    answer.batch = len(group)
        return [a for a in answers if a is not None]

    def _batch_rows(self, tail: Any) -> int | None:
        """The batch size of the example (rows per request) if the tail is batchable."""
        prog = self.server.graph.program
        assert prog is not None  # a Server's graph has its program
        _, meta = prog.output_structure()
        shapes = [shape for _, shape in tail.expected.values()] + [shape for _, shape in meta]
        rows = {tuple(s)[:1] if s is not None else None for s in shapes}
        if len(rows) != 1 or None in rows or () in rows:
            return None
        ((b,),) = rows  # type: ignore[misc]
        return int(b) if b >= 1 else None

    def _batched(self, key: bytes, group: list[Request]) -> list[list[Any]] | None:
        """The outputs of each request of one partition from one tail call, or None."""
        import torch
        from torch.utils import _pytree

        with self._lock:
            verdict = self._batchable.get(key)
        if verdict is False:
            return None
        try:
            tail = self.server.tail_for(group[0].on_device)
        except W.ProtocolError:
            return None
        rows = self._batch_rows(tail)
        if rows is None:
            self._set_batchable(key, False)
            return None
        names = list(tail.expected)
        try:
            stacked = {n: torch.cat([r.tensors[n] for r in group], dim=0) for n in names}
            with torch.inference_mode():
                out = tail.module(tail.module.codec.restore(stacked))
            leaves, _ = _pytree.tree_flatten(out)
            total = rows * len(group)
            if not all(
                isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == total for x in leaves
            ):
                raise ValueError("the batched outputs do not have one slice per request")
            split = [list(x.split(rows, dim=0)) for x in leaves]
            outs = [[s[i] for s in split] for i in range(len(group))]
        except Exception:  # not batchable after all: one at a time, from now on
            self._set_batchable(key, False)
            return None
        if verdict is None and self.verify_batches:
            ok = True
            for r, got in zip(group, outs, strict=True):
                try:
                    want = self.server.run_tail(r.on_device, r.tensors)
                except W.ProtocolError:
                    return None  # each request is answered (with its error) one at a time
                ok = ok and len(want) == len(got)
                ok = ok and all(
                    w.dtype == g.dtype
                    and w.shape == g.shape
                    and torch.allclose(w, g, rtol=1e-4, atol=1e-5, equal_nan=True)
                    if w.is_floating_point()
                    else torch.equal(w, g)
                    for w, g in zip(want, got, strict=False)
                )
            self._set_batchable(key, ok)
            if not ok:
                return None
        with self._lock:
            self.stats["batches"] += 1
            self.stats["batched"] += len(group)
        return outs

    def _set_batchable(self, key: bytes, ok: bool) -> None:
        with self._lock:
            if not ok and self._batchable.get(key) is not False:
                self.stats["unbatchable"] += 1
            self._batchable[key] = ok
            self._batchable.move_to_end(key)
            while len(self._batchable) > 4 * max(1, self.server.cache_size):
                self._batchable.popitem(last=False)


# -- the standard library's HTTP server ----------------------------------------------


class HttpServer:
    """Serve a model's tails over HTTP with the standard library (a thread per connection).

    ``POST path`` with a request body (see the module docstring); answered through
    an `HttpService` on ``server`` (its validation, tail cache, compute slots and
    admission queue: a full queue answers 503 at once). A connection may carry
    requests one after another (HTTP/1.1 keep-alive); one idle for
    ``server.timeout_s`` is closed, and a body must arrive within
    ``server.frame_timeout_s``.

    Parameters
    ----------
    server : Server
        The model's server (not started: only its tails and limits are used).
    host, port : str, int
        Where to listen; port 0 picks a free one (see `url`).
    path : str
        The path requests are posted to (404 elsewhere).
    max_connections : int
        Most connections at once (each holds a thread); beyond it a new
        connection is answered 503 and closed.
    """

    def __init__(
        self,
        server: Server,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        path: str = "/infer",
        max_connections: int = 64,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        self.service = HttpService(server)
        self.path = path
        self.max_connections = int(max_connections)
        self._open = 0
        self._lock = threading.Lock()
        self._httpd = _ThreadingServer((host, port), _handler_class(self))
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on."""
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://host:port/path``: the address a `Client` takes."""
        host, port = self.address
        return f"http://{host}:{port}{self.path}"

    def admit(self) -> bool:
        """Take a connection slot (False: at the limit)."""
        with self._lock:
            if self._open >= self.max_connections:
                return False
            self._open += 1
            return True

    def release(self) -> None:
        """Give a connection slot back."""
        with self._lock:
            self._open -= 1

    def start(self) -> HttpServer:
        """Serve in a background thread; return self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until `stop`."""
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop accepting connections (requests in flight finish); not from a handler."""
        self._httpd.shutdown()

    def close(self) -> None:
        """Stop and close the listening socket."""
        with contextlib.suppress(Exception):
            if self._thread is not None:
                self._httpd.shutdown()
                self._thread.join(5.0)
        self._httpd.server_close()

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    owner: HttpServer

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.owner.admit():
            busy = Answer.error(W.ErrorCode.BUSY, "too many connections")
            head = (
                f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {busy.nbytes}\r\nConnection: close\r\n\r\n"
            ).encode()
            with contextlib.suppress(OSError):
                request.settimeout(0.0)
                request.send(head + busy.body())
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner.release()


def _handler_class(owner: HttpServer) -> type[http.server.BaseHTTPRequestHandler]:
    service = owner.service
    server = service.server
    limit = str(service.limits.max_frame_bytes)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = server.timeout_s  # idle keep-alive connections, and each read

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: errors go back to the client as ERROR frames

        def setup(self) -> None:
            super().setup()
            with contextlib.suppress(OSError):  # the answer goes out without Nagle's wait
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, answer: Answer, *, close: bool = False) -> None:
            # head and body in one write (a head alone would wait for the peer's ACK)
            conn = "Connection: close\r\n" if close else ""
            head = (
                f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {answer.nbytes}\r\n"
                f"{LIMIT_HEADER}: {limit}\r\n{conn}\r\n"
            ).encode("ascii")
            if close:
                self.close_connection = True
            self.wfile.write(b"".join([head, *answer.parts]))

        def do_GET(self) -> None:
            self._send(Answer.error(W.ErrorCode.UNKNOWN_TYPE, "POST a request body"))

        def do_POST(self) -> None:
            if self.path != owner.path:
                answer = Answer.error(W.ErrorCode.UNKNOWN_TYPE, f"no such path {self.path!r}")
                answer.status = 404
                self._send(answer, close=True)
                return
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            refused = service.refuse_length(self.headers.get("Content-Length"), chunked)
            if refused is not None:  # the body is not read: the connection cannot go on
                self._send(refused, close=True)
                return
            n = int(self.headers["Content-Length"])
            body = bytearray(n)
            got = 0
            deadline = time.monotonic() + server.frame_timeout_s
            with memoryview(body) as view:
                while got < n and time.monotonic() < deadline:
                    try:
                        k = self.rfile.readinto(view[got : got + (1 << 20)])
                    except (TimeoutError, OSError):
                        k = 0
                    if not k:
                        break
                    got += k
            if got < n:  # truncated or too slow: answer if the peer still listens, then close
                short = Answer.error(W.ErrorCode.BAD_FRAME, f"truncated body: {got} of {n} bytes")
                with contextlib.suppress(OSError):
                    self._send(service.count(short), close=True)
                self.close_connection = True
                return
            self._send(service.handle(body))

    return Handler


# -- the client's side ---------------------------------------------------------------


@dataclass(frozen=True)
class HttpTarget:
    """Where a client posts its requests: ``http://host:port/path``.

    Attributes
    ----------
    host, port, path : str, int, str
        The server's address and the request path.
    """

    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        """The address as a URL."""
        return f"http://{self.host}:{self.port}{self.path}"

    def request_head(self, body_bytes: int) -> bytes:
        """The request line and headers of a ``POST`` of ``body_bytes``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: {host}:{self.port}\r\n"
            f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {body_bytes}\r\n\r\n"
        ).encode("ascii")


def parse_address(address: Any) -> tuple[tuple[str, int], HttpTarget | None]:
    """A client's server address: ``(host, port)`` (TCP) or ``"http://host:port/path"``.

    Returns
    -------
    (host, port), HttpTarget or None
        Where to connect, and the HTTP target (None for TCP).

    Raises
    ------
    TypeError
        Neither a (host, port) pair nor a string.
    ValueError
        A string that is not an ``http://`` URL with a host (``https`` is not
        spoken: put a TLS-terminating proxy in front), or a bad port.
    """
    if isinstance(address, str):
        u = urlsplit(address)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(
                f"server address {address!r}: expected http://host:port/path (or (host, port))"
            )
        try:
            port = u.port or 80
        except ValueError:
            raise ValueError(f"server address {address!r}: bad port") from None
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        target = HttpTarget(u.hostname, port, path)
        return (target.host, target.port), target
    if isinstance(address, tuple | list) and len(address) == 2:
        host, port = address
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"server address {address!r}: bad port") from None
        return (str(host), port), None
    raise TypeError(
        f"server address must be (host, port) or 'http://host:port/path', not {address!r}"
    )


def page_error_code(status: int) -> W.ErrorCode:
    """The error code a device reads from an answer that is not a frame (a proxy's
    own error page): BUSY for a 503 (Ray Serve's full queue, an overloaded
    proxy), INTERNAL for another 5xx, BAD_FRAME else."""
    if status == 503:
        return W.ErrorCode.BUSY
    return W.ErrorCode.INTERNAL if status >= 500 else W.ErrorCode.BAD_FRAME


def read_response(
    reader: W.SocketReader,
    limits: W.Limits,
    *,
    deadline: float | None = None,
    tick: W.Tick | None = None,
) -> tuple[W.MsgType, W.Payload, dict[str, str]]:
    """Read an HTTP answer's head and the head of its frame: (frame type, payload, headers).

    The payload is still arriving (read it like `SocketReader.frame`'s);
    ``headers`` has lower-case names (``connection: close`` says that the server
    closes the connection after this answer).

    Raises
    ------
    RemoteError
        An answer whose body is not a frame (a proxy's own error page): BUSY for
        a 503, INTERNAL for another 5xx, BAD_FRAME else.
    ProtocolError
        A malformed head, no ``Content-Length``, a frame that is not the whole body.
    EOFError, ConnectionError, TimeoutError
        As `SocketReader.frame`.
    """
    head = reader.read_until(
        b"\r\n\r\n", _MAX_HEAD_BYTES, "HTTP head", deadline=deadline, tick=tick
    )
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise W.ProtocolError(W.ErrorCode.BAD_FRAME, f"bad HTTP status line {lines[0][:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise W.ProtocolError(W.ErrorCode.BAD_FRAME, f"bad HTTP header {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise W.ProtocolError(W.ErrorCode.BAD_FRAME, "chunked HTTP answer")
    length_text = headers.get("content-length", "")
    if not length_text.isdigit():
        raise W.ProtocolError(W.ErrorCode.BAD_FRAME, "HTTP answer without Content-Length")
    length = int(length_text)
    if headers.get("content-type", "").split(";")[0].strip().lower() != CONTENT_TYPE:
        # not a frame: a proxy's or a framework's own error
        if length > _MAX_TEXT_BYTES:
            raise W.ProtocolError(W.ErrorCode.TOO_LARGE, f"HTTP {status} page of {length} bytes")
        text = bytes(reader.read_exact(length, "HTTP body")) if length else b""
        raise W.RemoteError(
            page_error_code(status), f"HTTP {status}: {text[:200].decode('utf-8', 'replace')}"
        )
    try:
        kind, payload = reader.frame(deadline=deadline, tick=tick)
    except EOFError:
        raise ConnectionError("connection closed after the HTTP head") from None
    if W.HEADER.size + payload.left != length:
        raise W.ProtocolError(
            W.ErrorCode.BAD_FRAME,
            f"HTTP body of {length} bytes holds a frame of {W.HEADER.size + payload.left}",
        )
    if status != 200 and kind != W.MsgType.ERROR:
        raise W.ProtocolError(W.ErrorCode.BAD_FRAME, f"HTTP {status} with a {kind.name} frame")
    return kind, payload, headers


def frame_limit(headers: dict[str, str]) -> int | None:
    """The server's ``max_frame_bytes`` from an answer's headers (`LIMIT_HEADER`), if given."""
    text = headers.get(LIMIT_HEADER.lower(), "")
    return int(text) if text.isdigit() else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (for servers that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
