"""Kinds of out-of-focus verdicts (defocus, astigmatism, partial), focus maps, and how submit and report show them."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import isbi_paths
from mhd.client import config as config_mod
from mhd.client.cli import main
from mhd.client.verdicts import Calibration, Judge, Rule, describe, focus_map, rule_from_config
from mhd.functions import ASTIGMATISM_THRESHOLD
from mhd.functions.simulate import defocus_image
from mhd.functions.worker.record import TileRecord

SIDE = 256
CELL_MP = (SIDE / 4) ** 2 / 1e6


pytestmark = pytest.mark.usefixtures("isolated_config")


def scored(tile, density, astigmatism=None, angle=None, cells=None, **extra):
    """A score_tiles result: ``cells`` is a (4, 4) array of cell densities (default: uniform)."""
    cells = np.full((4, 4), density) if cells is None else np.asarray(cells, float)
    grid = np.round(cells * CELL_MP).astype(int).tolist()
    return TileRecord.from_json(
        {
            "tile": tile,
            "features": int(density * SIDE * SIDE / 1e6),
            "density": density,
            "grid": grid,
            "shape": [SIDE, SIDE],
            "astigmatism": astigmatism,
            "astigmatism_angle": angle,
            "error": None,
            **extra,
        }
    )


def warm_judge(rule=Rule(warmup=1), n=8, density=1e4):
    return Judge(rule, prior=[replace(scored(f"t{i}", density), verdict="ok") for i in range(n)])


# ------------------------------------------------------------------ rules


def test_astigmatism_at_the_threshold_is_oof_even_with_a_normal_count():
    judge = warm_judge()
    rec = judge.add(scored("astig", 0.95e4, astigmatism=0.2, angle=34.4))[0]
    assert (rec.verdict, rec.kind) == ("oof", "astigmatism")
    assert rec.reason == "astigmatism: 0.20 >= 0.2, blur along 34 deg"
    assert describe(rec) == "astigmatism 34 deg"
    below = judge.add(scored("round", 0.95e4, astigmatism=0.19, angle=34.4))[0]
    assert (below.verdict, below.kind, below.reason) == ("ok", None, "")


def axes(blur, major, minor, angle):
    """The blur fields of a record whose point spread function has these axes (px) and direction (degrees)."""
    return dict(blur=blur, blur_err=0.02, blur_major=major, blur_minor=minor, blur_angle=angle)


def test_anisotropy_the_section_shares_is_not_astigmatism_and_a_tile_s_own_is():
    """The blur rule compares each tile's blur along its two axes with the section's: an anisotropy every tile has
    (a slow scan that resolves its slow axis a little worse) is the section's, not a stigmator error; an elliptical
    probe's, which stands out of it, is."""
    rng = np.random.default_rng(0)
    section = [
        replace(scored(f"t{i}", 1e4, **axes(b, np.sqrt(b * b + 0.15), np.sqrt(b * b - 0.15), 92.0 + rng.normal(0, 3))), verdict="ok")
        for i, b in enumerate(rng.normal(0.9, 0.03, 20))
    ]
    judge = Judge(Rule(warmup=1), prior=section)
    ref = judge.blur_reference()
    assert abs(ref.delta) == pytest.approx(0.15, abs=0.02) and ref.n == 20
    shared = judge.add(scored("slow_scan", 1e4, **axes(0.92, 1.0, 0.84, 91.0)))[0]
    assert (shared.verdict, shared.kind) == ("ok", None)
    # a 3:1 elliptical disk of 3 px at 30 deg adds 2.25 and 0.25 px^2 along its axes to 0.81
    astig = judge.add(scored("astig", 1e4, **axes(np.sqrt(0.81 + 1.25), np.sqrt(0.81 + 2.25), np.sqrt(0.81 + 0.25), 30.0)))[0]
    assert (astig.verdict, astig.kind) == ("oof", "astigmatism")
    said = re.match(r"astigmatism: blurrier along (\d+) deg \(adjust the stigmators\)", astig.reason)
    assert said and abs(int(said.group(1)) - 30) < 5, astig.reason  # the section's own anisotropy taken off
    assert describe(astig) == f"astigmatism {astig.blur_angle:.0f} deg"
    # a round 3 px disk adds 2.25 px^2 in every direction: defocus
    round_ = judge.add(scored("round", 1e4, **axes(np.sqrt(0.81 + 2.25), np.sqrt(0.81 + 2.25 + 0.15), np.sqrt(0.81 + 2.25 - 0.15), 92.0)))[
        0
    ]
    assert (round_.verdict, round_.kind) == ("oof", "defocus") and round_.reason.startswith("defocus: blurrier than the section")
    older = judge.add(scored("older_worker", 1e4, astigmatism=0.26, angle=94.0))[0]  # no blur field: strength alone
    assert older.kind == "astigmatism"


