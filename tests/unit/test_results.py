"""The results log (``mhd.client.results``): append and read back, a torn last line, superseded records and
compaction, the section's lock, fresh starts and their backups."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

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
