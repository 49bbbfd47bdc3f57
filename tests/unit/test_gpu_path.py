"""The device code path on CPU CI: the detector driven through a strict fake CuPy (tests/strict_xp.py).

A host/device mix-up (``np.asarray`` of a device array, a NumPy array in a
device kernel, a scalar expected where CuPy returns a 0-d array, an array
used on the wrong device) raises here as it would on a GPU, and the results
must equal the NumPy backend's.
"""

from __future__ import annotations

import numpy as np
import pytest
import strict_xp

from mhd.functions import detect, detect_batch, estimate_noise, normalize
from mhd.functions._backend import Backend
from mhd.functions._nms import local_maxima
from mhd.functions._noise import noise_level_function, noise_spectrum
from mhd.functions.simulate import blur, digitize, shot_noise, to_signal

XP = strict_xp.module()
CPU = Backend("numpy", np, None, 1)
DEV0 = Backend("cupy:0", XP, 0, 1)
DEV1 = Backend("cupy:1", XP, 1, 1)


@pytest.fixture(scope="module")
def tiles(isbi) -> list[np.ndarray]:
    """Two 512 x 512 uint8 tiles: astigmatic blur (3 and 1.5 px at 30 deg) and shot noise, so the
    stabiliser, the blur fit and the astigmatism measure all have work to do."""
    rng = np.random.default_rng(7)
    out = []
    for img, dose in ((isbi[0], 20.0), (isbi[1], 50.0)):
        signal = blur(to_signal(img), 3.0, 1.5, angle=30.0)
        out.append(digitize(shot_noise(signal, dose, rng), bits=8))
    return out


def _same(dev, cpu) -> None:
    assert dev.backend.startswith("cupy:")
    assert dev.count == cpu.count
    np.testing.assert_array_equal(dev.features, cpu.features)
    np.testing.assert_array_equal(dev.grid, cpu.grid)
    np.testing.assert_allclose(dev.thresholds, cpu.thresholds, rtol=1e-5)
    for key in ("noise", "blur", "blur_err", "astigmatism", "astigmatism_angle", "blur_cells", "blur_cells_err"):  # NaN equals NaN
        np.testing.assert_allclose(getattr(dev, key), getattr(cpu, key), rtol=1e-4, atol=1e-6, err_msg=key)


# ----------------------------------------------------------- the fake itself


def test_strict_module_refuses_what_cupy_refuses():
    a = XP.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        a + np.ones(3)  # a host array in a device kernel
    with pytest.raises(TypeError):
        XP.stack([a, np.ones((2, 3))])
    with pytest.raises(TypeError):
        float(a)  # only 0-d arrays convert
    with XP.cuda.Device(1), pytest.raises(ValueError):
        a * 2  # array of device 0 while device 1 is current
    total = a.sum()
    assert isinstance(total, strict_xp.DeviceArray) and total.ndim == 0  # reductions stay on the device
    assert isinstance(np.max(a), strict_xp.DeviceArray)  # NumPy functions dispatch, as they do for CuPy
    assert float(total) == 15.0 and int(a[1, 2]) == 5 and bool(a[0, 1])
    assert isinstance(a.get(), np.ndarray) and isinstance(XP.asnumpy(a), np.ndarray)
    np.testing.assert_array_equal(XP.asnumpy(a), np.arange(6.0).reshape(2, 3))
    assert isinstance(a.view(XP.int64), strict_xp.DeviceArray)


# ------------------------------------------------------------- the detector


def test_detect_on_device_equals_numpy(tiles):
    cpu = detect(tiles[0], backend=CPU)
    dev = detect(tiles[0], backend=DEV0)
    assert cpu.count > 100 and cpu.astigmatism > 0 and np.isfinite(cpu.blur)  # every measure is exercised
    _same(dev, cpu)
    assert isinstance(dev.features, np.ndarray) and isinstance(dev.thresholds, np.ndarray)


def test_detect_of_an_image_already_on_the_device(tiles):
    with DEV0.use():
        on_device = XP.asarray(tiles[0])
    _same(detect(on_device, backend=DEV0), detect(tiles[0], backend=CPU))


def test_detect_batch_on_device_equals_numpy(tiles):
    for dev, cpu in zip(detect_batch(tiles, backend=DEV0), detect_batch(tiles, backend=CPU)):
        _same(dev, cpu)


def test_a_batch_reads_back_a_few_values_per_tile(tiles):
    """Each read-back to the host waits for the GPU's queue to drain. Per tile a batch reads back its histogram (after
    the two waits inside CuPy's ``bincount``), the noise-level bins' counts and their middle values: about 5, not
    one value per bin (it read back about 75 times per tile, 64 of them the bins' medians one by one), nor the
    noise spectrum image by image."""

    def reads(batch: list) -> int:
        start = strict_xp.READS[0]
        detect_batch(batch, backend=DEV0)
        return strict_xp.READS[0] - start

    one, eight = reads(tiles[:1]), reads(tiles * 4)
    assert (eight - one) / 7 <= 6
    assert one <= 36  # per level once per batch (its energy per cell), the moments, the NMS and the features


def test_noise_bin_medians_by_sorting_on_device_equal_the_cpus_partitions():
    from test_response import bins_case

    from mhd.functions._noise import _bin_medians

    for seed in range(3):
        mean, v, label = bins_case(seed)
        with DEV0.use():
            on_device = [XP.asarray(a) for a in (mean, v, label)]
        for dev, cpu in zip(_bin_medians(*on_device, DEV0), _bin_medians(mean, v, label, CPU)):
            assert isinstance(dev, np.ndarray) and dev.tolist() == cpu.tolist()


