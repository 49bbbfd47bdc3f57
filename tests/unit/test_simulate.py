"""The through-focus simulator: probe model, blur geometry, shot noise, detector."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mhd.functions.simulate import (
    astigmatic_psf,
    blur,
    defocus_image,
    digitize,
    gaussian_otf,
    psf_sigma,
    shot_noise,
    through_focus,
    to_signal,
)


def _moments(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Covariance (x right, y up as displayed) and major-axis angle (degrees in [0, 180))."""
    rows, cols = np.indices(image.shape)
    w = image / image.sum()
    x, y = cols, -rows
    mx, my = (w * x).sum(), (w * y).sum()
    cxx = (w * (x - mx) ** 2).sum()
    cyy = (w * (y - my) ** 2).sum()
    cxy = (w * (x - mx) * (y - my)).sum()
    angle = np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy)) % 180.0
    return np.array([[cxx, cxy], [cxy, cyy]]), angle


# ------------------------------------------------------------------- probe


def test_psf_sigma_grows_as_the_quadrature_of_probe_and_defocus():
    assert psf_sigma(0.0) == pytest.approx(0.5)
    assert psf_sigma(3.0, sigma0=4.0, k=1.0) == pytest.approx(5.0)
    assert psf_sigma(-2.0, sigma0=0.0, k=1.5) == pytest.approx(3.0)
    np.testing.assert_allclose(psf_sigma(np.array([-1.0, 1.0])), [np.hypot(0.5, 1.0)] * 2)
    with pytest.raises(ValueError, match="sigma0 and k"):
        psf_sigma(1.0, sigma0=-1.0)


def test_astigmatism_turns_the_long_axis_by_90_degrees_through_focus():
    assert astigmatic_psf(2.0, 0.0, 30.0) == pytest.approx((psf_sigma(2.0), psf_sigma(2.0), 30.0))
    above = astigmatic_psf(-1.0, 2.0, 30.0, sigma0=0.5, k=1.0)  # line foci at -2 and 0 um
    below = astigmatic_psf(1.0, 2.0, 30.0, sigma0=0.5, k=1.0)  # line foci at 0 and 2 um
    assert above == pytest.approx((psf_sigma(-2.0), 0.5, 30.0))
    assert below == pytest.approx((psf_sigma(2.0), 0.5, 120.0))
    assert astigmatic_psf(0.0, 2.0, 170.0) == pytest.approx((psf_sigma(1.0), psf_sigma(1.0), 170.0))
    with pytest.raises(ValueError, match="astigmatism"):
        astigmatic_psf(0.0, -1.0)


# -------------------------------------------------------------------- blur


@pytest.mark.parametrize(
    "major, minor, angle",
    [(4.0, 4.0, 0.0), (5.0, 2.0, 0.0), (5.0, 2.0, 90.0), (6.0, 2.5, 30.0), (4.5, 1.5, 120.0), (3.0, 2.0, -45.0)],
)
def test_blurred_point_has_the_psf_second_moments_and_orientation(major, minor, angle):
    point = np.zeros((129, 129))
    point[64, 64] = 1.0
    cov, theta = _moments(blur(point, major, minor, angle))
    theta_rad = np.deg2rad(angle)
    rot = np.array([[np.cos(theta_rad), -np.sin(theta_rad)], [np.sin(theta_rad), np.cos(theta_rad)]])
    expected = rot @ np.diag([major**2, minor**2]) @ rot.T
    np.testing.assert_allclose(cov, expected, atol=1e-3 * major**2)
    if major > minor:
        assert theta == pytest.approx(angle % 180.0, abs=0.05)


def test_isotropic_blur_matches_scipy_gaussian_filter():
    image = np.random.default_rng(3).random((96, 80))
    ours = blur(image, 3.0)
    ref = ndimage.gaussian_filter(image, 3.0, mode="reflect", truncate=6.0)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_blur_does_not_wrap_around_and_keeps_flat_images_flat():
    image = np.zeros((64, 64))
    image[:, :2] = 1.0  # a bright band on the left edge
    out = blur(image, 3.0)
    assert np.abs(out[:, -8:]).max() < 1e-9
    edge = ndimage.gaussian_filter1d(image[0], 3.0, mode="reflect", truncate=6.0)[0]  # mirrored, not wrapped
    np.testing.assert_allclose(out[:, 0], edge, atol=2e-4)
    np.testing.assert_allclose(blur(np.full((40, 50), 0.3), 2.0, 1.0, 17.0), 0.3, atol=1e-12)


def test_zero_width_blur_is_the_identity_and_negative_width_fails():
    image = np.random.default_rng(0).random((32, 32))
    np.testing.assert_array_equal(blur(image, 0.0), image)
    with pytest.raises(ValueError, match=">= 0"):
        gaussian_otf((8, 8), -1.0)
    with pytest.raises(ValueError, match="2-D"):
        blur(np.zeros((4, 4, 4)), 1.0)


def test_otf_is_one_at_zero_frequency_and_matches_the_rfft_grid():
    h = gaussian_otf((30, 40), 2.0, 1.0, 25.0)
    assert h.shape == (30, 21)
    assert h[0, 0] == 1.0
    assert np.all((h > 0) & (h <= 1))


