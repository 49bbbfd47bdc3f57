"""Score a batch of tiles on a worker: open safely, decode, detect, summarise.

This is the body of the registered Globus Compute function
:func:`mhd.functions.worker.remote.score_tiles`. One bad tile yields an entry with
``error`` set and never fails the batch; invalid ``params`` or a batch that is
too large fail the whole task with a ``ValueError`` (a caller's mistake that
every tile would share).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import time
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np

from mhd.contracts.record import RESULT_KEYS, TileRecord
from mhd.params import validate

from .._detect import detect
from ..tissue import contrast_to_noise
from .settings import Limits
from .tileio import TileError, read_tile

__all__ = ["score_batch", "score_tile", "measure", "check_params", "open_in_root", "inline_bytes"]

#: Longest tile name echoed back (characters).
MAX_NAME = 1024
#: Longest tile path accepted (characters; Linux's PATH_MAX is 4096 bytes).
MAX_PATH_CHARS = 4096
_BACKENDS = ("auto", "numpy", "cupy")


# ------------------------------------------------------------------ params


def check_params(params: dict | None) -> dict[str, Any]:
    """Validate caller-supplied detector parameters.

    Parameters
    ----------
    params : dict or None
        Any of :data:`mhd.params.PARAMS` (checked against its limits, which
        bound a task's memory and time) plus ``backend`` (``"auto"``,
        ``"numpy"`` or ``"cupy"``).

    Returns
    -------
    dict
        Checked values (``backend`` included, default ``"auto"``).

    Raises
    ------
    ValueError
        Naming the first unknown or out-of-range parameter.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict or None, got {type(params).__name__}")
    backend = params.get("backend", "auto")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
    return {**validate({k: v for k, v in params.items() if k != "backend"}), "backend": backend}


# ------------------------------------------------------------- tile input


def open_in_root(rel: str, root: Path | None) -> BinaryIO:
    """Open a regular file by a path relative to ``root``, never outside it.

    Refused without opening: absolute paths, any ``..`` component, and paths
    whose real location (symbolic links resolved) is outside ``root``. The
    file is opened without following a final symbolic link and without
    blocking (FIFOs), must be a regular file, and its real location is checked
    again through ``/proc/self/fd`` where that exists (a link swapped in after
    the check).

    Raises
    ------
    TileError
        With a message that names the relative path only (never the root).
    """
    if root is None:
        raise TileError("path tiles are refused: MHD_DATA_ROOT is not set on this endpoint (send the tile inline)")
    if not isinstance(rel, str) or not rel.strip():
        raise TileError("empty path")
    if len(rel) > MAX_PATH_CHARS:  # checked first: resolving a very long path takes time quadratic in its length
        raise TileError(f"path longer than {MAX_PATH_CHARS} characters: refused")
    if "\x00" in rel:
        raise TileError("path contains a NUL byte")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or os.path.isabs(rel):
        raise TileError("absolute paths are refused: give a path relative to the data root")
    if ".." in pure.parts:
        raise TileError("'..' in a path is refused: give a path inside the data root")
    real = os.path.realpath(os.path.join(root, rel))
    if not _inside(real, root):
        raise TileError("path resolves outside the data root (symbolic link?): refused")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise TileError("no such file under the data root") from None
    except OSError as exc:
        raise TileError(f"cannot open: {exc.strerror}") from None
    try:
        _check_opened(fd, root)
    except BaseException:
        os.close(fd)
        raise
    raw = io.FileIO(fd, "rb")
    raw.name = rel  # decoders show the name; never the root
    return io.BufferedReader(raw)


def _inside(path: str, root: Path) -> bool:
    return os.path.commonpath([path, str(root)]) == str(root)


def _check_opened(fd: int, root: Path) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise TileError("not a regular file: refused")
    if st.st_size == 0:
        raise TileError("empty file (0 bytes)")
    proc = f"/proc/self/fd/{fd}"
    if os.path.exists(proc) and not _inside(os.readlink(proc), root):
        raise TileError("path resolves outside the data root (symbolic link?): refused")


