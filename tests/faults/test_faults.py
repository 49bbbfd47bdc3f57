"""Faults: lost workers, a killed client, Globus service/result-stream/Transfer failures, a full disk.

Every fault is real where this machine allows it: worker processes are
killed with SIGKILL while computing (their CPU time is seen growing first),
the client is SIGKILLed mid-run, the SDK's own result watcher tries a closed
TCP port, the SDK's own HTTP retry logic meets 503/429 answers, the disk fills
up on a small tmpfs. Where it does not (mounting needs root with
CAP_SYS_ADMIN, which CI's root may lack), the ``injected`` variant, which
always runs, covers the same run: ENOSPC at the ``fsync`` of the results log. Promise checked throughout:
every tile gets exactly one record, the run ends (no hang) with a clear
message, and ``found = scored + failed + skipped`` in the summary.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import globus_sdk
import imageio.v3 as iio
import numpy as np
import psutil
import pytest
import responses
from click.testing import CliRunner
from globus_compute_sdk import Executor
from globus_compute_sdk.sdk import executor as sdk_executor

import mhd.client.results
from conftest import copy_example, isbi_paths
from conftest import read_results as records
from globus_offline import LoopbackResultWatcher, OfflineCompute
from mhd.client import cli
from mhd.client.discover import discover
from mhd.client.executors import EngineExecutor, GlobusExecutor, LocalExecutor
from mhd.client.judge import Judge
from mhd.client.pipeline import Pipeline
from mhd.client.registration import register_score_tiles
from mhd.client.results import ResultsLog, ResultsWriteError
from mhd.client.rule import Rule
from mhd.client.tasks import WorkerLost
from mhd.client.transport import GlobusTransport, InlineTransport
from mhd.contracts.record import TileRecord
from tilegen import encode

SRC, DST = "6c1b8f3a-9a5e-4f0e-8a39-4c9b1f3b1e01", "0b7e0c51-3e0b-4c8c-9d57-3f1a0f6b2a02"
TRANSFER = "https://transfer.api.globus.org/v0.10"


pytestmark = pytest.mark.usefixtures("isolated_config")


# ----------------------------------------------------------------- helpers


def isbi(i: int) -> np.ndarray:
    return iio.imread(isbi_paths()[i])


def write_tiles(folder: Path, n: int, repeat: int = 1, fmt: str = "PNG") -> list[Path]:
    """``n`` tiles of real EM texture, each ISBI slice tiled ``repeat`` x ``repeat`` (512 * repeat px a side)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"tile_{i:02d}.{fmt.lower()}"
        path.write_bytes(encode(np.tile(isbi(i), (repeat, repeat)), fmt))
        paths.append(path)
    return paths


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def busy_process(candidates, timeout: float = 60.0) -> psutil.Process:
    """The first of ``candidates()`` whose CPU time grows by > 30 ms within 50 ms (it is computing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = list(candidates())
        before = {}
        for p in procs:
            with _gone_ok():
                before[p.pid] = cpu_seconds(p)
        time.sleep(0.05)
        for p in procs:
            with _gone_ok():
                if p.pid in before and cpu_seconds(p) - before[p.pid] > 0.03:
                    return p
    raise AssertionError("no worker process was computing")


class _gone_ok:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        return exc_type is not None and issubclass(exc_type, psutil.Error)


def pool_workers() -> list[psutil.Process]:
    """The process-pool workers of this test process (LocalExecutor spawns them); one that exits while they are
    listed is left out."""
    procs = []
    for child in multiprocessing.active_children():
        with _gone_ok():
            procs.append(psutil.Process(child.pid))
    return procs


def accounting_line(found: int, scored: int, failed: int, skipped: int) -> str:
    return f"{found} files found = {scored} scored + {failed} failed + {skipped} skipped (not tiles)"


# -------------------------------------------------------------- lost workers


@pytest.mark.slow
def test_worker_killed_mid_task_is_resubmitted_and_each_tile_recorded_once(tmp_path, monkeypatch):
    section = tmp_path / "section"
    write_tiles(section, 8, repeat=3, fmt="TIFF")  # 1536 x 1536: ~0.3 s of detector each
    monkeypatch.setenv("MHD_WARMUP", "2")
    monkeypatch.setenv("MHD_TRANSPORT", "shared")
    monkeypatch.setenv("MHD_SHARED_LOCAL", str(section))
    killed: list[int] = []

    def kill_a_busy_worker() -> None:
        results = section / "mhd-results.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (results.exists() and results.read_bytes().count(b"\n") >= 2):
            time.sleep(0.02)  # workers are warm once verdicts come
        victim = busy_process(pool_workers)
        killed.append(victim.pid)
        victim.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section), "--workers", "2", "--batch", "1"])
    killer.join(10)
    assert killed, "the killer never found a busy worker"
    assert out.exit_code in (0, 2), out.output  # no tile failed
    recs = records(section)
    assert len(recs) == len({r["tile"] for r in recs}) == 8  # each verdict recorded once
    assert all(r["error"] is None and r["features"] > 0 for r in recs)
    log = (section / "mhd-client.log").read_text()
    assert "worker process lost (killed or crashed) while scoring; submitting its 1 tile(s) again (attempt 2 of 3)" in log
    assert "restarting the local engine" in log
    assert "Traceback" not in out.output
    assert accounting_line(8, 8, 0, 0) in out.output


@pytest.mark.slow
def test_a_worker_lost_on_every_attempt_fails_its_tiles_after_the_retries_then_the_backend_recovers(tmp_path):
    section = tmp_path / "section"
    write_tiles(section, 2)
    tiles = discover(section).tiles
    stop = threading.Event()

    def kill_every_worker() -> None:
        while not stop.is_set():
            for p in multiprocessing.active_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
            time.sleep(0.01)

    seen: list[TileRecord] = []
    killer = threading.Thread(target=kill_every_worker, daemon=True)
    with ResultsLog(section) as results, LocalExecutor(workers=1) as backend:
        killer.start()
        t0 = time.monotonic()
        try:
            Pipeline(backend, InlineTransport(2), Judge(Rule(warmup=1)), results, None, seen.extend, retries=1).run(tiles)
        finally:
            stop.set()
            killer.join()
        elapsed = time.monotonic() - t0
        restarts = backend.restarts
        [entry] = backend.submit([{"name": "after.png", "data": tiles[0].path.read_bytes()}]).result(timeout=60)
    assert [r.tile for r in seen] == [t.id for t in tiles]
    for rec in seen:
        assert rec.verdict == "error"
        assert rec.error == f"{rec.tile}: worker process lost (killed or crashed) while scoring (after 2 attempts); retried on the next run"
    assert restarts == 2 and elapsed < 60  # each tile resubmitted alone once (a lost worker's tiles), then given up: bounded
    assert entry["error"] is None and entry["features"] > 0  # a fresh engine once the killing stops


@pytest.mark.slow
def test_endpoint_engine_retries_a_task_whose_worker_was_killed(tmp_path):
    """The shipped endpoint config's GlobusComputeEngine (max_retries_on_system_failure) retries by itself.

    Parsl's manager looks for dead workers every ``heartbeat_period`` (30 s by
    default); the test shortens it to 1 s so that it runs in CI time.
    """
    from mhd.endpoint import EndpointSpec, install_endpoint, validate_dir

    data = tmp_path / "data"
    data.mkdir()
    (data / "big.png").write_bytes(encode(np.tile(isbi(0), (4, 4)), "PNG"))
    (data / "small.png").write_bytes(encode(isbi(1)[:128, :128], "PNG"))
    directory = install_endpoint(
        EndpointSpec(gpus=1, env=sys.prefix, data_root=str(data), function_ids=(str(uuid.uuid4()),)), home=tmp_path
    )
    engine = validate_dir(directory)[1].engine  # the user endpoint process's engine
    assert engine.max_retries_on_system_failure == 2
    engine.executor.heartbeat_period = 1
    run_dir = tmp_path / "run"
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(run_dir))

    def endpoint_processes():
        roots = [p for p in psutil.process_iter(["cmdline"]) if any(str(run_dir) in a for a in p.info["cmdline"] or [])]
        return {c for r in roots for c in (r, *r.children(recursive=True))}

    backend = EngineExecutor(engine)
    try:
        backend.submit(["small.png"]).result(timeout=120)  # a warm worker
        future = backend.submit(["big.png"] * 3)
        victim = busy_process(endpoint_processes)
        assert not future.done()
        victim.send_signal(signal.SIGKILL)
        entries = future.result(timeout=120)
    finally:
        backend.shutdown()
    assert [e["error"] for e in entries] == [None] * 3
    assert len({e["features"] for e in entries}) == 1 and entries[0]["features"] > 0


@pytest.mark.slow
def test_killed_client_leaves_no_worker_behind(tmp_path):
    """A SIGKILLed client cannot stop its pool: its workers notice and exit (resuming is tested in commands/test_submit_command.py)."""
    section = tmp_path / "big"
    for sub in "abc":
        copy_example(section / sub, readme=False)
    cmd = [sys.executable, "-m", "mhd.client", "submit", "--dir", str(section), "--batch", "1", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MHD_WARMUP": "4"})
    results = section / "mhd-results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (results.exists() and results.read_bytes().count(b"\n") >= 6):
        time.sleep(0.01)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert proc.poll() is None and len(children) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    for p in alive:  # do not leak them if the test fails
        p.kill()
    assert alive == [], f"orphaned worker processes: {[p.pid for p in alive]}"
    assert 6 <= len(records(section)) < 48


# ------------------------------------------------------------------- globus


class SlowService(OfflineCompute):
    """The offline service, answering submit requests after ``delay`` seconds."""

    delay = 0.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.submitting = threading.Event()  # set when a submit request arrives

    def _submit(self, request):
        self.submitting.set()
        time.sleep(self.delay)
        return super()._submit(request)


@pytest.fixture(scope="module")
def cloud():
    with SlowService(workers=2) as service:
        service.function_id = register_score_tiles(service.client())
        yield service


def retrying_client(cloud, retries: int = 3):
    """The harness's Compute client with the SDK's HTTP retries on (fast backoff)."""
    client = cloud.client()
    config = client._compute_web_client.v3.retry_config
    config.max_retries = retries
    config.backoff = lambda ctx: 0.01
    return client


def test_transient_http_errors_are_retried_with_backoff_then_on_a_new_executor(cloud, tmp_path, caplog):
    section = tmp_path / "section"
    write_tiles(section, 4)
    tiles = discover(section).tiles
    inline = [{"name": t.id, "data": t.path.read_bytes()} for t in tiles]

    with GlobusExecutor(cloud.endpoint_id, cloud.function_id, retrying_client(cloud)) as backend:
        cloud.fail_submits(2, status=503, message="Service Unavailable")
        cloud.fail_submits(1, status=429, message="Too Many Requests")
        sent = len(cloud.submissions)
        entries = backend.submit(inline).result(timeout=60)  # the SDK's own retries absorb 3 failures
        assert len(cloud.submissions) - sent == 4 and backend.executors_made == 1
    assert all(e["error"] is None for e in entries)

    seen: list[TileRecord] = []
    with ResultsLog(section) as results, GlobusExecutor(cloud.endpoint_id, cloud.function_id, retrying_client(cloud)) as backend:
        cloud.fail_submits(4, status=502, message="Bad Gateway")  # more than the SDK retries
        with caplog.at_level(logging.WARNING, logger="mhd"):
            Pipeline(backend, InlineTransport(4), Judge(Rule(warmup=1)), results, None, seen.extend).run(tiles)
        made = backend.executors_made
    assert made == 2  # the failed executor refuses work: a new one took the resubmission
    assert "Globus Compute refused the task (HTTP 502): Bad Gateway; submitting its 4 tile(s) again (attempt 2 of 3)" in caplog.text
    assert sorted(r.tile for r in seen) == [t.id for t in tiles]
    assert all(r.error is None for r in seen) and len(records(section)) == 4
    assert [r.features for r in sorted(seen, key=lambda r: r.tile)] == [e["features"] for e in entries]


def test_a_refusal_that_is_not_transient_is_recorded_at_once(cloud, tmp_path):
    section = tmp_path / "section"
    write_tiles(section, 2)
    seen: list[TileRecord] = []
    with ResultsLog(section) as results, GlobusExecutor(cloud.endpoint_id, cloud.function_id, retrying_client(cloud)) as backend:
        cloud.fail_submits(1, status=403, message="Function not permitted on endpoint")
        Pipeline(backend, InlineTransport(2), Judge(Rule(warmup=1)), results, None, seen.extend).run(discover(section).tiles)
        made = backend.executors_made
    assert made == 1  # not resubmitted
    assert [r.error for r in seen] == [
        f"{t}: Globus Compute refused the task (HTTP 403): Function not permitted on endpoint" for t in ("tile_00.png", "tile_01.png")
    ]


def test_a_task_queued_behind_a_failed_submission_is_not_left_hanging(cloud, tmp_path):
    """The SDK cancels tasks still queued in an executor whose submission failed; their futures must end too."""
    raw = encode(isbi(0)[:128, :128], "PNG")
    client = retrying_client(cloud, retries=0)
    backend = GlobusExecutor(cloud.endpoint_id, cloud.function_id, client)
    cloud.delay = 0.5
    cloud.fail_submits(1, status=500, message="Internal Server Error")
    try:
        cloud.submitting.clear()
        first = backend.submit([{"name": "a.png", "data": raw}])
        assert cloud.submitting.wait(30), "the first task was never sent"
        # the first request is on the wire (answered after cloud.delay); this one waits in the executor's queue
        second = backend.submit([{"name": "b.png", "data": raw}])
        done, pending = cf.wait([first, second], timeout=30)
        cloud.delay = 0.0
        [entry] = backend.submit([{"name": "c.png", "data": raw}]).result(timeout=60)
    finally:
        cloud.delay = 0.0
        backend.shutdown(wait=False)
    assert pending == set()
    assert isinstance(first.exception(), globus_sdk.GlobusAPIError) and first.exception().http_status == 500
    assert str(second.exception()) == "the executor stopped before sending this task (an earlier submission failed)"
    assert entry["error"] is None and backend.executors_made == 2


class SilentEndpoint(LoopbackResultWatcher):
    """Tasks are accepted by the service but no result ever comes (the endpoint is down)."""

    def watch_for_task_results(self, executor, futures):
        return super(LoopbackResultWatcher, self).watch_for_task_results(executor, futures)


def test_tasks_without_a_result_are_given_up_after_the_task_timeout(cloud, tmp_path, monkeypatch):
    section = tmp_path / "section"
    write_tiles(section, 3)
    monkeypatch.setattr(Executor, "_default_task_group_id", None)  # a fresh task group: a watcher of its own
    seen: list[TileRecord] = []
    sdk_executor._ResultWatcher = SilentEndpoint
    try:
        with ResultsLog(section) as results:
            with GlobusExecutor(cloud.endpoint_id, cloud.function_id, cloud.client()) as backend:  # as RunSession.drive
                t0 = time.monotonic()
                Pipeline(backend, InlineTransport(2), Judge(Rule(warmup=1)), results, None, seen.extend, task_timeout=1.0).run(
                    discover(section).tiles
                )
                elapsed = time.monotonic() - t0
                group = backend._executor.task_group_id
                t1 = time.monotonic()
            leaving = time.monotonic() - t1  # it waited forever for the results given up on
    finally:
        sdk_executor._ResultWatcher = LoopbackResultWatcher
    assert 1.0 <= elapsed < 10 and leaving < 5
    # nothing is left for the SDK's exit hook to wait on (its watcher's stopping thread is no daemon)
    assert group not in sdk_executor._RESULT_WATCHERS
    assert [r.error for r in seen] == [
        f"tile_{i:02d}.png: no result within 1 s (is the endpoint running?); retried on the next run" for i in range(3)
    ]
    assert len(records(section)) == 3


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnreachableResultStream(sdk_executor._ResultWatcher):  # the SDK's own (no harness is active at import)
    """The SDK's AMQP result watcher, giving up after one connection attempt (the default is 5, 0.5-10 s apart).

    The refusal is reported after 0.5 s, as a real attempt takes: a watcher that gives up within a
    millisecond of starting can do so before the SDK's submitter thread has handed it the futures
    (globus-compute-sdk 4.x registers them after ``start()``); those futures would then never be
    resolved, a race of the SDK's that a real (slower) connection attempt does not meet.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "connect_attempt_limit": 1})

    def _on_open_failed(self, *args, **kwargs):
        time.sleep(0.5)
        return super()._on_open_failed(*args, **kwargs)


