"""The wire format between a device (``Client``) and a server (``Server``): framing and tensors.

Everything on the wire is a *frame*: a fixed 12-byte header followed by a payload.

    offset  size  field
    0       4     magic  b"CICF"
    4       1     version (1)
    5       1     type (:class:`MsgType`)
    6       2     flags (0; any other value is refused)
    8       4     payload length in bytes, unsigned little-endian

All integers are little-endian.  Payloads are plain structs of integers, UTF-8
strings (``u16`` length + bytes) and raw tensor bytes with a small header
(``dtype`` code, ``ndim``, ``u32`` dims): nothing received is ever unpickled or
passed to ``torch.load``.  Every size is checked against :class:`Limits` before
anything is allocated, and a payload must be consumed exactly (no trailing bytes).
docs/protocol.md describes the messages and the session.

Any violation raises :class:`ProtocolError` with an :class:`ErrorCode`; an
``ERROR`` frame received from the peer raises :class:`RemoteError`.  The payload
of each message is in `cic_fast.runtime.messages`.  torch is imported lazily (only
to convert tensors).
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "HEADER",
    "MAGIC",
    "VERSION",
    "ErrorCode",
    "Limits",
    "MsgType",
    "Payload",
    "ProtocolError",
    "Reader",
    "RemoteError",
    "SocketReader",
    "TensorCheck",
    "Tick",
    "connect",
    "dtype_name",
    "encode_string",
    "encode_tensors",
    "frame_header",
    "pack_mask",
    "parse_header",
    "read_tensors",
    "recv_frame",
    "send_frame",
    "tensor_parts",
    "unpack_mask",
]

MAGIC = b"CICF"
VERSION = 1
HEADER = struct.Struct("<4sBBHI")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TENSOR = struct.Struct("<BB")  # dtype code, ndim


class MsgType(IntEnum):
    """Frame types (the ``type`` byte of the header)."""

    HELLO = 1
    """client -> server: model fingerprint; the first frame of a session."""
    HELLO_OK = 2
    """server -> client: its fingerprint and its frame limit."""
    INFER = 3
    """client -> server: partition bitmask and boundary tensors."""
    RESULT = 4
    """server -> client: server seconds and the model's flattened outputs."""
    PROBE = 5
    """client -> server: filler bytes, to time a transfer."""
    PROBE_OK = 6
    """server -> client: the number of filler bytes received."""
    ERROR = 15
    """either way: an :class:`ErrorCode` and a message."""


class ErrorCode(IntEnum):
    """Codes of ``ERROR`` frames."""

    BAD_FRAME = 1
    """Bad magic, flags or a malformed or truncated payload (connection closed)."""
    BAD_VERSION = 2
    """Unsupported protocol version (connection closed)."""
    UNKNOWN_TYPE = 3
    """Unknown or unexpected frame type (connection closed)."""
    TOO_LARGE = 4
    """A frame or tensor over the limits (connection closed)."""
    FINGERPRINT = 5
    """The client's model is not the server's (connection closed)."""
    BAD_PARTITION = 6
    """Partition invalid (input on the server, not closed) or all on the device."""
    BAD_TENSOR = 7
    """Boundary tensors are not the partition's (names, dtypes or shapes)."""
    NOT_READY = 8
    """A request before the handshake (connection closed)."""
    INTERNAL = 9
    """The server failed to execute the tail."""
    BUSY = 10
    """Too many clients (connection closed)."""


#: Codes after which the sender closes the connection.
FATAL_CODES = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.BAD_VERSION,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.TOO_LARGE,
        ErrorCode.FINGERPRINT,
        ErrorCode.NOT_READY,
        ErrorCode.BUSY,
    }
)