def test_the_limit_follows_the_section_s_spread_and_the_tile_s_own_error():
    """A homogeneous section flags subtler blur than a varied one; a tile measured less surely needs more."""

    def section(spread):
        rng = np.random.default_rng(1)
        return Judge(
            Rule(warmup=1),
            prior=[replace(scored(f"t{i}", 1e4, **axes(b, b, b, None)), verdict="ok") for i, b in enumerate(rng.normal(1.0, spread, 40))],
        )

    tight, loose = section(0.03).blur_reference(), section(0.4).blur_reference()
    rule = Rule()
    assert tight.limit(tight.error, rule) == pytest.approx(rule.blur_max**2 * (1 + 8 / 40))  # the floor
    assert loose.limit(loose.error, rule) > 2 * tight.limit(tight.error, rule)
    assert tight.limit(1.0, rule) > tight.limit(tight.error, rule)  # a noisier tile
    # 1.3 px against 1.0: 0.83 px added in quadrature: flagged in the tight section only
    tile = scored("x", 1e4, **axes(1.3, 1.3, 1.3, None))
    assert section(0.03).add(tile)[0].verdict == "oof"
    assert section(0.4).add(tile)[0].verdict == "ok"


def test_astigmatism_takes_precedence_over_a_low_count_and_over_partial_cells():
    judge = warm_judge()
    low = judge.add(scored("astig_low", 0.4e4, astigmatism=0.55, angle=120.0))[0]
    assert (low.verdict, low.kind) == ("oof", "astigmatism") and "blur along 120 deg" in low.reason
    cells = np.full((4, 4), 1.1e4)
    cells[:, 3] = 0.1e4
    part = judge.add(scored("astig_part", 0.9e4, astigmatism=0.3, angle=5.0, cells=cells))[0]
    assert part.kind == "astigmatism"


def test_without_a_measure_the_count_decides_defocus_or_partial():
    judge = warm_judge()
    for value in (None, math.nan):  # tiles < ~300 px, or an older endpoint / NaN from a hand-made result
        rec = judge.add(scored(f"low_{value}", 0.4e4, astigmatism=value))[0]
        assert (rec.verdict, rec.kind) == ("oof", "defocus") and rec.reason.startswith("defocus: ") and "below section median" in rec.reason
        assert describe(rec) == "defocus"
    cells = np.full((4, 4), 1.1e4)
    cells[:, 3] = 0.1e4
    part = judge.add(scored("part", 0.9e4, astigmatism=0.05, cells=cells))[0]
    assert (part.verdict, part.kind, part.reason) == ("oof", "partial", "partial: cells 0,3 1,3 2,3 3,3 low")
    assert describe(part) == part.reason


def test_empty_ok_and_error_have_no_kind():
    judge = Judge(Rule(warmup=1), prior=[replace(scored(f"t{i}", 1e4), verdict="ok") for i in range(8)])
    resin = judge.add(scored("resin", 50, astigmatism=0.9, angle=10.0, contrast=1.0))[0]  # no tissue: nothing to stigmate
    assert (resin.verdict, resin.kind, resin.focus_map) == ("empty", None, None)
    ok = judge.add(scored("fine", 1.02e4, astigmatism=0.0))[0]
    assert (ok.verdict, ok.kind) == ("ok", None)
    err = judge.add(TileRecord.failed("x", "cannot decode"))[0]
    assert (err.verdict, err.kind, err.focus_map) == ("error", None, None) and describe(err) == "error"


