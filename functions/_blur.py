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

import numpy as np

__all__ = ["fit_blur", "fit_blur_cells", "BLUR_GRID", "ALPHA_GRID"]

#: Blur widths tried (pixels).
BLUR_GRID = np.round(np.arange(0.0, 12.0 + 1e-9, 0.05), 3)
#: Spectral slopes tried.
ALPHA_GRID = np.round(np.arange(0.0, 4.0 + 1e-9, 0.125), 3)
#: Relative uncertainty of each level's noise variance, independent from level to level. Measured: a level's noise
#: standard deviation differs from that of its response to the true noise by 0-2 % at doses 2 and 6 and 5 % on sharp
#: tiles at dose 20, nearly the same at every level (``bench/sem_focus.py thresholds``: within one tile the 16
#: levels spread by 0.5-1.5 %, i.e. 1-3 % in variance; the common part is :data:`NOISE_SCALE_ERR`'s). A larger
#: value mistrusts the noise-dominated fine levels of a noisy tile and lets the coarse levels' content set the
#: blur: 0.05 read ~0.35 px more blur on real slow SEM scans once scan noise at the fast scans' level was added
#: (``bench/sem_focus.py bias``, median move over the ``time/`` and ``line/`` scans: +0.36 / +0.33 px with 0.05,
#: +0.27 / +0.20 with 0.02), and so on the real fast scans against their slow scans.
NOISE_REL_ERR = 0.02
#: Cells fitted at once by :func:`fit_blur_cells` (each holds a few arrays of ``len(ALPHA_GRID) * len(BLUR_GRID)``
#: float64: 256 cells take ~16 MB each).
CELL_CHUNK = 256
#: Signal energies must clear this many standard deviations.
SIGNIFICANCE = 2.0
#: Relative uncertainty of the noise model's overall scale, common to all levels. With it, ``blur_err``
#: bounds the scatter of ``blur`` between noise realizations of one field (a sem-kriss slow scan re-scanned
#: by ``simulate.sem_scan`` at 20 e/px through a 2 px disk: ``blur_err`` 0.113 px; the realizations fall in two
#: modes of the fit 0.16 px apart, about half in each, each 0.01-0.03 px wide, so the standard deviation over 16
#: was 0.082-0.088 px for four sets of seeds; with a 5 % per-level uncertainty one in ten took the second mode).
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


def fit_blur(
    energy: np.ndarray, noise_var: np.ndarray, t: np.ndarray, t0: np.ndarray, t1: np.ndarray, gain: np.ndarray, area: float
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

    Returns
    -------
    blur, blur_err : (B,) float64 ndarrays
        Pixels. NaN where fewer than three levels carry signal (a blank or
        pure-noise tile): no width can be measured.
    """
    logm = _log_model(tuple(map(float, t0)), tuple(map(float, t1)), tuple(map(float, gain)))
    energy = np.asarray(energy, dtype=np.float64)
    noise_var = np.asarray(noise_var, dtype=np.float64)
    n_eff = np.maximum(area / (4 * np.pi * np.asarray(t) ** 2), 1.0)
    blur = np.full(len(energy), np.nan)
    err = np.full(len(energy), np.nan)
    for j, (E, N) in enumerate(zip(energy, noise_var)):
        fitted = _fit_one(logm, E, N, n_eff)
        if fitted is None:
            continue
        blur[j], stat = fitted
        shifted = [_fit_one(logm, E, N * (1 + s * NOISE_SCALE_ERR), n_eff) for s in (-1, 1)]
        spread = abs(shifted[1][0] - shifted[0][0]) / 2 if None not in shifted else 0.0
        err[j] = float(np.hypot(stat, spread))
    return blur, err


def fit_blur_cells(
    energy: np.ndarray, noise_var: np.ndarray, t: np.ndarray, t0: np.ndarray, t1: np.ndarray, gain: np.ndarray, area: np.ndarray
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
    E = np.asarray(energy, dtype=np.float64)
    N = np.asarray(noise_var, dtype=np.float64)[:, None, None, :]
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
