"""Decode one EM tile (an encoded image file) into a 2-D array, safely.

Formats are recognised by their magic bytes, never by the file name:
PNG, BMP and JPEG through Pillow, TIFF (and BigTIFF) through tifffile. The
image size is read from the header and checked against a pixel limit
*before* any pixel data is decoded, so a small hostile file cannot make the
worker allocate gigabytes.

Policy
------
- Grey images of any integer depth (8, 16, 32 bit) and float32/float64 are
  returned as stored. Float images must be finite (NaN/Inf is an error).
- Colour images (RGB, RGBA, palette, CMYK, ...) are converted to grey with the
  ITU-R BT.601 luma weights ``0.299 R + 0.587 G + 0.114 B`` (alpha is ignored)
  and returned as float32. Grey + alpha keeps the grey channel.
- A TIFF must hold one 2-D image: a multi-page stack, volume or time series
  (any non-singleton axis besides rows, columns and colour samples) is refused
  with a message that names its axes and shape. Further series in the file
  (thumbnails, reduced resolutions) are ignored. A TIFF of more than
  :data:`MAX_TIFF_PAGES` pages is refused from its page count, before its
  series are parsed (which takes time that grows with the square of the pages:
  a few MB of tiny pages would hold a worker for minutes). Multi-frame
  PNG/BMP/JPEG are refused likewise.
- Bilevel (1-bit) and complex images are refused.
- A Huffman-coded JPEG shorter than one coded bit per 8 x 8 block of its
  declared size is refused as truncated or forged (libjpeg would fill the
  missing blocks with grey without an error).
- TIFF compressions that tifffile cannot decode without ``imagecodecs``
  (LZW, JPEG) are decoded by Pillow once tifffile has checked the header.
- Only the image area is returned. An FEI / Thermo Fisher SEM saves its data
  bar (text, scale bar, logo) below the image in the same TIFF; the image is
  the ``ResolutionX`` x ``ResolutionY`` pixels at the top left that its FEI
  metadata names, and the bar is cut off (on a real scan it held as many
  features as the image above it). Then up to :data:`MAX_FRAME` uniform lines
  (every pixel one value) are trimmed from each edge: the black frame such
  instruments draw, whose step to the image the detector would count as
  structure and the blur fit read as sharpness (:func:`trim_frame`).

Every refusal raises :class:`TileError` with a message meant for the person
who sent the tile; the caller prefixes the tile's name.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from mhd.contracts.formats import FORMATS, names, sniff

__all__ = ["MAX_TIFF_PAGES", "MAX_FRAME", "TileError", "ImageInfo", "sniff_format", "read_tile", "to_grey", "trim_frame"]

#: Most pages (IFDs) a TIFF tile may have: one image plus thumbnails or reduced resolutions.
MAX_TIFF_PAGES = 64

#: Most uniform lines :func:`trim_frame` removes from each edge of a tile (an instrument's frame is 1-2 px).
MAX_FRAME = 4
#: Smallest side a tile keeps after :func:`trim_frame` (the detector's smallest tile).
MIN_TRIMMED_SIDE = 16

#: BT.601 luma weights for R, G, B.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: Format name -> the library that decodes it (:data:`mhd.contracts.formats.FORMATS`).
DECODERS = {f.name: f.decoder for f in FORMATS}
_PIL_GREY_MODES = {"L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_PIL_LOCK = threading.Lock()


class TileError(ValueError):
    """A tile that cannot be scored; the message says why, for the sender."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image header says, before any pixel is decoded.

    Attributes
    ----------
    format : str
        ``"PNG"``, ``"TIFF"``, ``"BMP"`` or ``"JPEG"``.
    shape : (int, int)
        Rows and columns.
    samples : int
        Values per pixel (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA/CMYK).
    itemsize : int
        Bytes per decoded sample.
    """

    format: str
    shape: tuple[int, int]
    samples: int
    itemsize: int

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def decoded_bytes(self) -> int:
        return self.pixels * self.samples * self.itemsize


def sniff_format(head: bytes) -> str:
    """Name the image format from the first bytes of a file.

    Raises
    ------
    TileError
        For an empty file or one that is not PNG, TIFF, BMP or JPEG.
    """
    if not head:
        raise TileError("empty file (0 bytes)")
    fmt = sniff(head)
    if fmt is None:
        raise TileError(f"not a {names()} image (unrecognised file header)")
    return fmt.name


def read_tile(fh: BinaryIO, max_pixels: int, max_decoded_bytes: int | None = None) -> np.ndarray:
    """Decode a seekable binary file into one 2-D grey image.

    Parameters
    ----------
    fh : binary file object
        Positioned at the start of the encoded image; must be seekable.
    max_pixels : int
        Largest ``rows * cols`` accepted, checked from the header before decoding.
    max_decoded_bytes : int, optional
        Largest decoded sample buffer (all channels); default ``4 * max_pixels``.

    Returns
    -------
    (M, N) ndarray
        Integer or float grey levels as stored, or float32 for colour input: the
        image area only (no FEI data bar, no uniform frame; see the module docstring).

    Raises
    ------
    TileError
        For an unsupported, corrupt, too large, >2-D, bilevel or non-finite image.
    """
    limit_bytes = 4 * max_pixels if max_decoded_bytes is None else max_decoded_bytes
    fmt = sniff_format(fh.read(8))
    fh.seek(0)
    try:
        if DECODERS[fmt] == "tifffile":
            image = _read_tiff(fh, max_pixels, limit_bytes)
        else:
            image = _read_pil(fh, fmt, max_pixels, limit_bytes)
    except TileError:
        raise
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, struct.error, ...
        raise TileError(f"cannot decode {fmt} image: {exc}") from exc
    _check_values(image)
    return trim_frame(image)


def trim_frame(image: np.ndarray) -> np.ndarray:
    """``image`` without the uniform lines along its edges: at most :data:`MAX_FRAME` from each side.

    A line is uniform when all its pixels hold one value (an instrument's frame,
    or padding): it carries no image. The frame is peeled ring by ring, each
    edge's line judged within the lines still kept: an FEI scan's 1 px green
    ring and the 1 px black ring inside it go in two steps. A uniform image (a
    blank tile) is returned whole, and so is one that would keep fewer than
    :data:`MIN_TRIMMED_SIDE` pixels a side.

    Returns
    -------
    (M', N') ndarray
        A view of ``image``.
    """
    if min(image.shape) < MIN_TRIMMED_SIDE or image.min() == image.max():
        return image
    top = bottom = left = right = 0
    for _ in range(MAX_FRAME):
        kept = image[top : image.shape[0] - bottom, left : image.shape[1] - right]
        if min(kept.shape) < MIN_TRIMMED_SIDE:
            return image
        cut = [bool(line.min() == line.max()) for line in (kept[0], kept[-1], kept[:, 0], kept[:, -1])]
        if not any(cut):
            break
        top, bottom, left, right = (n + c for n, c in zip((top, bottom, left, right), cut))
    out = image[top : image.shape[0] - bottom, left : image.shape[1] - right]
    return out if min(out.shape) >= MIN_TRIMMED_SIDE else image


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """Grey image from a (M, N, S) array of S samples per pixel.

    S = 2 keeps channel 0 (grey + alpha); S = 3 or 4 applies the BT.601 luma
    weights to the first three channels (alpha ignored) and returns float32.
    """
    samples = pixels.shape[2]
    if samples in (1, 2):
        return pixels[:, :, 0]
    if samples in (3, 4):
        return np.tensordot(pixels[:, :, :3].astype(np.float32, copy=False), LUMA, axes=([2], [0]))
    raise TileError(f"{samples} samples per pixel is not a grey or colour image")


def _check_limits(info: ImageInfo, max_pixels: int, max_decoded_bytes: int) -> None:
    rows, cols = info.shape
    if info.pixels > max_pixels:
        raise TileError(f"image is {rows} x {cols} = {info.pixels:,} pixels, above the limit of {max_pixels:,} (MHD_MAX_PIXELS)")
    if info.decoded_bytes > max_decoded_bytes:
        raise TileError(
            f"image would decode to {info.decoded_bytes:,} bytes ({rows} x {cols} x {info.samples} samples of "
            f"{info.itemsize} bytes), above the limit of {max_decoded_bytes:,} bytes (4 bytes per MHD_MAX_PIXELS)"
        )


def _check_values(image: np.ndarray) -> None:
    kind = image.dtype.kind
    if kind == "b":
        raise TileError("bilevel (1-bit) image: it has no grey levels to measure focus on")
    if kind not in "uif":
        raise TileError(f"unsupported pixel type {image.dtype}: use integer or float grey levels")
    if kind == "f" and not np.isfinite(image).all():
        raise TileError("image holds NaN or Inf values")


# --------------------------------------------------------------------- TIFF


def _read_tiff(fh: BinaryIO, max_pixels: int, max_decoded_bytes: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(fh) as tif:
        if len(tif.pages) > MAX_TIFF_PAGES:
            raise TileError(f"TIFF holds {len(tif.pages):,} pages: MHD scores one 2-D image per tile; split the stack into single images")
        if not tif.series:
            raise TileError("TIFF file holds no image")
        series = tif.series[0]
        rows, cols, samples = _tiff_geometry(series.axes, series.shape)
        area = _fei_image_area(tif, rows, cols)
        info = ImageInfo("TIFF", (rows, cols), samples, np.dtype(series.dtype).itemsize)
        _check_limits(info, max_pixels, max_decoded_bytes)
        try:
            data = series.asarray()
        except (KeyError, ValueError) as exc:
            if "imagecodecs" not in str(exc):
                raise
            data = None  # a codec tifffile lacks without imagecodecs (LZW, JPEG): Pillow has them
    if data is None:
        fh.seek(0)
        image = _read_pil(fh, "TIFF", max_pixels, max_decoded_bytes)
    else:
        image = _tiff_to_2d(data, series.axes)
    return image[: area[0], : area[1]]


#: Largest FEI metadata tag read (bytes); a microscope writes ~10 KB. A larger one is not metadata: the whole page.
MAX_FEI_TAG_BYTES = 1 << 20


def _fei_image_area(tif: object, rows: int, cols: int) -> tuple[int, int]:
    """Rows and columns of the image proper in a TIFF of ``rows`` x ``cols``: the ``ResolutionY`` x ``ResolutionX``
    its FEI metadata names (the data bar lies below), or all of it where the metadata names no such size."""
    tags = tif.pages.first.tags
    if any(t is not None and t.valuebytecount > MAX_FEI_TAG_BYTES for t in (tags.get(34680), tags.get(34682))):
        return rows, cols
    meta = (tif.fei_metadata or {}).get("Image")
    r, c = (meta.get(key) if isinstance(meta, dict) else None for key in ("ResolutionY", "ResolutionX"))
    if type(r) is int and type(c) is int and 0 < r <= rows and 0 < c <= cols:  # not True, not 1e400
        return r, c
    return rows, cols


def _tiff_geometry(axes: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Rows, cols and samples of a TIFF series; refuse other non-singleton axes.

    ``axes`` uses tifffile's letters: ``Y`` rows, ``X`` columns, ``S`` samples
    (colour channels); anything else (``I`` pages, ``Z``, ``T``, ``C``, ``Q``)
    must have length 1.
    """
    if "Y" not in axes or "X" not in axes:
        raise TileError(f"TIFF image has no rows/columns (axes {axes!r}, shape {tuple(shape)})")
    extra = [(a, n) for a, n in zip(axes, shape) if a not in "YXS" and n > 1]
    if extra:
        raise TileError(
            f"image is {len(shape)}-D (axes {axes!r}, shape {tuple(shape)}, e.g. {extra[0][1]} pages): "
            "MHD scores one 2-D image per tile; split the stack into single images"
        )
    size = dict(zip(axes, shape))
    return size["Y"], size["X"], size.get("S", 1)


