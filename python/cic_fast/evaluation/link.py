"""Emulate the link between an edge device and a server on one machine.

Two pieces, each with a fallback where the machine does not allow it:

* :class:`TokenBucketLink`: a user-space TCP proxy whose two directions each run at
  ``rate_bps`` (a store-and-forward token bucket), with an optional one-way delay
  (``rtt_s / 2`` each way, a delay line that does not limit the rate).  Needs
  nothing but sockets.
* :class:`NetnsLink`: two network namespaces joined by a veth pair, each end shaped
  by a ``tbf`` qdisc (netem is not needed, and often absent).  Needs root and the
  ``ip`` / ``tc`` tools; :func:`netns_available` says whether it works here.

Everything has a timeout; every helper cleans up what it created (``close``).
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

__all__ = [
    "TBF_OUTAGE_BPS",
    "TBF_OUTAGE_BURST",
    "NetnsLink",
    "TokenBucketLink",
    "netns_available",
    "tbf_args",
]

_CMD_TIMEOUT_S = 10.0


class TokenBucketLink:
    """A TCP proxy whose both directions run at ``rate_bps``.

    Each chunk read (at most ``chunk`` bytes) is forwarded piece by piece (a piece
    is one slice's worth of bytes at the rate, at least 1500), each when its
    serialization would finish on a link of that rate (a store-and-forward link
    with no queue limit), plus a propagation delay of ``rtt_s / 2``.  The rate may be changed
    while connections are open (:meth:`set_rate`, or :attr:`rate_bps`): the
    serialization is paid in slices of at most `SLICE_S` at the rate of the moment,
    so a change applies within a slice, also to a chunk being serialized.  A rate
    of 0 is an outage: nothing is serialized (bytes are held, the residual leak is
    0 bytes/s) until the rate is above 0 again; only chunks already serialized
    (in the ``rtt_s / 2`` delay line) still arrive.  Stop with :meth:`close`.

    Parameters
    ----------
    upstream : tuple of (str, int)
        Where connections are forwarded.
    rate_bps : float
        Link rate in bits per second, each direction.
    chunk : int
        Largest chunk forwarded at once.
    rtt_s : float
        Extra round-trip delay (half each way).
    timeout_s : float
        Socket timeout of every forwarded connection.
    rcvbuf : int, optional
        ``SO_RCVBUF`` of the proxy's client-facing sockets, in bytes (Linux
        doubles it). The kernel's default (autotuned up to megabytes) acknowledges
        a sender's bytes as soon as the proxy's buffer takes them, long before
        the emulated link carries them; a small buffer makes the sender's
        unacknowledged bytes (``SIOCOUTQ``) follow the emulated link as over a
        real one: the proxy then holds at most about twice ``rcvbuf`` plus one
        ``chunk`` of acknowledged bytes. None: the kernel's default.

    Attributes
    ----------
    bytes_up, bytes_down : int
        Bytes forwarded so far toward ``upstream`` and back (serialized on the
        emulated link), all connections together.
    """

    # How long close() waits, in all, for the proxy's threads once it has woken them
    # (they end in milliseconds; the bound only keeps a wedged thread from hanging it).
    CLOSE_JOIN_S = 2.0
    # Longest sleep of a serialization step: the delay before a rate change applies.
    SLICE_S = 0.01

    def __init__(
        self,
        upstream: tuple[str, int],
        rate_bps: float,
        *,
        chunk: int = 16384,
        rtt_s: float = 0.0,
        timeout_s: float = 30.0,
        rcvbuf: int | None = None,
    ) -> None:
        if not rate_bps > 0 or chunk < 1 or rtt_s < 0 or not timeout_s > 0:
            raise ValueError("rate_bps > 0, chunk >= 1, rtt_s >= 0 and timeout_s > 0 required")
        if rcvbuf is not None and not (isinstance(rcvbuf, int) and rcvbuf > 0):
            raise ValueError("rcvbuf must be a positive int or None")
        self.upstream = upstream
        self.rate_bps = float(rate_bps)
        self.chunk = int(chunk)
        self.rtt_s = float(rtt_s)
        self.timeout_s = float(timeout_s)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        if rcvbuf is not None:
            # accepted sockets inherit it (and their window scale is chosen from it)
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.lsock.settimeout(0.2)
        self.bytes_up = 0
        self.bytes_down = 0
        host, port = self.lsock.getsockname()[:2]
        self.address = (str(host), int(port))
        self._stop = threading.Event()
        # Guards _socks and _threads: close() must see every connection the accept
        # thread registers, and none is registered once it has started.
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def set_rate(self, rate_bps: float) -> None:
        """Change the rate of both directions (bits per second; 0 holds every byte)."""
        if not (math.isfinite(rate_bps) and rate_bps >= 0):
            raise ValueError("rate_bps must be finite and >= 0")
        self.rate_bps = float(rate_bps)

    def _serialize(self, nbytes: int, clock: float) -> float | None:
        """Wait until ``nbytes`` have been serialized at the current rate, starting at
        ``clock`` (the end of the previous chunk's serialization) or now if later;
        return the time it ends, or None on close()."""
        bits = 8.0 * nbytes
        t = max(clock, time.perf_counter())
        while bits > 0:
            rate = self.rate_bps
            if rate <= 0:  # an outage: no progress, and no credit for the time it lasts
                if self._stop.wait(self.SLICE_S):
                    return None
                t = time.perf_counter()
                continue
            step = min(bits / rate, self.SLICE_S)
            t += step
            bits -= step * rate
            if (wait := t - time.perf_counter()) > 0 and self._stop.wait(wait):
                return None
        return t

    def _spawn(self, target: Any, *args: Any) -> threading.Thread:
        """Start a daemon thread named after the link's port (call with _lock held or in init)."""
        t = threading.Thread(
            target=target,
            args=args,
            name=f"cic-link-{self.address[1]}-{target.__name__.strip('_')}",
            daemon=True,
        )
        self._threads.append(t)
        t.start()
        return t

    @property
    def threads(self) -> list[threading.Thread]:
        """The proxy's threads (accept, and a reader and a writer per direction)."""
        with self._lock:
            return list(self._threads)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                a, _ = self.lsock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                b = socket.create_connection(self.upstream, timeout=self.timeout_s)
            except OSError:
                a.close()
                continue
            for s in (a, b):
                s.settimeout(self.timeout_s)
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._stop.is_set():  # close() has run: it would not see these
                    a.close()
                    b.close()
                    return
                self._socks += [a, b]
                for src, dst, up in ((a, b, True), (b, a, False)):
                    self._spawn(self._pump, src, dst, up)

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        # A reader serializes each chunk at the rate of the moment (waiting as it
        # goes), piece by piece, and stamps each piece with the time it arrives at the
        # far end: the end of its serialization plus the one-way propagation delay
        # rtt/2 (which does not lower the rate); a writer sends the pieces at those
        # times. The bounded queue (the delay line) gives the sender backpressure.
        chunks: queue.Queue[tuple[float, bytes] | None] = queue.Queue(maxsize=1024)
        with self._lock:
            if self._stop.is_set():
                return
            writer = self._spawn(self._write, chunks, dst)
        clock = 0.0
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                data = src.recv(self.chunk)
                if not data:
                    break
                off = 0
                while off < len(data) and not self._stop.is_set():
                    # a piece of at most one slice at the rate (or one packet), so a
                    # message's end leaves when its last byte is serialized, not when
                    # a chunk that also holds the next message's first bytes is
                    n = min(len(data) - off, max(1500, int(self.rate_bps * self.SLICE_S / 8)))
                    done = self._serialize(n, clock)
                    if done is None:
                        break
                    clock = done
                    piece = data[off : off + n]
                    off += n
                    with self._lock:
                        if up:
                            self.bytes_up += n
                        else:
                            self.bytes_down += n
                    while not self._stop.is_set():
                        with contextlib.suppress(queue.Full):
                            chunks.put((clock + self.rtt_s / 2, piece), timeout=0.2)
                            break
        # End of stream: the writer forwards what is queued, then stops. On close()
        # it stops at once; the None wakes it if it waits for a chunk.
        while True:
            try:
                chunks.put(None, timeout=0.2)
                break
            except queue.Full:
                if self._stop.is_set():
                    break
        writer.join()  # it ends: each step is bounded by a due time, a timeout or close()
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _write(self, chunks: queue.Queue[tuple[float, bytes] | None], dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                try:
                    item = chunks.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is None:
                    return
                due, data = item
                while (wait := due - time.perf_counter()) > 0:
                    if self._stop.wait(wait):  # a sleep that close() interrupts
                        return
                dst.sendall(data)

    def close(self) -> None:
        """Stop forwarding, close every socket and wait for the proxy's threads.

        Each socket is shut down before it is closed: that wakes a thread blocked
        in ``recv`` or ``sendall`` on it at once (a bare close would leave it
        blocked until its socket timeout). Waits at most `CLOSE_JOIN_S` in all.
        """
        with self._lock:
            self._stop.set()
            socks = list(self._socks)
            threads = list(self._threads)
        for s in (self.lsock, *socks):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.lsock.close()
        deadline = time.monotonic() + self.CLOSE_JOIN_S
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> TokenBucketLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False)


def _check(cmd: list[str]) -> None:
    r = _run(cmd)
    if r.returncode != 0:
        raise OSError(f"{' '.join(cmd)} failed: {r.stderr.strip() or r.stdout.strip()}")


#: The rate and bucket of a tbf in an outage (a rate of 0, which tbf does not accept).
TBF_OUTAGE_BPS = 8000
TBF_OUTAGE_BURST = 1600


def tbf_args(rate_bps: float) -> list[str]:
    """``tc`` arguments of a tbf qdisc at ``rate_bps``: the one place they are made.

    The bucket holds two MTU-sized packets (or 10 ms at the rate, if more) and the
    queue one second of traffic (at least 64 KB), so TCP reaches the rate without a
    burst above it.

    A rate of 0 (an outage in a trace) is emulated by the lowest rate used here,
    `TBF_OUTAGE_BPS` = 8 kbit/s, with a bucket of one MTU-sized packet
    (`TBF_OUTAGE_BURST` = 1600 bytes) and a 64 KB queue: packets are held in the
    queue (not dropped, so TCP does not back off beyond the outage) and leak at
    1000 bytes/s (headers included), after at most one packet from the bucket.
    """
    if not (math.isfinite(rate_bps) and rate_bps >= 0):
        raise ValueError("rate_bps must be finite and >= 0")
    if rate_bps == 0:
        rate, burst, limit = TBF_OUTAGE_BPS, TBF_OUTAGE_BURST, 65536
    else:
        rate = max(8, int(rate_bps))
        burst = max(3200, int(rate_bps / 8 * 0.01))
        limit = max(65536, int(rate_bps / 8 * 1.0))
    return ["tbf", "rate", f"{rate}bit", "burst", str(burst), "limit", str(limit)]


class NetnsLink:
    """Two network namespaces joined by a veth pair shaped by tbf in both directions.

    The device namespace has address ``10.<net>.0.1``, the server namespace
    ``10.<net>.0.2``.  Run a process inside one with :meth:`device_cmd` /
    :meth:`server_cmd` (``ip netns exec``).  Change the rate with
    :meth:`set_rate`.  :meth:`close` deletes both namespaces (and with them the
    veth pair).

    Parameters
    ----------
    rate_bps : float
        Initial rate, bits per second, each direction.
    prefix : str
        Namespace and interface name prefix (keep it short: interface names are
        limited to 15 characters).
    net : int
        Second byte of the 10.x.0.0/24 subnet used.

    Raises
    ------
    OSError
        If a command fails (not root, no ``ip``/``tc``, no tbf); whatever was
        created is removed first.
    """

    def __init__(self, rate_bps: float, *, prefix: str | None = None, net: int = 199) -> None:
        prefix = prefix or f"cic{os.getpid() % 100000}"
        self.device_ns = f"{prefix}d"
        self.server_ns = f"{prefix}s"
        self.device_if = f"{prefix}vd"[:15]
        self.server_if = f"{prefix}vs"[:15]
        self.device_ip = f"10.{net}.0.1"
        self.server_ip = f"10.{net}.0.2"
        self._made: list[str] = []
        self._shaped = False
        try:
            for ns in (self.device_ns, self.server_ns):
                _check(["ip", "netns", "add", ns])
                self._made.append(ns)
            _check(
                [
                    "ip",
                    "link",
                    "add",
                    self.device_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    self.server_if,
                ]
            )
            for ns, dev, ip in (
                (self.device_ns, self.device_if, self.device_ip),
                (self.server_ns, self.server_if, self.server_ip),
            ):
                _check(["ip", "link", "set", dev, "netns", ns])
                _check(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
                _check(["ip", "-n", ns, "link", "set", dev, "up"])
                _check(["ip", "-n", ns, "link", "set", "lo", "up"])
            if not rate_bps > 0:
                raise ValueError("rate_bps must be > 0")
            self.rate_bps = 0.0
            self.set_rate(rate_bps)
        except BaseException:
            self.close()
            raise

    def set_rate(self, rate_bps: float) -> None:
        """Shape both directions to ``rate_bps`` (bits per second, ``>= 0``).

        The first call installs the tbf qdiscs (``tc qdisc replace``), later ones
        change them in place (``tc qdisc change``: the queued packets are kept).  A
        rate of 0 is an outage, emulated as :func:`tbf_args` says (8 kbit/s, a
        1600-byte bucket: a residual leak of 1000 bytes/s).
        """
        args = tbf_args(rate_bps)
        verb = "change" if self._shaped else "replace"
        for ns, dev in ((self.device_ns, self.device_if), (self.server_ns, self.server_if)):
            _check(["ip", "netns", "exec", ns, "tc", "qdisc", verb, "dev", dev, "root", *args])
        self._shaped = True
        self.rate_bps = float(rate_bps)

    def device_cmd(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the device namespace."""
        return ["ip", "netns", "exec", self.device_ns, *cmd]

    def server_cmd(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the server namespace."""
        return ["ip", "netns", "exec", self.server_ns, *cmd]

    def close(self) -> None:
        """Delete the namespaces (and the veth pair with them)."""
        while self._made:
            _run(["ip", "netns", "del", self._made.pop()])

    def __enter__(self) -> NetnsLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def netns_available() -> str | None:
    """None if :class:`NetnsLink` works here, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command"
    try:
        NetnsLink(1e6, prefix=f"cicp{os.getpid() % 10000}", net=198).close()
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    return None
