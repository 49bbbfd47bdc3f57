"""``client report``: the figures, the page, a CSV and the re-acquisition list of a section.

Everything is written to ``<section>/mhd-report/`` (each file replaced whole, so a reader never sees half):

``index.html``
    One self-contained page (no network): the rule in force and the run's
    settings, the counts, each flagged tile's thumbnail beside an in-focus
    neighbour with its blurred cells outlined and what to fix, the figures,
    and a sortable table of every tile (:mod:`mhd.client.page`). ``client
    watch`` keeps it current while it runs, and ``watch --serve`` serves it
    live.
``focus.png``
    Each tile on the measure the verdicts used (the blur it adds to the
    section's, an estimated |defocus| under a calibration, or the feature
    density under the count's rule) with its limit, in acquisition order.
``montage.png``
    The same measure where each tile sits (``r<row>_c<col>`` in the names,
    or a positions CSV), the limit at the colour scale's centre; only when
    positions are known.
``focus-maps.png``
    The cells of each flagged tile: the blur each adds to its tile's (px),
    blurred cells outlined; only when a flagged tile has cell blurs.
``density.png``
    The feature count per tile (secondary: it falls with defocus and dose).
``mhd-results.csv``
    One row per tile: recorded ``verdict`` and ``kind``, ``section_verdict``
    and ``section_kind``, ``shown_verdict`` (what the list, figures and page
    show), the measure and its limit, the astigmatism and the cell map.
``mhd-reacquire.txt``
    Tiles to image again (recorded or section verdict ``oof``, or ``error``),
    one per line: the tile id, a tab, and what to fix, e.g.
    ``tile_r1_c2.png<TAB>astigmatism 34 deg`` (turn the stigmators; blur
    along 34 degrees; ``astigmatism 34 deg, refocus too`` where the tile is also defocused), ``...<TAB>defocus`` (refocus),
    ``...<TAB>partial: cells 0,3 1,3 blurred`` or ``...<TAB>error: cannot decode ...``
    (what went wrong: check the file, or image the tile again).
    ``cut -f1 mhd-reacquire.txt`` lists the ids alone. Re-imaged tiles
    written under the same names are scored again by the next ``client
    submit`` (or by a ``client watch`` that is running): their file's size
    or modification time differs from the version recorded.

``section_verdict`` re-judges every tile against the whole section's
baseline (hindsight: the recorded verdict used the section *so far*). The
re-acquisition list takes the union of both, so no tile that was flagged
either way is missed; every figure and the page show that same union.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from mhd.contracts.files import REPORT_DIR, RESULTS_NAME
from mhd.contracts.record import TileRecord
from mhd.contracts.verdicts import Verdict

from .console import printable
from .discover import natural_key, tile_positions
from .judge import Baseline, Explanation, Judge
from .results import read_records
from .rule import Rule
from .wording import describe

__all__ = [
    "Report",
    "SectionView",
    "Shown",
    "blur_threshold",
    "make_report",
    "section_verdicts",
    "settings_of",
    "view_section",
    "write_atomic",
]

CSV_COLUMNS = (
    "index", "tile", "row", "col", "verdict", "kind", "section_verdict", "section_kind", "shown_verdict", "shown_kind",
    "reason", "measure", "value", "limit", "features", "density", "blur", "blur_err", "blur_major", "blur_minor",
    "blur_angle", "scan_smear", "defocus", "defocus_units", "astigmatism", "astigmatism_angle", "focus_map",
    "contrast", "error", "backend", "ms", "roundtrip_ms", "latency_ms", "scored_at",
)  # fmt: skip


@dataclass
class Report:
    """Files written by :func:`make_report` (``None`` when not made)."""

    folder: Path
    csv: Path
    reacquire: Path
    density: Path
    montage: Path | None
    records: list[TileRecord]
    baseline: Baseline
    focus_maps: Path | None = None
    focus: Path | None = None
    page: Path | None = None
    view: "SectionView | None" = None


@dataclass(frozen=True)
class Shown:
    """One tile as every output of the report shows it.

    Attributes
    ----------
    rec : TileRecord
        As recorded (``mhd-results.jsonl``).
    fresh : TileRecord
        Judged against the whole section (:func:`section_verdicts`).
    verdict, kind : str
        What the list, the figures and the page say: ``oof`` (with the kind
        that :func:`_what` names) for a tile flagged either way, ``error``,
        else the recorded verdict.
    words : str
        What to fix (``defocus``, ``astigmatism 34 deg``, ...); ``""`` for a tile not flagged.
    explanation : Explanation
        The tile on the measure the verdicts used, against the whole section.
    index : int
        Position in acquisition order.
    position : (row, col) or None
    """

    rec: TileRecord
    fresh: TileRecord
    verdict: str
    kind: str | None
    words: str
    explanation: Explanation
    index: int
    position: tuple[int, int] | None = None

    @property
    def flagged(self) -> bool:
        """On the re-acquisition list: recorded or section ``oof``, or an error."""
        return self.verdict in (Verdict.OOF, Verdict.ERROR)

    @property
    def reason(self) -> str:
        """Why, in words: the recorded reason where the recorded verdict is the one shown, else the whole
        section's, said to be so (a tile flagged in hindsight)."""
        if self.rec.verdict == self.verdict and self.rec.reason:
            return self.rec.reason
        if self.fresh.reason and self.fresh.verdict == self.verdict:
            return f"against the whole section: {self.fresh.reason}"
        return self.rec.reason or self.fresh.reason or ""


