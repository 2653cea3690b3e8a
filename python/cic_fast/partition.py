"""The result type shared by every decision path (min_cut, Planner.decide, split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Partition"]


@dataclass(frozen=True, slots=True, eq=False)
class Partition:
    """A device/server partition of a layer graph, priced at one bandwidth.

    Attributes
    ----------
    on_device : numpy.ndarray
        Boolean array of length n: True where the layer runs on the device.
    latency_s : float
        Predicted end-to-end latency, ``device_s + transfer_s + server_s + rtt_s``,
        recomputed from the partition with the cost model (never read off a flow).
    device_s : float
        Sum of the device times of the layers on the device.
    transfer_s : float
        ``8 * bytes_sent / bandwidth_bps``.
    server_s : float
        Sum of the server times of the layers on the server.
    rtt_s : float
        The round-trip time if anything is offloaded, else 0.
    bytes_sent : int
        Bytes transmitted: the outputs of ``sent``, each counted once.
    sent : numpy.ndarray
        Ascending int64 indices of the layers on the device with at least one
        successor on the server.
    bandwidth_bps : float
        The bandwidth, in bits per second, the partition was priced at.
    """

    on_device: npt.NDArray[np.bool_]
    latency_s: float
    device_s: float
    transfer_s: float
    server_s: float
    rtt_s: float
    bytes_sent: int
    sent: npt.NDArray[np.int64]
    bandwidth_bps: float

    @classmethod
    def _make(
        cls,
        on_device: npt.NDArray[np.bool_],
        latency_s: float,
        device_s: float,
        transfer_s: float,
        server_s: float,
        rtt_s: float,
        bytes_sent: int,
        sent: npt.NDArray[np.int64],
        bandwidth_bps: float,
    ) -> Partition:
        # The frozen dataclass __init__ routes every field through
        # object.__setattr__; writing the slots directly is several times
        # faster, which matters on the microsecond decision path.
        p = cls.__new__(cls)
        _SET_ON_DEVICE(p, on_device)
        _SET_LATENCY(p, latency_s)
        _SET_DEVICE(p, device_s)
        _SET_TRANSFER(p, transfer_s)
        _SET_SERVER(p, server_s)
        _SET_RTT(p, rtt_s)
        _SET_BYTES(p, bytes_sent)
        _SET_SENT(p, sent)
        _SET_BANDWIDTH(p, bandwidth_bps)
        return p

    @property
    def offloads(self) -> bool:
        """True if at least one layer runs on the server."""
        return not bool(self.on_device.all())

    @property
    def n_on_device(self) -> int:
        """Number of layers that run on the device."""
        return int(np.count_nonzero(self.on_device))

    def __repr__(self) -> str:
        n = self.on_device.shape[0]
        return (
            f"Partition(on_device={self.n_on_device}/{n}, latency_s={self.latency_s:.6g}, "
            f"device_s={self.device_s:.6g}, transfer_s={self.transfer_s:.6g}, "
            f"server_s={self.server_s:.6g}, rtt_s={self.rtt_s:.6g}, "
            f"bytes_sent={self.bytes_sent}, sent={self.sent.tolist()}, "
            f"bandwidth_bps={self.bandwidth_bps:.6g})"
        )


_SET_ON_DEVICE = Partition.__dict__["on_device"].__set__
_SET_LATENCY = Partition.__dict__["latency_s"].__set__
_SET_DEVICE = Partition.__dict__["device_s"].__set__
_SET_TRANSFER = Partition.__dict__["transfer_s"].__set__
_SET_SERVER = Partition.__dict__["server_s"].__set__
_SET_RTT = Partition.__dict__["rtt_s"].__set__
_SET_BYTES = Partition.__dict__["bytes_sent"].__set__
_SET_SENT = Partition.__dict__["sent"].__set__
_SET_BANDWIDTH = Partition.__dict__["bandwidth_bps"].__set__
