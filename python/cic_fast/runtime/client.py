"""The device side of collaborative inference.

A :class:`Client` holds the same model as the :class:`~cic_fast.runtime.server.Server`, a
:class:`~cic_fast.Planner` built from the device and server profiles, and a
:class:`BandwidthEstimator` fed by its own transfers.  For every request it

1. takes the bandwidth (``client.bandwidth_bps`` if set, else the estimate; a small
   probe when there is no recent estimate);
2. asks the Planner for the optimal partition at that bandwidth (microseconds);
3. runs the head on the device, sends the boundary tensors, receives the outputs;
4. on any network failure (refused, timeout, error frame, fingerprint mismatch,
   malformed answer) runs the tail itself: the caller always gets the model's output.

``client.last`` (a :class:`RequestRecord`) says what happened.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cic_fast.core import cost
from cic_fast.core.baselines import device_only
from cic_fast.core.cost import Partition
from cic_fast.core.planner import Planner
from cic_fast.frontend.cutting import build_parts
from cic_fast.frontend.profiling import Profile
from cic_fast.frontend.tracing import LayerGraph, as_args, trace
from cic_fast.runtime import messages as M
from cic_fast.runtime import wire as W
from cic_fast.runtime.estimator import BandwidthEstimator
from cic_fast.runtime.fingerprint import model_fingerprint

if TYPE_CHECKING:
    import torch

__all__ = ["BandwidthEstimator", "Client", "RequestRecord"]

_NETWORK_ERRORS = (OSError, EOFError, W.ProtocolError, W.RemoteError)


@dataclass
class RequestRecord:
    """What one :meth:`Client.infer` did.

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
        time); tail on the server (as the server reports it); the whole call.
    probed : bool
        True if a bandwidth probe ran before this request.
    error : str or None
        Why the server was not used, on fallback.
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


