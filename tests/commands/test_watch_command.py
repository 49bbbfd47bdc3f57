"""``client watch`` end to end: against a slow, partial writer, stopped with Ctrl-C (SIGINT); a re-imaged tile, a
tile still being written at --idle-exit, a section folder that appears late or never, a failure mid-watch.
``unit/test_watch.py`` checks how tiles land."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

import mhd.client.watch as watch
from conftest import EXAMPLE, default_stop_signals, rename_over
from mhd.client.calibration import Calibration
from mhd.client.config import load
from mhd.client.interrupt import Interrupt
from mhd.client.judge import Judge
from mhd.client.options import RunOptions
from mhd.client.results import read_records
from mhd.client.rule import Rule
from mhd.client.submit import run_section
from mhd.client.watch import watch_section

HOSTILE = "tile r9;$(touch PWNED) `touch PWNED2`.png"

ALERT_SCRIPT = """
import os, sys
with open(sys.argv[1], "a") as fh:
    fh.write(repr((sys.argv[2:], os.environ["MHD_TILE"], os.environ["MHD_VERDICT"])) + "\\n")
"""


def slow_write(path: Path, data: bytes, pause: float) -> None:
    """Write half the file, pause (the watcher sees a truncated image), then the rest."""
    with path.open("wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep(pause)
        fh.write(data[len(data) // 2 :])


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_config")
def test_watch_rescores_a_tile_renamed_into_place_over_a_recorded_one(tmp_path, monkeypatch):
    section = tmp_path / "s"
    section.mkdir()
    for name in ("tile_r0_c0.png", "tile_r0_c1.tif"):
        rename_over(section / name, (EXAMPLE / name).read_bytes(), time.time() - 60)
    cfg = load().override(executor="local", workers=1)
    console = Console(file=io.StringIO())
    run_section(section, cfg, console, RunOptions(rule=Rule(warmup=1), params={"backend": "numpy"}))
    before, _ = read_records(section / "mhd-results.jsonl")
    assert set(before) == {"tile_r0_c0.png", "tile_r0_c1.tif"}

    new = (EXAMPLE / "tile_r1_c2.png").read_bytes()
    real_discover = watch.discover
    looks = []

    def discover(folder):
        found = real_discover(folder)
        looks.append(1)
        if len(looks) == 1:  # the watch is following: the microscope re-images tile_r0_c0.png now
            rename_over(section / "tile_r0_c0.png", new, time.time() - 30)
        return found

    monkeypatch.setattr(watch, "discover", discover)
    out = watch_section(section, cfg, console, RunOptions(rule=Rule(warmup=1), params={"backend": "numpy"}, poll=0.1, idle_exit=2.0))
    assert out.new == 1
    after, lines = read_records(section / "mhd-results.jsonl")
    assert lines == 2  # the new record replaced the old one
    rec = after["tile_r0_c0.png"]
    assert (rec.file_size, rec.file_mtime_ns) == (len(new), (section / "tile_r0_c0.png").stat().st_mtime_ns)
    assert rec.scored_at != before["tile_r0_c0.png"].scored_at and rec.latency_ms is not None
    assert after["tile_r0_c1.tif"] == before["tile_r0_c1.tif"]  # untouched: not scored again


class StopsAt(Interrupt):
    """Ctrl-C handling that also stops the run at ``deadline`` (time.monotonic()), as if Ctrl-C were pressed."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def __call__(self) -> bool:
        return super().__call__() or time.monotonic() >= self.deadline


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_config")
def test_idle_exit_waits_for_a_tile_still_being_written(tmp_path, monkeypatch):
    """--idle-exit counts a file still growing as activity: a tile written for longer than it is scored."""
    section = tmp_path / "s"
    section.mkdir()
    data = (EXAMPLE / "tile_r0_c0.png").read_bytes()
    cfg = load().override(executor="local", workers=1)
    real_discover = watch.discover
    looks = []

    def discover(folder):  # the microscope writes one tile in 8 pieces over ~2.4 s, one piece per look
        looks.append(1)
        n = len(looks)
        if n <= 8:
            with (section / "tile_r0_c0.png").open("ab") as fh:
                fh.write(data[(n - 1) * len(data) // 8 : n * len(data) // 8])
        return real_discover(folder)

    monkeypatch.setattr(watch, "discover", discover)
    out = watch_section(
        section, cfg, Console(file=io.StringIO()), RunOptions(rule=Rule(warmup=1), params={"backend": "numpy"}, poll=0.3, idle_exit=1.0)
    )
    assert out.new == 1
    assert read_records(section / "mhd-results.jsonl")[0]["tile_r0_c0.png"].verdict != "error"


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_config")
def test_idle_exit_scores_files_that_stay_incomplete_or_empty_first(tmp_path):
    """--idle-exit shorter than --give-up: the truncated and the empty file are still scored, as errors naming them."""
    section = tmp_path / "s"
    section.mkdir()
    data = (EXAMPLE / "tile_r0_c0.png").read_bytes()
    (section / "good.png").write_bytes(data)
    (section / "cut.png").write_bytes(data[: len(data) // 2])  # never completed
    (section / "empty.png").write_bytes(b"")
    cfg = load().override(executor="local", workers=1)
    start = time.monotonic()
    out = watch_section(
        section,
        cfg,
        Console(file=io.StringIO()),
        RunOptions(
            rule=Rule(warmup=1),
            params={"backend": "numpy"},
            poll=0.1,
            give_up=2.0,
            idle_exit=0.5,
            interrupt=StopsAt(start + 60),  # a watch that never gives up is stopped there, and fails below, instead of hanging
        ),
    )
    assert 2.0 <= time.monotonic() - start < 60, "the watch never gave up on the incomplete files"  # it waited out --give-up
    recs, _ = read_records(section / "mhd-results.jsonl")
    assert out.new == 3 and set(recs) == {"good.png", "cut.png", "empty.png"}
    assert recs["good.png"].verdict != "error"
    assert recs["cut.png"].verdict == "error" and "cut.png" in recs["cut.png"].error
    assert recs["empty.png"].verdict == "error" and "empty.png" in recs["empty.png"].error


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_config")
def test_an_unforeseen_failure_records_the_verdicts_held_for_the_baseline_first(tmp_path, monkeypatch):
    """The section folder removed under a running watch: the error is reported, and no verdict obtained is lost."""
    section = tmp_path / "s"
    section.mkdir()
    for name in ("tile_r0_c0.png", "tile_r0_c1.tif", "tile_r0_c2.png"):
        rename_over(section / name, (EXAMPLE / name).read_bytes(), time.time() - 60)
    real_discover, real_add = watch.discover, Judge.add
    judged = []

    def add(self, rec):
        judged.append(rec.tile)
        return real_add(self, rec)

    def discover(folder):
        if len(judged) == 3:  # the tiles are scored and held (warm-up 8): now the folder goes
            raise NotADirectoryError(f"{folder}: not a folder")
        return real_discover(folder)

    monkeypatch.setattr(Judge, "add", add)
    monkeypatch.setattr(watch, "discover", discover)
    cfg = load().override(executor="local", workers=1)
    with pytest.raises(NotADirectoryError):
        watch_section(section, cfg, Console(file=io.StringIO()), RunOptions(rule=Rule(warmup=8), params={"backend": "numpy"}, poll=0.1))
    recs, _ = read_records(section / "mhd-results.jsonl")
    assert set(recs) == {"tile_r0_c0.png", "tile_r0_c1.tif", "tile_r0_c2.png"} and all(r.verdict for r in recs.values())


@pytest.mark.portable
@pytest.mark.slow
def test_watch_scores_each_tile_once_alerts_safely_and_stops_on_ctrl_c(tmp_path):
    section = tmp_path / "live"
    section.mkdir()
    cal = Calibration(intercept=math.log(14500.0), slope=-0.53, r=-0.99, n=9, units="um", max_defocus=1.0).save(tmp_path / "cal.json")
    script = tmp_path / "alert.py"
    script.write_text(ALERT_SCRIPT)
    alerts = tmp_path / "alerts.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MHD_")}
    env.update(MHD_CONFIG=str(tmp_path / "cfg.json"), MHD_CALIBRATION=str(cal), MHD_WORKERS="1")
    cmd = [
        sys.executable,
        "-m",
        "mhd.client",
        "watch",
        "--dir",
        str(section),
        "--poll",
        "0.1",
        "--idle-exit",
        "60",
        "--on-oof",
        f"{sys.executable} {script} {alerts}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=default_stop_signals
    )
    try:
        slow_write(section / "tile_r0_c0.png", (EXAMPLE / "tile_r0_c0.png").read_bytes(), 0.6)
        part = section / "tile_r0_c1.tif.part"
        slow_write(part, (EXAMPLE / "tile_r0_c1.tif").read_bytes(), 0.4)
        part.rename(section / "tile_r0_c1.tif")
        slow_write(section / HOSTILE, (EXAMPLE / "tile_r1_c2.png").read_bytes(), 0.4)
        for name in ("tile_r1_c0.png", "tile_r3_c3.bmp"):
            shutil.copy(EXAMPLE / name, section / name)
        results = section / "mhd-results.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out  # the section has an out-of-focus tile
    recs = [json.loads(x) for x in results.read_text().splitlines()]
    assert sorted(r["tile"] for r in recs) == sorted(["tile_r0_c0.png", "tile_r0_c1.tif", HOSTILE, "tile_r1_c0.png", "tile_r3_c3.bmp"])
    verdicts = {r["tile"]: r["verdict"] for r in recs}
    assert verdicts.pop(HOSTILE) == "oof" and set(verdicts.values()) == {"ok"}
    assert all(r["latency_ms"] >= 0 for r in recs)
    [alert] = alerts.read_text().splitlines()
    args, tile_env, verdict_env = eval(alert)  # our own repr() output
    assert args == [str(section.resolve() / HOSTILE)] and tile_env == args[0] and verdict_env == "oof"
    assert not list(tmp_path.rglob("PWNED*"))  # the file name was never given to a shell
    assert "OOF" in out and "summary" in out


@pytest.mark.slow
def test_watch_waits_for_a_section_folder_that_does_not_exist_yet(tmp_path, isolated_config):
    """The microscope creates the section's folder after the operator starts watch: it used to fail at once."""
    section = tmp_path / "section_044"
    client = Path(sys.executable).with_name("client")
    env = {**os.environ, "MHD_WORKERS": "1", "MHD_WARMUP": "1"}  # the verdict at once, not held for a baseline until --idle-exit
    waiting = f"waiting for {section} to appear"
    with (tmp_path / "stderr.txt").open("w+") as errors:
        proc = subprocess.Popen(
            [str(client), "watch", "--dir", str(section), "--idle-exit", "20", "--poll", "0.1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            preexec_fn=default_stop_signals,
        )
        deadline = time.monotonic() + 120  # however long the client takes to start on a loaded machine
        while time.monotonic() < deadline and proc.poll() is None and waiting not in (tmp_path / "stderr.txt").read_text():
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()  # still waiting, not "not a folder"
        (tmp_path / "incoming").mkdir()
        shutil.copy(EXAMPLE / "tile_r0_c0.png", tmp_path / "incoming" / "tile_r0_c0.png")
        os.rename(tmp_path / "incoming", section)  # the folder appears with its first tile
        while time.monotonic() < deadline and not read_records(section / "mhd-results.jsonl")[0]:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    assert waiting in err and "Traceback" not in err
    assert list(read_records(section / "mhd-results.jsonl")[0]) == ["tile_r0_c0.png"], out + err


@pytest.mark.slow
def test_watch_that_receives_no_tile_before_idle_exit_is_an_error(tmp_path, isolated_config):
    """An unattended watch of a folder that stays empty must not say 'all ok' (submit says 'no tiles here')."""
    from click.testing import CliRunner

    from mhd.client.cli import main

    (tmp_path / "notes.txt").write_text("not a tile")
    out = CliRunner().invoke(main, ["watch", "--dir", str(tmp_path), "--idle-exit", "0.3", "--poll", "0.1", "--executor", "local"])
    assert out.exit_code == 1 and "no tiles arrived within --idle-exit 0.3 s" in out.output and "all ok" not in out.output


def test_watch_gives_up_waiting_for_a_folder_after_idle_exit(tmp_path, isolated_config):
    from click.testing import CliRunner

    from mhd.client.cli import main

    out = CliRunner().invoke(main, ["watch", "--dir", str(tmp_path / "never"), "--idle-exit", "0.3", "--poll", "0.1"])
    assert out.exit_code == 1 and f"{tmp_path / 'never'} did not appear within --idle-exit 0.3 s" in out.output


def test_bad_detector_options_are_a_usage_error_before_watch_waits_for_its_folder(tmp_path, isolated_config):
    """``watch`` started before the microscope made the folder learns of bad options at once, not once it appears."""
    from click.testing import CliRunner

    from mhd.client.cli import EXIT_USAGE, main

    out = CliRunner().invoke(main, ["watch", "--dir", str(tmp_path / "not_yet"), "--min-t", "5", "--max-t", "2"])
    assert out.exit_code == EXIT_USAGE and "waiting for" not in out.output, out.output
