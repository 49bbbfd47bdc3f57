"""Best-focus search on feature counts: simulated through-focus series, exact curves, edges, errors."""

from __future__ import annotations

import numpy as np
import pytest

from mhd.functions import detect
from mhd.functions.focus import BestFocus, best_focus
from mhd.functions.simulate import through_focus

STEP = 2.0  # micrometres between images of a sweep


@pytest.mark.parametrize("dose", [np.inf, 10.0])
def test_best_focus_of_simulated_series_is_within_a_quarter_step(isbi, dose):
    """Counts from the detector on ISBI slices whose probe widens with |WD - WD0| (1 px per um)."""
    errors = []
    for k, image in enumerate(isbi[:2]):
        for wd0 in (4.0, 4.6, 5.3):  # on a sample, a third and two thirds of a step off
            wd = np.arange(-4, 5) * STEP + 5.0  # 9 images over -3 .. 13 um
            series = through_focus(image[:256, :256], wd - wd0, dose=dose, rng=k)
            bf = best_focus(wd, [detect(s, backend="numpy").count for s in series])
            assert bf.ok, bf.message
            assert bf.r < -0.9  # counts fall steadily away from the found focus, as in the paper
            errors.append(bf.wd - wd0)
    assert np.max(np.abs(errors)) < STEP / 4


def test_exact_gaussian_is_recovered_with_its_width_and_height():
    wd = np.linspace(10.0, 30.0, 11)
    counts = 4000.0 * np.exp(-0.5 * ((wd - 21.3) / 3.5) ** 2)
    bf = best_focus(wd, counts, points=7)
    assert bf.wd == pytest.approx(21.3, abs=1e-9)
    assert bf.width == pytest.approx(3.5, rel=1e-9)
    assert bf.peak_count == pytest.approx(4000.0, rel=1e-9)
    assert bf.n_points == 7 and bf.status == "ok"
    assert 0 < bf.uncertainty < 0.1  # Poisson counts of a few thousand pin the vertex


def test_result_does_not_depend_on_the_length_unit():
    wd_um = np.arange(-8.0, 9.0, 2.0) + 4000.0
    counts = np.random.default_rng(2).poisson(900.0 * np.exp(-0.5 * ((wd_um - 4000.9) / 3.0) ** 2))
    in_um, in_mm = best_focus(wd_um, counts), best_focus(wd_um / 1000.0, counts)
    assert in_mm.wd * 1000.0 == pytest.approx(in_um.wd, abs=1e-6)
    assert in_mm.uncertainty * 1000.0 == pytest.approx(in_um.uncertainty, rel=1e-6)
    assert in_mm.width * 1000.0 == pytest.approx(in_um.width, rel=1e-6)


def test_uncertainty_is_calibrated_for_poisson_counts():
    rng = np.random.default_rng(5)
    wd = np.arange(-8.0, 9.0, 2.0)
    z = []
    for _ in range(300):
        counts = rng.poisson(800.0 * np.exp(-0.5 * ((wd - 0.7) / 3.0) ** 2))
        bf = best_focus(wd, counts)
        z.append((bf.wd - 0.7) / bf.uncertainty)
    assert 0.7 < np.sqrt(np.mean(np.square(z))) < 1.3


def test_order_and_repeated_working_distances():
    wd = np.array([4.0, 0.0, 2.0, 6.0, 8.0, 2.0, 4.0])
    counts = 1000.0 * np.exp(-0.5 * ((wd - 3.4) / 2.5) ** 2)
    bf = best_focus(wd, counts)
    shuffled = np.random.default_rng(1).permutation(len(wd))
    again = best_focus(wd[shuffled], counts[shuffled])
    assert bf.wd == pytest.approx(3.4, abs=1e-9)
    assert again.wd == pytest.approx(bf.wd, abs=1e-12)
    assert bf.n_points == 7  # 5 distinct distances, every sample counted


@pytest.mark.parametrize("wd0", [-5.0, 17.0])
def test_peak_beyond_the_sweep_is_flagged_not_extrapolated(wd0):
    wd = np.arange(0.0, 12.1, 2.0)
    counts = 3000.0 * np.exp(-0.5 * ((wd - wd0) / 4.0) ** 2)
    bf = best_focus(wd, counts)
    assert bf.status == "edge" and not bf.ok
    assert bf.wd == (0.0 if wd0 < 0 else 12.0)  # the best sample, not the extrapolated peak
    assert bf.uncertainty == np.inf
    assert "extend the sweep" in bf.message


def test_fitted_peak_outside_the_sweep_is_flagged():
    # The highest count is the second sample, but the parabola through the five points peaks before the first.
    bf = best_focus(np.arange(5.0), np.exp([0.9, 4.4, 2.7, 1.5, 2.1]))
    assert bf.status == "edge"
    assert bf.wd == 1.0 and bf.uncertainty == np.inf
    assert "outside the sweep" in bf.message


def test_counts_that_do_not_curve_down_have_no_peak():
    # Interior maximum, but the five points around it form a W.
    bf = best_focus(np.arange(7.0), np.exp([0.0, 2.9, 0.0, 3.0, 0.0, 2.9, 0.0]))
    assert bf.status == "no_peak"
    assert bf.wd == 3.0 and bf.uncertainty == np.inf


def test_zero_counts_are_allowed():
    bf = best_focus([0.0, 1.0, 2.0, 3.0, 4.0], [0, 20, 50, 22, 0])
    assert bf.ok and 1.5 < bf.wd < 2.5


def test_r_is_nan_for_a_constant_count():
    bf = best_focus([0.0, 1.0, 2.0], [5, 5, 5])
    assert isinstance(bf, BestFocus) and bf.status == "edge" and np.isnan(bf.r)


@pytest.mark.parametrize(
    "wd, counts, kwargs, message",
    [
        ([0.0, 1.0, 2.0], [1, 2], {}, "one length"),
        ([[0.0, 1.0, 2.0]], [[1, 2, 3]], {}, "1-D"),
        ([0.0, 1.0, np.nan], [1, 2, 3], {}, "finite"),
        ([0.0, 1.0, 2.0], [1, -2, 3], {}, ">= 0"),
        ([0.0, 1.0, 1.0], [1, 2, 3], {}, "3 or more distinct"),
        ([0.0, 1.0, 2.0], [1, 2, 3], {"points": 2}, "points"),
    ],
)
def test_invalid_input_is_rejected(wd, counts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        best_focus(wd, counts, **kwargs)
