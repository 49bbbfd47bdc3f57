"""Where scoring tasks run: one interface, a local engine or a Globus Compute endpoint.

Both executors run :func:`mhd.functions.worker.remote.score_tiles` serialized the
same way (source text + JSON arguments, see :mod:`mhd.client.registration`)
and return ``concurrent.futures.Future`` objects:

>>> with LocalExecutor(data_root="section_042", workers=2) as executor:  # doctest: +SKIP
...     future = executor.submit(["tile_r0_c0.png", "tile_r0_c2.png"], {"threshold": 0.02})
...     for entry in future.result():
...         print(entry["tile"], entry["density"], entry["error"])

A future resolves to the list of per-tile dicts (a bad tile is an entry with
``error`` set). It raises :class:`TaskFailed` when the whole task failed on
the worker (bad ``params``, too many tiles), with the remote exception's last
line as the message, and its subclass :class:`WorkerLost` when the worker
process died under the task; it raises the original exception when the task
could not be submitted (e.g. ``globus_sdk.GlobusAPIError``) or its result
could not be received (the AMQP result stream). :func:`retryable` tells
which failures say nothing about the tiles (the task may be submitted again)
and :func:`failure_message` words any of them for the operator.

Inline tiles may carry ``bytes``; the executors send them as base64 text
(the endpoint accepts JSON arguments only).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, Callable, Protocol

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_sdk.sdk.batch import Batch
from globus_compute_sdk.serialize import ComputeSerializer

from .registration import ALLOWED_SERIALIZERS, RESULT_SERIALIZERS, function_code, score_serializer

__all__ = [
    "EngineExecutor",
    "GlobusExecutor",
    "LocalExecutor",
    "TaskExecutor",
    "TaskFailed",
    "WorkerLost",
    "failure_message",
    "jsonable_tiles",
    "local_engine",
    "pack_task",
    "retryable",
    "task_payload",
    "unpack_result",
]

log = logging.getLogger(__name__)

#: Function id that local tasks are filed under (no service is involved).
LOCAL_FUNCTION_ID = uuid.UUID(int=0)


class TaskFailed(RuntimeError):
    """A whole scoring task failed where it ran.

    Attributes
    ----------
    message : str
        The remote exception's last line, e.g. ``"ValueError: unknown parameter(s) nbins; ..."``.
    details : str
        The full remote traceback text.
    """

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.message = message
        self.details = details or message

    @classmethod
    def from_remote(cls, remote_text: str) -> "TaskFailed":
        """Summarise a remote traceback by its last non-blank line (the exception)."""
        lines = [ln.strip() for ln in str(remote_text).splitlines() if ln.strip() and not set(ln.strip()) <= set("+-")]
        return cls(lines[-1] if lines else "remote task failed without a message", str(remote_text))


class WorkerLost(TaskFailed):
    """The worker process died while the task was queued or running on it
    (killed, out of memory, crashed); the task itself may be sound."""


#: Text of the remote error a process pool reports for a dead worker.
_LOST_WORKER = "BrokenProcessPool"


def retryable(exc: BaseException) -> bool:
    """True when a task's failure says nothing about its tiles, so submitting it again may succeed.

    That is a lost worker (:class:`WorkerLost`), a refused submission that
    the service calls transient (HTTP 429 or 5xx, after the SDK's own
    retries) and any failure to submit or to receive the result (network,
    the AMQP result stream). A task that ran and raised (:class:`TaskFailed`)
    and any other HTTP refusal (e.g. 403, function not allowed) are final.
    """
    if isinstance(exc, TaskFailed):
        return isinstance(exc, WorkerLost)
    status = getattr(exc, "http_status", None)
    return not isinstance(status, int) or status == 429 or status >= 500


def failure_message(exc: BaseException) -> str:
    """One line for the operator saying why a task produced no result."""
    if isinstance(exc, WorkerLost):
        return "worker process lost (killed or crashed) while scoring"
    if isinstance(exc, TaskFailed):
        return f"scoring task failed: {exc.message}"
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        return f"Globus Compute refused the task (HTTP {status}): {getattr(exc, 'message', None) or exc}"
    lines = str(exc).strip().splitlines()
    what = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
    if _is_amqp_error(exc):
        return f"no result: the result stream (AMQP) is unreachable ({what})"
    return f"no result: {what}"


def _is_amqp_error(exc: BaseException) -> bool:
    try:
        from pika.exceptions import AMQPError
    except ImportError:  # pragma: no cover - pika comes with the Compute SDK
        return False
    return isinstance(exc, AMQPError)


class TaskExecutor(Protocol):
    """What the client needs from a place that runs scoring tasks."""

    name: str

    def submit(self, tiles: list, params: dict | None = None) -> "Future[list[dict]]": ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...

    def abort(self) -> None: ...

    def __enter__(self) -> "TaskExecutor": ...

    def __exit__(self, *exc: Any) -> None: ...


# ------------------------------------------------------------ task bodies


def jsonable_tiles(tiles: list) -> list:
    """Copy of ``tiles`` with inline ``bytes`` data as base64 text (JSON-safe)."""
    out = []
    for tile in tiles:
        if isinstance(tile, dict) and isinstance(tile.get("data"), (bytes, bytearray, memoryview)):
            tile = {**tile, "data": base64.b64encode(bytes(tile["data"])).decode("ascii")}
        out.append(tile)
    return out


def _call_args(tiles: list, params: dict | None) -> tuple[tuple, dict]:
    if not isinstance(tiles, (list, tuple)):
        raise TypeError(f"tiles must be a list, got {type(tiles).__name__}")
    return (jsonable_tiles(list(tiles)),), ({"params": params} if params is not None else {})


def task_payload(serializer: ComputeSerializer, tiles: list, params: dict | None) -> str:
    """The serialized arguments of one ``score_tiles`` call, exactly as the SDK sends them."""
    args, kwargs = _call_args(tiles, params)
    batch = Batch(task_group_id=None, serializer=serializer)
    batch.add(LOCAL_FUNCTION_ID, args=args, kwargs=kwargs)
    return batch.prepare()["tasks"][str(LOCAL_FUNCTION_ID)][0]


def pack_task(task_id: uuid.UUID, code: str, payload: str) -> bytes:
    """The message an endpoint engine executes: function code followed by arguments."""
    return messagepack.pack(Task(task_id=task_id, task_buffer=code + payload))


def unpack_result(packed: bytes, serializer: ComputeSerializer) -> Any:
    """Deserialize an engine's packed ``Result``; raise :class:`TaskFailed` for a remote error."""
    result = messagepack.unpack(packed)
    if not isinstance(result, Result):
        raise TaskFailed(f"engine returned {type(result).__name__}, not a Result")
    if result.is_error:
        raise TaskFailed.from_remote(result.data)
    return serializer.deserialize(result.data)


