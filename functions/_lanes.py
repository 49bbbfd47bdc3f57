"""Lanes: CPU threads that share the detector's per-level tasks.

Each DoG level is one task (filter, inverse FFT, tag, fold into a running
maximum). On the CPU the tasks of a tile are spread over ``lanes`` threads with
single-threaded FFTs, so the element-wise work runs in parallel as well as the
transforms. The thread pools are made once per size and shut down at
interpreter exit (or by :func:`shutdown`; a later call makes a fresh pool).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import threading
from typing import Any, Callable, Sequence

__all__ = ["RunningMax", "PerThread", "lane_pool", "run_lanes", "shutdown"]

_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def lane_pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
    """The shared pool of ``n`` lane threads (made on first use, kept until :func:`shutdown`)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="mhd-lane")
        return pool


@atexit.register
def shutdown() -> None:
    """Shut every lane pool down, waiting for queued tasks; registered to run at interpreter exit."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True)


class PerThread:
    """Objects kept per (thread, key), so lanes never share scratch arrays."""

    def __init__(self) -> None:
        self._items: dict[tuple[int, Any], Any] = {}

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """This thread's object for ``key``, made by ``make()`` on first use."""
        k = (threading.get_ident(), key)
        item = self._items.get(k)
        if item is None:
            item = self._items[k] = make()
        return item


class RunningMax:
    """A running maximum of one grid kept per thread, so lanes never share an array.

    ``xp`` is the array module; the grids added are float32 arrays of one shape.
    """

    def __init__(self, xp: Any) -> None:
        self.xp, self.parts = xp, {}

    def add(self, D: Any) -> None:
        """Fold ``D`` into this thread's maximum (``D`` is kept and overwritten: pass a scratch array)."""
        key = threading.get_ident()
        cur = self.parts.get(key)
        self.parts[key] = D if cur is None else self.xp.maximum(cur, D, out=cur)

    def result(self, start: Any = None) -> Any:
        """The maximum over all threads' parts and ``start`` (None: no start); None when nothing was added."""
        parts = list(self.parts.values()) + ([] if start is None else [start])
        for other in parts[1:]:
            self.xp.maximum(parts[0], other, out=parts[0])
        return parts[0] if parts else None


def run_lanes(lanes: int, tasks: Sequence[Callable[[], Any]], merge: Callable[[], Any] | None, later: Sequence[Callable[[], Any]]) -> Any:
    """Run ``tasks``; then ``merge`` once they are done, while ``later`` run on the other lanes.

    With one lane everything runs in this thread, in that order. With more,
    ``merge`` is queued after ``tasks`` and waits only on them, so the pool
    cannot deadlock; ``later`` are queued behind it. A task's exception is
    raised here once all have finished.

    Returns
    -------
    What ``merge`` returned (None without a ``merge``).
    """
    if lanes <= 1:
        for fn in tasks:
            fn()
        merged = merge() if merge is not None else None
        for fn in later:
            fn()
        return merged
    pool = lane_pool(lanes)
    pending = [pool.submit(fn) for fn in tasks]

    def merge_after() -> Any:
        for task in pending:
            task.result()
        return merge()

    merged = pool.submit(merge_after) if merge is not None else None
    rest = [pool.submit(fn) for fn in later]
    concurrent.futures.wait(pending + rest + ([merged] if merged is not None else []))
    for task in pending + rest:
        task.result()
    return merged.result() if merged is not None else None