# ------------------------------------------------------- signal and noise


def test_to_signal_scales_integers_by_their_full_range():
    np.testing.assert_allclose(to_signal(np.array([[0, 255]], dtype=np.uint8)), [[0.0, 1.0]])
    np.testing.assert_allclose(to_signal(np.array([[65535, 0]], dtype=np.uint16)), [[1.0, 0.0]])
    np.testing.assert_allclose(to_signal(np.array([[0.25]])), [[0.25]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_signal(np.array([[2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        to_signal(np.array([[np.nan]]))


def test_shot_noise_is_poisson_at_the_dose():
    signal = np.full((256, 256), 0.5)
    noisy = shot_noise(signal, 20.0, rng=7)
    counts = noisy * 20.0
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-9)  # whole electrons
    assert noisy.mean() == pytest.approx(0.5, rel=0.01)
    assert noisy.var() == pytest.approx(0.5 / 20.0, rel=0.03)
    np.testing.assert_array_equal(shot_noise(signal, np.inf), signal)
    with pytest.raises(ValueError, match="dose"):
        shot_noise(signal, 0.0)


@pytest.mark.parametrize("bits, dtype, full", [(8, np.uint8, 255), (12, np.uint16, 4095), (16, np.uint16, 65535), (4, np.uint8, 15)])
def test_digitize_maps_gain_and_offset_to_the_bit_depth(bits, dtype, full):
    signal = np.array([[0.0, 0.5, 1.0, 3.0]])
    out = digitize(signal, bits=bits, gain=0.5, offset=0.25)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.rint(np.array([[0.25, 0.5, 0.75, 1.0]]) * full))
    with pytest.raises(ValueError, match="gain"):
        digitize(signal, gain=0.0)


def test_digitize_rejects_unsupported_bit_depths():
    for bits in (0, 17, 8.5):
        with pytest.raises(ValueError, match="bits"):
            digitize(np.zeros((2, 2)), bits=bits)


# ------------------------------------------------------------------- series


def test_series_is_reproducible_from_a_seed_and_scans_are_independent():
    image = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    a = through_focus(image, [0.0, 0.0, 2.0], dose=10.0, rng=5)
    b = through_focus(image, [0.0, 0.0, 2.0], dose=10.0, rng=np.random.default_rng(5))
    c = through_focus(image, [0.0, 0.0, 2.0], dose=10.0, rng=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # fresh noise for every scan
    assert a.shape == (3, 48, 48) and a.dtype == np.uint8
    with pytest.raises(ValueError, match="at least one"):
        through_focus(image, [])


def test_noise_free_scan_is_the_blurred_image_on_the_detector_scale():
    image = np.random.default_rng(2).integers(0, 256, (40, 40), dtype=np.uint8)
    scan = defocus_image(image, 3.0, bits=16, gain=0.5, offset=0.1, sigma0=0.5, k=1.0)
    expected = digitize(blur(image / 255.0, 3.0), bits=16, gain=0.5, offset=0.1)  # probe 0.5 px -> hypot(0.5, 3) px
    np.testing.assert_array_equal(scan, expected)
    np.testing.assert_array_equal(defocus_image(image, 0.0), image)  # the input is the in-focus scan
    assert scan.std() < (0.5 * image / 255.0 * 65535).std()  # the probe smooths


def test_astigmatic_scan_is_blurred_along_the_long_axis():
    rows, cols = np.indices((65, 65))
    spot = np.exp(-((rows - 32) ** 2 + (cols - 32) ** 2) / (2 * 1.5**2))  # a resolved feature, 1.5 px
    # line foci at 0 and 4 um: the added blur is 0 px along the astigmatism axis (60 deg), 4 px across it
    scan = defocus_image(spot, 2.0, astigmatism=4.0, astigmatism_angle=60.0, bits=16, gain=1.0)
    cov, theta = _moments(scan.astype(np.float64))
    assert theta == pytest.approx(150.0, abs=0.5)  # defocus > 0: long axis across the astigmatism axis
    assert np.sqrt(np.linalg.eigvalsh(cov)) == pytest.approx([1.5, np.hypot(1.5, 4.0)], rel=0.02)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_scan_lines_start_in_the_detectors_steady_state(tau):
    """The first column of a scan is as noisy as the others (as in the real scans), not the unaveraged current."""
    from mhd.functions.simulate import sem_scan

    flat = np.full((2000, 64), 128, np.uint8)
    scan = sem_scan(flat, 0.0, dose=20.0, tau=tau, bits=16, rng=0).astype(np.float64)
    first, rest = scan[:, 0].std(), scan[:, 8:].std(axis=0).mean()
    assert first == pytest.approx(rest, rel=0.1)


def test_a_negative_detector_time_constant_is_refused_by_name():
    from mhd.functions.simulate import sem_scan

    with pytest.raises(ValueError, match="tau must be >= 0"):
        sem_scan(np.zeros((8, 8), np.uint8), tau=-1.0)
