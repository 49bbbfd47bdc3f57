"""A calibration judges only the sections chosen for it, and every command says which rule it judges by.

``client calibrate --name NAME`` stores a calibration in the config folder; ``--calibration NAME|FILE`` on
``submit``, ``watch`` or ``report`` chooses it for a section, and ``submit``/``watch`` record the choice in the
section's results folder (``mhd-rule.json``) so that later commands on that section keep it. A section never
chosen for it is judged by the relative rule, whatever is stored. The header of ``submit``/``watch`` and the
output of ``report`` name the rule (:func:`mhd.client.rule.rule_summary`). Run as a user runs them (click's runner).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import EXAMPLE, ROOT, read_results, run
from mhd.client.calibration import Calibration
from mhd.contracts.files import RULE_CHOICE

SERIES = ROOT / "examples" / "focus_series"

pytestmark = pytest.mark.usefixtures("isolated_config", "two_workers")


def section(root: Path, name: str, tiles: int = 3) -> Path:
    """A section of the example's first ``tiles`` PNG tiles."""
    folder = root / name
    folder.mkdir()
    for tile in sorted(EXAMPLE.glob("*.png"))[:tiles]:
        shutil.copy(tile, folder / tile.name)
    return folder


def calibrate(tmp_path: Path, *how: str):
    """``client calibrate`` on a copy of the example focus series (simulated TEM), max |defocus| 1 um."""
    series = tmp_path / "series"
    if not series.exists():
        shutil.copytree(SERIES, series, ignore=shutil.ignore_patterns("mhd-*"))
    out = run("calibrate", "--dir", series, "--max-defocus", "1", *how)
    assert out.exit_code == 0, out.output
    return out


def rule_line(output: str) -> str:
    """The line of a command's output that names the rule."""
    [line] = [line for line in output.splitlines() if line.startswith("rule: ")]
    return line


def calibrated(records: list[dict]) -> bool:
    """Whether every record was judged by a calibration (each has an estimated |defocus|)."""
    return all(r.get("defocus") is not None for r in records if r["verdict"] in ("ok", "oof"))


def test_a_named_calibration_judges_only_the_sections_chosen_for_it_and_later_commands_on_them(tmp_path):
    calibrate(tmp_path, "--name", "tem-sim")
    store = tmp_path / "cfg" / "calibrations" / "tem-sim.json"
    chosen, other = section(tmp_path, "chosen"), section(tmp_path, "other")
    first = run("submit", "--dir", chosen, "--calibration", "tem-sim")
    assert first.exit_code in (0, 2), first.output
    assert rule_line(first.output) == (
        f"rule: calibrated 'tem-sim' ({store}): blur, fitted {Calibration.load(store).fitted[:10]} on {tmp_path / 'series'}, "
        "out of focus beyond 1 um; chosen with --calibration"
    )
    assert calibrated(read_results(chosen)) and json.loads((chosen / RULE_CHOICE).read_text())["calibration"] == str(store)
    plain = run("submit", "--dir", other)  # a calibration is stored, but this section was never chosen for it
    assert plain.exit_code in (0, 2), plain.output
    assert rule_line(plain.output).startswith("rule: relative: a tile is out of focus when it adds at least 0.7 px")
    assert rule_line(plain.output).endswith("; no calibration chosen for this section")
    assert not any(r.get("defocus") is not None for r in read_results(other))
    for command in (["report"], ["submit"], ["watch", "--idle-exit", "0.3", "--poll", "0.1"]):  # later, without the option
        again = run(*command, "--dir", chosen)
        assert again.exit_code in (0, 2), again.output
        assert rule_line(again.output).startswith("rule: calibrated 'tem-sim'") and "; as recorded for this section on " in again.output
        relative = run(*command, "--dir", other)
        assert rule_line(relative.output).startswith("rule: relative") and "as this section was first judged" in relative.output
    assert calibrated(read_results(chosen))


def test_another_choice_on_a_judged_section_replaces_the_recorded_one_and_says_so(tmp_path):
    calibrate(tmp_path, "--name", "tem-sim")
    folder = section(tmp_path, "s")
    assert run("submit", "--dir", folder, "--calibration", "tem-sim").exit_code in (0, 2)
    once = run("report", "--dir", folder, "--relative")  # for this report only: not recorded
    assert "the relative rule for this report only: the section's verdicts were judged by calibration 'tem-sim'" in once.output
    assert rule_line(once.output).endswith("; chosen with --relative for this report only")
    assert json.loads((folder / RULE_CHOICE).read_text())["name"] == "tem-sim"
    switched = run("submit", "--dir", folder, "--relative")
    assert switched.exit_code in (0, 2), switched.output
    assert "the relative rule replaces calibration 'tem-sim' recorded for this section: the tiles already recorded keep" in switched.output
    assert rule_line(switched.output).endswith("; chosen with --relative")
    assert json.loads((folder / RULE_CHOICE).read_text())["calibration"] is None
    assert rule_line(run("report", "--dir", folder).output).startswith("rule: relative")
    both = run("submit", "--dir", folder, "--relative", "--calibration", "tem-sim")
    assert both.exit_code == 64 and "--calibration and --relative exclude each other" in both.output


