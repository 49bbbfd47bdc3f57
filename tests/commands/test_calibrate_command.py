"""``client calibrate``: the fit of a focus series (from names or a CSV), its output, files and errors, the
detector parameters it holds for, and a tile of the series that the fit never saw judged by the stored rule exactly
as ``submit``, ``watch`` and ``report`` judge it. ``unit/test_calibration.py`` checks the fit's numbers."""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, ROOT, fake, run
from mhd.client.calibration import Calibration, rule_from_config
from mhd.client.cli import main
from mhd.client.config import load
from mhd.client.judge import Judge
from mhd.contracts.record import TileRecord
from mhd.functions.worker.remote import score_tiles

SERIES = ROOT / "examples" / "focus_series"

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_calibrate_fits_the_series_and_stores_it_by_name(tmp_path):
    series = tmp_path / "series"
    shutil.copytree(SERIES, series, ignore=shutil.ignore_patterns("mhd-*"))
    store = tmp_path / "cfg" / "calibrations" / "tem.json"
    out = run("calibrate", "--dir", series, "--max-defocus", "1.5", "--measure", "count", "--name", "tem")  # the paper's law
    assert out.exit_code == 0, out.output
    cal = Calibration.load(store)
    assert cal.measure == "count" and cal.n == 9 and cal.r < -0.95 and cal.slope < 0 and cal.max_defocus == 1.5 and cal.units == "um"
    assert cal.name == "tem" and cal.source == str(series.resolve()) and datetime.fromisoformat(cal.fitted).tzinfo is not None
    assert f"r = {cal.r:.4f}" in out.output and (series / "mhd-calibration.png").exists()
    assert f"stored calibration 'tem' in {store}" in out.output and "used only for the sections given --calibration tem" in out.output
    rerun = run("calibrate", "--dir", series, "--dry-run")  # its own plot is not taken for an image; no name needed
    assert rerun.exit_code == 0 and "9 images" in rerun.output and "stored" not in rerun.output
    rule = rule_from_config(load(), calibration="tem")  # what submit/watch/report judge with, given --calibration tem
    assert rule.calibration == cal and rule.calibration_path == str(store)
    assert Judge(rule).add(TileRecord.from_json(fake("far.png", math.exp(cal.intercept + cal.slope * 2.0))))[0].verdict == "oof"
    assert rule_from_config(load()).calibration is None  # stored, but chosen for no section
    assert rule_from_config(load(), use_calibration=False, calibration=None).calibration is None


