"""The blur under shot noise, an elliptical probe and the scan's own smear, on real EM images (ISBI TEM slices,
real SEM scans of tests/data/sem-kriss, MIT). ``bench/blur_validation.py`` prints the full tables."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import KRISS_DIR
from mhd.functions import detect, get_backend
from mhd.functions._astigmatism import blur_anisotropy, ring_k2
from mhd.functions._blur import anisotropy_gain
from mhd.functions._noise import noise_spectra, scan_smear
from mhd.functions._scalespace import dog_pairs, scales
from mhd.functions.simulate import sem_scan
from mhd.functions.worker.tileio import trim_frame

KRISS = KRISS_DIR / "time"
CPU = get_backend("numpy")


def slow(i: int) -> np.ndarray:
    """A real 30 us SEM scan (in focus), its image area."""
    return trim_frame(iio.imread(KRISS / f"slow_30us_{i:03d}.png"))


# ------------------------------------------------------------------- noise


def test_the_power_estimate_holds_where_shot_noise_is_mostly_zeros():
    """Photon-counting noise at 6 electrons per white pixel on a dark support is mostly zeros: the median of the
    second differences (a typical pixel's noise) falls far below the mean power the levels' energies hold; the
    clipped mean square does not."""
    rng = np.random.default_rng(0)
    signal = np.full((256, 512), 0.05)
    signal[:, 256:] = 0.8  # half dark support, half bright particle
    counts = rng.poisson(signal * 6.0) / 6.0
    spectra = noise_spectra(counts[None].astype(np.float32), CPU)
    true = np.mean(signal * np.ones_like(signal)) / 6.0  # Poisson: variance = mean / dose
    assert spectra.power[0].mean() == pytest.approx(true, rel=0.1)
    assert spectra.typical[0].mean() < 0.75 * true


def test_scan_smear_is_read_on_the_noise_and_not_on_a_sharp_noiseless_tile(isbi):
    """A detector time constant of 1 dwell low-passes the noise along x only: read ~0.5-0.8 px; white shot noise
    reads ~0, and so does a sharp tile with no noise, whose structure leaks into both directions alike."""
    image = isbi[3]

    def smear(scan):
        norm = scan.astype(np.float32)[None] / 255
        return scan_smear(noise_spectra(norm, CPU).typical, noise_spectra(np.swapaxes(norm, 1, 2), CPU).typical)[0]

    assert 0.5 <= smear(sem_scan(image, dose=20.0, tau=1.0, rng=1)) <= 0.9
    assert smear(sem_scan(image, dose=20.0, rng=1)) < 0.2
    assert smear(image) < 0.2


# ---------------------------------------------------------------- dose


@pytest.mark.parametrize("radius", [0.0, 2.0, 3.0])
def test_shot_noise_does_not_move_the_blur(isbi, radius):
    """Noise cannot blur: the blur with Poisson noise at 20 electrons per white pixel stays within 0.3 px of the
    blur of the same scan without it, on ISBI slices and real SEM slow scans, in focus and behind disks."""
    for k, image in enumerate([isbi[2], isbi[17], slow(3), slow(7)]):
        clean = detect(sem_scan(image, radius), backend="numpy").blur
        noisy = detect(sem_scan(image, radius, dose=20.0, rng=k), backend="numpy").blur
        assert abs(noisy - clean) < 0.3, (k, clean, noisy)


def test_a_defocused_probe_on_a_dark_support_at_low_dose_still_reads_blurred():
    """A real SEM scan of particles on a dark support behind a 2 px disk at 6 e/px: most of its pixels count no
    electron. The median noise estimate left noise in the fine levels, which read as a sharp tile (0.00 px)."""
    image = slow(6)
    clean = detect(sem_scan(image, 2.0), backend="numpy").blur
    noisy = detect(sem_scan(image, 2.0, dose=6.0, rng=1), backend="numpy")
    assert abs(noisy.blur - clean) < 0.5 and noisy.blur > 1.2, (clean, noisy.blur)


# --------------------------------------------------------- two axes


def test_anisotropy_is_measured_in_square_pixels_whatever_the_dose(isbi):
    """An elliptical disk of semi-axes 3 and 1 px (second moments 9/4 and 1/4 px^2: delta 1.0 px^2) at 30 deg:
    each ring of the spectrum measures the same delta, so a dose that hides the outer rings changes its scatter,
    not its value (the astigmatism strength, by contrast, falls with dose)."""
    t = scales(16, 1.0, 8.0)
    assert ring_k2(t).shape == (6,) and np.all(np.diff(ring_k2(t)) > 0)
    for dose in (np.inf, 20.0):
        det = detect(sem_scan(isbi[4], 3.0, radius_minor=1.0, angle=30.0, dose=dose, rng=2), backend="numpy")
        delta = (det.blur_major**2 - det.blur_minor**2) / 2
        assert 0.75 <= delta <= 1.5 and abs(det.blur_angle - 30.0) < 5, (dose, delta, det.blur_angle)
    round_ = detect(sem_scan(isbi[4], 2.0, dose=20.0, rng=2), backend="numpy")
    assert (round_.blur_major**2 - round_.blur_minor**2) / 2 < 0.25


def test_blur_anisotropy_is_zero_without_signal_and_nan_without_orientation():
    moments = np.zeros((1, 6, 8))
    moments[..., 4:7] = 1.0
    delta, variance = blur_anisotropy(moments, scales(16, 1.0, 8.0))
    assert delta[0] == 0 and np.isinf(variance[0])
    moments[0, :, 0] = 100.0
    moments[0, :, 3] = np.nan  # mirroring hides the orientation
    assert np.isnan(blur_anisotropy(moments, scales(16, 1.0, 8.0))[0][0])


def test_the_anisotropy_gain_is_one_for_a_round_blur_and_grows_with_frequency():
    pairs = dog_pairs(scales(16, 1.0, 8.0))
    gain = anisotropy_gain(np.array([0.0, 1.0, np.nan]), np.array([1.0, 1.5, 1.0]), *pairs)
    assert np.allclose(gain[0], 1.0) and np.allclose(gain[2], 1.0)
    assert np.all(np.diff(gain[1]) <= 0) and gain[1, 0] > 1.05 and gain[1, -1] < 1.01


def test_an_elliptical_probe_reads_its_worst_direction(isbi):
    """The blur along the probe's long axis is within 25 % of the in-focus blur in quadrature with its second
    moment (R / 2), and a defocused-and-astigmatic tile is always blurrier along it than the same field in focus
    (an isotropic fit read a 3:1 probe as sharper than a round one)."""
    for k, image in enumerate(isbi[:4]):
        focus = detect(sem_scan(image, dose=20.0, rng=k), backend="numpy")
        for major, minor in ((3.0, 1.0), (4.0, 2.0)):
            det = detect(sem_scan(image, major, radius_minor=minor, angle=60.0, dose=20.0, rng=k), backend="numpy")
            true = np.hypot(focus.blur, major / 2)
            assert 0.75 * true <= det.blur_major <= 1.25 * true, (k, major, det.blur_major, true)
            assert det.blur_major > focus.blur_major and det.blur > focus.blur


# ------------------------------------------------------------- the scan


def test_real_fast_scans_read_the_blur_of_their_slow_scans_with_the_smear_apart():
    """The real 100 ns scans are smeared along the scan line by the detector (~0.6 px), which is no defocus: with it
    reported apart, their blur is within 0.15 px (median) of the 30 us scans of the same fields."""
    diffs, smear_fast, smear_slow = [], [], []
    for i in range(1, 9):
        f = detect(trim_frame(iio.imread(KRISS / f"fast_100ns_{i:03d}.png")), backend="numpy")
        s = detect(slow(i), backend="numpy")
        diffs.append(f.blur - s.blur)
        smear_fast.append(f.scan_smear)
        smear_slow.append(s.scan_smear)
    assert abs(np.median(diffs)) <= 0.15, diffs
    assert 0.4 <= np.median(smear_fast) <= 0.8 and np.median(smear_slow) < np.median(smear_fast) - 0.2, (smear_fast, smear_slow)
