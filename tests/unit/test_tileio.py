"""Decoding tiles: formats, bit depths, colour policy, >2-D refusal, header-checked limits."""

from __future__ import annotations

import io
import tracemalloc

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import KRISS_DIR
from mhd.functions import detect
from mhd.functions.worker.tileio import LUMA, MAX_FRAME, TileError, read_tile, sniff_format, to_grey, trim_frame
from tilegen import blobs, encode, png_header_only, tiff_header_only

BIG = 10**8


def decode(data: bytes, max_pixels: int = BIG, **kw) -> np.ndarray:
    return read_tile(io.BytesIO(data), max_pixels, **kw)


@pytest.mark.parametrize(
    "fmt,dtype,options",
    [
        ("PNG", np.uint8, {}),
        ("PNG", np.uint16, {}),
        ("BMP", np.uint8, {}),
        ("TIFF", np.uint8, {}),
        ("TIFF", np.uint16, {}),
        ("TIFF", np.uint16, {"compression": "zlib"}),
        ("TIFF", np.float32, {}),
        ("TIFF", np.uint8, {"bigtiff": True}),
    ],
)
def test_grey_round_trip_is_exact(fmt, dtype, options):
    image = (blobs((64, 48)).astype(np.float64) * (257 if dtype == np.uint16 else 1)).astype(dtype)
    out = decode(encode(image, fmt, **options))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, image)


def test_jpeg_decodes_to_close_grey_levels():
    image = blobs((64, 64))
    out = decode(encode(image, "JPEG", quality=95))
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image).mean() < 3


@pytest.mark.parametrize("compression", ["tiff_lzw", "jpeg"])
def test_tiff_codecs_without_imagecodecs_fall_back_to_pillow(compression):
    image = blobs((64, 64))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="TIFF", compression=compression)
    out = decode(buf.getvalue())
    assert out.shape == (64, 64)
    assert np.abs(out.astype(int) - image).mean() < (0.01 if compression == "tiff_lzw" else 3)


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ LUMA


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_rgb_becomes_bt601_grey(fmt):
    rgb = np.stack([blobs((40, 40), s) for s in range(3)], axis=-1)
    out = decode(encode(rgb, fmt))
    assert out.shape == (40, 40) and out.dtype == np.float32
    np.testing.assert_allclose(out, luma(rgb), atol=1e-3)


def test_rgba_ignores_alpha_and_la_keeps_grey():
    rgba = np.stack([blobs((32, 32), s) for s in range(4)], axis=-1)
    np.testing.assert_allclose(decode(encode(rgba, "PNG")), luma(rgba), atol=1e-3)
    la = Image.fromarray(np.stack([blobs((32, 32)), np.full((32, 32), 7, np.uint8)], -1), mode="LA")
    buf = io.BytesIO()
    la.save(buf, format="PNG")
    np.testing.assert_array_equal(decode(buf.getvalue()), blobs((32, 32)))


def test_planar_rgb_tiff_16bit_becomes_grey():
    rgb = np.stack([blobs((32, 32), s).astype(np.uint16) * 200 for s in range(3)])
    out = decode(encode(rgb, "TIFF", photometric="rgb", planarconfig="separate"))
    np.testing.assert_allclose(out, luma(np.moveaxis(rgb, 0, -1)), rtol=1e-5)


def test_palette_png_becomes_grey():
    image = Image.fromarray(blobs((32, 32))).convert("P")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    expected = luma(np.asarray(image.convert("RGB")))
    np.testing.assert_allclose(decode(buf.getvalue()), expected, atol=1e-3)


def test_singleton_page_axis_is_accepted():
    out = decode(encode(blobs((32, 32))[None], "TIFF"))
    assert out.shape == (32, 32)


@pytest.mark.parametrize(
    "stack,options,match",
    [
        (np.zeros((3, 32, 32), np.uint8), {}, r"3-D .*3 pages"),
        (np.zeros((5, 32, 32), np.float32), {"imagej": True, "metadata": {"axes": "ZYX"}}, r"axes 'ZYX'"),
        (np.zeros((2, 3, 32, 32), np.uint16), {}, r"4-D"),
    ],
)
def test_stacks_are_refused_clearly(stack, options, match):
    with pytest.raises(TileError, match=match) as info:
        decode(encode(stack, "TIFF", photometric="minisblack", **options))
    assert "one 2-D image per tile" in str(info.value)