@pytest.mark.slow
def test_unreachable_result_stream_records_errors_that_the_next_run_retries(cloud, tmp_path, monkeypatch):
    section = tmp_path / "section"
    copy_example(section)
    monkeypatch.setenv("MHD_ENDPOINT", cloud.endpoint_id)
    monkeypatch.setenv("MHD_FUNCTION", cloud.function_id)
    monkeypatch.setattr(cli, "_compute_client", cloud.client)
    # a fresh client process: no task group yet, so no result watcher already connected
    monkeypatch.setattr(Executor, "_default_task_group_id", None)
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    amqp = cloud._mock.add(
        responses.GET,
        re.compile(r"https://[^/]+/v2/get_amqp_result_connection_url$"),
        json={"queue_prefix": "mhd-test", "connection_url": url},
    )
    sdk_executor._ResultWatcher = UnreachableResultStream
    try:
        t0 = time.monotonic()
        out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])
        elapsed = time.monotonic() - t0
    finally:
        sdk_executor._ResultWatcher = LoopbackResultWatcher
        cloud._mock.remove(amqp)
    assert out.exit_code == 1, out.output
    assert elapsed < 60  # it ends: no hang
    recs = records(section)
    assert len(recs) == 16 and all(r["verdict"] == "error" for r in recs)
    tail = "no result: the result stream (AMQP) is unreachable (AMQPConnectionError) (after 3 attempts); retried on the next run"
    assert all(r["error"] == f"{r['tile']}: {tail}" for r in recs)
    assert "Traceback" not in out.output
    assert accounting_line(17, 0, 16, 1) in out.output

    again = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])
    assert again.exit_code == 2, again.output  # the example's out-of-focus tiles; no errors left
    assert "16 already recorded, 16 to score" in again.output
    assert len(records(section)) == 16 and all(r["verdict"] != "error" for r in records(section))
    assert accounting_line(17, 16, 0, 1) in again.output