def test_astigmatism_max_is_a_config_key_defaulting_to_the_detector_threshold(monkeypatch):
    assert config_mod.KEYS["astigmatism_max"].default == ASTIGMATISM_THRESHOLD == Rule().astigmatism_max
    assert rule_from_config(config_mod.load()).astigmatism_max == ASTIGMATISM_THRESHOLD
    monkeypatch.setenv("MHD_ASTIGMATISM_MAX", "0.6")
    rule = rule_from_config(config_mod.load())
    assert rule.astigmatism_max == 0.6
    assert warm_judge(Rule(warmup=1, astigmatism_max=0.6)).add(scored("a", 1e4, astigmatism=0.5, angle=3.0))[0].verdict == "ok"
    monkeypatch.setenv("MHD_ASTIGMATISM_MAX", "strong")
    with pytest.raises(ValueError, match="astigmatism_max"):
        config_mod.load()


def test_focus_map_is_cell_density_relative_to_the_baseline():
    cells = np.full((4, 4), 2e4)
    cells[1, 2] = 0.5e4
    rec = warm_judge(density=2e4).add(scored("m", 1.9e4, cells=cells))[0]
    fmap = np.array(rec.focus_map)
    assert fmap.shape == (4, 4) and fmap[1, 2] == pytest.approx(0.25, abs=0.02)
    assert np.delete(fmap.ravel(), 6) == pytest.approx(1.0, abs=0.02)
    assert focus_map(TileRecord("x", grid=[[]], shape=[SIDE, SIDE]), 0.0) is None and focus_map(scored("x", 1e4), math.nan) is None


def test_calibrated_kinds_and_map_relative_to_the_in_focus_density():
    cal = Calibration(intercept=math.log(1e4), slope=-0.5, r=-0.99, n=9, units="um", max_defocus=1.0)
    judge = Judge(Rule(calibration=cal))
    far = judge.add(scored("far", 1e4 * math.exp(-1.0)))[0]  # 2 um
    assert far.kind == "defocus" and far.reason.startswith("defocus: est. defocus 2 um") and describe(far, "um") == "defocus, est. 2 um"
    assert np.array(far.focus_map) == pytest.approx(math.exp(-1.0), abs=0.01)
    assert judge.add(scored("astig", 0.9e4, astigmatism=0.4, angle=90.0))[0].kind == "astigmatism"


def test_a_calibrated_estimate_keeps_its_units_in_a_report_made_without_the_calibration(tmp_path):
    cal = Calibration(intercept=math.log(1e4), slope=-0.5, r=-0.99, n=9, units="um", max_defocus=1.0)
    far = Judge(Rule(calibration=cal)).add(scored("tile_r0_c0.png", 1e4 * math.exp(-1.0)))[0]  # 2 um
    assert (far.defocus, far.defocus_units) == (2.0, "um") and describe(far) == "defocus, est. 2 um"
    assert TileRecord.from_json(far.to_json()).defocus_units == "um"  # in the results log
    rejudged = Judge(Rule(warmup=1)).add(far)[0]  # judged again without a calibration: the estimate keeps its units
    assert (rejudged.defocus, rejudged.defocus_units) == (2.0, "um")
    section = tmp_path / "s"
    others = [dict(scored(f"tile_r1_c{c}.png", 1.4e4).to_json(), verdict="ok") for c in range(4)]
    write_results(section, [far.to_json(), *others])
    out = CliRunner().invoke(main, ["report", "--dir", str(section)])  # no calibration stored
    assert out.exit_code == 0, out.output
    assert (section / "mhd-report" / "mhd-reacquire.txt").read_text().splitlines() == ["tile_r0_c0.png\tdefocus, est. 2 um"]
    rows = list(csv.DictReader((section / "mhd-report" / "mhd-results.csv").open()))
    assert (rows[0]["defocus"], rows[0]["defocus_units"]) == ("2.0", "um")


