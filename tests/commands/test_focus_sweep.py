"""``client focus-sweep``: working distances from names or a CSV, the fit on the example sweep, edge and errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, run
from mhd.client.discover import discover
from mhd.client.sweep import wd_table
from mhd.contracts.files import SWEEP_PLOT as PLOT_NAME

SWEEP = ROOT / "examples" / "wd_sweep"


def _make_sweep_module():
    spec = importlib.util.spec_from_file_location("make_sweep", ROOT / "examples" / "make_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The script that made the example: its true best WD and step (mm).
MADE = _make_sweep_module()


pytestmark = pytest.mark.usefixtures("isolated_config")


def copy_sweep(dest: Path, names=None) -> Path:
    dest.mkdir()
    for path in sorted(SWEEP.glob("sweep_wd*.png")):
        if names is None or path.name in names:
            shutil.copy(path, dest / path.name)
    return dest


def test_example_sweep_finds_the_true_working_distance(tmp_path):
    plot = tmp_path / "plot.png"
    out = run("focus-sweep", "--dir", SWEEP, "--json", "--plot", plot)
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    assert res["units"] == "mm" and res["status"] == "ok" and res["points"] == 5 and res["n_points"] == 5
    assert res["step"] == pytest.approx(MADE.STEP_MM)
    assert abs(res["best_wd"] - MADE.BEST_WD_MM) < MADE.STEP_MM / 4
    assert 0 < res["uncertainty"] < MADE.STEP_MM / 2 and res["r"] < -0.9 and res["peak_count"] > 0 and res["width"] > 0
    assert len(res["images"]) == 9 and all(im["error"] is None and im["features"] > 0 for im in res["images"])
    assert [im["wd"] for im in res["images"]] == sorted(im["wd"] for im in res["images"])
    assert res["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (SWEEP / PLOT_NAME).exists()


def test_text_output_and_the_default_plot_which_is_not_taken_for_an_image(tmp_path):
    sweep = copy_sweep(tmp_path / "sweep")
    first = run("focus-sweep", "--dir", sweep, "--points", "3")
    assert first.exit_code == 0, first.output
    best = next(ln for ln in first.output.splitlines() if ln.startswith("best WD"))
    assert best.startswith("best WD 5.00") and " mm " in best and "status ok, fit of 3 images" in best
    assert (sweep / PLOT_NAME).exists() and f"plot: {sweep / PLOT_NAME}" in first.output
    again = run("focus-sweep", "--dir", sweep, "--json")
    assert again.exit_code == 0 and len(json.loads(again.stdout)["images"]) == 9
    # nor by discovery, so submit and calibrate on the same folder do not score it either
    assert PLOT_NAME not in {t.id for t in discover(sweep).tiles} and len(discover(sweep).tiles) == 9


def test_peak_at_the_end_of_the_sweep_is_an_edge_with_exit_status_2(tmp_path):
    near = [p.name for p in sorted(SWEEP.glob("sweep_wd*.png")) if float(p.name[8:13]) <= 5.000]  # stops below the focus
    sweep = copy_sweep(tmp_path / "short", near)
    out = run("focus-sweep", "--dir", sweep)
    assert out.exit_code == 2, out.output
    assert "no best focus inside the sweep (status edge)" in out.output and "extend the sweep" in out.output
    assert "highest count at WD 5.0000 mm" in out.output
    res = json.loads(run("focus-sweep", "--dir", sweep, "--json").stdout)
    assert res["status"] == "edge" and res["best_wd"] == 5.0 and res["uncertainty"] is None


def test_working_distance_from_a_csv_needs_units(tmp_path):
    sweep = tmp_path / "csv"
    sweep.mkdir()
    table = tmp_path / "wd.csv"
    lines = ["file,wd"]
    for i, path in enumerate(sorted(SWEEP.glob("sweep_wd*.png"))):
        shutil.copy(path, sweep / f"img{i}.png")
        lines.append(f"img{i}.png,{(float(path.name[8:13]) - 5.0) * 1000:g}")  # micrometres from 5 mm
    table.write_text("\n".join(lines) + "\n")
    unitless = run("focus-sweep", "--dir", sweep, "--csv", table)
    assert unitless.exit_code == 1 and "no unit" in unitless.output
    out = run("focus-sweep", "--dir", sweep, "--csv", table, "--units", "um", "--json")
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    assert res["units"] == "um" and abs(res["best_wd"] - (MADE.BEST_WD_MM - 5.0) * 1000) < 2.0 / 4
    table.write_text("file,wd\nimg0.png,near\n")
    assert ":2: working distance 'near' is not a number" in run("focus-sweep", "--dir", sweep, "--csv", table, "--units", "um").output


def test_names_signs_units_and_their_errors(tmp_path):
    def folder(*names):
        d = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        for n in names:
            (d / n).write_bytes(b"x")
        return d

    table, unit = wd_table(folder("a_wd-3.0um.png", "a_wd+1.5UM.png", "a_wd2µm.tif", "crowd3um.png", PLOT_NAME))
    assert (table, unit) == ({"a_wd-3.0um.png": -3.0, "a_wd+1.5UM.png": 1.5, "a_wd2µm.tif": 2.0}, "um")
    assert wd_table(folder("wd=12.5.png", "wd_13.png"), units="nm") == ({"wd=12.5.png": 12.5, "wd_13.png": 13.0}, "nm")
    assert wd_table(folder("s_z5.png", "s_z6.png"), pattern=r"z(\d+)", units="mm")[0] == {"s_z5.png": 5.0, "s_z6.png": 6.0}
    with pytest.raises(ValueError, match="mixed units"):
        wd_table(folder("wd_5mm.png", "wd_5000um.png"))
    with pytest.raises(ValueError, match="some working distances have a unit"):
        wd_table(folder("wd_5mm.png", "wd_6.png"))
    with pytest.raises(ValueError, match="not --units um"):
        wd_table(folder("wd_5mm.png"), units="um")
    with pytest.raises(ValueError, match="needs a group"):
        wd_table(folder("wd_5mm.png"), pattern="wd")
    with pytest.raises(ValueError, match=r"no image has a working distance in its name \(e.g. wd_5.002mm.png; --pattern\)"):
        wd_table(folder("tile_r0_c0.png", "tile_r0_c1.png"))  # it said "working distances have no unit"


def test_a_bad_image_fails_alone_and_too_few_images_are_refused(tmp_path):
    sweep = copy_sweep(tmp_path / "bad")
    (sweep / "sweep_wd5.010mm.png").write_bytes(b"not a png")
    out = run("focus-sweep", "--dir", sweep, "--json")
    assert out.exit_code == 1
    res = json.loads(out.stdout)
    bad = [im for im in res["images"] if im["error"]]
    assert len(bad) == 1 and "sweep_wd5.010mm.png" in bad[0]["error"] and res["status"] == "ok"
    few = copy_sweep(tmp_path / "few", ["sweep_wd5.000mm.png", "sweep_wd5.002mm.png"])
    refused = run("focus-sweep", "--dir", few)
    assert refused.exit_code == 1 and "3 or more distinct working distances" in refused.output


def test_help_has_an_example():
    out = run("focus-sweep", "--help")
    assert out.exit_code == 0 and "Example:" in out.output and "client focus-sweep --dir examples/wd_sweep" in out.output
