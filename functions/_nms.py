"""3 x 3 non-maximum suppression with plateaus counted once."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from ._backend import Backend

__all__ = ["candidates", "local_maxima"]


def _max3(x: Any, axis: int, xp: Any) -> Any:
    """Maximum over a 3-sample window along ``axis`` (output 2 shorter)."""
    n = x.shape[axis]
    a = _slice(x, axis, 0, n - 2)
    b = _slice(x, axis, 1, n - 1)
    c = _slice(x, axis, 2, n)
    out = xp.maximum(a, b)
    return xp.maximum(out, c, out=out)


def _slice(x: Any, axis: int, start: int, stop: int) -> Any:
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop)
    return x[tuple(idx)]


def _merge_plateaus(b: np.ndarray, r: np.ndarray, c: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Indices of one representative per 8-connected group of candidates.

    Two adjacent candidates are both 3x3 maxima, so they are equal: a group is a
    plateau, which the paper's max-pool would count several times.
    """
    R, C = shape
    lin = (b.astype(np.int64) * (R + 2) + r) * (C + 2) + c  # +2: neighbours never alias across rows
    order = np.argsort(lin, kind="stable")
    lin_sorted = lin[order]
    src, dst = [], []
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
        target = lin_sorted + dr * (C + 2) + dc
        pos = np.searchsorted(lin_sorted, target)
        pos = np.minimum(pos, len(lin_sorted) - 1)
        hit = lin_sorted[pos] == target
        src.append(np.nonzero(hit)[0])
        dst.append(pos[hit])
    src_all, dst_all = np.concatenate(src), np.concatenate(dst)
    if src_all.size == 0:
        return np.arange(len(b))
    n = len(lin_sorted)
    graph = scipy.sparse.coo_matrix((np.ones(src_all.size, dtype=np.int8), (src_all, dst_all)), shape=(n, n))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    # keep the first (raster order) member of each plateau
    _, first = np.unique(labels, return_index=True)
    return np.sort(order[first])


def candidates(response: Any, backend: Backend, floor: float = 0.0, rows: tuple[int, int] | None = None, out: Any = None) -> Any:
    """Pixels equal to their 3 x 3 maximum and strictly above ``floor``.

    Parameters
    ----------
    response : (B, R, C) float32 device array
        As for :func:`local_maxima`.
    rows : (r0, r1), optional
        Only rows ``r0 .. r1 - 1`` of the mask (response rows ``r0 .. r1 + 1``
        are read), so that bands of rows can be computed side by side.
    out : (B, R - 2, C - 2) bool device array, optional
        Written (those rows only) and returned; a new array without it.

    Returns
    -------
    (B, R - 2, C - 2) bool device array
        The mask of the pixels inside the one-pixel margin.
    """
    xp = backend.xp
    B, R, C = response.shape
    r0, r1 = (0, R - 2) if rows is None else rows
    with backend.use():  # the kernels run on the response's device
        out = xp.empty((B, R - 2, C - 2), dtype=bool) if out is None else out
        part = response[:, r0 : r1 + 2]
        pooled = _max3(_max3(part, 2, xp), 1, xp)
        # clamping the pool to the next float above the floor folds "> floor" into one comparison
        xp.maximum(pooled, np.nextafter(np.float32(floor), np.float32(np.inf)), out=pooled)
        xp.greater_equal(part[:, 1:-1, 1:-1], pooled, out=out[:, r0:r1])
    return out


def local_maxima(response: Any, backend: Backend, floor: float = 0.0, cand: Any = None) -> np.ndarray:
    """Features: strict-or-plateau 3x3 maxima of a positive response.

    Parameters
    ----------
    response : (B, R, C) float32 device array
        Per-pixel maximum over scales of the response in units of its
        threshold, with a one-pixel margin on every side that is compared
        against but never reported.
    backend : Backend
    floor : float
        Only pixels strictly above ``floor`` can be features.
    cand : (B, R - 2, C - 2) bool device array, optional
        :func:`candidates` of ``response`` and ``floor`` when already
        computed (by bands of rows, on several threads).

    Returns
    -------
    (N,) int64 array on the host
        Flat indices into ``response`` of the features. Pixels equal to their
        3x3 maximum and > ``floor`` are candidates; an 8-connected plateau of
        candidates yields one feature (its first pixel in raster order).
    """
    xp = backend.xp
    B, R, C = response.shape
    if R < 3 or C < 3:
        return np.empty(0, dtype=np.int64)
    with backend.use():  # the kernels run on the response's device
        cand = candidates(response, backend, floor) if cand is None else cand
        flat = backend.to_host(xp.flatnonzero(cand)).astype(np.int64)
        b, rem = np.divmod(flat, (R - 2) * (C - 2))
        r, c = np.divmod(rem, C - 2)
        touching = backend.to_host(_has_candidate_neighbour(cand, b, r, c, xp))
    # only candidates with a candidate neighbour can share a plateau: the rest are features as they are
    keep = np.ones(len(flat), dtype=bool)
    if touching.any():
        group = np.flatnonzero(touching)
        keep[group] = False
        keep[group[_merge_plateaus(b[group], r[group], c[group], (R - 2, C - 2))]] = True
    b, r, c = b[keep], r[keep], c[keep]
    return (b * R + r + 1) * C + c + 1


def _has_candidate_neighbour(cand: Any, b: np.ndarray, r: np.ndarray, c: np.ndarray, xp: Any) -> Any:
    """For each candidate ``(b, r, c)`` (host int64 arrays) of the (B, R, C) bool mask ``cand``: is one of its 8 neighbours a candidate?

    Returns a (N,) bool device array; 8 gathers of N, not a pass over the mask per direction.
    """
    padded = xp.pad(cand, ((0, 0), (1, 1), (1, 1)))
    hit = xp.zeros(len(b), dtype=bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                hit |= padded[b, r + 1 + dr, c + 1 + dc]
    return hit
