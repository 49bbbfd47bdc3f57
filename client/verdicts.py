"""Verdicts: ``ok``, ``oof`` (out of focus), ``empty`` (no tissue) or ``error``.

Every ``oof`` verdict has a ``kind``, which says what to adjust before the
tile is imaged again (``None`` for the other verdicts):

``astigmatism``
    The probe is elongated: turn the stigmators. The detector's
    ``astigmatism`` strength (0..1, :data:`mhd.functions.ASTIGMATISM_THRESHOLD`)
    is at or above ``astigmatism_max``, whatever the count (an astigmatic
    probe lowers the count too), and the blur along the worst direction,
    ``blur * sqrt(1 + strength)``, exceeds the blur limit of the defocus
    rule (relative or calibrated): an anisotropy that leaves the tile as
    sharp as the section's tiles in every direction does not call for
    re-imaging. Real SEM scans of in-focus fields read 0.06-0.29 (a slow
    scan resolves one scan axis a little worse; ``bench/sem_focus.py
    wedges``): without this gate 5 of 24 such tiles were called astigmatic
    (``tests/test_sem_focus.py``); their worst-direction blur is 0.1-0.8 px
    against a limit of 1.1 px. The cost: under the relative rule an
    astigmatism shared by the whole section raises the section's blur too,
    and only tiles blurrier than that are flagged; a blur calibration's
    limit does not move. Records without a blur (older workers, or no
    detail left) keep the strength alone. ``astigmatism_angle`` (degrees,
    counter-clockwise from the column axis as displayed) is the direction
    of strongest blur. Tiles smaller than about 300 px have no astigmatism
    measure (``None``) and are judged by count alone.
``defocus``
    The count is below the threshold (either rule below): refocus.
``partial``
    The tile as a whole is above the threshold but some regions are not:
    the section is tilted or wrinkled, or the focus changed during the scan.

A tile is judged ``empty`` first (low count, no tissue), then
``astigmatism``, ``defocus``, ``partial``, else ``ok``. The reason of an
``oof`` verdict starts with its kind (``"defocus: ..."``).
Judged ``ok`` and ``oof`` records also carry ``focus_map``: the feature
density of each cell of the detector's grid relative to the section's
baseline (the median tile; with a calibration, the in-focus density), a
list of rows of floats rounded to 2 decimals (1.0: as the section; 0.3:
30 % of it).

Two focus measures come with every scored tile. The **blur** ``b`` (pixels,
``mhd.functions.Detection.blur``): the width of the blur, measured on the
signal left after the tile's own noise is removed, so it does not move with
dose, dwell time, gain or bit depth. The **feature density** ``d`` (features
per megapixel): the paper's count, whose logarithm falls linearly with
|defocus| (the paper's figure 2) within one imaging setting, but which also
falls with dose. Densities are floored at 1 /MP before taking the log.

Relative rule on blur (default, ``focus_measure = "blur"``)
    The baseline is the section's median blur ``m`` over the tiles so far.
    A tile is out of focus when the blur it adds to the section's,
    ``sqrt(b**2 - m**2)``, exceeds ``blur_max`` (1 px: a defocused probe's
    disk of radius about 2 px), or when no detail is left above its noise
    (``blur`` not measurable) and it is not empty. Records without a
    ``blur`` field (written before it existed) are judged by the count. It holds in sections whose
    dose changes from tile to tile (measured: ``bench/sem_focus.py``).
    ``focus_map`` still uses the count grid; the partial rule uses the
    cells' blur under every rule (below).
Relative rule on the count (``focus_measure = "count"``)
    The baseline is the section itself: median ``m`` and robust sigma
    ``s = 1.4826 * MAD`` of ``log d`` over the section's tiles so far (this
    tile included; errors and empty tiles excluded). A tile is out of focus
    below ``m - max(oof_k * s, oof_min_drop)``. The first ``warmup`` tiles of a
    section wait until the baseline has that many tiles (or the run ends).
    Verdicts are **final when recorded**: the results log is what the operator
    was told, when. ``client report`` also re-judges every tile against the
    whole section (``section_verdict``) and lists both.
Calibrated rule
    ``client calibrate`` fits a through-focus series: ``blur**2 = a + b
    defocus**2`` (default) or ``log d = a + b |defocus|`` (``--measure
    count``, the paper's law). A tile is out of focus when its estimated
    |defocus| exceeds ``max_defocus``, and the estimate is recorded. Nothing
    waits for a baseline.
Partly defocused tiles
    A tile above the threshold is still ``oof`` when a cell of its grid is
    blurred while that cell has tissue: reason ``partial: cells r,c ...
    blurred``. When more than half of the cells with tissue are blurred the
    tile is out of focus as a whole: kind ``defocus``, reason ``defocus: n
    of m cells blurred`` (under the count's rules a tile blurred all over
    can keep a count inside the section's spread while its cells' blur
    shows it). A cell is blurred when its blur (``blur_cells``) minus its
    uncertainty (``blur_cells_err``) exceeds ``sqrt(c**2 + partial_blur**2)``
    (1.5 px), ``c`` the section's median cell blur (the median over tiles of
    each tile's median cell), or when no detail is left in it. A cell whose
    coarse contrast is under :data:`SMOOTH_CELL` (a fifth) of its tile's
    median cell is not judged: smooth content (the inside of a large
    particle) has no detail to lose, and on real in-focus SEM scans such
    cells read no detail or 3-12 px. A cell's
    blur scatters with its content more than a tile's (sharp cells of the
    ISBI slices read up to 0.7 px above ``c``), hence a larger margin than
    ``blur_max``. On real SEM scans of in-focus fields the feature density
    of a cell follows its content (a cell of a few particles on a flat
    support counts a tenth of its neighbours), and a rule on density called
    5 of 24 such tiles partial (``tests/test_sem_focus.py``); cells' blurs
    read 0.0-1.6 px there, and a cell behind a 4 um defocus 5-7 px.
    Measured on the ISBI slices through ``simulate.sem_scan`` with the
    right quarter behind a disk (``bench/sem_focus.py partial``): for a
    3 or 4 px disk the blur rule finds more partly defocused tiles than the
    density rule at every dose (4 px: 9 / 12 / 15 / 15 of 15 at 2 / 5 / 20 /
    80 e/px, against 6 / 6 / 13 / 14), for a 6 px disk fewer at 2 and 5
    e/px (8 and 14 against 12 and 15: the cell's fit is loose when no fine
    level is left above its noise), and no sharp tile is called. Records without ``blur_cells`` (older workers) use the density:
    a cell ``partial_drop`` (log units) below the tile threshold (reason
    ``partial: cells r,c ... low``).
Empty tiles
    A tile (or cell) below the threshold whose coarse contrast-to-noise
    (:mod:`mhd.functions.tissue`) is under ``empty_cnr`` has no tissue to focus
    on: ``empty``, not ``oof``. The worker measures it with the count
    (``contrast`` and ``contrast_cells`` of the record); the client never
    decodes a tile. A record without it (written by an older worker) counts
    as tissue.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mhd.functions.worker.record import VERDICTS, TileRecord, finite
from mhd.params import DEFAULTS

from .rule import FOCUS_MEASURES, Rule, thresholds

__all__ = [
    "Baseline",
    "Calibration",
    "Judge",
    "Rule",
    "VERDICTS",
    "describe",
    "exit_status",
    "fitted_params",
    "focus_map",
    "rule_from_config",
]

#: Robust sigma of a normal distribution from its median absolute deviation.
MAD_TO_SIGMA = 1.4826

#: Densities are floored at this many features per megapixel before the log.
DENSITY_FLOOR = 1.0
#: Detector parameters that change neither a tile's count nor its blur (how it is split into blocks, the count grid).
LAYOUT_PARAMS = ("block_size", "grid")


def fitted_params(params: dict | None) -> dict:
    """Every detector parameter that shapes the count and the blur, as a run with explicit ``params`` uses them.

    What a calibration records: defaults change between versions (``threshold`` 0.10 -> 0.05), and a law fitted
    under one set of parameters does not hold under another.
    """
    return {k: v for k, v in {**DEFAULTS, **(params or {})}.items() if k not in LAYOUT_PARAMS}


@dataclass(frozen=True)
class Calibration:
    """A through-focus law fitted by ``client calibrate``.

    ``measure == "blur"`` (default of ``client calibrate``):
    ``blur**2 = intercept + slope * defocus**2`` (blur in pixels: the
    in-focus blur and the probe's widening add in quadrature).
    ``measure == "count"`` (the paper's law, and files written before the blur
    existed): ``log(density) = intercept + slope * |defocus|``.

    Attributes
    ----------
    intercept : float
        Blur: in-focus ``blur**2`` (px^2). Count: ``log`` features per megapixel in focus.
    slope : float
        Blur: ``blur**2`` per unit ``defocus**2`` (positive). Count: change of
        ``log density`` per unit |defocus| (negative).
    r : float
        Pearson correlation of the fit (of ``blur**2`` with ``defocus**2``, or of
        ``log density`` with ``|defocus|``).
    n : int
        Images fitted.
    units : str
        Defocus units of the series (e.g. ``"um"``).
    max_defocus : float
        Largest acceptable |defocus| (``units``).
    params : dict
        Detector parameters the series was scored with (:func:`fitted_params`; files written by
        earlier versions hold only those given on the command line).
    source : str
        The series folder.
    """

    intercept: float
    slope: float
    r: float
    n: int
    units: str
    max_defocus: float
    params: dict = field(default_factory=dict)
    source: str = ""
    measure: str = "count"

    @property
    def log_threshold(self) -> float:
        """Count: ``log`` density at ``max_defocus``."""
        return self.intercept + self.slope * self.max_defocus

    @property
    def blur_threshold(self) -> float:
        """Blur: the blur (px) at ``max_defocus``."""
        return math.sqrt(max(self.intercept + self.slope * self.max_defocus**2, 0.0))

    def defocus(self, value: float) -> float:
        """Estimated |defocus| (``units``, >= 0): of a ``log`` density (count), or of a blur in px (blur)."""
        if self.measure == "blur":
            return math.sqrt(max(value * value - self.intercept, 0.0) / self.slope)
        return max(0.0, (value - self.intercept) / self.slope)

    def mismatch(self, params: dict | None) -> list[str]:
        """The recorded parameters that a run with explicit ``params`` (the rest default) scores differently:
        ``"name=fitted (this run: value)"`` each; empty when the law holds for its tiles."""
        run = fitted_params(params)
        return [f"{k}={self.params[k]!r} (this run: {run[k]!r})" for k in run if k in self.params and self.params[k] != run[k]]

    def unrecorded(self) -> list[str]:
        """Parameters this calibration does not record (a file written before calibrations recorded them all)."""
        return [k for k in fitted_params(None) if k not in self.params]

    def save(self, path: str | Path) -> Path:
        """Write as JSON (folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Read a calibration written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file is not a calibration or its slope is not negative.
        """
        try:
            data = json.loads(Path(path).read_text())
            cal = cls(**{**data, "params": data.get("params") or {}})
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a calibration file ({exc})") from None
        if not isinstance(cal.params, dict):
            raise ValueError(f"{path}: params must be an object of detector parameters, got {cal.params!r}")
        if cal.measure not in FOCUS_MEASURES:
            raise ValueError(f"{path}: measure must be one of {', '.join(FOCUS_MEASURES)}, got {cal.measure!r}")
        if cal.measure == "count" and not cal.slope < 0:
            raise ValueError(f"{path}: slope {cal.slope} must be negative (counts fall with defocus)")
        if cal.measure == "blur" and not cal.slope > 0:
            raise ValueError(f"{path}: slope {cal.slope} must be positive (blur grows with defocus)")
        return cal


def rule_from_config(cfg: Any, use_calibration: bool = True) -> Rule:
    """The rule of a :class:`mhd.client.config.Config` (its calibration file if present).

    ``max_defocus`` in the configuration overrides the calibration's own.
    """
    cal = None
    if use_calibration and cfg.calibration_path.exists():
        cal = Calibration.load(cfg.calibration_path)
        if cfg["max_defocus"] is not None:
            cal = Calibration(**{**asdict(cal), "max_defocus": cfg["max_defocus"]})
    return Rule(calibration=cal, **{f.name: cfg[f.name] for f in thresholds()})


@dataclass(frozen=True)
class Baseline:
    """Where the threshold stands.

    Attributes
    ----------
    median : float
        Median ``log`` density of the section (``nan`` when calibrated).
    sigma : float
        Robust sigma of ``log`` density.
    n : int
        Tiles in the baseline.
    threshold : float
        ``log`` density below which a tile is out of focus.
    """

    median: float
    sigma: float
    n: int
    threshold: float


def log_density(density: float) -> float:
    """``log(max(density, DENSITY_FLOOR))``."""
    return math.log(max(float(density), DENSITY_FLOOR))


class Judge:
    """Streaming verdicts for one section.

    Parameters
    ----------
    rule : Rule
    prior : iterable of TileRecord
        Records already judged in this section (a resumed run): their
        densities seed the baseline.
    """

    def __init__(self, rule: Rule, prior: Iterable[TileRecord] = ()) -> None:
        self.rule = rule
        self._pool: dict[str, float] = {}
        self._blur: dict[str, float] = {}
        self._cell_blur: dict[str, float] = {}
        self._pending: list[TileRecord] = []
        for rec in prior:
            if rec.verdict in ("ok", "oof"):
                self._enter(rec)

    def _enter(self, rec: TileRecord) -> None:
        self._pool[rec.tile] = log_density(rec.density)
        blur = finite(rec.blur)
        if blur is not None:
            self._blur[rec.tile] = blur
        cells = rec.median_cell_blur()
        if cells is not None:
            self._cell_blur[rec.tile] = cells

    @property
    def _on_blur(self) -> bool:
        return self.rule.focus_measure == "blur" and self.rule.calibration is None

    def blur_baseline(self) -> float:
        """Median blur (px) of the section so far; NaN when no tile has one."""
        return float(np.median(np.fromiter(self._blur.values(), float))) if self._blur else math.nan

    def cell_blur_threshold(self) -> float:
        """Blur (px) above which a cell of a tile is out of focus: ``sqrt(c**2 + partial_blur**2)``, ``c`` the median
        over the section's tiles of each tile's median cell blur (a cell reads more blur than its whole tile, whose
        sharpest cells weigh most); inf before any tile has cells. A calibrated run, which does not wait for a
        baseline, judges its first tile against that tile's own median cell, which a few blurred cells do not move."""
        if not self._cell_blur:
            return math.inf
        return math.hypot(float(np.median(np.fromiter(self._cell_blur.values(), float))), self.rule.partial_blur)

    def blur_threshold(self) -> float:
        """Blur (px) above which a tile is out of focus: ``sqrt(m**2 + blur_max**2)``."""
        m = self.blur_baseline()
        return math.hypot(m, self.rule.blur_max) if math.isfinite(m) else math.inf

    def add(self, record: TileRecord) -> list[TileRecord]:
        """Take one scored tile; return the records whose verdict is now final.

        Parameters
        ----------
        record : TileRecord
            A scored tile (``features``, ``density``, ``grid``, ``shape``,
            ``astigmatism``, ``astigmatism_angle``, ``error``, ...); not modified.

        Returns
        -------
        list of TileRecord
            New records with ``verdict``, ``kind``, ``reason`` and
            ``focus_map`` (and ``defocus`` when calibrated; ``contrast`` is
            the worker's measurement, read, not added): usually one, of
            ``record``; none while the baseline warms up; all waiting
            records when it becomes ready.
        """
        if record.error:
            return [replace(record, verdict="error", kind=None, reason=str(record.error), focus_map=None)]
        self._enter(record)
        self._pending.append(record)
        if self.rule.calibration is None and len(self._pool) < self.rule.warmup:
            return []
        return self.flush()

    def flush(self) -> list[TileRecord]:
        """Judge every waiting record against the baseline as it stands (new records, in order)."""
        done, self._pending = self._pending, []
        return [self._judge(rec) for rec in done]

    @property
    def pending(self) -> int:
        """Records waiting for the baseline."""
        return len(self._pending)

    def baseline(self) -> Baseline:
        """The current threshold (relative rule: over the pool so far)."""
        cal = self.rule.calibration
        if cal is not None and cal.measure == "count":
            return Baseline(math.nan, math.nan, len(self._pool), cal.log_threshold)
        if not self._pool:
            return Baseline(math.nan, math.nan, 0, -math.inf)
        x = np.fromiter(self._pool.values(), float)
        m = float(np.median(x))
        s = MAD_TO_SIGMA * float(np.median(np.abs(x - m)))
        return Baseline(m, s, x.size, m - max(self.rule.oof_k * s, self.rule.oof_min_drop))

    # ----------------------------------------------------------- judging

    def _judge(self, rec: TileRecord) -> TileRecord:
        """``rec`` judged against the baseline as it stands (a new record)."""
        base = self.baseline()
        x = log_density(rec.density)
        cal = self.rule.calibration
        defocus, units = rec.defocus, rec.defocus_units
        if cal is not None and cal.measure == "count":
            defocus = round(cal.defocus(x), 3)
        if cal is not None and cal.measure == "blur":
            blur = finite(rec.blur)
            defocus = None if blur is None else round(cal.defocus(blur), 3)
        verdict, kind, reason = self._decide(rec, x, base)
        if verdict == "empty":
            self._pool.pop(rec.tile, None)
            self._blur.pop(rec.tile, None)
            self._cell_blur.pop(rec.tile, None)
            fmap = None
        else:
            fmap = focus_map(rec, cal.intercept if cal is not None and cal.measure == "count" else base.median)
        if cal is not None:
            units = None if defocus is None else cal.units
        return replace(rec, verdict=verdict, kind=kind, reason=reason, focus_map=fmap, defocus=defocus, defocus_units=units)

    def _decide(self, rec: TileRecord, x: float, base: Baseline) -> tuple[str, str | None, str]:
        """``(verdict, kind, reason)`` of one tile: empty, then astigmatism, defocus, partial, ok."""
        cal = self.rule.calibration
        on_blur = self._on_blur and rec.has_blur  # records from before the blur measure: the count decides
        cal_blur = cal is not None and cal.measure == "blur"
        if on_blur or cal_blur:
            blur = finite(rec.blur)
            limit = cal.blur_threshold if cal_blur else self.blur_threshold()
            low = blur is None or blur > limit
        else:
            low = x < base.threshold
        if low:
            cnr = finite(rec.contrast)
            if cnr is not None and cnr < self.rule.empty_cnr:
                return "empty", None, f"no tissue: contrast/noise {cnr:.1f} < {self.rule.empty_cnr:g}"
        strength = finite(rec.astigmatism)
        if strength is not None and strength >= self.rule.astigmatism_max:
            worst = self._worst_blur(rec, strength, cal)
            if worst is None or worst[0] > worst[1]:
                return "oof", "astigmatism", _astigmatism_reason(strength, finite(rec.astigmatism_angle), self.rule.astigmatism_max, worst)
        if low:
            if cal_blur:
                est = (
                    "no detail above the noise at any scale"
                    if blur is None
                    else f"blur {blur:.2f} px: est. defocus {cal.defocus(blur):.2g} {cal.units}"
                )
                return "oof", "defocus", f"defocus: {est} > {cal.max_defocus:g} {cal.units} (calibrated)"
            if on_blur:
                return "oof", "defocus", "defocus: " + _blur_reason(blur, self.blur_baseline(), limit, len(self._blur))
            return "oof", "defocus", "defocus: " + _low_reason(x, base, self.rule.calibration)
        cells = self._low_cells(rec, base.threshold - self.rule.partial_drop)
        if cells:
            blur = _finite_cells(rec.blur_cells)
            if blur is None:  # by density (older records)
                return "oof", "partial", "partial: cells " + " ".join(f"{r},{c}" for r, c in cells) + " low"
            tissue = int(_judged_cells(rec, blur.shape, self.rule.empty_cnr).sum())
            if 2 * len(cells) > tissue:  # most of the tile: not a region to look for, a focus to fix
                return "oof", "defocus", f"defocus: {len(cells)} of {tissue} cells blurred (> {self.cell_blur_threshold():.2f} px)"
            return "oof", "partial", "partial: cells " + " ".join(f"{r},{c}" for r, c in cells) + " blurred"
        return "ok", None, ""

    def _worst_blur(self, rec: TileRecord, strength: float, cal: Calibration | None) -> tuple[float, float] | None:
        """``(blur along the worst direction, the blur limit)`` (px) of an anisotropic tile, or None where there is no
        blur to gate the astigmatism verdict with (a record from before the blur measure, no detail left, no limit yet).

        The limit is a blur calibration's, else the relative blur rule's (``sqrt(m**2 + blur_max**2)`` over the
        section so far, whatever ``focus_measure``; under a count calibration once ``warmup`` tiles have a blur).
        A probe whose Gaussian widths are ``s1 < s2`` leaves a power spectrum whose directional second moments go as
        ``1 / s**2``: strength ``(s2**2 - s1**2) / (s2**2 + s1**2)``. With ``blur**2`` the mean of ``s1**2`` and
        ``s2**2``, the worst direction's is ``blur * sqrt(1 + strength)``.
        """
        blur = finite(rec.blur) if rec.has_blur else None
        if cal is not None and cal.measure == "blur":
            limit = cal.blur_threshold
        elif cal is None or len(self._blur) >= self.rule.warmup:  # the relative blur limit, also under the count's rules
            limit = self.blur_threshold()
        else:  # a count calibration judges before the section has a blur baseline: the strength alone
            return None
        if blur is None or not math.isfinite(limit):
            return None
        return blur * math.sqrt(1 + strength), limit

    def _low_cells(self, rec: TileRecord, limit: float) -> list[tuple[int, int]]:
        """Cells of ``rec``'s grid out of focus that have tissue (all of them without ``contrast_cells``).

        With ``blur_cells``: a cell whose blur exceeds :meth:`cell_blur_threshold` by more than its
        ``blur_cells_err``, or that has no detail above the noise. Records without them (written before they
        existed): a cell whose ``log`` density is below ``limit``.
        """
        blur = _finite_cells(rec.blur_cells)
        if blur is not None:
            err = _finite_cells(rec.blur_cells_err)
            err = np.zeros_like(blur) if err is None or err.shape != blur.shape else np.nan_to_num(err)
            with np.errstate(invalid="ignore"):
                out = np.isnan(blur) | (blur - err > self.cell_blur_threshold())
        else:
            dens = _cell_log_density(rec)
            if dens is None:
                return []
            out = dens < limit
        low = [tuple(map(int, rc)) for rc in np.argwhere(out)]
        if not low:
            return []
        judged = _judged_cells(rec, out.shape, self.rule.empty_cnr)
        return [(r, c) for r, c in low if judged[r, c]]


#: A cell whose contrast-to-noise is below this fraction of its tile's median cell's has too little structure for
#: its focus to be judged: the smooth inside of a large particle, say. On real in-focus SEM scans
#: (tests/data/sem-kriss, the image area) such cells read 0.05-0.13 of their tiles' median and no detail or a blur
#: of 3-12 px; cells behind a 2-24 px disk in the same scans kept 0.26-1.1, and in the ISBI slices 0.3-0.8 (blur
#: removes fine detail, not the coarse structure this contrast measures).
SMOOTH_CELL = 0.2


def _judged_cells(rec: TileRecord, shape: tuple[int, ...], empty_cnr: float) -> np.ndarray:
    """Which cells of a grid of ``shape`` have structure enough to judge their focus: ``contrast_cells`` at least
    ``empty_cnr`` (tissue) and at least :data:`SMOOTH_CELL` of the tile's median cell. All of them without it."""
    cnr = _finite_cells(rec.contrast_cells)
    if cnr is None or cnr.shape != shape:
        return np.ones(shape, dtype=bool)
    finite = cnr[np.isfinite(cnr)]
    typical = float(np.median(finite)) if finite.size else 0.0
    with np.errstate(invalid="ignore"):  # a NaN cell is never judged
        return cnr >= max(empty_cnr, SMOOTH_CELL * typical)


def _finite_cells(values: list | None) -> np.ndarray | None:
    """A record's (gy, gx) list of cell values as floats (None as NaN), or None without one or when malformed."""
    try:
        out = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    except (TypeError, ValueError):  # absent, ragged or not numbers (a hand-edited log): no cells
        return None
    return out if out.ndim == 2 and out.size else None


def _cell_log_density(rec: TileRecord) -> np.ndarray | None:
    """``log`` features per megapixel of each cell of a record's ``grid`` (floored), or ``None`` without a grid.

    Returns
    -------
    (gy, gx) float64 ndarray or None
    """
    grid = np.asarray(rec.grid or [[]], dtype=float)
    if grid.size == 0 or not rec.shape:
        return None
    h, w = rec.shape[:2]
    cell_mp = (h / grid.shape[0]) * (w / grid.shape[1]) / 1e6
    return np.log(np.maximum(grid / cell_mp, DENSITY_FLOOR))


def focus_map(rec: TileRecord, centre: float) -> list[list[float]] | None:
    """Feature density of each grid cell relative to a baseline.

    Parameters
    ----------
    rec : TileRecord
        A record with ``grid`` ((gy, gx) feature counts) and ``shape`` ([rows, cols] px).
    centre : float
        ``log`` features per megapixel of the baseline (section median, or
        the calibration's in-focus intercept).

    Returns
    -------
    list of list of float or None
        ``gy`` rows of ``gx`` ratios (cell density / baseline density; cell
        densities floored at 1 /MP), rounded to 2 decimals; ``None`` without a
        grid or a finite baseline.
    """
    dens = _cell_log_density(rec)
    if dens is None or not math.isfinite(centre):
        return None
    return np.round(np.exp(dens - centre), 2).tolist()


def describe(rec: TileRecord, units: str = "") -> str:
    """What a flagged record asks of the operator, in a few words.

    Parameters
    ----------
    rec : TileRecord
        A judged record.
    units : str
        Units of its calibrated ``defocus`` estimate (e.g. ``"um"``) when the
        record does not carry them (``defocus_units``: records written before
        it existed).

    Returns
    -------
    str
        ``"astigmatism 34 deg"`` (the direction of strongest blur),
        ``"defocus"`` (``"defocus, est. 2.1 um"`` with a calibrated
        estimate), the reason of a ``partial`` tile
        (``"partial: cells 0,3 1,3 low"``), ``"error"``, or the verdict.
    """
    kind = rec.kind
    if rec.verdict == "error":
        return "error"
    if kind == "astigmatism":
        angle = finite(rec.astigmatism_angle)
        return "astigmatism" if angle is None else f"astigmatism {angle:.0f} deg"
    if kind == "defocus":
        est = finite(rec.defocus)
        return "defocus" if est is None else f"defocus, est. {est:.2g} {rec.defocus_units or units}".rstrip()
    if kind == "partial":
        return rec.reason or "partial"
    return str(rec.verdict)


def _astigmatism_reason(strength: float, angle: float | None, limit: float, worst: tuple[float, float] | None) -> str:
    where = "" if angle is None else f", blur along {angle:.0f} deg"
    gate = "" if worst is None else f" ({worst[0]:.2f} px > {worst[1]:.2f} px)"
    return f"astigmatism: {strength:.2f} >= {limit:g}{where}{gate}"


def _low_reason(x: float, base: Baseline, cal: Calibration | None) -> str:
    if cal is not None:
        return f"est. defocus {cal.defocus(x):.2g} {cal.units} > {cal.max_defocus:g} {cal.units} (calibrated)"
    drop = 1 - math.exp(x - base.median)
    limit = 1 - math.exp(base.threshold - base.median)
    return f"{drop:.0%} below section median {_k(math.exp(base.median))}/MP (limit {limit:.0%}, n={base.n})"


def _blur_reason(blur: float | None, median: float, limit: float, n: int) -> str:
    if blur is None:
        return "no detail above the noise at any scale"
    added = math.sqrt(max(limit**2 - median**2, 0))
    return f"blur {blur:.2f} px > {limit:.2f} px (section median {median:.2f} px, {added:.1f} px added in quadrature, n={n})"


def _k(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def exit_status(counts: dict[str, int]) -> int:
    """Exit status of a section: 1 if any tile errored, else 2 if any is out of focus, else 0.

    Errors take precedence: an errored tile's focus is unknown, and it must
    be looked at before the section counts as done.
    """
    if counts.get("error"):
        return 1
    if counts.get("oof"):
        return 2
    return 0
