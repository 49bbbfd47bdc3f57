"""Histogram normalisation (0.175 % saturated at each end) and noise estimation."""

from __future__ import annotations

import numpy as np
import pytest

from mhd.functions import estimate_noise, normalize, saturation_limits


def test_uint8_limits_are_exact_quantiles():
    # 100000 pixels: 0.175 % = 175 pixels at each end
    values = np.arange(100000) % 250
    rng = np.random.default_rng(0)
    img = rng.permutation(np.sort(values)).reshape(250, 400).astype(np.uint8)
    lo, hi = saturation_limits(img, backend="numpy")
    s = np.sort(img.ravel())
    assert lo == s[174] and hi == s[-175]
    out = normalize(img, backend="numpy")
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.mean(out == 0.0) >= 0.00175 and np.mean(out == 1.0) >= 0.00175


def test_saturation_matches_the_paper_at_both_ends():
    rng = np.random.default_rng(1)
    img = rng.normal(30000, 3000, (512, 512)).clip(0, 65535).astype(np.uint16)
    out = normalize(img, backend="numpy")
    # the reference code saturated ~0 % dark and ~0.35 % bright; the paper says 0.175 % each
    assert 0.0015 < np.mean(out == 0.0) < 0.0021
    assert 0.0015 < np.mean(out == 1.0) < 0.0021


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_bit_depth_gain_and_offset_do_not_matter(dtype):
    rng = np.random.default_rng(2)
    base = rng.integers(0, 200, (128, 128))
    gain = 1 if dtype == np.uint8 else 3  # keep uint8 in range
    scaled = (base * gain + 17).astype(dtype)
    a = normalize(base.astype(np.uint8), backend="numpy")
    b = normalize(scaled, backend="numpy")
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_constant_image_maps_to_zeros_not_nan():
    for img in (np.full((32, 32), 9, np.uint8), np.full((32, 32), 0.5)):
        out = normalize(img, backend="numpy")
        assert np.all(out == 0) and out.dtype == np.float32


def test_almost_constant_image_keeps_its_contrast():
    img = np.zeros((100, 100), np.uint8)
    img[0, 0] = 255  # 0.01 % of pixels: inside the saturated fraction
    out = normalize(img, backend="numpy")
    assert out[0, 0] == 1.0 and out.sum() == 1.0


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.zeros((4, 4, 3)), ValueError, "2-D"),
        (np.zeros((0, 5)), ValueError, "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), ValueError, "NaN"),
        (np.array([["a", "b"]]), TypeError, "not numeric"),
    ],
)
def test_bad_input(image, error, message):
    with pytest.raises(error, match=message):
        normalize(image, backend="numpy")


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.1])
def test_noise_estimate_tracks_white_noise_on_smooth_images(sigma):
    rng = np.random.default_rng(3)
    rr, cc = np.mgrid[:256, :256]
    smooth = 0.5 + 0.2 * np.sin(rr / 20.0) * np.cos(cc / 15.0)
    est = estimate_noise(smooth + rng.normal(0, sigma, smooth.shape), backend="numpy")
    assert abs(est / sigma - 1) < 0.1


def test_noise_estimate_of_tiny_images_is_zero():
    assert estimate_noise(np.ones((2, 3)), backend="numpy") == 0.0


def exact_limits(img: np.ndarray, saturation: float) -> tuple[float, float]:
    """The documented rule, by sorting: ``lo`` the smallest value with at least ``saturation`` % of the
    pixels at or below it, ``hi`` the largest with at least that many at or above (at least one pixel)."""
    s = np.sort(img.ravel().astype(np.int64))
    k = max(int(np.floor(saturation / 100.0 * s.size)), 1)
    return float(s[k - 1]), float(s[-k])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.bool_])
@pytest.mark.parametrize("saturation", [0.0, 0.175, 1.0, 12.5, 49.9])
def test_small_integer_limits_follow_the_exact_rule(dtype, saturation):
    """Integers of up to 16 bit take the exact histogram path: no interpolation between grey
    levels, whatever the sign, and at least one pixel saturated even at 0 %."""
    rng = np.random.default_rng(4)
    info = np.iinfo(dtype) if dtype != np.bool_ else None
    values = (
        rng.integers(0, 2, 10_000) if info is None else rng.integers(max(info.min, -20_000), min(info.max, 20_000), 10_000, endpoint=True)
    )  # spans wider than int8/int16 can subtract in
    img = values.astype(dtype).reshape(100, 100)
    assert saturation_limits(img, saturation, backend="numpy") == exact_limits(img, saturation)


