"""The judge: each tile's verdict, against the section so far or a calibration.

A tile is ``empty`` (no tissue), else ``oof`` with a kind (``astigmatism``,
``defocus``, ``partial``), else ``ok``. The default rule compares the
tile's blur (px) with the section's: what the tile adds in quadrature to the
section's focus (the lower quartile of its blurs) must stay within ``blur_max`` or ``blur_k`` times the
section's spread; a calibration compares its estimated |defocus| with
``max_defocus`` instead. The first ``warmup`` tiles wait for a baseline and
verdicts leave in section order. The rule's thresholds are
:class:`mhd.client.rule.Rule`; what they mean to an operator is in the README,
and how well they do on real scans in ``docs/validation.md``.
"""

from __future__ import annotations

import cmath
import functools
import math
import statistics
from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np

from mhd.contracts.record import TileRecord, finite

from .calibration import DENSITY_FLOOR, Calibration
from .rule import Rule
from .wording import REFOCUS_TOO, STIGMATORS, astigmatism_reason, cell_limit_words, low_reason

__all__ = ["Baseline", "BlurPoint", "BlurReference", "Explanation", "Judge", "SectionBlur", "focus_map", "log_density"]

#: Robust sigma of a normal distribution from its median absolute deviation.
MAD_TO_SIGMA = 1.4826


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


#: The lower quartile of a normal distribution, in standard deviations below its median.
QUARTILE_Z = 0.6744897501960817
#: Smallest spread of a part of the anisotropy (px^2) :class:`BlurReference` divides by: chance alone spreads a
#: round probe's by about this on 512 px tiles.
ANISOTROPY_FLOOR = 0.05
#: Standard deviations of the section's spread by which a tile's own anisotropy must stand out to add to its excess
#: (both parts together; chance alone passes 5 once in 270,000 tiles, but the scan axes of real SEM scans vary from
#: field to field more than a normal spread: at 3.5 a fifth more in-focus scans were called out of focus).
ANISOTROPY_Z = 5.0
#: The same for telling an out-of-focus tile astigmatic (rather than defocused): an elliptical probe along a scan
#: axis stands out less from a section whose scans vary along that axis.
DIAGNOSIS_Z = 2.5
#: Smallest anisotropy of its own (px^2) a tile is credited with: about what a 2:1 elliptical probe of 1.7 px adds.
ANISOTROPY_MIN = 0.2
#: An out-of-focus tile is astigmatic also when its own anisotropy (beyond the section's) is at least this share of its
#: whole ``blur**2`` (that part alone makes its blur about 19 % longer along one axis than across), however much round
#: blur adds beside it: a stigmator error on a field that is defocused as well, which ``astigmatism_share`` of the
#: excess misses. Not a configuration key. Chosen on ``bench/blur_validation.py diagnosis`` (docs/validation.md): the
#: six elliptical probes it gained on real SEM fields read 0.171-0.205, round disks on real fields up to 0.157, a
#: simulated 3 um defocus (the tests' section) 0.12.
ASTIGMATIC_ELONGATION = 0.17
#: Tiles whose spread the floor of :meth:`BlurReference.limit` is sure of: with ``n`` tiles it is ``blur_max**2 *
#: (1 + WARM_TILES / n)``, twice at the first verdicts (``warmup`` 8).
WARM_TILES = 8
#: Records held for an earlier tile that has not arrived, at most (:meth:`Judge.expect`).
MAX_HELD = 64


