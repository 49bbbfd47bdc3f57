"""3 x 3 non-maximum suppression: plateaus count once."""

from __future__ import annotations

import numpy as np
import pytest

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


def reference_maxima(stack: np.ndarray, floor: float = 0.0) -> list[int]:
    """The rule of ``local_maxima`` written out pixel by pixel: candidates are interior pixels
    above ``floor`` equal to their 3 x 3 maximum; one feature per 8-connected group of candidates,
    its first pixel in raster order; flat indices into ``stack``."""
    from scipy import ndimage as ndi

    found = []
    B, R, C = stack.shape
    for b in range(B):
        cand = np.zeros((R, C), bool)
        for r in range(1, R - 1):
            for c in range(1, C - 1):
                cand[r, c] = stack[b, r, c] > floor and stack[b, r, c] >= stack[b, r - 1 : r + 2, c - 1 : c + 2].max()
        labels, n = ndi.label(cand, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            rows, cols = np.nonzero(labels == k)  # raster order
            found.append((b * R + int(rows[0])) * C + int(cols[0]))
    return sorted(found)


@pytest.mark.parametrize("shape", [(3, 17, 11), (2, 9, 23), (1, 3, 12), (4, 12, 3)])
def test_random_plateaus_in_several_blocks_match_the_rule(shape):
    """Few grey levels make many ties and plateaus of every shape, including across the block
    boundaries of a batch (which must never merge) and on non-square, three-pixel-wide blocks."""
    rng = np.random.default_rng(sum(shape))
    found = 0
    for _ in range(20):
        stack = rng.integers(0, 4, size=shape).astype(np.float32)
        idx = local_maxima(stack, BE, floor=0.5)
        assert idx.tolist() == reference_maxima(stack, floor=0.5)
        found += len(idx)
    assert found > 20  # not vacuous


def test_anti_diagonal_pair_is_one_plateau():
    resp = np.zeros((8, 8))
    resp[3, 4] = resp[4, 3] = 1.0  # touching only corner to corner, the other way from the main diagonal
    assert maxima(resp) == {(2, 3)}


def test_a_single_two_pixel_plateau_counts_once():
    resp = np.zeros((7, 7))
    resp[3, 3] = resp[3, 4] = 1.0
    assert maxima(resp) == {(2, 2)}


@pytest.mark.parametrize("shape", [(1, 2, 10), (1, 10, 2), (2, 1, 1), (1, 0, 5)])
def test_blocks_without_an_interior_have_no_features(shape):
    idx = local_maxima(np.ones(shape, np.float32), BE)
    assert idx.dtype == np.int64 and idx.size == 0


def test_only_candidates_with_a_candidate_neighbour_are_flagged():
    from mhd.functions._nms import _has_candidate_neighbour

    cand = np.zeros((2, 5, 6), dtype=bool)
    cand[0, 0, 0] = cand[0, 1, 1] = True  # diagonal pair at the corner
    cand[0, 3, 4] = True  # alone
    cand[1, 4, 5] = True  # alone, at the far corner of the next image
    cand[1, 0, 0] = True  # alone: the pair above is in image 0
    b, r, c = (np.array(v) for v in zip(*np.argwhere(cand)))
    np.testing.assert_array_equal(_has_candidate_neighbour(cand, b, r, c, np), [True, True, False, False, False])
