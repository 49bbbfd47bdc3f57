"""``client focus-sweep``: the best working distance from a focus sweep.

An operator (or an auto-focus script) images one field at a few working
distances (WD) around the expected focus; the MHD feature count peaks at
best focus. Each image is scored in this process (the detector of
``client score``), and :func:`mhd.functions.focus.best_focus` fits
``log(count)`` around the highest count (a Gaussian in WD): best WD, its
standard error, and a status ``ok`` / ``edge`` (the peak is at or beyond an
end of the sweep: extend it) / ``no_peak``.

Working distance per image
    From a CSV with columns ``file`` and ``wd`` (file names relative to the
    sweep folder), or from the file name: ``wd`` followed by an optional
    ``_`` or ``=``, the number, and optionally its unit, e.g.
    ``sweep_wd5.002mm.png`` (5.002 mm), ``img_wd-3.0um.tif`` (**minus** 3.0
    um: a ``-`` after ``wd`` is the sign), ``wd=12.5.png``. Any regular
    expression can replace that (``--pattern``; group 1 is the number,
    an optional group 2 the unit).
Units
    ``nm``, ``um`` (also written ``µm``) or ``mm``, from the names (or CSV
    values such as ``5.002mm``) or ``--units``; one unit for the whole
    sweep, never guessed: a sweep without units is refused. Results are in
    that unit.

The same fit on the endpoint: ``best_focus`` is pure NumPy, so counts that
the registered ``score_tiles`` function returned can be fitted anywhere::

    from mhd.functions.focus import best_focus
    results = future.result()              # score_tiles on the sweep's images
    bf = best_focus([wd[r["tile"]] for r in results], [r["features"] for r in results])
    bf.wd, bf.uncertainty, bf.status
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mhd.functions.focus import BestFocus, best_focus

from .discover import discover, match_names
from .score import score_file

__all__ = ["DEFAULT_PATTERN", "Sweep", "SweepImage", "fit_sweep", "plot_sweep", "score_sweep", "summary_lines", "wd_table"]

log = logging.getLogger(__name__)

#: WD from names like ``sweep_wd5.002mm.png``, ``img_wd-3.0um.tif``, ``wd=12.5.png``.
DEFAULT_PATTERN = r"(?<![a-z])wd[_=]?([+-]?\d+(?:\.\d+)?)\s*(nm|um|µm|μm|mm)?"

#: Accepted spellings of each unit (lower case; micro sign and Greek mu both read as um).
_UNITS = {"nm": "nm", "um": "um", "µm": "um", "μm": "um", "mm": "mm"}
_VALUE = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(nm|um|µm|μm|mm)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class SweepImage:
    """One image of the sweep and its score.

    Attributes
    ----------
    file : str
        Path relative to the sweep folder.
    wd : float
        Working distance (the sweep's units).
    features : int or None
        Feature count (``None`` when scoring failed).
    density : float or None
        Features per megapixel.
    shape : tuple of int or None
        (rows, cols) pixels.
    error : str or None
        Why the image could not be scored (it is then left out of the fit).
    """

    file: str
    wd: float
    features: int | None
    density: float | None
    shape: tuple[int, int] | None
    error: str | None


@dataclass(frozen=True)
class Sweep:
    """A scored sweep and its best focus.

    Attributes
    ----------
    folder : Path
    units : str
        ``"nm"``, ``"um"`` or ``"mm"``.
    images : list of SweepImage
        Sorted by WD (failed images included).
    focus : BestFocus
        Fitted on the scored images (``wd`` and ``uncertainty`` in ``units``).
    points : int
        Distinct working distances the fit was asked to use.
    """

    folder: Path
    units: str
    images: list[SweepImage]
    focus: BestFocus
    points: int

    @property
    def scored(self) -> list[SweepImage]:
        """Images with a count."""
        return [im for im in self.images if im.error is None]

    @property
    def step(self) -> float:
        """Median spacing of the distinct working distances scored (``units``)."""
        levels = np.unique([im.wd for im in self.scored])
        return float(np.median(np.diff(levels)))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (non-finite numbers as ``None``).

        Returns
        -------
        dict
            ``best_wd``, ``uncertainty``, ``units``, ``status``, ``message``,
            ``r``, ``peak_count``, ``width``, ``n_points``, ``points``,
            ``step``, ``folder`` and ``images`` (``file``, ``wd``,
            ``features``, ``density``, ``error``).
        """
        f = self.focus
        return {
            "folder": str(self.folder),
            "units": self.units,
            "best_wd": _num(f.wd),
            "uncertainty": _num(f.uncertainty),
            "status": f.status,
            "message": f.message,
            "r": _num(f.r),
            "peak_count": _num(f.peak_count),
            "width": _num(f.width),
            "n_points": f.n_points,
            "points": self.points,
            "step": _num(self.step),
            "images": [
                {"file": im.file, "wd": im.wd, "features": im.features, "density": im.density, "error": im.error} for im in self.images
            ],
        }


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _unit(text: str | None) -> str | None:
    return None if text is None else _UNITS[text.lower()]


def _parse_value(text: str, where: str) -> tuple[float, str | None]:
    m = _VALUE.fullmatch(text or "")
    if not m:
        raise ValueError(f"{where}: working distance {text!r} is not a number (with an optional unit nm, um or mm)")
    return float(m.group(1)), _unit(m.group(2))


def wd_table(
    folder: Path, csv_path: Path | None = None, pattern: str = DEFAULT_PATTERN, units: str | None = None
) -> tuple[dict[str, float], str]:
    """Working distance of each image of a sweep, and their unit.

    Parameters
    ----------
    folder : Path
        The sweep folder (images found recursively, as by ``client submit``).
    csv_path : Path, optional
        CSV with columns ``file`` and ``wd``; without it the WD comes from
        the file names through ``pattern``.
    pattern : str
        Regular expression searched in each file name (case-insensitive):
        group 1 the number, optional group 2 the unit.
    units : str, optional
        ``nm``, ``um`` or ``mm``, for working distances written without one
        (or to confirm those written with one).

    Returns
    -------
    table : dict of str to float
        Relative path -> working distance. Images without one are left out
        (and logged).
    units : str
        The sweep's unit.

    Raises
    ------
    ValueError
        For a CSV without ``file``/``wd`` columns or a value that is not a
        number (the message names the line), a bad regular expression,
        mixed units, units that contradict ``units``, or no units at all.
    """
    images = [t.id for t in discover(folder).tiles]
    found = _from_csv(csv_path, images) if csv_path is not None else _from_names(images, pattern)
    if images and not found:
        how = "in its file,wd rows" if csv_path is not None else "in its name (e.g. wd_5.002mm.png; --pattern)"
        raise ValueError(f"{folder}: no image has a working distance {how}")
    for f in images:
        if f not in found:
            log.warning("%s: no working distance for this image; left out", f)
    return {f: v for f, (v, _) in found.items()}, _sweep_units(found, units)


def _from_csv(path: Path, images: list[str]) -> dict[str, tuple[float, str | None]]:
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"file", "wd"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: needs columns file and wd")
        rows = {row["file"]: _parse_value(row["wd"], f"{path}:{line}") for line, row in enumerate(reader, start=2)}
    return {f: rows[f] for f in images if f in rows}


def _from_names(images: list[str], pattern: str) -> dict[str, tuple[float, str | None]]:
    found = {}
    for f, m in match_names(images, pattern, "working distance").items():
        unit = m.group(2) if m.re.groups >= 2 else None
        found[f] = _parse_value(m.group(1) + (unit or ""), f)
    return found


def _sweep_units(found: dict[str, tuple[float, str | None]], units: str | None) -> str:
    given = _unit(units) if units else None
    written = {u for _, u in found.values()}
    if len(written - {None}) > 1:
        raise ValueError(f"working distances in mixed units ({', '.join(sorted(written - {None}))}): use one unit for the sweep")
    if None in written and len(written) > 1:
        bare = sorted(f for f, (_, u) in found.items() if u is None)
        raise ValueError(f"some working distances have a unit and some do not (e.g. {bare[0]}): use one unit for the sweep")
    unit = next(iter(written)) if written else None
    if unit and given and unit != given:
        raise ValueError(f"working distances are in {unit}, not --units {given}")
    if not (unit or given):
        raise ValueError("working distances have no unit: name files like wd_5.002mm.png, write 5.002mm in the CSV, or give --units")
    return unit or given


def score_sweep(folder: Path, table: dict[str, float], params: dict | None = None) -> list[SweepImage]:
    """Score each image in this process; a failed image gets its error (and is logged).

    Returns
    -------
    list of SweepImage
        Sorted by working distance, then name.
    """
    out = []
    for f, wd in sorted(table.items(), key=lambda kv: (kv[1], kv[0])):
        rec = score_file(folder / f, **(params or {}))
        if rec.error:
            log.warning("%s; left out", rec.error)
        out.append(SweepImage(f, wd, rec.features, rec.density, tuple(rec.shape) if rec.shape else None, rec.error))
    return out


def fit_sweep(folder: Path, images: list[SweepImage], units: str, points: int = 5) -> Sweep:
    """Best focus of the scored images (:func:`mhd.functions.focus.best_focus` on their counts).

    Raises
    ------
    ValueError
        With scored images of different sizes (counts would not compare),
        or fewer than 3 distinct working distances scored.
    """
    good = [im for im in images if im.error is None]
    shapes = {im.shape for im in good}
    if len(shapes) > 1:
        raise ValueError(
            f"images of different sizes ({', '.join(f'{r}x{c}' for r, c in sorted(shapes))}): a focus sweep images one field at one size"
        )
    if len({im.wd for im in good}) < 3:
        raise ValueError(
            f"need scored images at 3 or more distinct working distances, got {len(good)} image(s) at {len({im.wd for im in good})}"
        )
    focus = best_focus([im.wd for im in good], [im.features for im in good], points=points)
    return Sweep(folder, units, images, focus, points)


def plot_sweep(sweep: Sweep, path: Path) -> Path:
    """Feature count against working distance (log scale), the fitted Gaussian and the best WD.

    Returns
    -------
    Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, u = sweep.focus, sweep.units
    wd = np.array([im.wd for im in sweep.scored])
    counts = np.array([max(im.features, 1) for im in sweep.scored], float)
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=110)
    ax.scatter(wd, counts, color="tab:blue", zorder=3, label="images")
    if f.ok:
        xs = np.linspace(wd.min(), wd.max(), 400)
        fitted = f.peak_count * np.exp(-0.5 * ((xs - f.wd) / f.width) ** 2)
        fitted[fitted < counts.min() / 1.5] = np.nan  # the Gaussian holds near the peak only: not drawn far below the data
        ax.plot(xs, fitted, color="tab:red", label=f"fit ({f.n_points} images), r = {f.r:.3f}")
        ax.axvspan(f.wd - f.uncertainty, f.wd + f.uncertainty, color="tab:red", alpha=0.15, lw=0)
        ax.axvline(f.wd, color="tab:red", lw=1, label=f"best WD {_fmt(f.wd, sweep.step)} ± {_fmt(f.uncertainty, sweep.step)} {u}")
    else:
        ax.axvline(f.wd, color="0.4", ls="--", lw=1, label=f"highest count at {_fmt(f.wd, sweep.step)} {u} ({f.status})")
    ax.set_yscale("log")
    ax.set_xlabel(f"working distance ({u})")
    ax.set_ylabel("MHD features")
    ax.set_title("Focus sweep" if f.ok else f"Focus sweep: no peak inside ({f.status})", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: float, step: float) -> str:
    """``value`` with the decimals that resolve a twentieth of ``step``."""
    if not math.isfinite(value):
        return str(value)
    decimals = max(0, 1 - math.floor(math.log10(step))) if step > 0 else 3
    return f"{value:.{decimals}f}"


def summary_lines(sweep: Sweep) -> list[str]:
    """What ``client focus-sweep`` prints: one line per image, then the result."""
    u, step, f = sweep.units, sweep.step, sweep.focus
    width = max(len(im.file) for im in sweep.images)
    lines = [f"{'image':<{width}}  {'WD (' + u + ')':>10}  {'features':>8}"]
    for im in sweep.images:
        count = f"{im.features:8d}" if im.error is None else "   error"
        lines.append(f"{im.file:<{width}}  {_fmt(im.wd, step):>10}  {count}")
    if f.ok:
        lines.append(
            f"best WD {_fmt(f.wd, step)} ± {_fmt(f.uncertainty, step)} {u}   (r = {f.r:.3f}, status ok, fit of "
            f"{f.n_points} images, step {_fmt(step, step)} {u})"
        )
    else:
        lines.append(f"no best focus inside the sweep (status {f.status}): {f.message}")
        lines.append(f"highest count at WD {_fmt(f.wd, step)} {u}   (r = {f.r:.3f})")
    return lines