def _relay(out: Future, convert: Callable[[Any], Any]) -> Callable[[Future], None]:
    """A done-callback that settles ``out`` from an inner future through ``convert``."""

    def settle(inner: Future) -> None:
        try:
            value = convert(inner.result())
        except BaseException as exc:  # every failure belongs to the caller's future
            out.set_exception(exc)
        else:
            out.set_result(value)

    return settle


def _running_future() -> Future:
    fut: Future = Future()
    fut.set_running_or_notify_cancel()  # once submitted, a task cannot be withdrawn
    return fut


# ------------------------------------------------------------------ local


#: Signals the local workers ignore: Ctrl-C (the terminal's process group),
#: SIGTERM (``systemctl stop`` signals the whole control group) and SIGHUP (a
#: closed terminal). The client handles them and stops the workers itself.
_WORKER_IGNORES = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


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
        old = signal.pthread_sigmask(signal.SIG_BLOCK, set(_WORKER_IGNORES))
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

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

    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_WORKER_IGNORES))
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
    if not hasattr(os, "sched_setaffinity"):
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


class EngineExecutor:
    """Run ``score_tiles`` on a started ``globus_compute_endpoint`` engine.

    Tasks are packed exactly as an endpoint receives them from the service
    (function source text + JSON arguments) and run through the engine's
    ``submit`` and the endpoint's ``execute_task``. Any engine works:
    ``ProcessPoolEngine`` (see :class:`LocalExecutor`) or ``GlobusComputeEngine``
    (the endpoint's own, e.g. with ``available_accelerators``); start it with
    ``allowed_serializers`` = :data:`~mhd.client.registration.ALLOWED_SERIALIZERS`
    to mirror the ``mhd-gpu`` endpoint.

    Parameters
    ----------
    engine : GlobusComputeEngineBase
        A started engine; this executor shuts it down.
    """

    name = "engine"

    def __init__(self, engine: Any):
        self._engine = engine
        self._serde = score_serializer()
        self._code = function_code(self._serde)
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[Any] = set()  # the engine's futures not resolved yet

    def submit(self, tiles: list, params: dict | None = None) -> "Future[list[dict]]":
        """Queue one task scoring ``tiles``; see the module docstring for the future's outcomes."""
        from globus_compute_endpoint.engines import GCFuture

        packed = pack_task(task_id := uuid.uuid4(), self._code, task_payload(self._serde, tiles, params))
        out = _running_future()
        inner = GCFuture(task_id)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} is shut down; no new tasks may be submitted")
            engine = self._ready_engine()
            self._pending.add(inner)
            inner.add_done_callback(self._pending.discard)  # no lock: it may run inside engine.submit, under ours
            inner.add_done_callback(_relay(out, lambda body: self._unpack(body, engine)))
            try:
                engine.submit(inner, packed, resource_specification={}, result_serializers=list(RESULT_SERIALIZERS))
            except BaseException:
                self._pending.discard(inner)
                raise
        return out

    def _ready_engine(self) -> Any:
        """The engine to submit to (called with the lock held)."""
        return self._engine

    def _unpack(self, body: bytes, engine: Any) -> Any:
        """A task's result from the packed ``Result`` that ``engine`` returned."""
        return unpack_result(body, self._serde)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the engine (tasks already queued still run unless the engine cancels them)."""
        if self._close():
            self._engine.shutdown(block=wait)

    def abort(self) -> None:
        """Stop now, after Ctrl-C: queued tasks are dropped, running ones are not waited for."""
        if self._close():
            self._engine.shutdown(block=False)

    def _close(self) -> bool:
        """Mark shut down; True the first time."""
        with self._lock:
            first, self._closed = not self._closed, True
        return first

    def __enter__(self) -> "EngineExecutor":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if self._pending:  # a task the pipeline stopped waiting for (task_timeout) may never end
            self.abort()
        else:
            self.shutdown(wait=True, cancel_futures=exc_type is not None)


def local_engine(data_root: str | os.PathLike | None = None, workers: int | None = None, env: dict | None = None, *, run_dir: str) -> Any:
    """A started ``ProcessPoolEngine`` configured like the ``mhd-gpu`` endpoint.

    Workers are freshly *spawned* processes (not forks of the caller), each
    pinned to its share of the CPUs (:func:`_pin`), that ignore SIGINT, SIGTERM and SIGHUP (the client
    handles them and stops the workers), take
    ``MHD_DATA_ROOT`` = ``data_root`` (None removes it: inline tiles only) and
    the variables in ``env`` (a None value removes one), and deserialize only
    :data:`~mhd.client.registration.ALLOWED_SERIALIZERS`.

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


