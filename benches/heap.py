"""Keep glibc's allocator from handing memory back to the OS during benchmarks.

With glibc's defaults, a freed block of a few hundred KB at the top of the heap
is trimmed (or was mmap-ed and is unmapped), so the next call that allocates it
page-faults it back in. Whether that happens depends on what else the process
has allocated: the same PyMaxflow call on the 700-layer graph measured ~0.9 ms
or ~1.3 ms depending on which benchmarks ran before it. Turning trimming and
mmap off makes the timings repeatable and never hurts a peer (cic_fast
allocates little per call), so every ratio is measured with the peers at their best.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit


def _pin_heap() -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator alone
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok_trim = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return ok_trim and ok_mmap


PINNED = False


def pin() -> bool:
    """Turn glibc's heap trimming and mmap-ed allocations off (once).

    Returns
    -------
    bool
        Whether the allocator settings took effect (False off glibc).
    """
    global PINNED
    if not PINNED:
        PINNED = _pin_heap()
    return PINNED
