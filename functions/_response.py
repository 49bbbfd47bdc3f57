"""One block's response: the per-pixel maximum over scales of the normalised DoG levels, level group by group."""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Any

import numpy as np

from ._backend import Backend
from ._cells import Bands, cell_sums
from ._lanes import PerThread, RunningMax, cpu_lanes, run_lanes
from ._scalespace import FilterBank, LevelGroup
from ._tags import COARSER, level_of, tag
from ._upsample import crop_spectrum, upsample_cubic

__all__ = ["MIN_THRESHOLD", "block_response", "level_response", "resolve_levels"]


#: Thresholds are at least this, so that dividing by them stays finite.
MIN_THRESHOLD = 1e-12


def level_response(
    Fd: Any,
    group: LevelGroup,
    j: int,
    shape: tuple[int, int],
    be: Backend,
    scratch: tuple[Any, Any, Any],
    workers: int | None,
) -> Any:
    """One DoG level: ``irfft2(Fd * transfer)``.

    Parameters
    ----------
    Fd : (B, p, q // 2 + 1) complex64 device array
        The spectrum on the level's (possibly decimated) grid.
    group, j : LevelGroup, int
        The level: ``group``'s ``j``-th (:meth:`LevelGroup.transfer_into`).
    shape : (p, q)
        The level's grid.
    scratch : (complex64 array like ``Fd``, two float32 (p, q // 2 + 1) arrays)
        Buffers of this thread for this grid (overwritten).
    workers : int or None
        FFT threads (None: the backend's).

    Returns
    -------
    (B, p, q) float32 device array
        ``D_i`` in image units, a new array.
    """
    buf, h, tmp = scratch
    be.xp.multiply(Fd, group.transfer_into(j, h, tmp, be.xp), out=buf)
    return be.irfft2(buf, shape, workers=workers, overwrite=True)


