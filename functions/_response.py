"""One block of a tile: its response (the per-pixel maximum over scales of the normalised DoG levels, level group
by group), the features it keeps (3 x 3 maxima above the noise) and what its spectrum says of the blur."""

from __future__ import annotations

import concurrent.futures
import functools
import time
from typing import Any, Callable

import numpy as np

from ._astigmatism import spectral_moments
from ._backend import Backend
from ._cells import Bands, bands, cell_sums
from ._geometry import extract_block, fast_size
from ._lanes import PerThread, RunningMax, cpu_lanes, run_lanes, soon
from ._nms import candidates, local_maxima
from ._noise import NoiseModel
from ._scalespace import FilterBank, LevelGroup, filter_bank, scales
from ._tags import COARSER, level_of, tag
from ._upsample import crop_spectrum, upsample_cubic

__all__ = ["MIN_THRESHOLD", "block_response", "detect_block", "level_response", "resolve_levels"]


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


def detect_block(
    norm: Any,
    block: tuple[int, int, int, int],
    h: int,
    noise: concurrent.futures.Future[Any],
    p: dict[str, Any],
    be: Backend,
) -> tuple[Callable[[], tuple[np.ndarray, float]], np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray], float]:
    """Features of one block of a normalised (B, H, W) stack on backend ``be``.

    The 3 x 3 maxima of the block's NMS run on the lanes, by bands of rows
    (:func:`mhd.functions._lanes.soon`), while the caller goes on; with one
    lane (a GPU, or ``workers=1``) they have run when this returns.

    Returns
    -------
    feats : callable
        Returns ``(batch, row, col, level)`` in image coordinates ((N, 4)
        int64) and the milliseconds the NMS took, once the bands are done;
        holds the block's response until called.
    moments : (B, R, 8) float64
        Spectral moments of the block for the astigmatism measure (additive over blocks).
    energy : (B, n_bin) float64
        Each level's mean square response times the block's area (additive over blocks).
    cells : ((B, n_bin, gy, gx) float64, (n_bin, gy, gx) float64)
        Each level's mean square response over the part of each grid cell in
        the block times that part's area, and those areas (both additive over
        blocks; 0 for a cell outside the block or, on a decimated level, too
        thin to hold a sample).
    levels_ms : float
        Milliseconds from the block's extraction to its last level.
    """
    y0, y1, x0, x1 = block
    xp = be.xp
    shape = (fast_size(y1 - y0 + 2 * h), fast_size(x1 - x0 + 2 * h))
    with be.use():
        bank = filter_bank(shape, p["n_bin"], p["min_t"], p["max_t"], p["polarity"], p["tol"], be)
        t0 = time.perf_counter()
        padded = extract_block(be.asarray(norm), y0, y1, x0, x1, h, shape, xp)
        H, W = norm.shape[1:]
        inside = (min(y1 + h, H) - max(y0 - h, 0), min(x1 + h, W) - max(x0 - h, 0))
        moments = []
        t = scales(p["n_bin"], p["min_t"], p["max_t"])
        mirrored = (shape[0] - inside[0], shape[1] - inside[1])

        def hook(F: Any, model: NoiseModel) -> None:
            moments.append(spectral_moments(F, shape, t, be, model.spectrum, mirrored, noise_y=model.spectrum_y))

        gy, gx = p["grid"]
        cells = (bands(y0, y1, H, gy, h - y0), bands(x0, x1, W, gx, h - x0))
        window = (h - 1, h - 1, y1 - y0 + 2, x1 - x0 + 2)
        best, coarse, sums, samples = block_response(padded, bank, noise, p["polarity"], window, cells, be, hook)
        del padded
        be.synchronize()
        levels_ms = (time.perf_counter() - t0) * 1e3
        _, R, C = best.shape
        mask = xp.empty((best.shape[0], R - 2, C - 2), dtype=bool) if min(R, C) >= 3 else None

    # the NMS on the lanes while the caller goes on (the blur fit): the 3 x 3 maxima by bands of rows, then the rest,
    # queued after the bands (which have started when it does: its wait cannot hold up the pool)
    edges = np.linspace(0, R - 2, max(1, min(cpu_lanes(be), (R - 2) // 64)) + 1).round().astype(int)
    rows = list(zip(edges[:-1], edges[1:])) if mask is not None else []
    bands_done = [soon(cpu_lanes(be), functools.partial(candidates, best, be, 1.0, band, mask)) for band in rows]

    def features() -> tuple[np.ndarray, float]:
        for job in bands_done:
            job.result()
        with be.use():
            idx = local_maxima(best, be, floor=1.0, cand=mask)
            b, rem = np.divmod(idx, R * C)
            r, c = np.divmod(rem, C)
            level = be.to_host(level_of(best.ravel()[xp.asarray(idx)], xp)).astype(np.int64)
            level = resolve_levels(level, b, r + h - 1, c + h - 1, coarse, be)
        return np.stack([b, r - 1 + y0, c - 1 + x0, level], axis=1), (time.perf_counter() - t_nms) * 1e3

    t_nms = time.perf_counter()
    found = soon(cpu_lanes(be), features)

    energy = sums.sum(axis=(2, 3)) / samples.sum(axis=(1, 2)) * ((y1 - y0) * (x1 - x0))  # weighted by the block's area
    area = np.outer(cells[0].sizes(), cells[1].sizes()) * (samples > 0)  # (n_bin, m_rows, m_cols)
    num, den = np.zeros(sums.shape[:2] + (gy, gx)), np.zeros((sums.shape[1], gy, gx))
    ix = np.ix_(cells[0].cell, cells[1].cell)
    num[(slice(None), slice(None)) + ix] = sums / np.maximum(samples, 1) * area
    den[(slice(None),) + ix] = area
    return found.result, moments[0], energy, (num, den), levels_ms
