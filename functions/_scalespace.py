"""The Difference-of-Gaussians filter bank in the Fourier domain.

The ``n_bin`` level scales ``t_i`` are evenly spaced from ``min_t`` to ``max_t``
(pixels), ``dt`` apart, as in the paper. Level ``i`` is the scale-normalised DoG
centred on its scale,

    D_i = s * t_i * (L(t_i + dt/2) - L(t_i - dt/2)) / dt  ~  s * t_i^2 * Laplacian(L)(t_i),

with polarity ``s = +1`` for dark features (as the paper writes the DoG) and
``-1`` for bright ones. The paper's one-sided DoG ``t_i (L(t_{i+1}) - L(t_i))``
approximates the Laplacian at ``t_i + dt/2``, so its finest level moves with
``n_bin``, and its magnitude grows with ``dt``; centring and dividing by ``dt``
make the levels samples of one function, ``t^2 Laplacian(L)``, so a threshold
means the same for any number of levels. The analytic transfer function (no
spatial kernels, no ``norm="ortho"``) makes it mean the same for any tile size.

Coarse levels are band-limited: level ``i`` is evaluated on a grid decimated by
``d`` (a power of two) when its transfer function is below ``tol`` of its peak
beyond the decimated Nyquist frequency ``pi / d``. Those levels then cost an
inverse FFT of ``1 / d**2`` the size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from mhd.params import POLARITIES

from ._backend import Backend

__all__ = ["scales", "noise_gains", "FilterBank", "filter_bank", "POLARITIES", "MAX_DECIMATION"]

#: Largest decimation of the inverse transforms; padded sizes are multiples of it.
MAX_DECIMATION = 16
#: A bank whose 2-D transfer functions take at most this many bytes keeps them (one multiply per level
#: instead of two outer products and a sum); a larger one keeps only their 1-D factors.
DENSE_BYTES = 32 * 2**20


def scales(n_bin: int, min_t: float, max_t: float) -> np.ndarray:
    """The scale (Gaussian standard deviation, pixels) of each DoG level.

    Returns
    -------
    (n_bin,) float64 array
        ``min_t`` ... ``max_t``, evenly spaced.
    """
    if int(n_bin) != n_bin or n_bin < 2:
        raise ValueError("n_bin must be an integer >= 2")
    if not 0 < min_t < max_t:
        raise ValueError("scales must satisfy 0 < min_t < max_t (pixels)")
    return np.linspace(min_t, max_t, int(n_bin))


def dog_pairs(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inner and outer Gaussian scales and the gain of each level's DoG.

    Returns
    -------
    t0, t1, gain : (n_bin,) float64 arrays
        ``t_i -/+ dt/2`` (the step shrinks to ``t_i`` where ``dt`` > ``t_i``, so
        both stay positive) and ``t_i / step``.
    """
    step = np.minimum(t[1] - t[0], t)
    return t - step / 2, t + step / 2, t / step


def noise_gains(t: np.ndarray) -> np.ndarray:
    """Standard deviation of each level's response to unit white noise.

    Parseval with the continuous integral
    ``int (G(t1) - G(t0))^2 d^2k = pi (1/t0^2 + 1/t1^2 - 4/(t0^2 + t1^2))``,
    exact while the Gaussians are resolved (``t`` >~ 0.8 px).

    Parameters
    ----------
    t : (n_bin,) array
        Level scales from :func:`scales`.

    Returns
    -------
    (n_bin,) float64 array
    """
    t0, t1, gain = dog_pairs(t)
    out: np.ndarray = gain * np.sqrt(np.pi * (1 / t0**2 + 1 / t1**2 - 4 / (t0**2 + t1**2))) / (2 * np.pi)
    return out


def _gauss(k2: np.ndarray, t: float) -> np.ndarray:
    return np.exp(-0.5 * k2 * t * t)


def _dog_1d_peak_outside(t0: float, t1: float, gain: float, k_cut: float) -> float:
    """max |H(k)| for |k| >= k_cut of the radial DoG transfer ``gain*(G(t1)-G(t0))``."""
    k = np.linspace(k_cut, np.pi * np.sqrt(2), 64)
    return float(np.max(np.abs(gain * (_gauss(k * k, t1) - _gauss(k * k, t0)))))


@dataclass(frozen=True)
class LevelGroup:
    """Levels evaluated on the same decimated grid.

    A level's transfer function ``gain * (G(t1) - G(t0)) / d**2`` on the
    cropped rfft grid is the sum of two outer products of 1-D Gaussians,
    ``G(t; ky, kx) = G(t; ky) G(t; kx)``; only the 1-D factors are kept, and
    :meth:`transfer_into` writes the 2-D function when a level runs. The bank
    then takes ``O(n_bin (P + Q))`` memory, not ``O(n_bin P Q)``: memory stays
    flat in the number of levels and in the block size for any parameters.

    Attributes
    ----------
    factor : int
        Decimation ``d``; the group's inverse FFTs have shape ``(P // d, Q // d)``.
    levels : tuple of int
        0-based level indices.
    gy : (len(levels), 2, P // d) float32 device array
        ``G(t0; ky)`` and ``G(t1; ky)`` of each level on the grid's rows.
    gx : (len(levels), 2, Q // (2 d) + 1) float32 device array
        ``-c G(t0; kx)`` and ``c G(t1; kx)`` with ``c = gain / d**2`` (the
        ``1 / d**2`` makes a smaller inverse FFT give the full-size amplitudes).
    """

    factor: int
    levels: tuple[int, ...]
    gy: Any
    gx: Any
    dense: Any = None

    def transfer_into(self, j: int, out: Any, tmp: Any, xp: Any) -> Any:
        """Level ``j`` of the group (0-based within it): its 2-D transfer function.

        Parameters
        ----------
        out, tmp : (P // d, Q // (2 d) + 1) float32 device arrays
            Scratch: the function is written into ``out`` from its 1-D factors.

        Returns
        -------
        (P // d, Q // (2 d) + 1) float32 device array
            ``out``, or the kept 2-D function itself when there is one (do not write to it).
        """
        if self.dense is not None:
            return self.dense[j]
        gy, gx = self.gy[j], self.gx[j]
        xp.multiply(gy[1][:, None], gx[1][None, :], out=out)
        xp.multiply(gy[0][:, None], gx[0][None, :], out=tmp)
        return xp.add(out, tmp, out=out)


