"""The ``client`` command line: help, exit codes, score, config, endpoint configure, report, calibrate."""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from mhd import __version__
from mhd.client.cli import EXIT_USAGE, main
from mhd.client.config import load
from mhd.client.report import section_verdicts
from mhd.client.rule import Rule
from mhd.client.verdicts import Calibration, Judge, rule_from_config
from mhd.functions import cuda_available
from mhd.functions.worker.record import RESULT_KEYS, TileRecord

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "section_042"
SERIES = ROOT / "examples" / "focus_series"
COMMANDS = [
    ["score"],
    ["submit"],
    ["watch"],
    ["report"],
    ["calibrate"],
    ["config"],
    ["register"],
    ["login"],
    ["logout"],
    ["endpoint"],
    ["endpoint", "configure"],
    ["focus-sweep"],
]


pytestmark = pytest.mark.usefixtures("isolated_config")


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_help_version_and_examples():
    top = run("-h")
    assert top.exit_code == 0 and "Example:" in top.output and "submit" in top.output
    assert run("--version").output.strip().endswith(__version__)
    for cmd in COMMANDS:
        out = run(*cmd, "--help")
        assert out.exit_code == 0 and "Example:" in out.output, cmd


@pytest.mark.parametrize("command", [[], *COMMANDS], ids=" ".join)
def test_help_examples_are_kept_whole_for_copying(command):
    """click rewraps paragraphs; each example block is marked (\\b) so that its lines come out as written."""
    cmd = main
    for name in command:
        cmd = cmd.get_command(None, name)
    example = inspect.cleandoc(cmd.help).split("Example:", 1)[1].strip("\n").split("\n\n")[0]  # the block after it
    written = [line.strip() for line in example.splitlines() if line.strip() not in ("", "\b")]
    out = CliRunner().invoke(main, [*command, "--help"], terminal_width=60)
    shown = [line.strip() for line in out.output.split("Example:", 1)[1].splitlines()]
    assert out.exit_code == 0 and written and all(line in shown for line in written), (written, shown)


def test_watch_help_keeps_the_quoted_example_on_one_line():
    out = CliRunner().invoke(main, ["watch", "--help"], terminal_width=80)
    assert """client watch --dir /data/section_043 --on-oof "notify-send 'Out of focus'\"""" in out.output


@pytest.mark.parametrize("command", ["submit", "watch"])
def test_detector_options_come_after_the_run_options(command):
    helptext = run(command, "--help").output.split("Options:", 1)[1]
    assert helptext.index("--dir") < helptext.index("--results") < helptext.index("--n-bin") < helptext.index("--threshold")


def test_usage_errors_exit_64_not_2():
    assert run("submit").exit_code == EXIT_USAGE  # missing --dir
    assert run("submit", "--dir", ".", "--bogus").exit_code == EXIT_USAGE
    assert run("frobnicate").exit_code == EXIT_USAGE
    out = run("submit", "--dir", "/no/such/folder")
    assert out.exit_code == 1 and "not a folder" in out.output