@dataclass(frozen=True)
class BlurPoint:
    """One tile's blur as the rule compares it (px^2: point spread functions add their variances).

    Attributes
    ----------
    mean2 : float
        ``blur**2``: the mean of the variances along the two principal axes.
    error2 : float
        Its uncertainty, ``2 blur blur_err``.
    delta : complex or None
        The anisotropy ``(major**2 - minor**2) / 2 e^{2 i angle}`` (None for records without the axes).
    """

    mean2: float
    error2: float
    delta: complex | None

    @classmethod
    def of(cls, rec: TileRecord) -> "BlurPoint | None":
        """The point of a record, or None where it has no blur (not measurable, or written before the blur existed)."""
        blur = finite(rec.blur) if rec.has_blur else None
        if blur is None:
            return None
        major, minor, angle = finite(rec.blur_major), finite(rec.blur_minor), finite(rec.blur_angle)
        delta = None
        if major is not None and minor is not None:
            delta = (major * major - minor * minor) / 2 * cmath.exp(2j * math.radians(angle or 0.0))
        return cls(blur * blur, 2 * blur * (finite(rec.blur_err) or 0.0), delta)

    def at_focus(self, focus: float) -> float:
        """``error2`` as it would be were the tile as sharp as ``focus`` (px^2) and as surely measured: the error of
        ``blur**2`` is ``2 blur blur_err``, so a blurrier tile would widen its own limit by what its blur adds.
        Unchanged for a tile at least as sharp."""
        return float(_at_focus(np.float64(self.error2), np.float64(self.mean2), focus))


