"""Make ``examples/wd_sweep/``: a simulated focus sweep with a known best working distance.

One 384 x 384 region of an in-focus ISBI 2012 slice, scanned (with shot
noise, :mod:`mhd.functions.simulate`) at 9 working distances 4.992 ...
5.008 mm in 0.002 mm (2 um) steps, named ``sweep_wd<WD>mm.png``. The
specimen is in focus at WD :data:`BEST_WD_MM` = 5.0013 mm, between two
samples: image ``i`` is defocused by ``WD_i - BEST_WD_MM`` (converted to
micrometres, the simulator's unit; its probe widens by 1 px per um).

``client focus-sweep --dir examples/wd_sweep`` should find 5.0013 mm to
within a quarter of the step (0.0005 mm).

Usage::

    python examples/make_sweep.py [--data tests/data/isbi2012] [--out examples/wd_sweep]
                                  [--best-wd 5.0013] [--slice 25] [--seed 7]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from mhd.functions.simulate import defocus_image

#: Working distances of the sweep (mm).
WD_MM = np.round(np.arange(4.992, 5.0085, 0.002), 3)
#: Step between images (mm).
STEP_MM = 0.002
#: Working distance at which the specimen is in focus (mm).
BEST_WD_MM = 5.0013
#: Image side (pixels): >= 300 px, so the detector also measures astigmatism.
SIDE = 384
#: Electrons per pixel at full brightness.
DOSE = 100.0
SLICE, SEED = 25, 7
UM_PER_MM = 1000.0


def make_sweep(data: Path, out: Path, best_wd: float = BEST_WD_MM, slice_no: int = SLICE, seed: int = SEED) -> list[Path]:
    """Write the sweep's images.

    Parameters
    ----------
    data : Path
        Folder of the ISBI ``train_NN.png`` slices (512 x 512).
    out : Path
        Folder to (re)create.
    best_wd : float
        In-focus working distance (mm).
    slice_no : int
        Slice to image (0..29).
    seed : int
        Shot noise seed.

    Returns
    -------
    list of Path
        The images, in WD order.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    image = iio.imread(data / f"train_{slice_no:02d}.png")
    top = (image.shape[0] - SIDE) // 2
    region = image[top : top + SIDE, top : top + SIDE]
    rng = np.random.default_rng(seed)
    paths = []
    for wd in WD_MM:
        path = out / f"sweep_wd{wd:.3f}mm.png"
        iio.imwrite(path, defocus_image(region, float(wd - best_wd) * UM_PER_MM, dose=DOSE, rng=rng))
        paths.append(path)
    return paths


def attribution(data: Path, out: Path, best_wd: float, slice_no: int) -> None:
    text = (data / "README.md").read_text()
    head = (
        f"# wd_sweep: one field at working distances {WD_MM[0]:.3f} ... {WD_MM[-1]:.3f} mm ({STEP_MM} mm steps)\n\n"
        f"Simulated from slice train_{slice_no:02d} ({SIDE} x {SIDE} centre crop), in focus at WD {best_wd} mm, "
        f"dose {DOSE:g} electrons/px. Try: `client focus-sweep --dir examples/wd_sweep`.\n\n"
        "Made by examples/make_sweep.py from the slices described below.\n\n---\n\n"
    )
    (out / "README.md").write_text(head + text)


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "tests" / "data" / "isbi2012",
        help="folder of train_NN.png slices",
    )
    ap.add_argument("--out", type=Path, default=here / "wd_sweep", help="sweep folder (replaced)")
    ap.add_argument("--best-wd", type=float, default=BEST_WD_MM, help="in-focus working distance, mm")
    ap.add_argument("--slice", type=int, default=SLICE, help="ISBI slice number 0..29")
    ap.add_argument("--seed", type=int, default=SEED, help="shot noise seed")
    args = ap.parse_args()
    make_sweep(args.data, args.out, args.best_wd, args.slice, args.seed)
    attribution(args.data, args.out, args.best_wd, args.slice)


if __name__ == "__main__":
    main()
