"""Emulate a slow edge device on a fast machine.

* :class:`CpuQuota`: a cgroup v1 CPU controller group whose ``cpu.cfs_quota_us``
  gives its processes ``1 / slowdown`` of one core; a process joins it with
  :meth:`CpuQuota.join`.  :func:`cgroup_available` says whether it works here.
* :class:`Slowed`: where cgroups are not allowed, a wrapper that sleeps
  ``slowdown - 1`` times the duration of each call it wraps.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["CGROUP_CPU", "CpuQuota", "Slowed", "cgroup_available"]

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")


class Slowed:
    """Call ``fn`` and then sleep ``factor - 1`` times its duration."""

    def __init__(self, fn: Any, factor: float) -> None:
        self.fn = fn
        self.factor = float(factor)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        time.sleep((self.factor - 1.0) * (time.perf_counter() - t0))
        return out


class CpuQuota:
    """A cgroup v1 CPU group that gives its processes ``1 / slowdown`` of one core.

    ``cpu.cfs_quota_us / cpu.cfs_period_us = 1 / slowdown``, with a 2 ms quota
    (short periods keep the throttling fine-grained: a layer of a few ms is slowed
    about evenly instead of running at full speed and then stalling for a long
    period).  A single-threaded process in the group runs ``slowdown`` times slower
    in wall-clock time.

    Parameters
    ----------
    name : str
        Group name under /sys/fs/cgroup/cpu.
    slowdown : float
        >= 1.

    Raises
    ------
    OSError
        If the group cannot be created or configured.
    """

    def __init__(self, name: str, slowdown: float, *, quota_us: int = 2000) -> None:
        if not slowdown >= 1:
            raise ValueError("slowdown must be >= 1")
        self.path = CGROUP_CPU / name
        self.slowdown = float(slowdown)
        self.path.mkdir(exist_ok=True)
        try:
            period = max(1000, min(1_000_000, round(quota_us * self.slowdown)))
            quota = max(1000, round(period / self.slowdown))
            (self.path / "cpu.cfs_quota_us").write_text("-1")
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            self.period_us, self.quota_us = period, quota
        except OSError:
            self.close()
            raise

    def join(self, pid: int | None = None) -> None:
        """Move process ``pid`` (default: this one, all its threads) into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid() if pid is None else pid))

    @staticmethod
    def leave(pid: int | None = None) -> None:
        """Move ``pid`` (default: this process) back to the root CPU group."""
        (CGROUP_CPU / "cgroup.procs").write_text(str(os.getpid() if pid is None else pid))

    def close(self) -> None:
        """Move any process left back to the root group and remove the group."""
        with contextlib.suppress(OSError):
            for line in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    self.leave(int(line))
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def __enter__(self) -> CpuQuota:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cgroup_available() -> str | None:
    """None if :class:`CpuQuota` works here, else why not."""
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 CPU controller at {CGROUP_CPU}"
    try:
        CpuQuota(f"cic_probe_{os.getpid()}", 2.0).close()
    except OSError as e:
        return f"cannot configure a CPU quota: {e}"
    return None
