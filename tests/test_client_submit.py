"""``client submit`` end to end on the bundled example, with the local backend (the embedded default).

Each run starts a real LocalExecutor (spawned endpoint engine workers) and
sends the tiles inline through the same serialization as the Globus backend.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mhd.client.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "section_042"
EXPECTED_OOF = {"tile_r1_c2.png", "tile_r2_c3.png", "tile_r3_c1.png"}


pytestmark = pytest.mark.usefixtures("isolated_config")


@pytest.fixture(autouse=True)
def two_workers(monkeypatch):
    monkeypatch.setenv("MHD_WORKERS", "2")


@pytest.fixture
def section(tmp_path):
    dest = tmp_path / "section_042"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("mhd-*"))
    return dest


def lines(section: Path) -> list[dict]:
    return [json.loads(x) for x in (section / "mhd-results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_submit_example_then_resume_then_a_bad_tile(section):
    runner = CliRunner()
    first = runner.invoke(main, ["submit", "--dir", str(section)])
    assert first.exit_code == 2, first.output
    recs = {r["tile"]: r for r in lines(section)}
    assert len(recs) == 16 and len(lines(section)) == 16
    assert {t for t, r in recs.items() if r["verdict"] == "oof"} == EXPECTED_OOF
    assert recs["tile_r0_c3.png"]["verdict"] == "empty"
    assert recs["tile_r2_c3.png"]["reason"].startswith("partial: cells")
    assert all(
        r["backend"] == "numpy" and r["transport"] == "disk" and r["error"] is None for t, r in recs.items()
    )  # the local engine reads the tiles itself
    assert recs["tile_r0_c1.tif"]["shape"] == [256, 256] and len(recs["tile_r0_c1.tif"]["grid"]) == 4
    for tile in EXPECTED_OOF:
        assert f"OOF   {tile}" in first.output
    assert "skipped (not an image): README.md" in first.output
    assert "exit status 2" in first.output

    again = runner.invoke(main, ["submit", "--dir", str(section)])
    assert again.exit_code == 2 and "16 already recorded, 0 to score" in again.output
    assert lines(section) == list(recs.values())  # nothing rescored, nothing duplicated

    (section / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (section / "zz_empty.tif").write_bytes(b"")
    bad = runner.invoke(main, ["submit", "--dir", str(section)])
    assert bad.exit_code == 1, bad.output  # errors take precedence over OOF
    recs2 = {r["tile"]: r for r in lines(section)}
    assert len(recs2) == 18 and len(lines(section)) == 18
    assert recs2["zz_corrupt.png"]["verdict"] == "error" and recs2["zz_corrupt.png"]["reason"].startswith("zz_corrupt.png:")
    assert "empty file" in recs2["zz_empty.tif"]["reason"]
    assert "ERROR zz_corrupt.png:" in bad.output

    (section / "zz_corrupt.png").unlink()
    (section / "zz_empty.tif").write_bytes((section / "tile_r0_c0.png").read_bytes())  # a PNG under a .tif name
    fixed = runner.invoke(main, ["submit", "--dir", str(section)])
    assert "1 to score" in fixed.output  # only the errored tile still present is retried
    recs3 = {r["tile"]: r for r in lines(section)}
    assert recs3["zz_empty.tif"]["verdict"] == "ok"
    assert len(lines(section)) == len(recs3)  # the superseded error record was compacted away
    assert fixed.exit_code == 1  # the vanished corrupt tile's error is still on record


@pytest.mark.slow
def test_rescore_keeps_a_backup(section):
    runner = CliRunner()
    assert runner.invoke(main, ["submit", "--dir", str(section), "--batch", "4"]).exit_code == 2
    out = runner.invoke(main, ["submit", "--dir", str(section), "--rescore", "-a"])
    assert out.exit_code == 2 and "16 to score" in out.output and "ok    tile_r0_c0.png" in out.output
    assert len(list(section.glob("mhd-results.jsonl.*.bak"))) == 1 and len(lines(section)) == 16


@pytest.mark.slow
def test_killed_client_resumes_without_losing_or_duplicating(tmp_path):
    section = tmp_path / "big"
    for sub in "abc":
        shutil.copytree(EXAMPLE, section / sub, ignore=shutil.ignore_patterns("mhd-*", "README.md"))
    cmd = [sys.executable, "-m", "mhd.client", "submit", "--dir", str(section), "--batch", "1", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MHD_WARMUP": "4"})
    results = section / "mhd-results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 12:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(x) for x in results.read_bytes().split(b"\n") if x.strip()]
    assert 12 <= len(before) < 48
    with results.open("ab") as fh:  # as if the kill had landed mid-write
        fh.write(b'{"tile": "c/tile_r3_c3.bmp", "verdict": "o')

    rerun = CliRunner().invoke(main, ["submit", "--dir", str(section)])
    assert rerun.exit_code == 2, rerun.output
    assert f"{len(before)} already recorded, {48 - len(before)} to score" in rerun.output
    after = lines(section)
    assert len(after) == 48 and len({r["tile"] for r in after}) == 48
    assert after[: len(before)] == before  # every verdict given before the kill is kept as it was


def reimage(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    """Write ``data`` over ``path`` the way a microscope re-images a tile: a partial file renamed into place."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    st = path.stat()
    mtime_ns = mtime_ns or st.st_mtime_ns + 10**9  # a second later whatever the file system's clock resolution
    os.utime(part, ns=(mtime_ns, mtime_ns))
    part.replace(path)


