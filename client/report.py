"""``client report``: figures, a CSV and the re-acquisition list of a section.

Everything is written to ``<section>/mhd-report/``:

``density.png``
    Feature density per tile in acquisition order (log scale), coloured by
    verdict, with the section median and the OOF threshold.
``montage.png``
    Density over the montage (tiles placed by ``r<row>_c<col>`` in their
    names or a positions CSV), verdicts marked; only when positions are known.
``mhd-results.csv``
    One row per tile: recorded verdict and ``section_verdict``.
``mhd-reacquire.txt``
    Tile ids to image again, one per line: recorded or section verdict
    ``oof``, or ``error``.

``section_verdict`` re-judges every tile against the whole section's
baseline (hindsight: the recorded verdict used the section *so far*). The
re-acquisition list takes the union of both, so no tile that was flagged
either way is missed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .discover import RESULTS_NAME, natural_key, tile_positions
from .results import read_records
from .score import tissue_probe
from .verdicts import Baseline, Judge, Rule

__all__ = ["Report", "make_report", "section_verdicts"]

REPORT_DIR = "mhd-report"
CSV_COLUMNS = ("index", "tile", "row", "col", "verdict", "section_verdict", "reason", "features", "density", "defocus", "contrast", "error", "backend", "ms", "roundtrip_ms", "latency_ms", "scored_at")
COLOURS = {"ok": "tab:green", "oof": "tab:red", "empty": "tab:olive", "error": "tab:purple"}


@dataclass
class Report:
    """Files written by :func:`make_report` (``None`` when not made)."""

    folder: Path
    csv: Path
    reacquire: Path
    density: Path
    montage: Path | None
    records: list[dict]
    baseline: Baseline


def section_verdicts(records: list[dict], rule: Rule, section: Path | None = None) -> tuple[dict[str, str], Baseline]:
    """Judge every tile against the whole section's baseline.

    Parameters
    ----------
    records : list of dict
        The section's records (not modified).
    rule : Rule
    section : Path, optional
        To measure tissue in tiles never measured before.

    Returns
    -------
    verdicts : dict of str to str
        Tile id -> verdict.
    baseline : Baseline
        The whole-section threshold.
    """
    judge = Judge(replace(rule, warmup=len(records) + 1), tissue_probe(section) if section else None)
    for rec in records:
        fresh = {k: rec.get(k) for k in ("tile", "features", "density", "grid", "shape", "error", "contrast")}
        if rec.get("verdict") == "error":
            fresh["error"] = fresh["error"] or rec.get("reason") or "error"
        judge.add(fresh)
    base = judge.baseline()
    out = {r["tile"]: r["verdict"] for r in judge.flush()}
    out.update({r["tile"]: "error" for r in records if r["tile"] not in out})
    return out, base


def make_report(section: Path, rule: Rule, positions: Path | None = None, out: Path | None = None) -> Report:
    """Write the report files of ``section``.

    Raises
    ------
    FileNotFoundError
        If the section has no results yet.
    ValueError
        For a bad positions file.
    """
    recs, _ = read_records(section / RESULTS_NAME)
    if not recs:
        raise FileNotFoundError(f"{section / RESULTS_NAME}: no results yet; run 'client submit --dir {section}' first")
    records = sorted(recs.values(), key=lambda r: natural_key(r["tile"]))
    folder = out or section / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    again, base = section_verdicts(records, rule, section)
    pos = tile_positions([r["tile"] for r in records], positions)
    rep = Report(folder, folder / "mhd-results.csv", folder / "mhd-reacquire.txt", folder / "density.png", None, records, base)
    _write_csv(rep.csv, records, again, pos)
    _write_reacquire(rep.reacquire, records, again)
    _plot_density(rep.density, records, base, section.name)
    if pos:
        rep.montage = folder / "montage.png"
        _plot_montage(rep.montage, records, pos, base, section.name)
    return rep


def _write_csv(path: Path, records: list[dict], again: dict[str, str], pos: dict[str, tuple[int, int]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for i, rec in enumerate(records):
            r, c = pos.get(rec["tile"], (None, None))
            w.writerow({**rec, "index": i, "row": r, "col": c, "section_verdict": again[rec["tile"]]})


def _write_reacquire(path: Path, records: list[dict], again: dict[str, str]) -> None:
    bad = [r["tile"] for r in records if r["verdict"] in ("oof", "error") or again[r["tile"]] == "oof"]
    path.write_text("".join(f"{t}\n" for t in bad))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_density(path: Path, records: list[dict], base: Baseline, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, len(records) * 0.12)), 3.6), dpi=110)
    x = np.arange(len(records))
    for verdict, colour in COLOURS.items():
        idx = [i for i, r in enumerate(records) if r["verdict"] == verdict and r.get("density") is not None]
        ax.scatter(x[idx], [max(records[i]["density"], 1.0) for i in idx], s=18, color=colour, label=f"{verdict} ({len(idx)})", zorder=3)
    errs = [i for i, r in enumerate(records) if r["verdict"] == "error"]
    for i in errs:
        ax.axvline(i, color=COLOURS["error"], alpha=0.3, lw=1)
    ax.plot(x, [max(r.get("density") or 1.0, 1.0) for r in records], color="0.7", lw=0.8, zorder=1)
    if math.isfinite(base.threshold):
        ax.axhline(math.exp(base.threshold), color="tab:red", ls="--", lw=1, label="OOF threshold")
    if math.isfinite(base.median):
        ax.axhline(math.exp(base.median), color="0.4", ls=":", lw=1, label="section median")
    ax.set_yscale("log")
    ax.set_xlabel("tile (acquisition order)")
    ax.set_ylabel("features per megapixel")
    ax.set_title(f"{title}: feature density")
    ax.legend(fontsize=7, loc="best", ncols=3, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_montage(path: Path, records: list[dict], pos: dict[str, tuple[int, int]], base: Baseline, title: str) -> None:
    plt = _pyplot()
    rows = 1 + max(r for r, _ in pos.values())
    cols = 1 + max(c for _, c in pos.values())
    grid = np.full((rows, cols), np.nan)
    for rec in records:
        if rec["tile"] in pos and rec.get("density") is not None and rec["verdict"] != "empty":
            grid[pos[rec["tile"]]] = math.log(max(rec["density"], 1.0))
    centre = base.median if math.isfinite(base.median) else float(np.nanmedian(grid))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * cols, 0.9 + 0.6 * rows), dpi=110)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="0.8")  # grey: no tissue, no result, or no tile there
    im = ax.imshow(grid - centre, cmap=cmap, vmin=-1.5, vmax=1.5)
    marks = {"oof": "X", "empty": "o", "error": "!"}
    for rec in records:
        if rec["tile"] in pos and rec["verdict"] in marks:
            r, c = pos[rec["tile"]]
            ax.text(c, r, marks[rec["verdict"]], ha="center", va="center", fontsize=11, fontweight="bold")
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.set_title(f"{title}\nX oof, o empty (grey), ! error", fontsize=9)
    fig.colorbar(im, ax=ax, label="log density - section median")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
