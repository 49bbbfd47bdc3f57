"""Drive the real Globus Compute SDK ``Client`` / ``Executor`` offline.

Nothing is faked inside the SDK's submission path: its HTTP calls are
answered by ``responses`` (the web service), and the AMQP result watcher is
replaced by a subclass of the SDK's own ``_ResultWatcher`` that, instead of
opening a socket, runs each submitted task on a real local endpoint engine
(``ProcessPoolEngine`` with spawned workers, the endpoint's ``execute_task``
and the ``mhd-gpu`` serializer allowlist) and feeds the packed ``Result``
through the SDK's own result matching (so remote errors arrive as
``TaskExecutionFailed`` and results are deserialized by the client).

API (for tests; e.g. ``client submit`` with the Globus backend)::

    from globus_offline import OfflineCompute

    with OfflineCompute(data_root=tmp_path) as cloud:       # starts engine + mocks
        client = cloud.client()          # real globus_compute_sdk.Client (no login, no retries)
        fid = register_score_tiles(client)          # POST /v3/functions, stored by the "service"
        backend = GlobusExecutor(cloud.endpoint_id, fid, client)
        entries = backend.submit(["a.png"]).result(timeout=60)
        cloud.submissions                # list of submit request bodies (JSON dicts)
        cloud.fail_submits(1, status=403, message="...")   # next submit request fails

``OfflineCompute(data_root=None, workers=1, env=None, allowed_functions=None)``:
``allowed_functions`` (a set of UUID strings, default: every function
registered through it) emulates the endpoint's ``allowed_functions`` - a
submit for any other function is answered 403 as the service does.
Attributes: ``endpoint_id`` (str), ``functions`` (function id -> code
buffer), ``submissions``, ``tasks_run`` (int).
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
import uuid
from typing import Any

import responses
from globus_compute_common import messagepack
from globus_compute_sdk.sdk import executor as sdk_executor
from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect
from pika.spec import BasicProperties

from mhd.client.tasks import pack_task
from mhd.client.workers import local_engine

__all__ = ["OfflineCompute", "LoopbackResultWatcher"]

_V3 = r"https://[^/]+/v3"


class LoopbackResultWatcher(sdk_executor._ResultWatcher):
    """The SDK's result watcher, with the AMQP connection replaced by a local engine.

    ``watch_for_task_results`` (called by the Executor after a successful
    submit) runs each task on ``harness``'s engine; finished ``Result``
    messages go into ``_received_results`` exactly as ``_on_message`` would
    put them, and the SDK's ``_match_results_to_futures`` completes the futures.
    """

    harness: "OfflineCompute | None" = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.daemon = True

    def run(self) -> None:
        self._thread_id = threading.get_ident()
        while not self._time_to_stop:
            if self._time_to_check_results.wait(0.05):
                self._time_to_check_results.clear()
                self._match_results_to_futures()

    def watch_for_task_results(self, executor: Any, futures: list) -> int:
        count = super().watch_for_task_results(executor, futures)
        for fut in futures:
            if fut.task_id:
                self.harness._run(fut.task_id, self._deliver)
        return count

    def _deliver(self, packed_result: bytes) -> None:
        result = messagepack.unpack(packed_result)
        props = BasicProperties(timestamp=int(time.time()), headers={})
        with self._new_futures_lock:
            self._received_results[str(result.task_id)] = (props, result)
        self._time_to_check_results.set()


class OfflineCompute:
    """A Globus Compute web service + endpoint on this machine (see module docstring)."""

    def __init__(self, data_root: Any = None, workers: int = 1, env: dict | None = None, allowed_functions: set[str] | None = None):
        self.endpoint_id = str(uuid.uuid4())
        self.functions: dict[str, str] = {}
        self.submissions: list[dict] = []
        self.tasks_run = 0
        self._allowed = allowed_functions
        self._tasks: dict[str, tuple[str, str, list | None]] = {}
        self._failures: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="gc-offline-")
        self._engine = local_engine(data_root, workers, env, run_dir=self._tmp.name)
        self._mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        self._saved_watcher = sdk_executor._ResultWatcher

    # ----------------------------------------------------------- lifecycle

    def __enter__(self) -> "OfflineCompute":
        self._mock.start()
        self._mock.add_callback(responses.POST, re.compile(_V3 + r"/functions$"), callback=self._register, content_type="application/json")
        self._mock.add_callback(
            responses.POST, re.compile(_V3 + r"/endpoints/[^/]+/submit$"), callback=self._submit, content_type="application/json"
        )
        self._outer = LoopbackResultWatcher.harness  # harnesses may nest (a module's and a test's)
        LoopbackResultWatcher.harness = self
        sdk_executor._ResultWatcher = LoopbackResultWatcher
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            for watcher in list(sdk_executor._RESULT_WATCHERS.values()):
                if isinstance(watcher, LoopbackResultWatcher):
                    watcher.shutdown(wait=True, cancel_futures=True)
        finally:
            sdk_executor._ResultWatcher = self._saved_watcher
            LoopbackResultWatcher.harness = self._outer
            self._mock.stop()
            self._mock.reset()
            self._engine.executor.shutdown(wait=True, cancel_futures=True)
            self._tmp.cleanup()

    def client(self) -> Any:
        """A real ``globus_compute_sdk.Client``: no login, no version check, no HTTP retries."""
        import globus_sdk
        from globus_compute_sdk import Client

        client = Client(authorizer=globus_sdk.AccessTokenAuthorizer("offline-token"), do_version_check=False)
        client._compute_web_client.v3.retry_config.max_retries = 0
        return client

    def fail_submits(self, count: int = 1, status: int = 403, message: str = "Forbidden") -> None:
        """Answer the next ``count`` submit requests with an HTTP error."""
        self._failures += [(status, message)] * count

    # ------------------------------------------------------------ service

    def _register(self, request: Any) -> tuple[int, dict, str]:
        body = json.loads(request.body)
        code = body["function_code"]
        if not body.get("serialized", True):  # register_source_code: the service stores it as source text
            serde = ComputeSerializer(strategy_code=PureSourceTextInspect())
            code = serde.pack_buffers([f"{PureSourceTextInspect.identifier}{body['function_name']}:{code}"])
        function_id = str(uuid.uuid4())
        self.functions[function_id] = code
        return 200, {}, json.dumps({"function_uuid": function_id})

    def _submit(self, request: Any) -> tuple[int, dict, str]:
        body = json.loads(request.body)
        self.submissions.append(body)
        if self._failures:
            status, message = self._failures.pop(0)
            return status, {}, json.dumps({"code": "ERROR", "message": message})
        allowed = self._allowed if self._allowed is not None else set(self.functions)
        for function_id in body["tasks"]:
            if function_id not in self.functions or function_id not in allowed:
                message = f"Function {function_id} is not allowed on endpoint {self.endpoint_id}"
                return 403, {}, json.dumps({"code": "FUNCTION_NOT_PERMITTED", "message": message})
        ids: dict[str, list[str]] = {}
        with self._lock:
            for function_id, payloads in body["tasks"].items():
                ids[function_id] = [str(uuid.uuid4()) for _ in payloads]
                for task_id, payload in zip(ids[function_id], payloads):
                    self._tasks[task_id] = (function_id, payload, body.get("result_serializers"))
        endpoint_id = request.url.rstrip("/").split("/")[-2]
        reply = {
            "request_id": str(uuid.uuid4()),
            "task_group_id": body.get("task_group_id") or str(uuid.uuid4()),
            "endpoint_id": endpoint_id,
            "tasks": ids,
        }
        return 200, {}, json.dumps(reply)

    # ------------------------------------------------------------ endpoint

    def _run(self, task_id: str, deliver: Any) -> None:
        from globus_compute_endpoint.engines import GCFuture

        with self._lock:
            function_id, payload, result_serializers = self._tasks.pop(str(task_id))
            self.tasks_run += 1
        fut = GCFuture(uuid.UUID(str(task_id)))
        fut.add_done_callback(lambda f: deliver(f.result()))
        packed = pack_task(uuid.UUID(str(task_id)), self.functions[function_id], payload)
        self._engine.submit(fut, packed, resource_specification={}, result_serializers=result_serializers)
