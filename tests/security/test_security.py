"""Security of the deployed path: confinement, limits, allowed functions, tokens, and output no tile name can forge.

``unit/test_scoring.py`` checks each confinement rule of ``score_tiles`` in this
process (and that refused paths are never opened); here the same hostile
task goes through the function as deployed (rebuilt from its source text in
a spawned endpoint worker), with the limits set the way an administrator sets
them (worker environment). The endpoint's own code decides
``allowed_functions`` on the shipped configuration, and a fake token is
followed through ``client register`` and ``client submit`` with every log on.
A tile named to look like a verdict line stays one escaped field of one line.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from globus_compute_endpoint.endpoint.interchange import EndpointInterchange
from globus_compute_endpoint.endpoint.result_store import ResultStore
from globus_sdk.token_storage import TokenStorageData

from conftest import copy_example, read_results
from globus_offline import OfflineCompute
from mhd.client import auth, cli
from mhd.client.executors import LocalExecutor
from mhd.client.tasks import TaskFailed
from mhd.endpoint import EndpointSpec, install_endpoint, validate_dir
from mhd.functions.worker.remote import score_tiles
from mhd.functions.worker.tileio import MAX_TIFF_PAGES
from tilegen import blobs, encode, png_header_only

FID = "4b116d3c-1703-4f8f-9f6f-39921e5864df"
SECRET = "FAKE-ACCESS-TOKEN-7c1e9b2d-never-print-me"
REFRESH = "FAKE-REFRESH-TOKEN-0d4f8a61-never-print-me"


pytestmark = pytest.mark.usefixtures("isolated_config")


# ------------------------------------------------------------ confinement


@pytest.fixture
def hostile_root(tmp_path):
    """A data root with one good tile, and a valid secret image just outside it."""
    root = tmp_path / "root"
    (root / "sec").mkdir(parents=True)
    (root / "sec" / "good.png").write_bytes(encode(blobs((96, 96), 1), "PNG"))
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode(blobs((96, 96), 2), "PNG"))
    (root / "sec" / "link_out.png").symlink_to(secret)
    (tmp_path / "root2").mkdir()  # a sibling whose name starts with the root's: outside all the same
    (tmp_path / "root2" / "secret.png").write_bytes(secret.read_bytes())
    (root / "sibling.png").symlink_to(tmp_path / "root2" / "secret.png")
    (root / "outdir").symlink_to(tmp_path)
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "alias_in.png").symlink_to(root / "sec" / "good.png")
    os.mkfifo(root / "fifo.png")
    return root, secret


@pytest.mark.slow
def test_hostile_paths_are_refused_by_the_deployed_function(hostile_root):
    root, secret = hostile_root
    refused = {
        "../secret.png": "'..' in a path is refused",
        "sec/../../secret.png": "'..' in a path is refused",
        "sec/./../../../../../etc/passwd": "'..' in a path is refused",
        str(secret): "absolute paths are refused",
        str(root / "sec" / "good.png"): "absolute paths are refused",
        "/proc/self/environ": "absolute paths are refused",
        "sec/link_out.png": "resolves outside the data root",
        "outdir/secret.png": "resolves outside the data root",
        "sibling.png": "resolves outside the data root",
        "loop.png": "cannot open: Too many levels of symbolic links",
        "fifo.png": "not a regular file",
        "sec": "not a regular file",
        "~/secret.png": "no such file under the data root",
        "sec\\..\\..\\secret.png": "no such file under the data root",
        "x" * 4000: "cannot open: File name too long",
        "x/" * 400_000 + "ok.png": "path longer than 4096 characters",  # refused before resolving it (took 24 s)
        "a\x00b": "NUL byte",
    }
    with LocalExecutor(data_root=root, workers=1) as backend:
        entries = backend.submit([*refused, "sec/good.png", "alias_in.png"]).result(timeout=60)
    for entry, (path, message) in zip(entries, refused.items()):
        assert entry["features"] is None and message in entry["error"], (path, entry["error"])
        assert str(secret.parent) not in entry["error"].replace(path, "")  # nothing but the caller's own path
    good, alias = entries[-2:]
    assert good["error"] is None and alias["features"] == good["features"] > 0  # links inside the root are fine


@pytest.mark.slow
def test_limits_set_by_the_administrator_hold_on_the_deployed_function():
    small = encode(blobs((64, 64), 3), "PNG")  # 4,096 pixels
    env = {"MHD_MAX_PIXELS": "5000", "MHD_MAX_INLINE_BYTES": str(len(small)), "MHD_MAX_TILES": "3"}
    with LocalExecutor(workers=1, env=env) as backend:
        ok, too_many_pixels, too_many_bytes = backend.submit(
            [
                {"name": "ok.png", "data": small},
                {"name": "bomb.png", "data": png_header_only(100, 100)},
                {"name": "big.png", "data": small + b"\0"},
            ]
        ).result(timeout=60)
        with pytest.raises(TaskFailed, match=r"^ValueError: 4 tiles in one task, above the limit of 3 \(MHD_MAX_TILES\)"):
            backend.submit([{"name": "ok.png", "data": small}] * 4).result(timeout=60)
        with pytest.raises(TaskFailed, match=r"block_size must be an integer in \[64, 8192\]"):
            backend.submit([{"name": "ok.png", "data": small}], {"block_size": 10**6}).result(timeout=60)
    assert ok["error"] is None and ok["features"] > 0
    assert too_many_pixels["error"] == "bomb.png: image is 100 x 100 = 10,000 pixels, above the limit of 5,000 (MHD_MAX_PIXELS)"
    assert (
        too_many_bytes["error"]
        == f"big.png: inline tile is {len(small) + 1:,} bytes, above the limit of {len(small):,} (MHD_MAX_INLINE_BYTES)"
    )


def test_a_tiff_of_many_tiny_pages_is_refused_from_its_page_count(monkeypatch):
    """20,000 pages of 2 x 2 pixels (4.8 MB, under the inline limit): parsing their series took 52 s."""
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as writer:
        for _ in range(20_000):
            writer.write(np.zeros((2, 2), np.uint8), photometric="minisblack", contiguous=False)

    def parsed(self):
        raise AssertionError("the series of a hostile TIFF were parsed")

    monkeypatch.setattr(tifffile.TiffFile, "series", property(parsed))
    [entry] = score_tiles([{"name": "pages.tif", "data": buf.getvalue()}])
    assert entry["error"] == "pages.tif: TIFF holds 20,000 pages: MHD scores one 2-D image per tile; split the stack into single images"
    assert MAX_TIFF_PAGES < 20_000


# ------------------------------------------------------- allowed functions


@pytest.mark.parametrize("multi_user", [False, True])
def test_the_endpoint_runs_only_the_registered_function(tmp_path, multi_user):
    """The endpoint's interchange decides on the shipped config, loaded by the endpoint's own loader."""
    root = {}
    if multi_user:
        idmap = tmp_path / "idmap.json"
        idmap.write_text(
            '[{"DATA_TYPE": "expression_identity_mapping#1.0.0", '
            '"mappings": [{"source": "{username}", "match": "(.*)@example\\\\.org", "output": "{0}"}]}]'
        )
        root = {"email": "em-admin@example.org", "identity_mapping": str(idmap)}
    directory = install_endpoint(EndpointSpec(gpus=1, env=sys.prefix, function_ids=(FID,), multi_user=multi_user, **root), home=tmp_path)
    manager, user = validate_dir(directory)
    # The manager hands its allowed_functions to each user endpoint process it starts
    # (globus_compute_endpoint's CoreEndpoint.cmd_start_endpoint -> _start_user_endpoint).
    assert user.allowed_functions is None
    user.allowed_functions = manager.allowed_functions
    creds = {"amqp_creds": {"task_queue_info": {}, "result_queue_info": {}, "heartbeat_queue_info": {}}}
    interchange = EndpointInterchange(
        user, lambda: creds, {}, endpoint_id=str(uuid.uuid4()), endpoint_dir=tmp_path, result_store=ResultStore(tmp_path)
    )
    assert interchange.function_allowed(FID)
    assert not interchange.function_allowed(str(uuid.uuid4()))


# ------------------------------------------------------------------ tokens


def store_fake_tokens() -> None:
    """Valid-looking tokens for every resource server the client's app asks for."""
    auth.compute_client()
    auth.transfer_client()
    app = auth._app(None)
    expires = int(time.time()) + 3600
    data = {
        rs: TokenStorageData(
            rs, "c0ffee00-0000-4000-8000-000000000000", " ".join(str(s) for s in scopes), SECRET, REFRESH, expires, "Bearer"
        )
        for rs, scopes in app.scope_requirements.items()
    }
    app.token_storage.store_token_data_by_resource_server(data)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_token_storage_is_owner_only_whatever_the_umask(tmp_path):
    config = tmp_path / "cfg"
    old = os.umask(0)
    try:
        auth.make_app()  # created fresh under a permissive umask
        assert mode(config) == 0o700 and mode(config / "tokens.db") == 0o600
        os.chmod(config, 0o755)
        os.chmod(config / "tokens.db", 0o644)
        auth.make_app()  # loosened by someone since: tightened again
    finally:
        os.umask(old)
    assert mode(config) == 0o700 and mode(config / "tokens.db") == 0o600


