"""A scoring task as it travels: its arguments and result on the wire, how it fails, and what runs it.

A task runs :func:`mhd.functions.worker.remote.score_tiles` serialized as the
service does (source text + JSON arguments, :mod:`mhd.client.registration`).
An executor (:class:`TaskExecutor`) returns a ``concurrent.futures.Future``
that resolves to the list of per-tile dicts (a bad tile is an entry with
``error`` set). It raises :class:`TaskFailed` when the whole task failed on
the worker (bad ``params``, too many tiles), with the remote exception's last
line as the message, and its subclass :class:`WorkerLost` when the worker
process died under the task; it raises the original exception when the task
could not be submitted (e.g. ``globus_sdk.GlobusAPIError``) or its result
could not be received (the AMQP result stream). :func:`retryable` tells
which failures say nothing about the tiles (the task may be submitted again)
and :func:`failure_message` words any of them for the operator.

Inline tiles may carry ``bytes``; they are sent as base64 text (the endpoint
accepts JSON arguments only).
"""

from __future__ import annotations

import base64
import uuid
from concurrent.futures import Future
from typing import Any, Callable, Protocol

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_sdk.sdk.batch import Batch
from globus_compute_sdk.serialize import ComputeSerializer

__all__ = [
    "LOCAL_FUNCTION_ID",
    "LOST_WORKER",
    "TaskExecutor",
    "TaskFailed",
    "WorkerLost",
    "call_args",
    "failure_message",
    "jsonable_tiles",
    "pack_task",
    "relay",
    "retryable",
    "running_future",
    "task_payload",
    "unpack_result",
]


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
LOST_WORKER = "BrokenProcessPool"


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


def jsonable_tiles(tiles: list) -> list:
    """Copy of ``tiles`` with inline ``bytes`` data as base64 text (JSON-safe)."""
    out = []
    for tile in tiles:
        if isinstance(tile, dict) and isinstance(tile.get("data"), (bytes, bytearray, memoryview)):
            tile = {**tile, "data": base64.b64encode(bytes(tile["data"])).decode("ascii")}
        out.append(tile)
    return out


def call_args(tiles: list, params: dict | None) -> tuple[tuple, dict]:
    if not isinstance(tiles, (list, tuple)):
        raise TypeError(f"tiles must be a list, got {type(tiles).__name__}")
    return (jsonable_tiles(list(tiles)),), ({"params": params} if params is not None else {})


def task_payload(serializer: ComputeSerializer, tiles: list, params: dict | None) -> str:
    """The serialized arguments of one ``score_tiles`` call, exactly as the SDK sends them."""
    args, kwargs = call_args(tiles, params)
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


def relay(out: Future, convert: Callable[[Any], Any]) -> Callable[[Future], None]:
    """A done-callback that settles ``out`` from an inner future through ``convert``."""

    def settle(inner: Future) -> None:
        try:
            value = convert(inner.result())
        except BaseException as exc:  # every failure belongs to the caller's future
            out.set_exception(exc)
        else:
            out.set_result(value)

    return settle


def running_future() -> Future:
    fut: Future = Future()
    fut.set_running_or_notify_cancel()  # once submitted, a task cannot be withdrawn
    return fut
