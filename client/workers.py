"""The local engine's worker processes: spawned, pinned, deaf to the terminal's signals, gone with the client.

:func:`local_engine` starts a ``ProcessPoolEngine`` configured like the
``mhd-gpu`` endpoint (the same serializer allow-list and worker limits), for
:class:`mhd.client.executors.LocalExecutor`.
"""

from __future__ import annotations

import functools
import io
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from typing import Any

from mhd.contracts.limits import ALLOWED_SERIALIZERS

from .portable import CAN_PIN, STOP_SIGNALS, blocked, unblock

__all__ = ["local_engine", "warm_up_tile"]

log = logging.getLogger(__name__)


#: Signals the local workers ignore: Ctrl-C (the terminal's process group),
#: SIGTERM (``systemctl stop`` signals the whole control group) and SIGHUP (a
#: closed terminal). The client handles them and stops the workers itself.
_WORKER_IGNORES = STOP_SIGNALS


class _WorkerProcess(multiprocessing.get_context("spawn").Process):
    """A spawned pool worker that never sees the client's stop signals.

    A terminal sends SIGINT to the whole foreground process group, workers
    included, and systemd sends SIGTERM to the whole control group; the client
    handles them (records what is in flight, then shuts the workers down).
    The worker is started with SIGINT, SIGTERM and SIGHUP blocked, so one
    that arrives while it starts (imports) stays pending, and
    :func:`_init_worker` ignores them (discarding a pending one) before
    unblocking them, as CPython's own resource tracker does. As it ignores
    SIGTERM, :meth:`terminate` kills it (SIGKILL): the pool terminates its
    workers when one of them died, and the client when it stops.
    """

    def start(self) -> None:
        with blocked(_WORKER_IGNORES):
            super().start()

    def terminate(self) -> None:
        self.kill()


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (if not yet) with SIGHUP blocked.

    It ignores SIGINT and SIGTERM itself, but a closed terminal's SIGHUP would
    end it, and the client's semaphores would then be reported leaked (or
    the tracker restarted with a warning) at exit.
    """
    if not hasattr(signal, "SIGHUP"):
        return
    from multiprocessing import resource_tracker

    with blocked((signal.SIGHUP,)):
        resource_tracker.ensure_running()


class _WorkerContext(type(multiprocessing.get_context("spawn"))):  # type: ignore[misc]
    """The spawn context, with :class:`_WorkerProcess` workers."""

    Process = _WorkerProcess


def _init_worker(environ: dict[str, str | None], parent: int, slot: Any = None, workers: int = 1) -> None:
    """Process-pool initializer: ignore SIGINT, SIGTERM and SIGHUP (the client
    shuts the worker down), set (or, for None, remove) worker environment variables, keep
    the engine's task logging off the client's terminal (a failed task's
    traceback travels in its result), end the worker when its parent
    process (the client) is gone, and give it its share of the CPUs
    (:func:`_pin`; ``slot`` is the pool's shared counter of started workers)."""
    if slot is not None:
        _pin(slot, workers)
    for signum in _WORKER_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    unblock(_WORKER_IGNORES)
    logging.getLogger().addHandler(logging.NullHandler())
    for key, value in environ.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    threading.Thread(target=_exit_with_parent, args=(parent,), name="mhd-exit-with-parent", daemon=True).start()


def _pin(slot: Any, workers: int) -> None:
    """Restrict this worker to its share of the CPUs: the ``k``-th worker started gets the ``k``-th of ``workers`` equal parts.

    The detector runs one lane per CPU it may use; unpinned, every worker
    would run as many lanes as the machine has CPUs, ``workers`` times too many
    threads. No-op where the platform cannot set affinities.
    """
    if not CAN_PIN:
        return
    with slot.get_lock():
        k, slot.value = slot.value, slot.value + 1
    cpus = sorted(os.sched_getaffinity(0))
    share = max(1, len(cpus) // workers)
    first = (k % workers) * share % len(cpus)
    os.sched_setaffinity(0, cpus[first : first + share])


def _exit_with_parent(parent: int, period: float = 1.0) -> None:
    """Poll every ``period`` seconds; exit once ``parent`` is no longer this
    process's parent (a client killed with SIGKILL cannot stop its pool, and
    its workers would otherwise wait for tasks forever)."""
    while os.getppid() == parent:
        time.sleep(period)
    os._exit(1)


def local_engine(data_root: str | os.PathLike | None = None, workers: int | None = None, env: dict | None = None, *, run_dir: str) -> Any:
    """A started ``ProcessPoolEngine`` configured like the ``mhd-gpu`` endpoint.

    Workers are freshly *spawned* processes (not forks of the caller), each
    pinned to its share of the CPUs (:func:`_pin`), that ignore SIGINT, SIGTERM and SIGHUP (the client
    handles them and stops the workers), take
    ``MHD_DATA_ROOT`` = ``data_root`` (None removes it: inline tiles only) and
    the variables in ``env`` (a None value removes one), and deserialize only
    :data:`~mhd.contracts.limits.ALLOWED_SERIALIZERS`.

    Parameters
    ----------
    workers : int, optional
        Worker processes; default one per CPU, at most 8.
    run_dir : str
        Folder the engine runs tasks in.
    """
    from globus_compute_endpoint.engines import ProcessPoolEngine

    environ: dict[str, str | None] = {"MHD_DATA_ROOT": os.path.realpath(data_root) if data_root else None}
    environ.update(env or {})
    workers = workers or min(os.cpu_count() or 1, 8)
    _start_resource_tracker()
    context = _WorkerContext()
    engine = ProcessPoolEngine(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(environ, os.getpid(), context.Value("i", 0), workers),
        allowed_serializers=list(ALLOWED_SERIALIZERS),
    )
    engine.start(endpoint_id=uuid.uuid4(), run_dir=run_dir)
    return engine


@functools.lru_cache(maxsize=1)
def warm_up_tile() -> dict:
    """An inline 64 x 64 TIFF tile that :class:`LocalExecutor` scores once per worker as soon as it starts."""
    import numpy as np
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.add.outer(np.arange(64), np.arange(64)) * 37 % 251).astype(np.uint8))
    return {"name": "mhd-warm-up", "data": buf.getvalue()}
