"""The execution seam: score_tiles serialized by source, run by the endpoint's own engines.

LocalExecutor = the endpoint's ProcessPoolEngine with spawned workers and the
endpoint's ``execute_task``. The GlobusComputeEngine (fake accelerators) runs
the same task bodies in ``test_endpoint_config.py``, from the shipped config.
"""

from __future__ import annotations

import concurrent.futures
import os
import uuid

import pytest
from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect

import mhd.functions.worker.scoring
from mhd.client.executors import LocalExecutor
from mhd.client.registration import function_code, function_source, score_serializer
from mhd.client.tasks import TaskFailed, jsonable_tiles, pack_task, task_payload
from mhd.functions.worker.remote import score_tiles
from tilegen import blobs, encode


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    data = tmp_path_factory.mktemp("root")
    for i in range(4):
        (data / f"t{i}.png").write_bytes(encode(blobs((96, 96), i), "PNG"))
    (data / "bad.tif").write_bytes(b"II*\x00 not really")
    return data


@pytest.fixture(scope="module")
def local(root):
    backend = LocalExecutor(data_root=root, workers=2)
    try:
        yield backend
    finally:
        backend.shutdown()


def expected(root, names):
    os.environ["MHD_DATA_ROOT"] = str(root)
    try:
        return [e["features"] for e in score_tiles(names)]
    finally:
        del os.environ["MHD_DATA_ROOT"]


# ------------------------------------------------------- serialization


def test_function_travels_as_source_text_not_by_reference():
    serde = score_serializer()
    code = function_code(serde)
    [buffer] = serde.unpack_buffers(code)
    assert buffer.startswith(PureSourceTextInspect.identifier)
    assert "def score_tiles(tiles, params=None):" in buffer
    assert function_source().startswith("def score_tiles(")
    rebuilt = serde.deserialize(buffer)
    assert rebuilt is not score_tiles and rebuilt.__module__ != score_tiles.__module__


def test_arguments_travel_as_json_with_inline_bytes_as_base64():
    payload = task_payload(score_serializer(), [{"name": "a", "data": b"\x00\xff"}, "x.png"], {"n_bin": 8})
    args, kwargs = [score_serializer().deserialize(b) for b in ComputeSerializer().unpack_buffers(payload)]
    assert args == [[{"name": "a", "data": "AP8="}, "x.png"]] and kwargs == {"params": {"n_bin": 8}}
    assert jsonable_tiles(["p"]) == ["p"]


# ------------------------------------------------------- local backend


@pytest.mark.slow
def test_local_backend_scores_a_batch_like_the_function(local, root):
    names = [f"t{i}.png" for i in range(4)]
    inline = {"name": "inline.png", "data": (root / "t1.png").read_bytes()}
    entries = local.submit(names + [inline, "bad.tif", "../t0.png"]).result(timeout=60)
    assert [e["features"] for e in entries[:4]] == expected(root, names)
    assert entries[4]["features"] == entries[1]["features"] and entries[4]["tile"] == "inline.png"
    assert entries[5]["error"].startswith("bad.tif: ") and entries[6]["error"].startswith("../t0.png: '..'")
    assert {e["backend"] for e in entries[:5]} == {"numpy"}


@pytest.mark.slow
def test_workers_are_spawned_fresh_not_forked(local, root, monkeypatch):
    def poisoned(*args, **kwargs):
        raise AssertionError("ran the test process's copy of the module")

    monkeypatch.setattr(mhd.functions.worker.scoring, "score_batch", poisoned)
    [entry] = local.submit(["t0.png"]).result(timeout=60)
    assert entry["features"] > 0
    assert local._engine.executor._mp_context.get_start_method() == "spawn"


def test_concurrent_tasks_complete_as_futures(local, root):
    futures = [local.submit([f"t{i % 4}.png"], {"n_bin": 8}) for i in range(6)]
    done = list(concurrent.futures.as_completed(futures, timeout=60))
    assert len(done) == 6
    assert [f.result()[0]["tile"] for f in futures] == [f"t{i % 4}.png" for i in range(6)]


def test_remote_exception_fails_the_task_with_its_last_line(local):
    future = local.submit(["t0.png"], {"nbins": 3})
    with pytest.raises(TaskFailed, match=r"^ValueError: unknown parameter\(s\) nbins") as info:
        future.result(timeout=60)
    assert "Traceback" in info.value.details and "check_params" in info.value.details


def test_engine_refuses_tasks_pickled_with_dill(local):
    from globus_compute_endpoint.engines import GCFuture

    dill = ComputeSerializer()  # the SDK defaults: DillCode + DillDataBase64
    task_id = uuid.uuid4()
    packed = pack_task(task_id, function_code(dill), task_payload(dill, ["t0.png"], None))
    inner = GCFuture(task_id)
    local._engine.submit(inner, packed, resource_specification={})
    from mhd.client.tasks import unpack_result

    with pytest.raises(TaskFailed, match="disabled by current configuration|Allowed serializers"):
        unpack_result(inner.result(timeout=60), dill)