class LocalExecutor(EngineExecutor):
    """Run ``score_tiles`` on this machine, no Globus account needed.

    An :class:`EngineExecutor` over :func:`local_engine` (the endpoint's
    ``ProcessPoolEngine``, spawned workers): the function is rebuilt from its
    source text there, as on a real endpoint. Workers stay warm between tasks
    (filter banks, FFT plans, a GPU context when CuPy finds one). As with any
    spawning pool, a script that creates one needs an
    ``if __name__ == "__main__":`` guard (the ``client`` command and notebooks
    are fine).

    A worker that dies (killed, out of memory, a crash in a decoder) breaks a
    process pool for good: its tasks fail with :class:`WorkerLost` and the
    next :meth:`submit` starts a fresh engine (``restarts`` counts them); the
    :class:`~mhd.client.pipeline.Pipeline` submits lost tasks again. Workers
    exit by themselves when the client process is gone.

    Parameters
    ----------
    data_root : str or Path, optional
        Folder that path tiles are relative to (the workers' ``MHD_DATA_ROOT``);
        None allows inline tiles only.
    workers : int, optional
        Worker processes; default one per CPU, at most 8.
    env : dict, optional
        More worker environment variables (e.g. ``MHD_MAX_PIXELS``); a None value removes one.
    run_dir : str, optional
        Working directory of the tasks; default a temporary folder removed at shutdown.
    """

    name = "local"

    def __init__(
        self, data_root: str | os.PathLike | None = None, workers: int | None = None, env: dict | None = None, run_dir: str | None = None
    ):
        self._tmp = None if run_dir else tempfile.TemporaryDirectory(prefix="mhd-local-")
        self.workers = workers or min(os.cpu_count() or 1, 8)
        self._engine_args = (data_root, self.workers, env, run_dir or self._tmp.name)
        self._broken: Any = None
        self.restarts = 0
        super().__init__(self._new_engine())
        self._warm(self._engine)

    def _warm(self, engine: Any) -> None:
        """Start every worker now and have each score :func:`warm_up_tile` through the task path.

        Workers then import the detector, decode, build the function from its
        source and run the FFTs while the client is still discovering (and
        transferring) tiles, so a small section does not wait for start-up.
        The warm-up's results are not looked at: a worker that cannot score
        fails its real tasks instead.
        """
        from globus_compute_endpoint.engines import GCFuture

        payload = task_payload(self._serde, [warm_up_tile()], None)
        for _ in range(self.workers):
            task_id = uuid.uuid4()
            engine.submit(
                GCFuture(task_id),
                pack_task(task_id, self._code, payload),
                resource_specification={},
                result_serializers=list(RESULT_SERIALIZERS),
            )

    def _new_engine(self) -> Any:
        data_root, workers, env, run_dir = self._engine_args
        return local_engine(data_root, workers, env, run_dir=run_dir)

    def _unpack(self, body: bytes, engine: Any) -> Any:
        """As :meth:`EngineExecutor._unpack`; a dead worker raises :class:`WorkerLost`
        and marks ``engine`` broken (a process pool never recovers from one)."""
        try:
            return super()._unpack(body, engine)
        except TaskFailed as exc:
            if _LOST_WORKER not in exc.details:
                raise
            if engine is self._engine:  # no lock: this may run inside submit, under it
                self._broken = engine
            raise WorkerLost("worker process lost (killed or crashed) while the task was queued or running", exc.details) from None

    def _ready_engine(self) -> Any:
        """The engine, replaced by a fresh one when a worker of it died (lock held)."""
        if self._broken is self._engine:
            log.warning("a local worker process was lost: restarting the local engine (%d worker(s))", self.workers)
            old, self._engine = self._engine, self._new_engine()
            self._warm(self._engine)
            self.restarts += 1
            old.executor.shutdown(wait=False, cancel_futures=True)
        return self._engine

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers; with ``cancel_futures`` queued tasks fail with :class:`TaskFailed`."""
        if not self._close():
            return
        self._engine.executor.shutdown(wait=wait, cancel_futures=cancel_futures)
        if self._tmp is not None and wait:
            self._tmp.cleanup()

    def abort(self, timeout: float = 2.0) -> None:
        """Stop now, after Ctrl-C (or SIGTERM, SIGHUP): queued tasks are dropped and the workers
        (which ignore those signals, and may be in the middle of a task) are
        killed; waits at most ``timeout`` seconds for them to exit."""
        if not self._close():
            return
        executor = self._engine.executor
        workers = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in workers:
            with contextlib.suppress(Exception):
                proc.kill()
        deadline = time.monotonic() + timeout
        for proc in workers:
            proc.join(max(0.0, deadline - time.monotonic()))
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()


# ----------------------------------------------------------------- globus


class GlobusExecutor:
    """Run the registered ``score_tiles`` on a Globus Compute endpoint, by UUID.

    Uses ``Executor.submit_to_registered_function`` (no I/O in the caller;
    tasks are batched upstream). An ``Executor`` whose submission failed shuts
    itself down and refuses new work; this executor then makes a new one.

    Parameters
    ----------
    endpoint_id, function_id : str
        The ``mhd-gpu`` endpoint and the registered function (``client register``).
    client : globus_compute_sdk.Client
        Authenticated Compute client (:func:`mhd.client.auth.compute_client`).
    batch_size : int
        Most tasks per submit request.
    executor_factory : callable, optional
        ``() -> Executor``; default builds one from the arguments above with
        the score serializer and JSON results.
    """

    name = "globus"

    def __init__(
        self,
        endpoint_id: str,
        function_id: str,
        client: Any = None,
        *,
        batch_size: int = 128,
        executor_factory: Callable[[], Any] | None = None,
    ):
        if client is None and executor_factory is None:
            raise ValueError("GlobusExecutor needs a Compute client (mhd.client.auth.compute_client) or an executor_factory")
        self.endpoint_id = str(endpoint_id)
        self.function_id = str(function_id)
        self._client = client
        self._batch_size = batch_size
        self._factory = executor_factory or self._default_executor
        self._executor: Any = None
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[Future] = set()  # the SDK's futures not resolved yet
        self._made: list[Any] = []  # every SDK executor made (a retired one's results may still be awaited)
        self.executors_made = 0

    def _default_executor(self) -> Any:
        from globus_compute_sdk import Executor
        from globus_compute_sdk.serialize import JSONData

        return Executor(
            endpoint_id=self.endpoint_id,
            client=self._client,
            batch_size=self._batch_size,
            serializer=score_serializer(),
            result_serializers=[JSONData()],
        )

    def _current_executor(self) -> Any:
        if self._executor is None:
            self._executor = self._factory()
            self._made.append(self._executor)
            self.executors_made += 1
        return self._executor

    def submit(self, tiles: list, params: dict | None = None) -> "Future[list[dict]]":
        """Queue one task scoring ``tiles`` on the endpoint; see the module docstring."""
        args, kwargs = _call_args(tiles, params)
        with self._lock:
            if self._closed:
                raise RuntimeError("GlobusExecutor is shut down; no new tasks may be submitted")
            executor, inner = self._submit_once(args, kwargs)
            self._pending.add(inner)
        out = _running_future()
        inner.add_done_callback(lambda f: self._settle(out, f, executor))
        return out

    def _submit_once(self, args: tuple, kwargs: dict) -> tuple[Any, Future]:
        executor = self._current_executor()
        try:
            return executor, executor.submit_to_registered_function(self.function_id, args=args, kwargs=kwargs)
        except RuntimeError:  # shut down after an earlier failed submission
            self._executor = None
            executor = self._current_executor()
            return executor, executor.submit_to_registered_function(self.function_id, args=args, kwargs=kwargs)

    def _settle(self, out: Future, inner: Future, executor: Any) -> None:
        """Relay ``inner``: a remote error becomes :class:`TaskFailed`; a submission
        or result-stream failure also retires the executor that had it."""
        from globus_compute_sdk.errors import TaskExecutionFailed

        with self._lock:
            self._pending.discard(inner)
        if inner.cancelled():  # queued when an earlier submission failed: the executor dropped it
            self._retire(executor)
            out.set_exception(RuntimeError("the executor stopped before sending this task (an earlier submission failed)"))
            return
        exc = inner.exception()
        if exc is None:
            out.set_result(inner.result())
        elif isinstance(exc, TaskExecutionFailed):
            failed = TaskFailed.from_remote(exc.remote_data)
            failed.__cause__ = exc
            out.set_exception(failed)
        else:
            self._retire(executor)
            out.set_exception(exc)

    def _retire(self, executor: Any) -> None:
        with self._lock:
            if self._executor is not executor:
                return
            self._executor = None
        threading.Thread(target=executor.shutdown, kwargs={"wait": False, "cancel_futures": True}, daemon=True).start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the executor down (``wait`` for outstanding results by default).

        With ``cancel_futures`` the results of tasks already on the endpoint
        are given up too: the SDK's result watcher drops their futures, which
        it would otherwise wait for before the process could exit (its
        stopping thread is not a daemon), however long the endpoint stays silent.
        """
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=cancel_futures)
        if cancel_futures:
            for made in self._made:  # their task groups are known once they have submitted
                _drop_result_watcher(getattr(made, "task_group_id", None))

    def abort(self) -> None:
        """Stop now, after Ctrl-C: tasks not yet sent are dropped; results of
        tasks already on the endpoint are not waited for (their tiles are
        scored again on the next run)."""
        self.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "GlobusExecutor":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        with self._lock:
            given_up = bool(self._pending)  # results the pipeline stopped waiting for (task_timeout): never wait for them
        stop = exc_type is not None or given_up
        self.shutdown(wait=not stop, cancel_futures=stop)


def _drop_result_watcher(group: Any) -> None:
    """Shut down the SDK's result watcher of a task group, cancelling the futures it holds.

    ``Executor.shutdown(cancel_futures=True)`` cancels only tasks not yet
    sent; the watcher (``globus_compute_sdk.sdk.executor._RESULT_WATCHERS``,
    SDK 4.x) keeps the others, and the SDK's exit hook shuts it down without
    cancelling, so the process would wait for results that may never come.
    """
    try:
        from globus_compute_sdk.sdk.executor import _RESULT_WATCHERS

        watcher = _RESULT_WATCHERS.get(group)
    except ImportError:  # another SDK layout: nothing to drop here
        return
    if watcher is not None:
        watcher.shutdown(wait=False, cancel_futures=True)