class ProtocolError(Exception):
    """A frame that breaks the protocol (raised while reading or validating).

    Attributes
    ----------
    code : ErrorCode
        What went wrong, as sent in the ``ERROR`` frame.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)

    @property
    def fatal(self) -> bool:
        """True if the connection must be closed after reporting it."""
        return self.code in FATAL_CODES


class RemoteError(Exception):
    """The peer answered with an ``ERROR`` frame.

    Attributes
    ----------
    code : int
        The peer's error code (an :class:`ErrorCode` value, or unknown).
    """

    def __init__(self, code: int, message: str) -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"code {code}"
        super().__init__(f"server error {name}: {message}")
        self.code = code


@dataclass(frozen=True)
class Limits:
    """Bounds checked on every frame before anything is allocated.

    Attributes
    ----------
    max_frame_bytes : int
        Largest payload accepted (default 64 MiB).
    max_tensor_bytes : int
        Largest single tensor (default 64 MiB).
    max_tensors : int
        Most tensors in one frame.
    max_ndim : int
        Most dimensions of a tensor.
    max_name_bytes : int
        Longest UTF-8 string (tensor names, fingerprints, messages).
    max_nodes : int
        Largest partition bitmask, in nodes.
    """

    max_frame_bytes: int = 64 << 20
    max_tensor_bytes: int = 64 << 20
    max_tensors: int = 4096
    max_ndim: int = 8
    max_name_bytes: int = 1024
    max_nodes: int = 1 << 20


# code -> (torch dtype name, bytes per element)
_DTYPES: dict[int, tuple[str, int]] = {
    1: ("float32", 4),
    2: ("float16", 2),
    3: ("bfloat16", 2),
    4: ("float64", 8),
    5: ("int64", 8),
    6: ("int32", 4),
    7: ("int16", 2),
    8: ("int8", 1),
    9: ("uint8", 1),
    10: ("bool", 1),
}
_DTYPE_CODE = {name: code for code, (name, _) in _DTYPES.items()}


def dtype_name(code: int) -> str:
    """The torch dtype name (``"float32"``) of a wire dtype code."""
    return _DTYPES[code][0]


# -- framing -------------------------------------------------------------------------


def frame_header(msg_type: int, length: int) -> bytes:
    """The 12-byte header of a frame whose payload has ``length`` bytes."""
    if not 0 <= length < 1 << 32:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"payload of {length} bytes cannot be framed")
    return HEADER.pack(MAGIC, VERSION, int(msg_type), 0, length)


class Tick:
    """A hook that a blocking send, receive or connect calls when its wait passes an instant.

    Given as ``tick=`` to `send_frame`, `SocketReader.frame` or `connect` (always
    with a deadline), it lets the caller watch a request while the request's own
    thread waits on the socket, without another thread and without losing track
    of the frame: each blocking call waits at most until ``at`` (a
    `time.monotonic` instant), then calls the tick and goes on where it stopped
    (sends are a loop over ``sock.send``, so the count of bytes that went out is
    exact). A wait that ends before ``at`` (an answer that is in time) never calls
    it: the hook costs one comparison per blocking call.

    Attributes
    ----------
    at : float
        When to call the tick next; ``math.inf``: never. `__call__` must move it
        forward (or raise).
    sent : int
        Bytes the socket accepted from `send_frame` calls made with this tick.
    received : int
        Bytes received through `SocketReader` reads made with this tick.
    sock : socket.socket or None
        The socket `connect` made with this tick, set before it connects (so that
        another thread can end the wait by shutting it down).
    """

    def __init__(self) -> None:
        self.at = math.inf
        self.sent = 0
        self.received = 0
        self.sock: socket.socket | None = None

    def __call__(self) -> None:
        """Called once the wait has passed ``at``; may raise to abort the wait.

        The default never calls again.
        """
        self.at = math.inf


def _ms(seconds: float) -> int:
    """A poll(2) timeout in whole milliseconds, rounded up (so it never wakes early)."""
    return max(0, math.ceil(seconds * 1000.0))


def connect(
    address: tuple[str, int], *, deadline: float, tick: Tick | None = None
) -> socket.socket:
    """A TCP connection to ``address`` (a blocking socket), connected by ``deadline``.

    Without ``tick``, `socket.create_connection` with what is left of the deadline.
    With one, a non-blocking connect whose wait calls ``tick`` (see `Tick`) at
    ``tick.at``; ``tick.sock`` is set to the socket before it connects. Tries each
    address ``getaddrinfo`` gives, like `socket.create_connection`.

    Raises
    ------
    TimeoutError
        The deadline passed.
    OSError
        Refused, unreachable, ...; or whatever ``tick`` raised.
    """
    left = deadline - time.monotonic()
    if left <= 0.0:
        raise TimeoutError("timed out: deadline passed before connecting")
    if tick is None:
        return socket.create_connection(address, timeout=left)
    host, port = address
    error: OSError | None = None
    for af, kind, proto, _, sa in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(af, kind, proto)
        try:
            tick.sock = sock
            sock.setblocking(False)
            rc = sock.connect_ex(sa)
            if rc not in (0, errno.EINPROGRESS, errno.EAGAIN):
                raise OSError(rc, os.strerror(rc))
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            while rc != 0:
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError("timed out: deadline passed while connecting")
                if tick.at <= now:
                    tick()
                    continue
                if poller.poll(_ms(min(deadline, tick.at) - now)):
                    rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if rc:
                        raise OSError(rc, os.strerror(rc))
                    break
            sock.setblocking(True)
            return sock
        except OSError as e:
            sock.close()
            if isinstance(e, TimeoutError):
                raise
            error = e
        except BaseException:
            sock.close()
            raise
    raise error if error is not None else OSError(f"no address for {host!r}")


class _Deadline:
    """Sets a socket's timeout to what is left of a deadline before each blocking call.

    ``deadline`` is a `time.monotonic` instant, or None for the socket's own timeout
    (per call). The socket's timeout is restored when the block ends.
    """

    def __init__(self, sock: socket.socket, deadline: float | None, what: str) -> None:
        self.sock = sock
        self.deadline = deadline
        self.what = what
        self.saved = sock.gettimeout()

    def __enter__(self) -> _Deadline:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.deadline is None:
            return
        self.sock.settimeout(self.saved)
        if exc_type is not None and issubclass(exc_type, TimeoutError):
            # the socket says "timed out": say which deadline
            raise TimeoutError(f"timed out: deadline passed while {self.what}") from exc

    def arm(self) -> None:
        """Before a blocking call: the time left, or TimeoutError if none is."""
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0.0:
            raise TimeoutError(f"timed out: deadline passed while {self.what}")
        self.sock.settimeout(left)


def send_frame(
    sock: socket.socket,
    msg_type: int,
    parts: Sequence[Any] = (),
    *,
    deadline: float | None = None,
    tick: Tick | None = None,
    prefix: bytes = b"",
) -> int:
    """Send one frame whose payload is the concatenation of ``parts`` (bytes-like).

    Parameters
    ----------
    deadline : float, optional
        A `time.monotonic` instant by which the whole frame must be written
        (TimeoutError otherwise); None: the socket's own timeout applies. A
        non-blocking socket with a deadline is sent to first and polled only
        when its buffer is full, and stays non-blocking.
    tick : Tick, optional
        Called whenever a wait for the socket passes ``tick.at`` (with a deadline
        only); the bytes the socket accepts are added to ``tick.sent``.
    prefix : bytes
        Bytes written before the frame's header, in the same write (the HTTP
        form of the protocol: a request line and headers, then a ``HELLO``);
        not part of the frame.

    Returns
    -------
    int
        Bytes written, header (and ``prefix``) included.
    """
    views = [memoryview(p).cast("B") for p in parts]
    length = sum(v.nbytes for v in views)
    head = prefix + frame_header(msg_type, length)
    if tick is not None:
        if deadline is None:
            raise ValueError("send_frame: a tick needs a deadline")
        _send_ticking(sock, head, views, deadline, tick)
        return len(head) + length
    if deadline is not None and sock.gettimeout() == 0.0:
        send_buffers(sock, _send_buffers(head, views), deadline)
        return len(head) + length
    with _Deadline(sock, deadline, "sending a frame") as dl:
        small = [v for v in views if v.nbytes < 65536]
        if len(small) == len(views):
            dl.arm()
            sock.sendall(b"".join([head, *views]))
        else:
            # large tensors are sent from their own memory, without a joined copy
            pending: list[Any] = [head]
            for v in views:
                if v.nbytes < 65536:
                    pending.append(v)
                    continue
                dl.arm()
                sock.sendall(b"".join(pending))
                pending = []
                dl.arm()
                sock.sendall(v)
            if pending:
                dl.arm()
                sock.sendall(b"".join(pending))
    return len(head) + length


def _send_buffers(head: bytes, views: list[memoryview]) -> list[Any]:
    """Small parts joined with their neighbours, large ones (64 KiB+) on their own."""
    bufs: list[Any] = []
    pending: list[Any] = [head]
    for v in views:
        if v.nbytes < 65536:
            pending.append(v)
            continue
        bufs += [b"".join(pending), v]
        pending = []
    if pending:
        bufs.append(b"".join(pending))
    return bufs


def send_buffers(sock: socket.socket, bufs: Sequence[Any], deadline: float) -> None:
    """Write ``bufs`` to a non-blocking socket by ``deadline``: send first, poll when full.

    `send_frame` on a non-blocking socket, and what `send_frame_nowait` left. Why:
    a socket with a timeout costs a ``poll`` before every ``send`` and a
    ``settimeout`` (an ``ioctl``) per deadline, each releasing the GIL; a server's
    answer almost always fits the empty socket buffer, so here it is one ``send``.

    Raises
    ------
    TimeoutError
        The deadline passed first.
    """
    poller: Any = None
    for buf in bufs:
        view = memoryview(buf).cast("B")
        off, n = 0, view.nbytes
        while off < n:
            try:
                off += sock.send(view[off:])
                continue
            except (BlockingIOError, InterruptedError):
                pass
            left = deadline - time.monotonic()
            if left <= 0.0:
                raise TimeoutError("timed out: deadline passed while sending a frame")
            if poller is None:
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
            poller.poll(left * 1000.0)


def send_frame_nowait(sock: socket.socket, msg_type: MsgType, parts: Sequence[Any]) -> list[Any]:
    """Write what a non-blocking socket takes of one frame now, without waiting.

    Returns
    -------
    list
        What is left to send (buffers, in order; empty when the whole frame was
        written), for `send_buffers`.
    """
    views = [memoryview(p).cast("B") for p in parts]
    bufs = _send_buffers(frame_header(msg_type, sum(v.nbytes for v in views)), views)
    for i, buf in enumerate(bufs):
        view = memoryview(buf).cast("B")
        try:
            k = sock.send(view)
        except (BlockingIOError, InterruptedError):
            k = 0
        if k < view.nbytes:
            return [view[k:], *bufs[i + 1 :]]
    return []


def _send_ticking(
    sock: socket.socket, head: bytes, views: list[memoryview], deadline: float, tick: Tick
) -> None:
    """`send_frame` with a tick: a loop over ``sock.send``, resumable after each wait.

    Small parts go out joined with their neighbours (as in `send_frame`), large
    ones from their own memory. ``sock.send`` either times out having sent nothing
    or returns the count it sent, so a wake-up at ``tick.at`` never loses a byte.
    """
    bufs = _send_buffers(head, views)
    saved = sock.gettimeout()
    try:
        for buf in bufs:
            view = memoryview(buf).cast("B")
            off, n = 0, view.nbytes
            while off < n:
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError("timed out: deadline passed while sending a frame")
                if tick.at <= now:
                    tick()
                    continue
                sock.settimeout(min(deadline, tick.at) - now)
                try:
                    k = sock.send(view[off:])
                except TimeoutError:
                    continue  # nothing sent: the loop's top calls the tick or times out
                off += k
                tick.sent += k
    finally:
        sock.settimeout(saved)


# Payloads up to this size get their buffer at once; larger ones grow as bytes
# arrive (doubling), so a header that claims a large frame costs nothing until
# the bytes come.
_EAGER_BYTES = 1 << 20


def _recv_exactly(sock: socket.socket, n: int, what: str, dl: _Deadline) -> bytearray:
    buf = bytearray(min(n, _EAGER_BYTES))
    got = 0
    while got < n:
        if got == len(buf):
            buf.extend(bytes(min(n, 2 * len(buf)) - len(buf)))
        dl.arm()
        with memoryview(buf) as view:
            k = sock.recv_into(view[got:], len(buf) - got)
        if k == 0:
            raise ConnectionError(f"connection closed after {got} of {n} bytes of the {what}")
        got += k
    return buf


def parse_header(data: bytes | bytearray | memoryview, limits: Limits) -> tuple[MsgType, int]:
    """Validate a 12-byte header; return the frame type and payload length.

    Raises
    ------
    ProtocolError
        Bad magic (BAD_FRAME), version (BAD_VERSION), flags (BAD_FRAME), type
        (UNKNOWN_TYPE) or a payload over ``limits.max_frame_bytes`` (TOO_LARGE).
    """
    magic, version, msg_type, flags, length = HEADER.unpack(bytes(data))
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"bad magic {magic!r}")
    if version != VERSION:
        raise ProtocolError(
            ErrorCode.BAD_VERSION, f"protocol version {version} not supported (this is {VERSION})"
        )
    if flags != 0:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown flags 0x{flags:04x}")
    try:
        kind = MsgType(msg_type)
    except ValueError:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {msg_type}") from None
    if length > limits.max_frame_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"frame of {length} bytes over the limit of {limits.max_frame_bytes}",
        )
    return kind, length


def recv_frame(
    sock: socket.socket,
    limits: Limits,
    *,
    deadline: float | None = None,
    max_payload: int | None = None,
) -> tuple[MsgType, bytearray]:
    """Read one frame: its type and its payload (a fresh, writable buffer).

    Parameters
    ----------
    limits : Limits
        ``max_frame_bytes`` bounds the payload.
    deadline : float, optional
        A `time.monotonic` instant by which the whole frame must have arrived
        (TimeoutError otherwise, however the bytes trickle in); None: the
        socket's own timeout applies to each read.
    max_payload : int, optional
        A tighter bound for this frame (e.g. a handshake), TOO_LARGE above it.

    Raises
    ------
    ProtocolError
        See :func:`parse_header`; the payload is not read then.
    ConnectionError
        The peer closed the connection mid-frame (or before one: ``EOFError``).
    TimeoutError
        The deadline passed, or the socket's timeout expired.
    """
    with _Deadline(sock, deadline, "receiving a frame") as dl:
        dl.arm()
        first = sock.recv(HEADER.size)
        if not first:
            raise EOFError("connection closed")
        head = bytearray(first)
        if len(head) < HEADER.size:
            head += _recv_exactly(sock, HEADER.size - len(head), "frame header", dl)
        kind, length = parse_header(head, limits)
        if max_payload is not None and length > max_payload:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"{kind.name} frame of {length} bytes over the limit of {max_payload} here",
            )
        payload = _recv_exactly(sock, length, "payload", dl) if length else bytearray()
    return kind, payload


# -- payload reading -----------------------------------------------------------------


#: Checks a tensor's header before its memory is allocated: ``check(name, dtype, dims)``
#: raises ProtocolError (e.g. BAD_TENSOR) to refuse it.
TensorCheck = Callable[[str, str, tuple[int, ...]], None]


class Payload:
    """Sequential, bounds-checked reads of one frame's payload.

    Two sources share this parser: :class:`Reader` (a payload already in memory)
    and the payload of a frame still arriving on a socket
    (:meth:`SocketReader.frame`), so a tensor is read straight into its own
    buffer, never into a zero-filled staging copy. Every read checks the bytes
    left in the payload first and raises :class:`ProtocolError` (BAD_FRAME) on a
    short payload; ``limits`` bound every length before anything is allocated.
    """

    limits: Limits

    @property
    def left(self) -> int:
        """Bytes of the payload not read yet."""
        raise NotImplementedError

    def _need(self, n: int, what: str) -> None:
        if n < 0 or n > self.left:
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"truncated payload: {what} needs {n} bytes, {self.left} left"
            )

    def take(self, n: int, what: str) -> bytes | bytearray | memoryview:
        """The next ``n`` bytes."""
        raise NotImplementedError

    def read_into(self, view: memoryview, what: str) -> None:
        """Fill ``view`` (writable, bytes) with the next ``len(view)`` bytes."""
        raise NotImplementedError

    def skip_rest(self) -> None:
        """Consume the rest of the payload (after a request refused mid-frame)."""
        raise NotImplementedError

    def unpack(self, st: struct.Struct, what: str) -> tuple[Any, ...]:
        """Unpack a struct."""
        return st.unpack(self.take(st.size, what))

    def string(self, what: str) -> str:
        """A ``u16`` length-prefixed UTF-8 string."""
        (n,) = self.unpack(_U16, what)
        if n > self.limits.max_name_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{what} of {n} bytes over the limit")
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"{what} is not UTF-8") from None

    def end(self) -> None:
        """Require the payload to be fully consumed."""
        if self.left:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"{self.left} trailing bytes in payload")

    def tensor(self, check: TensorCheck | None = None) -> tuple[str, Any]:
        """A named tensor: name, dtype code, ndim, ``u32`` dims, raw bytes.

        The header is validated (limits, bytes left, then ``check``) before the
        tensor is allocated (uninitialised, aligned for its dtype); its bytes are
        then read straight into it.
        """
        import torch

        name = self.string("tensor name")
        code, ndim = self.unpack(_TENSOR, "tensor header")
        if code not in _DTYPES:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"tensor {name!r}: unknown dtype code {code}")
        if ndim > self.limits.max_ndim:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"tensor {name!r}: {ndim} dimensions")
        dims = struct.unpack(f"<{ndim}I", self.take(4 * ndim, "tensor dims"))
        dtype, itemsize = _DTYPES[code]
        nbytes = math.prod(dims) * itemsize
        if nbytes > self.limits.max_tensor_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"tensor {name!r} of {nbytes} bytes over the limit of "
                f"{self.limits.max_tensor_bytes}",
            )
        self._need(nbytes, f"data of tensor {name!r}")
        if check is not None:
            check(name, dtype, dims)
        t = torch.empty(dims, dtype=getattr(torch, dtype))
        if nbytes:
            # numpy has no bfloat16, and bool must be checked byte by byte: uint8 views
            raw = t.reshape(-1).view(torch.uint8) if dtype in ("bfloat16", "bool") else t
            self.read_into(raw.numpy().data.cast("B"), f"data of tensor {name!r}")
            if dtype == "bool" and bool((raw > 1).any()):
                raise ProtocolError(ErrorCode.BAD_FRAME, f"tensor {name!r}: bool bytes not 0 or 1")
        return name, t


class Reader(Payload):
    """A payload already in memory (``bytes``, ``bytearray`` or ``memoryview``)."""

    def __init__(self, data: bytes | bytearray | memoryview, limits: Limits) -> None:
        self.view = memoryview(data).cast("B")
        self.pos = 0
        self.limits = limits

    @property
    def left(self) -> int:
        """Bytes not read yet."""
        return self.view.nbytes - self.pos

    def take(self, n: int, what: str) -> memoryview:
        """The next ``n`` bytes (a view of the payload)."""
        self._need(n, what)
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def read_into(self, view: memoryview, what: str) -> None:
        """Copy the next ``len(view)`` bytes into ``view``."""
        view = view.cast("B")
        view[:] = self.take(view.nbytes, what)

    def skip_rest(self) -> None:
        """Consume the rest of the payload."""
        self.pos = self.view.nbytes


class SocketReader:
    """Buffered, deadline-bound reads of the frames arriving on one connection.

    Headers and small fields come out of one buffer of ``bufsize`` bytes per
    connection (a few ``recv`` calls per frame, not one per field); tensor data
    larger than what is buffered is received straight into the tensor's memory.
    Bytes past the current frame stay buffered for the next one (pipelined
    requests). Nothing is allocated for a frame's payload before its header is
    validated, and then only what :meth:`Payload.tensor` allocates for a tensor
    whose header passed its checks.

    Parameters
    ----------
    sock : socket.socket
        A blocking socket (with or without a timeout), or a non-blocking one
        read with a deadline (read first, polled only when empty).
    limits : Limits
        Bounds every frame (see :func:`parse_header`).
    bufsize : int
        The buffer for headers and small fields.
    """

    def __init__(self, sock: socket.socket, limits: Limits, bufsize: int = 1 << 16) -> None:
        self.sock = sock
        self.limits = limits
        self._bufsize = bufsize
        self._buf = bytearray(bufsize)
        self._view = memoryview(self._buf)
        self._lo = 0
        self._hi = 0
        self.deadline: float | None = None
        self.tick: Tick | None = None
        self.frame_started = False
        self._poller: Any = None

    @property
    def buffered(self) -> int:
        """Bytes received and not consumed yet."""
        return self._hi - self._lo

    @property
    def capacity(self) -> int:
        """The largest frame (header included) `recv_nowait` can buffer whole."""
        return len(self._buf)

    def wait(self, timeout_s: float) -> bool:
        """True as soon as a byte is available (buffered, on the socket, or EOF).

        False if none came within ``timeout_s``. Uses poll(2), so any file
        descriptor number works.
        """
        if self._hi > self._lo:
            return True
        return self._poll_in(timeout_s)

    def recv_nowait(self) -> int:
        """Receive what the socket holds now into the buffer's free space (no waiting).

        For a non-blocking socket read by an event loop (the server's). Returns
        the bytes received: 0 when none were waiting or the buffer is full
        (see `next_frame_bytes`).

        Raises
        ------
        EOFError
            The peer closed the connection between frames.
        ConnectionError
            The peer closed it mid-frame.
        OSError
            The socket failed.
        """
        if self._lo == self._hi:  # empty: the whole buffer is free again
            self._lo = self._hi = 0
        elif self._hi == len(self._buf):
            self._compact()
        if self._hi == len(self._buf):
            return 0
        try:
            k = self.sock.recv_into(self._view[self._hi :])
        except (BlockingIOError, InterruptedError):
            return 0
        if k == 0:
            if self._hi == self._lo:
                raise EOFError("connection closed")
            raise ConnectionError(f"connection closed {self._hi - self._lo} bytes into a frame")
        self._hi += k
        return k

    def next_frame_bytes(self) -> int | None:
        """Header and payload bytes of the next frame, once its header is buffered (else None).

        Raises
        ------
        ProtocolError
            The header is invalid (see :func:`parse_header`).
        """
        head = self._next_header()
        return None if head is None else HEADER.size + head[1]

    def _next_header(self) -> tuple[MsgType, int] | None:
        if self._hi - self._lo < HEADER.size:
            return None
        return parse_header(self._view[self._lo : self._lo + HEADER.size], self.limits)

    def buffered_frame(self) -> tuple[MsgType, memoryview] | None:
        """The next frame, if all of it is buffered: (type, payload); else None.

        Nothing is consumed (see `consume`): a caller may leave the frame to
        `frame`. The payload view is valid until the next read.

        Raises
        ------
        ProtocolError
            The header is invalid (see :func:`parse_header`).
        """
        head = self._next_header()
        if head is None:
            return None
        kind, length = head
        start = self._lo + HEADER.size
        if self._hi - start < length:
            return None
        return kind, self._view[start : start + length]

    def consume(self, n: int) -> None:
        """Drop the next ``n`` buffered bytes (a frame taken through `buffered_frame`)."""
        if not 0 <= n <= self._hi - self._lo:
            raise ValueError(f"consume({n}) with {self._hi - self._lo} bytes buffered")
        self._lo += n

    def peek(self) -> memoryview:
        """The buffered bytes, not consumed (valid until the next read)."""
        return self._view[self._lo : self._hi]

    def reserve(self, n: int) -> None:
        """Grow the buffer to hold ``n`` bytes (a frame the caller has vetted) whole."""
        if n > len(self._buf):
            self._move(bytearray(n))

    def shrink(self) -> None:
        """Back to the buffer size given at construction, if what is buffered fits."""
        if len(self._buf) > self._bufsize >= self._hi - self._lo:
            self._move(bytearray(self._bufsize))

    def _compact(self) -> None:
        """Move the buffered bytes to the front of the buffer."""
        k = self._hi - self._lo
        self._view[:k] = self._view[self._lo : self._hi]
        self._lo, self._hi = 0, k

    def _move(self, buf: bytearray) -> None:
        k = self._hi - self._lo
        buf[:k] = self._view[self._lo : self._hi]
        self._buf, self._view = buf, memoryview(buf)
        self._lo, self._hi = 0, k

    def _poll_in(self, timeout_s: float) -> bool:
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.sock, select.POLLIN | select.POLLPRI)
        return bool(self._poller.poll(max(0.0, timeout_s) * 1000.0))

    def frame(
        self,
        *,
        deadline: float | None = None,
        max_payload: int | None = None,
        tick: Tick | None = None,
    ) -> tuple[MsgType, _SocketPayload]:
        """Read and validate the next frame's header; return its type and payload.

        Parameters
        ----------
        deadline : float, optional
            A `time.monotonic` instant by which the header and every byte read
            through the returned payload must have arrived (TimeoutError
            otherwise, however the bytes trickle in); None: the socket's own
            timeout applies to each read.
        max_payload : int, optional
            A tighter bound for this frame, TOO_LARGE above it.
        tick : Tick, optional
            Called whenever a wait for this frame's bytes (its header, and every
            read through the returned payload) passes ``tick.at``; the bytes
            received are added to ``tick.received``. Needs a deadline.

        Raises
        ------
        EOFError
            The peer closed the connection before the frame's first byte.
        ConnectionError
            The peer closed the connection mid-frame.
        ProtocolError, TimeoutError
            See :func:`parse_header`; the deadline.
        """
        if tick is not None and deadline is None:
            raise ValueError("SocketReader.frame: a tick needs a deadline")
        self.deadline = deadline
        self.tick = tick
        self.frame_started = False
        head = bytes(self._small(HEADER.size, "frame header"))
        kind, length = parse_header(head, self.limits)
        if max_payload is not None and length > max_payload:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"{kind.name} frame of {length} bytes over the limit of {max_payload} here",
            )
        return kind, _SocketPayload(self, length)

    def read_until(
        self,
        delimiter: bytes,
        max_bytes: int,
        what: str,
        *,
        deadline: float | None = None,
        tick: Tick | None = None,
    ) -> bytes:
        """The bytes up to and including ``delimiter`` (an HTTP head), at most ``max_bytes``.

        Reads like `frame` (``deadline``, ``tick``); the bytes after the
        delimiter stay buffered (the frame that follows).

        Raises
        ------
        ProtocolError
            TOO_LARGE: no delimiter within ``max_bytes``.
        EOFError, ConnectionError, TimeoutError
            As `frame`.
        """
        if tick is not None and deadline is None:
            raise ValueError("SocketReader.read_until: a tick needs a deadline")
        max_bytes = min(max_bytes, len(self._buf))
        self.deadline = deadline
        self.tick = tick
        self.frame_started = False
        start = 0  # where the delimiter may begin in the buffered bytes
        while True:
            at = self._buf.find(delimiter, self._lo + start, self._hi)
            if at >= 0:
                end = at + len(delimiter)
                out = bytes(self._view[self._lo : end])
                self._lo = end
                return out
            got = self._hi - self._lo
            if got >= max_bytes:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"{what} over {max_bytes} bytes")
            start = max(0, got - len(delimiter) + 1)
            if self._hi == len(self._buf):
                self._compact()
            self._hi += self._recv_into(self._view[self._hi :], what, got, max_bytes)

    # -- raw reads, for the payload of the current frame (which keeps to its length) ---

    def _recv_into(self, view: memoryview, what: str, got: int, n: int) -> int:
        tick = self.tick
        # A non-blocking socket (the server's sessions) is read first and polled only
        # when empty: no poll before each read, no settimeout per read (a socket
        # with a timeout has both, each releasing the GIL).
        nonblocking = self.deadline is not None and self.sock.gettimeout() == 0.0
        while True:
            if nonblocking:
                try:
                    k = self.sock.recv_into(view)
                    break
                except (BlockingIOError, InterruptedError):
                    pass
            if self.deadline is not None:
                now = time.monotonic()
                left = self.deadline - now
                if left <= 0.0:
                    raise TimeoutError(f"timed out: deadline passed while receiving the {what}")
                if tick is not None and tick.at - now < left:
                    if tick.at <= now:
                        tick()
                        continue
                    left = tick.at - now
                if nonblocking:
                    self._poll_in(left)  # then read again, or find the deadline passed
                    continue
                self.sock.settimeout(left)
            try:
                k = self.sock.recv_into(view)
                break
            except TimeoutError:
                if self.deadline is None:
                    raise
                # recv either times out with nothing or returns what it read: the
                # loop's top calls the tick, or raises if the deadline has passed
                continue
        if tick is not None:
            tick.received += k
        if k == 0:
            if not self.frame_started and got == 0:
                raise EOFError("connection closed")
            raise ConnectionError(f"connection closed after {got} of {n} bytes of the {what}")
        self.frame_started = True
        return k

    def _small(self, n: int, what: str) -> memoryview:
        """The next ``n`` bytes (n <= the buffer), valid until the next read."""
        if self._hi - self._lo < n:
            if len(self._buf) - self._lo < n:
                self._compact()
            while self._hi - self._lo < n:
                got = self._hi - self._lo
                self._hi += self._recv_into(self._view[self._hi :], what, got, n)
        out = self._view[self._lo : self._lo + n]
        self._lo += n
        return out

    def read_exact(self, n: int, what: str) -> bytes | bytearray | memoryview:
        if n <= len(self._buf):
            return self._small(n, what)
        out = bytearray(n)
        self.read_into(memoryview(out), what)
        return out

    def read_into(self, view: memoryview, what: str) -> None:
        n = view.nbytes
        k = min(n, self._hi - self._lo)
        view[:k] = self._view[self._lo : self._lo + k]
        self._lo += k
        while k < n:
            k += self._recv_into(view[k:], what, k, n)

    def skip(self, n: int, what: str) -> None:
        while n > 0:
            k = min(n, len(self._buf))
            self._small(k, what)
            n -= k


class _SocketPayload(Payload):
    """The payload of a frame arriving through a :class:`SocketReader`."""

    def __init__(self, reader: SocketReader, length: int) -> None:
        self.reader = reader
        self.limits = reader.limits
        self.length = length
        self._left = length

    @property
    def left(self) -> int:
        """Bytes of the payload not received yet."""
        return self._left

    def take(self, n: int, what: str) -> bytes | bytearray | memoryview:
        """The next ``n`` bytes (valid until the next read)."""
        self._need(n, what)
        out = self.reader.read_exact(n, what)
        self._left -= n
        return out

    def read_into(self, view: memoryview, what: str) -> None:
        """Receive the next ``len(view)`` bytes straight into ``view``."""
        view = view.cast("B")
        self._need(view.nbytes, what)
        self.reader.read_into(view, what)
        self._left -= view.nbytes

    def skip_rest(self) -> None:
        """Receive and drop the rest of the payload (into the small buffer)."""
        n, self._left = self._left, 0
        self.reader.skip(n, "payload")


# -- payload writing -----------------------------------------------------------------


def encode_string(s: str) -> bytes:
    """A ``u16`` length-prefixed UTF-8 string."""
    b = s.encode("utf-8")
    if len(b) >= 1 << 16:
        raise ValueError(f"string of {len(b)} bytes is too long for the wire")
    return _U16.pack(len(b)) + b


# tensor headers already encoded, by (name, dtype, shape): a server answers with the
# same few again and again (get and set are atomic under the GIL)
_TENSOR_HEADS: dict[tuple[str, str, Any], bytes] = {}


def _tensor_head(name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    """What `encode_tensors` writes before a tensor's data: name, dtype code, dims."""
    head = encode_string(name) + _TENSOR.pack(_DTYPE_CODE[dtype], len(shape))
    return head + struct.pack(f"<{len(shape)}I", *shape)


