"""A dose-free focus estimate from the scale space: the width of the blur.

The feature count falls with defocus, but it also falls with dose (noise
hides features) and depends on the thresholds. The energy of each DoG level,
once the measured noise's share is removed, depends on the signal alone.

Model
-----
Each level ``i`` of the scale space is the band-pass ``H_i(k)`` of the
detector (``mhd.functions._scalespace``). The signal's power spectrum is a
power law seen through a Gaussian blur of standard deviation ``b`` pixels,

    P(k) = A k^-alpha exp(-b^2 k^2),

so the expected signal energy of level ``i`` is

    E_i(A, alpha, b) = A / (2 pi) int |H_i(k)|^2 k^(1 - alpha) exp(-b^2 k^2) dk.

``A`` absorbs gain, offset and contrast (it is profiled out of the fit in
log space), ``alpha`` the content's spectral slope, and ``b`` is the blur:
~0 for a tile as sharp as its pixels, and for a defocused probe the sigma of
the Gaussian of equal effect (for a disk of radius ``R``, about ``R / 2``).

Fit
---
The measured energy of level ``i`` minus its noise variance (exact under the
noise model of ``mhd.functions._noise``) is the signal energy ``S_i``. Its
variance: chance (``2 E_i^2 / n_i``, ``n_i`` the number of independent
samples, about the tile area over ``4 pi t_i^2``) plus a 2 % uncertainty of
the noise variance (:data:`NOISE_REL_ERR`). Levels whose ``S_i`` is not two standard deviations above
zero carry no signal and drop out. ``(alpha, b)`` minimise the weighted
squared error of ``log S_i`` on a grid (``A`` in closed form), refined by a
parabola; ``blur_err`` is where the profile chi-square rises by 1 (the
chi-square scaled by its value per degree of freedom when the model fits
worse than chance, as real content does), added in quadrature to half the
change of ``b`` when the noise variances are all scaled by ``1 +- 3 %`` (the
noise model's error is common to all levels, which the per-level terms miss).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.interpolate
import scipy.special

__all__ = ["BlurMeasure", "anisotropy_gain", "fit_blur", "fit_blur_cells", "measure_blur", "BLUR_GRID", "ALPHA_GRID"]

#: Blur widths tried (pixels).
BLUR_GRID = np.round(np.arange(0.0, 12.0 + 1e-9, 0.05), 3)
#: Spectral slopes tried.
ALPHA_GRID = np.round(np.arange(0.0, 4.0 + 1e-9, 0.125), 3)
#: Relative uncertainty of each level's noise variance, independent from level to level: the spread of the levels'
#: noise estimates within one tile (1-3 % in variance; docs/validation.md). The common part is
#: :data:`NOISE_SCALE_ERR`'s. A larger value mistrusts the noise-dominated fine levels of a noisy tile, and the
#: coarse levels' content, rather than their fall-off, then sets the blur.
NOISE_REL_ERR = 0.02
#: Cells fitted at once by :func:`fit_blur_cells` (each holds a few arrays of ``len(ALPHA_GRID) * len(BLUR_GRID)``
#: float64: 256 cells take ~16 MB each).
CELL_CHUNK = 256
#: Signal energies must clear this many standard deviations.
SIGNIFICANCE = 2.0
#: Relative uncertainty of the noise model's overall scale, common to all levels (the per-level terms miss it).
#: With it, ``blur_err`` bounds the scatter of ``blur`` between noise realizations of one field, including the
#: fit's jumps between two nearby modes (``tests/validation/test_sem_focus.py`` checks it on a real SEM field).
NOISE_SCALE_ERR = 0.03


@functools.lru_cache(maxsize=8)
def _log_model(t0: tuple[float, ...], t1: tuple[float, ...], gain: tuple[float, ...]) -> np.ndarray:
    """``log E_i(1, alpha, b)``: (len(ALPHA_GRID), len(BLUR_GRID), n_bin) float64."""
    k = np.linspace(1e-3, np.pi, 1500)
    dk = k[1] - k[0]
    H2 = np.stack([(g * (np.exp(-0.5 * (b * k) ** 2) - np.exp(-0.5 * (a * k) ** 2))) ** 2 for a, b, g in zip(t0, t1, gain)])  # (n, K)
    blur = np.exp(-np.square(BLUR_GRID[:, None] * k[None, :]))  # (nb, K)
    slope = k[None, :] ** (1.0 - ALPHA_GRID[:, None])  # (na, K)
    # E[a, b, i] = sum_k slope[a, k] blur[b, k] H2[i, k] dk / (2 pi)
    E = np.einsum("ak,bk,ik->abi", slope, blur, H2, optimize=True) * dk / (2 * np.pi)
    return np.log(np.maximum(E, 1e-300))


#: ``|delta|`` (px^2) and blur (px) of the table :func:`anisotropy_gain` interpolates.
GAIN_DELTAS = np.concatenate([np.arange(0.0, 2.0, 0.1), np.arange(2.0, 16.0 + 1e-9, 0.5)])
GAIN_BLURS = np.arange(0.0, 6.0 + 1e-9, 0.25)


@functools.lru_cache(maxsize=8)
def _gain_table(t0: tuple[float, ...], t1: tuple[float, ...], gain: tuple[float, ...]) -> scipy.interpolate.RegularGridInterpolator:
    """``log <I0(k^2 delta)>`` over each level's band, linear between the grids: ``(blur, delta) -> (n_bin,)``.

    The average over level ``i``'s band weighs ``k`` by its share of the level's energy under a content of
    spectral slope 2 blurred by ``b`` (:data:`GAIN_BLURS`) with ``delta`` at most ``b**2`` (a probe's smaller
    variance is not negative).
    """
    k = np.linspace(1e-3, np.pi, 1500)
    H2 = np.stack([(g * (np.exp(-0.5 * (b * k) ** 2) - np.exp(-0.5 * (a * k) ** 2))) ** 2 for a, b, g in zip(t0, t1, gain)])
    out = np.empty((len(GAIN_BLURS), len(GAIN_DELTAS), len(t0)))
    for j, b in enumerate(GAIN_BLURS):
        for m, d in enumerate(GAIN_DELTAS):
            d = min(d, b * b)
            # e^{-b^2 k^2} I0(k^2 d) = e^{-(b^2 - d) k^2} i0e(k^2 d): finite for any k
            weight = H2 * k ** (1.0 - 2.0) * np.exp(-b * b * k * k)
            lifted = H2 * k ** (1.0 - 2.0) * np.exp(-(b * b - d) * k * k) * scipy.special.i0e(d * k * k)
            out[j, m] = np.log(lifted.sum(axis=1)) - np.log(weight.sum(axis=1))
    return scipy.interpolate.RegularGridInterpolator((GAIN_BLURS, GAIN_DELTAS), out)


def anisotropy_gain(delta: np.ndarray, blur: np.ndarray, t0: np.ndarray, t1: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """How much more signal energy each level holds under an anisotropic blur than under the round one of equal mean.

    An elliptical point spread function of mean variance ``b**2`` and
    anisotropy ``delta`` (:func:`mhd.functions._astigmatism.blur_anisotropy`)
    leaves a ring of radius ``k`` ``exp(-k^2 b^2) I0(k^2 delta)`` of its power:
    the least blurred direction keeps more at high frequencies than the round
    blur takes, and a fit of a round blur to the levels reads too little blur
    (a 3:1 elliptical disk of 3 px on the ISBI slices: AUC 0.78 against a
    round 2 px disk). Dividing the levels' signal by this gain removes it.

    Parameters
    ----------
    delta : (B,) array
        ``|delta|`` (px^2; NaN reads as 0).
    blur : (B,) array
        ``b`` (px), a first estimate (NaN reads as 0).
    t0, t1, gain : (n_bin,) arrays
        The levels (``mhd.functions._scalespace.dog_pairs``).

    Returns
    -------
    (B, n_bin) float64 ndarray
        ``>= 1``; 1 for a round blur. ``I0`` is averaged over each level's band
        for a content of spectral slope 2.
    """
    table = _gain_table(tuple(map(float, t0)), tuple(map(float, t1)), tuple(map(float, gain)))
    d = np.clip(np.nan_to_num(np.asarray(delta, dtype=np.float64)), 0.0, GAIN_DELTAS[-1])
    b = np.clip(np.nan_to_num(np.asarray(blur, dtype=np.float64)), 0.0, GAIN_BLURS[-1])
    return np.exp(table(np.stack([b, d], axis=-1)))


def fit_blur(
    energy: np.ndarray,
    noise_var: np.ndarray,
    t: np.ndarray,
    t0: np.ndarray,
    t1: np.ndarray,
    gain: np.ndarray,
    area: float,
    signal_gain: np.ndarray | None = None,
    with_err: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Blur width and its uncertainty from the energies of the scale-space levels.

    Parameters
    ----------
    energy : (B, n_bin) array
        Mean squared response of each level over each image (image units squared).
    noise_var : (B, n_bin) array
        Variance of each level's response to the measured noise (same units).
    t, t0, t1, gain : (n_bin,) arrays
        Level scales, inner and outer Gaussian scales (pixels) and DoG gains.
    area : float
        Pixels in each image.
    signal_gain : (B, n_bin) array, optional
        Each level's signal energy is divided by it first (:func:`anisotropy_gain`).
    with_err : bool
        False: the width alone (``blur_err`` NaN), a third of the work.

    Returns
    -------
    blur, blur_err : (B,) float64 ndarrays
        Pixels. NaN where fewer than three levels carry signal (a blank or
        pure-noise tile): no width can be measured.
    """
    logm = _log_model(tuple(map(float, t0)), tuple(map(float, t1)), tuple(map(float, gain)))
    noise_var = np.asarray(noise_var, dtype=np.float64)
    energy = _lifted(np.asarray(energy, dtype=np.float64), noise_var, signal_gain)
    n_eff = np.maximum(area / (4 * np.pi * np.asarray(t) ** 2), 1.0)
    blur = np.full(len(energy), np.nan)
    err = np.full(len(energy), np.nan)
    for j, (E, N) in enumerate(zip(energy, noise_var)):
        fitted = _fit_one(logm, E, N, n_eff)
        if fitted is None:
            continue
        blur[j], stat = fitted
        if not with_err:
            continue
        shifted = [_fit_one(logm, E, N * (1 + s * NOISE_SCALE_ERR), n_eff) for s in (-1, 1)]
        spread = abs(shifted[1][0] - shifted[0][0]) / 2 if None not in shifted else 0.0
        err[j] = float(np.hypot(stat, spread))
    return blur, err