@pytest.mark.slow
def test_no_data_root_means_inline_only_and_env_sets_limits(root):
    with LocalExecutor(workers=1, env={"MHD_MAX_PIXELS": "5000"}) as backend:
        small = {"name": "s", "data": encode(blobs((64, 64)), "PNG")}
        large = {"name": "l", "data": (root / "t0.png").read_bytes()}
        path, ok, too_big = backend.submit(["t0.png", small, large]).result(timeout=60)
    assert "MHD_DATA_ROOT is not set" in path["error"]
    assert ok["error"] is None and ok["features"] >= 0
    assert "above the limit of 5,000" in too_big["error"]
    with pytest.raises(RuntimeError, match="shut down"):
        backend.submit([small])


def test_tiles_must_be_a_list(local):
    with pytest.raises(TypeError, match="tiles must be a list"):
        local.submit("t0.png")


# ------------------------------------------------------------- warm-up


def test_warm_up_tile_scores_without_error():
    from mhd.client.workers import warm_up_tile

    [entry] = score_tiles([warm_up_tile()])
    assert entry["error"] is None and entry["shape"] == [64, 64] and entry["tile"] == "mhd-warm-up"


@pytest.mark.slow
def test_workers_start_and_warm_before_the_first_task(root):
    import time

    with LocalExecutor(data_root=root, workers=2) as backend:
        executor = backend._engine.executor
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (len(executor._processes) == 2 and executor._idle_worker_semaphore._value == 2):
            time.sleep(0.05)
        assert len(executor._processes) == 2  # spawned with no task submitted
        assert executor._idle_worker_semaphore._value == 2  # and idle again: the warm-up ran
        [entry] = backend.submit(["t0.png"]).result(timeout=60)
        assert entry["error"] is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs CPU affinities and 2 CPUs")
def test_workers_share_the_cpus_without_overlap():
    import json
    import subprocess
    import sys

    code = (
        "import json, os\nfrom multiprocessing import Value\nfrom mhd.client.workers import _pin\n"
        "slot, cpus, out = Value('i', 0), os.sched_getaffinity(0), []\n"
        "for _ in range(3):\n    os.sched_setaffinity(0, cpus)\n    _pin(slot, 2)\n    out.append(sorted(os.sched_getaffinity(0)))\n"
        "print(json.dumps(out))"
    )
    first, second, third = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    )
    n = len(os.sched_getaffinity(0))
    assert len(first) == len(second) == n // 2 and not set(first) & set(second)
    assert third == first  # a third worker of two shares the first one's CPUs


def test_the_old_module_name_still_resolves_with_a_deprecation_warning():
    """Notebooks written against 0.1 import mhd.client.backends.LocalBackend: it works until 0.2.0, and says so."""
    import mhd.client.backends as old
    from mhd.client import executors, tasks, workers

    for name, new in old.RENAMED.items():
        home = executors if hasattr(executors, new) else tasks
        with pytest.warns(DeprecationWarning, match=f"{home.__name__}.{new}; the old module goes in 0.2.0"):
            assert getattr(old, name) is getattr(home, new)
    with pytest.warns(DeprecationWarning, match="mhd.client.tasks.retryable"):
        assert old.retryable is tasks.retryable
    with pytest.warns(DeprecationWarning, match="mhd.client.workers.local_engine"):
        assert old.local_engine is workers.local_engine
    with pytest.raises(AttributeError):
        old.NoSuchThing


class SilentEngine:
    """An engine that accepts tasks and never finishes them (a worker stuck in a tile)."""

    def __init__(self):
        self.shutdowns: list[bool] = []

    def submit(self, future, packed, resource_specification, result_serializers):
        pass

    def shutdown(self, block=False):
        self.shutdowns.append(block)


def test_leaving_an_executor_with_tasks_given_up_does_not_wait_for_them(tmp_path):
    """After the pipeline gave up on a task (task_timeout), leaving the executor stops the engine without waiting."""
    from mhd.client.discover import discover
    from mhd.client.executors import EngineExecutor
    from mhd.client.judge import Judge
    from mhd.client.pipeline import Pipeline
    from mhd.client.results import ResultsLog
    from mhd.client.rule import Rule
    from mhd.client.transport import InlineTransport

    (tmp_path / "a.png").write_bytes(encode(blobs((64, 64), 1), "PNG"))
    engine = SilentEngine()
    with ResultsLog(tmp_path) as results:
        with EngineExecutor(engine) as executor:
            Pipeline(executor, InlineTransport(1), Judge(Rule(warmup=1)), results, None, task_timeout=0.3).run(discover(tmp_path).tiles)
        assert "no result within" in results.records["a.png"].error
    assert engine.shutdowns == [False]  # abort(): block=False; it was shutdown(block=True), waiting for ever


class AnswersInsideSubmit:
    """A broken process pool fails a new task at once, inside ``submit``."""

    def submit(self, future, packed, resource_specification, result_serializers):
        future.set_exception(RuntimeError("BrokenProcessPool: a child process terminated abruptly"))

    def shutdown(self, block=False):
        pass


def test_a_task_failed_inside_submit_does_not_deadlock_the_executor():
    import threading

    from mhd.client.executors import EngineExecutor

    outcome = []

    def run():
        with EngineExecutor(AnswersInsideSubmit()) as executor:
            fut = executor.submit([{"name": "a.png", "data": b"x"}])
            outcome.append(fut.exception(timeout=5))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "submit deadlocked on its own lock"
    assert outcome and outcome[0] is not None