def _tiff_to_2d(data: np.ndarray, axes: str) -> np.ndarray:
    order = [axes.index(a) for a in "YXS" if a in axes]
    others = [i for i in range(data.ndim) if i not in order]
    pixels = data.transpose(others + order).reshape(data.shape[axes.index("Y")], data.shape[axes.index("X")], -1)
    return to_grey(pixels)


# --------------------------------------------------------- PNG, BMP, JPEG


def _read_pil(fh: BinaryIO, fmt: str, max_pixels: int, max_decoded_bytes: int) -> np.ndarray:
    with _pil_open(fh, fmt) as im:
        if getattr(im, "n_frames", 1) > 1:
            raise TileError(f"{fmt} holds {im.n_frames} frames: MHD scores one 2-D image per tile")
        cols, rows = im.size
        samples = len(im.getbands())
        itemsize = 4 if im.mode in ("I", "F") else 2 if im.mode.startswith("I;16") else 1
        _check_limits(ImageInfo(fmt, (rows, cols), samples, itemsize), max_pixels, max_decoded_bytes)
        if fmt == "JPEG":
            _check_jpeg_length(fh, rows, cols)
        if im.mode == "1":
            raise TileError("bilevel (1-bit) image: it has no grey levels to measure focus on")
        if im.mode in _PIL_GREY_MODES:
            return np.asarray(im)
        if im.mode == "LA":
            return np.asarray(im)[:, :, 0]
        return to_grey(np.asarray(im.convert("RGB")))