def test_out_writes_a_file_anywhere_and_says_how_to_use_it(tmp_path):
    target = tmp_path / "elsewhere" / "zeiss.json"
    out = calibrate(tmp_path, "--out", target)
    assert f"stored calibration in {target}" in out.output
    assert f"used only for the sections given --calibration {target} (submit, watch, report)" in out.output
    assert not (tmp_path / "cfg").exists()  # nothing in the config folder: no section uses it unless chosen
    folder = section(tmp_path, "s")
    judged = run("submit", "--dir", folder, "--calibration", target)
    assert judged.exit_code in (0, 2) and rule_line(judged.output).startswith(f"rule: calibrated from {target}: blur, fitted ")
    assert calibrated(read_results(folder))


def test_the_configured_default_is_named_and_an_earlier_versions_file_is_not_applied(tmp_path, monkeypatch):
    old = calibrate(tmp_path, "--out", tmp_path / "cfg" / "calibration.json")  # where earlier versions stored the one calibration
    assert old.exit_code == 0
    legacy = run("submit", "--dir", section(tmp_path, "a"))
    assert rule_line(legacy.output).startswith("rule: relative")
    assert f"{tmp_path / 'cfg' / 'calibration.json'} (stored by an earlier version) is no longer applied to every section" in legacy.output
    assert "(not applied)" in run("config").output
    calibrate(tmp_path, "--name", "tem-sim")
    monkeypatch.setenv("MHD_CALIBRATION", "tem-sim")  # an explicit default, for sections without a rule of their own
    fresh = run("submit", "--dir", section(tmp_path, "b"))
    assert rule_line(fresh.output).startswith("rule: calibrated 'tem-sim'")
    assert rule_line(fresh.output).endswith("; the configured default (config 'calibration', from $MHD_CALIBRATION)")
    assert rule_line(run("submit", "--dir", tmp_path / "a").output).startswith("rule: relative")  # its recorded rule


@pytest.mark.parametrize(
    "command, message",
    [
        (["calibrate", "--name", "zeiss 5kx"], "calibration name 'zeiss 5kx': use a letter or digit"),
        (["calibrate", "--name", "../up"], "calibration name '../up'"),
        (["submit", "--calibration", "nope"], "no calibration named 'nope' (none stored in "),
        (["report", "--calibration", "nope"], "no calibration named 'nope' (none stored in "),
        (["watch", "--idle-exit", "1", "--calibration", "missing.json"], "calibration file "),
    ],
)
def test_a_bad_name_or_a_missing_calibration_is_one_line_and_exit_status_1(tmp_path, command, message):
    folder = section(tmp_path, "s", tiles=1) if command[0] != "calibrate" else SERIES
    if command[0] == "report":
        assert run("submit", "--dir", folder).exit_code in (0, 2)
    out = run(command[0], "--dir", folder, *command[1:])
    assert out.exit_code == 1 and message in out.output and "Traceback" not in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1
    assert not (folder / "mhd-results.jsonl").exists() or command[0] == "report"  # refused before anything was scored


def test_a_section_whose_calibration_went_missing_is_refused_until_one_is_chosen(tmp_path):
    calibrate(tmp_path, "--name", "tem-sim")
    folder = section(tmp_path, "s", tiles=1)
    assert run("submit", "--dir", folder, "--calibration", "tem-sim").exit_code in (0, 2)
    (tmp_path / "cfg" / "calibrations" / "tem-sim.json").unlink()
    for command in ("submit", "report"):
        out = run(command, "--dir", folder)
        assert out.exit_code == 1 and "Traceback" not in out.output, out.output
        assert "this section was judged by calibration 'tem-sim' (" in out.output and "which is missing" in out.output
    assert run("submit", "--dir", folder, "--relative").exit_code in (0, 2)


def test_calibrate_needs_a_name_or_a_file_to_store_it():
    out = run("calibrate", "--dir", SERIES)
    assert out.exit_code == 64 and "give --name NAME" in out.output
    both = run("calibrate", "--dir", SERIES, "--name", "a", "--out", "a.json")
    assert both.exit_code == 64 and "--name and --out exclude each other" in both.output
