"""The real Globus Compute Executor, end to end offline (see globus_offline.py).

Which functions an endpoint runs is decided by the endpoint's own code on its
shipped configuration: ``security/test_security.py::test_the_endpoint_runs_only_the_registered_function``
(the offline service's own 403 for other functions is a convenience of the
harness, not something to test).
"""

from __future__ import annotations

import importlib.util
import json

import globus_sdk
import pytest
from globus_compute_sdk import Executor
from globus_compute_sdk.errors import TaskExecutionFailed

from conftest import ROOT
from globus_offline import OfflineCompute
from mhd.client.executors import GlobusExecutor
from mhd.client.registration import function_source, register_score_tiles
from mhd.client.tasks import TaskFailed
from tilegen import blobs, encode

SCORE_BY_UUID = ROOT / "examples" / "score_by_uuid.py"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    data = tmp_path_factory.mktemp("root")
    for i in range(3):
        (data / f"t{i}.png").write_bytes(encode(blobs((96, 96), i), "PNG"))
    return data


@pytest.fixture(scope="module")
def cloud(root):
    with OfflineCompute(data_root=root) as service:
        service.function_id = register_score_tiles(service.client())
        yield service


def test_registration_sends_the_source_text(cloud):
    body = json.loads(cloud._mock.calls[0].request.body)
    assert body["function_name"] == "score_tiles" and body["serialized"] is False
    assert body["function_code"] == function_source()
    assert body["description"].startswith("Score electron-microscopy tiles")


@pytest.mark.slow
def test_globus_backend_submits_by_uuid_and_collects_results(cloud):
    with GlobusExecutor(cloud.endpoint_id, cloud.function_id, cloud.client()) as backend:
        futures = [backend.submit([f"t{i}.png", "missing.png"], {"n_bin": 8}) for i in range(3)]
        results = [f.result(timeout=60) for f in futures]
    assert [r[0]["tile"] for r in results] == ["t0.png", "t1.png", "t2.png"]
    assert all(r[0]["features"] > 0 and r[0]["error"] is None for r in results)
    assert all(r[1]["error"] == "missing.png: no such file under the data root" for r in results)
    body = cloud.submissions[-1]
    payload = next(iter(body["tasks"].values()))[0]
    assert "11\n" in payload and "00\n" not in payload  # JSON arguments, no dill
    assert body["result_serializers"] == ["globus_compute_sdk.serialize.concretes.JSONData"]


def test_inline_bytes_travel_as_json(cloud, root):
    raw = (root / "t1.png").read_bytes()
    with GlobusExecutor(cloud.endpoint_id, cloud.function_id, cloud.client()) as backend:
        [entry] = backend.submit([{"name": "t1.png", "data": raw}]).result(timeout=60)
    assert entry["features"] > 0 and entry["tile"] == "t1.png"


def test_remote_error_surfaces_as_a_clear_message(cloud):
    with GlobusExecutor(cloud.endpoint_id, cloud.function_id, cloud.client()) as backend:
        future = backend.submit(["t0.png"], {"threshold": -1})
        with pytest.raises(TaskFailed, match=r"^ValueError: threshold must be a number in \[0, 1000\], got -1$") as info:
            future.result(timeout=60)
    assert isinstance(info.value.__cause__, TaskExecutionFailed)


def test_failed_submission_makes_a_new_executor(cloud):
    backend = GlobusExecutor(cloud.endpoint_id, cloud.function_id, cloud.client())
    try:
        cloud.fail_submits(1, status=403, message="endpoint is offline")
        with pytest.raises(globus_sdk.GlobusAPIError, match="endpoint is offline"):
            backend.submit(["t0.png"]).result(timeout=60)
        [entry] = backend.submit(["t0.png"]).result(timeout=60)
    finally:
        backend.shutdown()
    assert entry["features"] > 0
    assert backend.executors_made == 2


def test_default_dill_executor_is_refused_by_the_endpoint(cloud):
    with Executor(endpoint_id=cloud.endpoint_id, client=cloud.client()) as gce:
        future = gce.submit_to_registered_function(cloud.function_id, args=(["t0.png"],))
        with pytest.raises(TaskExecutionFailed, match="DillDataBase64 disabled by current configuration"):
            future.result(timeout=60)


def test_notebook_example_runs_by_uuid(cloud, root):
    spec = importlib.util.spec_from_file_location("score_by_uuid", SCORE_BY_UUID)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    entries = example.score_by_uuid(
        cloud.endpoint_id, cloud.function_id, ["t2.png", example.inline_tile(str(root / "t2.png"))], client=cloud.client()
    )
    assert entries[0]["features"] == entries[1]["features"] > 0
