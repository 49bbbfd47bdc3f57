"""The image formats a tile may be in: one registry for the worker and the client.

Each :class:`ImageFormat` says which file names the client takes as tiles
(``suffixes``), how the worker recognises the format (``magic``: never by
the name), which decoder reads it (``decoder``: tifffile or Pillow, in
:mod:`mhd.functions.worker.tileio`), and how ``client watch`` tells that a
file is completely written without decoding a pixel (``whole``).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["FORMATS", "IMAGE_SUFFIXES", "ImageFormat", "is_complete", "names", "sniff"]


@dataclass(frozen=True)
class ImageFormat:
    """One image format.

    Attributes
    ----------
    name : str
        ``"TIFF"``, ``"PNG"``, ``"JPEG"`` or ``"BMP"``.
    suffixes : tuple of str
        Lower-case file suffixes read as tiles of this format.
    magic : tuple of bytes
        Headers that identify the format (the file starts with one of them).
    decoder : str
        ``"tifffile"`` or ``"pillow"``: which library the worker decodes it with.
    whole : callable
        ``whole(fh, size) -> bool``: whether the open file of ``size`` bytes is
        completely written, from its structure only.
    """

    name: str
    suffixes: tuple[str, ...]
    magic: tuple[bytes, ...]
    decoder: str
    whole: Callable[[BinaryIO, int], bool]


#: The last chunk of every PNG file: length 0, type IEND, its CRC.
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: A JPEG file's end-of-image marker.
JPEG_END = b"\xff\xd9"


def _tail(fh: BinaryIO, size: int, n: int) -> bytes:
    fh.seek(max(0, size - n))
    return fh.read(n)


def _png_whole(fh: BinaryIO, size: int) -> bool:
    """It ends with the IEND chunk."""
    return _tail(fh, size, len(PNG_END)) == PNG_END


def _jpeg_whole(fh: BinaryIO, size: int) -> bool:
    """It ends with the end-of-image marker (zero padding after it allowed)."""
    return _tail(fh, size, 4096).rstrip(b"\x00").endswith(JPEG_END)


def _bmp_whole(fh: BinaryIO, size: int) -> bool:
    """The file is at least the size its header states."""
    fh.seek(2)
    head = fh.read(4)
    if len(head) < 4:  # the header itself is not written yet
        return False
    (stated,) = struct.unpack("<I", head)
    return bool(0 < stated <= size)


def _tiff_whole(fh: BinaryIO, size: int) -> bool:
    """Every strip or tile of every page (offsets and byte counts from its directories) lies within the file."""
    import tifffile

    fh.seek(0)
    try:
        with tifffile.TiffFile(fh) as tif:
            pages = list(tif.pages)
            return bool(pages) and all(o + n <= size for page in pages for o, n in zip(page.dataoffsets, page.databytecounts))
    except Exception:  # a cut-off directory fails in many ways (struct, index, tifffile errors): not whole yet
        return False


#: Every format a tile may be in (BigTIFF included in TIFF).
FORMATS = (
    ImageFormat("PNG", (".png",), (b"\x89PNG\r\n\x1a\n",), "pillow", _png_whole),
    ImageFormat("TIFF", (".tif", ".tiff"), (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "tifffile", _tiff_whole),
    ImageFormat("BMP", (".bmp",), (b"BM",), "pillow", _bmp_whole),
    ImageFormat("JPEG", (".jpg", ".jpeg"), (b"\xff\xd8\xff",), "pillow", _jpeg_whole),
)

#: File suffixes (lower case) the client takes as tiles.
IMAGE_SUFFIXES = frozenset(s for f in FORMATS for s in f.suffixes)


def names() -> str:
    """The formats' names in words: ``"PNG, TIFF, BMP or JPEG"``."""
    *first, last = (f.name for f in FORMATS)
    return f"{', '.join(first)} or {last}"


def sniff(head: bytes) -> ImageFormat | None:
    """The format whose magic ``head`` (a file's first 8 bytes or more) starts with, or None."""
    return next((f for f in FORMATS if head.startswith(f.magic)), None)


def is_complete(path: str | os.PathLike[str]) -> bool:
    """Whether an image file is whole, from its structure only (no pixel is decoded).

    An unrecognised, unreadable or empty file is not complete.
    """
    try:
        with open(Path(path), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fmt = sniff(fh.read(16))
            return fmt is not None and bool(fmt.whole(fh, size))
    except OSError:
        return False