@pytest.mark.slow
def test_a_stored_token_is_used_but_never_printed_logged_or_written_elsewhere(tmp_path, example_copy):
    section = example_copy
    runner = CliRunner()
    with OfflineCompute(workers=2) as cloud:
        store_fake_tokens()
        reg = runner.invoke(cli.main, ["-vv", "register", "--endpoint", cloud.endpoint_id])
        assert reg.exit_code == 0, reg.output
        sub = runner.invoke(cli.main, ["-vv", "submit", "--dir", str(section)])
        assert sub.exit_code == 2, sub.output
        cloud.fail_submits(1, status=403, message="Forbidden")
        refused = runner.invoke(cli.main, ["-vv", "submit", "--dir", str(section), "--rescore"])
        assert refused.exit_code == 1 and "HTTP 403" in refused.output
        sent = [call.request.headers.get("Authorization") for call in cloud._mock.calls]
    assert len(sent) >= 3 and set(sent) == {f"Bearer {SECRET}"}  # the stored token was the one used
    printed = reg.output + sub.output + refused.output
    assert "DEBUG" in printed  # every logger was on
    written = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "tokens.db"}
    assert section / "mhd-client.log" in written and tmp_path / "cfg" / "config.json" in written
    for token in (SECRET, REFRESH):
        assert token not in printed
        assert [p for p, data in written.items() if token.encode() in data] == []
    tokens = tmp_path / "cfg" / "tokens.db"
    assert SECRET.encode() in tokens.read_bytes() and mode(tokens) == 0o600 and mode(tokens.parent) == 0o700
    assert json.loads((tmp_path / "cfg" / "config.json").read_text())["endpoint"] == cloud.endpoint_id


