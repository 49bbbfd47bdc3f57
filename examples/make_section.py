"""Make the bundled examples from the shared ISBI 2012 EM slices (reproducible).

``examples/section_042/``
    A 4 x 4 montage of 256 x 256 tiles (``tile_r<row>_c<col>``) cut from a
    1024 x 1024 mosaic of four in-focus slices, each tile scanned again with
    simulated shot noise (:mod:`mhd.functions.simulate`). By design:

    - ``tile_r1_c2`` is out of focus (3 um), ``tile_r3_c1`` slightly (1.5 um);
    - ``tile_r2_c3`` is in focus except its right 30 %, 4 um out (a partly
      defocused tile: a tilt or a wrinkle);
    - ``tile_r0_c3`` is resin: no tissue (verdict ``empty``, not ``oof``);
    - formats: PNG 8-bit, two 16-bit TIFFs, one BMP.

``examples/focus_series/``
    One 256 x 256 region scanned at defocus -4 ... +4 um in 1 um steps
    (``focus_df<defocus>um.png``) for ``client calibrate``.

Usage::

    python examples/make_section.py [--data tests/data/isbi2012] [--out examples]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from mhd.functions.simulate import defocus_image, digitize, shot_noise

#: Electrons per pixel at full brightness: the shot noise of every scan.
DOSE = 200.0
#: Tile side (pixels) and montage size (tiles).
TILE, ROWS, COLS = 256, 4, 4
#: Defocus (um) of the out-of-focus tiles.
OOF = {(1, 2): 3.0, (3, 1): 1.5}
PARTIAL = (2, 3)
PARTIAL_DEFOCUS = 4.0
#: Fraction of the partial tile's columns (on the right) that are out of focus.
PARTIAL_FRACTION = 0.3
EMPTY = (0, 3)
TIFF16 = {(0, 1), (2, 0)}
BMP = {(3, 3)}
#: Through-focus series.
SERIES_SLICE, SERIES_DEFOCUS = 20, np.arange(-4.0, 4.5, 1.0)
SEED = 42


def mosaic(data: Path) -> np.ndarray:
    """1024 x 1024 uint8 mosaic of slices 10-13 (2 x 2)."""
    s = [iio.imread(data / f"train_{i:02d}.png") for i in (10, 11, 12, 13)]
    return np.block([[s[0], s[1]], [s[2], s[3]]])


def scan(region: np.ndarray, rc: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One simulated acquisition of a tile region (uint8, or uint16 for the TIFF tiles)."""
    bits = 16 if rc in TIFF16 else 8
    if rc == EMPTY:
        resin = np.full(region.shape, 0.62) + np.linspace(-0.03, 0.03, region.shape[1])[None, :]
        return digitize(shot_noise(resin, DOSE, rng), bits)
    if rc == PARTIAL:
        sharp = defocus_image(region, 0.0, dose=DOSE, bits=bits, rng=rng)
        blurred = defocus_image(region, PARTIAL_DEFOCUS, dose=DOSE, bits=bits, rng=rng)
        edge = int(round(region.shape[1] * (1 - PARTIAL_FRACTION)))
        sharp[:, edge:] = blurred[:, edge:]
        return sharp
    return defocus_image(region, OOF.get(rc, 0.0), dose=DOSE, bits=bits, rng=rng)


def write_tile(path: Path, image: np.ndarray) -> None:
    if path.suffix == ".tif":
        tifffile.imwrite(path, image)
    else:
        iio.imwrite(path, image)


def make_section(data: Path, out: Path, rng: np.random.Generator) -> None:
    out.mkdir(parents=True, exist_ok=True)
    big = mosaic(data)
    for r in range(ROWS):
        for c in range(COLS):
            region = big[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
            ext = ".tif" if (r, c) in TIFF16 else ".bmp" if (r, c) in BMP else ".png"
            write_tile(out / f"tile_r{r}_c{c}{ext}", scan(region, (r, c), rng))


def make_series(data: Path, out: Path, rng: np.random.Generator) -> None:
    out.mkdir(parents=True, exist_ok=True)
    region = iio.imread(data / f"train_{SERIES_SLICE:02d}.png")[128 : 128 + TILE, 128 : 128 + TILE]
    for d in SERIES_DEFOCUS:
        iio.imwrite(out / f"focus_df{d:+.1f}um.png", defocus_image(region, float(d), dose=DOSE, rng=rng))


def attribution(data: Path, out: Path, what: str) -> None:
    text = (data / "README.md").read_text()
    (out / "README.md").write_text(f"{what}\n\nMade by examples/make_section.py from the slices described below.\n\n---\n\n{text}")


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "tests" / "data" / "isbi2012",
        help="folder of train_NN.png slices",
    )
    ap.add_argument("--out", type=Path, default=here, help="examples folder")
    args = ap.parse_args()
    rng = np.random.default_rng(SEED)
    for name in ("section_042", "focus_series"):
        shutil.rmtree(args.out / name, ignore_errors=True)
    make_section(args.data, args.out / "section_042", rng)
    make_series(args.data, args.out / "focus_series", rng)
    attribution(
        args.data, args.out / "section_042", "# section_042: a simulated 4 x 4 montage with out-of-focus, partly defocused and empty tiles"
    )
    attribution(args.data, args.out / "focus_series", "# focus_series: one region scanned at defocus -4 ... +4 um")


if __name__ == "__main__":
    main()