class TransferService:
    """Transfer API answers: the first task succeeds (files copied), later ones stay ACTIVE."""

    def __init__(self, mock: responses.RequestsMock, collections: dict[str, Path]):
        self.collections = collections
        self.tasks: dict[str, dict] = {}
        self.cancelled: list[str] = []
        routes = [
            (responses.GET, TRANSFER + "/submission_id", self.submission_id),
            (responses.POST, TRANSFER + "/transfer", self.submit),
            (responses.GET, re.compile(re.escape(TRANSFER) + r"/task/([^/]+)$"), self.get_task),
            (responses.POST, re.compile(re.escape(TRANSFER) + r"/task/([^/]+)/cancel$"), self.cancel),
        ]
        self.registered = [mock.add_callback(method, url, callback=fn) for method, url, fn in routes]

    @staticmethod
    def _task_id(request) -> str:
        return request.url.rstrip("/").split("/task/")[1].split("/")[0]

    def submission_id(self, request):
        return 200, {}, json.dumps({"value": str(uuid.uuid4())})

    def submit(self, request):
        task_id = str(uuid.uuid4())
        self.tasks[task_id] = json.loads(request.body)
        return 202, {}, json.dumps({"code": "Accepted", "task_id": task_id, "submission_id": "x"})

    def get_task(self, request):
        task_id = self._task_id(request)
        if task_id != next(iter(self.tasks)):
            return 200, {}, json.dumps({"task_id": task_id, "status": "ACTIVE", "nice_status": "Queued"})
        body = self.tasks[task_id]
        for item in body["DATA"]:
            dst = self.collections[body["destination_endpoint"]] / item["destination_path"].lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.collections[body["source_endpoint"]] / item["source_path"].lstrip("/"), dst)
        return 200, {}, json.dumps({"task_id": task_id, "status": "SUCCEEDED"})

    def cancel(self, request):
        self.cancelled.append(self._task_id(request))
        return 200, {}, json.dumps({"code": "Canceled", "message": "The task has been cancelled."})