# ------------------------------------------------------------------ output


@pytest.mark.slow
@pytest.mark.usefixtures("two_workers")
def test_a_tile_name_with_control_characters_cannot_forge_output_lines(tmp_path):
    """A file named ``evil\\nOOF   other.png.png`` is one escaped field of one line everywhere the client prints it."""
    from mhd.client.console import printable

    section = copy_example(tmp_path / "section")
    evil = "evil\nOOF   other.png.png"
    (section / "tile_r1_c2.png").rename(section / evil)  # the example's out-of-focus tile
    (section / "tab\tname.png").write_bytes((section / "tile_r0_c0.png").read_bytes())
    (section / "notes[bold]x.txt").write_text("not a tile")  # skipped: its name is not markup either
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])
    assert out.exit_code == 2, out.output
    lines = out.output.splitlines()
    assert not any(line.startswith("OOF   other.png") for line in lines), out.output  # no forged verdict line
    assert "oof\tevil\\nOOF   other.png.png\tdefocus" in out.output
    assert all(line.count("\t") in (0, 2) for line in lines)  # the summary's fields stay three
    assert {r["tile"] for r in read_results(section / "mhd-results.jsonl")} >= {evil, "tab\tname.png"}  # real names kept
    rep = CliRunner().invoke(cli.main, ["report", "--dir", str(section)])
    assert rep.exit_code in (0, 2), rep.output
    reacquire = (section / "mhd-report" / "mhd-reacquire.txt").read_text().splitlines()
    assert "evil\\nOOF   other.png.png\tdefocus" in [line[: len("evil\\nOOF   other.png.png\tdefocus")] for line in reacquire]
    assert "skipped (not an image): notes[bold]x.txt" in out.output
    assert printable("a\\b\x1b[31m\r") == "a\\\\b\\x1b[31m\\r" and printable("ordinary é 漢字.png") == "ordinary é 漢字.png"
    assert printable("gnp.\u202etxt") == "gnp.\\u202etxt" and printable("p\u2028q") == "p\\u2028q"  # bidi override, line separator
