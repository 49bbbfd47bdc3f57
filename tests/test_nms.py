"""3 x 3 non-maximum suppression: plateaus count once."""

from __future__ import annotations

import numpy as np

from mhd.functions import get_backend
from mhd.functions._nms import local_maxima

BE = get_backend("numpy")


def maxima(resp: np.ndarray) -> set[tuple[int, int]]:
    idx = local_maxima(resp[None].astype(np.float32), BE)
    r, c = np.divmod(idx, resp.shape[1])
    return {(int(a) - 1, int(b) - 1) for a, b in zip(r, c)}  # inside the one-pixel margin


def test_strict_maxima_and_threshold():
    resp = np.full((10, 10), -1.0)
    resp[3, 3], resp[6, 7], resp[8, 1] = 2.0, 1.0, -0.5  # the last is below threshold (<= 0)
    assert maxima(resp) == {(2, 2), (5, 6)}


def test_floor_is_strict():
    resp = np.zeros((10, 10), dtype=np.float32)
    resp[3, 3], resp[6, 7] = 1.0, np.nextafter(np.float32(1), np.float32(2))
    idx = local_maxima(resp[None], BE, floor=1.0)
    assert idx.tolist() == [6 * 10 + 7]


def test_plateaus_count_once_whatever_their_shape():
    resp = np.zeros((12, 12))
    resp[2:4, 2:4] = 1.0  # square plateau
    resp[6, 6:10] = 2.0  # bar
    resp[7:10, 9] = 2.0  # ... continued downwards: an L
    resp[9, 1] = resp[10, 2] = 3.0  # diagonal pair
    found = maxima(resp)
    assert len(found) == 3
    assert (1, 1) in found and (5, 5) in found and (8, 0) in found  # first pixel in raster order


def test_neighbouring_unequal_maxima_keep_only_the_larger():
    resp = np.zeros((8, 8))
    resp[3, 3], resp[3, 4] = 1.0, 1.5
    assert maxima(resp) == {(2, 3)}


def test_margin_is_compared_but_never_reported():
    resp = np.zeros((8, 8))
    resp[0, 4] = 5.0  # in the margin: suppresses its neighbour below, is not itself a feature
    resp[1, 4] = 4.0
    resp[5, 5] = 1.0
    assert maxima(resp) == {(4, 4)}


def test_batches_are_independent():
    stack = np.zeros((2, 6, 6), np.float32)
    stack[0, 2, 2] = 1.0
    stack[1, 3, 3] = 1.0
    idx = local_maxima(stack, BE)
    b, rem = np.divmod(idx, 36)
    assert sorted(b.tolist()) == [0, 1]