#: JPEG frame markers of Huffman-coded images (baseline, extended, progressive): every 8 x 8 block of
#: their full-resolution component costs at least one bit of coded data.
_HUFFMAN_SOF = frozenset({0xC0, 0xC1, 0xC2})


def _check_jpeg_length(fh: BinaryIO, rows: int, cols: int) -> None:
    """Refuse a Huffman-coded JPEG too short to hold its declared size.

    libjpeg fills what a cut-short scan lacks with grey and Pillow raises
    nothing, so a few hundred bytes whose header claims 16000 x 16000 pixels
    would decode to a grey 256-megapixel image (a minute and gigabytes for
    nothing). Each 8 x 8 block of a full-resolution component (every JPEG has
    one, whatever the subsampling) needs at least one coded bit (its DC
    difference), so a file below ``blocks / 8`` bytes is truncated or forged.
    Arithmetic-coded JPEGs have no such bound and are not checked.
    """
    fh.seek(0, 2)
    size = fh.tell()
    marker, scan = _jpeg_frame_and_scan(fh, size)
    fh.seek(0)
    if marker not in _HUFFMAN_SOF:
        return
    least = -(-rows // 8) * -(-cols // 8) // 8
    if size - scan < least:  # the coded data: from the first scan on (metadata before it does not count)
        raise TileError(
            f"JPEG with {size - scan:,} bytes of image data cannot hold its declared {rows} x {cols} pixels "
            f"(at least {least:,} bytes): truncated or forged"
        )


def _jpeg_frame_and_scan(fh: BinaryIO, size: int) -> tuple[int, int]:
    """The start-of-frame marker (0xC0 ... 0xCF) of a JPEG file and the offset of its first scan (SOS),
    found by seeking from segment to segment.

    Raises
    ------
    TileError
        When the segments end before a frame header and a scan.
    """
    pos, frame = 2, None  # after SOI
    while pos + 4 <= size:
        fh.seek(pos)
        head = fh.read(4)
        if head[0] != 0xFF:
            break
        marker = head[1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            pos += 2
        elif marker == 0xDA:  # start of scan: the coded data follow
            if frame is None:
                break
            return frame, pos
        elif marker == 0xD9:
            break
        else:
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
                frame = marker
            pos += 2 + int.from_bytes(head[2:4], "big")
    raise TileError("JPEG has no frame header and scan: truncated or corrupt")


def _pil_open(fh: BinaryIO, fmt: str):
    """Open lazily (header only), with only the sniffed format's plugin.

    Pillow's own decompression-bomb check (``Image.MAX_IMAGE_PIXELS``, read
    during ``open``) is switched off for the call, under a lock, and restored
    at once: the caller checks the header against our limit before any pixel
    is decoded, so one limit with one message decides.
    """
    from PIL import Image

    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fh, formats=[fmt])
        finally:
            Image.MAX_IMAGE_PIXELS = saved
