"""``client report`` on a results log: figures, the CSV, the list of tiles to re-acquire and what to fix in each."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import fake, read_results, run, scored_cells, write_results
from mhd.client.calibration import Calibration
from mhd.client.cli import main
from mhd.client.judge import Judge
from mhd.client.report import section_verdicts
from mhd.client.rule import Rule
from mhd.client.wording import describe
from mhd.contracts.record import TileRecord

pytestmark = pytest.mark.usefixtures("isolated_config")


@pytest.mark.portable
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
        "tile_r1_c2.png\terror: cannot decode",
    ]
    assert "3 tile(s) to re-acquire" in out.output


@pytest.mark.parametrize(
    ("rule", "first"),
    [({}, {"density": 1.4e4, "blur": 2.5, "blur_err": 0.02}), ({"focus_measure": "count"}, {"density": 3e3})],
    ids=["blur", "count"],
)
def test_report_judges_an_early_tile_in_hindsight_not_as_it_streamed(tmp_path, rule, first):
    """The section's first tile is out of focus: judged as it streamed in (the section so far is itself) it is ok,
    against the whole section it is oof; the report's section_verdict is the latter."""
    from mhd.client.report import make_report

    chosen = Rule(**rule)
    section = tmp_path / "s"
    rows = [fake("tile_r0_c0.png", **first)] + [
        fake(f"tile_r{i // 3}_c{i % 3}.png", 1.4e4 + 100 * i, blur=0.8 + 0.01 * i, blur_err=0.02) for i in range(1, 9)
    ]
    write_results(section, rows)
    records = [TileRecord.from_json(r) for r in rows]
    streaming = Judge(replace(chosen, warmup=1))
    as_streamed = [out for rec in records for out in streaming.add(replace(rec, verdict=None, reason=None))]
    assert as_streamed[0].tile == "tile_r0_c0.png" and as_streamed[0].verdict == "ok"  # the case the hindsight is for
    judged, _ = section_verdicts(records, chosen)
    assert judged["tile_r0_c0.png"].verdict == "oof" and judged["tile_r0_c0.png"].kind == "defocus"
    assert all(judged[r["tile"]].verdict == "ok" for r in rows[1:])
    rep = make_report(section, chosen)
    csv_rows = {r["tile"]: r for r in csv.DictReader(rep.csv.open())}
    assert csv_rows["tile_r0_c0.png"]["verdict"] == "ok" and csv_rows["tile_r0_c0.png"]["section_verdict"] == "oof"
    assert rep.reacquire.read_text().splitlines() == ["tile_r0_c0.png\tdefocus"]


def test_report_without_positions_and_without_results(tmp_path):
    section = tmp_path / "s"
    write_results(section, [fake(f"img{i}.png", 1e4) for i in range(5)])
    out = run("report", "--dir", section)
    assert out.exit_code == 0 and not (section / "mhd-report" / "montage.png").exists()
    assert "no montage.png: the tile names carry no r<row>_c<col>" in out.output
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


# ------------------------------------------------------- kinds of out-of-focus tile


def test_a_calibrated_estimate_keeps_its_units_in_a_report_made_without_the_calibration(tmp_path):
    cal = Calibration(intercept=math.log(1e4), slope=-0.5, r=-0.99, n=9, units="um", max_defocus=1.0)
    far = Judge(Rule(calibration=cal)).add(scored_cells("tile_r0_c0.png", 1e4 * math.exp(-1.0)))[0]  # 2 um
    assert (far.defocus, far.defocus_units) == (2.0, "um") and describe(far) == "defocus, est. 2 um"
    assert TileRecord.from_json(far.to_json()).defocus_units == "um"  # in the results log
    rejudged = Judge(Rule(warmup=1)).add(far)[0]  # judged again without a calibration: the estimate keeps its units
    assert (rejudged.defocus, rejudged.defocus_units) == (2.0, "um")
    section = tmp_path / "s"
    others = [dict(scored_cells(f"tile_r1_c{c}.png", 1.4e4).to_json(), verdict="ok") for c in range(4)]
    write_results(section, [far.to_json(), *others])
    out = CliRunner().invoke(main, ["report", "--dir", str(section)])  # no calibration stored
    assert out.exit_code == 0, out.output
    assert (section / "mhd-report" / "mhd-reacquire.txt").read_text().splitlines() == ["tile_r0_c0.png\tdefocus, est. 2 um"]
    rows = list(csv.DictReader((section / "mhd-report" / "mhd-results.csv").open()))
    assert (rows[0]["defocus"], rows[0]["defocus_units"]) == ("2.0", "um")


