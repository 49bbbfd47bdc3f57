"""The client against Globus, offline.

- ``client register`` and ``client submit`` with the Globus backend through
  the real Compute ``Client``/``Executor`` (``tests/globus_offline.py``:
  HTTP answered by ``responses``, tasks run on a real local endpoint engine).
- The Globus Transfer transport through a real ``TransferClient`` answered
  by ``globus_sdk.testing`` fixtures; the "transfer" copies the files into the
  endpoint's data root when the task succeeds, and the LocalExecutor scores
  them from there by path.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import globus_sdk
import pytest
import responses
from click.testing import CliRunner
from globus_sdk.testing import load_response
from rich.console import Console

from conftest import EXPECTED_OOF, copy_example, read_results
from globus_offline import OfflineCompute
from mhd.client import cli
from mhd.client.config import load
from mhd.client.discover import discover
from mhd.client.executors import LocalExecutor
from mhd.client.judge import Judge
from mhd.client.options import RunOptions
from mhd.client.pipeline import Pipeline
from mhd.client.results import ResultsLog
from mhd.client.rule import Rule
from mhd.client.submit import run_section
from mhd.client.transport import GlobusTransport

SRC, DST = "6c1b8f3a-9a5e-4f0e-8a39-4c9b1f3b1e01", "0b7e0c51-3e0b-4c8c-9d57-3f1a0f6b2a02"


pytestmark = pytest.mark.usefixtures("isolated_config")


@pytest.fixture
def section(tmp_path):
    return copy_example(tmp_path / "instrument" / "section_042")


@pytest.mark.slow
def test_register_then_submit_through_the_globus_executor(section, monkeypatch):
    with OfflineCompute(workers=2) as cloud:
        monkeypatch.setattr(cli, "_compute_client", cloud.client)
        runner = CliRunner()
        reg = runner.invoke(cli.main, ["register", "--endpoint", cloud.endpoint_id])
        assert reg.exit_code == 0, reg.output
        [function_id] = cloud.functions
        assert f"function {function_id}" in reg.output
        stored = json.loads(Path(os.environ["MHD_CONFIG"]).read_text())
        assert stored == {"endpoint": cloud.endpoint_id, "function": function_id}

        out = runner.invoke(cli.main, ["submit", "--dir", str(section)])
    assert out.exit_code == 2, out.output
    assert "executor globus, transport inline" in out.output
    recs = {r["tile"]: r for r in read_results(section)}
    assert len(recs) == 16 and {t for t, r in recs.items() if r["verdict"] == "oof"} == EXPECTED_OOF
    assert cloud.tasks_run == 2 and len(cloud.submissions) >= 1  # 16 tiles, 8 per task
    task_args = [t for body in cloud.submissions for t in body["tasks"][function_id]]
    assert len(task_args) == 2


def test_globus_backend_without_registration_is_a_user_error(section):
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section), "--executor", "globus"])
    assert out.exit_code == 1 and "client register --endpoint" in out.output


class FakeTransferService:
    """get_task answers ACTIVE once, then SUCCEEDED after 'moving' the files."""

    def __init__(self, collections: dict[str, Path]):
        self.collections = collections
        self.polls = 0

    def get_task(self, request):
        self.polls += 1
        submitted = [c for c in responses.calls if c.request.method == "POST" and c.request.url.endswith("/transfer")]
        if self.polls == 1:
            return 200, {}, json.dumps({"task_id": "x", "status": "ACTIVE"})
        for call in submitted:
            body = json.loads(call.request.body)
            for item in body["DATA"]:
                src = self.collections[body["source_endpoint"]] / item["source_path"].lstrip("/")
                dst = self.collections[body["destination_endpoint"]] / item["destination_path"].lstrip("/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        return 200, {}, json.dumps({"task_id": "x", "status": "SUCCEEDED"})


@pytest.mark.slow
@responses.activate
def test_globus_transfer_then_scoring_by_path(tmp_path, section):
    load_response(globus_sdk.TransferClient.get_submission_id)
    load_response(globus_sdk.TransferClient.submit_transfer)
    gpu_root = tmp_path / "gpu"
    service = FakeTransferService({SRC: tmp_path / "instrument", DST: gpu_root})
    responses.add_callback(responses.GET, re.compile(r"https://transfer\.api\.globus\.org/v0\.10/task/[^/]+$"), callback=service.get_task)
    tc = globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("offline"))
    transport = GlobusTransport(
        4,
        tc,
        source_collection=SRC,
        dest_collection=DST,
        source_local=tmp_path / "instrument",
        source_path="/",
        dest_path="/incoming",
        dest_remote="incoming",
        section_name="section_042",
        transfer_batch=16,
        poll=0.05,
    )
    tiles = discover(section).tiles
    with ResultsLog(section) as results, LocalExecutor(data_root=gpu_root, workers=2) as backend:
        seen = []
        Pipeline(backend, transport, Judge(Rule()), results, None, seen.extend, max_inflight=4).run(tiles)
    assert len(seen) == 16 and {r.tile for r in seen if r.verdict == "oof"} == EXPECTED_OOF
    assert all(r.transport == "globus" and r.error is None for r in seen)
    [submit] = [c for c in responses.calls if c.request.url.endswith("/transfer")]
    body = json.loads(submit.request.body)
    assert body["sync_level"] == 3  # "checksum"
    assert body["verify_checksum"] is True and len(body["DATA"]) == 16
    assert body["DATA"][0]["destination_path"] == "/incoming/section_042/tile_r0_c0.png"
    assert body["DATA"][0]["source_path"] == "/section_042/tile_r0_c0.png"
    assert service.polls == 2


@responses.activate
def test_failed_transfer_fails_its_tiles_alone(tmp_path, section):
    load_response(globus_sdk.TransferClient.get_submission_id)
    load_response(globus_sdk.TransferClient.submit_transfer)
    responses.add(
        responses.GET,
        re.compile(r"https://transfer\.api\.globus\.org/v0\.10/task/[^/]+$"),
        json={"status": "FAILED", "nice_status_short_description": "permission denied"},
    )
    tc = globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("offline"))
    transport = GlobusTransport(
        4,
        tc,
        source_collection=SRC,
        dest_collection=DST,
        source_local=section,
        source_path="/data",
        dest_path="/in",
        dest_remote="",
        section_name="s",
        transfer_batch=16,
        poll=0.01,
    )
    staged = [s for s in transport.stage(discover(section).tiles) if s is not None]
    errors = [f.error for s in staged for f in s.failed]
    assert len(errors) == 16 and all("failed: permission denied" in e for e in errors)
    assert sum(len(s.payload) for s in staged) == 0


def test_globus_transport_needs_its_collections_and_the_globus_backend(section):
    cfg = load().override(transport="globus", executor="globus", endpoint="e", function="f")
    with pytest.raises(ValueError, match="source_collection, source_local, dest_collection and dest_path"):
        run_section(section, cfg, Console(file=io.StringIO()), RunOptions(rule=Rule()))
    with pytest.raises(ValueError, match="which the local engine does not see: use --transport auto"):
        run_section(section, load().override(transport="globus"), Console(file=io.StringIO()), RunOptions(rule=Rule()))