class Client:
    """Run a model split between this device and a :class:`~cic_fast.runtime.server.Server`.

    Parameters
    ----------
    model : torch.nn.Module
        The model, in eval mode, with the same weights as the server's.
    example_inputs : torch.Tensor or tuple
        One forward call's arguments (the shapes the server accepts).
    address : tuple of (str, int)
        The server.
    device_profile, server_profile : Profile
        Per-layer seconds on this device and on the server.
    timeout_s : float
        Bound on connecting and on every socket read or write.
    bandwidth_bps : float, optional
        Fix the bandwidth the decisions use (bits/s); None to estimate it.
    rtt_s : float
        Round trip the Planner adds to offloading partitions; also subtracted from
        the measured transfer times before they become bandwidth samples.
    probe_bytes : int
        Size of the bandwidth probe.
    retry_s : float
        After a failure, compute locally without contacting the server for this
        long.
    estimator : BandwidthEstimator, optional
        Defaults to a median over 8 samples of the last 30 s.
    graph, planner : optional
        ``trace(model, example_inputs)`` and its Planner, if already built.
    cache_size : int
        Heads kept built (LRU).
    limits : protocol.Limits, optional
        Limits on the frames received.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs: Any,
        address: tuple[str, int],
        *,
        device_profile: Profile,
        server_profile: Profile,
        timeout_s: float = 5.0,
        bandwidth_bps: float | None = None,
        rtt_s: float = 0.0,
        probe_bytes: int = 16384,
        retry_s: float = 1.0,
        estimator: BandwidthEstimator | None = None,
        graph: LayerGraph | None = None,
        planner: Planner | None = None,
        cache_size: int = 16,
        limits: W.Limits | None = None,
    ) -> None:
        import torch
        from torch.utils import _pytree

        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        if bandwidth_bps is not None and not bandwidth_bps > 0:
            raise ValueError("bandwidth_bps must be > 0 or None")
        args = as_args(example_inputs)
        self.model = model
        self.address = (str(address[0]), int(address[1]))
        self.timeout_s = float(timeout_s)
        self.bandwidth_bps = bandwidth_bps
        self.rtt_s = float(rtt_s)
        self.probe_bytes = int(probe_bytes)
        self.retry_s = float(retry_s)
        self.estimator = estimator if estimator is not None else BandwidthEstimator()
        self.limits = limits or W.Limits()
        self.graph = graph if graph is not None else trace(model, args)
        self.planner = (
            planner
            if planner is not None
            else Planner.from_profiles(self.graph, device_profile, server_profile, rtt_s=rtt_s)
        )
        self.fingerprint = model_fingerprint(model, self.graph)
        with torch.inference_mode():
            leaves, self._out_spec = _pytree.tree_flatten(model(*args))
        self._out_meta = [
            (x.dtype, tuple(x.shape)) if isinstance(x, torch.Tensor) else None for x in leaves
        ]
        self.cache_size = int(cache_size)
        self._parts: OrderedDict[bytes, tuple[Any, Any]] = OrderedDict()
        self._sock: socket.socket | None = None
        self.server_max_frame_bytes: int | None = None
        self._down_until = 0.0
        self._request_id = 0
        self._lock = threading.RLock()
        self.last: RequestRecord | None = None

    # -- connection ----------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (the next request reconnects)."""
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
                self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.create_connection(self.address, timeout=self.timeout_s)
        try:
            sock.settimeout(self.timeout_s)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            W.send_frame(sock, W.MsgType.HELLO, [M.encode_hello(self.fingerprint)])
            kind, payload = W.recv_frame(sock, self.limits)
            if kind == W.MsgType.ERROR:
                raise M.decode_error(payload, self.limits)
            if kind != W.MsgType.HELLO_OK:
                raise W.ProtocolError(W.ErrorCode.UNKNOWN_TYPE, f"expected HELLO_OK, got {kind}")
            fp, limit = M.decode_hello(payload, self.limits, reply=True)
            self.server_max_frame_bytes = limit
            if fp != self.fingerprint:
                raise W.ProtocolError(W.ErrorCode.FINGERPRINT, "server has another model")
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        return sock

    def _fail(self, exc: BaseException) -> str:
        """Drop the connection after a failure; do not retry for ``retry_s``."""
        self.close()
        self._down_until = time.monotonic() + self.retry_s
        return f"{type(exc).__name__}: {exc}"

    @property
    def server_down(self) -> bool:
        """True while the client is backing off after a failure."""
        return time.monotonic() < self._down_until

    def probe(self) -> float | None:
        """Time a ``probe_bytes`` transfer; add it as a sample; return the estimate.

        Returns None (and backs off) if the server cannot be reached.
        """
        with self._lock:
            try:
                sock = self._connection()
                t0 = time.perf_counter()
                sent = W.send_frame(sock, W.MsgType.PROBE, [bytes(self.probe_bytes)])
                kind, payload = W.recv_frame(sock, self.limits)
                seconds = time.perf_counter() - t0
                if kind == W.MsgType.ERROR:
                    raise M.decode_error(payload, self.limits)
                if kind != W.MsgType.PROBE_OK:
                    raise W.ProtocolError(
                        W.ErrorCode.UNKNOWN_TYPE, f"expected PROBE_OK, got {kind}"
                    )
                if M.decode_probe_ok(payload, self.limits) != self.probe_bytes:
                    raise W.ProtocolError(W.ErrorCode.BAD_FRAME, "probe size mismatch")
            except _NETWORK_ERRORS as e:
                self._fail(e)
                return None
            self._add_sample(sent + W.HEADER.size + len(payload), seconds)
            return self.estimator.estimate()

    def _add_sample(self, nbytes: int, seconds: float) -> None:
        self.estimator.add(8.0 * nbytes, max(seconds - self.rtt_s, 1e-9))

    # -- inference -----------------------------------------------------------------

    def _parts_for(self, on_device: np.ndarray) -> tuple[Any, Any]:
        key = W.pack_mask(on_device)
        parts = self._parts.get(key)
        if parts is None:
            head, tail, _ = build_parts(self.graph, on_device)
            parts = (head, tail)
            self._parts[key] = parts
            while len(self._parts) > self.cache_size:
                self._parts.popitem(last=False)
        self._parts.move_to_end(key)
        return parts

    def decide(self) -> tuple[Partition, float | None, bool]:
        """The partition for the next request: (partition, bandwidth used, probed)."""
        probed = False
        bw = self.bandwidth_bps
        if bw is None:
            bw = self.estimator.estimate()
            if bw is None and not self.server_down:
                bw = self.probe()
                probed = bw is not None
        if bw is None or self.server_down:
            on = device_only(self.graph.n_nodes)
            return self.planner.graph.evaluate(on, bw or 1.0, self.rtt_s), bw, probed
        return self.planner.decide(bw), bw, probed

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
        g = self.graph
        on = cost.check_partition(g.edges, g.n_nodes, on_device, names=g.names)
        with self._lock:
            t_start = time.perf_counter()
            bw = self.bandwidth_bps or self.estimator.estimate()
            partition = self.planner.graph.evaluate(on, bw or 1e9, self.rtt_s)
            return self._run(partition, bw, False, t_start, inputs)

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
                out = self.model(*inputs)
                t1 = time.perf_counter()
                self.last = RequestRecord(
                    partition, self.server_down, 0, bw, t1 - t0, 0.0, 0.0, t1 - t_start, probed
                )
                return out
            head, tail = self._parts_for(partition.on_device)
            sent = head(*inputs)
            if self.server_down:
                err = "server unreachable recently: not retried yet"
                return self._local(tail, sent, partition, bw, probed, t_start, t0, err)
            try:
                self._request_id += 1
                parts, nbytes = M.encode_request(self._request_id, partition.on_device, sent)
            except (TypeError, ValueError) as e:  # e.g. a non-tensor value at the cut
                return self._local(tail, sent, partition, bw, probed, t_start, t0, str(e))
            device_s = time.perf_counter() - t0
            try:
                sock = self._connection()
                if self.server_max_frame_bytes is not None and nbytes > self.server_max_frame_bytes:
                    raise W.ProtocolError(
                        W.ErrorCode.TOO_LARGE,
                        f"request of {nbytes} bytes over the server's frame limit "
                        f"({self.server_max_frame_bytes})",
                    )
                t1 = time.perf_counter()
                frame_bytes = W.send_frame(sock, W.MsgType.INFER, parts)
                kind, payload = W.recv_frame(sock, self.limits)
                t2 = time.perf_counter()
                if kind == W.MsgType.ERROR:
                    raise M.decode_error(payload, self.limits)
                if kind != W.MsgType.RESULT:
                    raise W.ProtocolError(W.ErrorCode.UNKNOWN_TYPE, f"expected RESULT, got {kind}")
                request_id, server_s, leaves = M.decode_result(payload, self.limits)
                if request_id != self._request_id:
                    raise W.ProtocolError(W.ErrorCode.BAD_FRAME, "answer to another request")
                out = self._restructure(leaves)
            except _NETWORK_ERRORS as e:
                err = self._fail(e)
                return self._local(tail, sent, partition, bw, probed, t_start, t0, err)
            transfer_s = max(t2 - t1 - server_s, 0.0)
            self._add_sample(frame_bytes + W.HEADER.size + len(payload), transfer_s)
            self.last = RequestRecord(
                partition,
                False,
                int(partition.bytes_sent),
                bw,
                device_s + time.perf_counter() - t2,
                transfer_s,
                server_s,
                time.perf_counter() - t_start,
                probed,
            )
            return out

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
        out = tail(sent)
        t = time.perf_counter()
        self.last = RequestRecord(
            partition, True, 0, bw, t - t0, 0.0, 0.0, t - t_start, probed, error
        )
        return out

    def _restructure(self, leaves: list[Any]) -> Any:
        from torch.utils import _pytree

        meta = [(t.dtype, tuple(t.shape)) for t in leaves]
        if meta != self._out_meta:
            raise W.ProtocolError(
                W.ErrorCode.BAD_FRAME, "server outputs differ from the model's in dtype or shape"
            )
        return _pytree.tree_unflatten(leaves, self._out_spec)
