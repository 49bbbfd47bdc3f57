"""The results log makes each verdict durable (``fsync``) before it counts as recorded.

``test_faults.py`` checks what happens when ``fsync`` fails (disk full); here
nothing fails, and ``os.fsync`` is only watched (the real one still runs): a
log that skipped or deferred its ``fsync`` would lose verdicts already shown
to the operator when the machine loses power, and no other test would notice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import mhd.client.results
from mhd.client import cli
from mhd.client.results import ResultsLog
from mhd.functions.worker.record import TileRecord

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "section_042"


@pytest.fixture
def synced(monkeypatch):
    """Every ``os.fsync`` of this process as ``(inode, size of the file when synced)``."""
    calls: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def watched(fd):
        st = os.fstat(fd)
        real_fsync(fd)
        calls.append((st.st_ino, st.st_size))

    monkeypatch.setattr(mhd.client.results.os, "fsync", watched)
    return calls


def line_ends(path: Path) -> list[int]:
    data = path.read_bytes()
    return [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]


def test_each_record_is_fsynced_before_append_returns(tmp_path, synced):
    path = tmp_path / "mhd-results.jsonl"
    with ResultsLog(tmp_path) as log:
        for n, tile in enumerate(("a.png", "b.png", "c.png"), start=1):
            log.append(TileRecord.from_json({"tile": tile, "verdict": "ok", "density": 1.5e4}))
            assert len(synced) == n, tile  # synced by the time append returned
    # ... each time the whole file, that record included (nothing waiting in a buffer)
    assert synced == [(path.stat().st_ino, end) for end in line_ends(path)]


def test_compaction_syncs_the_new_file_before_it_replaces_the_log(tmp_path, synced):
    with ResultsLog(tmp_path) as log:
        log.extend(TileRecord(t, verdict="error") for t in ("a.png", "b.png"))
        log.append(TileRecord.from_json({"tile": "a.png", "verdict": "ok"}))  # supersedes a.png's error
        synced.clear()
        log.compact()
    path = tmp_path / "mhd-results.jsonl"
    assert [json.loads(x)["tile"] for x in path.read_bytes().splitlines()] == ["a.png", "b.png"]
    assert synced == [(path.stat().st_ino, path.stat().st_size)]  # the renamed temp file, complete


def test_records_appended_after_compaction_or_a_fresh_start_are_still_fsynced_whole(tmp_path, synced):
    path = tmp_path / "mhd-results.jsonl"
    with ResultsLog(tmp_path) as log:
        log.extend(TileRecord(t, verdict="error") for t in ("a.png", "a.png"))
        log.compact()  # reopens the log
        log.append(TileRecord.from_json({"tile": "b.png", "verdict": "ok"}))
    assert synced[-1] == (path.stat().st_ino, line_ends(path)[-1])  # unbuffered: nothing was left in a buffer
    with ResultsLog(tmp_path, fresh=True) as log:  # --rescore: the old log is kept aside, a new one opened
        log.append(TileRecord.from_json({"tile": "c.png", "verdict": "ok"}))
    assert synced[-1] == (path.stat().st_ino, line_ends(path)[-1])
    assert [json.loads(x)["tile"] for x in path.read_bytes().splitlines()] == ["c.png"]


def test_a_failed_compaction_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    with ResultsLog(tmp_path) as log:
        log.extend(TileRecord(t, verdict="error") for t in ("a.png", "a.png", "b.png"))
        before = (tmp_path / "mhd-results.jsonl").read_bytes()

        def unreadable(path):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(mhd.client.results, "read_records", unreadable)  # fails before the temp file exists
        log.compact()  # logged, never raised
        monkeypatch.undo()
        assert (tmp_path / "mhd-results.jsonl").read_bytes() == before and log.superseded == 1
        assert not (tmp_path / "mhd-results.jsonl.tmp").exists()
        log.append(TileRecord.from_json({"tile": "c.png", "verdict": "ok"}))
    assert list(mhd.client.results.read_records(tmp_path / "mhd-results.jsonl")[0]) == ["a.png", "b.png", "c.png"]


def test_lines_that_are_not_records_are_skipped_and_named(tmp_path, caplog):
    path = tmp_path / "mhd-results.jsonl"
    assert mhd.client.results.read_records(path) == ({}, 0)  # no log yet
    path.write_bytes(
        b'{"tile": "a.png", "verdict": "ok"}\n[1, 2]\n{"verdict": "ok"}\n{"tile": 7}\n{not json\n'
        b'{"tile": "b.png", "verdict": "oof"}\n{"tile": "d.png"}\n{"tile": "e.png", "verdict": "fine"}\n{"tile": "c.png"'
    )
    records, lines = mhd.client.results.read_records(path)
    assert list(records) == ["a.png", "b.png"] and lines == 2
    warned = [r.getMessage() for r in caplog.records]
    assert [w.split(": ", 1)[0] for w in warned] == [f"{path}:{n}" for n in (2, 3, 4, 5, 7, 8, 9)]  # 1-based line numbers
    assert "incomplete last line" in warned[-1] and "unreadable line" in warned[3]
    assert all("without a verdict ignored (the tile is scored again)" in w for w in warned[4:6])


@pytest.mark.slow
def test_every_verdict_of_a_submit_run_was_fsynced_as_it_was_written(tmp_path, synced, isolated_config, monkeypatch):
    section = tmp_path / "section_042"
    shutil.copytree(EXAMPLE, section, ignore=shutil.ignore_patterns("mhd-*"))
    monkeypatch.setenv("MHD_WORKERS", "2")
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])
    assert out.exit_code == 2, out.output
    path = section / "mhd-results.jsonl"
    ends = line_ends(path)
    assert len(ends) == 16
    sizes = {size for ino, size in synced if ino == path.stat().st_ino}
    assert sizes >= set(ends)  # synced at every record boundary: no verdict waited for a later one


#: A process whose files may not grow past $LIMIT bytes (RLIMIT_FSIZE, no privilege needed) appends until refused.
APPEND_UNTIL_REFUSED = """
import os, resource, signal, sys
from mhd.client.results import ResultsLog, ResultsWriteError
from mhd.functions.worker.record import TileRecord

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(os.environ["LIMIT"]), resource.RLIM_INFINITY))
with ResultsLog(sys.argv[1]) as log:
    for i in range(1000):
        try:
            log.append(TileRecord.from_json({"tile": f"tile_{i:03d}.png", "verdict": "ok", "reason": "x" * 90}))
        except ResultsWriteError as exc:
            print(len(log.records), exc)
            break
