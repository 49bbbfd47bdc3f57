"""Does the blur follow the microscope's own focus? Real SEM scans against their FEI record.

Commands::

    python bench/focus_record.py extract DIR > tests/data/sem-kriss/record.csv   # the record of the source's TIFFs
    python bench/focus_record.py fit [--originals DIR]                          # blur against the record

The sem-kriss scans (``tests/data/sem-kriss/README.md``) were taken one field after
another while the stage travelled about 0.7 mm with the working distance (the focus)
fixed, except where the operator changed it: by -1.3 um between fields 001 and 002 (at
the same place), by +0.1 um before 003, and by -2.1 um between 038 and 039. A specimen
whose surface is not quite perpendicular to the beam then drifts out of focus as the
stage travels, whatever the fields show.

``fit`` measures the blur of each scan and fits the record's model of it: the
defocus of field ``i`` is ``dz_i = WD_i - (d0 + gx x_i + gy y_i)`` (the working
distance set, minus the specimen's height at the stage position ``x, y``: a tilted
plane), and a disk-shaped probe of radius proportional to ``|dz|`` adds it in
quadrature::

    blur_i**2 = b0**2 + (kappa dz_i)**2

with five numbers for all fields (``b0`` px, ``kappa`` px/um, ``d0`` um, ``gx``,
``gy`` um/mm). It prints them, the correlation and the rms residual (what the fields'
content and the estimate's noise leave), each field's defocus and blur, and the blur
of the ``line/`` series (another 50 fields of the same specimen, taken before, with
other scan settings) predicted from the ``time/`` series' fit alone.

``record_defocus`` gives the bench of the verdicts (``bench/blur_validation.py``) each
field's blur added by defocus, ``kappa |dz|`` (px), from the slow scans' fit.

Data: ``tests/data/sem-kriss/record.csv`` (vendored: the FEI metadata of the 200
original TIFFs of the source, ``extract``'s output) and the images: the PNGs of
``MHD_KRISS_DIR`` (default ``tests/data/sem-kriss``; ``../shared/data/sem-kriss``
holds fields 001-025), and with ``--originals DIR`` the source's ``Data/`` folder
(all 50 fields).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import scipy.optimize

ROOT = Path(__file__).resolve().parents[1]
KRISS = Path(os.environ.get("MHD_KRISS_DIR", ROOT / "tests" / "data" / "sem-kriss"))
RECORD = ROOT / "tests" / "data" / "sem-kriss" / "record.csv"
#: The source's folders (under its ``Data/``) and the name of each scan here: ``(folder, file prefix, series, scan)``.
SERIES = (
    ("time/high", "30us", "time", "slow_30us"),
    ("time/low", "100ns", "time", "fast_100ns"),
    ("Line/Clean", "Line 50x", "line", "integrated_50x"),
    ("Line/Noisy", "Line off", "line", "single_line"),
)
COLUMNS = ("series", "scan", "field", "acquired", "wd_um", "stage_x_um", "stage_y_um", "stigmator_x", "stigmator_y", "dwell_s")


# ------------------------------------------------------------------ extract


def cmd_extract(args: argparse.Namespace) -> None:
    """Write the FEI record of every original TIFF under ``args.dir`` (the source's ``Data/``) as CSV."""
    import tifffile

    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(COLUMNS)
    for folder, prefix, series, scan in SERIES:
        for path in sorted((args.dir / folder).glob(f"{prefix}_*.tif")):
            with tifffile.TiffFile(path) as tif:
                fei = tif.fei_metadata
            beam, stage, user = fei["EBeam"], fei["Stage"], fei["User"]
            acquired = datetime.strptime(f"{user['Date']} {user['Time']}", "%m/%d/%Y %I:%M:%S %p").isoformat()
            out.writerow(
                (
                    series,
                    scan,
                    path.stem.rsplit("_", 1)[1],
                    acquired,
                    f"{beam['WD'] * 1e6:.1f}",
                    f"{stage['StageX'] * 1e6:.3f}",
                    f"{stage['StageY'] * 1e6:.3f}",
                    f"{beam['StigmatorX']:.6g}",
                    f"{beam['StigmatorY']:.6g}",
                    f"{fei['Scan']['Dwelltime']:.3g}",
                )
            )


# ---------------------------------------------------------------------- fit


def read_record(path: Path = RECORD) -> list[dict]:
    """The rows of ``record.csv``, numbers as floats."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("wd_um", "stage_x_um", "stage_y_um"):
            row[key] = float(row[key])
    return rows


def image_path(row: dict, originals: Path | None) -> Path | None:
    """Where a row's image is: the PNG under ``MHD_KRISS_DIR``, else the original under ``originals``; None if neither."""
    png = KRISS / row["series"] / f"{row['scan']}_{row['field']}.png"
    if png.exists():
        return png
    if originals is not None:
        for folder, prefix, _, scan in SERIES:
            if scan == row["scan"]:
                tif = originals / folder / f"{prefix}_{row['field']}.tif"
                return tif if tif.exists() else None
    return None


def _blur(path: Path) -> float:
    from mhd.functions import detect
    from mhd.functions.worker.tileio import read_tile

    with open(path, "rb") as fh:
        return float(detect(read_tile(fh, 1 << 28)).blur)


def measured(rows: list[dict], originals: Path | None) -> list[dict]:
    """The rows whose image is here, each with its ``blur`` (px) measured (two processes)."""
    found = [(row, image_path(row, originals)) for row in rows]
    found = [(row, p) for row, p in found if p is not None]
    with ProcessPoolExecutor(2) as pool:
        blurs = list(pool.map(_blur, [p for _, p in found], chunksize=4))
    return [{**row, "blur": b} for (row, _), b in zip(found, blurs)]


def _defocus(params: np.ndarray, rows: list[dict]) -> np.ndarray:
    """``dz`` (um) of each row under ``params = (b0, kappa, d0, gx, gy)``."""
    _, _, d0, gx, gy = params
    wd, x, y = (np.array([r[k] for r in rows]) for k in ("wd_um", "stage_x_um", "stage_y_um"))
    return wd - (d0 + gx * x * 1e-3 + gy * y * 1e-3)


def predicted(params: np.ndarray, rows: list[dict]) -> np.ndarray:
    """The model's blur (px) of each row."""
    return np.hypot(params[0], params[1] * _defocus(params, rows))


#: Fields a fit needs at least (five numbers, and two working distances to tell the plane from the focus).
MIN_FIELDS = 10


def fit_record(rows: list[dict]) -> np.ndarray:
    """``(b0, kappa, d0, gx, gy)`` that fit the rows' blurs best (least squares from a grid of starts).

    Raises ``SystemExit`` (a message) with fewer than :data:`MIN_FIELDS` fields or one working distance.
    """
    if len(rows) < MIN_FIELDS or len({r["wd_um"] for r in rows}) < 2:
        raise SystemExit(
            f"the record fit needs {MIN_FIELDS} scans or more at two working distances or more; found {len(rows)} "
            "(MHD_KRISS_DIR, --originals DIR)"
        )
    blur = np.array([r["blur"] for r in rows])
    wd = np.median([r["wd_um"] for r in rows])
    best = None
    for d0 in wd + np.linspace(-5.0, 5.0, 21):
        for gx in (-10.0, -5.0, 0.0, 5.0, 10.0):
            res = scipy.optimize.least_squares(lambda p: predicted(p, rows) - blur, [1.0, 0.3, d0, gx, 0.0])
            if best is None or res.cost < best.cost:
                best = res
    b0, kappa, d0, gx, gy = best.x
    return np.array([abs(b0), abs(kappa), d0, gx, gy])


def record_defocus(originals: Path | None = None) -> dict[str, float]:
    """Each slow scan's blur added by defocus, ``kappa |dz|`` (px), by field (``"001"``...), from the fit of the slow
    scans found (their record is the microscope's; only ``kappa`` and the plane come from the blur)."""
    rows = measured([r for r in read_record() if r["scan"] == "slow_30us"], originals)
    params = fit_record(rows)
    print(f"(the record's defocus fitted to the blur of {len(rows)} slow scans)", file=sys.stderr)
    return {r["field"]: float(abs(params[1] * dz)) for r, dz in zip(rows, _defocus(params, rows))}


def cmd_fit(args: argparse.Namespace) -> None:
    record = read_record()
    slow = None
    for scan in ("slow_30us", "fast_100ns"):
        rows = measured([r for r in record if r["scan"] == scan], args.originals)
        if scan != "slow_30us" and len(rows) < MIN_FIELDS:  # the vendored set has 8 fast scans
            print(f"{scan}: {len(rows)} fields here, too few to fit (--originals DIR for all)")
            continue
        params = fit_record(rows)
        blur, model = np.array([r["blur"] for r in rows]), predicted(params, rows)
        r = np.corrcoef(model, blur)[0, 1]
        print(
            f"{scan} ({len(rows)} fields): b0 {params[0]:.2f} px, kappa {params[1]:.3f} px/um, tilt {params[3]:+.1f}, "
            f"{params[4]:+.1f} um/mm; r {r:.3f}, rms residual {np.sqrt(np.mean((blur - model) ** 2)):.3f} px"
        )
        if scan == "slow_30us":
            slow = (rows, params)
    rows, params = slow
    print("\n| field | working distance (um) | stage x, y (um) | defocus (um) | blur added by it (px) | blur (px) | model (px) |")
    print("|---|---|---|---|---|---|---|")
    for row, dz, m in zip(rows, _defocus(params, rows), predicted(params, rows)):
        print(
            f"| {row['field']} | {row['wd_um']:.1f} | {row['stage_x_um']:.0f}, {row['stage_y_um']:.0f} | {dz:+.2f} "
            f"| {abs(params[1] * dz):.2f} | {row['blur']:.2f} | {m:.2f} |"
        )
    print()
    for scan in ("integrated_50x", "single_line"):
        other = measured([r for r in record if r["scan"] == scan], args.originals)
        if len(other) < 3:
            print(f"{scan}: {len(other)} fields here (--originals DIR for all)")
            continue
        blur, model = np.array([r["blur"] for r in other]), predicted(params, other)
        print(
            f"{scan} ({len(other)} fields), predicted from the slow scans' fit: r {np.corrcoef(model, blur)[0, 1]:.3f}, "
            f"offset {np.mean(blur - model):+.2f} px, defocus {np.ptp(_defocus(params, other)):.1f} um from end to end"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(required=True)
    p = sub.add_parser("extract", help="write the FEI record of the source's original TIFFs as CSV")
    p.add_argument("dir", type=Path, help="the source's Data/ folder")
    p.set_defaults(fn=cmd_extract)
    p = sub.add_parser("fit", help="the blur of each scan against the record's model of its defocus")
    p.add_argument("--originals", type=Path, help="the source's Data/ folder: the fields not vendored")
    p.set_defaults(fn=cmd_fit)
    args = ap.parse_args()
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