def tensor_parts(name: str, t: torch.Tensor) -> list[Any]:
    """Header bytes and the raw data (a memoryview of the tensor's memory)."""
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"boundary value {name!r} is a {type(t).__name__}, not a tensor")
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _DTYPE_CODE:
        raise TypeError(f"tensor {name!r}: dtype {dtype} cannot be sent")
    if t.ndim > 255 or any(d >= 1 << 32 for d in t.shape):
        raise ValueError(f"tensor {name!r}: shape {tuple(t.shape)} cannot be sent")
    if t.device.type != "cpu" or t.requires_grad or not t.is_contiguous():
        t = t.detach().to("cpu").contiguous()
    key = (name, dtype, t.shape)
    head = _TENSOR_HEADS.get(key)
    if head is None:  # a function of (name, dtype, shape) alone: kept for the next time
        head = _tensor_head(name, dtype, tuple(t.shape))
        if len(_TENSOR_HEADS) >= 4096:
            _TENSOR_HEADS.clear()
        _TENSOR_HEADS[key] = head
    if t.numel() == 0:
        return [head]
    # numpy has no bfloat16: its bytes are viewed through uint8
    data = (t if dtype != "bfloat16" else t.reshape(-1).view(torch.uint8)).numpy()
    return [head, data.data.cast("B")]


