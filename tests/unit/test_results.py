"""The results log (``mhd.client.results``): append and read back, a torn last line, superseded records and
compaction, the section's lock, fresh starts and their backups, lines that are not records; and each verdict made
durable (``fsync``) before it counts as recorded.

``os.fsync`` is only watched (conftest's ``synced``; the real one still runs): a log that skipped or deferred its
``fsync`` would lose verdicts already shown to the operator when the machine loses power, and no other test would
notice. ``faults/test_results_durable.py`` checks a whole ``client submit`` run and a write the kernel refuses,
``faults/test_faults.py`` a full disk.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import mhd.client.results
from conftest import line_ends
from mhd.client.results import ResultsLog, SectionLocked, read_records
from mhd.contracts.record import TileRecord

pytestmark = pytest.mark.usefixtures("isolated_config")


def rec(tile, verdict="ok", density=1e4):
    return TileRecord(tile, verdict=verdict, density=density, features=10)


def test_results_append_read_and_torn_last_line(tmp_path):
    with ResultsLog(tmp_path) as log:
        log.append(rec("a"))
        log.append(rec("b", "oof"))
    path = tmp_path / "mhd-results.jsonl"
    with path.open("ab") as fh:
        fh.write(b'{"tile": "c", "verd')  # killed mid-write
    records, lines = read_records(path)
    assert list(records) == ["a", "b"] and lines == 2
    with ResultsLog(tmp_path) as log:  # reopening cuts the torn tail off
        assert set(log.records) == {"a", "b"}
        log.append(rec("c"))
    assert [json.loads(x)["tile"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_results_newer_record_supersedes_and_compact_dedupes(tmp_path):
    with ResultsLog(tmp_path) as log:
        log.append(rec("a", "error"))
        log.append(rec("b"))
        log.append(rec("a", "ok"))
        assert log.superseded == 1 and log.records["a"].verdict == "ok"
        log.compact()
        log.append(rec("c"))
    lines = (tmp_path / "mhd-results.jsonl").read_text().splitlines()
    assert [json.loads(x)["tile"] for x in lines] == ["a", "b", "c"]
    assert json.loads(lines[0])["verdict"] == "ok"


def test_results_lock_and_fresh_backup(tmp_path):
    with ResultsLog(tmp_path) as log:
        log.append(rec("a"))
        with pytest.raises(SectionLocked, match="another client"):
            ResultsLog(tmp_path)
    with ResultsLog(tmp_path, fresh=True) as log:
        assert log.records == {}
        log.append(rec("b"))
    with ResultsLog(tmp_path, fresh=True):  # again within the second: the first backup is kept too
        pass
    backups = sorted(tmp_path.glob("mhd-results.jsonl.*.bak"))
    assert sorted(json.loads(b.read_text())["tile"] for b in backups) == ["a", "b"]


def test_the_section_stays_locked_while_the_log_is_compacted(tmp_path):
    """The lock is on a file of its own: compacting replaces the log, and a lock on it was free meanwhile."""
    with ResultsLog(tmp_path) as log:
        log.append(rec("a"))
        log.append(replace(rec("a"), reason="again"))
        log.compact()
        with pytest.raises(SectionLocked):
            ResultsLog(tmp_path)
        log.append(rec("b"))
    with ResultsLog(tmp_path) as log:  # released when closed
        assert set(log.records) == {"a", "b"}


def test_results_numpy_values_are_written(tmp_path):
    with ResultsLog(tmp_path) as log:
        log.append(TileRecord("a", verdict="ok", features=np.int64(3), grid=np.zeros((2, 2), int)))
    assert read_records(tmp_path / "mhd-results.jsonl")[0]["a"].grid == [[0, 0], [0, 0]]


# ------------------------------------------------------- each verdict durable before it counts


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
