"""The detector's count grid applied to the level energies: each level's energy per cell.

The blur (``mhd.functions._blur``) is fitted to the mean square response of
each DoG level. Summed over the cells of the count grid instead of the whole
tile, the same responses give a blur per cell at almost no cost: the sums
of squares of each row within each column band (one pass over the response,
no temporary), then those rows summed within each row band, on whichever
array module computes the levels. (Matrix products with indicator matrices
cost the same arithmetic, but BLAS threads inside the detector's lanes
contend: the levels took 2.3x as long at 1024^2.)

A cell is the set of pixels that :func:`mhd.functions.detect` counts in one
cell of its ``grid``: pixel row ``r`` of an ``H``-row image lies in cell row
``r * gy // H``. A block of a large image (``block_size``) sees the part of
each cell inside it; the parts add up over blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Bands", "bands", "cell_edges", "cell_sums"]


def cell_edges(n: int, cells: int) -> np.ndarray:
    """First pixel of each of ``cells`` cells along an axis of ``n`` pixels, then ``n``: (cells + 1,) int64.

    Pixel ``p`` lies in cell ``p * cells // n``: the cell ``i`` starts at
    ``ceil(i * n / cells)``. With more cells than pixels some cells are empty.
    """
    return -(-np.arange(cells + 1, dtype=np.int64) * n // cells)


@dataclass(frozen=True)
class Bands:
    """How the pixels of one block fall into cells, along one axis.

    Attributes
    ----------
    cuts : (m + 1,) int64 ndarray
        Band boundaries in the padded block's coordinates (full resolution),
        increasing: band ``j`` is ``[cuts[j], cuts[j + 1])``.
    cell : (m,) int64 ndarray
        Grid cell (row or column index) of each band.
    """

    cuts: np.ndarray
    cell: np.ndarray

    def sizes(self) -> np.ndarray:
        """Pixels in each band at full resolution: (m,) int64."""
        return np.diff(self.cuts)

    def on_grid(self, d: int) -> np.ndarray:
        """Band boundaries on a grid decimated by ``d`` (``cuts // d``): (m + 1,) int64. A band shorter than
        ``d`` may hold no sample."""
        return self.cuts // d


def bands(lo: int, hi: int, n: int, cells: int, offset: int) -> Bands:
    """The cells of pixels ``[lo, hi)`` of an axis of ``n`` pixels split into ``cells``, shifted by ``offset``.

    Parameters
    ----------
    lo, hi : int
        The block's first and past-the-end pixel along the axis (image coordinates).
    n, cells : int
        Image length along the axis and number of grid cells.
    offset : int
        Added to the boundaries: the padded block's coordinate of image pixel 0.
    """
    edges = cell_edges(n, cells)
    inner = np.unique(edges[(edges > lo) & (edges < hi)])
    cuts = np.concatenate([[lo], inner, [hi]]).astype(np.int64)
    cell = np.searchsorted(edges, cuts[:-1], side="right") - 1
    return Bands(cuts + offset, cell)


def cell_sums(D: Any, d: int, rows: Bands, cols: Bands, xp: Any) -> tuple[Any, np.ndarray]:
    """Sum of squares of a (B, p, q) level response on grid ``d`` over each band pair, and the samples in each.

    Parameters
    ----------
    D : (B, p, q) float32 array of module ``xp``
    d : int
        Decimation of the level's grid.
    rows, cols : Bands
        The block's cells along each axis (:func:`bands`).

    Returns
    -------
    sums : (B, m_rows, m_cols) float64 array of ``xp``
    samples : (m_rows, m_cols) int64 ndarray
        Grid samples in each band pair (0 where a band is shorter than ``d``).
    """
    r, c = rows.on_grid(d), cols.on_grid(d)
    inner = D[:, r[0] : r[-1]]
    # (B, rows, m_cols): each row's sum of squares within each column band
    zeros = xp.zeros(inner.shape[:2], dtype=inner.dtype)  # a band without samples (shorter than d): no einsum over nothing
    per_row = xp.stack(
        [xp.einsum("bij,bij->bi", inner[..., a:b], inner[..., a:b]) if b > a else zeros for a, b in zip(c[:-1], c[1:])], axis=-1
    )
    # summed within each row band: differences of the running sum at the bands' ends
    run = xp.cumsum(per_row, axis=1, dtype=xp.float64)
    run = xp.concatenate([xp.zeros_like(run[:, :1]), run], axis=1)
    ends = xp.asarray(r - r[0])
    return run[:, ends[1:]] - run[:, ends[:-1]], np.outer(np.diff(r), np.diff(c)).astype(np.int64)
