"""Histogram normalisation and noise estimation (paper, section 4), and :func:`prepare`: a tile as the detector takes it
(normalised, its signal-dependent noise stabilised)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mhd.params import DEFAULTS

from ._backend import Backend, get_backend
from ._noise import CENTRES, level_noise_std, level_rows, noise_level_function, noise_level_function_of_rows, stabilize, stabilizer
from ._scalespace import dog_pairs

__all__ = ["STABILIZER_FLOOR", "prepare", "normalize", "normalize_with_step", "grey_table", "saturation_limits", "estimate_noise"]

#: Percentage of pixels saturated at each end of the histogram (the paper's 0.175 %; defined in :mod:`mhd.params`).
SATURATION_PCT = DEFAULTS["saturation"]


def _check_image(image: Any) -> None:
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (rows, cols), got shape {tuple(image.shape)}")
    if image.size == 0:
        raise ValueError("image is empty")
    if image.dtype.kind not in "uifb":
        raise TypeError(f"image dtype {image.dtype} is not numeric")


def _check_saturation(saturation: float) -> None:
    if not 0 <= saturation < 50:
        raise ValueError("saturation must be a percentage in [0, 50)")


def saturation_limits(image: Any, saturation: float = SATURATION_PCT, backend: str | Backend = "auto") -> tuple[float, float]:
    """Grey levels below/above which ``saturation`` percent of the pixels lie.

    Parameters
    ----------
    image : (M, N) array
        Integer (exact, O(N) histogram) or floating-point (quantiles) grey levels.
    saturation : float
        Percentage saturated at *each* end, 0 <= saturation < 50.

    Returns
    -------
    lo, hi : float
        ``lo`` is the smallest value with at least ``saturation`` % of pixels at
        or below it; ``hi`` the largest with at least ``saturation`` % at or above.
    """
    _check_saturation(saturation)
    be = get_backend(backend)
    with be.use():  # the backend's device is current: arrays made here land on it, kernels run there
        xp = be.xp
        x = be.asarray(image)
        _check_image(x)
        q = saturation / 100.0
        if x.dtype.kind in "uib" and x.dtype.itemsize <= 2:  # a histogram of at most 65536 bins
            if x.dtype.kind == "u":
                offset, counts = 0, _grey_counts(x, be)
            else:
                x = x.astype(np.int64) if x.dtype.kind == "b" else x
                offset = int(x.min())
                counts = be.to_host(xp.bincount(x.ravel().astype(xp.int64) - offset))  # widened first: int8/int16 spans overflow
            return _histogram_limits(counts, q, offset)
        x = x.astype(xp.float64) if x.dtype.kind in "iu" else x  # 32- and 64-bit integers: quantiles, not a histogram
        if not np.isfinite(float(x.min())) or not np.isfinite(float(x.max())):  # a NaN makes both NaN
            raise ValueError("image contains NaN or infinite values")
        lo, hi = _quantiles(x.ravel(), (q, 1.0 - q), xp)
        return lo, hi


def _histogram_limits(counts: np.ndarray, q: float, offset: int) -> tuple[float, float]:
    """:func:`saturation_limits` from a host histogram whose bin ``k`` counts the value ``k + offset`` (the last bin the
    maximum's)."""
    cdf = np.cumsum(counts)
    n = int(cdf[-1])
    k_lo = max(int(np.floor(q * n)), 1)  # at least one pixel at or below lo
    k_hi = n - max(int(np.floor(q * n)), 1)  # pixels strictly below hi
    lo = int(np.searchsorted(cdf, k_lo, side="left")) + offset
    hi = int(np.searchsorted(cdf, k_hi, side="right")) + offset
    return float(lo), float(min(hi, counts.size - 1 + offset))


def _grey_counts(x: Any, be: Backend) -> np.ndarray:
    """The histogram of an 8- or 16-bit unsigned array on ``be``, read back once: (x.max() + 1,) int64 host array."""
    counts = be.to_host(_histogram(x, be.xp))
    return counts[: int(np.flatnonzero(counts)[-1]) + 1]


def _histogram(x: Any, xp: Any) -> Any:
    """Counts of each grey level of an 8- or 16-bit unsigned array: (m,) int64 array of ``xp``, ``m > x.max()``, zero
    beyond the maximum (:func:`_grey_counts` trims them).

    On the CPU a contiguous uint8 array of even size is counted two pixels at a
    time, by their 16-bit pairs, then folded: half the increments (0.8 against
    1.4 ms at 1024^2), the same counts. Not on a GPU: a device array may start
    at an odd address, where a 16-bit view would read misaligned.
    """
    flat = x.ravel()
    if xp is not np or flat.dtype != np.uint8 or flat.size % 2 or not flat.flags.c_contiguous:
        return xp.bincount(flat)
    pairs = xp.bincount(flat.view(xp.uint16), minlength=1 << 16).reshape(256, 256)
    return pairs.sum(axis=0) + pairs.sum(axis=1)  # each pixel once, whichever byte of its pair it is


def _quantiles(x: Any, qs: tuple[float, ...], xp: Any) -> list[float]:
    """Quantiles ``qs`` of a flat finite float array: linear interpolation between order statistics
    (Hyndman and Fan's type 7, NumPy's default), from one :func:`order_statistics`. The interpolation is
    in float64 (NumPy's in the array's type: the two may differ in the last bit of a float32)."""
    n = x.size
    pos = [q * (n - 1) for q in qs]
    low = [min(int(np.floor(p)), n - 1) for p in pos]
    stats = order_statistics(x, sorted({k for i in low for k in (i, min(i + 1, n - 1))}), xp)
    out = []
    for p, i in zip(pos, low):
        a, b, g = stats[i], stats[min(i + 1, n - 1)], p - i
        out.append(a + g * (b - a) if g < 0.5 else b - (1 - g) * (b - a))
    return out


#: About how many values of a tile :func:`order_statistics` sorts to find its thresholds.
SAMPLE = 1 << 14


def order_statistics(x: Any, ranks: list[int], xp: Any) -> dict[int, float]:
    """The ``k``-th smallest values (0-based ``ranks``) of a flat, finite float array, exactly.

    A strided sample of about :data:`SAMPLE` values, sorted, gives a
    threshold safely beyond the lower ranks (and one for the upper ranks);
    only the values at or below it (at or above it) are partitioned. Were
    the subset too small to hold the ranks, the whole array is partitioned
    instead, so the result is exact either way. The saturation quantiles sit
    in the tails: a 1024^2 float32 tile takes 2-3 passes instead of a
    partition of all of it.
    """
    n = x.size
    sample = xp.sort(x[:: max(1, n // SAMPLE)])
    m = sample.size
    out: dict[int, float] = {}
    for side in (1, -1):  # the lower half of the ranks from the bottom, the upper half from the top
        mine = [k for k in ranks if (k < n / 2) == (side == 1)]
        if not mine:
            continue
        depth = max(mine) + 1 if side == 1 else n - min(mine)  # ranks counted from this side's end
        j = min(m - 1, int(depth / n * m * 1.25) + 16)  # the sample's rank beyond them, with a margin
        if side == 1:
            sub = x[x <= sample[j]]
            offset = 0
        else:
            sub = x[x >= sample[m - 1 - j]]
            offset = n - sub.size
        if sub.size < depth:  # the sample misled: fall back to the whole array
            sub, offset = x, 0
        want = [k - offset for k in mine]
        part = xp.partition(sub, want)
        for k in mine:
            out[k] = float(part[k - offset])
    return out


def normalize(image: Any, saturation: float = SATURATION_PCT, backend: str | Backend = "auto") -> Any:
    """Saturate ``saturation`` % of the darkest and lightest pixels, map to [0, 1].

    Parameters
    ----------
    image : (M, N) array
        Grey levels of any bit depth: uint8, uint16, other integers or float.
    saturation : float
        Percentage saturated at each end (default 0.175, as in the paper).
    backend : str or Backend
        Where to compute; the result lives on that backend's device.

    Returns
    -------
    (M, N) float32 array
        Values in [0, 1]. A constant image maps to all zeros (never NaN).

    Raises
    ------
    ValueError
        For a non-2-D or empty image, or one holding NaN or Inf.
    """
    return normalize_with_step(image, saturation, backend)[0]


def normalize_with_step(image: Any, saturation: float = SATURATION_PCT, backend: str | Backend = "auto") -> tuple[Any, float]:
    """:func:`normalize`, and the size of one grey level of the input in the normalised units.

    Returns
    -------
    norm : (M, N) float32 array
        As :func:`normalize`.
    step : float
        ``1 / (hi - lo)`` for integer images (one grey level; its rounding is
        noise of variance ``step**2 / 12``), 0 for floating-point images or
        a constant image.
    """
    be = get_backend(backend)
    with be.use():  # the backend's device is current: arrays made here land on it, kernels run there
        xp = be.xp
        x = be.asarray(image)
        _check_image(x)
        lo, hi = _limits(x, saturation, be)
        if hi <= lo:
            return xp.zeros(x.shape, dtype=xp.float32), 0.0
        step = 1.0 / (hi - lo) if x.dtype.kind in "uib" else 0.0
        return _scaled(x, lo, hi, xp), step


def _limits(x: Any, saturation: float, be: Backend) -> tuple[float, float]:
    """:func:`saturation_limits`, or the full range where they coincide (almost all pixels share one value)."""
    lo, hi = saturation_limits(x, saturation, be)
    if hi <= lo:
        lo, hi = float(x.min()), float(x.max())
    return lo, hi


def _scaled(x: Any, lo: float, hi: float, xp: Any) -> Any:
    """``clip((x - lo) / (hi - lo), 0, 1)`` as float32: the one formula of :func:`normalize` and :func:`grey_table`.

    In float32 for 8- and 16-bit and float32 images (exact enough, half the memory); in float64 for the
    others, whose offset or range float32 would lose (``1e10 + texture``, values beyond 3e38 or below 1e-38).
    """
    if x.dtype.itemsize <= 2 or x.dtype == xp.float32:
        out = x.astype(xp.float32)
        out -= xp.float32(lo)
        out /= xp.float32(hi - lo)  # division, not a reciprocal product: hi maps to exactly 1
    else:
        wide = x.astype(xp.float64)
        wide -= lo
        wide /= hi - lo
        out = wide.astype(xp.float32)
    return xp.clip(out, 0.0, 1.0, out=out)


def grey_table(image: Any, saturation: float = SATURATION_PCT, backend: str | Backend = "auto") -> tuple[Any, float] | None:
    """:func:`normalize` of a uint8 or uint16 image as a table over its grey levels.

    Any function of the normalised grey level can then be applied to the
    table (``max + 1`` entries) instead of to every pixel, and the image read
    once, by ``xp.take(table, image)``.

    Returns
    -------
    (table, step) or None
        ``table``: (image.max() + 1,) float32 array on the backend with
        ``xp.take(table, image) == normalize(image)`` to the bit; ``step`` as
        :func:`normalize_with_step`. None for other dtypes and for a constant image.
    """
    be = get_backend(backend)
    with be.use():
        xp = be.xp
        x = be.asarray(image)
        _check_image(x)
        if x.dtype.kind != "u" or x.dtype.itemsize > 2:
            return None
        _check_saturation(saturation)
        counts = _grey_counts(x, be)  # the one read-back: limits, range and table size all come from it
        lo, hi = _histogram_limits(counts, saturation / 100.0, 0)
        if hi <= lo:  # as _limits: the full range
            lo, hi = float(np.flatnonzero(counts)[0]), float(counts.size - 1)
        if hi <= lo:
            return None
        return _scaled(xp.arange(counts.size, dtype=x.dtype), lo, hi, xp), 1.0 / (hi - lo)


def estimate_noise(image: Any, backend: str | Backend = "auto", row_step: int = 8) -> float:
    """Robust standard deviation of additive white noise in ``image``.

    Immerkaer's Laplacian-difference operator (which cancels planar structure)
    with a median-absolute-deviation scale, so sparse edges do not inflate it.
    Only every ``row_step``-th row is used: the estimate needs far fewer pixels
    than a tile has.

    Parameters
    ----------
    image : (M, N) float array
        Typically the output of :func:`normalize`.

    Returns
    -------
    float
        Noise standard deviation in the units of ``image`` (0 for tiny images).
    """
    be = get_backend(backend)
    with be.use():  # the backend's device is current: arrays made here land on it, kernels run there
        x = be.asarray(image)
        if x.shape[0] < 3 or x.shape[1] < 3:
            return 0.0
        xp = be.xp
        rows = xp.arange(1, x.shape[0] - 1, max(1, row_step))
        up, mid, dn = x[rows - 1], x[rows], x[rows + 1]
        lap = (
            (up[:, :-2] + up[:, 2:] + dn[:, :-2] + dn[:, 2:])
            - 2 * (up[:, 1:-1] + dn[:, 1:-1] + mid[:, :-2] + mid[:, 2:])
            + 4 * mid[:, 1:-1]
        )
        # |lap| of Gaussian noise has median 0.6745 * 6 * sigma (the operator's L2 norm is 6).
        return float(xp.median(xp.abs(lap))) / (0.6745 * 6.0)


#: Noise below this fraction of what the absolute threshold already ignores does not shape the stabiliser.
STABILIZER_FLOOR = 0.25


def prepare(image: Any, p: dict[str, Any], t: np.ndarray, be: Backend) -> tuple[Any, float]:
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
        above, at, below = (xp.take(values, x[r]) for r in (rows - 1, rows, rows + 1))
        lut = stabilizer(*noise_level_function_of_rows(above, at, below, be), floor)
        values = values if lut is None else stabilize(values, lut, be)
    return xp.take(values, x), step