# ------------------------------------------------------------ report, unit


def write_results(section: Path, records: list[dict]) -> None:
    section.mkdir(parents=True, exist_ok=True)
    (section / "mhd-results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_lists_what_to_fix_and_kinds_in_the_csv(tmp_path):
    section = tmp_path / "s"
    records = [dict(scored(f"tile_r0_c{c}.png", 1.4e4).to_json(), verdict="ok", kind=None, reason="") for c in range(6)]
    records[1] = dict(
        scored("tile_r0_c1.png", 1.3e4, astigmatism=0.45, angle=33.6).to_json(),
        verdict="oof",
        kind="astigmatism",
        reason="astigmatism: ...",
    )
    records[2] = dict(
        scored("tile_r0_c2.png", 0.3e4).to_json(), verdict="oof", reason="55% below section median"
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
        "tile_r0_c3.png\terror",
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


# ------------------------------------------------- submit + report, real detector


#: The test section: (slice, defocus um, astigmatism um, astigmatism axis deg) per tile, 384 x 384 px.
TILES = {
    "tile_r0_c0.png": (1, 0.0, 0.0, 0.0),
    "tile_r0_c1.png": (4, 0.0, 0.0, 0.0),
    "tile_r0_c2.png": (7, 3.0, 0.0, 0.0),  # defocused
    "tile_r1_c0.png": (14, 1.0, 2.0, 30.0),  # astigmatic: line foci 2 um apart; blur longest across the axis, at 120 deg
    "tile_r1_c1.png": (17, 0.0, 0.0, 0.0),
    "tile_r1_c2.png": (23, 0.0, 0.0, 0.0),
    "tile_r2_c0.png": (26, 0.0, 0.0, 0.0),
    "tile_r2_c1.png": (29, 0.0, 0.0, 0.0),
}


@pytest.fixture(scope="module")
def judged_section(tmp_path_factory):
    """A small section scored by ``client submit`` (local backend), then ``client report``: (folder, submit output)."""
    section = tmp_path_factory.mktemp("kinds") / "section"
    section.mkdir()
    paths = isbi_paths()
    for name, (i, dz, astig, axis) in TILES.items():
        image = iio.imread(paths[i])[:384, :384]
        iio.imwrite(section / name, defocus_image(image, dz, astigmatism=astig, astigmatism_angle=axis, dose=200.0, rng=i))
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MHD_")]:
            mp.delenv(key)
        mp.setenv("MHD_CONFIG", str(section.parent / "cfg" / "config.json"))
        mp.setenv("MHD_WORKERS", "2")
        mp.setenv("MHD_WARMUP", "6")
        submit = CliRunner().invoke(main, ["submit", "--dir", str(section)])
        report = CliRunner().invoke(main, ["report", "--dir", str(section)])
    assert submit.exit_code == 2, submit.output
    assert report.exit_code == 0, report.output
    return section, submit.output


@pytest.mark.slow
def test_submit_prints_and_records_the_kind_and_angle(judged_section):
    section, output = judged_section
    recs = {r["tile"]: r for r in map(json.loads, (section / "mhd-results.jsonl").read_text().splitlines())}
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


def test_report_of_the_scored_section_says_what_to_fix(judged_section):
    section, _ = judged_section
    folder = section / "mhd-report"
    angle = json.loads(next(ln for ln in (section / "mhd-results.jsonl").read_text().splitlines() if "tile_r1_c0" in ln))[
        "astigmatism_angle"
    ]
    assert (folder / "mhd-reacquire.txt").read_text().splitlines() == [
        "tile_r0_c2.png\tdefocus",
        f"tile_r1_c0.png\tastigmatism {angle:.0f} deg",
    ]
    rows = {r["tile"]: r for r in csv.DictReader((folder / "mhd-results.csv").open())}
    assert rows["tile_r1_c0.png"]["kind"] == rows["tile_r1_c0.png"]["section_kind"] == "astigmatism"
    assert all((folder / name).stat().st_size > 1000 for name in ("density.png", "montage.png", "focus-maps.png"))