def _at_focus(error2: np.ndarray, mean2: np.ndarray, focus: float) -> np.ndarray:
    """:meth:`BlurPoint.at_focus` of one point or of arrays of them."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean2 > focus, error2 * np.sqrt(max(focus, 0.0) / mean2), error2)


def _stands_out(d: np.ndarray, spread: complex, z: float) -> np.ndarray:
    """Whether an anisotropy ``d`` (px^2, beyond the section's) stands out of the section's ``spread`` of each part by
    ``z`` standard deviations and is at least :data:`ANISOTROPY_MIN`: one point or an array of them."""
    z2 = (np.real(d) / spread.real) ** 2 + (np.imag(d) / spread.imag) ** 2
    return (z2 > z * z) & (np.abs(d) >= ANISOTROPY_MIN)


@functools.lru_cache(maxsize=8)
def _normal_quantiles(q: float) -> tuple[float, float, float]:
    """Where a normal distribution's ``q / 2``, ``q`` and ``3 q / 2`` quantiles are, in standard deviations."""
    return tuple(statistics.NormalDist().inv_cdf(p) for p in (q / 2, q, 1.5 * q))  # type: ignore[return-value]


@dataclass(frozen=True)
class BlurReference:
    """The blur the section's tiles share, against which each is judged (px^2).

    Anisotropy: the median (part by part) of the tiles' ``delta`` is what the
    section shares (a scan that resolves its slow axis a little worse, say);
    a tile's own, ``delta - delta_ref``, counts only where it stands out of
    the section's spread of each part: ``(Re / s_re)**2 + (Im / s_im)**2 >
    ANISOTROPY_Z**2`` (1.4826 x MAD of each part, at least :data:`ANISOTROPY_FLOOR`),
    and is at least :data:`ANISOTROPY_MIN`.
    The real part is anisotropy along the scan axes (0 and 90 degrees), which a
    scan's line jitter and settling vary from field to field; a stigmator's
    error has any direction.

    A tile's **worst** blur is ``mean2`` plus its own anisotropy where that
    stands out: the variance along its most blurred direction. The section's
    **focus** is the ``blur_focus`` quantile ``q`` of the worst blurs over the
    section (the tile judged included): the lower quartile by default, because
    out-of-focus tiles only add blur, and a focus that drifts slowly (a tilted
    or uneven specimen, a stage travelling away from where it was focused)
    carries the median along with it. Their **spread** is the smaller of
    ``Q(q) - Q(q / 2)`` and ``Q(3 q / 2) - Q(q)`` over the same distance on a
    normal (median and quartiles at ``q`` 0.5): out-of-focus tiles do not reach
    the lower side, and a content whose sharpest fields stand far below the
    rest (ISBI slices) leaves that side wide.

    Attributes
    ----------
    focus, spread : float
        Of the worst blurs.
    error : float
        Median of the tiles' own ``error2``, each taken at the focus (:meth:`BlurPoint.at_focus`).
    delta : complex
        Median (part by part) of the tiles' anisotropy; 0 without any.
    delta_spread : complex
        The spread of each part (real and imaginary), as a complex number.
    n : int
        Tiles.
    """

    focus: float
    spread: float
    error: float
    delta: complex
    delta_spread: complex
    n: int

    @classmethod
    def of(cls, points: Iterable[BlurPoint], rule: Rule) -> "BlurReference":
        points = list(points)
        mean2, error2 = np.array([(p.mean2, p.error2) for p in points], dtype=float).reshape(-1, 2).T
        all_deltas = np.array([np.nan if p.delta is None else p.delta for p in points], dtype=complex)
        deltas = all_deltas[~np.isnan(all_deltas)]
        if deltas.size:
            delta = complex(float(np.median(deltas.real)), float(np.median(deltas.imag)))
            spread_delta = complex(
                max(MAD_TO_SIGMA * float(np.median(np.abs(deltas.real - delta.real))), ANISOTROPY_FLOOR),
                max(MAD_TO_SIGMA * float(np.median(np.abs(deltas.imag - delta.imag))), ANISOTROPY_FLOOR),
            )
        else:
            delta, spread_delta = 0j, complex(ANISOTROPY_FLOOR, ANISOTROPY_FLOOR)
        d = np.nan_to_num(all_deltas - delta)  # worst_of of every point at once
        worst = mean2 + np.where(_stands_out(d, spread_delta, ANISOTROPY_Z), np.abs(d), 0.0)
        q = rule.blur_focus
        lo, focus, hi = np.quantile(worst, [q / 2, q, 1.5 * q])
        z_lo, z, z_hi = _normal_quantiles(q)
        spread = min((focus - lo) / (z - z_lo), (hi - focus) / (z_hi - z))
        error = float(np.median(_at_focus(error2, mean2, focus)))
        return cls(float(focus), float(spread), error, delta, spread_delta, len(points))

    def own_anisotropy(self, point: BlurPoint, rule: Rule, z: float = 0.0) -> complex | None:
        """``delta - delta_ref`` of a point where it stands out of the section's spread by ``z`` standard deviations
        (:data:`ANISOTROPY_Z` by default) and is at least :data:`ANISOTROPY_MIN`, 0 where not; None without axes."""
        if point.delta is None:
            return None
        d = point.delta - self.delta
        return d if _stands_out(d, self.delta_spread, z or ANISOTROPY_Z) else 0j

    def worst_of(self, point: BlurPoint, rule: Rule) -> float:
        """The worst blur of a point (px^2): ``mean2`` plus its own anisotropy where that stands out."""
        return point.mean2 + abs(self.own_anisotropy(point, rule) or 0j)

    def limit(self, error2: float, rule: Rule) -> float:
        """How much a tile's worst blur may exceed the focus (px^2): at least ``blur_max**2`` (more while the
        section has few tiles, :data:`WARM_TILES`), and ``blur_k``
        standard deviations of the section's spread (its estimate from ``n`` tiles widened by ``1 + 1.2 /
        sqrt(n)`` for its chance error), widened by what the tile's own uncertainty ``error2`` (taken at the focus)
        exceeds the section's typical one (a tile scanned at a lower dose, say)."""
        n = max(self.n, 1)
        spread = self.spread * (1 + 1.2 / math.sqrt(n))
        own = max(error2 * error2 - self.error * self.error, 0.0)
        return max(rule.blur_max**2 * (1 + WARM_TILES / n), rule.blur_k * math.sqrt(spread**2 + own))


@dataclass(frozen=True)
class SectionBlur:
    """One tile's blur against its section's (:class:`BlurReference`), in px^2.

    Attributes
    ----------
    excess : float
        Worst blur minus the section's focus.
    limit : float
        :meth:`BlurReference.limit` for this tile, its error taken at the section's focus (:meth:`BlurPoint.at_focus`).
    anisotropy : float or None
        ``|delta - delta_ref|`` where it stands out of the section's spread by :data:`DIAGNOSIS_Z`, else 0
        (:meth:`BlurReference.own_anisotropy`); None without the axes.
    elongation : float
        That anisotropy over the tile's ``mean2`` (0 without any).
    angle : float or None
        Direction (degrees) of its larger blur.
    ref : BlurReference
    share : float
        The rule's ``astigmatism_share``.
    """

    excess: float
    limit: float
    anisotropy: float | None
    angle: float | None
    ref: BlurReference
    share: float
    elongation: float = 0.0

    @classmethod
    def of(cls, point: BlurPoint, ref: BlurReference, rule: Rule) -> "SectionBlur":
        # what the tile's own anisotropy adds to its excess must stand out clearly (in-focus tiles are many); whether
        # an out-of-focus tile is astigmatic asks less of it (:data:`DIAGNOSIS_Z`)
        own = ref.own_anisotropy(point, rule, DIAGNOSIS_Z)
        aniso = None if own is None else abs(own)
        angle = (math.degrees(cmath.phase(own)) / 2) % 180.0 if own else None
        excess = ref.worst_of(point, rule) - ref.focus
        elongation = aniso / point.mean2 if aniso and point.mean2 > 0 else 0.0
        return cls(excess, ref.limit(point.at_focus(ref.focus), rule), aniso, angle, ref, rule.astigmatism_share, elongation)

    @property
    def oof(self) -> bool:
        """Blurrier than the section allows along its worst direction."""
        return self.excess > self.limit

    @property
    def astigmatic(self) -> bool:
        """Out of focus, and at least ``share`` of the worst direction's excess is anisotropy, or the tile's blur is
        :attr:`elongated` by it (defocused as well): turn the stigmators."""
        return self.oof and (self.mostly_anisotropic or self.elongated)  # both need an anisotropy of the tile's own

    @property
    def elongated(self) -> bool:
        """The tile's own anisotropy is at least :data:`ASTIGMATIC_ELONGATION` of its ``mean2``."""
        return self.elongation >= ASTIGMATIC_ELONGATION

    @property
    def mostly_anisotropic(self) -> bool:
        """At least ``share`` of the worst direction's excess is the tile's own anisotropy."""
        return bool(self.anisotropy) and self.anisotropy >= self.share * self.excess

    def _added(self) -> str:
        return (
            f"{math.sqrt(max(self.excess, 0.0)):.2f} px added in quadrature to the section's focus "
            f"{math.sqrt(max(self.ref.focus, 0.0)):.2f} px (limit {math.sqrt(self.limit):.2f} px, n={self.ref.n})"
        )

    def defocus_reason(self) -> str:
        return f"blurrier than the section: {self._added()}"

    def astigmatism_reason(self) -> str:
        where = "" if self.angle is None else f" along {self.angle:.0f} deg"
        share = f"{self.anisotropy / self.excess:.0%} anisotropic"
        if self.mostly_anisotropic:
            return f"astigmatism: blurrier{where} ({STIGMATORS}): {self._added()}, {share}"
        longer = math.sqrt((1 + self.elongation) / max(1 - self.elongation, 1e-9)) - 1
        own = f"its own anisotropy makes it {longer:.0%} longer that way than across"
        return f"astigmatism: blurrier{where} ({REFOCUS_TOO}): {self._added()}, {share}; {own}"


@dataclass(frozen=True)
class Explanation:
    """A tile on the measure its verdict used, with the limit it was held to (what the report's figures show).

    Attributes
    ----------
    measure : str
        ``"added blur"`` (px the tile adds, in quadrature, to the section's focus: the relative rule),
        ``"defocus"`` (estimated |defocus| in the calibration's units: a blur or count calibration) or
        ``"log density"`` (``log`` features per megapixel: the count's relative rule).
    units : str
        ``"px"``, the calibration's units, or ``""``.
    value : float or None
        The tile's value; None where it has none (no detail above the noise, no blur recorded).
    limit : float
        Beyond it the tile is out of focus: above it, or below it for ``"log density"`` (``worse_above`` False).
    worse_above : bool
    cells : (gy, gx) ndarray or None
        Blur (px) each grid cell adds in quadrature, less its error, to the reference cell the partial rule uses
        (the tile's median cell, or the section's typical one where that is sharper); NaN where a cell is not judged
        (no tissue, too smooth) or has no blur; None without cell blurs.
    cell_limit : float or None
        The cells' limit (px), as :meth:`Judge.cell_limit`.
    flagged_cells : list of (row, col)
        The cells the partial rule finds blurred.
    """

    measure: str
    units: str
    value: float | None
    limit: float
    worse_above: bool = True
    cells: np.ndarray | None = None
    cell_limit: float | None = None
    flagged_cells: tuple[tuple[int, int], ...] = ()


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
        self._base: Baseline | None = None  # of the pool, None when it changed since
        self._blur: dict[str, BlurPoint] = {}
        self._reference: BlurReference | None = None  # of self._blur, None when it changed since
        self._cell_spread: dict[str, float] = {}
        self._cell_median: dict[str, float] = {}
        self._cells: tuple[float | None, float] | None = None  # medians of the two above, None when they changed since
        self._pending: list[TileRecord] = []
        self._order: list[str] = []  # tiles expected and not yet arrived, in section order
        self._held: dict[str, TileRecord] = {}  # arrived ahead of an earlier expected tile
        for rec in prior:
            if rec.verdict in ("ok", "oof"):
                self._enter(rec)

    def _enter(self, rec: TileRecord) -> None:
        self._pool[rec.tile] = log_density(rec.density)
        self._base = None
        point = BlurPoint.of(rec)
        if point is not None:
            self._blur[rec.tile] = point
            self._reference = None
        within = self._within_tile(rec)
        if within is not None:
            self._cell_median[rec.tile], self._cell_spread[rec.tile] = within
            self._cells = None
        elif rec.median_cell_blur() is not None:  # a record kept without its cells (a resumed run)
            self._cell_median[rec.tile] = rec.median_cell_blur() ** 2
            self._cells = None

    @property
    def _on_blur(self) -> bool:
        return self.rule.focus_measure == "blur" and self.rule.calibration is None

    def blur_reference(self) -> "BlurReference | None":
        """The section's blur so far (:class:`BlurReference`); None when no tile has one."""
        if self._reference is None and self._blur:
            self._reference = BlurReference.of(self._blur.values(), self.rule)
        return self._reference if self._blur else None

    def cell_limit(self) -> float:
        """How much blur (px^2) a cell may add to its tile's median cell before it is out of focus: at least
        ``partial_blur**2``, and ``blur_k`` times the section's typical spread of cells within a tile (the median over
        its tiles of :meth:`_within_tile`'s): a section whose fields mix smooth and detailed regions (particles on a
        support) needs more than one of homogeneous tissue."""
        spread = self._cell_medians()[1]
        return max(self.rule.partial_blur**2, self.rule.blur_k * spread)

    def _cell_medians(self) -> tuple[float | None, float]:
        """The section's typical median cell (px^2; None before any) and typical spread of cells within a tile
        (px^2; 0 before any), kept until a tile changes them."""
        if self._cells is None:
            median = float(np.median(np.fromiter(self._cell_median.values(), float))) if self._cell_median else None
            spread = float(np.median(np.fromiter(self._cell_spread.values(), float))) if self._cell_spread else 0.0
            self._cells = (median, spread)
        return self._cells

    def _within_tile(self, rec: TileRecord) -> tuple[float, float] | None:
        """Median and spread (px^2) of the squared blur of a record's judged cells; None without cells.

        The spread is read on the sharp side (median minus lower quartile, over 0.6745), which a partly
        defocused tile's blurred cells do not reach while they are fewer than half.
        """
        blur = _finite_cells(rec.blur_cells)
        if blur is None:
            return None
        values = np.square(blur[self._judged(rec, blur) & np.isfinite(blur)])
        if values.size < 4:
            return None
        q25, m = np.percentile(values, [25, 50])
        return float(m), float(m - q25) / QUARTILE_Z

    def blur_threshold(self) -> float:
        """Blur (px) above which a tile of typical uncertainty is out of focus (:meth:`BlurReference.limit`); inf
        before any tile has a blur."""
        ref = self.blur_reference()
        return math.sqrt(max(ref.focus + ref.limit(ref.error, self.rule), 0.0)) if ref is not None else math.inf

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
        if record.tile not in self._order:
            return self._take(record)
        self._held[record.tile] = record
        out = []
        while self._order and (self._order[0] in self._held or len(self._held) > MAX_HELD):
            tile = self._order.pop(0)
            if tile in self._held:
                out += self._take(self._held.pop(tile))
        return out

    def expect(self, tiles: Iterable[str]) -> None:
        """Tiles that will be added, in the section's order (files sorted, or as they landed).

        Records added later are judged in this order, whatever order they
        arrive in (a task on another worker may finish first): each tile's
        verdict then rests on the records of the tiles before it and of itself,
        so the number of workers does not change it. A tile already expected
        and not yet added keeps its place. A record that arrives more than
        :data:`MAX_HELD` tiles ahead of one still missing goes on without it.
        """
        waiting = set(self._order)
        self._order += [t for t in tiles if t not in waiting and not waiting.add(t)]  # type: ignore[func-returns-value]

    def _take(self, record: TileRecord) -> list[TileRecord]:
        """A record in its turn: into the baseline, then judged once the warm-up allows."""
        if record.error:
            return [replace(record, verdict="error", kind=None, reason=str(record.error), focus_map=None)]
        self._enter(record)
        self._pending.append(record)
        if self.rule.calibration is None and len(self._pool) < self.rule.warmup:
            return []
        return self._release()

    def flush(self) -> list[TileRecord]:
        """Judge every waiting record against the baseline as it stands (new records, in order): those held for
        an earlier tile that has not arrived (a run that ends without it) too."""
        out = []
        for tile in self._order:
            if tile in self._held:
                out += self._take(self._held.pop(tile))
        self._order = []
        return out + self._release()

    def _release(self) -> list[TileRecord]:
        done, self._pending = self._pending, []
        return [self._judge(rec) for rec in done]

    @property
    def pending(self) -> int:
        """Records waiting for the baseline or for an earlier tile."""
        return len(self._pending) + len(self._held)

    def baseline(self) -> Baseline:
        """The current threshold (relative rule: over the pool so far)."""
        cal = self.rule.calibration
        if cal is not None and cal.measure == "count":
            return Baseline(math.nan, math.nan, len(self._pool), cal.log_threshold)
        if not self._pool:
            return Baseline(math.nan, math.nan, 0, -math.inf)
        if self._base is None:
            x = np.fromiter(self._pool.values(), float)
            m = float(np.median(x))
            s = MAD_TO_SIGMA * float(np.median(np.abs(x - m)))
            self._base = Baseline(m, s, x.size, m - max(self.rule.oof_k * s, self.rule.oof_min_drop))
        return self._base

    def explain(self, rec: TileRecord) -> Explanation:
        """``rec`` on the measure its verdict uses, against the section as the judge holds it now (a report
        judges the whole section first: :func:`mhd.client.report.section_verdicts`)."""
        cal, base = self.rule.calibration, self.baseline()
        if cal is not None:
            value = finite(rec.defocus) if rec.defocus is not None else None
            measure = Explanation("defocus", cal.units, None if value is None else abs(value), cal.max_defocus)
        elif self._on_blur and rec.has_blur:
            judged = self._against_section(rec)
            ref = self.blur_reference()
            limit = judged.limit if judged is not None else ref.limit(ref.error, self.rule) if ref is not None else math.inf
            value = None if judged is None else math.sqrt(max(judged.excess, 0.0))
            measure = Explanation("added blur", "px", value, math.sqrt(limit))
        else:
            measure = Explanation("log density", "", log_density(rec.density) if rec.density is not None else None, base.threshold, False)
        added = self._cell_added(rec)
        if added is None:
            return measure
        flagged = tuple(self._low_cells(rec, base.threshold - self.rule.partial_drop))
        return replace(measure, cells=added, cell_limit=math.sqrt(self.cell_limit()), flagged_cells=flagged)

    def _cell_added(self, rec: TileRecord) -> np.ndarray | None:
        """Blur (px) each judged cell adds in quadrature to the partial rule's reference cell (NaN elsewhere)."""
        blur, within = _finite_cells(rec.blur_cells), self._within_tile(rec)
        if blur is None or within is None:
            return None
        err = _finite_cells(rec.blur_cells_err)
        err = np.zeros_like(blur) if err is None or err.shape != blur.shape else np.nan_to_num(err)
        typical = self._cell_medians()[0]
        typical = within[0] if typical is None else typical
        with np.errstate(invalid="ignore"):
            added = np.sqrt(np.clip(np.square(np.clip(blur - err, 0.0, None)) - min(within[0], typical), 0.0, None))
        return np.where(self._judged(rec, blur), added, np.nan)

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
            self._base = None
            if self._blur.pop(rec.tile, None) is not None:
                self._reference = None
            self._cell_spread.pop(rec.tile, None)
            self._cell_median.pop(rec.tile, None)
            self._cells = None
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
        # the relative rule diagnoses astigmatism from the blur's two axes against the section's, whichever measure
        # decides focus (the count's rule too: its strength alone called the scan's own anisotropy astigmatism)
        judged = self._against_section(rec) if cal is None and rec.has_blur else None
        if on_blur:
            low = judged is None or judged.oof
        elif cal_blur:
            blur = finite(rec.blur)
            low = blur is None or blur > cal.blur_threshold
        else:
            low = x < base.threshold
        if low:
            cnr = finite(rec.contrast)
            if cnr is not None and cnr < self.rule.empty_cnr:
                return "empty", None, f"no tissue: contrast/noise {cnr:.1f} < {self.rule.empty_cnr:g}"
        if judged is not None and judged.anisotropy is not None:  # the section-relative blur along two axes decides
            if judged.astigmatic:
                return "oof", "astigmatism", judged.astigmatism_reason()
        else:
            strength = finite(rec.astigmatism)
            if strength is not None and strength >= self.rule.astigmatism_max:
                worst = self._worst_blur(rec, strength, cal)
                if worst is None or worst[0] > worst[1]:
                    return (
                        "oof",
                        "astigmatism",
                        astigmatism_reason(strength, finite(rec.astigmatism_angle), self.rule.astigmatism_max, worst),
                    )
        if low:
            if cal_blur:
                est = (
                    "no detail above the noise at any scale"
                    if blur is None
                    else f"blur {blur:.2f} px: est. defocus {cal.defocus(blur):.2g} {cal.units}"
                )
                return "oof", "defocus", f"defocus: {est} > {cal.max_defocus:g} {cal.units} (calibrated)"
            if on_blur:
                return (
                    "oof",
                    "defocus",
                    "defocus: " + ("no detail above the noise at any scale" if judged is None else judged.defocus_reason()),
                )
            return "oof", "defocus", "defocus: " + low_reason(x, base, self.rule.calibration)
        cells = self._low_cells(rec, base.threshold - self.rule.partial_drop)
        if cells:
            blur = _finite_cells(rec.blur_cells)
            if blur is None:  # by density (older records)
                return "oof", "partial", "partial: cells " + " ".join(f"{r},{c}" for r, c in cells) + " low"
            tissue = int(_judged_cells(rec, blur.shape, self.rule.empty_cnr).sum())
            if 2 * len(cells) > tissue:  # most of the tile: not a region to look for, a focus to fix
                return "oof", "defocus", f"defocus: {len(cells)} of {tissue} cells blurred ({cell_limit_words(self.cell_limit())})"
            return "oof", "partial", "partial: cells " + " ".join(f"{r},{c}" for r, c in cells) + " blurred"
        return "ok", None, ""

    def _against_section(self, rec: TileRecord) -> "SectionBlur | None":
        """``rec``'s blur against the section's (:class:`SectionBlur`); None where it has none (no detail left)."""
        point, ref = BlurPoint.of(rec), self.blur_reference()
        if point is None or ref is None:
            return None
        return SectionBlur.of(point, ref, self.rule)

    def _worst_blur(self, rec: TileRecord, strength: float, cal: Calibration | None) -> tuple[float, float] | None:
        """``(blur along the worst direction, the blur limit)`` (px) of an anisotropic tile, or None where there is no
        blur to gate the astigmatism verdict with (a record from before the blur measure, no detail left, no limit yet).
        Used under a calibration, and for records without the blur's two axes (the relative rule diagnoses the others
        with :class:`SectionBlur`).

        The limit is a blur calibration's, else the relative blur rule's (:meth:`blur_threshold`; under a count
        calibration once ``warmup`` tiles have a blur).
        A probe whose Gaussian widths are ``s1 < s2`` leaves a power spectrum whose directional second moments go as
        ``1 / s**2``: strength ``(s2**2 - s1**2) / (s2**2 + s1**2)``. With ``blur**2`` the mean of ``s1**2`` and
        ``s2**2``, the worst direction's is ``blur * sqrt(1 + strength)``.
        """
        blur = finite(rec.blur) if rec.has_blur else None
        if cal is not None and cal.measure == "blur":
            limit = cal.blur_threshold
        elif cal is None or len(self._blur) >= self.rule.warmup:  # the relative blur limit
            limit = self.blur_threshold()
        else:  # a count calibration judges before the section has a blur baseline: the strength alone
            return None
        if blur is None or not math.isfinite(limit):
            return None
        return blur * math.sqrt(1 + strength), limit

    def _low_cells(self, rec: TileRecord, limit: float) -> list[tuple[int, int]]:
        """Cells of ``rec``'s grid out of focus that have tissue (all of them without ``contrast_cells``).

        With ``blur_cells``: a cell whose blur, less its ``blur_cells_err``, adds more than :meth:`cell_limit` (px^2)
        to the median of the tile's cells, or to the section's typical median cell where that is sharper (a tile
        blurred over most of its cells), or that has no detail above the noise. Comparing a cell with its own
        tile's cells leaves out what differs between fields. Records without them (written before they existed): a
        cell whose ``log`` density is below ``limit``.
        """
        blur = _finite_cells(rec.blur_cells)
        added = self._cell_added(rec)
        if blur is not None and added is not None:
            with np.errstate(invalid="ignore"):
                out = np.isnan(blur) | (np.square(added) > self.cell_limit())
        elif blur is not None:  # too few cells to compare: only those with no detail left
            out = np.isnan(blur)
        else:
            dens = _cell_log_density(rec)
            if dens is None:
                return []
            out = dens < limit
        low = [tuple(map(int, rc)) for rc in np.argwhere(out)]
        if not low:
            return []
        judged = self._judged(rec, blur) if blur is not None else _judged_cells(rec, out.shape, self.rule.empty_cnr)
        return [(r, c) for r, c in low if judged[r, c]]

    def _judged(self, rec: TileRecord, blur: np.ndarray) -> np.ndarray:
        """The cells whose focus is judged: :func:`_judged_cells`, less those whose blur is measured too loosely
        (``blur_cells_err`` over :data:`LOOSE_CELL` of the blur: content too smooth to read it, such as most of a
        large particle)."""
        judged = _judged_cells(rec, blur.shape, self.rule.empty_cnr)
        err = _finite_cells(rec.blur_cells_err)
        if err is not None and err.shape == blur.shape:
            with np.errstate(invalid="ignore"):
                judged &= ~(err > LOOSE_CELL * blur)
        return judged


#: A cell whose contrast-to-noise is below this fraction of its tile's median cell's has too little structure for
#: its focus to be judged: the smooth inside of a large particle, say. On real in-focus SEM scans
#: (tests/data/sem-kriss, the image area) such cells read 0.05-0.13 of their tiles' median and no detail or a blur
#: of 3-12 px; cells behind a 2-24 px disk in the same scans kept 0.26-1.1, and in the ISBI slices 0.3-0.8 (blur
#: removes fine detail, not the coarse structure this contrast measures).
SMOOTH_CELL = 0.2
#: A cell whose blur's uncertainty exceeds this fraction of its blur is not judged (:meth:`Judge._judged`).
LOOSE_CELL = 0.4


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
