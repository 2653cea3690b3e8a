"""Run a function in several threads at once and fail on any thread's failure."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(work: Callable[[int], None], n: int, timeout_s: float = 60.0) -> None:
    """Call ``work(i)`` for ``i`` in ``range(n)``, each in its own thread, all at once.

    Raises the first exception a thread raised, or AssertionError if a thread is
    still running after ``timeout_s`` (a hang is a failure, not a wait).
    """
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait(timeout_s)
            work(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not any(t.is_alive() for t in threads), f"a thread still runs after {timeout_s} s"
    if errors:
        raise errors[0]
