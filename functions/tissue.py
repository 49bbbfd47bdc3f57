"""Is there tissue in a tile? Contrast-to-noise of its coarse structure.

A tile with few features is either out of focus or has nothing to focus on
(resin, a hole in the section, a saturated region). Defocus removes fine
detail but keeps coarse structure far above the noise; resin is flat up to a
gentle shading. So: average ``f x f`` pixel blocks (the noise falls ``f``-fold,
coarse structure stays), remove a plane (shading) from each region, and
compare the remaining standard deviation with the noise expected in a block
average. Pure noise scores about 1; blurred tissue scores ~10 or more.

The worker measures it on every tile it scores, on the detector's grid
(``contrast`` and ``contrast_cells`` of the tile record,
:func:`mhd.functions.worker.scoring.measure`), so the client never decodes a tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mhd.params import DEFAULTS

from ._normalize import estimate_noise

__all__ = ["Tissue", "contrast_to_noise"]

#: Block-averaged image side aimed at (pixels); sets the averaging factor.
COARSE_SIDE = 32

#: Fewest block averages across a grid cell (a plane is fitted to each cell), where the image has the pixels.
CELL_SIDE = 4

#: Smallest noise standard deviation assumed for integer images (grey levels): the quantisation step / sqrt(12).
MIN_NOISE = 0.29


@dataclass(frozen=True)
class Tissue:
    """Contrast-to-noise of a tile and of its grid cells.

    Attributes
    ----------
    cnr : float
        Whole tile (dimensionless; ~1 for pure noise).
    cells : (gy, gx) float64 ndarray
        Each cell of the same grid as the detector's feature counts.
    """

    cnr: float
    cells: np.ndarray


def contrast_to_noise(image: Any, grid: tuple[int, int] = DEFAULTS["grid"]) -> Tissue:
    """Contrast-to-noise ratio of the coarse structure of ``image``.

    Parameters
    ----------
    image : (H, W) array_like
        Grey levels (any real dtype).
    grid : (int, int)
        Cells (rows, cols), as in the detector's ``grid``.

    Returns
    -------
    Tissue

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or is smaller than ``grid`` times 2 pixels.
    """
    raw = np.asarray(image)
    img = raw.astype(np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    gy, gx = grid
    if img.shape[0] < 2 * gy or img.shape[1] < 2 * gx:
        raise ValueError(f"image {img.shape} too small for a {gy}x{gx} grid")
    sigma = estimate_noise(img, backend="numpy")
    if raw.dtype.kind in "uib":
        sigma = max(sigma, MIN_NOISE)  # integer grey levels: at least their rounding noise
    else:  # floats of any scale: at least their own rounding at the tile's magnitude
        eps = np.finfo(raw.dtype if raw.dtype.kind == "f" else np.float64).eps  # the tile's own float type
        sigma = max(sigma, float(np.max(np.abs(img))) * eps / np.sqrt(12), np.finfo(np.float64).tiny)
    # the tile: blocks of f x f pixels, a ~COARSE_SIDE image; the cells: the same blocks, or smaller ones where
    # a fine grid would leave fewer than CELL_SIDE of them across a cell
    f = max(1, min(img.shape) // COARSE_SIDE)
    fc = max(1, min(f, img.shape[0] // (CELL_SIDE * gy), img.shape[1] // (CELL_SIDE * gx)))
    coarse = _block_mean(img, f)
    fine = coarse if fc == f else _block_mean(img, fc)
    cells = np.empty((gy, gx))
    rows = np.linspace(0, fine.shape[0], gy + 1).round().astype(int)
    cols = np.linspace(0, fine.shape[1], gx + 1).round().astype(int)
    for i in range(gy):
        for j in range(gx):
            cells[i, j] = _detrended_std(fine[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]) / (sigma / fc)
    return Tissue(float(_detrended_std(coarse) / (sigma / f)), cells)


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    """Mean of ``f x f`` blocks (the ragged border dropped): (H // f, W // f)."""
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _detrended_std(region: np.ndarray) -> float:
    """Standard deviation of ``region`` after removing its least-squares plane."""
    yy, xx = np.mgrid[: region.shape[0], : region.shape[1]]
    a = np.column_stack([np.ones(region.size), yy.ravel(), xx.ravel()])
    values = region.ravel() - region.mean()  # centred first: an offset of 1e10 does not swamp the fit's rounding
    coef, *_ = np.linalg.lstsq(a, values, rcond=None)
    return float(np.std(values - a @ coef))
