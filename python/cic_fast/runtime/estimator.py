"""Bandwidth estimation from the client's own transfers."""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque

__all__ = ["BandwidthEstimator"]


class BandwidthEstimator:
    """Median of the rates of the last few transfers.

    Each sample is ``bits / seconds`` of one transfer; the estimate is the median
    of the samples of the last ``max_age_s`` seconds (at most ``window``), which
    ignores a single stalled or bursty transfer.

    Parameters
    ----------
    window : int
        Samples kept.
    max_age_s : float
        Samples older than this are ignored (the link may have changed).
    min_bytes : int
        Transfers smaller than this are not samples: their time is mostly latency
        and per-message overhead, not the link's rate.
    """

    def __init__(self, window: int = 8, max_age_s: float = 30.0, min_bytes: int = 4096) -> None:
        if window < 1 or not max_age_s > 0 or min_bytes < 0:
            raise ValueError("window must be >= 1, max_age_s > 0 and min_bytes >= 0")
        self.max_age_s = float(max_age_s)
        self.min_bytes = int(min_bytes)
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, bits: float, seconds: float, *, now: float | None = None) -> None:
        """Record one transfer of ``bits`` that took ``seconds``.

        Ignored unless ``seconds > 0`` and ``bits >= 8 * min_bytes``.
        """
        if bits < 8 * self.min_bytes or not (
            bits > 0 and seconds > 0 and math.isfinite(bits / seconds)
        ):
            return
        with self._lock:
            self._samples.append((time.monotonic() if now is None else now, bits / seconds))

    def estimate(self, *, now: float | None = None) -> float | None:
        """The bandwidth in bits per second, or None without recent samples."""
        t = time.monotonic() if now is None else now
        with self._lock:
            recent = [bps for when, bps in self._samples if t - when <= self.max_age_s]
        return statistics.median(recent) if recent else None

    def clear(self) -> None:
        """Forget every sample."""
        with self._lock:
            self._samples.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)