def pack_mask(on_device: Any) -> bytes:
    """Pack a boolean array into bytes, bit ``i`` of the mask = ``on_device[i]``.

    Bits are little-endian within each byte (``np.packbits(..., bitorder="little")``);
    unused high bits of the last byte are 0.
    """
    on = np.asarray(on_device, dtype=bool)
    return np.packbits(on, bitorder="little").tobytes()


def unpack_mask(data: bytes | bytearray | memoryview, n: int) -> np.ndarray:
    """Inverse of :func:`pack_mask`; the unused bits must be 0.

    Raises
    ------
    ProtocolError
        Wrong byte count or non-zero padding bits (BAD_FRAME).
    """
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    if raw.size != (n + 7) // 8:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"mask of {raw.size} bytes for {n} nodes")
    bits = np.unpackbits(raw, bitorder="little")
    if bits[n:].any():
        raise ProtocolError(ErrorCode.BAD_FRAME, "non-zero padding bits in the partition mask")
    return bits[:n].astype(bool)


# -- tensor lists --------------------------------------------------------------


def encode_tensors(tensors: Sequence[tuple[str, Any]]) -> tuple[list[Any], int]:
    """A ``u32`` count and the named tensors: (payload pieces, their total bytes)."""
    parts: list[Any] = [_U32.pack(len(tensors))]
    for name, t in tensors:
        parts.extend(tensor_parts(name, t))
    return parts, sum(memoryview(p).nbytes for p in parts)


