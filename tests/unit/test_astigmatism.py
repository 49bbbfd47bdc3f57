"""Astigmatism from the detector's spectrum: convention, separation from defocus, noise, geometry.

Spectra are made as the detector makes them (normalise, mirror-pad by the
halo, ``rfft2``), so these tests do not depend on the detector's internals.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
from scipy import ndimage

from mhd.functions import estimate_noise, normalize
from mhd.functions._astigmatism import (
    ASTIGMATISM_THRESHOLD,
    MOMENT_COLUMNS,
    anisotropy,
    spectral_anisotropy,
    spectral_moments,
)
from mhd.functions.simulate import blur, digitize, shot_noise, to_signal

T = np.linspace(1.0, 8.0, 17)  # the detector's default scales (px)
HALO = 34  # 4 * max_t + 2
DOSES = (10.0, 50.0, np.inf)  # electrons per pixel at full brightness


def padded_spectrum(image: np.ndarray, extra: int = 0) -> tuple[np.ndarray, tuple[int, int], float, tuple[int, int]]:
    """rfft2 of the normalised, mirror-padded image: (F, (P, Q), noise, mirrored)."""
    norm = normalize(image, backend="numpy")
    H, W = norm.shape
    P = scipy.fft.next_fast_len(H + 2 * HALO + extra, real=True)
    Q = scipy.fft.next_fast_len(W + 2 * HALO + extra, real=True)
    padded = np.pad(norm, ((HALO, P - H - HALO), (HALO, Q - W - HALO)), mode="reflect")
    return scipy.fft.rfft2(padded[None]), (P, Q), estimate_noise(norm, backend="numpy"), (P - H, Q - W)


def measure(image: np.ndarray, extra: int = 0) -> tuple[float, float]:
    F, shape, noise, mirrored = padded_spectrum(image, extra)
    strength, angle = spectral_anisotropy(F, shape, T, "numpy", noise, mirrored)
    return float(strength[0]), float(angle[0])


def scan(signal: np.ndarray, dose: float, rng: np.random.Generator) -> np.ndarray:
    """An 8-bit scan of a [0, 1] signal with shot noise."""
    return digitize(shot_noise(signal, dose, rng))


def angle_error(a: float, b: float) -> float:
    """Distance between two axis directions, degrees in [0, 90]."""
    return abs((a - b + 90.0) % 180.0 - 90.0)


def auc(positive: list[float], negative: list[float]) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    p, n = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """Isotropic random texture (white noise smoothed at 1 px), 384 x 384, in [0, 1]."""
    x = ndimage.gaussian_filter(np.random.default_rng(7).random((384, 384)), 1.0)
    return (x - x.min()) / np.ptp(x)


# -------------------------------------------------------------- convention


@pytest.mark.parametrize(
    "sigma, expected",
    [((4.0, 0.5), 90.0), ((0.5, 4.0), 0.0)],  # (rows, cols): smeared along the columns' direction = up/down
)
def test_angle_is_counter_clockwise_from_x_and_blur_along_rows_reads_90(texture, sigma, expected):
    strength, angle = measure(ndimage.gaussian_filter(texture, sigma, mode="reflect"))
    assert strength > 0.5
    assert angle_error(angle, expected) < 2.0


@pytest.mark.parametrize("direction, expected", [((-1, 1), 45.0), ((1, 1), 135.0)])
def test_diagonal_smear_reads_45_for_up_right_and_135_for_up_left(texture, direction, expected):
    # A line kernel along (row step, col step): (-1, +1) goes up and to the right as displayed.
    kernel = np.zeros((15, 15))
    for i in range(-5, 6):
        kernel[7 + i * direction[0], 7 + i * direction[1]] = 1.0
    strength, angle = measure(ndimage.convolve(texture, kernel / kernel.sum(), mode="reflect"))
    assert strength > 0.3
    assert angle_error(angle, expected) < 3.0


@pytest.mark.parametrize("psf_angle", [0.0, 30.0, 75.0, 110.0, 160.0])
def test_angle_follows_the_simulated_probe_long_axis(texture, psf_angle):
    strength, angle = measure(blur(texture, 3.0, 1.0, psf_angle))
    assert strength > 0.5
    assert angle_error(angle, psf_angle) < 3.0


# ----------------------------------------------------- astigmatism vs defocus


@pytest.fixture(scope="module")
def separation(isbi) -> dict[str, list]:
    """Strength and angle error on 10 ISBI slices at 3 doses: in focus, isotropic and astigmatic blur.

    The astigmatic probe has axes 2 and 1 px at a random angle; the isotropic
    one has the same mean square width, sqrt(2.5) px.
    """
    rng = np.random.default_rng(2012)
    out: dict[str, list] = {"focus": [], "isotropic": [], "astigmatic": [], "angle_error": [], "dose": []}
    for image in isbi[::3]:
        signal = to_signal(image)
        for dose in DOSES:
            psf_angle = float(rng.uniform(0.0, 180.0))
            out["focus"].append(measure(scan(signal, dose, rng))[0])
            out["isotropic"].append(measure(scan(blur(signal, np.sqrt(2.5)), dose, rng))[0])
            strength, angle = measure(scan(blur(signal, 2.0, 1.0, psf_angle), dose, rng))
            out["astigmatic"].append(strength)
            out["angle_error"].append(angle_error(angle, psf_angle))
            out["dose"].append(dose)
    return out


@pytest.mark.slow
def test_astigmatic_blur_separates_from_isotropic_blur_across_doses(separation):
    assert auc(separation["astigmatic"], separation["isotropic"]) >= 0.95
    assert auc(separation["astigmatic"], separation["focus"]) >= 0.95


def test_threshold_splits_astigmatic_from_in_focus_and_defocused(separation):
    negatives = separation["focus"] + separation["isotropic"]
    assert max(negatives) < ASTIGMATISM_THRESHOLD
    flagged = np.asarray(separation["astigmatic"]) >= ASTIGMATISM_THRESHOLD
    dose = np.asarray(separation["dose"])
    assert flagged[dose >= 50].all()  # a 2 : 1 probe is always caught from 50 e/px up
    assert flagged[dose < 50].mean() >= 0.5  # and mostly at 10 e/px, where shot noise hides the outer rings


def test_blur_direction_is_recovered_at_every_dose(separation):
    errors = np.asarray(separation["angle_error"])
    assert np.median(errors) < 5.0
    assert errors.max() < 15.0


# ------------------------------------------------------------------ noise


def test_white_noise_alone_reads_isotropic():
    rng = np.random.default_rng(3)
    strengths = [measure(rng.normal(0.5, 0.1, (384, 384)))[0] for _ in range(4)]
    assert max(strengths) < 0.05


def test_noise_floor_subtraction_keeps_the_strength_of_a_noisy_astigmatic_tile(texture):
    noisy = blur(texture, 2.5, 1.0, 60.0) + np.random.default_rng(4).normal(0.0, 0.15, texture.shape)
    F, shape, noise, mirrored = padded_spectrum(noisy)
    with_floor, angle = spectral_anisotropy(F, shape, T, "numpy", noise, mirrored)
    without_floor, _ = spectral_anisotropy(F, shape, T, "numpy", 0.0, mirrored)
    assert with_floor[0] > 1.5 * without_floor[0]
    assert angle_error(angle[0], 60.0) < 5.0


def test_seam_of_a_steep_ramp_does_not_read_as_astigmatism(texture):
    rows, cols = np.indices(texture.shape)
    ramp = 0.2 * blur(texture, 2.0) + 0.8 * (cols / cols.max()) * (rows / rows.max())
    strength, _ = measure(ramp)
    assert strength < 0.1


# --------------------------------------------------------------- geometry


@pytest.mark.parametrize("psf_angle", [25.0, 100.0])
def test_mirror_correction_makes_the_padding_irrelevant(psf_angle):
    texture = ndimage.gaussian_filter(np.random.default_rng(8).random((768, 768)), 1.0)
    image = blur(texture, 2.5, 1.0, psf_angle)
    # 9 % vs 23 % of the rows (and columns) mirrored: sin 2 theta seen at 0.69 vs 0.29 of its size
    tight, wide = measure(image), measure(image, extra=150)
    assert abs(tight[0] - wide[0]) < 0.1
    assert angle_error(tight[1], psf_angle) < 3.0
    assert angle_error(wide[1], psf_angle) < 3.0


def test_orientation_is_not_measurable_when_padding_dominates(texture):
    strength, angle = measure(texture[:96, :96])
    assert np.isnan(strength) and np.isnan(angle)


def test_moments_of_blocks_add_up_to_the_whole_image(texture):
    image = blur(texture, 2.5, 1.0, 140.0)
    whole_strength, whole_angle = measure(image)
    norm = normalize(image, backend="numpy")
    noise = estimate_noise(norm, backend="numpy")
    H, W = norm.shape
    total = 0.0
    for x0, x1 in ((0, W // 2), (W // 2, W)):  # left and right blocks with real context inside the image
        a, b = max(x0 - HALO, 0), min(x1 + HALO, W)
        Q = scipy.fft.next_fast_len(x1 - x0 + 2 * HALO, real=True)
        P = scipy.fft.next_fast_len(H + 2 * HALO, real=True)
        left = HALO - (x0 - a)
        block = np.pad(norm[:, a:b], ((HALO, P - H - HALO), (left, Q - (b - a) - left)), mode="reflect")
        total = total + spectral_moments(scipy.fft.rfft2(block[None]), (P, Q), T, "numpy", noise, (P - H, Q - (b - a)))
    strength, angle = anisotropy(total)
    assert strength[0] == pytest.approx(whole_strength, abs=0.05)
    assert angle_error(angle[0], whole_angle) < 3.0


def test_batch_gives_the_same_moments_as_single_images(texture):
    images = [blur(texture, 2.0, 1.0, 10.0), blur(texture, 1.5)]
    spectra = [padded_spectrum(im) for im in images]
    F = np.concatenate([s[0] for s in spectra])
    shape, mirrored = spectra[0][1], spectra[0][3]
    noise = np.array([s[2] for s in spectra])
    batch = spectral_moments(F, shape, T, "numpy", noise, mirrored)
    assert batch.shape[0] == 2 and batch.shape[2] == len(MOMENT_COLUMNS)
    for k, (Fk, _, nk, _) in enumerate(spectra):
        np.testing.assert_allclose(batch[k], spectral_moments(Fk, shape, T, "numpy", nk, mirrored)[0], rtol=1e-5)


def test_blank_spectrum_is_isotropic_with_no_direction():
    strength, angle = spectral_anisotropy(np.zeros((1, 256, 129), np.complex64), (256, 256), T, "numpy", 0.0)
    assert strength[0] == 0.0 and np.isnan(angle[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(F=np.zeros((1, 64, 64), np.complex64)), "F must have shape"),
        (dict(F=np.zeros((64, 33), np.complex64)), "F must have shape"),
        (dict(t=[8.0, 1.0]), "increasing scales"),
        (dict(t=[0.0, 8.0]), "increasing scales"),
        (dict(noise=-1.0), "noise"),
        (dict(noise=np.nan), "noise"),
        (dict(mirrored=(64, 0)), "mirrored"),
    ],
)
def test_invalid_input_is_rejected_with_the_parameter_named(kwargs, message):
    args = dict(F=np.zeros((1, 64, 33), np.complex64), shape=(64, 64), t=T, backend="numpy", noise=0.0, mirrored=(0, 0)) | kwargs
    with pytest.raises(ValueError, match=message):
        spectral_moments(**args)


def test_cupy_gives_the_numpy_result(texture):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (GPU-only check)")
    from mhd.functions import cuda_available

    if not cuda_available():
        pytest.skip("no CUDA device: the CuPy path runs only on a GPU")
    F, shape, noise, mirrored = padded_spectrum(blur(texture, 2.0, 1.0, 50.0))
    on_cpu = spectral_moments(F, shape, T, "numpy", noise, mirrored)
    on_gpu = spectral_moments(cupy.asarray(F), shape, T, "cupy", noise, mirrored)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4)
