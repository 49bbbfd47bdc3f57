"""Thumbnails of the flagged tiles, each beside an in-focus neighbour, for the report's page.

The image read is the tile's image area (:func:`mhd.client.score.load_image`, the
worker's reader and limits), so the detector's grid cells line up with it: the
cells the partial rule found blurred are outlined in red. Only files inside the
section are read (a link that leads out of it gets no thumbnail).
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .report import SectionView, Shown

__all__ = ["MAX_THUMBS", "Pair", "THUMB_PX", "THUMB_QUALITY", "thumbnails"]

log = logging.getLogger(__name__)

#: Most flagged tiles given thumbnails (the first in acquisition order).
MAX_THUMBS = 48
#: Longest side of a thumbnail (px).
THUMB_PX = 320
#: JPEG quality of the thumbnails (1-95).
THUMB_QUALITY = 85


@dataclass(frozen=True)
class Pair:
    """A flagged tile's thumbnail and its in-focus neighbour's (JPEG bytes; None where the file cannot be shown).

    Attributes
    ----------
    tile : str
    image : bytes or None
        The tile, its blurred cells outlined.
    neighbour : str or None
        The nearest ``ok`` tile (in the montage where positions are known, the same row or column before a
        diagonal; else in acquisition order; the sharper of equally near ones), None when the section has none.
    neighbour_image : bytes or None
    """

    tile: str
    image: bytes | None
    neighbour: str | None
    neighbour_image: bytes | None


def thumbnails(section: Path, view: "SectionView") -> dict[str, Pair]:
    """Tile id -> :class:`Pair`, for the first :data:`MAX_THUMBS` flagged tiles that are not errors."""
    root = section.resolve()
    out = {}
    for s in [s for s in view.flagged if s.verdict != "error"][:MAX_THUMBS]:
        near = neighbour(s, view)
        cells = s.explanation.flagged_cells if s.kind == "partial" else ()  # a defocused tile is blurred all over
        grid = None if s.explanation.cells is None else s.explanation.cells.shape
        out[s.rec.tile] = Pair(
            s.rec.tile,
            _thumb_of(root, s.rec.tile, cells, grid),
            near.rec.tile if near else None,
            _thumb_of(root, near.rec.tile, (), None) if near else None,
        )
    return out


def neighbour(flagged: "Shown", view: "SectionView") -> "Shown | None":
    """The in-focus tile to compare ``flagged`` with (see :attr:`Pair.neighbour`)."""
    ok = [s for s in view.tiles if s.verdict == "ok" and s.explanation.value is not None]

    def distance(s: "Shown") -> tuple[float, float, float]:
        if flagged.position and s.position:
            dr, dc = abs(flagged.position[0] - s.position[0]), abs(flagged.position[1] - s.position[1])
            near, along = max(dr, dc), dr + dc  # a ring of the montage, and in it the same row or column first
        else:
            near = along = abs(flagged.index - s.index)
        value = s.explanation.value or 0.0
        return near, along, value if s.explanation.worse_above else -value

    return min(ok, key=distance, default=None)


def _thumb_of(root: Path, tile: str, cells: tuple[tuple[int, int], ...], grid: tuple[int, ...] | None) -> bytes | None:
    path = (root / tile).resolve()
    if not path.is_relative_to(root):
        return None
    try:
        st = path.stat()
        return _thumb(str(path), st.st_mtime_ns, st.st_size, cells, grid)
    except Exception as exc:  # a file gone or replaced by something unreadable: the page shows the tile without it
        log.info("no thumbnail of %s: %s", tile, exc)
        return None


@functools.lru_cache(maxsize=4 * MAX_THUMBS)
def _thumb(path: str, mtime_ns: int, size: int, cells: tuple[tuple[int, int], ...], grid: tuple[int, ...] | None) -> bytes:
    """JPEG of the image area of ``path``, at most :data:`THUMB_PX` on a side, grey levels stretched between the
    0.5th and 99.5th percentiles, ``cells`` of a ``grid`` (rows, cols) outlined; cached by file version."""
    from PIL import Image, ImageDraw

    from .score import load_image

    image = np.asarray(load_image(path), dtype=np.float32)
    step = max(1, max(image.shape) // (2 * THUMB_PX))
    lo, hi = np.percentile(image[::step, ::step], [0.5, 99.5])
    grey = np.clip((image - lo) * (255.0 / max(float(hi - lo), 1e-12)), 0, 255).astype(np.uint8)
    thumb = Image.fromarray(grey).convert("RGB")
    thumb.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    if cells and grid:
        draw = ImageDraw.Draw(thumb)
        ch, cw = thumb.height / grid[0], thumb.width / grid[1]
        for r, c in cells:
            draw.rectangle((c * cw, r * ch, (c + 1) * cw - 1, (r + 1) * ch - 1), outline=(230, 20, 20), width=3)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=THUMB_QUALITY)  # a fifth of a PNG's size: the live page sends them each update
    return buf.getvalue()