def test_multiframe_gif_like_png_is_refused():
    frames = [Image.fromarray(blobs((32, 32), s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(TileError, match="3 frames"):
        decode(buf.getvalue())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_is_refused(bad):
    image = np.ones((32, 32), np.float32)
    image[3, 4] = bad
    with pytest.raises(TileError, match="NaN or Inf"):
        decode(encode(image, "TIFF"))


def test_bilevel_and_complex_are_refused():
    buf = io.BytesIO()
    Image.fromarray(blobs((32, 32)) > 128).save(buf, format="PNG")
    with pytest.raises(TileError, match="bilevel"):
        decode(buf.getvalue())
    with pytest.raises(TileError, match="unsupported pixel type complex64"):
        decode(encode(np.ones((32, 32), np.complex64), "TIFF"))


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty file"),
        (b"hello world, not an image", "not a PNG, TIFF, BMP or JPEG"),
        (b"GIF89a" + bytes(64), "not a PNG, TIFF, BMP or JPEG"),
        (encode(blobs((64, 64)), "PNG")[:80], "cannot decode PNG"),
        (b"II*\x00" + bytes(12), "TIFF file holds no image"),
        (encode(blobs((64, 64)), "TIFF")[:300], "cannot decode TIFF"),
        (b"\xff\xd8\xff\xe0" + bytes(40), "cannot decode JPEG"),
    ],
)
def test_corrupt_or_foreign_files_raise_tile_error(data, match):
    with pytest.raises(TileError, match=match):
        decode(data)


def test_sniff_uses_magic_bytes_not_names():
    assert sniff_format(encode(blobs((16, 16)), "BMP")) == "BMP"
    assert sniff_format(b"MM\x00*....") == "TIFF"


@pytest.mark.parametrize("make", [png_header_only, tiff_header_only])
def test_huge_header_is_refused_before_decoding(make):
    data = make(60000, 60000)  # 3.6 gigapixels claimed, a few hundred bytes of file
    tracemalloc.start()
    try:
        with pytest.raises(TileError, match=r"60000 x 60000 = 3,600,000,000 pixels, above the limit of 268,435,456"):
            decode(data, max_pixels=16384**2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20


@pytest.mark.parametrize("progressive, padding", [(False, 0), (True, 0), (False, 4)])
def test_a_jpeg_too_short_for_its_declared_size_is_refused_before_decoding(progressive, padding):
    """A 64 x 64 JPEG whose frame header says 16000 x 16000: libjpeg would fill the rest with grey (a minute, GBs).
    Metadata segments before the frame (``padding`` of 64 KiB each) neither hide the header nor count as image data."""
    buf = io.BytesIO()
    Image.fromarray(blobs((64, 64), 2)).save(buf, "JPEG", quality=90, progressive=progressive)
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = (16000).to_bytes(2, "big") * 2
    data[2:2] = (b"\xff\xe1\xff\xff" + bytes(65533)) * padding  # APP1 segments of the largest size
    tracemalloc.start()
    try:
        with pytest.raises(TileError, match=r"JPEG with [\d,]+ bytes of image data cannot hold its declared 16000 x 16000 pixels"):
            decode(bytes(data), max_pixels=16384**2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20


def test_a_flat_progressive_jpeg_is_not_taken_for_a_forged_one():
    buf = io.BytesIO()
    Image.fromarray(np.full((2048, 2048), 128, np.uint8)).save(buf, "JPEG", quality=95, progressive=True)
    assert decode(buf.getvalue(), max_pixels=16384**2).shape == (2048, 2048)  # ~2 bits per block, the bound is 1
    buf = io.BytesIO()
    Image.fromarray(np.full((600, 400, 3), 128, np.uint8)).save(buf, "JPEG", quality=95, progressive=True, subsampling=2)
    assert decode(buf.getvalue(), max_pixels=16384**2).shape == (600, 400)  # colour, 4:2:0


def test_a_jpeg_without_a_frame_header_is_corrupt():
    data = encode(blobs((32, 32), 1), "JPEG")
    sof = data.find(b"\xff\xc0")
    cut = data[:sof] + data[sof + 2 + int.from_bytes(data[sof + 2 : sof + 4], "big") :]  # the frame header removed
    with pytest.raises(TileError):
        decode(cut, max_pixels=16384**2)


def test_pixel_limit_is_exact():
    data = encode(blobs((40, 50)), "PNG")
    assert decode(data, max_pixels=2000).shape == (40, 50)
    with pytest.raises(TileError, match="2,000 pixels, above the limit of 1,999"):
        decode(data, max_pixels=1999)


def test_decoded_bytes_limit_counts_samples_and_depth():
    rgb16 = np.zeros((50, 50, 3), np.uint16)  # 15,000 bytes decoded
    with pytest.raises(TileError, match="decode to 15,000 bytes"):
        decode(encode(rgb16, "TIFF"), max_pixels=2500)  # 10,000 bytes allowed
    assert decode(encode(rgb16, "TIFF"), max_pixels=2500, max_decoded_bytes=15000).shape == (50, 50)


def test_pillow_global_limit_is_restored():
    before = Image.MAX_IMAGE_PIXELS
    decode(encode(blobs((32, 32)), "PNG"), max_pixels=5000)
    with pytest.raises(TileError):
        decode(png_header_only(10**5, 10**5), max_pixels=5000)
    assert Image.MAX_IMAGE_PIXELS == before


# ------------------------------------------------------- image area only

SEM = KRISS_DIR


def framed(inner: np.ndarray) -> np.ndarray:
    """``inner`` inside a frame as an FEI SEM draws it: a ring of one value, then a ring of another."""
    out = np.pad(inner, 1, constant_values=0)
    return np.pad(out, 1, constant_values=200)


def test_a_two_ring_frame_is_trimmed_to_the_image():
    inner = blobs((40, 50), seed=3)
    assert np.array_equal(trim_frame(framed(inner)), inner)
    assert np.array_equal(decode(encode(framed(inner), "PNG")), inner)


@pytest.mark.parametrize(
    "image",
    [
        np.full((64, 64), 7, np.uint8),  # a blank tile: all of it uniform
        framed(blobs((14, 40), seed=1)),  # what is left would be under 16 px a side
    ],
)
def test_a_uniform_or_too_small_image_keeps_its_frame(image):
    assert trim_frame(image) is image


@pytest.mark.parametrize("rows", [2, 4, 6, 20])
def test_a_tile_of_uniform_lines_is_returned_whole(rows):
    """Stripes one value per row: every row is uniform, the image is not; nothing is trimmed, nothing raises."""
    stripes = np.repeat((np.arange(rows) % 2 * 9).astype(np.uint8)[:, None], 20, axis=1)
    assert np.array_equal(decode(encode(stripes, "PNG")), stripes)


def test_at_most_max_frame_lines_go_from_each_side():
    inner = blobs((40, 40), seed=2)
    thick = np.pad(inner, MAX_FRAME + 2, constant_values=0)
    assert trim_frame(thick).shape == (40 + 4, 40 + 4)
    edge = inner.copy()
    edge[0] = 9  # one uniform line of the image itself: a frame of one line
    assert trim_frame(edge).shape == (39, 40)


def test_the_fei_data_bar_is_cut_off_by_the_metadata():
    """A synthetic FEI TIFF: the image is the ResolutionX x ResolutionY named in the FEI_HELIOS tag; below it the bar."""
    image = blobs((48, 64), seed=4)
    bar = np.tile(np.array([0, 255], np.uint8), (12, 32))  # text-like stripes
    buf = io.BytesIO()
    meta = "[Image]\r\nResolutionX=64\r\nResolutionY=48\r\n"
    tifffile.imwrite(buf, np.vstack([image, bar]), extratags=[(34682, "s", 0, meta, True)])
    assert np.array_equal(decode(buf.getvalue()), image)


@pytest.mark.parametrize(
    "meta",
    [
        "[Image]\r\nResolutionX=64\r\nResolutionY=inf\r\n",
        "[Image]\r\nResolutionX=true\r\nResolutionY=true\r\n",
        "[Image]\r\nResolutionX=64\r\nResolutionY=600\r\n",
        "[Image]\r\nResolutionX=0\r\nResolutionY=-3\r\n",
        "[Beam]\r\nHV=10000\r\n",
    ],
)
def test_fei_metadata_that_names_no_image_size_keeps_the_whole_page(meta):
    image = blobs((60, 64), seed=5)
    buf = io.BytesIO()
    tifffile.imwrite(buf, image, extratags=[(34682, "s", 0, meta, True)])
    assert np.array_equal(decode(buf.getvalue()), image)


def test_a_real_fei_scan_loses_its_bar_and_frame_and_reads_as_its_image_area():
    """The slow scan of pair 001 as the microscope saved it: 471 x 512 RGB with a green and a black frame line and a
    data bar of text below row 441. As a tile it is the image area, the PNG of the same scan less the frame line
    that PNG kept; the bar doubled the feature count and pulled the blur to 0."""
    path = SEM / "fei-original" / "30us_001.tif"
    with open(path, "rb") as fh:
        tile = read_tile(fh, BIG)
    png = iio.imread(SEM / "time" / "slow_30us_001.png")  # rows 1-439, columns 1-510 of the original, one channel
    assert tile.shape == (439, 509)
    np.testing.assert_allclose(tile[:-1], png[1:, 1:], atol=1e-3)  # grey RGB: the luma is the grey level
    whole = to_grey(tifffile.imread(path))  # the page as stored
    det, raw = detect(tile, backend="numpy"), detect(whole, backend="numpy")
    assert raw.count > 2 * det.count
    assert raw.blur < 0.1 and 0.8 < det.blur < 1.4
    assert np.nanmin(det.blur_cells) > 0.5  # no cell reads the frame's step as sharpness