class TensorLayout:
    """The bytes `encode_tensors` writes for known tensors, to match a payload against.

    ``leaves`` are (name, dtype name, shape) in the order a sender writes them;
    ``limits`` are the reader's (a layout whose tensors break them is not
    `usable`: `read_tensors` would refuse them).
    `read` takes such a tensor list from a payload in memory with one comparison
    per tensor header instead of a parse field by field (a server's cheap
    requests: ~2 us instead of ~6).

    Why it is exact: `encode_tensors` writes a ``u32`` count, then per tensor a
    header that is a function of (name, dtype, shape) alone (`tensor_parts`),
    then the tensor's raw bytes. So the bytes of a payload equal this layout's
    headers, at the offsets the data sizes fix, and end with the last tensor, if
    and only if `read_tensors` would read exactly these names, dtypes and shapes,
    in this order, from it; the data bytes are copied into new tensors alike.
    Tensors that need a check beyond their header (bool: bytes 0 or 1) and
    dtypes numpy cannot view (bfloat16) make the layout not `usable`.
    """

    def __init__(
        self, leaves: Sequence[tuple[str, str | None, tuple[int, ...] | None]], limits: Limits
    ) -> None:
        import torch

        names = [name for name, _, _ in leaves]
        self.usable = len(leaves) <= limits.max_tensors and len(set(names)) == len(names)
        self._parts: list[tuple[str, bytes, Any, tuple[int, ...], int]] = []
        self._count = _U32.pack(len(leaves)) if self.usable else b""
        self.nbytes = 4  # the tensor list's bytes, count included (when usable)
        for name, dtype, shape in leaves:
            if (
                dtype not in _DTYPE_CODE
                or dtype in ("bool", "bfloat16")
                or shape is None
                or len(shape) > limits.max_ndim
                or len(name.encode("utf-8")) > limits.max_name_bytes
                or any(not 0 <= d < 1 << 32 for d in shape)
            ):
                self.usable = False
            if not self.usable or dtype is None or shape is None:
                return
            head = _tensor_head(name, dtype, shape)
            nbytes = math.prod(shape) * _DTYPES[_DTYPE_CODE[dtype]][1]
            if nbytes > limits.max_tensor_bytes:
                self.usable = False
                return
            self._parts.append((name, head, getattr(torch, dtype), tuple(shape), nbytes))
            self.nbytes += len(head) + nbytes

    def read(self, view: memoryview, pos: int) -> dict[str, Any] | None:
        """name -> tensor if ``view[pos:]`` is exactly this layout's tensor list, else None."""
        if not self.usable:
            return None
        import torch

        out = {}
        end = view.nbytes
        if view[pos : pos + 4] != self._count:
            return None
        pos += 4
        for name, head, dtype, shape, nbytes in self._parts:
            stop = pos + len(head)
            if stop + nbytes > end or view[pos:stop] != head:
                return None
            t = torch.empty(shape, dtype=dtype)
            if nbytes:
                t.numpy().data.cast("B")[:] = view[stop : stop + nbytes]
            out[name] = t
            pos = stop + nbytes
        return out if pos == end else None


def read_tensors(r: Payload, check: TensorCheck | None = None) -> list[tuple[str, Any]]:
    """Read what `encode_tensors` wrote: (name, tensor) pairs, names distinct.

    ``check`` (see :meth:`Payload.tensor`) sees each header before its tensor is
    allocated.
    """
    (count,) = r.unpack(_U32, "tensor count")
    if count > r.limits.max_tensors:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{count} tensors over the limit")
    out = []
    seen: set[str] = set()
    for _ in range(count):
        name, t = r.tensor(check)
        if name in seen:
            raise ProtocolError(ErrorCode.BAD_FRAME, "duplicate tensor names")
        seen.add(name)
        out.append((name, t))
    return out
