"""``client calibrate``: fit a focus measure against defocus on a through-focus series.

Two laws, one per focus measure:

* **blur** (default): the blur (px, ``Detection.blur``) of the in-focus probe
  and the widening of the defocused one add in quadrature, so
  ``blur**2 = a + b defocus**2`` (a disk of radius ``alpha |defocus|`` has a
  Gaussian equivalent ``alpha |defocus| / 2``). It holds across doses (the
  blur does not move with noise), so one calibration serves fast and slow scans.
* **count**: as in the paper's figure 2, ``log(count)`` falls linearly with
  ``|defocus|``. The fit uses ``log(density)`` (features per megapixel), which
  for images of one size differs from ``log(count)`` by a constant, so slope
  and ``r`` are the same, and which stays valid for tiles of another size.
  It holds for one dose: the count also falls with noise.

Measured (``bench/sem_focus.py sim``): within each dose from 2 to 80 electrons
per pixel, in-focus against out-of-focus AUC is 0.998 .. 1.000 for the blur
and 0.78 .. 0.98 for the count, which is why the blur is the default.

Defocus per image comes from a CSV (columns ``file`` and ``defocus``; file
names relative to the series folder) or from a regular expression on the
file name whose first group is the defocus (default: ``df-1.5um`` style).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from .calibration import Fit
from .discover import discover, match_names
from .score import score_file

__all__ = ["DEFAULT_PATTERN", "defocus_table", "plot_fit", "score_series"]

log = logging.getLogger(__name__)


#: Defocus from names like ``focus_df-1.5um.png``, ``z+2.png``, ``defocus_3``.
DEFAULT_PATTERN = r"(?:df|defocus|z)[_=]?([+-]?\d+(?:\.\d+)?)"


def defocus_table(folder: Path, csv_path: Path | None = None, pattern: str = DEFAULT_PATTERN) -> dict[str, float]:
    """Defocus of each image of the series.

    Returns
    -------
    dict of str to float
        Relative path -> defocus. Images without a defocus are left out (and
        logged).

    Raises
    ------
    ValueError
        For a CSV without ``file``/``defocus`` columns or a non-numeric
        defocus (the message names the line), or a bad regular expression.
    """
    images = [t.id for t in discover(folder).tiles]
    if csv_path is not None:
        table = _read_csv(csv_path)
        found = {f: table[f] for f in images if f in table}
    else:
        found = {f: float(m.group(1)) for f, m in match_names(images, pattern, "defocus").items()}
    for f in images:
        if f not in found:
            log.warning("%s: no defocus for this image; left out", f)
    return found


def _read_csv(path: Path) -> dict[str, float]:
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"file", "defocus"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: needs columns file and defocus")
        out = {}
        for line, row in enumerate(reader, start=2):
            try:
                out[row["file"]] = float(row["defocus"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: defocus {row['defocus']!r} is not a number") from None
    return out


def score_series(
    folder: Path, defocus: dict[str, float], params: dict | None = None, measure: str = "count"
) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Score the images in-process; failed images (and, for the blur, images without one) are logged and left out.

    Returns
    -------
    files : list of str
    defocus : (n,) float64 ndarray
    values : (n,) float64 ndarray
        Features per megapixel (``measure="count"``) or blur in px (``"blur"``).
    failed : list of str
        The errors of the images that could not be scored.
    """
    files, dz, vals, failed = [], [], [], []
    for f, d in defocus.items():
        rec = score_file(folder / f, **(params or {}))
        if rec.error:
            log.warning("%s; left out", rec.error)
            failed.append(rec.error)
            continue
        value = rec.density if measure == "count" else rec.blur
        if value is None:
            log.warning("%s: no detail above the noise at any scale: no blur; left out", f)
            continue
        files.append(f)
        dz.append(d)
        vals.append(value)
    return files, np.array(dz, float), np.array(vals, float), failed


def plot_fit(result: Fit, path: Path) -> Path:
    """The measure against |defocus| with the fitted law (for the count, the paper's figure 2b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = result.calibration
    ad = np.abs(result.defocus)
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=110)
    ax.scatter(ad, result.density, color="tab:blue", zorder=3, label="images")
    xs = np.linspace(0, ad.max() * 1.05, 50)
    if cal.measure == "blur":
        ax.plot(
            xs,
            np.sqrt(np.maximum(cal.intercept + cal.slope * xs**2, 0)),
            color="tab:red",
            label=f"fit: blur$^2$ = {cal.intercept:.2f} + {cal.slope:.3f} defocus$^2$, r = {cal.r:.3f}",
        )
        ax.set_ylabel("blur (px)")
        ax.set_title("Blur through focus")
    else:
        ax.plot(
            xs,
            np.exp(cal.intercept + cal.slope * xs),
            color="tab:red",
            label=f"fit: r = {cal.r:.4f}, slope = {cal.slope:.3f} / {cal.units}",
        )
        ax.set_yscale("log")
        ax.set_ylabel("features per megapixel")
        ax.set_title("Feature density through focus")
    ax.axvline(cal.max_defocus, color="0.5", ls="--", lw=1, label=f"max |defocus| {cal.max_defocus:g} {cal.units}")
    ax.set_xlabel(f"|defocus| ({cal.units})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
