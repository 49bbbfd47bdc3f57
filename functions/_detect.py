"""The MHD detector: count multi-scale histologic features in an EM tile."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from mhd.params import DEFAULTS
from mhd.params import validate as validate_params

from ._astigmatism import anisotropy, blur_anisotropy, spectral_moments
from ._backend import Backend, get_backend
from ._blur import measure_blur
from ._cells import Bands, bands, cell_edges, cell_sums
from ._lanes import PerThread, RunningMax, run_lanes, soon
from ._nms import candidates, local_maxima
from ._noise import (
    CENTRES,
    level_noise_std,
    level_rows,
    noise_level_function,
    noise_level_function_of_rows,
    noise_spectra,
    noise_spectrum,
    scan_smear,
    stabilize,
    stabilizer,
    white_equivalent,
)
from ._normalize import grey_table, normalize_with_step
from ._scalespace import MAX_DECIMATION, FilterBank, LevelGroup, dog_pairs, filter_bank, scales
from ._tags import COARSER, level_of, tag

__all__ = ["Detection", "detect", "detect_batch", "DEFAULTS"]

#: Smallest tile side the detector accepts (pixels).
MIN_SIDE = 16


@dataclass
class Detection:
    """What :func:`detect` found in one image.

    Attributes
    ----------
    count : int
        Number of features (the focus measure: it falls log-linearly with defocus).
    features : (N, 3) float64 ndarray
        ``(row, col, scale)``: pixel position and the Gaussian scale ``t`` (pixels)
        of the DoG level that responded most strongly there.
    grid : (gy, gx) int64 ndarray
        Feature counts on a coarse grid over the image (row-major cells of equal
        size), for spotting partly defocused tiles.
    shape : (int, int)
        Image shape (rows, cols).
    scales : (n_bin,) float64 ndarray
        Scale ``t_i`` (pixels) of each DoG level.
    thresholds : (n_bin,) float64 ndarray
        Response threshold used at each level: the larger of ``threshold +
        noise_margin * s_i`` and ``noise_k * s_i``, ``s_i`` the standard
        deviation of the level's response to the tile's measured noise.
    noise : float
        Per-pixel standard deviation of the measured noise of the normalised
        (and variance-stabilised) image, 0..1 units: the noise spectrum's
        white equivalent (``mhd.functions._noise``).
    astigmatism : float
        Anisotropy of the power spectrum in the detector's band, noise floor
        removed: 0 isotropic .. 1 strongly anisotropic; >= 0.2
        (:data:`ASTIGMATISM_THRESHOLD`) means astigmatic. NaN when the tile is
        too small for orientation (under ~300 px a side).
    astigmatism_angle : float
        Direction of strongest blur, degrees in [0, 180), counter-clockwise
        from the column (+x) axis as displayed (rows point down, so 90 points
        to row 0); NaN when ``astigmatism`` is 0 or NaN.
    blur : float
        Width of the blur, pixels: the root mean square of the point spread
        function's standard deviations along its two principal axes
        (``blur_major``, ``blur_minor``), for a round one its standard deviation
        (a Gaussian's sigma; ``R / 2`` for a defocused probe's disk of radius
        ``R``), with the scan's detector smear (``scan_smear``) removed. From
        the noise-subtracted energy of each level (``mhd.functions._blur``).
        Near 0 for a tile as sharp as its pixels; it includes the content's own
        softness (sharp EM slices read 0.5-1.2 px), so compare tiles of one
        section. Independent of dose, gain, offset and bit depth in
        expectation. NaN when fewer than three levels carry signal (blank or
        pure-noise tile).
    blur_err : float
        Uncertainty of ``blur``, pixels; NaN with it. An upper bound rather
        than a standard deviation: it covers the jumps between the two
        nearby modes the fit may settle in under another noise realization,
        and overstates the scatter within one (``mhd.functions._blur``).
    blur_major, blur_minor : float
        The point spread function's standard deviations along its principal
        axes (pixels), ``blur_major >= blur_minor``; ``blur**2`` is the mean of
        their squares. They differ by the probe's anisotropy (astigmatism), with
        the scan's smear removed; chance alone splits a round blur by a few
        hundredths of a pixel. NaN where orientation is not measurable (tiles
        under ~300 px) or the blur is NaN.
    blur_angle : float
        Direction of ``blur_major``, degrees in [0, 180) (as
        ``astigmatism_angle``); NaN where the blur is round.
    scan_smear : float
        Width of the scan's detector response along the scan line (x),
        pixels: the Gaussian of equal second moment
        (``mhd.functions._noise.scan_smear``), measured on the noise, which the
        detector low-passes as it does the signal. 0 for a camera (TEM) or a
        slow scan; ~0.6 px on real 100 ns SEM scans. Not focus: removed from
        the other blur figures.
    blur_cells : (gy, gx) float64 ndarray
        ``blur`` of each cell of ``grid`` (pixels), fitted to the same levels'
        energy over the cell alone, with the tile's noise; NaN where under
        three levels carry signal there (an empty or featureless cell). A cell
        holds fewer samples than the tile, so its blur scatters more, and a
        cell of sparse content reads a little more blur than the tile
        (``mhd.functions._blur``); compare cells with each other.
    blur_cells_err : (gy, gx) float64 ndarray
        Statistical uncertainty of each of ``blur_cells`` (pixels; NaN with
        it): the half-width of its fit, without the noise model's common
        error, which moves all cells of a tile together.
    backend : str
        ``"numpy"`` or ``"cupy:<device>"``.
    timings : dict of str to float
        Milliseconds spent in ``normalize`` (with the variance-stabilising transform), ``noise`` (the noise spectrum), ``levels``
        (forward and inverse FFTs, running maximum), ``nms``, ``blur`` (the fit) and ``total``. On CPU lanes the noise is
        measured beside the forward FFT and the blur fitted beside the NMS, so the parts can add up to more than ``total``.
    """

    count: int
    features: np.ndarray
    grid: np.ndarray
    shape: tuple[int, int]
    scales: np.ndarray
    thresholds: np.ndarray
    noise: float
    astigmatism: float
    astigmatism_angle: float
    blur: float
    blur_err: float
    blur_major: float
    blur_minor: float
    blur_angle: float
    scan_smear: float
    blur_cells: np.ndarray
    blur_cells_err: np.ndarray
    backend: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def density(self) -> float:
        """Features per megapixel."""
        return self.count / (self.shape[0] * self.shape[1]) * 1e6


# ----------------------------------------------------------------- geometry


def halo_width(sigma: float) -> int:
    """Pixels of context needed on each side of a block: 4 ``sigma`` of the widest Gaussian, plus the NMS margin."""
    return int(np.ceil(4.0 * sigma)) + 2


#: Smallest padded side that may have a factor 7 (pixels).
RADIX7_MIN = 512


def _fast_size(n: int) -> int:
    """Smallest m >= n that is a multiple of MAX_DECIMATION and has only factors 2, 3, 5 (and 7 from :data:`RADIX7_MIN`).

    The factor 7 is as fast as its neighbours in ducc0, pocketfft and cuFFT: a
    1024^2 tile pads to 1120^2 instead of 1152^2, 0.8x the time of an inverse
    2-D transform on one thread in both CPU libraries. One rule for every
    backend keeps their grids, and so their results, the same. Smaller grids
    keep the 2, 3, 5 sizes: the astigmatism measure's limit on mirrored
    content (``MIN_MIRROR_FACTOR``) was set on them, and with a factor 7 a
    256 px tile (grid 336, not 384) would pass it.
    """
    m = -(-n // MAX_DECIMATION) * MAX_DECIMATION
    while not _smooth(m, (2, 3, 5, 7) if m >= RADIX7_MIN else (2, 3, 5)):
        m += MAX_DECIMATION
    return m


def _smooth(n: int, primes: tuple[int, ...]) -> bool:
    """True when ``n`` has no prime factor outside ``primes``."""
    for p in primes:
        while n % p == 0:
            n //= p
    return n == 1


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into near-equal consecutive blocks of at most ``size``."""
    k = -(-n // size)
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def _extract(norm: Any, y0: int, y1: int, x0: int, x1: int, h: int, shape: tuple[int, int], xp: Any) -> Any:
    """Block ``[y0, y1) x [x0, x1)`` of the (B, H, W) stack with ``h`` pixels of context.

    Context comes from the image where it exists and by mirror reflection
    beyond the image borders; the result is then padded to the FFT ``shape``.
    """
    H, W = norm.shape[1:]
    a0, a1, b0, b1 = max(y0 - h, 0), min(y1 + h, H), max(x0 - h, 0), min(x1 + h, W)
    block = norm[:, a0:a1, b0:b1]
    P, Q = shape
    top, left = a0 - (y0 - h), b0 - (x0 - h)
    pad = ((0, 0), (top, P - (a1 - a0) - top), (left, Q - (b1 - b0) - left))
    return xp.pad(block, pad, mode="reflect") if any(p for p in pad[1] + pad[2]) else block


# ------------------------------------------------------------ scale space


def _crop_spectrum(F: Any, d: int, xp: Any) -> Any:
    """The rfft2 coefficients (last two axes) that an image decimated by ``d`` keeps."""
    P = F.shape[-2]
    half = P // (2 * d)
    cols = (F.shape[-1] - 1) // d + 1
    return xp.concatenate([F[..., :half, :cols], F[..., P - half :, :cols]], axis=-2)


def _cubic_weights(u: float) -> tuple[float, ...]:
    """Keys' cubic convolution weights (a = -0.5) for taps -1, 0, 1, 2 at fraction ``u``."""
    u2, u3 = u * u, u * u * u
    return (-0.5 * u3 + u2 - 0.5 * u, 1.5 * u3 - 2.5 * u2 + 1, -1.5 * u3 + 2 * u2 + 0.5 * u, 0.5 * u3 - 0.5 * u2)


def _along(axis: int, sl: slice) -> tuple[slice, ...]:
    return (slice(None),) * axis + (sl,)


def _upsample_axis(x: Any, d: int, axis: int, xp: Any) -> Any:
    """Cubic upsampling by ``d`` of a periodic array along ``axis``.

    Low-resolution sample ``j`` sits at output ``j * d``; the outputs of phase
    ``p`` (``pos % d == p``) are one fixed 4-tap combination of shifted views
    of a periodically extended copy, so the cost is a few strided
    multiply-adds and no gathers.
    """
    m = x.shape[axis]
    ext = xp.concatenate([x[_along(axis, slice(m - 1, m))], x, x[_along(axis, slice(0, 2))]], axis=axis)
    taps = [ext[_along(axis, slice(k, k + m))] for k in range(4)]  # x[j-1], x[j], x[j+1], x[j+2]
    shape = list(x.shape)
    shape[axis] = m * d
    out = xp.empty(shape, dtype=x.dtype)
    out[_along(axis, slice(0, None, d))] = x
    tmp = xp.empty_like(x)
    for p in range(1, d):
        w = [np.float32(v) for v in _cubic_weights(p / d)]
        dst = out[_along(axis, slice(p, None, d))]
        if 2 * p == d:  # symmetric weights: two sums and two scalings
            xp.add(taps[1], taps[2], out=dst)
            dst *= w[1]
            xp.add(taps[0], taps[3], out=tmp)
            tmp *= w[0]
        else:
            xp.multiply(taps[0], w[0], out=dst)
            for k in (1, 2):
                dst += xp.multiply(taps[k], w[k], out=tmp)
            xp.multiply(taps[3], w[3], out=tmp)
        dst += tmp
    return out


def _upsample_cubic(x: Any, d: int, start: tuple[int, int], size: tuple[int, int], xp: Any) -> Any:
    """Cubic-convolution values of a periodic (B, m, n) grid decimated by ``d`` on a full-resolution window.

    Cubic rather than linear interpolation matters: decimated levels keep
    energy up to their Nyquist frequency, which linear interpolation smears
    into spurious maxima (96.6 % agreement with the full-resolution result
    against 99.1 % for cubic, at the same cost).

    Returns
    -------
    (B, size[0], size[1]) array
        Rows ``start[0] ...`` and columns ``start[1] ...`` of the upsampled grid.
    """
    up = _upsample_axis(_upsample_axis(x, d, 1, xp), d, 2, xp)
    (r0, c0), (R, C) = start, size
    return up[:, r0 : r0 + R, c0 : c0 + C]


#: Thresholds are at least this, so that dividing by them stays finite.
MIN_THRESHOLD = 1e-12


def _level_response(
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


def _response(
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

    Every level is one task: :func:`_level_response` on the spectrum cropped
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
        The tiles' noise model (:func:`_noise_model`); awaited after the
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
        Level maps of the coarser grids, finest first, for :func:`_resolve_levels`.
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
    spectra = {g.factor: F if g.factor == 1 else _crop_spectrum(F, g.factor, xp) for g in groups}
    maxima = {g.factor: RunningMax(xp) for g in groups}
    lanes = _lanes(be)
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
        D = _level_response(Fd, g, j, (P // d, Q // d), be, buffers, 1 if lanes > 1 else None)
        # in units of the level's threshold, once the noise model is in (the transform did not wait for it):
        # D_i / thr_i > 1 passes level i
        D *= xp.asarray((1.0 / np.maximum(noise.result().thresholds[:, i], MIN_THRESHOLD)).astype(np.float32)[:, None, None])
        cs, samples[i] = cell_sums(D, d, rows, cols, xp)
        sums[:, i] = be.to_host(cs)
        maxima[d].add(tag(D, i, xp, absolute=polarity == "both"))

    def upsampled(acc: Any, d_from: int, d_to: int, start: tuple[int, int], size: tuple[int, int]) -> Any:
        coarse.insert(0, (d_from, level_of(acc, xp)))
        return tag(xp.ascontiguousarray(_upsample_cubic(acc, d_from // d_to, start, size, xp)), COARSER, xp)

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


def _resolve_levels(
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


# ----------------------------------------------------------------- noise


#: Noise below this fraction of what the absolute threshold already ignores does not shape the stabiliser.
STABILIZER_FLOOR = 0.25


def _prepared(image: Any, p: dict[str, Any], t: np.ndarray, be: Backend) -> tuple[Any, float]:
    """One tile normalised (:func:`normalize_with_step`) and variance-stabilised, and its grey step.

    The stabilising transform (``mhd.functions._noise.stabilizer``) has a
    floor of ``STABILIZER_FLOOR`` times the white-noise level at which the
    most noise-sensitive level's noise threshold reaches the absolute
    ``threshold``: noise well below it is ignored by the threshold anyway.
    There is none with ``noise_k`` 0 or under 5 pixels a side.

    A uint8 or uint16 tile goes through one table of its grey levels
    (:func:`grey_table`): normalising and stabilising are both functions of
    the grey level, so the tile is read once, by a gather, instead of being
    normalised and then transformed pixel by pixel; the result is the same
    to the bit.

    Returns
    -------
    image : (H, W) float32 array on ``be``
    step : float
        As :func:`normalize_with_step`.
    """
    xp = be.xp
    x = be.asarray(image)
    H, W = x.shape
    floor = None
    if p["noise_k"] > 0 and min(H, W) >= 5:
        unit = level_noise_std(np.ones((1, len(CENTRES))), *dog_pairs(t))  # per level, unit white noise
        floor = STABILIZER_FLOOR * p["threshold"] / (p["noise_k"] * float(unit.max()))
    table = grey_table(x, p["saturation"], be)
    if table is None:
        norm, step = normalize_with_step(x, p["saturation"], be)
        lut = None if floor is None else stabilizer(*noise_level_function(norm, be), floor)
        return (norm if lut is None else stabilize(norm, lut, be)), step
    values, step = table
    if floor is not None:
        rows = xp.asarray(level_rows(H, W))
        lut = stabilizer(*noise_level_function_of_rows(*(xp.take(values, x[r]) for r in (rows - 1, rows, rows + 1)), be), floor)
        values = values if lut is None else stabilize(values, lut, be)
    return xp.take(values, x), step


# ----------------------------------------------------------------- public


def _validate(image: Any) -> None:
    shape = getattr(image, "shape", None)
    if shape is None:
        raise TypeError(f"image must be an array (NumPy or CuPy), got {type(image).__name__}")
    if len(shape) != 2:
        raise ValueError(f"image must be a 2-D array (rows, cols), got shape {shape}")
    if min(shape) < MIN_SIDE:
        raise ValueError(f"image is too small ({shape[0]} x {shape[1]}); need at least {MIN_SIDE} x {MIN_SIDE} pixels")


def _grid_counts(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    gy, gx = grid
    cy = np.minimum(rows * gy // shape[0], gy - 1).astype(np.int64)
    cx = np.minimum(cols * gx // shape[1], gx - 1).astype(np.int64)
    return np.bincount(cy * gx + cx, minlength=gy * gx).reshape(gy, gx)


def _detect_block(
    norm: Any,
    block: tuple[int, int, int, int],
    h: int,
    noise: concurrent.futures.Future,
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
    shape = (_fast_size(y1 - y0 + 2 * h), _fast_size(x1 - x0 + 2 * h))
    with be.use():
        bank = filter_bank(shape, p["n_bin"], p["min_t"], p["max_t"], p["polarity"], p["tol"], be)
        t0 = time.perf_counter()
        padded = _extract(be.asarray(norm), y0, y1, x0, x1, h, shape, xp)
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
        best, coarse, sums, samples = _response(padded, bank, noise, p["polarity"], window, cells, be, hook)
        del padded
        be.synchronize()
        levels_ms = (time.perf_counter() - t0) * 1e3
        _, R, C = best.shape
        mask = xp.empty((best.shape[0], R - 2, C - 2), dtype=bool) if min(R, C) >= 3 else None

    # the NMS on the lanes while the caller goes on (the blur fit): the 3 x 3 maxima by bands of rows, then the rest,
    # queued after the bands (which have started when it does: its wait cannot hold up the pool)
    edges = np.linspace(0, R - 2, max(1, min(_lanes(be), (R - 2) // 64)) + 1).round().astype(int)
    rows = list(zip(edges[:-1], edges[1:])) if mask is not None else []
    bands_done = [soon(_lanes(be), functools.partial(candidates, best, be, 1.0, band, mask)) for band in rows]

    def features() -> tuple[np.ndarray, float]:
        for job in bands_done:
            job.result()
        with be.use():
            idx = local_maxima(best, be, floor=1.0, cand=mask)
            b, rem = np.divmod(idx, R * C)
            r, c = np.divmod(rem, C)
            level = be.to_host(level_of(best.ravel()[xp.asarray(idx)], xp)).astype(np.int64)
            level = _resolve_levels(level, b, r + h - 1, c + h - 1, coarse, be)
        return np.stack([b, r - 1 + y0, c - 1 + x0, level], axis=1), (time.perf_counter() - t_nms) * 1e3

    t_nms = time.perf_counter()
    found = soon(_lanes(be), features)

    energy = sums.sum(axis=(2, 3)) / samples.sum(axis=(1, 2)) * ((y1 - y0) * (x1 - x0))  # weighted by the block's area
    area = np.outer(cells[0].sizes(), cells[1].sizes()) * (samples > 0)  # (n_bin, m_rows, m_cols)
    num, den = np.zeros(sums.shape[:2] + (gy, gx)), np.zeros((sums.shape[1], gy, gx))
    ix = np.ix_(cells[0].cell, cells[1].cell)
    num[(slice(None), slice(None)) + ix] = sums / np.maximum(samples, 1) * area
    den[(slice(None),) + ix] = area
    return found.result, moments[0], energy, (num, den), levels_ms


def _lanes(be: Backend) -> int:
    """CPU lanes of a backend: its workers on the CPU, one on a GPU (kernels queue in order there)."""
    return be.workers if be.device is None else 1


def _detect_stack(
    norm: Any, noise: concurrent.futures.Future, p: dict[str, Any], backends: list[Backend], timings: dict[str, float]
) -> tuple[Callable[[], list[np.ndarray]], np.ndarray, np.ndarray, np.ndarray]:
    """Features (row, col, level) and spectral moments for each image of a normalised (B, H, W) stack.

    ``noise`` is the future of the stack's :class:`NoiseModel`. Returns a
    function that waits for the blocks' NMS and gives the per-image feature
    arrays (so that the caller can fit the blur meanwhile), the (B, R, 8)
    spectral moments summed over blocks, the (B, n_bin) mean square
    response of each level over each image and the (B, n_bin, gy, gx) one
    over each cell of the count grid (NaN where a level has no sample in a
    cell). Blocks are dealt round-robin
    to ``backends`` (one thread each: several GPUs share a huge image); with
    one backend they run in order on it. Milliseconds are added to
    ``timings`` under ``levels`` and (when the features are collected) ``nms``.
    """
    B, H, W = norm.shape
    h = halo_width(dog_pairs(scales(p["n_bin"], p["min_t"], p["max_t"]))[1].max())
    blocks = [(y0, y1, x0, x1) for y0, y1 in _blocks(H, p["block_size"]) for x0, x1 in _blocks(W, p["block_size"])]

    def settled(part: tuple) -> tuple:
        """The block's features found now, so that its response is freed (memory flat in the number of blocks)."""
        found = part[0]()
        return (lambda: found, *part[1:])

    if len(backends) == 1:
        parts: list[tuple] = []
        for blk in blocks:  # a block's NMS overlaps the next block's levels; the last one the caller's blur fit
            part = _detect_block(norm, blk, h, noise, p, backends[0])
            parts[-1:] = [settled(prev) for prev in parts[-1:]]
            parts.append(part)
    else:
        host = backends[0].to_host(norm)  # each device copies its own blocks from the host

        def run(k: int) -> list[tuple]:
            return [settled(_detect_block(host, blk, h, noise, p, backends[k])) for blk in blocks[k :: len(backends)]]

        n = len(backends)
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            per_device = list(pool.map(run, range(n)))
        parts = [per_device[i % n][i // n] for i in range(len(blocks))]  # back in block order: features as with one device
    timings["levels"] = timings.get("levels", 0.0) + sum(part[4] for part in parts)
    moments = np.sum([part[1] for part in parts], axis=0)
    energy = np.sum([part[2] for part in parts], axis=0) / (H * W)
    num = np.sum([part[3][0] for part in parts], axis=0)
    den = np.sum([part[3][1] for part in parts], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cells = np.where(den > 0, num / den, np.nan)

    def features() -> list[np.ndarray]:
        found = [part[0]() for part in parts]
        timings["nms"] = timings.get("nms", 0.0) + sum(ms for _, ms in found)
        feats = np.concatenate([f for f, _ in found])
        return [feats[feats[:, 0] == k, 1:] for k in range(B)]

    return features, moments, energy, cells


@dataclass(frozen=True)
class NoiseModel:
    """The measured noise of a (B, H, W) stack of normalised tiles and the thresholds it sets.

    Attributes
    ----------
    spectrum, spectrum_y : (B, len(CENTRES)) float64
        Noise power spectra along the rows and along the columns, of a typical
        pixel (``mhd.functions._noise.NoiseSpectra.typical``), at least the
        grey-level rounding's ``step**2 / 12``.
    power : (B, len(CENTRES)) float64
        The spectrum along the rows as the mean power of the noise over the
        tile (``NoiseSpectra.power``), with the same floor.
    white : (B,) float64
        Per-pixel standard deviation (:func:`mhd.functions._noise.white_equivalent`).
    level_sd : (B, n_bin) float64
        Standard deviation of each level's response to that noise (``spectrum``: what the thresholds need).
    level_var : (B, n_bin) float64
        Variance of each level's response to ``power``: the noise a level's energy holds, which the blur subtracts.
    smear : (B,) float64
        Width of the scan's detector response along x (pixels; ``mhd.functions._noise.scan_smear``).
    thresholds : (B, n_bin) float64
        Each level's threshold (:class:`Detection` ``thresholds``).
    ms : float
        Milliseconds the measurement took.
    """

    spectrum: np.ndarray
    spectrum_y: np.ndarray
    power: np.ndarray
    white: np.ndarray
    level_sd: np.ndarray
    level_var: np.ndarray
    smear: np.ndarray
    thresholds: np.ndarray
    ms: float


def _noise_model(norm: Any, steps: Sequence[float], t: np.ndarray, p: dict[str, Any], be: Backend) -> NoiseModel:
    """Measure the noise of a normalised (B, H, W) stack on ``be`` and set each level's threshold."""
    t0 = time.perf_counter()
    with be.use():
        # rounding to grey levels is white noise of variance step^2 / 12, which the median of a smooth tile misses
        floor = np.square(steps)[:, None] / 12
        spectra = noise_spectra(norm, be)
        spectrum, power = np.maximum(spectra.typical, floor), np.maximum(spectra.power, floor)
        # along the columns too (coarser): noise correlated along x only is the scan's detector response
        spectrum_y = np.maximum(noise_spectrum(be.xp.swapaxes(norm, 1, 2), be, samples=1 << 14), floor)
    pairs = dog_pairs(t)
    level_sd = level_noise_std(spectrum, *pairs)
    thresholds = np.maximum(p["threshold"] + p["noise_margin"] * level_sd, p["noise_k"] * level_sd)
    return NoiseModel(
        spectrum=spectrum,
        spectrum_y=spectrum_y,
        power=power,
        white=white_equivalent(spectrum),
        level_sd=level_sd,
        level_var=level_noise_std(power, *pairs) ** 2,
        smear=scan_smear(spectrum, spectrum_y),
        thresholds=thresholds,
        ms=(time.perf_counter() - t0) * 1e3,
    )


def detect_batch(images: Sequence[Any], backend: str | Backend | Sequence[str | Backend] = "auto", **params: Any) -> list[Detection]:
    """Detect features in several images of one shape at once (batched FFTs).

    Parameters
    ----------
    images : sequence of (M, N) arrays
        All of the same shape; any numeric dtype.
    backend, **params
        As for :func:`detect`.

    Returns
    -------
    list of Detection
        One per image, in order; ``timings`` are those of the whole batch.
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown detector parameter(s): {', '.join(sorted(unknown))}")
    p = {**DEFAULTS, **validate_params(params)}
    backends = [get_backend(b) for b in backend] if isinstance(backend, (list, tuple)) else [get_backend(backend)]
    if not backends:
        raise ValueError("backend: an empty list names no device")
    be = backends[0]
    images = list(images)
    if len(images) == 0:
        return []
    for im in images:
        _validate(im)
    shape = tuple(images[0].shape)
    for im in images:
        if tuple(im.shape) != shape:
            raise ValueError(f"all images of a batch must have one shape: {shape} != {tuple(im.shape)}")
    timings: dict[str, float] = {}
    with be.use():
        t_start = time.perf_counter()
        t = scales(p["n_bin"], p["min_t"], p["max_t"])
        norm, steps = zip(*(_prepared(im, p, t, be) for im in images))
        norm = norm[0][None] if len(norm) == 1 else be.xp.stack(norm)  # one tile: a view, not a copy
        be.synchronize()
        timings["normalize"] = (time.perf_counter() - t_start) * 1e3
        # measured on a lane while the first block's forward FFT runs here (in order with one lane), its 1-D transforms
        # on one thread there, as every lane's
        lane = dataclasses.replace(be, workers=1) if _lanes(be) > 1 else be
        noise = soon(_lanes(be), functools.partial(_noise_model, norm, steps, t, p, lane))
        features, moments, energy, cell_energy = _detect_stack(norm, noise, p, backends, timings)
        model = noise.result()
        timings["noise"] = model.ms
        strength, angle = anisotropy(moments)
        t_blur = time.perf_counter()  # while the last block's NMS runs on a lane
        gy, gx = p["grid"]
        delta, delta_var = blur_anisotropy(moments, t)
        blur = measure_blur(
            energy,
            np.moveaxis(cell_energy, 1, -1),
            model.level_var,
            (t, *dog_pairs(t)),
            area=shape[0] * shape[1],
            cell_area=np.outer(np.diff(cell_edges(shape[0], gy)), np.diff(cell_edges(shape[1], gx))),
            delta=delta,
            delta_var=delta_var,
            smear=model.smear,
        )
        timings["blur"] = (time.perf_counter() - t_blur) * 1e3
        feats = features()
        del norm
    timings["total"] = (time.perf_counter() - t_start) * 1e3
    results = []
    for k, (f, nz, th, ast, ang) in enumerate(zip(feats, model.white, model.thresholds, strength, angle)):
        features = np.column_stack([f[:, 0], f[:, 1], t[f[:, 2]]]).astype(np.float64) if len(f) else np.empty((0, 3))
        results.append(
            Detection(
                count=len(f),
                features=features,
                grid=_grid_counts(f[:, 0], f[:, 1], shape, tuple(p["grid"])),
                shape=shape,
                scales=t.copy(),
                thresholds=th,
                noise=float(nz),
                astigmatism=float(ast),
                astigmatism_angle=float(ang),
                blur=float(blur.blur[k]),
                blur_err=float(blur.blur_err[k]),
                blur_major=float(blur.major[k]),
                blur_minor=float(blur.minor[k]),
                blur_angle=float(blur.angle[k]),
                scan_smear=float(blur.smear[k]),
                blur_cells=blur.cells[k],
                blur_cells_err=blur.cells_err[k],
                backend="+".join(b.name for b in backends),
                timings=dict(timings),
            )
        )
    return results


def detect(
    image: Any,
    n_bin: int = DEFAULTS["n_bin"],
    min_t: float = DEFAULTS["min_t"],
    max_t: float = DEFAULTS["max_t"],
    threshold: float = DEFAULTS["threshold"],
    *,
    backend: str | Backend | Sequence[str | Backend] = "auto",
    **params: Any,
) -> Detection:
    """Count multi-scale histologic features (MHD) in one EM tile.

    Steps (paper, sections 3-4): saturate 0.175 % of the darkest and lightest
    pixels and map to [0, 1]; one forward FFT; for each of ``n_bin`` scales
    ``t_i`` from ``min_t`` to ``max_t`` the scale-normalised DoG
    ``t_i (L(t_i + dt/2) - L(t_i - dt/2)) / dt ~ t_i^2 Laplacian(L)`` from
    analytic Gaussian transfer functions (see ``mhd.functions._scalespace``); per pixel the maximum over levels of the
    response in units of the level's threshold (streamed: the stack is never
    held); 3 x 3 non-maximum suppression of the pixels above 1, a plateau
    counting once. Borders are mirror-padded (no wrap-around); images larger
    than ``block_size`` are processed in blocks with enough overlap that the
    result equals the whole-image computation.

    Defaults and limits of every parameter are defined once, in
    :data:`mhd.params.PARAMS` (:data:`DEFAULTS`); a value outside them raises
    ``ValueError``.

    Parameters
    ----------
    image : (M, N) array
        Grey levels, any numeric dtype and bit depth; at least 16 x 16 pixels.
    n_bin : int
        Number of DoG levels.
    min_t, max_t : float
        Smallest and largest Gaussian scale, in pixels (``min_t < max_t``).
    threshold : float
        Minimum response of a feature, in units of the normalised image
        (the scale-normalised Laplacian of a [0, 1] image) when the tile has no
        noise. The defaults (of ``threshold``, ``noise_k``, ``noise_margin``
        and ``polarity``) were chosen by measurement: on real fast and slow SEM
        scans of the same fields (``bench/sem_focus.py pairs``) and on
        simulated through-focus series of the ISBI slices at mixed dose and
        gain (``bench/focus_measures.py``, ``bench/sem_focus.py sim``).
    backend : {"auto", "numpy", "cupy", "cupy:N"}, Backend, or a sequence of them
        Where to compute; ``"auto"`` uses a CUDA GPU when one is present. A
        sequence (e.g. ``["cupy:0", "cupy:1"]``) deals the blocks of an image
        larger than ``block_size`` to several devices, one thread each.
    **params
        ``noise_k`` (float): a level's threshold is at least this
        many standard deviations of its response to the tile's measured noise
        (a featureless noisy tile then counts ~800 noise maxima per megapixel,
        a few percent of a sharp tile's count). ``noise_margin``
        (float): and at least ``threshold`` plus this many, so
        that structure just under the threshold is not lifted over it by
        noise. The noise is measured on each tile as a spectrum along the
        scan line after a variance-stabilising transform
        (``mhd.functions._noise``). ``polarity`` ("both",
        the default, counts dark and bright features, i.e. maxima of
        ``|D_i|``; "dark" is the paper's sign, "bright" the reference
        code's; chosen by measurement, see ``bench/focus_measures.py``), ``grid`` ((rows, cols) of the count grid),
        ``block_size`` (pixels per block side),
        ``tol`` (spectral tolerance for decimated coarse levels; 0 disables)
        and ``saturation`` (percent at each end).

    Returns
    -------
    Detection

    Raises
    ------
    ValueError
        For an image that is not 2-D, smaller than 16 x 16, or holds NaN/Inf,
        and for invalid parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from mhd.functions import detect
    >>> rng = np.random.default_rng(0)
    >>> det = detect(rng.integers(0, 255, (256, 256), dtype=np.uint8), backend="numpy")
    >>> det.features.shape[1]
    3
    """
    return detect_batch([image], backend=backend, n_bin=n_bin, min_t=min_t, max_t=max_t, threshold=threshold, **params)[0]