def inline_bytes(tile: dict, max_bytes: int) -> bytes:
    """The encoded image of an inline tile ``{"name": str, "data": bytes | base64 str}``.

    Raises
    ------
    TileError
        When ``data`` is missing, not bytes or base64 text, or above ``max_bytes``.
    """
    data = tile.get("data")
    if isinstance(data, str):
        if len(data) > 4 * (max_bytes // 3 + 1):
            raise TileError(f"inline tile is above the limit of {max_bytes:,} bytes (MHD_MAX_INLINE_BYTES)")
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise TileError("inline 'data' is text but not valid base64") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
    else:
        raise TileError(f"inline tile needs 'data' as bytes or base64 text, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise TileError(f"inline tile is {len(data):,} bytes, above the limit of {max_bytes:,} (MHD_MAX_INLINE_BYTES)")
    return data


def tile_name(tile: Any, index: int) -> str:
    """The name a result reports for ``tile`` (the path, or the inline name)."""
    if isinstance(tile, str):
        name = tile
    elif isinstance(tile, dict) and isinstance(tile.get("name"), str):
        name = tile["name"]
    else:
        name = f"<tile {index}>"
    return name[:MAX_NAME]


def _open_tile(tile: Any, limits: Limits) -> BinaryIO:
    if isinstance(tile, str):
        return open_in_root(tile, limits.data_root)
    if isinstance(tile, dict):
        return io.BytesIO(inline_bytes(tile, limits.max_inline_bytes))
    raise TileError(f"a tile must be a path (str) or {{'name': str, 'data': bytes}}, got {type(tile).__name__}")


def load_tile(tile: Any, limits: Limits) -> Any:
    """Decode ``tile`` (path or inline) into a 2-D array within ``limits``."""
    with _open_tile(tile, limits) as fh:
        return read_tile(fh, limits.max_pixels, limits.max_decoded_bytes)


# ----------------------------------------------------------------- scoring


def measure(tile: str, image: Any, params: dict[str, Any], **values: Any) -> TileRecord:
    """Detect features in ``image`` and measure its tissue: the record of a scored tile.

    Parameters
    ----------
    tile : str
        Its name in the record.
    image : (H, W) array_like
        The decoded tile (grey levels).
    params : dict
        Detector parameters, ``backend`` included (``"auto"`` when absent).
    **values
        Further fields of the record (``device``, ...).

    Returns
    -------
    TileRecord
        The detector's measurements (:meth:`TileRecord.from_detection`) and
        ``contrast`` / ``contrast_cells``: the coarse contrast-to-noise of the
        tile and of each cell of the detector's ``grid`` (dimensionless,
        rounded to 0.01; :func:`mhd.functions.tissue.contrast_to_noise`),
        what the verdict needs to tell an empty tile from a defocused one;
        None for a tile smaller than two pixels per cell. Costs about a tenth
        of the detector's time on the CPU (0.1 s for a 4096^2 tile on a
        loaded 2-core machine).

    Raises
    ------
    ValueError
        For invalid detector parameters or image (from :func:`mhd.functions.detect`).
    """
    opts = dict(params)
    det = detect(image, backend=opts.pop("backend", "auto"), **opts)
    try:
        tissue = contrast_to_noise(image, det.grid.shape)
    except ValueError:  # fewer than two pixels per cell: no measure
        return TileRecord.from_detection(tile, det, **values)
    cells = np.round(tissue.cells, 2).tolist()
    return TileRecord.from_detection(tile, det, contrast=round(tissue.cnr, 2), contrast_cells=cells, **values)


def score_tile(tile: Any, index: int, params: dict[str, Any], limits: Limits, device: str | None) -> dict[str, Any]:
    """Score one tile; any failure becomes the entry's ``error``.

    Returns
    -------
    dict
        The :data:`~mhd.contracts.record.RESULT_KEYS` of its
        :class:`~mhd.contracts.record.TileRecord`, JSON-safe:
        ``tile`` (str), ``features`` (int), ``density`` (features per
        megapixel), ``blur`` and ``blur_err`` (pixels), ``grid`` (list of
        lists of int), ``shape`` ([rows, cols]), ``noise`` (normalised units),
        ``astigmatism`` (0..1) and ``astigmatism_angle`` (degrees; None where
        not measurable), ``contrast`` and ``contrast_cells`` (see
        :func:`measure`), ``backend`` (``"numpy"`` or ``"cupy:N"``),
        ``device`` (the worker's ``CUDA_VISIBLE_DEVICES`` or None), ``ms``
        (read, detect and tissue, milliseconds), ``detect_ms`` (the
        detector's own total) and ``error`` (None or a message naming the tile).
    """
    t0 = time.perf_counter()
    name = tile_name(tile, index)
    try:
        rec = measure(name, load_tile(tile, limits), params, device=device)
    except Exception as exc:  # one bad tile never fails the batch
        reason = str(exc) if isinstance(exc, (TileError, ValueError)) else f"{type(exc).__name__}: {exc}"
        rec = TileRecord.failed(name, reason, device=device)
    return replace(rec, ms=_ms(t0)).to_json(RESULT_KEYS)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1e3, 3)


def score_batch(tiles: Any, params: dict | None = None, limits: Limits | None = None) -> list[dict[str, Any]]:
    """Score a list of tiles with one set of detector parameters.

    Parameters
    ----------
    tiles : list of (str or dict)
        Paths relative to ``MHD_DATA_ROOT``, or inline ``{"name": str,
        "data": bytes or base64 str}`` holding an encoded image file.
    params : dict, optional
        Detector parameters (see :func:`check_params`).
    limits : Limits, optional
        Default: :meth:`Limits.from_env`.

    Returns
    -------
    list of dict
        One entry per tile, in order (see :func:`score_tile`).

    Raises
    ------
    ValueError
        For a ``tiles`` that is not a list, more than ``MHD_MAX_TILES`` tiles,
        or invalid ``params``.
    """
    limits = Limits.from_env() if limits is None else limits
    if not isinstance(tiles, (list, tuple)):
        raise ValueError(f"tiles must be a list of paths or inline tiles, got {type(tiles).__name__}")
    if len(tiles) > limits.max_tiles:
        raise ValueError(f"{len(tiles)} tiles in one task, above the limit of {limits.max_tiles} (MHD_MAX_TILES): split the batch")
    checked = check_params(params)
    device = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [score_tile(tile, i, checked, limits, device) for i, tile in enumerate(tiles)]
