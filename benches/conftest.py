"""pytest setup for the benchmarks: pin the allocator before anything is timed (see heap.py)."""

from __future__ import annotations

import heap

heap.pin()
