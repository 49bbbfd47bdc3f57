"""CuPy backend: the same code path as NumPy, compared on real EM slices."""

from __future__ import annotations

import numpy as np
import pytest

from mhd.functions import cuda_available, detect, detect_batch, normalize

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU; this machine has none"),
]


def test_normalize_matches_numpy(isbi):
    import cupy

    np.testing.assert_allclose(cupy.asnumpy(normalize(isbi[0], backend="cupy")), normalize(isbi[0], backend="numpy"), atol=1e-6)


def test_detect_matches_numpy(isbi):
    for img in isbi[:3]:
        gpu = detect(img, backend="cupy")
        cpu = detect(img, backend="numpy")
        assert gpu.backend.startswith("cupy:")
        assert abs(gpu.count - cpu.count) <= 0.005 * cpu.count
        a = {tuple(f) for f in gpu.features[:, :2].astype(int)}
        b = {tuple(f) for f in cpu.features[:, :2].astype(int)}
        assert len(a & b) / len(b) >= 0.99


def test_batched_gpu_detection_matches_single(isbi):
    batch = detect_batch(isbi[:4], backend="cupy")
    assert [d.count for d in batch] == [detect(im, backend="cupy").count for im in isbi[:4]]


def test_huge_tile_stays_within_gpu_memory():
    import cupy

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    rng = np.random.default_rng(0)
    img = cupy.asarray(rng.integers(0, 255, (8192, 8192), dtype=np.uint8))
    det = detect(img, n_bin=64, backend="cupy")
    assert det.count > 0
    assert pool.total_bytes() < 8 * 2**30