def test_a_factored_filter_bank_on_two_devices_equals_numpy(tiles, monkeypatch):
    """Banks above DENSE_BYTES write each level's filter from its 1-D factors on the device (a batch too)."""
    from mhd.functions import _scalespace

    monkeypatch.setattr(_scalespace, "DENSE_BYTES", 0)
    _scalespace._bank_cached.cache_clear()
    try:
        for dev, cpu in zip(detect_batch(tiles, backend=[DEV0, DEV1], block_size=256), detect_batch(tiles, backend=CPU, block_size=256)):
            _same(dev, cpu)
    finally:
        _scalespace._bank_cached.cache_clear()


def test_blocks_dealt_over_two_devices_equal_numpy(tiles):
    cpu = detect(tiles[1], backend=CPU, block_size=128)
    two = detect(tiles[1], backend=[DEV0, DEV1], block_size=128)
    assert two.backend == "cupy:0+cupy:1"
    _same(two, cpu)


def test_second_device_alone(tiles):
    _same(detect(tiles[1], backend=DEV1, block_size=256), detect(tiles[1], backend=CPU, block_size=256))


# ------------------------------------------------------ the pieces, one by one


def test_normalize_and_noise_model_on_device(tiles):
    with DEV0.use():
        norm_d = normalize(tiles[0], backend=DEV0)
        assert isinstance(norm_d, strict_xp.DeviceArray)
        norm_c = normalize(tiles[0], backend=CPU)
        np.testing.assert_array_equal(XP.asnumpy(norm_d), norm_c)
        assert estimate_noise(tiles[0], backend=DEV0) == pytest.approx(estimate_noise(tiles[0], backend=CPU), rel=1e-6)
        np.testing.assert_allclose(noise_spectrum(norm_d[None], DEV0), noise_spectrum(norm_c[None], CPU), rtol=1e-5)
        for got, want in zip(noise_level_function(norm_d, DEV0), noise_level_function(norm_c, CPU)):
            assert isinstance(got, np.ndarray)
            np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize(
    "case",
    [
        dict(dtype=np.uint16),
        dict(dtype=np.int16),
        dict(dtype=np.float32),
        dict(dtype=bool),
        dict(polarity="dark", tol=0.0),
        dict(polarity="bright", n_bin=64),
        dict(noise_k=0.0, side=200),  # no stabiliser; too small for the astigmatism measure (NaN)
    ],
    ids=lambda c: "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()),
)
def test_dtypes_and_options_on_device(tiles, case):
    case = dict(case)
    dtype, side = case.pop("dtype", None), case.pop("side", 512)
    img = tiles[0][:side, :side]
    if dtype is bool:
        img = img > np.median(img)
    elif dtype is np.float32:
        img = img.astype(np.float32) / 255
    elif dtype is not None:
        img = (img.astype(np.int32) * 97 - (20000 if dtype is np.int16 else 0)).astype(dtype)
    _same(detect(img, backend=DEV0, **case), detect(img, backend=CPU, **case))


def test_spectral_anisotropy_of_a_device_spectrum(tiles):
    from mhd.functions._astigmatism import spectral_anisotropy

    img = normalize(tiles[0], backend=CPU)[None]
    want = spectral_anisotropy(CPU.rfft2(img), img.shape[1:], [1.0, 8.0], CPU, noise=0.01)
    with DEV0.use():
        got = spectral_anisotropy(DEV0.rfft2(DEV0.asarray(img)), img.shape[1:], [1.0, 8.0], DEV0, noise=0.01)
    assert want[0][0] > 0
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_public_pieces_run_on_their_backends_device(tiles):
    """Called on device 1 while device 0 is current (no ``use()`` around them), as a user would."""
    from mhd.functions import saturation_limits
    from mhd.functions._noise import stabilize

    img = tiles[0]
    assert saturation_limits(img, backend=DEV1) == saturation_limits(img, backend=CPU)
    assert saturation_limits(img.astype(np.float32), backend=DEV1) == pytest.approx(saturation_limits(img.astype(np.float32), backend=CPU))
    norm_d, norm_c = normalize(img, backend=DEV1), normalize(img, backend=CPU)
    assert norm_d.device == 1
    assert estimate_noise(norm_d, backend=DEV1) == pytest.approx(estimate_noise(norm_c, backend=CPU), rel=1e-6)
    np.testing.assert_allclose(noise_spectrum(norm_d[None], DEV1), noise_spectrum(norm_c[None], CPU), rtol=1e-5)
    np.testing.assert_allclose(noise_level_function(norm_d, DEV1)[1], noise_level_function(norm_c, CPU)[1], rtol=1e-5)
    lut = np.linspace(0, 1, 1024, dtype=np.float32) ** 0.5
    np.testing.assert_array_equal(XP.asnumpy(stabilize(norm_d, lut, DEV1)), stabilize(norm_c, lut, CPU))
    with DEV1.use():
        peaks = norm_d[None] * XP.float32(2)
    np.testing.assert_array_equal(local_maxima(peaks, DEV1, floor=1.0), local_maxima(norm_c[None] * 2, CPU, floor=1.0))
