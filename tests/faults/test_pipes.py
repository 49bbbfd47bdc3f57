"""``client submit | head``: the reader goes away early, the run still scores and records the whole section."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mhd.client.results import read_records

#: Every test here runs whole client pipelines in subprocesses (4-12 s each).
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("rescore", [False, True])
def test_a_reader_that_quits_early_does_not_stop_the_run(example_copy, isolated_config, rescore):
    section = example_copy
    client = Path(sys.executable).with_name("client")
    if rescore:
        subprocess.run(
            [str(client), "submit", "--dir", str(section)], capture_output=True, timeout=300, env={**os.environ, "MHD_WORKERS": "2"}
        )
    flag = "--rescore" if rescore else ""
    proc = subprocess.run(
        ["bash", "-c", f'"{client}" submit --dir "{section}" {flag} | head -n 1; exit "${{PIPESTATUS[0]}}"'],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MHD_WORKERS": "2"},
    )
    assert proc.returncode == 2, proc.stderr  # out-of-focus tiles, as without the pipe (it was 1, the run cut short)
    assert len(proc.stdout.splitlines()) == 1
    assert "standard output was closed by its reader; the run goes on" in proc.stderr and "Traceback" not in proc.stderr
    records, _ = read_records(section / "mhd-results.jsonl")
    assert len(records) == 16 and all(r.verdict in ("ok", "oof", "empty") for r in records.values())