def test_score_json_one_object_per_file_and_bad_files_fail_alone(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    tiny = tmp_path / "tiny.tif"
    import numpy as np
    import tifffile

    tifffile.imwrite(tiny, np.zeros((8, 8), np.uint8))
    out = run(
        "score", EXAMPLE / "tile_r0_c0.png", bad, tmp_path / "missing.png", tiny, EXAMPLE / "tile_r0_c1.tif", "--json", "--n-bin", "12"
    )
    assert out.exit_code == 1
    recs = [json.loads(x) for x in out.output.splitlines()]
    assert [Path(r["tile"]).name for r in recs] == [
        "tile_r0_c0.png",
        "bad.png",
        "missing.png",
        "tiny.tif",
        "tile_r0_c1.tif",
    ]  # "tile", as every record
    assert all("path" not in r and tuple(r) == RESULT_KEYS for r in recs)
    good = [recs[0], recs[4]]
    assert all(r["error"] is None and r["features"] > 100 and r["shape"] == [256, 256] and r["ms"] > 0 for r in good)
    assert recs[1]["error"].startswith(str(bad)) and "not a PNG" in recs[1]["error"]
    assert "cannot read" in recs[2]["error"] and "16" in recs[3]["error"]
    human = run("score", EXAMPLE / "tile_r0_c0.png")
    assert human.exit_code == 0 and "features" in human.output


def test_config_shows_values_and_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("MHD_OOF_K", "4")
    Path(os.environ["MHD_CONFIG"]).parent.mkdir()
    Path(os.environ["MHD_CONFIG"]).write_text(json.dumps({"endpoint": "abc"}))
    data = json.loads(run("config", "--json").output)
    assert data["oof_k"] == {"value": 4.0, "source": "$MHD_OOF_K"}
    assert data["endpoint"] == {"value": "abc", "source": os.environ["MHD_CONFIG"]}
    assert data["transport"]["source"] == "default"
    table = run("config")
    assert table.exit_code == 0 and "$MHD_OOF_K" in table.output and "calibration" in table.output
    monkeypatch.setenv("MHD_WORKERS", "lots")
    bad = run("config")
    assert bad.exit_code == 1 and "workers from $MHD_WORKERS" in bad.output


def test_endpoint_configure_writes_validated_config_and_refuses_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args = [
        "endpoint",
        "configure",
        "--gpus",
        "4",
        "--env",
        "/opt/mhd/venv",
        "--single-user",
        "--function-id",
        "2f1c7ed8-6e2e-4b7e-9d0b-0d4b6d1f8a11",
    ]
    out = run(*args)
    assert out.exit_code == 0, out.output
    folder = tmp_path / "home" / ".globus_compute" / "mhd-gpu"
    assert "2f1c7ed8-6e2e-4b7e-9d0b-0d4b6d1f8a11" in (folder / "config.yaml").read_text()
    assert "source /opt/mhd/venv/bin/activate" in (folder / "user_config_template.yaml.j2").read_text()
    again = run(*args)
    assert again.exit_code == 1 and "--force" in again.output
    assert run(*args, "--force", "--gpus", "8").exit_code == 0


def write_results(section: Path, records: list[dict]) -> None:
    section.mkdir(parents=True, exist_ok=True)
    with (section / "mhd-results.jsonl").open("w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def fake(tile, density, verdict="ok", **extra):
    cell = density * 0.004096
    return {
        "tile": tile,
        "features": int(density * 0.065536),
        "density": density,
        "grid": [[cell] * 4] * 4,
        "shape": [256, 256],
        "verdict": verdict,
        "reason": "",
        "error": None,
        **extra,
    }


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


@pytest.mark.parametrize(("rule", "drawn"), [({}, "OOF threshold (blur)"), ({"focus_measure": "count"}, "OOF threshold")])
def test_report_draws_the_threshold_of_the_measure_the_verdicts_use(tmp_path, monkeypatch, rule, drawn):
    """Under the blur rule (default) the density gets no threshold line (the verdicts do not use one); the blur panel does."""
    import matplotlib.axes

    from mhd.client.report import blur_threshold, make_report

    lines = []
    real = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", lambda ax, y=0, **kw: lines.append((kw.get("label"), y)) or real(ax, y, **kw))
    section = tmp_path / "s"
    write_results(
        section,
        [fake(f"tile_r0_c{c}.png", 1.4e4, blur=0.8 + 0.01 * c, blur_err=0.02) for c in range(9)]
        + [fake("tile_r1_c0.png", 1.3e4, "oof", blur=2.5)],
    )
    chosen = Rule(**rule)
    rep = make_report(section, chosen)
    thresholds = [(label, y) for label, y in lines if label and label.startswith("OOF threshold")]
    if drawn == "OOF threshold":
        assert thresholds == [(drawn, pytest.approx(math.exp(rep.baseline.threshold)))]
    else:
        judged, _ = section_verdicts(rep.records, chosen)
        assert thresholds == [(drawn, pytest.approx(blur_threshold(judged.values(), chosen)))]
        # ten tiles of little spread: the floor, blur_max in quadrature, widened while the section is small (x 1 + 8 / n)
        assert thresholds[0][1] == pytest.approx(math.sqrt(0.84**2 + chosen.blur_max**2 * (1 + 8 / 10)), abs=0.02)


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


def test_calibrate_fits_the_series_and_submit_rule_uses_it(tmp_path):
    series = tmp_path / "series"
    shutil.copytree(SERIES, series, ignore=shutil.ignore_patterns("mhd-*"))
    store = tmp_path / "cfg" / "calibration.json"
    out = run("calibrate", "--dir", series, "--max-defocus", "1.5", "--measure", "count")  # the paper's law
    assert out.exit_code == 0, out.output
    cal = Calibration.load(store)
    assert cal.measure == "count" and cal.n == 9 and cal.r < -0.95 and cal.slope < 0 and cal.max_defocus == 1.5 and cal.units == "um"
    assert f"r = {cal.r:.4f}" in out.output and (series / "mhd-calibration.png").exists()
    rerun = run("calibrate", "--dir", series, "--dry-run")  # its own plot is not taken for an image
    assert rerun.exit_code == 0 and "9 images" in rerun.output
    rule = rule_from_config(load())  # what submit/watch/report judge with
    assert rule.calibration == cal
    assert Judge(rule).add(TileRecord.from_json(fake("far.png", math.exp(cal.intercept + cal.slope * 2.0))))[0].verdict == "oof"
    assert rule_from_config(load(), use_calibration=False).calibration is None


@pytest.mark.slow
def test_a_calibration_holds_only_for_the_detector_parameters_it_was_fitted_with(tmp_path, monkeypatch):
    """A count law fitted at one threshold does not hold at another: submit and watch refuse it, naming the
    parameter, instead of judging by it; the same options pass. A file that does not record its parameters (an
    earlier version's) is used with a warning."""

    monkeypatch.setenv("MHD_WORKERS", "1")
    series = tmp_path / "series"
    shutil.copytree(SERIES, series, ignore=shutil.ignore_patterns("mhd-*"))
    assert run("calibrate", "--dir", series, "--measure", "count", "--threshold", "0.1").exit_code == 0
    store = tmp_path / "cfg" / "calibration.json"
    cal = Calibration.load(store)
    shaping = {"n_bin", "min_t", "max_t", "threshold", "noise_k", "noise_margin", "polarity", "tol", "saturation"}
    assert set(cal.params) == shaping and cal.params["threshold"] == 0.1 and cal.params["n_bin"] == 16
    section = tmp_path / "section"
    section.mkdir()
    for tile in sorted(EXAMPLE.glob("*.png"))[:2]:
        shutil.copy(tile, section / tile.name)
    for command in ("submit", "watch"):
        refused = run(command, "--dir", section, *(["--idle-exit", "1"] if command == "watch" else []))
        assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
        assert "was fitted with other detector parameters: threshold=0.1 (this run: 0.05)" in refused.output
        assert not (section / "mhd-results.jsonl").exists()  # refused before anything was scored
    same = run("submit", "--dir", section, "--threshold", "0.1")
    assert same.exit_code in (0, 2) and "fitted with other" not in same.output, same.output
    records = [json.loads(line) for line in (section / "mhd-results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r.get("error") is None and r["features"] > 0 for r in records)  # scored with all of them
    store.write_text(json.dumps({**json.loads(store.read_text()), "params": {}}))  # as earlier versions wrote it
    old = run("submit", "--dir", section)
    assert old.exit_code in (0, 2) and "does not record the detector parameters" in old.output, old.output
    assert "the default threshold was 0.10, now 0.05" in old.output
    store.write_text(json.dumps({**json.loads(store.read_text()), "params": None}))  # hand-edited
    assert Calibration.load(store).params == {}
    store.write_text(json.dumps({**json.loads(store.read_text()), "params": [0.1]}))
    broken = run("submit", "--dir", section)
    assert broken.exit_code == 1 and "params must be an object" in broken.output and "Traceback" not in broken.output


def test_a_calibrated_run_sends_every_parameter_the_law_was_fitted_with():
    """A worker with other defaults (an endpoint on another version) then scores as the law expects."""
    from mhd.client.cli import _scoring_params
    from mhd.client.verdicts import fitted_params

    cal = Calibration(1.0, -0.5, -0.99, 9, "um", 1.0, fitted_params({"threshold": 0.1}))
    assert _scoring_params(Rule(calibration=cal), {"threshold": 0.1}) == cal.params
    assert _scoring_params(Rule(), {"threshold": 0.1}) == {"threshold": 0.1}  # no law: only the options given
    assert _scoring_params(Rule(), None) is None


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
    bad = run("calibrate", "--dir", series)  # no defocus in these names
    assert bad.exit_code == 1 and "at least 3" in bad.output
    assert "needs a group" in run("calibrate", "--dir", series, "--pattern", "df").output
    table.write_text("file,defocus\nimg0.png,near\n")
    assert ":2: defocus 'near' is not a number" in run("calibrate", "--dir", series, "--csv", table).output
    with table.open("w") as fh:  # one image of the series is corrupt: fitted without it, stored, exit status 1
        fh.write("file,defocus\n" + "".join(f"img{i}.png,{float(name.split('df')[1][:-6])}\n" for i, name in enumerate(names)))
    (series / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n corrupt")
    partial = run("calibrate", "--dir", series, "--csv", table, "--out", tmp_path / "p.json")
    assert partial.exit_code == 1 and f"{len(names) - 1} images: blur^2" in partial.output
    assert "1 image(s) could not be scored (above) and were left out of the fit" in partial.output
    assert Calibration.load(tmp_path / "p.json").n == len(names) - 1


def test_endpoint_configure_allows_the_registered_function_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MHD_FUNCTION", "7d3f2a10-0c1e-4b55-8f0e-1a2b3c4d5e6f")
    out = run(
        "endpoint", "configure", "--gpus", "2", "--env", "/opt/mhd/venv", "--single-user", "--provider", "slurm", "--partition", "gpu"
    )
    assert out.exit_code == 0, out.output
    folder = tmp_path / "home" / ".globus_compute" / "mhd-gpu"
    assert "7d3f2a10-0c1e-4b55-8f0e-1a2b3c4d5e6f" in (folder / "config.yaml").read_text()
    assert "SlurmProvider" in (folder / "user_config_template.yaml.j2").read_text()


def test_login_without_a_terminal_fails_clearly_and_logout_without_tokens_succeeds(monkeypatch):
    for var in ("GLOBUS_COMPUTE_CLIENT_ID", "GLOBUS_COMPUTE_CLIENT_SECRET"):
        monkeypatch.delenv(var, raising=False)
    out = CliRunner().invoke(main, ["login"], input="")
    assert out.exit_code == 1 and "Error: login failed: there is no terminal here to log in from: run 'client login'" in out.output
    assert "Traceback" not in out.output and "auth.globus.org" not in out.output  # no URL and prompt it cannot read
    bye = run("logout")
    assert bye.exit_code == 0 and "stored tokens deleted" in bye.output


def test_score_reports_astigmatism_where_the_tile_is_large_enough():
    from conftest import isbi_paths

    out = run("score", isbi_paths()[0], EXAMPLE / "tile_r0_c0.png", "--json")
    large, small = (json.loads(x) for x in out.output.splitlines())
    assert 0.0 <= large["astigmatism"] < 0.2  # an in-focus 512 px slice
    assert small["astigmatism"] is None and small["astigmatism_angle"] is None  # 256 px: orientation unmeasurable


# ------------------------------------------------------------ executor


@pytest.mark.parametrize("command", ["submit", "watch"])
def test_executor_option_and_its_deprecated_backend_alias(tmp_path, command):
    """--executor picks where tasks run; --backend (hidden) still does, with a one-line note on stderr."""
    assert "--executor [auto|local|globus]" in run(command, "--help").output
    assert "--backend" not in run(command, "--help").output
    for option, note in (("--executor", False), ("--backend", True)):
        out = CliRunner().invoke(main, [command, "--dir", str(EXAMPLE), option, "globus"])
        assert out.exit_code == 1, out.output
        assert "the globus executor needs an endpoint and a function UUID" in out.output  # globus chosen, not auto (local)
        deprecated = [line for line in out.stderr.splitlines() if "deprecated" in line]
        assert deprecated == (["client: --backend is deprecated for submit and watch; use --executor"] if note else [])


@pytest.mark.parametrize(
    ("argv0", "name"),
    [
        ("/usr/local/bin/mhd", "mhd"),
        ("/opt/venv/bin/client", "client"),
        ("/x/mhd/client/__main__.py", "client"),
        ("C:\\venv\\Scripts\\mhd.exe", "mhd"),
    ],
)
def test_program_name_is_the_one_started(monkeypatch, argv0, name):
    from mhd.client.cli import prog_name

    monkeypatch.setattr("sys.argv", [argv0.replace("\\", os.sep)])
    assert prog_name() == name


def test_both_entry_points_name_themselves_in_usage_and_notes():
    """``mhd`` says ``mhd``, also in its deprecation notes; ``python -m mhd.client`` says ``client``."""
    import subprocess
    import sys

    as_module = subprocess.run([sys.executable, "-m", "mhd.client", "--help"], capture_output=True, text=True, check=True)
    assert as_module.stdout.startswith("Usage: client ")
    script = Path(sys.executable).parent / "mhd"
    if not script.exists():
        pytest.skip("the mhd console script is not installed beside this interpreter")
    assert subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout.startswith("Usage: mhd ")
    out = subprocess.run([script, "score", "--backend", "numpy", EXAMPLE / "tile_r0_c0.png", "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.startswith("mhd: --backend is deprecated for score"), out.stderr


def test_score_device_and_its_deprecated_backend_alias():
    """--device cpu|gpu says where the detector computes; --backend numpy|cupy (hidden) still does, with a note."""
    helptext = run("score", "--help").output
    assert "--device [auto|cpu|gpu]" in helptext and "--backend" not in helptext
    for args, note in ((["--device", "cpu"], False), (["--backend", "numpy"], True)):
        out = CliRunner().invoke(main, ["score", *args, str(EXAMPLE / "tile_r0_c0.png"), "--json"])
        assert out.exit_code == 0 and json.loads(out.stdout)["backend"] == "numpy", out.output
        deprecated = [line for line in out.stderr.splitlines() if "deprecated" in line]
        assert deprecated == (["client: --backend is deprecated for score; use --device (cpu for numpy, gpu for cupy)"] if note else [])
    both = CliRunner().invoke(main, ["score", "--device", "cpu", "--backend", "cupy", str(EXAMPLE / "tile_r0_c0.png"), "--json"])
    assert both.exit_code == 0 and json.loads(both.stdout)["backend"] == "numpy", both.output  # the new option wins
    if not cuda_available():
        gpu = CliRunner().invoke(main, ["score", "--device", "gpu", str(EXAMPLE / "tile_r0_c0.png"), "--json"])
        assert gpu.exit_code == 1 and gpu.stdout == ""
        assert "Error: --device gpu needs CuPy and a CUDA GPU" in gpu.stderr and "backend" not in gpu.stderr


def test_score_prints_the_blur_the_verdicts_use():
    out = run("score", EXAMPLE / "tile_r0_c0.png")
    rec = json.loads(run("score", EXAMPLE / "tile_r0_c0.png", "--json").output)
    assert out.exit_code == 0 and f"blur {rec['blur']:.2f} ± {rec['blur_err']:.2f} px" in out.output, out.output


def test_config_reads_the_old_backend_key_and_variable(tmp_path, monkeypatch):
    path = Path(os.environ["MHD_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backend": "local"}))
    cfg = load()
    assert cfg["executor"] == "local" and cfg.sources["executor"] == str(path)
    monkeypatch.setenv("MHD_BACKEND", "globus")
    assert load()["executor"] == "globus"
    monkeypatch.setenv("MHD_EXECUTOR", "local")
    assert load()["executor"] == "local", "the new name wins"
    path.write_text(json.dumps({"backend": "local", "executor": "globus"}))
    monkeypatch.delenv("MHD_BACKEND")
    monkeypatch.delenv("MHD_EXECUTOR")
    assert load()["executor"] == "globus"
    assert "backend" not in run("config").output.split()


def test_debug_output_is_ours_not_every_png_chunk():
    """``client -vv`` printed PIL's debug line for every PNG chunk it read."""
    tile = Path(__file__).resolve().parents[1] / "examples" / "section_042" / "tile_r0_c0.png"
    out = CliRunner().invoke(main, ["-vv", "score", str(tile)])
    assert out.exit_code == 0, out.output
    assert "STREAM b'IHDR'" not in out.output
