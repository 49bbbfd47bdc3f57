"""``client report``: figures, a CSV and the re-acquisition list of a section.

Everything is written to ``<section>/mhd-report/``:

``density.png``
    Feature density per tile in acquisition order (log scale), coloured by
    verdict (out-of-focus tiles marked by kind), with the section median;
    and the OOF threshold of the measure the verdicts use
    (:attr:`Rule.measure`): on the density when it is the count, else on a
    second panel, the blur (px) of each tile.
``montage.png``
    Density over the montage (tiles placed by ``r<row>_c<col>`` in their
    names or a positions CSV), verdicts and kinds marked (an astigmatic tile
    with a line along its direction of strongest blur); only when positions
    are known.
``focus-maps.png``
    One small map per flagged tile: the density of each cell of the
    detector's grid relative to the section median (``focus_map``), so a
    partly defocused tile shows which of its regions are out of focus; only
    when some flagged tile has a grid.
``mhd-results.csv``
    One row per tile: recorded ``verdict`` and ``kind``, ``section_verdict``
    and ``section_kind``, the astigmatism measure and the section
    ``focus_map`` (JSON, rows of cells).
``mhd-reacquire.txt``
    Tiles to image again (recorded or section verdict ``oof``, or ``error``),
    one per line: the tile id, a tab, and what to fix, e.g.
    ``tile_r1_c2.png<TAB>astigmatism 34 deg`` (turn the stigmators; blur
    along 34 degrees), ``...<TAB>defocus`` (refocus),
    ``...<TAB>partial: cells 0,3 1,3 low`` or ``...<TAB>error``.
    ``cut -f1 mhd-reacquire.txt`` lists the ids alone. Re-imaged tiles
    written under the same names are scored again by the next ``client
    submit`` (or by a ``client watch`` that is running): their file's size
    or modification time differs from the version recorded.

``section_verdict`` re-judges every tile against the whole section's
baseline (hindsight: the recorded verdict used the section *so far*). The
re-acquisition list takes the union of both, so no tile that was flagged
either way is missed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from mhd.contracts.files import REPORT_DIR, RESULTS_NAME
from mhd.contracts.record import TileRecord, finite
from mhd.contracts.verdicts import LOOKS, Kind, Verdict, look

from .console import printable
from .discover import natural_key, tile_positions
from .judge import Baseline, Judge
from .results import read_records
from .rule import Rule
from .wording import describe

__all__ = ["Report", "blur_threshold", "make_report", "section_verdicts"]

CSV_COLUMNS = (
    "index", "tile", "row", "col", "verdict", "kind", "section_verdict", "section_kind", "reason",
    "features", "density", "blur", "blur_err", "defocus", "defocus_units", "astigmatism", "astigmatism_angle", "focus_map",
    "contrast", "error", "backend", "ms", "roundtrip_ms", "latency_ms", "scored_at",
)  # fmt: skip
#: Most tiles drawn in focus-maps.png.
MAX_MAPS = 48


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
    judge = Judge(replace(rule, warmup=len(records) + 1))
    out: dict[str, TileRecord] = {}
    for rec in records:
        error = rec.error or (rec.reason or "error" if rec.verdict == "error" else None)
        fresh = replace(rec, verdict=None, kind=None, reason=None, focus_map=None, defocus=None, defocus_units=None, error=error)
        out.update((r.tile, r) for r in judge.add(fresh))
    base = judge.baseline()
    out.update((r.tile, r) for r in judge.flush())
    return out, base


def blur_threshold(judged: Iterable[TileRecord], rule: Rule) -> float:
    """Blur (px) above which a tile is out of focus, under a rule that judges by the blur.

    Parameters
    ----------
    judged : iterable of TileRecord
        The section judged as a whole (:func:`section_verdicts`): its
        ``ok`` and ``oof`` tiles set the median blur of the relative rule.
    rule : Rule
        The rule they were judged by (a blur calibration fixes the threshold).
    """
    if rule.calibration is not None:
        return rule.calibration.blur_threshold
    return Judge(rule, prior=judged).blur_threshold()


def make_report(section: Path, rule: Rule, positions: Path | None = None, out: Path | None = None, results: Path | None = None) -> Report:
    """Write the report files of ``section``.

    ``results`` is the folder holding its ``mhd-results.jsonl`` (default:
    the section, see ``--results``); the report goes to ``out``, default
    ``<results>/mhd-report``.

    Raises
    ------
    FileNotFoundError
        If the section has no results yet.
    ValueError
        For a bad positions file.
    """
    results = results or section
    recs, _ = read_records(results / RESULTS_NAME)
    if not recs:
        if results != section:  # results kept elsewhere (--results or the config): submit must write them there
            where = f" --results {results.parent}"
        else:  # a read-only section can only be scored with its results elsewhere
            where = "" if os.access(section, os.W_OK) else " --results DIR"
        raise FileNotFoundError(f"{results / RESULTS_NAME}: no results yet; run 'client submit --dir {section}{where}' first")
    records = sorted(recs.values(), key=lambda r: natural_key(r.tile))
    folder = out or results / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    again, base = section_verdicts(records, rule)
    pos = tile_positions([r.tile for r in records], positions)
    rep = Report(folder, folder / "mhd-results.csv", folder / "mhd-reacquire.txt", folder / "density.png", None, records, base)
    units = rule.calibration.units if rule.calibration is not None else ""
    _write_csv(rep.csv, records, again, pos)
    flagged = _flagged(records, again)
    _write_reacquire(rep.reacquire, flagged, again, units)
    by_blur = rule.measure == "blur" and any(finite(r.blur) is not None for r in records)  # without blurs (older records) the count decides
    _plot_density(rep.density, records, base, section.name, blur_threshold(again.values(), rule) if by_blur else None)
    if pos:
        rep.montage = folder / "montage.png"
        _plot_montage(rep.montage, records, pos, base, section.name)
    maps = [(rec, again[rec.tile]) for rec in flagged if again[rec.tile].focus_map]
    if maps:
        rep.focus_maps = folder / "focus-maps.png"
        ref = "calibrated in-focus density" if rule.calibration is not None else "section median"
        _plot_focus_maps(rep.focus_maps, maps, units, f"{section.name}: focus maps of flagged tiles, cell density / {ref}")
    return rep


def _write_csv(path: Path, records: list[TileRecord], again: dict[str, TileRecord], pos: dict[str, tuple[int, int]]) -> None:
    with path.open("w", newline="", errors="surrogateescape") as fh:  # non-UTF-8 names as on disk
        w = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for i, rec in enumerate(records):
            r, c = pos.get(rec.tile, (None, None))
            fresh = again[rec.tile]
            fmap = fresh.focus_map
            w.writerow({
                **rec.to_json(), "index": i, "row": r, "col": c, "section_verdict": fresh.verdict, "section_kind": fresh.kind,
                "focus_map": json.dumps(fmap, separators=(",", ":")) if fmap else None,
            })  # fmt: skip


def _flagged(records: list[TileRecord], again: dict[str, TileRecord]) -> list[TileRecord]:
    """Records to re-acquire: recorded ``oof`` or ``error``, or ``oof`` against the whole section."""
    return [r for r in records if r.verdict in ("oof", "error") or again[r.tile].verdict == "oof"]


def _write_reacquire(path: Path, flagged: list[TileRecord], again: dict[str, TileRecord], units: str) -> None:
    lines = (f"{printable(rec.tile)}\t{printable(_what(rec, again[rec.tile], units))}\n" for rec in flagged)
    path.write_text("".join(lines), errors="surrogateescape")


def _what(rec: TileRecord, fresh: TileRecord, units: str) -> str:
    """What to fix in a flagged tile: the recorded kind, else (older records, hindsight) the section's."""
    if rec.verdict == "error" or (rec.verdict == "oof" and rec.kind):
        return describe(rec, units)
    return describe(fresh if fresh.verdict == "oof" else rec, units)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_density(path: Path, records: list[TileRecord], base: Baseline, title: str, blur_limit: float | None = None) -> None:
    """density.png. ``blur_limit``: the verdicts' blur threshold (px) when they judge by the blur (a second
    panel then shows each tile's blur against it); ``None`` when they judge by the count (its threshold is drawn)."""
    plt = _pyplot()
    width = 1.6 + max(6.0, min(16.0, len(records) * 0.12))
    if blur_limit is None:
        fig, ax = plt.subplots(figsize=(width, 3.6), dpi=110)
        panels = [ax]
    else:
        fig, panels = plt.subplots(2, 1, sharex=True, figsize=(width, 6.4), dpi=110)
        ax = panels[0]
    x = np.arange(len(records))
    # the axis spans the tiles with tissue; an empty tile (no features) sits on its bottom edge, not four decades below
    shown = [r.density for r in records if r.verdict != "empty" and r.density]
    bottom = min(shown) / 2 if shown else 1.0
    _scatter_verdicts(ax, x, records, lambda r: None if r.density is None else max(r.density, bottom), legend=True)
    ax.plot(x, [max(r.density or bottom, bottom) for r in records], color="0.7", lw=0.8, zorder=1)
    if blur_limit is None and math.isfinite(base.threshold):
        ax.axhline(math.exp(base.threshold), color="tab:red", ls="--", lw=1, label="OOF threshold")
    if math.isfinite(base.median):
        ax.axhline(math.exp(base.median), color="0.4", ls=":", lw=1, label="section median")
    ax.set_yscale("log")
    ax.set_ylabel("features per megapixel")
    if blur_limit is None:
        ax.set_title(f"{title}: feature density")
    else:
        ax.set_title(f"{title}: feature density, and the blur the verdicts use")
        bx = panels[1]
        _scatter_verdicts(bx, x, records, lambda r: finite(r.blur), legend=False)
        if math.isfinite(blur_limit):
            bx.axhline(blur_limit, color="tab:red", ls="--", lw=1, label="OOF threshold (blur)")
            bx.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.8)
        bx.set_ylabel("blur (px)")
    for panel in panels:
        for i, r in enumerate(records):
            if r.verdict == "error":
                panel.axvline(i, color=LOOKS[Verdict.ERROR].colour, alpha=0.3, lw=1)
    panels[-1].set_xlabel("tile (acquisition order)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.8)  # beside the axes: never over a tile
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _scatter_verdicts(ax, x: np.ndarray, records: list[TileRecord], value: Callable[[TileRecord], float | None], *, legend: bool) -> None:
    """One point per tile with a ``value``, coloured by verdict, out-of-focus tiles marked by kind."""
    groups = [(v, None) for v in Verdict if v is not Verdict.OOF] + [(Verdict.OOF, k) for k in (*Kind, None)]
    for verdict, kind in groups:
        idx = [i for i, r in enumerate(records) if _group(r) == (verdict, kind) and value(r) is not None]
        if idx or (legend and verdict is not Verdict.OOF):
            shown = look(verdict, kind)
            ax.scatter(
                x[idx],
                [value(records[i]) for i in idx],
                s=22,
                marker=shown.marker,
                color=shown.colour,
                label=f"{f'oof: {kind}' if kind else verdict} ({len(idx)})" if legend else None,
                zorder=3,
            )


def _group(rec: TileRecord) -> tuple[str | None, str | None]:
    """A record's verdict, and its kind where the verdict is ``oof`` and the kind one this version knows."""
    known = rec.verdict == Verdict.OOF and rec.kind in Kind._value2member_map_
    return rec.verdict, rec.kind if known else None


def _plot_montage(path: Path, records: list[TileRecord], pos: dict[str, tuple[int, int]], base: Baseline, title: str) -> None:
    plt = _pyplot()
    rows = 1 + max(r for r, _ in pos.values())
    cols = 1 + max(c for _, c in pos.values())
    grid = np.full((rows, cols), np.nan)
    for rec in records:
        if rec.tile in pos and rec.density is not None and rec.verdict != "empty":
            grid[pos[rec.tile]] = math.log(max(rec.density, 1.0))
    centre = base.median if math.isfinite(base.median) else float(np.nanmedian(grid))
    fig, ax = plt.subplots(figsize=(max(4.4, 1.2 + 0.6 * cols), 1.1 + 0.6 * rows), dpi=110)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="0.8")  # grey: no tissue, no result, or no tile there
    im = ax.imshow(grid - centre, cmap=cmap, vmin=-1.5, vmax=1.5)
    for rec in records:
        if rec.tile in pos and rec.verdict != "ok":
            r, c = pos[rec.tile]
            mark = look(rec.verdict, rec.kind).mark
            ink = text_colour(im.cmap(im.norm(grid[r, c] - centre)))  # readable on the cell (dark red: white)
            ax.text(c, r, mark, ha="center", va="center", fontsize=11, fontweight="bold", color=ink)
            angle = rec.astigmatism_angle
            if rec.kind == "astigmatism" and angle is not None:
                dx, dy = 0.42 * math.cos(math.radians(angle)), -0.42 * math.sin(math.radians(angle))  # rows point down
                ax.plot([c - dx, c + dx], [r - dy, r + dy], color=ink, lw=1.2)
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.set_title(f"{title}\nX defocus, A astigmatism (line: blur direction),\nP partial, o empty (grey), ! error", fontsize=7)
    fig.colorbar(im, ax=ax, label="log density - section median")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


