"""Calibration (``mhd.client.calibration``): the fitted line has the right values.

``commands/test_calibrate_command.py`` checks the ``client calibrate`` command
(its output, files, CSV input and errors, and that the fitted rule flags a real
defocused tile); these check the numbers: on densities made from a known
``log d = a + b |defocus|`` the fit returns ``a`` and ``b``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import ROOT
from mhd.client.calibration import Calibration, fit, threshold_density
from mhd.client.rule import Rule

SERIES = ROOT / "examples" / "focus_series"

pytestmark = pytest.mark.usefixtures("isolated_config")


@pytest.mark.parametrize("a, b", [(math.log(4.2e4), -0.85), (math.log(900.0), -0.2)])
def test_fit_recovers_a_known_intercept_and_slope(a, b):
    rng = np.random.default_rng(7)
    defocus = np.repeat(np.arange(-4.0, 4.5, 0.5), 2)  # signed: the fit takes |defocus|
    density = np.exp(a + b * np.abs(defocus) + rng.normal(0.0, 0.02, defocus.size))  # 2 % scatter
    cal = fit([f"img{i}.png" for i in range(defocus.size)], defocus, density, max_defocus=1.5).calibration
    assert cal.intercept == pytest.approx(a, abs=0.03)  # natural log of features per megapixel
    assert cal.slope == pytest.approx(b, abs=0.01)  # per unit |defocus|
    assert cal.r < -0.95 and cal.n == defocus.size and cal.max_defocus == 1.5
    assert threshold_density(cal) == pytest.approx(math.exp(a + 1.5 * b), rel=0.05)
    assert cal.defocus(a + 3.0 * b) == pytest.approx(3.0, abs=0.1)  # the estimate inverts the line


def test_the_smallest_series_is_three_images_at_two_distinct_defocus():
    cal = fit(["a.png", "b.png", "c.png"], np.array([0.0, -1.0, 1.0]), np.array([2e4, 1e4, 1e4])).calibration
    assert cal.n == 3 and cal.slope == pytest.approx(math.log(0.5)) and cal.max_defocus == 1.0


@pytest.mark.parametrize(
    "defocus, density, message",
    [
        ([0.0, 1.0], [2e4, 1e4], r"at least 3 scored images at 2 or more distinct \|defocus\|, got 2 at 2"),
        ([-1.0, 1.0, 1.0], [2e4, 1e4, 1e4], r"got 3 at 1"),
        (
            [0.0, 1.0, 2.0],
            [1e4, 1.35e4, 1.82e4],
            r"density does not fall with \|defocus\| \(slope 0\.299 per um\)",
        ),  # rises: not a focus series
    ],
)
def test_a_series_that_cannot_calibrate_is_refused(defocus, density, message):
    with pytest.raises(ValueError, match=message):
        fit([f"img{i}.png" for i in range(len(defocus))], np.array(defocus), np.array(density))


@pytest.mark.parametrize("law", ["count", "blur"])
def test_a_series_without_a_trend_is_not_a_calibration(law):
    """A flat series fits a slope of ~1e-15 of either sign: it must be refused, not stored as a law."""
    from mhd.client.calibration import fit_blur

    defocus = np.repeat(np.arange(-4.0, 4.5, 1.0), 2)
    values = np.full(defocus.size, 900.0 if law == "count" else 0.8)
    fitter = fit if law == "count" else fit_blur
    with pytest.raises(ValueError, match="through-focus series"):
        fitter([f"img{i}.png" for i in range(defocus.size)], defocus, values)


def test_a_calibrated_run_sends_every_parameter_the_law_was_fitted_with():
    """A worker with other defaults (an endpoint on another version) then scores as the law expects."""
    from mhd.client.calibration import fitted_params
    from mhd.client.cli import _scoring_params

    cal = Calibration(1.0, -0.5, -0.99, 9, "um", 1.0, fitted_params({"threshold": 0.1}))
    assert _scoring_params(Rule(calibration=cal), {"threshold": 0.1}) == cal.params
    assert _scoring_params(Rule(), {"threshold": 0.1}) == {"threshold": 0.1}  # no law: only the options given
    assert _scoring_params(Rule(), None) is None


def test_a_tile_denser_than_the_in_focus_line_is_estimated_at_zero_defocus():
    cal = Calibration(intercept=math.log(2e4), slope=-0.8, r=-0.99, n=9, units="um", max_defocus=1.0)
    assert cal.defocus(math.log(3e4)) == 0.0  # never a negative |defocus|
    assert cal.defocus(math.log(2e4) - 1.6) == pytest.approx(2.0)
    assert cal.log_threshold == pytest.approx(math.log(2e4) - 0.8)


def test_rule_summary_names_the_rule_in_force():
    """One sentence for the header of submit/watch, the report and its HTML: the relative rule's thresholds, or the
    calibration (name, file, measure, date, series, limit), then why it is in force."""
    from mhd.client.calibration import rule_summary

    assert rule_summary(Rule()) == (
        "relative: a tile is out of focus when it adds at least 0.7 px (in quadrature) to the section's focus (the lower"
        " quartile of its blurs) and 2 robust"
        " standard deviations; first verdicts after 8 tiles"
    )
    count = rule_summary(Rule(focus_measure="count", oof_k=4, origin="chosen with --relative"))
    assert count.startswith("relative (count): a tile is out of focus when its feature density is 4 robust standard deviations")
    assert count.endswith("below the section's median; first verdicts after 8 tiles; chosen with --relative")
    cal = Calibration(0.65, 0.96, 0.998, 9, "um", 1.0, {}, "/data/focus_series", "blur", "zeiss-5kx", "2026-12-07T14:03:22+01:00")
    named = Rule(calibration=cal, calibration_path="/cfg/calibrations/zeiss-5kx.json", origin="chosen with --calibration")
    assert rule_summary(named) == (
        "calibrated 'zeiss-5kx' (/cfg/calibrations/zeiss-5kx.json): blur, fitted 2026-12-07 on /data/focus_series, out of focus "
        "beyond 1 um; chosen with --calibration"
    )
    old = Calibration(9.5, -0.5, -0.99, 9, "um", 1.5)  # a file of an earlier version: no name, date or series
    assert rule_summary(Rule(calibration=old, calibration_path="/x/c.json")) == (
        "calibrated from /x/c.json: count, fitted (date not recorded), out of focus beyond 1.5 um"
    )


def test_a_calibration_file_of_an_earlier_version_is_still_read(tmp_path):
    """Files written before calibrations had a name and a date load with both empty."""
    import json

    path = tmp_path / "old.json"
    path.write_text(json.dumps({"intercept": 9.5, "slope": -0.5, "r": -0.99, "n": 9, "units": "um", "max_defocus": 1.5}))
    cal = Calibration.load(path)
    assert (cal.name, cal.fitted, cal.source, cal.measure) == ("", "", "", "count")
    saved = json.loads(
        Calibration(0.6, 0.9, 0.99, 9, "um", 1.0, name="a", fitted="2026-12-07T00:00:00+00:00").save(tmp_path / "n.json").read_text()
    )
    assert saved["name"] == "a" and saved["fitted"] == "2026-12-07T00:00:00+00:00"
