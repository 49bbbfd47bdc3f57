"""``client submit`` end to end on the bundled example, with the local backend (the embedded default): resumed
after a kill, re-imaged tiles, one worker or two, the kinds of out-of-focus tile it prints; and as a new user meets
it: a large 16-bit tile, read-only sections, output into a log, a login it cannot prompt for.

Each run starts a real LocalExecutor (spawned endpoint engine workers) and
sends the tiles inline through the same serialization as the Globus backend.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import EXPECTED_OOF, copy_example, isbi_paths, read_results, write_results
from mhd.client import cli
from mhd.client.cli import main
from mhd.client.transport import MB
from mhd.functions import ASTIGMATISM_THRESHOLD

pytestmark = pytest.mark.usefixtures("isolated_config", "two_workers")


@pytest.fixture
def section(example_copy):
    return example_copy


@pytest.mark.portable
@pytest.mark.slow
def test_submit_example_then_resume_then_a_bad_tile(section):
    runner = CliRunner()
    first = runner.invoke(main, ["submit", "--dir", str(section)])
    assert first.exit_code == 2, first.output
    recs = {r["tile"]: r for r in read_results(section)}
    assert len(recs) == 16 and len(read_results(section)) == 16
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
    assert read_results(section) == list(recs.values())  # nothing rescored, nothing duplicated

    (section / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (section / "zz_empty.tif").write_bytes(b"")
    bad = runner.invoke(main, ["submit", "--dir", str(section)])
    assert bad.exit_code == 1, bad.output  # errors take precedence over OOF
    recs2 = {r["tile"]: r for r in read_results(section)}
    assert len(recs2) == 18 and len(read_results(section)) == 18
    assert recs2["zz_corrupt.png"]["verdict"] == "error" and recs2["zz_corrupt.png"]["reason"].startswith("zz_corrupt.png:")
    assert "empty file" in recs2["zz_empty.tif"]["reason"]
    assert "ERROR zz_corrupt.png:" in bad.output

    (section / "zz_corrupt.png").unlink()
    (section / "zz_empty.tif").write_bytes((section / "tile_r0_c0.png").read_bytes())  # a PNG under a .tif name
    fixed = runner.invoke(main, ["submit", "--dir", str(section)])
    assert "1 to score" in fixed.output  # only the errored tile still present is retried
    recs3 = {r["tile"]: r for r in read_results(section)}
    assert recs3["zz_empty.tif"]["verdict"] == "ok"
    assert len(read_results(section)) == len(recs3)  # the superseded error record was compacted away
    assert fixed.exit_code == 1  # the vanished corrupt tile's error is still on record


@pytest.mark.portable
@pytest.mark.slow
def test_rescore_keeps_a_backup(section):
    runner = CliRunner()
    assert runner.invoke(main, ["submit", "--dir", str(section), "--batch", "4"]).exit_code == 2
    out = runner.invoke(main, ["submit", "--dir", str(section), "--rescore", "-a"])
    assert out.exit_code == 2 and "16 to score" in out.output and "ok    tile_r0_c0.png" in out.output
    assert len(list(section.glob("mhd-results.jsonl.*.bak"))) == 1 and len(read_results(section)) == 16


@pytest.mark.slow
def test_killed_client_resumes_without_losing_or_duplicating(tmp_path):
    section = tmp_path / "big"
    for sub in "abc":
        copy_example(section / sub, readme=False)
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
    before = read_results(results)
    assert 12 <= len(before) < 48
    with results.open("ab") as fh:  # as if the kill had landed mid-write
        fh.write(b'{"tile": "c/tile_r3_c3.bmp", "verdict": "o')

    rerun = CliRunner().invoke(main, ["submit", "--dir", str(section)])
    assert rerun.exit_code == 2, rerun.output
    assert f"{len(before)} already recorded, {48 - len(before)} to score" in rerun.output
    after = read_results(section)
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
    before = {r["tile"]: r for r in read_results(section)}
    assert all(r["file_size"] == (section / t).stat().st_size for t, r in before.items())
    assert all(r["file_mtime_ns"] == (section / t).stat().st_mtime_ns for t, r in before.items())

    sharp = (section / "tile_r0_c0.png").read_bytes()
    for tile in EXPECTED_OOF - {"tile_r3_c1.png"}:
        reimage(section / tile, sharp)  # re-acquired in focus, under the same name
    same = section / "tile_r3_c1.png"
    reimage(same, same.read_bytes())  # the same size: the mtime alone tells the new version
    again = runner.invoke(main, ["submit", "--dir", str(section)])
    assert "16 already recorded (3 changed since: scored again), 3 to score" in again.output, again.output
    after = {r["tile"]: r for r in read_results(section)}
    assert len(read_results(section)) == 16  # the new records replaced the old ones
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
    old = [{k: v for k, v in r.items() if k not in ("file_size", "file_mtime_ns")} for r in read_results(section)]
    write_results(section, old)
    reimage(section / "tile_r1_c2.png", (section / "tile_r0_c0.png").read_bytes())
    again = runner.invoke(main, ["submit", "--dir", str(section)])
    assert again.exit_code == 2 and "16 already recorded, 0 to score" in again.output, again.output
    assert read_results(section) == old


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
        runs.append({r["tile"]: (r["verdict"], r["kind"]) for r in read_results(log)})
    assert runs[0] == runs[1] and {t for t, (v, _) in runs[0].items() if v == "oof"} == EXPECTED_OOF


# ------------------------------------------------------- kinds of out-of-focus tile


@pytest.mark.slow
def test_submit_prints_and_records_the_kind_and_angle(judged_section):
    section, output = judged_section
    recs = {r["tile"]: r for r in read_results(section)}
    kinds = {t: r["kind"] for t, r in recs.items() if r["verdict"] == "oof"}
    assert kinds == {"tile_r0_c2.png": "defocus", "tile_r1_c0.png": "astigmatism"}
    astig = recs["tile_r1_c0.png"]
    assert astig["astigmatism"] >= 0.4 and abs(astig["astigmatism_angle"] - 120) < 8
    assert all(r["astigmatism"] < ASTIGMATISM_THRESHOLD for t, r in recs.items() if t != "tile_r1_c0.png")
    printed = " ".join(output.split())  # rich wraps long lines at the terminal width
    said = re.search(rf"OOF tile_r1_c0.png {astig['density'] / 1000:.1f}k/MP astigmatism: blurrier along (\d+) deg", printed)
    assert said and abs(int(said.group(1)) - astig["blur_angle"]) <= 1 and abs(astig["blur_angle"] - 120) < 8, printed
    assert "OOF tile_r0_c2.png" in printed and "k/MP defocus: " in printed
    assert all(len(r["focus_map"]) == 4 for r in recs.values())


# ------------------------------------------------------- as a new user meets it: large tiles, read-only sections, logs, login


@pytest.mark.slow
def test_a_4096_square_16_bit_tiff_is_scored_on_the_local_engine_with_no_configuration(tmp_path):
    section = tmp_path / "section"
    section.mkdir()
    big = np.tile(iio.imread(isbi_paths()[0]).astype(np.uint16) * 257, (8, 8))  # 4096 x 4096, 16-bit
    iio.imwrite(section / "big.tif", big)
    assert (section / "big.tif").stat().st_size > 33 * MB  # over the 6 MB inline limit
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])
    assert out.exit_code == 0, out.output
    [rec] = read_results(section / "mhd-results.jsonl")
    assert rec["verdict"] == "ok" and rec["error"] is None and rec["shape"] == [4096, 4096] and rec["features"] > 0
    assert rec["transport"] == "disk"
    assert "transport disk" in out.output


@pytest.fixture
def read_only_section(tmp_path):
    """The example section on a read-only file system (root: a tmpfs remounted read-only), else without write permission."""
    section = tmp_path / "archive" / "section_042"
    section.parent.mkdir()
    if os.geteuid() == 0:
        section.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(section)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        try:
            copy_example(tmp_path / "src")
            for f in (tmp_path / "src").iterdir():
                shutil.copy(f, section / f.name)
            subprocess.run(["mount", "-o", "remount,ro", str(section)], check=True)
            yield section
        finally:
            subprocess.run(["umount", "-l", str(section)], check=False)
    else:
        copy_example(section)
        section.chmod(0o555)
        try:
            yield section
        finally:
            section.chmod(0o755)


@pytest.mark.slow
def test_a_read_only_section_is_scored_with_results_elsewhere(read_only_section, tmp_path):
    runner = CliRunner()
    refused = runner.invoke(cli.main, ["submit", "--dir", str(read_only_section)])
    assert refused.exit_code == 1
    assert "cannot write the results here" in refused.output and "give --results DIR" in refused.output
    assert "Traceback" not in refused.output and "Errno" not in refused.output

    out_root = tmp_path / "results"
    done = runner.invoke(cli.main, ["submit", "--dir", str(read_only_section), "--results", str(out_root)])
    assert done.exit_code == 2, done.output
    folder = out_root / "section_042"
    assert len(read_results(folder / "mhd-results.jsonl")) == 16
    assert (folder / "mhd-client.log").exists()
    assert f"results: {folder / 'mhd-results.jsonl'}" in done.output

    watched = runner.invoke(cli.main, ["watch", "--dir", str(read_only_section), "--results", str(out_root), "--idle-exit", "0"])
    assert watched.exit_code == 2, watched.output
    assert "16 tiles already recorded" in watched.output

    report = runner.invoke(cli.main, ["report", "--dir", str(read_only_section), "--results", str(out_root)])
    assert report.exit_code == 0, report.output
    assert (folder / "mhd-report" / "mhd-reacquire.txt").exists()


@pytest.mark.slow
def test_the_results_key_keeps_sections_of_the_same_name_apart(tmp_path, monkeypatch):
    one, two = copy_example(tmp_path / "a" / "s"), tmp_path / "b" / "s"
    two.mkdir(parents=True)
    monkeypatch.setenv("MHD_RESULTS", str(tmp_path / "results"))
    runner = CliRunner()
    assert runner.invoke(cli.main, ["submit", "--dir", str(one)]).exit_code == 2
    clash = runner.invoke(cli.main, ["submit", "--dir", str(two)])
    assert clash.exit_code == 1 and f"holds the results of {one.resolve()}" in clash.output


@pytest.mark.slow
def test_output_into_a_log_is_plain_unwrapped_lines(tmp_path):
    section = copy_example(tmp_path / "section")
    deep = section / ("acquisition_2024_03_01_overview_grid_" * 2) / "row_03"
    deep.mkdir(parents=True)
    long_id = f"{deep.relative_to(section).as_posix()}/tile_r1_c2_out_of_focus.png"
    shutil.copy(section / "tile_r1_c2.png", section / long_id)
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)], terminal_width=80)
    assert out.exit_code == 2, out.output
    text = out.output
    assert "\x1b[" not in text  # no colour codes in a log
    assert any(line.startswith("OOF") and long_id in line for line in text.splitlines())  # one line, whole
    assert f"oof\t{long_id}\tdefocus: " in text  # the summary: verdict<TAB>tile<TAB>reason
    assert "exit status 2 (out-of-focus tiles)" in text  # never split over two lines


def test_a_login_that_cannot_be_prompted_is_one_error_before_any_tile(tmp_path, monkeypatch):
    section = copy_example(tmp_path / "section")
    monkeypatch.setenv("MHD_ENDPOINT", "4b116d3c-1703-4f8f-9f6f-39921e5864df")
    monkeypatch.setenv("MHD_FUNCTION", "9d1c0a5e-0000-4000-8000-000000000001")
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])  # stdin is not a terminal
    assert out.exit_code == 1, out.output
    assert "not logged in to Globus, and there is no terminal here to log in from: run 'client login'" in out.output
    assert "https://" not in out.output and "Traceback" not in out.output
    results = section / "mhd-results.jsonl"
    assert not results.exists() or results.read_bytes() == b""  # no tile recorded because of it
    assert "scored" not in out.output
