"""The pieces of the detector's response: level tags, lanes, and one level's maths."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.fft

from mhd.functions import _lanes, _scalespace, detect, get_backend
from mhd.functions._cells import bands, cell_edges, cell_sums
from mhd.functions._noise import LEVEL_BINS, _bin_medians
from mhd.functions._response import level_response
from mhd.functions._scalespace import LevelGroup
from mhd.functions._tags import COARSER, LEVEL_BITS, MAX_LEVELS, level_of, tag


def test_tag_round_trips_and_barely_moves_the_value():
    rng = np.random.default_rng(0)
    D = rng.normal(size=1000).astype(np.float32)
    levels = rng.integers(0, MAX_LEVELS, D.size).astype(np.int32)
    tagged = tag(D.copy(), levels, np)
    np.testing.assert_array_equal(level_of(tagged, np), levels)
    np.testing.assert_allclose(tagged, D, rtol=2.0**-16)
    assert np.all(np.sign(tagged) == np.sign(D))
    assert COARSER == MAX_LEVELS == (1 << LEVEL_BITS) - 1


def test_absolute_tag_clears_the_sign_and_a_running_maximum_carries_the_argmax():
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(5, 64)).astype(np.float32)
    best = None
    for i, D in enumerate(stack):
        D = tag(D.copy(), i, np, absolute=True)
        assert np.all(D >= 0)
        best = D if best is None else np.maximum(best, D)
    np.testing.assert_array_equal(level_of(best, np), np.argmax(np.abs(stack), axis=0))


def test_running_max_merges_the_parts_of_several_threads():
    parts = [np.full(4, v, np.float32) for v in (3.0, 1.0, 5.0, 2.0)]
    rm = _lanes.RunningMax(np)
    both_added = threading.Barrier(2)  # both threads alive at once: a finished thread's id may be reused

    def add(p):
        rm.add(p)
        both_added.wait()

    threads = [threading.Thread(target=add, args=(p,)) for p in parts[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rm.add(parts[2])
    assert len(rm.parts) == 3
    window = (slice(1, 3),)
    cut = rm.result(np.array([0, 7, 0, 0], np.float32), window=window)  # a new array: the parts stay as they were
    np.testing.assert_array_equal(cut, [7.0, 5.0])
    assert cut.flags.c_contiguous and not any(np.shares_memory(cut, p) for p in parts)
    np.testing.assert_array_equal(rm.result(parts[3]), np.full(4, 5.0))
    assert _lanes.RunningMax(np).result() is None
    one = _lanes.RunningMax(np)
    one.add(np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(one.result(window=window), [1.0, 2.0])


def test_per_thread_objects_are_made_once_per_thread_and_key():
    store, made = _lanes.PerThread(), []
    a = store.get("k", lambda: made.append(1) or object())
    assert store.get("k", lambda: made.append(2) or object()) is a and made == [1]
    other = []
    t = threading.Thread(target=lambda: other.append(store.get("k", object)))
    t.start()
    t.join()
    assert other[0] is not a


@pytest.mark.parametrize("lanes", [1, 3])
def test_run_lanes_merges_after_its_tasks_and_runs_the_rest(lanes):
    done, lock = [], threading.Lock()

    def task(name):
        def run():
            with lock:
                done.append(name)

        return run

    def merge():
        assert {"a", "b", "c"} <= set(done)  # every task queued before the merge has finished
        return "merged"

    assert _lanes.run_lanes(lanes, [task("a"), task("b"), task("c")], merge, [task("x"), task("y")]) == "merged"
    assert sorted(done) == ["a", "b", "c", "x", "y"]
    assert _lanes.run_lanes(lanes, [task("z")], None, []) is None


@pytest.mark.parametrize("lanes", [1, 2])
def test_run_lanes_raises_a_task_error(lanes):
    def boom():
        raise RuntimeError("level failed")

    with pytest.raises(RuntimeError, match="level failed"):
        _lanes.run_lanes(lanes, [boom], lambda: None, [lambda: None])


def test_lane_pools_are_shut_down_and_made_anew():
    pool = _lanes.lane_pool(2)
    assert _lanes.lane_pool(2) is pool
    pool.submit(lambda: None).result()
    _lanes.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    assert _lanes.lane_pool(2) is not pool
    _lanes.shutdown()


def test_lane_threads_end_with_the_interpreter():
    code = "from mhd.functions import _lanes; _lanes.lane_pool(2).submit(lambda: None).result(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("dense", [False, True])
def test_level_response_is_the_filtered_image(dense):
    rng = np.random.default_rng(2)
    be = get_backend("numpy", workers=1)
    x = rng.random((2, 32, 48)).astype(np.float32)
    F = scipy.fft.rfft2(x)
    gy, gx = rng.random((3, 2, 32)).astype(np.float32), rng.random((3, 2, 25)).astype(np.float32)
    h = gy[1, 1][:, None] * gx[1, 1][None, :] + gy[1, 0][:, None] * gx[1, 0][None, :]  # level 1 of the group
    group = LevelGroup(1, (4, 5, 6), gy, gx, dense=np.stack([h] * 3) if dense else None)
    scratch = (np.empty_like(F), np.empty(F.shape[1:], np.float32), np.empty(F.shape[1:], np.float32))
    D = level_response(F, group, 1, (32, 48), be, scratch, None)
    np.testing.assert_allclose(D, scipy.fft.irfft2(F * h, s=(32, 48)), rtol=1e-4, atol=1e-5)
    if dense:  # the kept function itself, not a copy; the factored one is written into the scratch
        assert np.shares_memory(group.transfer_into(1, scratch[1], scratch[2], np), group.dense)
    else:
        np.testing.assert_allclose(group.transfer_into(1, scratch[1], scratch[2], np), h, rtol=1e-6)


def test_a_large_filter_bank_keeps_only_its_1d_factors_and_finds_the_same_features(monkeypatch):
    """Memory flat in the number of levels and the block size: beyond DENSE_BYTES no 2-D transfer function is kept."""
    be = get_backend("numpy")
    dense = _scalespace.filter_bank((160, 192), 16, 1.0, 8.0, "dark", 0.0, be)
    monkeypatch.setattr(_scalespace, "DENSE_BYTES", 0)
    _scalespace._bank_cached.cache_clear()
    factored = _scalespace.filter_bank((160, 192), 16, 1.0, 8.0, "dark", 0.0, be)
    assert all(g.dense is None for g in factored.groups) and all(g.dense is not None for g in dense.groups)
    (g,) = factored.groups
    assert g.gy.nbytes + g.gx.nbytes == 16 * 2 * 4 * (160 + 97)  # O(n_bin (P + Q)), not O(n_bin P Q)
    for j in range(16):
        out, tmp = np.empty((160, 97), np.float32), np.empty((160, 97), np.float32)
        expect = dense.groups[0].transfer_into(j, out.copy(), tmp, np)  # float64 sums, rounded once
        # float32 products: a few ulp of each term, terms of size up to the level's gain (gx's largest value)
        np.testing.assert_allclose(g.transfer_into(j, out, tmp, np), expect, atol=1e-6 * np.abs(g.gx[j]).max())
    # the transfer functions are the analytic DoG
    ky, kx = 2 * np.pi * np.fft.fftfreq(160), 2 * np.pi * np.fft.rfftfreq(192)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    t0, t1, gain = _scalespace.dog_pairs(_scalespace.scales(16, 1.0, 8.0))
    expect = gain[3] * (np.exp(-0.5 * k2 * t1[3] ** 2) - np.exp(-0.5 * k2 * t0[3] ** 2))
    np.testing.assert_allclose(g.transfer_into(3, out, tmp, np), expect, atol=1e-6 * gain[3])
    rng = np.random.default_rng(5)
    image = (rng.random((150, 170)) * 40 + np.add.outer(np.sin(np.arange(150) / 3), np.cos(np.arange(170) / 4)) * 100).astype(np.uint8)
    a = detect(image, backend="numpy", tol=0.0)
    monkeypatch.setattr(_scalespace, "DENSE_BYTES", 32 * 2**20)
    _scalespace._bank_cached.cache_clear()
    b = detect(image, backend="numpy", tol=0.0)
    assert a.count > 50 and sorted(map(tuple, a.features.tolist())) == sorted(map(tuple, b.features.tolist()))


def test_cell_sums_cover_the_block_and_not_its_halo_split_as_the_count_grid():
    """Rows 5..14 and columns 6..15 of a padded block are image pixels 10..19 of a 30-pixel axis cut in 3 cells
    (edges 0, 10, 20, 30): one band each, in cell 1; a 4-cell grid (edges 0, 8, 15, 23) cuts them 10..14 | 15..19."""
    assert cell_edges(30, 3).tolist() == [0, 10, 20, 30] and cell_edges(30, 4).tolist() == [0, 8, 15, 23, 30]
    D = np.full((1, 20, 20), 100.0, np.float32)  # the halo
    D[:, 5:15, 6:16] = 2.0
    rows, cols = bands(10, 20, 30, 3, -5), bands(10, 20, 30, 4, -4)
    assert rows.cell.tolist() == [1] and cols.cell.tolist() == [1, 2] and cols.cuts.tolist() == [6, 11, 16]
    sums, samples = cell_sums(D, 1, rows, cols, np)
    assert samples.tolist() == [[50, 50]] and sums.tolist() == [[[200.0, 200.0]]]
    coarse = np.full((1, 10, 10), 3.0, np.float32)  # decimated by 2: bands of 5 px hold 2 or 3 samples
    sums, samples = cell_sums(coarse, 2, rows, cols, np)
    assert samples.tolist() == [[10, 15]] and sums.tolist() == [[[90.0, 135.0]]]
    thin = bands(10, 20, 30, 3, -5), bands(10, 12, 30, 30, -4)  # one-pixel cells: the first holds no sample at d = 2
    sums, samples = cell_sums(coarse, 2, *thin, np)
    assert samples.tolist() == [[0, 5]] and sums.tolist() == [[[0.0, 45.0]]]


def bins_case(seed: int):
    """Samples of the noise level function: ``mean`` binned by intervals of itself (some bins empty, counts odd
    and even), ``v`` independent of it."""
    rng = np.random.default_rng(seed)
    mean = rng.random(301).astype(np.float32)
    edges = np.sort(rng.choice(np.linspace(0.05, 0.95, 40), LEVEL_BINS - 1, replace=False))
    edges[3] = edges[4]  # an empty bin
    label = (mean[:, None] > edges[None, :]).sum(axis=1).astype(np.int8)
    return mean, rng.random(301).astype(np.float32), label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_bin_medians_equal_numpys_median_of_each_bin(seed):
    mean, v, label = bins_case(seed)
    level, sigma = _bin_medians(mean, v, label, get_backend("numpy"))
    full = [k for k in range(LEVEL_BINS) if (label == k).any()]
    assert len(full) < LEVEL_BINS
    assert level.tolist() == [float(np.median(mean[label == k].astype(np.float64))) for k in full]
    assert sigma.tolist() == [float(np.median(v[label == k].astype(np.float64))) for k in full]