def test_report_lists_what_to_fix_and_kinds_in_the_csv(tmp_path):
    section = tmp_path / "s"
    records = [dict(scored_cells(f"tile_r0_c{c}.png", 1.4e4).to_json(), verdict="ok", kind=None, reason="") for c in range(6)]
    records[1] = dict(
        scored_cells("tile_r0_c1.png", 1.3e4, astigmatism=0.45, angle=33.6).to_json(),
        verdict="oof",
        kind="astigmatism",
        reason="astigmatism: ...",
    )
    records[2] = dict(
        scored_cells("tile_r0_c2.png", 0.3e4).to_json(), verdict="oof", reason="55% below section median"
    )  # judged before kinds existed
    records[3] = {
        "tile": "tile_r0_c3.png",
        "verdict": "error",
        "reason": "tile_r0_c3.png: cannot decode",
        "error": "tile_r0_c3.png: cannot decode",
        "features": None,
        "density": None,
    }
    write_results(section, records)
    out = CliRunner().invoke(main, ["report", "--dir", str(section)])
    assert out.exit_code == 0, out.output
    folder = section / "mhd-report"
    assert (folder / "mhd-reacquire.txt").read_text().splitlines() == [
        "tile_r0_c1.png\tastigmatism 34 deg",
        "tile_r0_c2.png\tdefocus",
        "tile_r0_c3.png\terror: cannot decode",
    ]
    rows = {r["tile"]: r for r in csv.DictReader((folder / "mhd-results.csv").open())}
    assert (rows["tile_r0_c1.png"]["kind"], rows["tile_r0_c1.png"]["section_kind"], rows["tile_r0_c1.png"]["astigmatism_angle"]) == (
        "astigmatism",
        "astigmatism",
        "33.6",
    )
    assert (rows["tile_r0_c2.png"]["kind"], rows["tile_r0_c2.png"]["section_kind"]) == ("", "defocus")
    assert rows["tile_r0_c0.png"]["kind"] == "" and np.array(json.loads(rows["tile_r0_c0.png"]["focus_map"])) == pytest.approx(
        1.0, abs=0.02
    )
    assert json.loads(rows["tile_r0_c2.png"]["focus_map"])[0][0] == pytest.approx(0.3 / 1.4, abs=0.02)
    assert (folder / "focus-maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "focus-maps.png" in out.output


def test_report_of_the_scored_section_says_what_to_fix(judged_section):
    section, _ = judged_section
    folder = section / "mhd-report"
    angle = next(r for r in read_results(section) if "tile_r1_c0" in r["tile"])["astigmatism_angle"]
    assert (folder / "mhd-reacquire.txt").read_text().splitlines() == [
        "tile_r0_c2.png\tdefocus",
        f"tile_r1_c0.png\tastigmatism {angle:.0f} deg",
    ]
    rows = {r["tile"]: r for r in csv.DictReader((folder / "mhd-results.csv").open())}
    assert rows["tile_r1_c0.png"]["kind"] == rows["tile_r1_c0.png"]["section_kind"] == "astigmatism"
    assert all((folder / name).stat().st_size > 1000 for name in ("density.png", "montage.png", "focus-maps.png"))
