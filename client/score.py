"""Score local files in this process (``client score``), and read tiles safely.

No endpoint, no serialization: the detector (:func:`mhd.functions.detect`)
on tiles decoded by :mod:`mhd.functions.worker.tileio` (header-checked pixel limits,
the same reader the remote function uses).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mhd.functions import detect
from mhd.functions.tissue import Tissue, contrast_to_noise
from mhd.functions.worker.record import TileRecord
from mhd.functions.worker.settings import Limits
from mhd.functions.worker.tileio import read_tile

__all__ = ["load_image", "score_file", "tissue_probe"]


def load_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode one tile file into a 2-D grey array.

    Parameters
    ----------
    path : str or Path
    max_pixels : int, optional
        Largest ``rows * cols`` (default: ``MHD_MAX_PIXELS`` or 16384**2).

    Returns
    -------
    (H, W) ndarray

    Raises
    ------
    OSError
        If the file cannot be opened.
    mhd.functions.worker.tileio.TileError
        If it is not a decodable single 2-D image within the limit.
    """
    limit = Limits.from_env().max_pixels if max_pixels is None else max_pixels
    with open(path, "rb") as fh:
        return read_tile(fh, limit)


def score_file(path: str | Path, backend: str = "auto", **params: Any) -> TileRecord:
    """Score one file; any failure is reported in the record, never raised.

    Parameters
    ----------
    path : str or Path
    backend : str
        ``"auto"``, ``"numpy"`` or ``"cupy"``.
    **params
        Detector parameters (``n_bin``, ``min_t``, ``max_t``, ``threshold``, ...).

    Returns
    -------
    TileRecord
        ``tile`` is the path as given; the measurements of a ``score_tiles``
        result (see :func:`mhd.functions.worker.record.TileRecord.from_detection`),
        ``ms`` (read + detect, milliseconds), or ``error`` (a message naming
        the file).
    """
    t0 = time.perf_counter()
    try:
        det = detect(load_image(path), backend=backend, **params)
    except Exception as exc:  # one bad file fails alone, with its name
        return TileRecord.failed(str(path), _message(exc), ms=_ms(t0))
    return TileRecord.from_detection(str(path), det, ms=_ms(t0))


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1e3, 3)


def _message(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def tissue_probe(section: str | Path, grid: tuple[int, int] = (4, 4)):
    """A ``probe(tile_id) -> Tissue or None`` for :class:`mhd.client.verdicts.Judge`.

    Reads the tile from ``section`` on this machine; ``None`` when it cannot
    be read (the verdict then treats it as tissue).
    """
    root = Path(section)

    def probe(tile_id: str) -> Tissue | None:
        try:
            return contrast_to_noise(load_image(root / tile_id), grid)
        except (OSError, ValueError):
            return None

    return probe