@pytest.mark.slow
def test_submit_rescores_reimaged_tiles_and_only_those(section):
    runner = CliRunner()
    assert runner.invoke(main, ["submit", "--dir", str(section)]).exit_code == 2
    before = {r["tile"]: r for r in lines(section)}
    assert all(r["file_size"] == (section / t).stat().st_size for t, r in before.items())
    assert all(r["file_mtime_ns"] == (section / t).stat().st_mtime_ns for t, r in before.items())

    sharp = (section / "tile_r0_c0.png").read_bytes()
    for tile in EXPECTED_OOF - {"tile_r3_c1.png"}:
        reimage(section / tile, sharp)  # re-acquired in focus, under the same name
    same = section / "tile_r3_c1.png"
    reimage(same, same.read_bytes())  # the same size: the mtime alone tells the new version
    again = runner.invoke(main, ["submit", "--dir", str(section)])
    assert "16 already recorded (3 changed since: scored again), 3 to score" in again.output, again.output
    after = {r["tile"]: r for r in lines(section)}
    assert len(lines(section)) == 16  # the new records replaced the old ones
    for tile in EXPECTED_OOF:
        assert after[tile]["scored_at"] != before[tile]["scored_at"]
        assert after[tile]["file_mtime_ns"] == (section / tile).stat().st_mtime_ns
    for tile in EXPECTED_OOF - {"tile_r3_c1.png"}:
        assert after[tile]["verdict"] == "ok" and after[tile]["file_size"] == len(sharp)
    assert {t: r for t, r in after.items() if t not in EXPECTED_OOF} == {t: r for t, r in before.items() if t not in EXPECTED_OOF}
    assert again.exit_code == 2  # tile_r3_c1.png was re-imaged just as out of focus

    reimage(same, sharp)
    fixed = runner.invoke(main, ["submit", "--dir", str(section)])
    assert "(1 changed since: scored again), 1 to score" in fixed.output
    assert fixed.exit_code == 0, fixed.output  # every re-imaged tile in focus: the section is done without --rescore


@pytest.mark.slow
def test_records_written_before_file_versions_were_kept_are_not_rescored(section):
    runner = CliRunner()
    assert runner.invoke(main, ["submit", "--dir", str(section)]).exit_code == 2
    old = [{k: v for k, v in r.items() if k not in ("file_size", "file_mtime_ns")} for r in lines(section)]
    (section / "mhd-results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    reimage(section / "tile_r1_c2.png", (section / "tile_r0_c0.png").read_bytes())
    again = runner.invoke(main, ["submit", "--dir", str(section)])
    assert again.exit_code == 2 and "16 already recorded, 0 to score" in again.output, again.output
    assert lines(section) == old


def test_a_folder_without_tiles_is_an_error_not_all_ok(tmp_path, isolated_config):
    """A mistyped or not yet written section exited 0, "all ok", having checked nothing."""
    from click.testing import CliRunner

    from mhd.client.cli import main

    (tmp_path / "notes.txt").write_text("x")
    out = CliRunner().invoke(main, ["submit", "--dir", str(tmp_path)])
    assert out.exit_code == 1, out.output
    assert (
        f"Error: {tmp_path}: no tiles here (.bmp, .jpeg, .jpg, .png, .tif, .tiff files, in subfolders too); 1 other file(s)" in out.output
    )
    assert not (tmp_path / "mhd-results.jsonl").exists()


@pytest.mark.slow
def test_one_worker_and_two_give_the_same_verdicts(section, tmp_path, monkeypatch):
    """Results come back in another order with two workers; verdicts are given in the section's order, each against
    the tiles before it, so the number of workers does not change them."""
    runs = []
    for workers, batch in (("1", "1"), ("2", "1")):
        monkeypatch.setenv("MHD_WORKERS", workers)
        results = tmp_path / f"results-{workers}"
        out = CliRunner().invoke(main, ["submit", "--dir", str(section), "--batch", batch, "--results", str(results)])
        assert out.exit_code == 2, out.output
        log = results / section.name / "mhd-results.jsonl"
        runs.append({r["tile"]: (r["verdict"], r["kind"]) for r in map(json.loads, log.read_text().splitlines())})
    assert runs[0] == runs[1] and {t for t, (v, _) in runs[0].items() if v == "oof"} == EXPECTED_OOF