@pytest.mark.parametrize("saturation", [0.0, 10.0, 49.99])
def test_saturation_from_zero_to_below_fifty_percent_is_accepted(saturation):
    lo, hi = saturation_limits(np.arange(100, dtype=np.uint8).reshape(10, 10), saturation, backend="numpy")
    assert lo <= hi


@pytest.mark.parametrize("saturation", [-0.01, -1.0, 50.0, 50.5])
def test_saturation_outside_zero_to_fifty_percent_is_refused(saturation):
    with pytest.raises(ValueError, match=r"percentage in \[0, 50\)"):
        saturation_limits(np.zeros((4, 4), np.uint8), saturation, backend="numpy")


def test_noise_estimate_needs_three_rows_and_three_columns():
    noise = np.random.default_rng(5).normal(0, 0.1, (64, 64))
    assert estimate_noise(noise[:3], backend="numpy", row_step=1) > 0.05  # one usable row is enough
    assert estimate_noise(noise[:, :3], backend="numpy") > 0.0
    assert estimate_noise(noise[:2], backend="numpy") == estimate_noise(noise[:, :2], backend="numpy") == 0.0


def test_float16_tiles_take_the_quantile_path_like_float32():
    """float16 is a float: the exact integer histogram path must not take it (values are not grey levels)."""
    rng = np.random.default_rng(3)
    img = rng.random((64, 80)).astype(np.float16)
    np.testing.assert_array_equal(normalize(img, backend="numpy"), normalize(img.astype(np.float32), backend="numpy"))
    assert saturation_limits(img, backend="numpy") == saturation_limits(img.astype(np.float32), backend="numpy")


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 40000)])
def test_grey_table_gathers_exactly_what_normalize_computes(dtype, top):
    from mhd.functions._normalize import grey_table, normalize_with_step

    rng = np.random.default_rng(3)
    img = rng.integers(3, top, (300, 200)).astype(dtype)
    img[0, :5] = top  # saturated pixels at both ends
    img[1, :5] = 0
    table, step = grey_table(img, backend="numpy")
    want, want_step = normalize_with_step(img, backend="numpy")
    assert table.dtype == np.float32 and table.shape == (int(img.max()) + 1,)
    np.testing.assert_array_equal(np.take(table, img), want)  # to the bit
    assert step == want_step


@pytest.mark.parametrize(
    "img",
    [np.full((20, 20), 7, np.uint8), np.arange(400, dtype=np.float32).reshape(20, 20), np.arange(400, dtype=np.int16).reshape(20, 20)],
    ids=["constant", "float", "signed"],
)
def test_grey_table_is_only_for_unsigned_tiles_with_contrast(img):
    from mhd.functions._normalize import grey_table

    assert grey_table(img, backend="numpy") is None


def test_order_statistics_are_exact_even_where_the_sample_misleads():
    """Sorted rows, long ties and a half-saturated tile: each rank is the value np.sort puts there."""
    from mhd.functions._normalize import order_statistics

    rng = np.random.default_rng(7)
    cases = [np.sort(rng.normal(size=50000)), np.repeat(rng.normal(size=50), 1000), rng.random(60000)]
    cases[2][::2] = 1.0
    for x in cases:
        n = x.size
        ranks = [0, 1, 87, n // 2 - 1, n // 2, n - 88, n - 2, n - 1]
        got = order_statistics(x, ranks, np)
        s = np.sort(x)
        assert [got[k] for k in ranks] == [float(s[k]) for k in ranks]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_limits_are_numpys_quantiles(dtype):
    rng = np.random.default_rng(8)
    img = (rng.gamma(2.0, 30.0, (700, 900)) - 20).astype(dtype)
    for saturation in (0.0, 0.175, 5.0, 49.0):
        want = np.quantile(img.ravel(), [saturation / 100, 1 - saturation / 100])
        got = saturation_limits(img, saturation, backend="numpy")
        if dtype == np.float64:
            assert got == tuple(float(v) for v in want)
        else:  # NumPy interpolates in float32, we in float64
            np.testing.assert_allclose(got, want, rtol=2 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("view", ["even", "odd", "strided", "transposed"])
def test_grey_histogram_counts_every_pixel_once(dtype, view):
    from mhd.functions import get_backend
    from mhd.functions._normalize import _grey_counts

    rng = np.random.default_rng(3)
    img = rng.integers(0, 251, (64, 48)).astype(dtype)
    img = {"even": img, "odd": img[:63, :47], "strided": img[:, ::3], "transposed": img.T}[view]
    assert np.array_equal(_grey_counts(img, get_backend("numpy")), np.bincount(img.ravel()))