@pytest.mark.slow
def test_stalled_transfer_is_cancelled_at_its_deadline_and_the_summary_accounts_for_every_file(tmp_path, monkeypatch):
    instrument, gpu = tmp_path / "instrument", tmp_path / "gpu"
    section = instrument / "section_042"
    copy_example(section)
    with OfflineCompute(data_root=gpu, workers=2) as service:
        function_id = register_score_tiles(service.client())
        transfer = TransferService(service._mock, {SRC: instrument, DST: gpu})
        tc = globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("offline"))
        settings = {
            "BACKEND": "globus",
            "ENDPOINT": service.endpoint_id,
            "FUNCTION": function_id,
            "TRANSPORT": "globus",
            "SOURCE_COLLECTION": SRC,
            "SOURCE_LOCAL": str(instrument),
            "SOURCE_PATH": "/",
            "DEST_COLLECTION": DST,
            "DEST_PATH": "/incoming",
            "DEST_REMOTE": "incoming",
            "TRANSFER_BATCH": "8",
            "TRANSFER_TIMEOUT": "1",
        }
        for key, value in settings.items():
            monkeypatch.setenv(f"MHD_{key}", value)
        monkeypatch.setattr(cli, "_compute_client", service.client)
        monkeypatch.setattr(cli, "_transfer_client", lambda ids: tc)
        out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])
    assert out.exit_code == 1, out.output
    first, stalled = transfer.tasks
    assert transfer.cancelled == [stalled]
    recs = {r["tile"]: r for r in records(section)}
    moved = {Path(i["source_path"]).name for i in transfer.tasks[first]["DATA"]}
    assert len(recs) == 16 and len(moved) == 8
    for tile, rec in recs.items():
        if tile in moved:
            assert rec["error"] is None and rec["transport"] == "globus", rec
        else:
            assert rec["error"] == f"{tile}: Globus Transfer task {stalled} did not finish within 1 s (status ACTIVE); cancelled"
    assert accounting_line(17, 8, 8, 1) in out.output
    assert "Traceback" not in out.output


