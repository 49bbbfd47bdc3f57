"""One tile's record: what the worker measured, and what the client made of it.

The worker fills the measurements (:meth:`TileRecord.from_detection`, or
:meth:`TileRecord.failed`); the client adds where the tile went and when
(``transport``, ``roundtrip_ms``, ``scored_at``, ``latency_ms``, and the file
version scored: ``file_size``, ``file_mtime_ns``) and the verdict
(``verdict``, ``kind``, ``reason``, ``focus_map``, ``defocus``, ``defocus_units``), each a new
record (:func:`dataclasses.replace`), never an update in place.

On the wire (a ``score_tiles`` result) and in the results log
(``mhd-results.jsonl``) a record is a JSON object: :meth:`TileRecord.to_json`
and :meth:`TileRecord.from_json`. Fields a reader does not know are kept
(``extra``) and written back; fields an older writer did not know read as
None, except ``blur``, whose absence is remembered (``has_blur``): records
written before the blur measure existed are judged by the count.

Importable without the client, CuPy, files or the environment: the worker and
the client both use it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

__all__ = ["ALWAYS", "RESULT_KEYS", "TileRecord", "finite"]


def finite(value: Any) -> float | None:
    """``float(value)``, or None for None, NaN and infinities (unmeasured: JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _cells(values: Any) -> list[list[float | None]]:
    """A (gy, gx) array as lists of rows, rounded to 0.01, NaN as None (JSON-safe)."""
    return [[None if v is None else round(v, 2) for v in map(finite, row)] for row in values]


@dataclass(frozen=True, slots=True)
class TileRecord:
    """The record of one tile (frozen: derive new ones with :func:`dataclasses.replace`).

    Attributes
    ----------
    tile : str
        Tile id: its path relative to the section (results log), the payload
        name or path (worker), or the file path (``client score``).
    verdict : str or None
        ``"ok"``, ``"oof"``, ``"empty"`` or ``"error"`` once judged.
    reason : str or None
        Why, in words (the error message for ``"error"``).
    features : int or None
        Feature count.
    density : float or None
        Features per megapixel.
    error : str or None
        Why the tile has no measurement; starts with the tile id.
    kind : str or None
        Of an ``oof`` verdict: ``"defocus"``, ``"astigmatism"`` or ``"partial"``.
    blur, blur_err : float or None
        Blur width and its uncertainty (pixels); None where not measurable.
    blur_major, blur_minor, blur_angle : float or None
        The blur along its two principal axes (pixels) and the direction of
        the larger (degrees); None where not measurable (and the angle where
        the blur is round).
    scan_smear : float or None
        The scan's detector smear along x (pixels), already removed from the blur.
    grid : list of list of int or None
        (gy, gx) feature counts per cell.
    blur_cells, blur_cells_err : list of list of float or None
        (gy, gx) blur of each cell of ``grid`` and its statistical
        uncertainty (pixels, 0.01 px; None in a cell where not measurable):
        where in the tile the focus is lost.
    shape : list of int or None
        ``[rows, cols]`` (pixels).
    noise : float or None
        Noise standard deviation (normalised 0..1 units).
    astigmatism : float or None
        0 isotropic .. 1 strongly anisotropic; None where not measurable.
    astigmatism_angle : float or None
        Direction of strongest blur (degrees).
    contrast : float or None
        Coarse contrast-to-noise of the whole tile (dimensionless; ~1 for
        pure noise): is there tissue?
    contrast_cells : list of list of float or None
        The same for each (gy, gx) cell of ``grid``.
    backend : str or None
        Array backend that scored it (``"numpy"``, ``"cupy:N"``).
    device : str or None
        The worker's ``CUDA_VISIBLE_DEVICES``.
    ms : float or None
        Read and detect on the worker (milliseconds).
    detect_ms : float or None
        The detector alone (milliseconds).
    transport : str or None
        How the tile reached the worker (``inline``, ``shared``, ``disk``, ``globus``).
    roundtrip_ms : float or None
        Task submission to result (milliseconds).
    scored_at : str or None
        When it was recorded (ISO 8601, UTC).
    latency_ms : float or None
        Tile landed to verdict (milliseconds; ``watch`` only).
    file_size, file_mtime_ns : int or None
        The version of the tile file that was scored: its size (bytes) and
        modification time (ns since the epoch) when the client found it.
        ``submit`` and ``watch`` score a recorded tile again when its file
        differs (re-imaged under the same name); None in records written
        before these existed, which are then kept as they are.
    focus_map : list of list of float or None
        (gy, gx) cell density / baseline density.
    defocus : float or None
        Estimated |defocus| (calibration units) under a calibrated rule.
    defocus_units : str or None
        The units of ``defocus``: the calibration's (``"um"``), so that a
        report made later, under another calibration or none, still says them.
    has_blur : bool
        False for a record read without a ``blur`` field (written before the
        blur measure existed): the verdict then uses the count. Not written.
    cells_blur : float or None
        Median of ``blur_cells`` kept by :meth:`brief`, which drops the
        cells: what the verdict's partial rule needs of an earlier tile
        (:meth:`median_cell_blur`). Not written.
    extra : dict
        Fields this version does not know, kept as read.
    """

    tile: str
    verdict: str | None = None
    reason: str | None = None
    features: int | None = None
    density: float | None = None
    error: str | None = None
    kind: str | None = None
    blur: float | None = None
    blur_err: float | None = None
    blur_major: float | None = None
    blur_minor: float | None = None
    blur_angle: float | None = None
    scan_smear: float | None = None
    grid: list[list[Any]] | None = None
    blur_cells: list[list[Any]] | None = None
    blur_cells_err: list[list[Any]] | None = None
    shape: list[int] | None = None
    noise: float | None = None
    astigmatism: float | None = None
    astigmatism_angle: float | None = None
    contrast: float | None = None
    contrast_cells: list[list[Any]] | None = None
    backend: str | None = None
    device: str | None = None
    ms: float | None = None
    detect_ms: float | None = None
    transport: str | None = None
    roundtrip_ms: float | None = None
    scored_at: str | None = None
    latency_ms: float | None = None
    file_size: int | None = None
    file_mtime_ns: int | None = None
    focus_map: list[list[Any]] | None = None
    defocus: float | None = None
    defocus_units: str | None = None
    has_blur: bool = field(default=True, compare=False)
    cells_blur: float | None = field(default=None, compare=False)
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------ building

    @classmethod
    def failed(cls, tile: str, message: str, **values: Any) -> "TileRecord":
        """The record of a tile that has no measurement: ``error`` is ``"<tile>: <message>"``."""
        return cls(tile=tile, error=f"{tile}: {message}", **values)

    @classmethod
    def from_detection(cls, tile: str, det: Any, **values: Any) -> "TileRecord":
        """The record of a :class:`mhd.functions.Detection` (JSON-safe: NaN becomes None).

        ``values`` adds other fields (``ms``, ``device``, ``contrast``, ...).
        """
        return cls(
            tile=tile,
            features=int(det.count),
            density=float(det.density),
            blur=finite(det.blur),
            blur_err=finite(det.blur_err),
            blur_major=finite(det.blur_major),
            blur_minor=finite(det.blur_minor),
            blur_angle=finite(det.blur_angle),
            scan_smear=finite(det.scan_smear),
            grid=det.grid.tolist(),
            blur_cells=_cells(det.blur_cells),
            blur_cells_err=_cells(det.blur_cells_err),
            shape=[int(s) for s in det.shape],
            noise=float(det.noise),
            astigmatism=finite(det.astigmatism),
            astigmatism_angle=finite(det.astigmatism_angle),
            backend=det.backend,
            detect_ms=float(det.timings.get("total", 0.0)),
            **values,
        )

    # ---------------------------------------------------------------- JSON

    def to_json(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """A JSON-safe dict of ``keys``, each present; by default (a results-log line) the fields
        that have a value, :data:`ALWAYS` and ``blur`` (None included: "not measurable"; absent
        only when ``has_blur`` is False), then ``extra``."""
        if keys is not None:
            return {k: getattr(self, k) for k in keys}
        out = {}
        for f in _FIELDS:
            value = getattr(self, f.name)
            if value is not None or f.name in ALWAYS or (f.name == "blur" and self.has_blur):
                out[f.name] = value
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TileRecord":
        """A record from a JSON object (a ``score_tiles`` result or a results-log line).

        Raises
        ------
        ValueError
            If ``data`` is not a dict with a string ``tile``.
        """
        if not isinstance(data, dict) or not isinstance(data.get("tile"), str):
            raise ValueError("a tile record needs a 'tile' (str)")
        known = {k: v for k, v in data.items() if k in _NAMES}
        extra = {k: v for k, v in data.items() if k not in _NAMES}
        return cls(**known, has_blur="blur" in data, extra=extra)

    def brief(self) -> "TileRecord":
        """This record without its per-cell arrays and unknown fields (what a run keeps in memory)."""
        return dataclasses.replace(
            self,
            grid=None,
            blur_cells=None,
            blur_cells_err=None,
            contrast_cells=None,
            focus_map=None,
            extra={},
            cells_blur=self.median_cell_blur(),
        )

    def median_cell_blur(self) -> float | None:
        """Median of the measurable ``blur_cells`` (pixels), or of the cells :meth:`brief` dropped; None without any."""
        if not isinstance(self.blur_cells, list):
            return self.cells_blur
        values = sorted(
            v for row in self.blur_cells if isinstance(row, list) for v in row if isinstance(v, (int, float)) and math.isfinite(v)
        )
        n = len(values)
        return (values[(n - 1) // 2] + values[n // 2]) / 2 if n else None

    def changed(self, size: int | None, mtime_ns: int | None) -> bool:
        """Whether a file of ``size`` bytes modified at ``mtime_ns`` is not the version this record scored.

        A field the record lacks (written before it existed) or a value not
        known (None) is no evidence of change: such records are kept.
        """
        return (self.file_size is not None and size is not None and size != self.file_size) or (
            self.file_mtime_ns is not None and mtime_ns is not None and mtime_ns != self.file_mtime_ns
        )


#: Fields written to JSON, in order (``has_blur``, ``cells_blur`` and ``extra`` are not fields of the JSON object).
_FIELDS = tuple(f for f in dataclasses.fields(TileRecord) if f.name not in ("has_blur", "cells_blur", "extra"))
_NAMES = frozenset(f.name for f in _FIELDS)

#: Fields every results-log line has, first (None included).
ALWAYS = ("tile", "verdict", "reason", "features", "density", "error", "kind")

#: Fields of a ``score_tiles`` result, in order: what the worker measures.
RESULT_KEYS = (
    "tile",
    "features",
    "density",
    "blur",
    "blur_err",
    "blur_major",
    "blur_minor",
    "blur_angle",
    "scan_smear",
    "grid",
    "blur_cells",
    "blur_cells_err",
    "shape",
    "noise",
    "astigmatism",
    "astigmatism_angle",
    "contrast",
    "contrast_cells",
    "backend",
    "device",
    "ms",
    "detect_ms",
    "error",
)