@dataclass
class SectionView:
    """A section as the report shows it: every tile in acquisition order, judged once (:func:`view_section`).

    Attributes
    ----------
    name : str
        The section folder's name.
    rule : Rule
    tiles : list of Shown
    baseline : Baseline
        The whole section's count baseline.
    measure, units : str
        The verdicts' measure (:attr:`Explanation.measure`) and its units.
    limit : float
        Its typical limit: the median of the tiles' (each tile's own widens with its error).
    positions : dict of str to (row, col)
        Where tiles sit in the montage (empty when unknown).
    """

    name: str
    rule: Rule
    tiles: list[Shown]
    baseline: Baseline
    measure: str
    units: str
    limit: float
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def flagged(self) -> list[Shown]:
        """The tiles to re-acquire, in acquisition order (the order of ``mhd-reacquire.txt``)."""
        return [s for s in self.tiles if s.flagged]


def _judge_section(records: list[TileRecord], rule: Rule) -> tuple[Judge, dict[str, TileRecord], Baseline]:
    judge = Judge(replace(rule, warmup=len(records) + 1))
    out: dict[str, TileRecord] = {}
    for rec in records:
        error = rec.error or (rec.reason or "error" if rec.verdict == "error" else None)
        fresh = replace(rec, verdict=None, kind=None, reason=None, focus_map=None, defocus=None, defocus_units=None, error=error)
        out.update((r.tile, r) for r in judge.add(fresh))
    base = judge.baseline()
    out.update((r.tile, r) for r in judge.flush())
    return judge, out, base


def section_verdicts(records: list[TileRecord], rule: Rule) -> tuple[dict[str, TileRecord], Baseline]:
    """Judge every tile against the whole section's baseline.

    Parameters
    ----------
    records : list of TileRecord
        The section's records (recorded verdicts, or fresh ``score_tiles``
        results read with :meth:`TileRecord.from_json`).
    rule : Rule

    Returns
    -------
    judged : dict of str to TileRecord
        Tile id -> a new record judged against the whole section
        (``verdict``, ``kind``, ``reason``, ``focus_map``, ...).
    baseline : Baseline
        The whole-section threshold.
    """
    _, out, base = _judge_section(records, rule)
    return out, base


