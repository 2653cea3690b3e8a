"""Bandwidth traces, and their replay on an emulated link.

A :class:`BandwidthTrace` is a piecewise-constant rate over time (bits per second per
window), looped at its end.  Two file formats are read:

* **mahimahi** (``*.up`` / ``*.down``): one line per opportunity to deliver one
  1500-byte packet, the value a timestamp in milliseconds from the start of the
  trace, repeated when several packets fit in one millisecond.  The trace lasts
  until its last timestamp and then loops (mahimahi's own rule).  It is binned into
  windows of ``bin_s`` (0.1 s by default): a window's rate is
  ``1500 * 8 * count / window``; a window with no line is an outage (rate 0).
* **cooked** (the Pensieve format of the HSDPA traces): lines ``<time s> <Mbit/s>``,
  each value holding until the next time stamp; the last line marks the end of the
  trace (its value holds for no time), so the trace lasts from the first time stamp
  to the last.

:class:`TraceReplay` follows a trace over wall-clock time, calling a ``set_rate``
callable at each window boundary: ``TokenBucketLink.set_rate`` or
``NetnsLink.set_rate`` (see :mod:`cic_fast.evaluation.link` for how each emulates an
outage).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["MAHIMAHI_PACKET_BYTES", "BandwidthTrace", "TraceReplay"]

#: Bytes delivered per line of a mahimahi trace.
MAHIMAHI_PACKET_BYTES = 1500


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank, non-comment line of ``path``."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file ({e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if fields:
            out.append((n, fields))
    if not out:
        raise ValueError(f"{path}: empty trace file")
    return out


def _number(path: Path, n: int, s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"{path}:{n}: not a number: {s!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{path}:{n}: not a finite number: {s!r}")
    return v


class BandwidthTrace:
    """A piecewise-constant link rate, looped at its end.  Immutable.

    Window ``i`` starts at ``starts_s[i]`` and lasts until ``starts_s[i + 1]`` (the
    last one until ``duration_s``); its rate is ``rates_bps[i]`` bits per second.

    Parameters
    ----------
    starts_s : sequence of float
        Window start times in seconds: ``starts_s[0] == 0``, strictly increasing,
        all below ``duration_s``.
    rates_bps : sequence of float
        Rate of each window, bits per second, ``>= 0`` (0 is an outage).
    duration_s : float
        Length of one period of the trace, seconds.
    name : str
        A label (the file name for a trace read from a file).

    Raises
    ------
    ValueError
        If the arrays do not describe such a trace.
    """

    __slots__ = ("_duration_s", "_rates", "_starts", "name")

    def __init__(
        self,
        starts_s: Sequence[float] | np.ndarray,
        rates_bps: Sequence[float] | np.ndarray,
        duration_s: float,
        *,
        name: str = "",
    ) -> None:
        starts = np.array(starts_s, dtype=np.float64).reshape(-1)
        rates = np.array(rates_bps, dtype=np.float64).reshape(-1)
        duration = float(duration_s)
        if starts.size == 0 or starts.size != rates.size:
            raise ValueError("starts_s and rates_bps must be non-empty and of equal length")
        if not (np.all(np.isfinite(starts)) and np.all(np.isfinite(rates))):
            raise ValueError("starts_s and rates_bps must be finite")
        if starts[0] != 0.0 or np.any(np.diff(starts) <= 0):
            raise ValueError("starts_s must start at 0 and increase strictly")
        if not (math.isfinite(duration) and duration > starts[-1]):
            raise ValueError("duration_s must be finite and after the last window's start")
        if np.any(rates < 0):
            raise ValueError("rates_bps must be >= 0")
        starts.flags.writeable = False
        rates.flags.writeable = False
        self._starts = starts
        self._rates = rates
        self._duration_s = duration
        self.name = name

    # -- constructors ------------------------------------------------------------------

    @classmethod
    def from_steps(cls, steps: Iterable[tuple[float, float]], *, name: str = "") -> BandwidthTrace:
        """A trace of consecutive steps ``(duration_s, rate_bps)``.

        >>> BandwidthTrace.from_steps([(1.0, 8e6), (1.0, 2e6)]).mean_bps
        5000000.0
        """
        durations, rates = [], []
        for d, r in steps:
            if not (math.isfinite(d) and d > 0):
                raise ValueError(f"step duration must be > 0, got {d}")
            durations.append(float(d))
            rates.append(float(r))
        if not durations:
            raise ValueError("at least one step required")
        edges = np.concatenate([[0.0], np.cumsum(durations)])
        return cls(edges[:-1], rates, float(edges[-1]), name=name)

    @classmethod
    def synthetic(
        cls,
        rates_bps: Sequence[float],
        step_s: float = 1.0,
        *,
        name: str = "synthetic",
    ) -> BandwidthTrace:
        """Equal steps of ``step_s`` seconds at each of ``rates_bps`` in turn."""
        return cls.from_steps([(step_s, r) for r in rates_bps], name=name)

    @classmethod
    def from_mahimahi(cls, path: str | Path, *, bin_s: float = 0.1) -> BandwidthTrace:
        """Read a mahimahi trace (one millisecond timestamp per 1500-byte delivery).

        Parameters
        ----------
        path : str or Path
            The ``*.up`` / ``*.down`` file.
        bin_s : float
            Window length the deliveries are counted in (the last window may be
            shorter: it ends with the trace).

        Raises
        ------
        ValueError
            Naming the file and line: a non-integer or negative timestamp, a
            timestamp below the one before, an empty file, or a last timestamp of 0.
        """
        path = Path(path)
        if not bin_s > 0:
            raise ValueError("bin_s must be > 0")
        ms = []
        prev = 0
        for n, fields in _lines(path):
            if len(fields) != 1:
                raise ValueError(f"{path}:{n}: expected one timestamp in ms, got {fields!r}")
            try:
                v = int(fields[0])
            except ValueError:
                raise ValueError(f"{path}:{n}: not an integer timestamp: {fields[0]!r}") from None
            if v < 0:
                raise ValueError(f"{path}:{n}: negative timestamp {v}")
            if v < prev:
                raise ValueError(f"{path}:{n}: timestamp {v} ms is below the previous {prev} ms")
            prev = v
            ms.append(v)
        period_ms = ms[-1]
        if period_ms <= 0:
            raise ValueError(f"{path}: the last timestamp must be > 0 ms (the trace's length)")
        # The trace repeats every period: a delivery at the period is one at 0 of the
        # next loop.
        t = (np.asarray(ms, dtype=np.int64) % period_ms) / 1000.0
        duration = period_ms / 1000.0
        nbins = math.ceil(duration / bin_s - 1e-9)
        starts = np.arange(nbins) * bin_s
        ends = np.minimum(starts + bin_s, duration)
        idx = np.minimum((t / bin_s).astype(np.int64), nbins - 1)
        counts = np.bincount(idx, minlength=nbins)
        rates = counts * (MAHIMAHI_PACKET_BYTES * 8) / (ends - starts)
        return cls(starts, rates, duration, name=path.name)

    @classmethod
    def from_cooked(cls, path: str | Path) -> BandwidthTrace:
        """Read a two-column ``<time s> <Mbit/s>`` trace (the HSDPA "cooked" format).

        Each value holds until the next time stamp; times are taken relative to the
        first line; the last line marks the end (its value holds for no time).  Lines
        with the same time stamp: the last one counts.

        Raises
        ------
        ValueError
            Naming the file and line: not two numbers, a time below the one before,
            a negative rate, fewer than two lines, or a trace of zero length.
        """
        path = Path(path)
        times: list[float] = []
        rates: list[float] = []
        for n, fields in _lines(path):
            if len(fields) != 2:
                raise ValueError(f"{path}:{n}: expected '<time s> <Mbit/s>', got {fields!r}")
            t, r = (_number(path, n, f) for f in fields)
            if r < 0:
                raise ValueError(f"{path}:{n}: negative rate {r}")
            if times and t < times[-1]:
                raise ValueError(f"{path}:{n}: time {t} s is below the previous {times[-1]} s")
            if times and t == times[-1]:
                rates[-1] = r * 1e6
                continue
            times.append(t)
            rates.append(r * 1e6)
        if len(times) < 2:
            raise ValueError(f"{path}: a cooked trace needs at least two distinct time stamps")
        tt = np.asarray(times) - times[0]
        return cls(tt[:-1], rates[:-1], float(tt[-1]), name=path.name)

    @classmethod
    def load(cls, path: str | Path) -> BandwidthTrace:
        """Read ``path`` in the format its first line shows: one integer (mahimahi) or
        two numbers (cooked)."""
        path = Path(path)
        n, fields = _lines(path)[0]
        if len(fields) == 1:
            return cls.from_mahimahi(path)
        if len(fields) == 2:
            return cls.from_cooked(path)
        raise ValueError(f"{path}:{n}: neither a mahimahi nor a cooked trace line: {fields!r}")

    # -- reading -----------------------------------------------------------------------

    @property
    def starts_s(self) -> np.ndarray:
        """Window start times, seconds (read-only)."""
        return self._starts

    @property
    def rates_bps(self) -> np.ndarray:
        """Window rates, bits per second (read-only)."""
        return self._rates

    @property
    def duration_s(self) -> float:
        """Length of one period, seconds."""
        return self._duration_s

    @property
    def mean_bps(self) -> float:
        """Time-weighted mean rate over one period, bits per second."""
        return float(self._bits_before(self._duration_s)) / self._duration_s

    def __len__(self) -> int:
        return int(self._starts.size)

    def __repr__(self) -> str:
        return (
            f"BandwidthTrace({self.name!r}, {len(self)} windows, {self._duration_s:g} s, "
            f"mean {self.mean_bps / 1e6:.3g} Mbit/s)"
        )

    def rate_at(self, t_s: float) -> float:
        """The rate at time ``t_s`` (seconds, looped: ``t_s`` modulo the duration)."""
        t = float(t_s) % self._duration_s
        i = int(np.searchsorted(self._starts, t, side="right")) - 1
        return float(self._rates[max(i, 0)])

    def _bits_before(self, t: np.ndarray | float) -> np.ndarray | float:
        """Bits delivered in [0, t] for t in [0, duration] (piecewise linear)."""
        edges = np.append(self._starts, self._duration_s)
        cum = np.concatenate([[0.0], np.cumsum(self._rates * np.diff(edges))])
        return np.interp(t, edges, cum)  # type: ignore[no-any-return]

    def windows(self, window_s: float = 0.1) -> list[tuple[float, float]]:
        """One period as ``(start_s, rate_bps)`` windows of at most ``window_s``.

        The windows are the grid ``0, window_s, 2 window_s, ...`` (the last one ends
        with the trace, so it may be shorter), each at the trace's mean rate over it:
        a step inside a window is averaged (the bits delivered are the same).  A
        window of rate 0 is an outage.

        Parameters
        ----------
        window_s : float
            Window length, seconds, ``> 0``.
        """
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError("window_s must be > 0")
        n = max(1, math.ceil(self._duration_s / window_s - 1e-9))
        edges = np.minimum(np.arange(n + 1) * window_s, self._duration_s)
        edges[-1] = self._duration_s
        # snap grid edges that only float rounding separates from a step of the trace
        j = np.clip(np.searchsorted(self._starts, edges), 1, len(self._starts) - 1)
        for cand in (self._starts[j - 1], self._starts[j]):
            near = np.abs(edges - cand) < 1e-9 * max(1.0, self._duration_s)
            edges[near] = cand[near]
        bits = np.diff(np.asarray(self._bits_before(edges)))
        rates = bits / np.diff(edges)
        # A window inside one of the trace's windows takes its rate exactly (no
        # rounding: an outage must stay 0, not read as a 1e-9 bit/s leak).
        first = np.searchsorted(self._starts, edges[:-1], side="right") - 1
        last = np.searchsorted(self._starts, edges[1:], side="left") - 1
        inside = first == last
        rates[inside] = self._rates[first[inside]]
        return [(float(s), float(r)) for s, r in zip(edges[:-1], rates, strict=True)]


class TraceReplay:
    """Follow a trace over wall-clock time: call ``set_rate(bps)`` at window bounds.

    The first window's rate is set before the constructor returns; a background
    thread then sets each next window's rate at its start (times are kept on an
    absolute schedule, so they do not drift).  ``set_rate`` is called only when the
    rate changes; if a call overruns a window, the windows already over are skipped.
    Stops on :meth:`close`, at the end of the trace when ``loop`` is False, or after
    ``duration_s``.

    Parameters
    ----------
    trace : BandwidthTrace
        The trace.
    set_rate : callable
        Called with a rate in bits per second (``>= 0``; 0 is an outage), e.g.
        ``TokenBucketLink.set_rate`` or ``NetnsLink.set_rate``.
    window_s : float
        Longest time between two rate updates (the trace is averaged over windows
        of this length, see :meth:`BandwidthTrace.windows`), ``0 < window_s <= 1``.
    start_s : float
        Where in the trace to start, seconds (looped).
    loop : bool
        Start the trace again at its end (else stop there, leaving the last rate).
    duration_s : float, optional
        Stop after this many seconds.

    Attributes
    ----------
    error : BaseException or None
        What ``set_rate`` raised, if it did (the replay stops then; :meth:`close`
        raises it again).
    applied : list of (float, float)
        ``(seconds since the start, rate_bps)`` of each ``set_rate`` call.
    """

    # How long close() waits for the thread (it wakes at once unless set_rate hangs).
    CLOSE_JOIN_S = 15.0

    def __init__(
        self,
        trace: BandwidthTrace,
        set_rate: Callable[[float], object],
        *,
        window_s: float = 0.1,
        start_s: float = 0.0,
        loop: bool = True,
        duration_s: float | None = None,
    ) -> None:
        if not (math.isfinite(window_s) and 0 < window_s <= 1.0):
            raise ValueError("0 < window_s <= 1 required")
        if duration_s is not None and not duration_s > 0:
            raise ValueError("duration_s must be > 0")
        self.trace = trace
        self._set_rate = set_rate
        self._windows = trace.windows(window_s)
        self._starts = np.array([s for s, _ in self._windows])
        self._start_s = float(start_s) % trace.duration_s
        self.loop = bool(loop)
        self.duration_s = duration_s
        self.error: BaseException | None = None
        self.applied: list[tuple[float, float]] = []
        self._last: float | None = None
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._apply(0.0, self._window_at(0.0)[1])
        self._thread = threading.Thread(target=self._run, name="cic-trace-replay", daemon=True)
        self._thread.start()

    def _window_at(self, elapsed: float) -> tuple[float, float] | tuple[None, float]:
        """(elapsed time at which the window holding ``elapsed`` ends, its rate);
        (None, rate) past the end of a trace that does not loop."""
        d = self.trace.duration_s
        pos = self._start_s + elapsed
        k = math.floor(pos / d)
        if not self.loop and k >= 1:
            return None, self._windows[-1][1]
        p = pos - k * d
        i = max(0, int(np.searchsorted(self._starts, p, side="right")) - 1)
        end = self._windows[i + 1][0] if i + 1 < len(self._windows) else d
        return k * d + end - self._start_s, self._windows[i][1]

    def _apply(self, elapsed: float, rate: float) -> None:
        if rate != self._last:
            self._set_rate(rate)
            self._last = rate
            self.applied.append((elapsed, rate))

    def _run(self) -> None:
        elapsed = 0.0
        try:
            while not self._stop.is_set():
                end, _ = self._window_at(elapsed)
                if end is None:
                    return
                if self.duration_s is not None and end >= self.duration_s - 1e-9:
                    self._stop.wait(max(0.0, self._t0 + self.duration_s - time.monotonic()))
                    return
                if self._stop.wait(max(0.0, self._t0 + end - time.monotonic())):
                    return
                # the window that holds now (later than `end` if set_rate overran)
                elapsed = max(end + 1e-9, time.monotonic() - self._t0)
                end2, rate = self._window_at(elapsed)
                if end2 is None:
                    return
                self._apply(elapsed, rate)
        except BaseException as e:  # reported by close()
            self.error = e
        finally:
            self._stop.set()

    @property
    def running(self) -> bool:
        """Whether the replay is still following the trace."""
        return not self._stop.is_set()

    def elapsed_s(self) -> float:
        """Seconds since the replay started."""
        return time.monotonic() - self._t0

    def wait(self, timeout_s: float) -> bool:
        """Wait until the replay stops or ``timeout_s`` passes; True if it stopped."""
        return self._stop.wait(timeout_s)

    def close(self) -> None:
        """Stop the replay and wait (at most `CLOSE_JOIN_S`) for its thread.

        Raises
        ------
        BaseException
            What ``set_rate`` raised in the thread, if it did.
        """
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(self.CLOSE_JOIN_S)
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def __enter__(self) -> TraceReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
