"""Where scoring tasks run: a local engine or a Globus Compute endpoint, behind one interface.

Every executor runs :func:`mhd.functions.worker.remote.score_tiles` serialized
the same way and returns futures (:mod:`mhd.client.tasks` says what they
resolve to and how they fail); they share their lifecycle (:class:`_Lifecycle`).

>>> with LocalExecutor(data_root="section_042", workers=2) as executor:  # doctest: +SKIP
...     future = executor.submit(["tile_r0_c0.png", "tile_r0_c2.png"], {"threshold": 0.02})
...     for entry in future.result():
...         print(entry["tile"], entry["density"], entry["error"])
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, Callable

from mhd.contracts.limits import RESULT_SERIALIZERS

from .registration import function_code, score_serializer
from .tasks import LOST_WORKER, TaskFailed, WorkerLost, call_args, pack_task, relay, running_future, task_payload, unpack_result
from .workers import local_engine, warm_up_tile

__all__ = ["EngineExecutor", "GlobusExecutor", "LocalExecutor"]

log = logging.getLogger(__name__)


class _Lifecycle(abc.ABC):
    """What every executor shares: a lock, the futures not resolved yet, no task after shutdown, and its ``with``.

    Leaving the ``with`` block while a task's result is still awaited (the pipeline stopped waiting for it:
    ``task_timeout``) aborts, since that result may never come; otherwise it shuts down, waiting for the
    executor's work unless an error left the block and the executor does not wait then (``wait_on_error``).
    """

    #: Whether leaving the ``with`` block on an error still waits for the executor to stop.
    wait_on_error = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[Future[Any]] = set()  # the futures of the engine or SDK not resolved yet

    def _check_open(self) -> None:
        """Refuse a task after shutdown (called with the lock held)."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is shut down; no new tasks may be submitted")

    def _close(self) -> bool:
        """Mark shut down; True the first time."""
        with self._lock:
            first, self._closed = not self._closed, True
        return first

    @abc.abstractmethod
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; ``wait`` for those outstanding; ``cancel_futures`` gives them up."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop now, after Ctrl-C: queued tasks are dropped, running ones are not waited for."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        with self._lock:
            given_up = bool(self._pending)
        if given_up:
            self.abort()
        else:
            self.shutdown(wait=exc_type is None or self.wait_on_error, cancel_futures=exc_type is not None)


class EngineExecutor(_Lifecycle):
    """Run ``score_tiles`` on a started ``globus_compute_endpoint`` engine.

    Tasks are packed exactly as an endpoint receives them from the service
    (function source text + JSON arguments) and run through the engine's
    ``submit`` and the endpoint's ``execute_task``. Any engine works:
    ``ProcessPoolEngine`` (see :class:`LocalExecutor`) or ``GlobusComputeEngine``
    (the endpoint's own, e.g. with ``available_accelerators``); start it with
    ``allowed_serializers`` = :data:`~mhd.contracts.limits.ALLOWED_SERIALIZERS`
    to mirror the ``mhd-gpu`` endpoint.

    Parameters
    ----------
    engine : GlobusComputeEngineBase
        A started engine; this executor shuts it down.
    """

    name = "engine"

    def __init__(self, engine: Any):
        super().__init__()
        self._engine = engine
        self._serde = score_serializer()
        self._code = function_code(self._serde)

    def submit(self, tiles: list, params: dict | None = None) -> "Future[list[dict]]":
        """Queue one task scoring ``tiles``; see the module docstring for the future's outcomes."""
        from globus_compute_endpoint.engines import GCFuture

        packed = pack_task(task_id := uuid.uuid4(), self._code, task_payload(self._serde, tiles, params))
        out = running_future()
        inner = GCFuture(task_id)
        with self._lock:
            self._check_open()
            engine = self._ready_engine()
            self._pending.add(inner)
            inner.add_done_callback(self._pending.discard)  # no lock: it may run inside engine.submit, under ours
            inner.add_done_callback(relay(out, lambda body: self._unpack(body, engine)))
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
            if LOST_WORKER not in exc.details:
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


class GlobusExecutor(_Lifecycle):
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
    wait_on_error = False  # results of tasks on the endpoint may never come: an error gives them up

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
        super().__init__()
        self._executor: Any = None
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
        args, kwargs = call_args(tiles, params)
        with self._lock:
            self._check_open()
            executor, inner = self._submit_once(args, kwargs)
            self._pending.add(inner)
        out = running_future()
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
