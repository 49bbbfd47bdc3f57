"""The results log in real runs and real faults: every verdict of a ``client submit`` run is made durable (``fsync``)
as it is written, a write the kernel refuses is cut off with the earlier records intact, a line without a verdict
is scored again.

``unit/test_results.py`` watches each ``fsync`` of the log itself; ``test_faults.py`` checks what happens when
``fsync`` fails (disk full). Here ``os.fsync`` is only watched (the real one still runs): a log that skipped or
deferred its ``fsync`` would lose verdicts already shown to the operator when the machine loses power, and no
other test would notice.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

import mhd.client.results
from conftest import line_ends
from mhd.client import cli


@pytest.mark.slow
def test_every_verdict_of_a_submit_run_was_fsynced_as_it_was_written(example_copy, synced, isolated_config, monkeypatch):
    section = example_copy
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
from mhd.contracts.record import TileRecord

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
def test_a_record_without_a_verdict_is_scored_again_and_report_does_not_fail(example_copy, isolated_config, monkeypatch):
    """A hand-edited or foreign line ``{"tile": ...}`` counted as recorded, and ``client report`` died on it with a traceback."""
    section = example_copy
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
