"""``submit`` and ``watch`` drive one RunSession: the same executor set-up, so the copies cannot drift."""

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
from mhd.client.config import load
from mhd.client.results import read_records
from mhd.client.submit import run_section
from mhd.client.verdicts import Rule
from mhd.client.watch import watch_section

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "section_042"

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
    run_section(section, cfg, console, rule=Rule())
    watch_section(section, cfg, console, rule=Rule(), idle_exit=0.0)
    assert [kwargs["max_inflight"] for _, kwargs in made] == [expected, expected]
    assert session.max_inflight("globus", 0) == 32 and session.max_inflight("local", 1) == 4


@pytest.mark.slow
def test_watch_honours_the_detectors_grid(tmp_path):
    """Tissue is measured by the worker on the grid asked for (watch probed a fixed 4 x 4 grid before)."""
    section = tmp_path / "s"
    landed_long_ago(section, ["tile_r0_c0.png", "tile_r0_c1.tif"])
    cfg = load().override(executor="local", workers=1)
    out = watch_section(
        section, cfg, Console(file=io.StringIO()), rule=Rule(warmup=1), params={"grid": [2, 3], "backend": "numpy"}, poll=0.1, idle_exit=1.0
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
    run_section(section, cfg, console, rule=Rule())
    watch_section(section, cfg, console, rule=Rule(), idle_exit=0.0)
    assert [args[1].name for args, _ in made] == ["shared", "shared"]