def blur_threshold(judged: Iterable[TileRecord], rule: Rule) -> float:
    """Blur (px) above which a tile is out of focus, under a rule that judges by the blur.

    Parameters
    ----------
    judged : iterable of TileRecord
        The section judged as a whole (:func:`section_verdicts`): its
        ``ok`` and ``oof`` tiles set the section's focus (the lower quartile of their blurs) of the relative rule.
    rule : Rule
        The rule they were judged by (a blur calibration fixes the threshold).
    """
    if rule.calibration is not None:
        return rule.calibration.blur_threshold
    return Judge(rule, prior=judged).blur_threshold()


def view_section(name: str, records: Iterable[TileRecord], rule: Rule, positions: Path | None = None) -> SectionView:
    """The section as the report shows it: its records in acquisition order, judged once against the whole section.

    Raises
    ------
    ValueError
        For a bad positions file.
    """
    ordered = sorted(records, key=lambda r: natural_key(r.tile))
    judge, again, base = _judge_section(ordered, rule)
    pos = tile_positions([r.tile for r in ordered], positions)
    units = rule.calibration.units if rule.calibration is not None else ""
    shown = []
    for i, rec in enumerate(ordered):
        fresh = again[rec.tile]
        flagged = rec.verdict in ("oof", "error") or fresh.verdict == "oof"
        verdict, kind = _shown_verdict(rec, fresh, flagged)
        words = _what(rec, fresh, units) if flagged else ""
        shown.append(Shown(rec, fresh, verdict, kind, words, judge.explain(fresh), i, pos.get(rec.tile)))
    # the measure of most tiles (a log written before the blur existed mixes in the count's)
    measures = Counter(s.explanation.measure for s in shown if s.verdict != "error")
    measure = measures.most_common(1)[0][0] if measures else judge.explain(TileRecord("")).measure
    measured_in = next((s.explanation.units for s in shown if s.explanation.measure == measure), "")
    limits = sorted(s.explanation.limit for s in shown if s.explanation.measure == measure and math.isfinite(s.explanation.limit))
    limit = limits[len(limits) // 2] if limits else math.nan
    return SectionView(name, rule, shown, base, measure, measured_in, limit, pos)


def _shown_verdict(rec: TileRecord, fresh: TileRecord, flagged: bool) -> tuple[str, str | None]:
    """The verdict and kind every output shows: the union of recorded and hindsight ``oof``, errors first."""
    if rec.verdict == "error" or fresh.verdict == "error":
        return "error", None
    if not flagged:
        return rec.verdict or fresh.verdict or "ok", None
    kind = rec.kind if rec.verdict == "oof" and rec.kind else fresh.kind if fresh.verdict == "oof" else rec.kind
    return "oof", kind


def make_report(
    section: Path,
    rule: Rule,
    positions: Path | None = None,
    out: Path | None = None,
    results: Path | None = None,
    *,
    records: Iterable[TileRecord] | None = None,
    settings: dict[str, str] | None = None,
    progress: dict[str, float | int | None] | None = None,
) -> Report:
    """Write the report files of ``section``.

    ``results`` is the folder holding its ``mhd-results.jsonl`` (default:
    the section, see ``--results``); the report goes to ``out``, default
    ``<results>/mhd-report``. ``records`` (``client watch``) replaces reading
    the log; ``settings`` and ``progress`` are shown on the page.

    Raises
    ------
    FileNotFoundError
        If the section has no results yet.
    ValueError
        For a bad positions file.
    """
    results = results or section
    if records is None:
        recs, _ = read_records(results / RESULTS_NAME)
        records = list(recs.values())
    if not records:
        if results != section:  # results kept elsewhere (--results or the config): submit must write them there
            where = f" --results {results.parent}"
        else:  # a read-only section can only be scored with its results elsewhere
            where = "" if os.access(section, os.W_OK) else " --results DIR"
        raise FileNotFoundError(f"{results / RESULTS_NAME}: no results yet; run 'client submit --dir {section}{where}' first")
    view = view_section(section.name, records, rule, positions)
    folder = out or results / REPORT_DIR
    given = {
        "section": str(section),
        "results": str(results / RESULTS_NAME),
        "positions": str(positions) if positions else "from the names (r<row>_c<col>)" if view.positions else "none: no montage",
    }
    return write_report(view, section, folder, {**given, **settings_of(view), **(settings or {})}, progress)


def settings_of(view: SectionView) -> dict[str, str]:
    """What the records say of how the section was scored: where, how the tiles travelled, when."""

    def tally(values: Iterable[str | None]) -> str:
        counted = Counter(v for v in values if v)
        return ", ".join(f"{v} ({n})" for v, n in counted.most_common()) or "-"

    recs = [s.rec for s in view.tiles]
    times = sorted(r.scored_at for r in recs if r.scored_at)
    return {
        "scored on": tally(f"{r.backend} {r.device}" if r.device else r.backend for r in recs),
        "transport": tally(r.transport for r in recs),
        "first and last verdict": f"{times[0]} .. {times[-1]}" if times else "-",
    }


def write_report(view: SectionView, section: Path, folder: Path, settings: dict[str, str], progress: dict | None) -> Report:
    """Write the report of ``view`` into ``folder`` (made): the list and the CSV first, then the figures and the
    page, each file replaced whole; ``section`` is where the thumbnails are read."""
    folder.mkdir(parents=True, exist_ok=True)
    from . import figures
    from .page import render_page, section_state
    from .thumbs import thumbnails

    rep = Report(folder, folder / "mhd-results.csv", folder / "mhd-reacquire.txt", folder / "density.png", None,
                 [s.rec for s in view.tiles], view.baseline, view=view)  # fmt: skip
    write_atomic(rep.csv, _csv(view))
    write_atomic(
        rep.reacquire, "".join(f"{printable(s.rec.tile)}\t{printable(s.words)}\n" for s in view.flagged).encode(errors="surrogateescape")
    )
    drawn = {"focus.png": figures.measure(view), "montage.png": figures.section_map(view) if view.positions else None,
             "focus-maps.png": figures.cell_maps(view), "density.png": figures.density(view)}  # fmt: skip
    for name, png in drawn.items():
        if png is not None:
            write_atomic(folder / name, png)
    rep.focus, rep.montage, rep.focus_maps = (folder / n if drawn[n] else None for n in ("focus.png", "montage.png", "focus-maps.png"))
    state = section_state(view, settings, progress, {n: png for n, png in drawn.items() if png}, thumbnails(section, view))
    rep.page = folder / "index.html"
    write_atomic(rep.page, render_page(state).encode())
    return rep


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` whole: written beside it, then renamed over it (a reader sees old or new)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _csv(view: SectionView) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for s in view.tiles:
        r, c = s.position or (None, None)
        fmap = s.fresh.focus_map
        e = s.explanation
        w.writerow({
            **s.rec.to_json(), "index": s.index, "row": r, "col": c, "section_verdict": s.fresh.verdict,
            "section_kind": s.fresh.kind, "shown_verdict": s.verdict, "shown_kind": s.kind, "measure": e.measure,
            "value": None if e.value is None else round(e.value, 4), "limit": round(e.limit, 4) if math.isfinite(e.limit) else None,
            "focus_map": json.dumps(fmap, separators=(",", ":")) if fmap else None,
        })  # fmt: skip
    return buf.getvalue().encode(errors="surrogateescape")  # non-UTF-8 names as on disk


def _what(rec: TileRecord, fresh: TileRecord, units: str) -> str:
    """What to fix in a flagged tile: the recorded kind, else (older records, hindsight) the section's."""
    if rec.verdict == "error" or (rec.verdict == "oof" and rec.kind):
        return describe(rec, units)
    return describe(fresh if fresh.verdict == "oof" else rec, units)