@pytest.mark.slow
def test_a_calibration_holds_only_for_the_detector_parameters_it_was_fitted_with(tmp_path, monkeypatch):
    """A count law fitted at one threshold does not hold at another: submit and watch refuse it, naming the
    parameter, instead of judging by it; the same options pass. A file that does not record its parameters (an
    earlier version's) is used with a warning."""

    monkeypatch.setenv("MHD_WORKERS", "1")
    series = tmp_path / "series"
    shutil.copytree(SERIES, series, ignore=shutil.ignore_patterns("mhd-*"))
    assert run("calibrate", "--dir", series, "--measure", "count", "--threshold", "0.1", "--name", "t01").exit_code == 0
    store = tmp_path / "cfg" / "calibrations" / "t01.json"
    cal = Calibration.load(store)
    shaping = {"n_bin", "min_t", "max_t", "threshold", "noise_k", "noise_margin", "polarity", "tol", "saturation"}
    assert set(cal.params) == shaping and cal.params["threshold"] == 0.1 and cal.params["n_bin"] == 16
    section = tmp_path / "section"
    section.mkdir()
    for tile in sorted(EXAMPLE.glob("*.png"))[:2]:
        shutil.copy(tile, section / tile.name)
    for command in ("submit", "watch"):
        refused = run(command, "--dir", section, "--calibration", "t01", *(["--idle-exit", "1"] if command == "watch" else []))
        assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
        assert "was fitted with other detector parameters: threshold=0.1 (this run: 0.05)" in refused.output
        assert list(section.glob("mhd-*")) == []  # refused before anything was scored or recorded
    same = run("submit", "--dir", section, "--threshold", "0.1", "--calibration", "t01")
    assert same.exit_code in (0, 2) and "fitted with other" not in same.output, same.output
    records = [json.loads(line) for line in (section / "mhd-results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r.get("error") is None and r["features"] > 0 for r in records)  # scored with all of them
    store.write_text(json.dumps({**json.loads(store.read_text()), "params": {}}))  # as earlier versions wrote it
    old = run("submit", "--dir", section)  # the calibration recorded for the section
    assert old.exit_code in (0, 2) and "does not record the detector parameters" in old.output, old.output
    assert "the default threshold was 0.10, now 0.05" in old.output
    store.write_text(json.dumps({**json.loads(store.read_text()), "params": None}))  # hand-edited
    assert Calibration.load(store).params == {}
    store.write_text(json.dumps({**json.loads(store.read_text()), "params": [0.1]}))
    broken = run("submit", "--dir", section)
    assert broken.exit_code == 1 and "params must be an object" in broken.output and "Traceback" not in broken.output


def test_calibrate_from_csv_and_its_errors(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    names = sorted(p.name for p in SERIES.glob("focus_*.png"))
    for i, name in enumerate(names):
        shutil.copy(SERIES / name, series / f"img{i}.png")
    table = tmp_path / "defocus.csv"
    with table.open("w") as fh:
        fh.write("file,defocus\n")
        for i, name in enumerate(names):
            fh.write(f"img{i}.png,{float(name.split('df')[1][:-6])}\n")
    out = run("calibrate", "--dir", series, "--csv", table, "--out", tmp_path / "c.json")
    assert out.exit_code == 0, out.output
    blur = Calibration.load(tmp_path / "c.json")  # the default law: blur^2 = a + b defocus^2
    assert blur.measure == "blur" and blur.r > 0.95 and blur.slope > 0
    bad = run("calibrate", "--dir", series, "--dry-run")  # no defocus in these names
    assert bad.exit_code == 1 and "at least 3" in bad.output
    assert "needs a group" in run("calibrate", "--dir", series, "--pattern", "df", "--dry-run").output
    table.write_text("file,defocus\nimg0.png,near\n")
    assert ":2: defocus 'near' is not a number" in run("calibrate", "--dir", series, "--csv", table, "--dry-run").output
    with table.open("w") as fh:  # one image of the series is corrupt: fitted without it, stored, exit status 1
        fh.write("file,defocus\n" + "".join(f"img{i}.png,{float(name.split('df')[1][:-6])}\n" for i, name in enumerate(names)))
    (series / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n corrupt")
    partial = run("calibrate", "--dir", series, "--csv", table, "--out", tmp_path / "p.json")
    assert partial.exit_code == 1 and f"{len(names) - 1} images: blur^2" in partial.output
    assert "1 image(s) could not be scored (above) and were left out of the fit" in partial.output
    assert Calibration.load(tmp_path / "p.json").n == len(names) - 1


def test_a_real_defocused_tile_is_judged_oof_by_the_fitted_rule(tmp_path):
    """Calibrate on the example series without its +4 um image, then judge that image and the focused one."""
    series = tmp_path / "series"
    shutil.copytree(SERIES, series, ignore=shutil.ignore_patterns("mhd-*", "focus_df+4.0um.png"))
    out = CliRunner().invoke(main, ["calibrate", "--dir", str(series), "--name", "tem"])
    assert out.exit_code == 0, out.output
    rule = rule_from_config(load(), calibration="tem")  # the stored calibration, as submit/watch/report load it
    cal = rule.calibration
    assert cal.n == 8 and cal.max_defocus == 1.0  # default: the series' first step out of focus
    judge = Judge(rule)
    far, focused = score_tiles(
        [{"name": p.name, "data": p.read_bytes()} for p in (SERIES / "focus_df+4.0um.png", SERIES / "focus_df+0.0um.png")]
    )
    [far], [focused] = judge.add(TileRecord.from_json(far)), judge.add(TileRecord.from_json(focused))  # no warm-up with a calibration
    assert far.verdict == "oof" and far.kind == "defocus", far.reason
    assert 2.5 < far.defocus < 6.0  # estimated |defocus| of a 4 um tile, in um
    assert focused.verdict == "ok" and focused.defocus < 0.5, focused.reason
