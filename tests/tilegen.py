"""Synthetic EM-like tiles and their encodings, for the scoring tests.

``blobs(shape, seed)`` gives a uint8 image of dark Gaussian blobs on a bright
background (features the detector counts); ``encode(image, fmt)`` writes it
as a PNG/TIFF/BMP/JPEG file in memory; ``tiff_header_only(rows, cols)``
builds a valid TIFF header that claims a size with almost no pixel data
(a decompression-bomb stand-in).
"""

from __future__ import annotations

import io
import struct

import numpy as np

__all__ = ["blobs", "encode", "tiff_header_only", "png_header_only"]


def blobs(shape: tuple[int, int] = (128, 128), seed: int = 0, n: int | None = None, sigma: float = 2.0) -> np.ndarray:
    """(rows, cols) uint8 image with ``n`` dark Gaussian blobs of ``sigma`` pixels, plus mild noise."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    n = n if n is not None else rows * cols // 400
    y, x = np.mgrid[:rows, :cols]
    image = np.full(shape, 200.0)
    for cy, cx in zip(rng.uniform(0, rows, n), rng.uniform(0, cols, n)):
        image -= 120 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    image += rng.normal(0, 2, shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str, **options) -> bytes:
    """Encode ``image`` as ``fmt`` ("PNG", "BMP", "JPEG" via Pillow; "TIFF" via tifffile)."""
    buf = io.BytesIO()
    if fmt == "TIFF":
        import tifffile

        options.setdefault("photometric", "rgb" if image.ndim == 3 and image.shape[-1] in (3, 4) else "minisblack")
        tifffile.imwrite(buf, image, **options)
    else:
        from PIL import Image

        Image.fromarray(image).save(buf, format=fmt, **options)
    return buf.getvalue()


def tiff_header_only(rows: int, cols: int) -> bytes:
    """A little-endian TIFF whose IFD claims ``rows x cols`` 8-bit grey pixels in one 16-byte strip."""
    tags = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, cols),
        (257, 4, 1, rows),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0),  # strip offset, patched below
        (277, 3, 1, 1),
        (278, 4, 1, rows),
        (279, 4, 1, 16),
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(tags) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset))
    out += struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        value = data_offset if tag == 273 else value
        field = struct.pack("<HI", value, 0)[:4] if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + field
    out += struct.pack("<I", 0) + bytes(16)
    return bytes(out)


def png_header_only(rows: int, cols: int) -> bytes:
    """A PNG whose IHDR claims ``rows x cols`` 8-bit grey pixels, with a tiny IDAT."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