def block_response(
    padded: Any,
    bank: FilterBank,
    noise: concurrent.futures.Future,
    polarity: str,
    window: tuple[int, int, int, int],
    cells: tuple[Bands, Bands],
    be: Backend,
    spectrum_hook: Any = None,
) -> tuple[Any, list[tuple[int, Any]], np.ndarray, np.ndarray]:
    """Running maximum over levels of response / threshold on a window.

    Every level is one task: :func:`level_response` on the spectrum cropped
    to the level's grid, divided by the level's threshold once the noise
    model is in (so the first transforms need not wait for it), its sum of
    squares over each cell (``mhd.functions._cells``), tag
    (``mhd.functions._tags``) and fold into the running maximum of its grid.
    On the CPU the tasks run on ``be.workers`` lanes (``mhd.functions._lanes``,
    single-threaded FFTs): the finest grid's levels on half of them, the
    moments hook, the coarse levels and their merge (upsampled into the finest
    grid) on the others. On a GPU the tasks run in order.

    Parameters
    ----------
    padded : (B, P, Q) float32 device array
    noise : Future of NoiseModel
        The tiles' noise model (:func:`noise_model`); awaited after the
        forward FFT, which it may overlap on another lane.
    window : (r0, c0, R, C)
        Window of the padded grid to return (the block plus a one-pixel margin).
    cells : (rows, cols)
        The block's pixels (the window less its margin) split by the count
        grid's cells (``mhd.functions._cells.bands``): the energies are summed
        over these and not over the halo, where the padded grid wraps.
    spectrum_hook : callable, optional
        Called once with the forward spectrum (B, P, Q // 2 + 1) and the
        noise model, so other measures share the one forward FFT.

    Returns
    -------
    best : (B, R, C) float32
        ``max_i D_i / thr_i`` (``|D_i|`` for polarity "both"), its level index
        tagged in the low mantissa bits (see :func:`level_of`); ``best > 1``
        passes some level's threshold. Each level is measured in units of its
        own threshold, so a level with a higher (noise) threshold needs a
        proportionally stronger response to win the maximum over scales.
        Values that came from a coarser grid are tagged :data:`COARSER`.
    coarse : list of (factor, (B, P // factor, Q // factor) uint8 device array)
        Level maps of the coarser grids, finest first, for :func:`resolve_levels`.
    sums : (B, n_bin, m_rows, m_cols) float64 ndarray
        Sum of squares of each level's response ``D_i`` (image units squared)
        over the samples of its grid in each band pair of ``cells``, for the
        blur estimate.
    samples : (n_bin, m_rows, m_cols) int64 ndarray
        The number of those samples.
    """
    xp = be.xp
    r0, c0, R, C = window
    P, Q = padded.shape[1:]
    F = be.rfft2(padded)
    B, n_bin = padded.shape[0], len(bank.t)
    groups = list(reversed(bank.groups))  # coarsest first
    spectra = {g.factor: F if g.factor == 1 else crop_spectrum(F, g.factor, xp) for g in groups}
    maxima = {g.factor: RunningMax(xp) for g in groups}
    lanes = cpu_lanes(be)
    scratch = PerThread()
    coarse: list[tuple[int, Any]] = []
    rows, cols = cells
    sums = np.zeros((B, n_bin, len(rows.cell), len(cols.cell)))
    samples = np.zeros((n_bin, len(rows.cell), len(cols.cell)), dtype=np.int64)

    def level(g: LevelGroup, j: int) -> None:
        d, i = g.factor, g.levels[j]
        Fd = spectra[d]
        buffers = scratch.get(
            d, lambda: (xp.empty_like(Fd), xp.empty(Fd.shape[1:], dtype=xp.float32), xp.empty(Fd.shape[1:], dtype=xp.float32))
        )
        D = level_response(Fd, g, j, (P // d, Q // d), be, buffers, 1 if lanes > 1 else None)
        # in units of the level's threshold, once the noise model is in (the transform did not wait for it):
        # D_i / thr_i > 1 passes level i
        D *= xp.asarray((1.0 / np.maximum(noise.result().thresholds[:, i], MIN_THRESHOLD)).astype(np.float32)[:, None, None])
        cs, samples[i] = cell_sums(D, d, rows, cols, xp)
        sums[:, i] = be.to_host(cs)
        maxima[d].add(tag(D, i, xp, absolute=polarity == "both"))

    def upsampled(acc: Any, d_from: int, d_to: int, start: tuple[int, int], size: tuple[int, int]) -> Any:
        coarse.insert(0, (d_from, level_of(acc, xp)))
        return tag(xp.ascontiguousarray(upsample_cubic(acc, d_from // d_to, start, size, xp)), COARSER, xp)

    def merge_coarse() -> Any:
        """The coarse grids' maxima, each upsampled into the next finer one, on the finest grid."""
        acc = None
        for g, finer in zip(groups, groups[1:]):
            acc = maxima[g.factor].result(acc)
            acc = upsampled(acc, g.factor, finer.factor, (0, 0), (P // finer.factor, Q // finer.factor))
        return acc

    tasks = [functools.partial(level, g, j) for g in groups[:-1] for j in range(len(g.levels))]
    if spectrum_hook is not None:
        tasks.insert(0, lambda: spectrum_hook(F, noise.result()))  # reads the spectrum while the lanes filter it
    finest = groups[-1]
    fine_tasks = [functools.partial(level, finest, j) for j in range(len(finest.levels))]
    start = run_lanes(lanes, tasks, merge_coarse if len(groups) > 1 else None, fine_tasks)
    sums *= (np.maximum(noise.result().thresholds, MIN_THRESHOLD) ** 2)[..., None, None]  # the thresholds the responses were divided by
    if finest.factor == 1:
        return maxima[1].result(start, window=(slice(None), slice(r0, r0 + R), slice(c0, c0 + C))), coarse, sums, samples
    return upsampled(maxima[finest.factor].result(start), finest.factor, 1, (r0, c0), (R, C)), coarse, sums, samples


def resolve_levels(
    level: np.ndarray, b: np.ndarray, y: np.ndarray, x: np.ndarray, coarse: list[tuple[int, Any]], be: Backend
) -> np.ndarray:
    """Replace :data:`COARSER` tags by the level at the nearest sample of the coarser grids.

    ``b, y, x`` are the features' batch index and padded-grid position (host
    int64 arrays); ``coarse`` is from :func:`_response`.
    """
    level = level.copy()
    todo = np.flatnonzero(level == COARSER)
    y, x, prev = y[todo], x[todo], 1
    for d, lmap in coarse:
        if todo.size == 0:
            break
        f = d // prev
        y, x = (y + f // 2) // f % lmap.shape[1], (x + f // 2) // f % lmap.shape[2]
        found = be.to_host(lmap[be.xp.asarray(b[todo]), be.xp.asarray(y), be.xp.asarray(x)]).astype(np.int64)
        level[todo] = found
        more = found == COARSER
        todo, y, x, prev = todo[more], y[more], x[more], d
    return level