#: Colour-bar ticks of focus-maps.png (cell density / baseline).
RATIO_TICKS = (0.25, 0.5, 1.0, 2.0, 4.0)


def text_colour(rgba: tuple) -> str:
    """``"black"`` on light colours, ``"white"`` on dark ones (relative luminance, WCAG)."""

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # contrast with black (L + 0.05) / 0.05 against white 1.05 / (L + 0.05): equal at L ~ 0.179
    return "black" if luminance > 0.179 else "white"


def _plot_focus_maps(path: Path, maps: list[tuple[TileRecord, TileRecord]], units: str, title: str) -> None:
    """Small multiples: each flagged tile's cells, density relative to the baseline.

    Colours follow the ratio on a log scale (the colour bar is labelled in
    ratios, like the numbers in the cells); each number is written in black
    or white, whichever is readable on its cell's colour.

    Parameters
    ----------
    maps : list of (record, section record)
        Flagged tiles; the section record holds the ``focus_map``.
    """
    plt = _pyplot()
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FixedLocator, FuncFormatter

    norm = LogNorm(vmin=math.exp(-1.5), vmax=math.exp(1.5), clip=True)
    cmap = plt.get_cmap("RdYlGn")
    shown = maps[:MAX_MAPS]
    ncols = min(6, len(shown))
    nrows = -(-len(shown) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 + 1.8 * ncols, 0.6 + 2.2 * nrows), dpi=110, squeeze=False, layout="constrained")
    im = None
    for ax, (rec, fresh) in zip(axes.flat, shown):
        ratio = np.maximum(np.asarray(fresh.focus_map, float), 0.01)
        im = ax.imshow(ratio, cmap=cmap, norm=norm)
        if ratio.size <= 64:
            for (i, j), v in np.ndenumerate(ratio):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6, color=text_colour(cmap(norm(v))))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{rec.tile}\n" + textwrap.fill(_what(rec, fresh, units), 30), fontsize=6)
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    more = f" (first {MAX_MAPS} of {len(maps)})" if len(maps) > MAX_MAPS else ""
    fig.suptitle(f"{title}{more}", fontsize=9)
    bar = fig.colorbar(im, ax=axes, shrink=0.8, label="cell density / baseline (log scale)")
    bar.ax.yaxis.set_major_locator(FixedLocator(RATIO_TICKS))
    bar.ax.yaxis.set_minor_locator(FixedLocator([]))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    fig.savefig(path)
    plt.close(fig)
