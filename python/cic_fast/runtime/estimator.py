"""Bandwidth estimation from the client's own transfers.

Every transfer the client times pays a fixed cost that has nothing to do with the
link's rate: the round trip of its first byte and the per-message work at both
ends. On a fast link that cost is most of a request's time, and dividing the
bytes by the whole time measures latency, not bandwidth (a 4 KiB frame on a
4 Gbit/s loopback looked like 58 Mbit/s). So the estimator also keeps that fixed
cost, measured on exchanges too small to take any wire time (an empty probe),
and takes it off each transfer before dividing; a transfer that is still mostly
that fixed cost is not a sample at all (it only says that the link is fast).

A transfer the client gave up on (it stalled, or its answer was late and the
device finished first) is a *censored* sample: it says only that the link did not
carry more than what it delivered in the time it was given (see
`BandwidthEstimator.add_censored`).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque

__all__ = ["BandwidthEstimator"]


class BandwidthEstimator:
    """Median of the rates of the last few transfers, latency taken off.

    Each sample is ``bits / seconds`` of one transfer; the estimate is the median
    of the samples of the last ``max_age_s`` seconds (at most ``window``), which
    ignores a single stalled or bursty transfer. A step of the link's rate is
    followed within two samples: when the ``change_samples`` newest samples all
    lie more than ``change_ratio`` times away from the median of the older ones,
    on the same side, the older ones are dropped. One outlier never triggers it
    (it needs ``change_samples`` in a row); a real step of more than that ratio
    does, after ``change_samples`` transfers.

    A censored sample (`add_censored`, a transfer abandoned before it finished)
    that is below the estimate replaces every sample at once: the next decision
    already sees the slow link. A later sample above it drops it again (the link
    then carries more than that bound allowed: the bound is out of date).

    Parameters
    ----------
    window : int
        Samples kept (rates, and separately round trips).
    max_age_s : float
        Samples older than this are ignored (the link may have changed).
    min_bytes : int
        Transfers smaller than this are not samples: their time is mostly latency
        and per-message overhead, not the link's rate.
    min_share : float
        In `add_transfer`, a transfer whose wire time (its time less the
        measured latency) is under this share of its whole time is not a
        sample: it took hardly longer than an empty round trip, and dividing
        by the difference would divide by a jitter.
    min_seconds : float
        In `add_transfer`, a transfer that took less than this is not a sample
        either: a few scheduling hiccups of the two ends make up its time.

    Notes
    -----
    Thread-safe: a client shared by threads adds samples from all of them.
    """

    #: The rate a censored sample of nothing delivered is recorded as (bits/s):
    #: positive, so that a decision can be made at it.
    MIN_BPS = 1.0

    def __init__(
        self,
        window: int = 8,
        max_age_s: float = 30.0,
        min_bytes: int = 4096,
        *,
        min_share: float = 0.25,
        min_seconds: float = 0.002,
        change_ratio: float = 1.5,
        change_samples: int = 2,
    ) -> None:
        if window < 1 or not max_age_s > 0 or min_bytes < 0 or not 0 < min_share <= 1:
            raise ValueError(
                "window must be >= 1, max_age_s > 0, min_bytes >= 0 and 0 < min_share <= 1"
            )
        if not change_ratio > 1 or not 1 <= change_samples < window:
            raise ValueError("change_ratio must be > 1 and 1 <= change_samples < window")
        self.change_ratio = float(change_ratio)
        self.change_samples = int(change_samples)
        self.max_age_s = float(max_age_s)
        self.min_bytes = int(min_bytes)
        self.min_share = float(min_share)
        self.min_seconds = float(min_seconds)
        # (time, bits/s, censored)
        self._samples: deque[tuple[float, float, bool]] = deque(maxlen=window)
        self._censored = False  # any censored sample among them
        self._latency: deque[tuple[float, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(
        self, bits: float, seconds: float, *, now: float | None = None, alone: bool = False
    ) -> None:
        """Record one transfer of ``bits`` that took ``seconds`` of wire time.

        Ignored unless ``seconds > 0`` and ``bits >= 8 * min_bytes`` (and the
        rate is finite): nothing is clamped into a rate. With ``alone``, this one
        sample is enough for the step rule (a background probe while the
        decisions keep everything on the device: no request adds samples between
        two probes, and waiting for a second one doubles the time to see a
        recovery; a wrong probe costs one decision, whose own transfer then
        corrects the estimate).
        """
        if bits < 8 * self.min_bytes or not (
            bits > 0 and 0 < seconds < math.inf and math.isfinite(bits / seconds)
        ):
            return
        t = time.monotonic() if now is None else now
        bps = bits / seconds
        with self._lock:
            if self._censored:
                # a bound this sample exceeds is out of date: the link got faster
                kept = [s for s in self._samples if not (s[2] and s[1] < bps)]
                self._samples.clear()
                self._samples.extend(kept)
                self._censored = any(c for _, _, c in kept)
            self._samples.append((t, bps, False))
            self._follow_step(t, 1 if alone else self.change_samples)

    def add_censored(self, bits: float, seconds: float, *, now: float | None = None) -> bool:
        """Record a transfer abandoned after ``seconds`` having delivered ``bits``.

        The link carried only ``bits`` in ``seconds`` while it had bytes to carry
        (it stalled, or the answer was late): its rate now is at most about
        ``bits / seconds`` (up to one round trip of bytes still in flight). Below
        the current estimate (or without one), it replaces every sample, so the
        very next decision sees the slow link: one stalled request is enough to
        stop offloading into an outage (the step rule would need
        ``change_samples`` of them, each paying the stall). At or above the
        estimate it says nothing new and is ignored. A rate of 0 (nothing
        delivered) is recorded as `MIN_BPS`.

        Returns
        -------
        bool
            True if it was recorded.
        """
        if not (0 < seconds < math.inf and 0 <= bits < math.inf):
            return False
        t = time.monotonic() if now is None else now
        bps = max(bits / seconds, self.MIN_BPS)
        with self._lock:
            recent = [r for when, r, _ in self._samples if t - when <= self.max_age_s]
            if recent and bps >= statistics.median(recent):
                return False
            self._samples.clear()
            self._samples.append((t, bps, True))
            self._censored = True
        return True

    def _follow_step(self, t: float, k: int) -> None:
        """Drop the older samples when the ``k`` newest show a step (lock held)."""
        recent = [bps for when, bps, _ in self._samples if t - when <= self.max_age_s]
        if len(recent) <= k:
            return
        base = statistics.median(recent[:-k])
        new = recent[-k:]
        r = self.change_ratio
        if all(x > r * base for x in new) or all(x * r < base for x in new):
            for _ in range(len(self._samples) - k):
                self._samples.popleft()

    def add_latency(self, seconds: float, *, now: float | None = None) -> None:
        """Record the round trip of an exchange too small to take wire time."""
        if seconds > 0 and math.isfinite(seconds):
            with self._lock:
                self._latency.append((time.monotonic() if now is None else now, seconds))

    def latency_s(self, *, now: float | None = None) -> float | None:
        """The fixed cost of a transfer: the smallest recent empty round trip, or None.

        The smallest, because a round trip can only be slowed (by scheduling, a
        busy peer) below what the link and the two ends cost.
        """
        t = time.monotonic() if now is None else now
        with self._lock:
            recent = [s for when, s in self._latency if t - when <= self.max_age_s]
        return min(recent) if recent else None

    def add_transfer(
        self, bits: float, seconds: float, *, now: float | None = None, force: bool = False
    ) -> bool:
        """Record a transfer timed end to end (its ``seconds`` include the latency).

        The wire time is ``seconds - latency_s()``; it becomes a sample (as
        :meth:`add`) only if it is at least ``min_share`` of ``seconds`` and
        ``seconds`` is at least ``min_seconds``. With
        ``force`` a shorter one is recorded as if it were exactly that share: a
        lower bound on the rate's order of magnitude, for when no larger
        transfer can be timed (at most ``1 / min_share`` times the plain rate).

        Returns
        -------
        bool
            True if the transfer was long enough to be a sample.
        """
        if not (0 < seconds < math.inf):
            return False
        wire = seconds - (self.latency_s(now=now) or 0.0)
        meaningful = wire >= self.min_share * seconds and seconds >= self.min_seconds
        if meaningful or force:
            self.add(bits, max(wire, self.min_share * seconds), now=now)
        return meaningful

    def estimate(self, *, now: float | None = None) -> float | None:
        """The bandwidth in bits per second, or None without recent samples."""
        t = time.monotonic() if now is None else now
        with self._lock:
            recent = [bps for when, bps, _ in self._samples if t - when <= self.max_age_s]
        return statistics.median(recent) if recent else None

    def age_s(self, *, now: float | None = None) -> float | None:
        """Seconds since the newest rate sample, or None without any."""
        t = time.monotonic() if now is None else now
        with self._lock:
            return t - self._samples[-1][0] if self._samples else None

    def clear(self) -> None:
        """Forget every sample."""
        with self._lock:
            self._samples.clear()
            self._latency.clear()
            self._censored = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)