def test_transfer_status_unknown_until_the_deadline_fails_its_tiles(tmp_path):
    section = tmp_path / "section"
    write_tiles(section, 3)
    with responses.RequestsMock() as mock:
        mock.add(responses.GET, TRANSFER + "/submission_id", json={"value": "s"})
        mock.add(responses.POST, TRANSFER + "/transfer", json={"task_id": "t-1", "code": "Accepted"}, status=202)
        mock.add(responses.GET, TRANSFER + "/task/t-1", json={"code": "ServiceUnavailable", "message": "down"}, status=503)
        cancel = mock.add(responses.POST, TRANSFER + "/task/t-1/cancel", json={"code": "Canceled"})
        tc = globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("offline"))
        tc.retry_config.max_retries = 0
        transport = GlobusTransport(
            2,
            tc,
            source_collection=SRC,
            dest_collection=DST,
            source_local=tmp_path,
            source_path="/",
            dest_path="/in",
            dest_remote="",
            section_name="s",
            poll=0.05,
            deadline=0.3,
        )
        t0 = time.monotonic()
        staged = []
        for batch in transport.stage(discover(section).tiles):
            if batch is None:
                time.sleep(transport.poll)  # what the pipeline does while a transfer runs
            else:
                staged.append(batch)
        elapsed = time.monotonic() - t0
        assert cancel.call_count == 1
    errors = [f.error for s in staged for f in s.failed]
    assert errors == [
        f"tile_{i:02d}.png: Globus Transfer task t-1 did not finish within 0.3 s (status unknown); cancelled" for i in range(3)
    ]
    assert 0.3 <= elapsed < 5


