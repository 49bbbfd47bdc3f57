"""Lanes: CPU threads that share the detector's per-level tasks.

Each DoG level is one task (filter, inverse FFT, threshold, tag, fold into a
running maximum). On the CPU the tasks of a tile are spread over ``lanes``
threads with single-threaded FFTs: half the lanes take the full-resolution
levels, whose arrays overflow the caches, and the others the light work (the
spectrum's moments, the decimated levels and their merge), because two
full-resolution levels side by side contend for memory bandwidth
(:func:`run_lanes`). Work with a small working set also runs on a lane beside
the transforms (:func:`soon`): the noise model beside the forward FFT, the
NMS beside the blur fit. The thread pools are made once per size and shut
down at interpreter exit (or by :func:`shutdown`; a later call makes a fresh
pool). A process forked from one that has used them (``multiprocessing`` on
Linux) has the pools but not their threads: the child forgets them and makes
its own (its first detection waited forever for threads that were not there).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import functools
import os
import threading
from typing import Any, Callable, Sequence

__all__ = ["RunningMax", "PerThread", "cpu_lanes", "lane_pool", "run_lanes", "soon", "shutdown"]

_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def lane_pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
    """The shared pool of ``n`` lane threads (made on first use, kept until :func:`shutdown`)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="mhd-lane")
        return pool


def _forget_pools() -> None:
    """In a forked child: the parent's pools have no threads here; start afresh (no shutdown, which would wait)."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pools)


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

    def result(self, start: Any = None, window: tuple[slice, ...] | None = None) -> Any:
        """The maximum over all threads' parts and ``start`` (None: no start); None when nothing was added.

        With ``window`` (an index of the grids), the maximum over that part
        alone, as a new C-contiguous array; without, one of the parts,
        overwritten.
        """
        parts = list(self.parts.values()) + ([] if start is None else [start])
        if not parts:
            return None
        if window is None:
            out = parts[0]
        elif len(parts) == 1:
            return self.xp.ascontiguousarray(parts[0][window])
        else:
            out = self.xp.maximum(parts[0][window], parts[1][window])
            parts = parts[1:]
        for other in parts[1:]:
            self.xp.maximum(out, other if window is None else other[window], out=out)
        return out


def soon(lanes: int, fn: Callable[[], Any]) -> concurrent.futures.Future:
    """``fn()`` on a lane while this thread goes on, or here and now with one lane.

    For work whose working set is small beside the transforms' (the noise
    model beside the forward FFT, the blur fit beside the NMS): it overlaps
    them instead of contending for memory bandwidth. Returns a future either
    way; its ``result()`` raises what ``fn`` raised.
    """
    if lanes > 1:
        return lane_pool(lanes).submit(fn)
    done: concurrent.futures.Future = concurrent.futures.Future()
    try:
        done.set_result(fn())
    except Exception as exc:  # raised by result(), as from the pool; Ctrl-C is not held back
        done.set_exception(exc)
    return done


def run_lanes(lanes: int, tasks: Sequence[Callable[[], Any]], merge: Callable[[], Any] | None, later: Sequence[Callable[[], Any]]) -> Any:
    """Run ``tasks``, then ``merge`` once they are done, and ``later`` beside them.

    ``later`` are the heavy tasks (full-resolution transforms, whose working
    set overflows the caches); ``tasks`` and ``merge`` the light ones. Two
    heavy tasks side by side contend for memory bandwidth: on a 2-core VM
    they each ran at half speed, while a heavy task beside a light one ran
    at nearly full speed. So ``max(1, lanes // 2)`` lanes take the heavy
    tasks first and the others the light ones, in order; a lane whose list
    is empty takes from the other. ``merge`` waits only on ``tasks``, which
    were all taken before it, so the lanes cannot deadlock.

    With one lane everything runs in this thread: ``tasks``, ``merge``,
    ``later``. A task's exception is raised here once all have finished
    (``merge`` does not run after a failed task).

    Returns
    -------
    What ``merge`` returned (None without a ``merge``).
    """
    if lanes <= 1:
        return _run_in_order(tasks, merge, later)
    lock = threading.Lock()
    light: collections.deque = collections.deque(tasks)
    heavy: collections.deque = collections.deque(later)
    errors: list[BaseException] = []
    left = [len(light)]
    light_done = threading.Event()
    merged: list[Any] = [None]
    if not light:
        light_done.set()

    def run_light(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as exc:  # recorded before the merge can see the count reach 0
            with lock:
                errors.append(exc)
        with lock:
            left[0] -= 1
            if left[0] == 0:
                light_done.set()

    def run_merge() -> None:
        light_done.wait()
        if not errors:
            merged[0] = merge()

    if merge is not None:
        light.append(None)  # the merge's place: after every light task

    def take(prefer_heavy: bool) -> Callable[[], None] | None:
        with lock:
            first, second = (heavy, light) if prefer_heavy else (light, heavy)
            queue = first or second
            if not queue:
                return None
            fn = queue.popleft()
        if queue is heavy:
            return fn
        return run_merge if fn is None else functools.partial(run_light, fn)

    def lane(prefer_heavy: bool) -> None:
        while (fn := take(prefer_heavy)) is not None:
            try:
                fn()
            except BaseException as exc:  # raised below, once every lane has stopped
                with lock:
                    errors.append(exc)

    pool = lane_pool(lanes)
    loops = [pool.submit(lane, k < max(1, lanes // 2)) for k in range(lanes)]
    concurrent.futures.wait(loops)
    if errors:
        raise errors[0]
    return merged[0]


def _run_in_order(tasks: Sequence[Callable[[], Any]], merge: Callable[[], Any] | None, later: Sequence[Callable[[], Any]]) -> Any:
    """:func:`run_lanes` on one lane: ``tasks``, ``merge`` and ``later``, in this thread."""
    for fn in tasks:
        fn()
    merged = merge() if merge is not None else None
    for fn in later:
        fn()
    return merged


def cpu_lanes(be: Any) -> int:
    """CPU lanes of a backend: its workers on the CPU, one on a GPU (kernels queue in order there)."""
    return be.workers if be.device is None else 1