"""


def test_a_write_the_kernel_refuses_is_cut_off_and_earlier_records_stay(tmp_path):
    """A real refused ``write`` (file-size limit: a short write, then EFBIG), where ``test_faults.py``
    fills a tmpfs (needs root and CAP_SYS_ADMIN) or injects ENOSPC at ``fsync``."""
    import subprocess
    import sys

    limit = 1000  # about 8 records of 123 bytes: the 9th is cut short by the kernel
    env = {**os.environ, "LIMIT": str(limit)}
    proc = subprocess.run([sys.executable, "-c", APPEND_UNTIL_REFUSED, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kept, message = proc.stdout.split(" ", 1)
    data = (tmp_path / "mhd-results.jsonl").read_bytes()
    assert data.endswith(b"\n") and len(data) <= limit  # the partial record was cut off
    tiles = [json.loads(line)["tile"] for line in data.splitlines()]
    assert tiles == [f"tile_{i:03d}.png" for i in range(int(kept))] and len(tiles) >= 5
    assert f"cannot record the verdict of tile_{len(tiles):03d}.png" in message
    assert f"The {len(tiles)} records written before are intact" in message


@pytest.mark.slow
def test_a_record_without_a_verdict_is_scored_again_and_report_does_not_fail(tmp_path, isolated_config, monkeypatch):
    """A hand-edited or foreign line ``{"tile": ...}`` counted as recorded, and ``client report`` died on it with a traceback."""
    section = tmp_path / "section_042"
    shutil.copytree(EXAMPLE, section, ignore=shutil.ignore_patterns("mhd-*"))
    monkeypatch.setenv("MHD_WORKERS", "1")
    assert CliRunner().invoke(cli.main, ["submit", "--dir", str(section)]).exit_code == 2
    log = section / "mhd-results.jsonl"
    with log.open("a") as fh:
        fh.write('{"tile": "tile_r0_c0.png"}\n')
    out = CliRunner().invoke(cli.main, ["report", "--dir", str(section)])
    assert out.exit_code == 0 and out.exception is None, out.output
    assert mhd.client.results.read_records(log)[0]["tile_r0_c0.png"].verdict == "ok"  # the real record stands
    # a tile whose only line has no verdict is not recorded: the next run scores it
    lines = [line for line in log.read_text().splitlines(keepends=True) if '"tile_r0_c0.png"' not in line]
    log.write_text("".join(lines) + '{"tile": "tile_r0_c0.png"}\n')
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])
    assert "15 already recorded, 1 to score" in out.output, out.output
    assert mhd.client.results.read_records(log)[0]["tile_r0_c0.png"].verdict == "ok"


def test_an_unforeseen_failure_is_one_line_with_the_traceback_in_a_file(tmp_path, isolated_config, monkeypatch):
    import tempfile

    import mhd.client.report

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(mhd.client.report, "make_report", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    section = tmp_path / "s"
    section.mkdir()
    out = CliRunner().invoke(cli.main, ["report", "--dir", str(section)])
    assert out.exit_code == 1, out.output
    [saved] = tmp_path.glob("mhd-client-*.traceback.txt")
    assert out.output.strip() == f"Error: unexpected TypeError: unsupported operand (traceback in {saved})"
    assert "Traceback" not in out.output and "raise TypeError" in saved.read_text()
