"""``submit`` and ``watch`` drive one RunSession (``mhd.client.session``): the same executor set-up, so the copies
cannot drift; and the transport it makes: the inline limit where a request crosses the network, naming what works."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import mhd.client.session as session
from conftest import EXAMPLE
from mhd.client.config import load
from mhd.client.options import RunOptions
from mhd.client.results import read_records
from mhd.client.rule import Rule
from mhd.client.session import make_transport
from mhd.client.submit import run_section
from mhd.client.transport import MB
from mhd.client.watch import watch_section

pytestmark = pytest.mark.usefixtures("isolated_config")


def landed_long_ago(section: Path, names: list[str]) -> None:
    """Copy example tiles into ``section``, last modified a minute ago (complete at first sight)."""
    section.mkdir()
    for name in names:
        shutil.copy(EXAMPLE / name, section / name)
        past = time.time() - 60
        os.utime(section / name, (past, past))


def recorded_pipelines(monkeypatch) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) of every pipeline the commands build from now on; none of them runs, no executor starts."""
    made = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            made.append((args, kwargs))
            self.landed, self.busy = {}, False

        def run(self, tiles):
            pass

        def feed(self, tiles):
            pass

        def finish(self):
            pass

    monkeypatch.setattr(session, "Pipeline", Recorder)
    monkeypatch.setattr(session, "open_executor", lambda *args, **kwargs: contextlib.nullcontext(object()))
    return made


@pytest.mark.parametrize(
    ("overrides", "expected"), [({"executor": "globus", "endpoint": "e", "function": "f"}, 32), ({"executor": "local", "workers": 3}, 6)]
)
def test_submit_and_watch_keep_the_same_tasks_in_flight(tmp_path, monkeypatch, overrides, expected):
    """Watch kept 4 tasks in flight on Globus where submit kept 32; both now ask the session."""
    made = recorded_pipelines(monkeypatch)
    section = tmp_path / "s"
    landed_long_ago(section, ["tile_r0_c0.png"])
    cfg = load().override(**overrides)
    console = Console(file=io.StringIO())
    run_section(section, cfg, console, RunOptions(rule=Rule()))
    watch_section(section, cfg, console, RunOptions(rule=Rule(), idle_exit=0.0))
    assert [kwargs["max_inflight"] for _, kwargs in made] == [expected, expected]
    assert session.max_inflight("globus", 0) == 32 and session.max_inflight("local", 1) == 4


@pytest.mark.slow
def test_watch_honours_the_detectors_grid(tmp_path):
    """Tissue is measured by the worker on the grid asked for (watch probed a fixed 4 x 4 grid before)."""
    section = tmp_path / "s"
    landed_long_ago(section, ["tile_r0_c0.png", "tile_r0_c1.tif"])
    cfg = load().override(executor="local", workers=1)
    out = watch_section(
        section,
        cfg,
        Console(file=io.StringIO()),
        RunOptions(rule=Rule(warmup=1), params={"grid": [2, 3], "backend": "numpy"}, poll=0.1, idle_exit=1.0),
    )
    assert out.new == 2
    records, _ = read_records(section / "mhd-results.jsonl")
    for rec in records.values():
        assert np.asarray(rec.grid).shape == np.asarray(rec.contrast_cells).shape == (2, 3)
        assert rec.contrast > 3  # tissue


def test_watch_sends_tiles_the_way_submit_does_when_tiles_may_be_large(tmp_path, monkeypatch):
    """``auto`` with shared storage configured: submit sends a large tile through it, and watch, which
    cannot know the sizes of tiles still to land, does too (it chose inline, so large tiles failed)."""
    made = recorded_pipelines(monkeypatch)
    section = tmp_path / "s"
    landed_long_ago(section, ["tile_r0_c0.png"])
    size_mb = (section / "tile_r0_c0.png").stat().st_size / 2**20
    cfg = load().override(
        executor="globus", endpoint="e", function="f", shared_local=str(tmp_path), shared_remote="/mnt/em", inline_max_mb=size_mb / 2
    )
    console = Console(file=io.StringIO())
    run_section(section, cfg, console, RunOptions(rule=Rule()))
    watch_section(section, cfg, console, RunOptions(rule=Rule(), idle_exit=0.0))
    assert [args[1].name for args, _ in made] == ["shared", "shared"]


def tile_of(tmp_path: Path, size: int):
    from mhd.client.discover import Tile

    path = tmp_path / "big.tif"
    path.write_bytes(b"\0" * size)
    return Tile("big.tif", path, size)


@pytest.mark.usefixtures("two_workers")
@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({}, "score it on this machine with --executor local"),
        ({"MHD_SHARED_LOCAL": "/mnt/em"}, "use --transport shared (shared_local is configured)"),
        (
            {
                "MHD_TRANSPORT": "inline",
                "MHD_SOURCE_COLLECTION": "s",
                "MHD_SOURCE_LOCAL": "/",
                "MHD_DEST_COLLECTION": "d",
                "MHD_DEST_PATH": "/in",
            },
            "use --transport globus (Globus Transfer is configured)",
        ),
    ],
)
def test_the_inline_limit_applies_where_a_request_crosses_the_network_and_names_what_works(settings, says, tmp_path, monkeypatch):
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MHD_TRANSPORT", "inline")
    tile = tile_of(tmp_path, 7 * MB)
    [staged] = list(make_transport(load(), tmp_path, [tile], 1, kind="globus").stage([tile]))
    [failed] = staged.failed
    assert failed.error.startswith("big.tif: 7.0 MB is over the inline limit of 6 MB per task (request_mb); ")
    assert says in failed.error


@pytest.mark.usefixtures("two_workers")
def test_the_local_engine_never_asks_for_a_transfer(tmp_path, monkeypatch):
    tile = tile_of(tmp_path, 7 * MB)
    assert make_transport(load(), tmp_path, [tile], 1, kind="local").name == "disk"
    monkeypatch.setenv("MHD_TRANSPORT", "globus")
    with pytest.raises(ValueError, match=r"use --transport auto \(the local engine reads tiles from disk\)"):
        make_transport(load(), tmp_path, [tile], 1, kind="local")
