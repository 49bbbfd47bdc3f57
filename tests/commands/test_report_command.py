"""``client report`` on a results log: figures, the CSV, the list of tiles to re-acquire and what to fix in each."""

from __future__ import annotations

import csv

import pytest

from conftest import fake, run, write_results

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_report_writes_figures_csv_and_reacquire_list(tmp_path):
    section = tmp_path / "s"
    records = [fake(f"tile_r{r}_c{c}.png", 1.4e4) for r in range(3) for c in range(3)]
    records[2] = fake("tile_r0_c2.png", 3e3, "oof", reason="x")
    records[4] = fake("tile_r1_c1.png", 1.35e4 * 0.6)  # recorded ok early on; the whole section says oof
    records[5] = {
        "tile": "tile_r1_c2.png",
        "verdict": "error",
        "reason": "tile_r1_c2.png: cannot decode",
        "error": "tile_r1_c2.png: cannot decode",
        "features": None,
        "density": None,
    }
    records[6] = fake("tile_r2_c0.png", 50, "empty", contrast=1.0)
    write_results(section, records)
    out = run("report", "--dir", section)
    assert out.exit_code == 0, out.output
    folder = section / "mhd-report"
    for name in ("density.png", "montage.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["tile"]: r for r in csv.DictReader((folder / "mhd-results.csv").open())}
    assert len(rows) == 9 and rows["tile_r1_c1.png"]["verdict"] == "ok" and rows["tile_r1_c1.png"]["section_verdict"] == "oof"
    assert rows["tile_r2_c0.png"]["section_verdict"] == "empty" and rows["tile_r0_c2.png"]["row"] == "0"
    assert (folder / "mhd-reacquire.txt").read_text().splitlines() == [
        "tile_r0_c2.png\tdefocus",
        "tile_r1_c1.png\tdefocus",
        "tile_r1_c2.png\terror",
    ]
    assert "3 tile(s) to re-acquire" in out.output


def test_report_without_positions_and_without_results(tmp_path):
    section = tmp_path / "s"
    write_results(section, [fake(f"img{i}.png", 1e4) for i in range(5)])
    out = run("report", "--dir", section)
    assert out.exit_code == 0 and not (section / "mhd-report" / "montage.png").exists()
    assert (section / "mhd-report" / "mhd-reacquire.txt").read_text() == ""
    (tmp_path / "empty").mkdir()
    none = run("report", "--dir", tmp_path / "empty")
    assert none.exit_code == 1 and "no results yet" in none.output
    assert f"run 'client submit --dir {tmp_path / 'empty'}' first" in none.output
    # results kept elsewhere: the submit it suggests writes them there
    elsewhere = run("report", "--dir", tmp_path / "empty", "--results", tmp_path / "res")
    assert (
        elsewhere.exit_code == 1
        and f"run 'client submit --dir {tmp_path / 'empty'} --results {tmp_path / 'res'}' first" in elsewhere.output
    )
