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

from ._astigmatism import anisotropy, blur_anisotropy
from ._backend import Backend, get_backend
from ._blur import measure_blur
from ._cells import cell_edges
from ._geometry import halo_width, split_blocks
from ._lanes import cpu_lanes, soon
from ._noise import (
    NoiseModel,
    noise_model,
)
from ._normalize import prepare
from ._response import detect_block
from ._scalespace import dog_pairs, scales

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


# ------------------------------------------------------------ scale space


# ----------------------------------------------------------------- noise


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


def _detect_stack(
    norm: Any, noise: concurrent.futures.Future[Any], p: dict[str, Any], backends: list[Backend], timings: dict[str, float]
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
    blocks = [(y0, y1, x0, x1) for y0, y1 in split_blocks(H, p["block_size"]) for x0, x1 in split_blocks(W, p["block_size"])]

    def settled(part: tuple[Any, ...]) -> tuple[Any, ...]:
        """The block's features found now, so that its response is freed (memory flat in the number of blocks)."""
        found = part[0]()
        return (lambda: found, *part[1:])

    if len(backends) == 1:
        parts: list[tuple[Any, ...]] = []
        for blk in blocks:  # a block's NMS overlaps the next block's levels; the last one the caller's blur fit
            part = detect_block(norm, blk, h, noise, p, backends[0])
            parts[-1:] = [settled(prev) for prev in parts[-1:]]
            parts.append(part)
    else:
        host = backends[0].to_host(norm)  # each device copies its own blocks from the host

        def run(k: int) -> list[tuple[Any, ...]]:
            return [settled(detect_block(host, blk, h, noise, p, backends[k])) for blk in blocks[k :: len(backends)]]

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


def _checked_batch(
    images: Sequence[Any], backend: str | Backend | Sequence[str | Backend], params: dict[str, Any]
) -> tuple[dict[str, Any], list[Backend], list[Any]]:
    """The parameters (defaults filled in), the backends and the images of a batch, checked.

    Raises
    ------
    TypeError, ValueError
        For an unknown or invalid parameter, no backend, or images that are not 2-D of one shape.
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown detector parameter(s): {', '.join(sorted(unknown))}")
    p = {**DEFAULTS, **validate_params(params)}
    backends = [get_backend(backend)] if isinstance(backend, (str, Backend)) else [get_backend(b) for b in backend]
    if not backends:
        raise ValueError("backend: an empty list names no device")
    images = list(images)
    for im in images:
        _validate(im)
    shape = tuple(images[0].shape) if images else ()
    for im in images:
        if tuple(im.shape) != shape:
            raise ValueError(f"all images of a batch must have one shape: {shape} != {tuple(im.shape)}")
    return p, backends, images


def _detections(
    feats: list[np.ndarray],
    model: NoiseModel,
    strength: np.ndarray,
    angle: np.ndarray,
    blur: Any,
    t: np.ndarray,
    shape: tuple[int, int],
    p: dict[str, Any],
    backend: str,
    timings: dict[str, float],
) -> list[Detection]:
    """One :class:`Detection` per image of a batch, from what :func:`detect_batch` measured."""
    results = []
    for k, (f, nz, th, ast, ang) in enumerate(zip(feats, model.white, model.thresholds, strength, angle)):
        found = np.column_stack([f[:, 0], f[:, 1], t[f[:, 2]]]).astype(np.float64) if len(f) else np.empty((0, 3))
        results.append(
            Detection(
                count=len(f),
                features=found,
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
                backend=backend,
                timings=dict(timings),
            )
        )
    return results


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
    p, backends, images = _checked_batch(images, backend, params)
    if not images:
        return []
    be, shape = backends[0], (int(images[0].shape[0]), int(images[0].shape[1]))
    timings: dict[str, float] = {}
    with be.use():
        t_start = time.perf_counter()
        t = scales(p["n_bin"], p["min_t"], p["max_t"])
        norm, steps = zip(*(prepare(im, p, t, be) for im in images))
        norm = norm[0][None] if len(norm) == 1 else be.xp.stack(norm)  # one tile: a view, not a copy
        be.synchronize()
        timings["normalize"] = (time.perf_counter() - t_start) * 1e3
        # measured on a lane while the first block's forward FFT runs here (in order with one lane), its 1-D transforms
        # on one thread there, as every lane's
        lane = dataclasses.replace(be, workers=1) if cpu_lanes(be) > 1 else be
        noise = soon(cpu_lanes(be), functools.partial(noise_model, norm, steps, t, p, lane))
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
    return _detections(feats, model, strength, angle, blur, t, shape, p, "+".join(b.name for b in backends), timings)


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