# ---------------------------------------------------------------- disk full


def test_disk_full_at_fsync_keeps_every_earlier_record(tmp_path, monkeypatch):
    log = ResultsLog(tmp_path)
    log.extend(TileRecord(t, verdict="ok") for t in ("a.png", "b.png"))
    intact = (tmp_path / "mhd-results.jsonl").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mhd.client.results.os, "fsync", full)
    with pytest.raises(
        ResultsWriteError, match=r"cannot record the verdict of c\.png: No space left on device\. The 2 records written before are intact"
    ):
        log.append(TileRecord("c.png", verdict="ok"))
    assert (tmp_path / "mhd-results.jsonl").read_bytes() == intact  # the unsynced line was cut off
    assert set(log.records) == {"a.png", "b.png"}
    monkeypatch.undo()
    log.append(TileRecord("c.png", verdict="ok"))
    log.close()
    assert [r["tile"] for r in records(tmp_path)] == ["a.png", "b.png", "c.png"]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root with CAP_SYS_ADMIN only); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    covered = (
        "the 'injected' variant covers the same full disk (ENOSPC at the results log's fsync, no privilege needed), "
        "test_results_durable.py a write the kernel refuses (file-size limit)"
    )
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip(f"mounting a tmpfs needs root with CAP_SYS_ADMIN; {covered}")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); {covered}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int) -> Path:
    """Fill the file system with one file, leaving about ``leave`` bytes free."""
    st = os.statvfs(mount)
    filler = mount / "filler.bin"
    with filler.open("wb") as fh:
        fh.write(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("how", ["injected", "tmpfs"])
def test_disk_full_mid_run_stops_clearly_and_loses_no_recorded_verdict(how, tmp_path, request, monkeypatch):
    if how == "tmpfs":
        disk = request.getfixturevalue("small_disk")
        section = disk / "section_042"
        copy_example(section)
        filler = fill(disk, leave=8192)  # two pages: the rule choice (mhd-rule.json), and room for a few records
    else:
        section = tmp_path / "section_042"
        copy_example(section)
        calls = iter(range(10**6))
        real_fsync = os.fsync

        def fsync_until_full(fd):
            if next(calls) >= 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(mhd.client.results.os, "fsync", fsync_until_full)
    monkeypatch.setenv("MHD_WORKERS", "2")
    runner = CliRunner()
    out = runner.invoke(cli.main, ["submit", "--dir", str(section)])
    assert out.exit_code == 1, out.output
    assert "No space left on device" in out.output and "records written before are intact" in out.output
    assert "Traceback" not in out.output
    kept = (section / "mhd-results.jsonl").read_bytes()
    assert kept.endswith(b"\n")  # no torn line
    before = [json.loads(x) for x in kept.splitlines()]
    assert 1 <= len(before) < 16 and len({r["tile"] for r in before}) == len(before)
    if how == "tmpfs":
        filler.unlink()
    else:
        monkeypatch.setattr(mhd.client.results.os, "fsync", real_fsync)
    again = runner.invoke(cli.main, ["submit", "--dir", str(section)])
    assert again.exit_code == 2, again.output
    assert f"{len(before)} already recorded, {16 - len(before)} to score" in again.output
    after = records(section)
    assert len(after) == 16 and after[: len(before)] == before


class CrashingPool:
    """Like a process pool: a task holding a poison tile kills its worker, and every task in flight fails with it."""

    name = "pool"

    def __init__(self):
        self.live: list = []
        self.lock = threading.Lock()
        self.crashes: list[list[str]] = []  # the tiles of the tasks each crash took down

    def submit(self, tiles, params=None):
        fut = cf.Future()
        fut.set_running_or_notify_cancel()
        with self.lock:
            self.live.append((tiles, fut))
        threading.Timer(0.8 if "poison.png" in tiles else 0.05, self.finish).start()  # it dies after the pipeline's tick
        return fut

    def finish(self):
        with self.lock:
            live, self.live = self.live, []
        crash = any("poison.png" in tiles for tiles, _ in live)
        if crash:
            self.crashes.append(sorted(t for tiles, _ in live for t in tiles))
        for tiles, fut in live:
            if crash:
                fut.set_exception(WorkerLost("worker lost", "BrokenProcessPool"))
            else:
                fut.set_result([{"tile": t, "features": 5, "density": 50.0, "blur": 1.0, "error": None, "contrast": 50.0} for t in tiles])


def test_a_tile_that_kills_its_worker_fails_alone(tmp_path):
    """The tiles in flight beside it were recorded as errors 'after 3 attempts': after a lost worker each tile of the
    lost tasks is tried alone, with nothing else in flight."""
    from mhd.client.discover import Tile
    from mhd.client.transport import DiskTransport

    names = ["innocent.png", "bystander.png", "other.png", "poison.png"] + [f"later_{i}.png" for i in range(4)]  # poison tried last
    tiles = []
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        tiles.append(Tile(name, tmp_path / name, 1, 0))
    with ResultsLog(tmp_path) as results:
        pool = CrashingPool()
        Pipeline(pool, DiskTransport(2, tmp_path), Judge(Rule(warmup=1)), results, None, max_inflight=2, task_timeout=30).run(tiles)
        verdicts = {t: r.verdict for t, r in results.records.items()}
        reason = results.records["poison.png"].reason
    assert verdicts["poison.png"] == "error" and "after 3 attempts" in reason
    assert len(verdicts) == len(names) and all(verdicts[n] != "error" for n in names if n != "poison.png"), verdicts
    assert pool.crashes[1:] == [["poison.png"]] * 2  # after the first crash it never had company, not even when tried last


# ------------------------------------------------------ what executors return


class ScriptedExecutor:
    """Answers each task at once with what ``answer(names)`` returns (the tiles' payload names in, a result list out)."""

    name = "scripted"

    def __init__(self, answer):
        self.answer = answer
        self.tasks: list[list[str]] = []

    def submit(self, tiles, params=None):
        names = [t["name"] if isinstance(t, dict) else t for t in tiles]
        self.tasks.append(names)
        fut = cf.Future()
        fut.set_result(self.answer(names))
        return fut


def scored(name: str) -> dict:
    return {"tile": name, "features": 900, "density": 13733.0, "blur": 1.0, "error": None, "contrast": 50.0}


def test_tiles_an_executor_returned_no_result_for_are_recorded_as_errors_naming_them(tmp_path):
    """Nothing lost: a task whose answer leaves tiles out (a worker that skipped one, a result list cut short, an
    entry that is no result, an answer that is no list) still gets one record per tile, an error naming it."""
    section = tmp_path / "section"
    names = [f"tile_{i:02d}.png" for i in range(9)]
    section.mkdir()
    for name in names:
        (section / name).write_bytes(b"x")  # never decoded: the executor answers

    def answer(batch):
        if "tile_06.png" in batch:
            return {"not": "a list"}  # every tile of this task is missing
        return [scored(batch[0]), scored(batch[0]), "garbage", {"no": "tile"}]  # the first tile only (twice)

    seen: list[TileRecord] = []
    executor = ScriptedExecutor(answer)
    with ResultsLog(section) as results:
        Pipeline(executor, InlineTransport(3), Judge(Rule(warmup=1)), results, None, seen.extend).run(discover(section).tiles)
    assert [len(task) for task in executor.tasks] == [3, 3, 3]
    answered = {task[0] for task in executor.tasks if "tile_06.png" not in task}
    lines = records(section)
    assert sorted(r["tile"] for r in lines) == names  # each tile once, in the log
    for rec in lines:
        if rec["tile"] in answered:
            assert rec["verdict"] != "error" and rec["error"] is None, rec
        else:
            assert rec["verdict"] == "error" and rec["error"] == f"{rec['tile']}: no result returned for this tile", rec
    assert sorted(r.tile for r in seen) == names
    assert len(answered) == 2


class NeverAnswers:
    """Accepts tasks and never completes them (an endpoint that is down)."""

    name = "silent"

    def submit(self, tiles, params=None):
        fut = cf.Future()
        fut.set_running_or_notify_cancel()
        return fut


class AnswersAfter:
    """Completes each task after ``delay`` seconds (a slow, working endpoint)."""

    name = "slow"

    def __init__(self, delay: float):
        self.delay = delay

    def submit(self, tiles, params=None):
        fut = cf.Future()
        fut.set_running_or_notify_cancel()
        names = [t["name"] if isinstance(t, dict) else t for t in tiles]
        threading.Timer(self.delay, fut.set_result, [[scored(n) for n in names]]).start()
        return fut


def test_task_timeout_is_in_seconds(tmp_path):
    """``task_timeout`` counts seconds: a task without a result is given up soon after it (not after 1000 times
    as long: the run would hang), and a task that answers well within it is not given up (not a thousandth of it)."""
    section = tmp_path / "section"
    section.mkdir()
    (section / "a.png").write_bytes(b"x")
    deadline = time.monotonic() + 30  # the run is stopped here when the timeout is not honoured, instead of hanging
    seen: list[TileRecord] = []
    with ResultsLog(section) as results:
        pipe = Pipeline(
            NeverAnswers(),
            InlineTransport(1),
            Judge(Rule(warmup=1)),
            results,
            None,
            seen.extend,
            task_timeout=0.3,
            stop=lambda: time.monotonic() > deadline,
        )
        t0 = time.monotonic()
        try:
            pipe.run(discover(section).tiles, tick=0.05)
        except KeyboardInterrupt:
            pytest.fail("no task was given up within 30 s with task_timeout=0.3")
        elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 30
    assert [r.error for r in seen] == ["a.png: no result within 0.3 s (is the endpoint running?); retried on the next run"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "b.png").write_bytes(b"x")
    with ResultsLog(other) as results:
        Pipeline(AnswersAfter(0.5), InlineTransport(1), Judge(Rule(warmup=1)), results, None, task_timeout=20).run(
            discover(other).tiles, tick=0.05
        )
        rec = results.records["b.png"]
    assert rec.error is None and rec.verdict == "ok" and rec.roundtrip_ms >= 500