def fit_blur_cells(
    energy: np.ndarray,
    noise_var: np.ndarray,
    t: np.ndarray,
    t0: np.ndarray,
    t1: np.ndarray,
    gain: np.ndarray,
    area: np.ndarray,
    signal_gain: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Blur width of each cell of a grid and its statistical uncertainty: :func:`fit_blur`'s fit, all cells at once.

    Parameters
    ----------
    energy : (B, gy, gx, n_bin) array
        Mean squared response of each level over each cell (image units
        squared); NaN where a level has no sample in a cell.
    noise_var : (B, n_bin) array
        Variance of each level's response to the measured noise: one tile's
        noise holds in all its cells.
    t, t0, t1, gain : (n_bin,) arrays
        As for :func:`fit_blur`.
    area : (gy, gx) array
        Pixels in each cell.
    signal_gain : (B, n_bin) array, optional
        As for :func:`fit_blur`: the tile's, in all its cells.

    Returns
    -------
    blur, err : (B, gy, gx) float64 ndarrays
        Pixels; NaN where fewer than three levels carry signal. ``err`` is
        :func:`fit_blur`'s statistical term only: the noise model's common
        error (:data:`NOISE_SCALE_ERR`) moves the cells of a tile together.

    The weighted least squares of :func:`fit_blur` for every cell in three
    matrix products: ``sum_i w_i (y_i - m_i - log A)^2`` with ``log A``
    profiled out is ``Swyy - 2 Swym + Swmm - (Swy - Swm)^2 / Sw`` over the
    model grid's ``m``.
    """
    logm = _log_model(tuple(map(float, t0)), tuple(map(float, t1)), tuple(map(float, gain)))
    na, nb, n = logm.shape
    m = logm.reshape(na * nb, n).T  # (n, K)
    N = np.asarray(noise_var, dtype=np.float64)[:, None, None, :]
    E = _lifted(np.asarray(energy, dtype=np.float64), N, None if signal_gain is None else np.asarray(signal_gain)[:, None, None, :])
    n_eff = np.maximum(np.asarray(area, dtype=np.float64)[..., None] / (4 * np.pi * np.asarray(t) ** 2), 1.0)
    S, sd, use = _signal(E, N, n_eff)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(use, np.log(np.where(use, S, 1.0)), 0.0).reshape(-1, n)
        w = np.where(use, (S / sd) ** 2, 0.0).reshape(-1, n)
    blur, err = np.full(y.shape[0], np.nan), np.full(y.shape[0], np.nan)
    levels = (w > 0).sum(axis=1)
    for lo in range(0, len(y), CELL_CHUNK):  # (cells, K) float64 arrays: bounded for a 64 x 64 grid
        cy, cw = y[lo : lo + CELL_CHUNK], w[lo : lo + CELL_CHUNK]
        with np.errstate(invalid="ignore", divide="ignore"):
            swy = (cw * cy).sum(axis=1)[:, None]
            chi2 = (cw * cy * cy).sum(axis=1)[:, None] - 2 * (cw * cy) @ m + cw @ (m * m) - (swy - cw @ m) ** 2 / cw.sum(axis=1)[:, None]
        profile = chi2.reshape(-1, na, nb).min(axis=1)  # over alpha, for each blur
        for j in np.nonzero(levels[lo : lo + CELL_CHUNK] >= 3)[0]:
            i = int(np.argmin(profile[j]))
            blur[lo + j] = _refine(BLUR_GRID, profile[j], i)
            err[lo + j] = _half_width(BLUR_GRID, profile[j] / max(profile[j][i] / max(levels[lo + j] - 3, 1), 1.0), i)
    return blur.reshape(E.shape[:-1]), err.reshape(E.shape[:-1])


def _lifted(E: np.ndarray, N: np.ndarray, signal_gain: np.ndarray | None) -> np.ndarray:
    """Energies whose signal part ``E - N`` is divided by ``signal_gain`` (unchanged without one)."""
    return E if signal_gain is None else N + (E - N) / signal_gain


def _signal(E: np.ndarray, N: np.ndarray, n_eff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signal energy ``S = E - N`` of each level, its standard deviation, and which levels carry signal."""
    S = E - N
    sd = np.sqrt(2 * E**2 / n_eff + (NOISE_REL_ERR * N) ** 2)
    with np.errstate(invalid="ignore"):
        return S, sd, S > SIGNIFICANCE * sd


def _fit_one(logm: np.ndarray, E: np.ndarray, N: np.ndarray, n_eff: np.ndarray) -> tuple[float, float] | None:
    """``(blur, statistical error)`` in px from one image's level energies; None with fewer than three signal levels."""
    S, sd, use = _signal(E, N, n_eff)
    if use.sum() < 3:
        return None
    y = np.log(S[use])
    w = (S[use] / sd[use]) ** 2  # 1 / var(log S)
    r = y - logm[:, :, use]  # (na, nb, n)
    logA = (r * w).sum(axis=2) / w.sum()
    chi2 = ((r - logA[..., None]) ** 2 * w).sum(axis=2)  # (na, nb)
    profile = chi2.min(axis=0)  # over alpha, for each blur
    i = int(np.argmin(profile))
    dof = max(int(use.sum()) - 3, 1)
    scale = max(profile[i] / dof, 1.0)
    return _refine(BLUR_GRID, profile, i), _half_width(BLUR_GRID, profile / scale, i)


def _refine(x: np.ndarray, y: np.ndarray, i: int) -> float:
    """Vertex of the parabola through the minimum and its neighbours (clipped to the grid)."""
    if i == 0 or i == len(x) - 1:
        return float(x[i])
    y0, y1, y2 = y[i - 1 : i + 2]
    den = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / den if den > 0 else 0.0
    return float(x[i] + np.clip(shift, -1, 1) * (x[1] - x[0]))


def _half_width(x: np.ndarray, chi2: np.ndarray, i: int) -> float:
    """Half the width of ``{chi2 <= min + 1}`` around index ``i`` (at least half a grid step)."""
    ok = chi2 <= chi2[i] + 1.0
    lo = i
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    hi = i
    while hi < len(x) - 1 and ok[hi + 1]:
        hi += 1
    return float(max((x[hi] - x[lo]) / 2, (x[1] - x[0]) / 2))


@dataclass(frozen=True)
class BlurMeasure:
    """The blur of a batch of tiles (:func:`measure_blur`); (B,) float64 arrays unless said, pixels, NaN where not measurable.

    Attributes
    ----------
    blur, blur_err
        Root mean square of the point spread function's standard deviations
        along its two principal axes, the scan's detector smear removed, and
        its uncertainty.
    major, minor
        Those standard deviations, the larger and the smaller.
    angle
        Direction of ``major``, degrees in [0, 180) (:func:`mhd.functions._astigmatism.anisotropy`'s convention);
        NaN where the blur is round.
    smear
        The detector's smear along the scan line (``mhd.functions._noise.scan_smear``), removed from the others.
    cells, cells_err
        (B, gy, gx): ``blur`` and its statistical uncertainty of each cell of the count grid.
    """

    blur: np.ndarray
    blur_err: np.ndarray
    major: np.ndarray
    minor: np.ndarray
    angle: np.ndarray
    smear: np.ndarray
    cells: np.ndarray
    cells_err: np.ndarray


def measure_blur(
    energy: np.ndarray,
    cell_energy: np.ndarray,
    noise_var: np.ndarray,
    levels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    area: float,
    cell_area: np.ndarray,
    delta: np.ndarray,
    delta_var: np.ndarray,
    smear: np.ndarray,
) -> BlurMeasure:
    """The blur of each tile, along its two principal axes, without the scan's smear.

    Point spread functions compose by adding their second-moment matrices
    (px^2), whatever their shapes: the defocused probe's disk, its
    astigmatism, and the detector's response along the scan line of width
    ``s`` (``diag(s**2, 0)``: ``s**2 / 2`` of mean variance and ``s**2 / 2`` of
    anisotropy along x). The levels see the sum; :func:`fit_blur` of their
    signal, lifted by :func:`anisotropy_gain` for the sum's anisotropy, gives
    its mean variance ``b**2``; the scan's share is taken off, and the
    probe's anisotropy ``delta`` (measured on the spectrum with the
    detector's response divided out) splits the rest into the two axes:
    ``major**2, minor**2 = b**2 - s**2 / 2 +- |delta|``.

    Parameters
    ----------
    energy : (B, n_bin) array
        Mean square response of each level over each image.
    cell_energy : (B, gy, gx, n_bin) array
        The same over each cell (NaN where a level has no sample).
    noise_var : (B, n_bin) array
        Each level's noise variance (the noise's power, not its typical value).
    levels : (t, t0, t1, gain)
        Scales and DoG pairs of the levels (pixels).
    area : float
        Pixels per image.
    cell_area : (gy, gx) array
        Pixels per cell.
    delta, delta_var : (B,) complex and float arrays
        The probe's anisotropy (px^2) and its chance variance
        (:func:`mhd.functions._astigmatism.blur_anisotropy`); NaN where not measurable.
    smear : (B,) array
        The detector's smear along x (px; ``mhd.functions._noise.scan_smear``).
    """
    t, t0, t1, gain = levels
    s2 = np.square(np.asarray(smear, dtype=np.float64))
    delta = np.asarray(delta, dtype=np.complex128)
    total = np.abs(np.nan_to_num(delta) + s2 / 2)  # the anisotropy the levels see: the probe's and the scan's
    first, _ = fit_blur(energy, noise_var, t, t0, t1, gain, area, with_err=False)
    lift = anisotropy_gain(total, first, t0, t1, gain)
    b, err = fit_blur(energy, noise_var, t, t0, t1, gain, area, signal_gain=lift)
    cells, cells_err = fit_blur_cells(cell_energy, noise_var, t, t0, t1, gain, cell_area, signal_gain=lift)
    mean2 = b * b - s2 / 2
    # |delta| without what chance alone adds to its square
    aniso = np.sqrt(np.clip(np.abs(delta) ** 2 - np.asarray(delta_var, dtype=np.float64), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        blur = np.sqrt(np.clip(mean2, 0.0, None))
        # d blur = b db / blur: the smear's removal stretches the fit's error, at most twice
        blur_err = err * np.clip(b / blur, 1.0, 2.0)
        cells = np.sqrt(np.clip(cells**2 - s2[:, None, None] / 2, 0.0, None))
        angle = np.where(aniso > 0, (np.degrees(np.angle(delta)) / 2) % 180.0, np.nan)
    return BlurMeasure(
        blur=blur,
        blur_err=blur_err,
        major=np.sqrt(np.clip(mean2 + aniso, 0.0, None)),
        minor=np.sqrt(np.clip(mean2 - aniso, 0.0, None)),
        angle=angle,
        smear=np.sqrt(s2),
        cells=cells,
        cells_err=cells_err,
    )
