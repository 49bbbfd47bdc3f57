"""Score local files in this process (``client score``), and read tiles safely.

No endpoint, no serialization: what a worker does to a tile
(:func:`mhd.functions.worker.scoring.measure`: the detector and the tissue
measure) on tiles decoded by :mod:`mhd.functions.worker.tileio`
(header-checked pixel limits, the same reader the remote function uses).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mhd.contracts.record import TileRecord
from mhd.functions.worker.scoring import measure
from mhd.functions.worker.settings import Limits
from mhd.functions.worker.tileio import read_tile

__all__ = ["load_image", "score_file"]


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
        result (see :func:`mhd.functions.worker.scoring.measure`), ``ms``
        (read, detect and tissue, milliseconds), or ``error`` (a message
        naming the file).
    """
    t0 = time.perf_counter()
    try:
        rec = measure(str(path), load_image(path), {**params, "backend": backend})
    except Exception as exc:  # one bad file fails alone, with its name
        rec = TileRecord.failed(str(path), _message(exc))
    return replace(rec, ms=round((time.perf_counter() - t0) * 1e3, 3))


def _message(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