@dataclass(frozen=True)
class FilterBank:
    """All levels of one scale space for one padded shape ``(P, Q)`` on one device.

    Attributes
    ----------
    shape : (int, int)
        Padded FFT shape ``(P, Q)``.
    t : (n_bin,) float64 array
        Level scales in pixels.
    groups : tuple of LevelGroup
        Finest (``factor == 1``) first.
    noise_gain : (n_bin,) float64 array
        Standard deviation of each level's response to unit white noise.
    """

    shape: tuple[int, int]
    t: np.ndarray
    groups: tuple[LevelGroup, ...]
    noise_gain: np.ndarray

    @property
    def n_levels(self) -> int:
        return len(self.t)


def _crop_rows(n: int, d: int) -> np.ndarray:
    half = n // (2 * d)
    rows: np.ndarray = np.r_[0:half, n - half : n]
    return rows


def _level_factor(t0: float, t1: float, gain: float, shape: tuple[int, int], tol: float) -> int:
    k = np.linspace(0, np.pi * np.sqrt(2), 512)
    peak = float(np.max(np.abs(gain * (_gauss(k * k, t1) - _gauss(k * k, t0)))))
    d = 1
    while d < MAX_DECIMATION and all(s % (2 * d) == 0 for s in shape):
        if _dog_1d_peak_outside(t0, t1, gain, np.pi / (2 * d)) > tol * peak:
            break
        d *= 2
    return d


@functools.lru_cache(maxsize=16)
def _bank_cached(shape: tuple[int, int], n_bin: int, min_t: float, max_t: float, polarity: str, tol: float, backend: Backend) -> FilterBank:
    P, Q = shape
    t = scales(n_bin, min_t, max_t)
    t0, t1, gains = dog_pairs(t)
    if polarity == "bright":
        gains = -gains
    ky_full = 2 * np.pi * np.fft.fftfreq(P)
    kx_full = 2 * np.pi * np.fft.rfftfreq(Q)
    noise_gain = noise_gains(t)
    factors = [_level_factor(t0[i], t1[i], abs(gains[i]), shape, tol) if tol > 0 else 1 for i in range(n_bin)]
    groups, parts = [], []
    with backend.use():
        for d in sorted(set(factors)):
            levels = tuple(i for i in range(n_bin) if factors[i] == d)
            ky = ky_full[_crop_rows(P, d)] if d > 1 else ky_full
            kx = kx_full[: Q // (2 * d) + 1]
            gy = np.stack([[_gauss(ky * ky, t0[i]), _gauss(ky * ky, t1[i])] for i in levels])
            c = gains[list(levels)] / (d * d)
            gx = np.stack([[-c[j] * _gauss(kx * kx, t0[i]), c[j] * _gauss(kx * kx, t1[i])] for j, i in enumerate(levels)])
            parts.append((d, levels, gy, gx))
        dense = sum(4 * len(levels) * gy.shape[-1] * gx.shape[-1] for _, levels, gy, gx in parts) <= DENSE_BYTES
        for d, levels, gy, gx in parts:
            # a kept 2-D function is summed in float64, then rounded once (as exact as the analytic one)
            h = (gy[:, 1, :, None] * gx[:, 1, None, :] + gy[:, 0, :, None] * gx[:, 0, None, :]).astype(np.float32) if dense else None
            on = backend.asarray
            groups.append(LevelGroup(d, levels, on(gy.astype(np.float32)), on(gx.astype(np.float32)), None if h is None else on(h)))
    return FilterBank(shape, t, tuple(groups), noise_gain)


def filter_bank(shape: tuple[int, int], n_bin: int, min_t: float, max_t: float, polarity: str, tol: float, backend: Backend) -> FilterBank:
    """The (cached) filter bank for a padded shape and scale parameters.

    Parameters
    ----------
    shape : (P, Q)
        Padded FFT shape; multiples of :data:`MAX_DECIMATION` allow every decimation.
    n_bin, min_t, max_t
        See :func:`scales`.
    polarity : {"dark", "bright", "both"}
        Sign of the response; ``"both"`` uses the dark-polarity bank and the
        detector takes the absolute value.
    tol : float
        Relative transfer amplitude tolerated beyond a decimated Nyquist
        frequency; 0 disables decimation (every level at full resolution).
    backend : Backend
        Where the transfer functions live; banks are cached per device.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    pol = "dark" if polarity == "both" else polarity
    return _bank_cached(tuple(int(s) for s in shape), int(n_bin), float(min_t), float(max_t), pol, float(tol), backend)
