"""Score local files in this process (``client score``), and read tiles safely.

No endpoint, no serialization: the detector (:func:`mhd.functions.detect`)
on tiles decoded by :mod:`mhd.functions.tileio` (header-checked pixel limits,
the same reader the remote function uses).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mhd.functions import detect
from mhd.functions.settings import Limits
from mhd.functions.tileio import read_tile
from mhd.params import DEFAULTS

from .tissue import Tissue, contrast_to_noise

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
    mhd.functions.tileio.TileError
        If it is not a decodable single 2-D image within the limit.
    """
    limit = Limits.from_env().max_pixels if max_pixels is None else max_pixels
    with open(path, "rb") as fh:
        return read_tile(fh, limit)


def score_file(path: str | Path, backend: str = "auto", **params: Any) -> dict[str, Any]:
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
    dict
        ``path``, ``features`` (int), ``density`` (features per megapixel),
        ``blur`` and ``blur_err`` (pixels; None where not measurable),
        ``grid`` (list of lists), ``shape`` ([rows, cols]), ``noise``,
        ``astigmatism`` (0..1) and ``astigmatism_angle`` (degrees; both None
        where not measurable), ``backend``, ``ms`` (read + detect, milliseconds) and ``error``
        (``None`` or a message naming the file).
    """
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"path": str(path), "features": None, "density": None, "blur": None, "blur_err": None, "grid": None, "shape": None, "noise": None, "astigmatism": None, "astigmatism_angle": None, "backend": None}
    try:
        det = detect(load_image(path), backend=backend, **params)
    except Exception as exc:  # one bad file fails alone, with its name
        rec.update(ms=round((time.perf_counter() - t0) * 1e3, 3), error=f"{path}: {_message(exc)}")
        return rec
    rec.update(
        features=int(det.count),
        density=round(float(det.density), 3),
        blur=round(float(det.blur), 3) if math.isfinite(det.blur) else None,
        blur_err=round(float(det.blur_err), 3) if math.isfinite(det.blur_err) else None,
        grid=det.grid.tolist(),
        shape=[int(s) for s in det.shape],
        noise=round(float(det.noise), 6),
        astigmatism=round(det.astigmatism, 4) if math.isfinite(det.astigmatism) else None,
        astigmatism_angle=round(det.astigmatism_angle, 1) if math.isfinite(det.astigmatism_angle) else None,
        backend=det.backend,
        ms=round((time.perf_counter() - t0) * 1e3, 3),
        error=None,
    )
    return rec


def _message(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def tissue_probe(section: str | Path, grid: tuple[int, int] = DEFAULTS["grid"]):
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
