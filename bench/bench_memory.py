"""Peak memory of the detector against the number of scale-space levels (``n_bin``).

Measured, not asserted (it was a bound in the unit suite, moved here by issue
#16: unit tests keep behaviour, benches keep performance). Two figures per
``n_bin``, ``tracemalloc``'s traced peak (Python and NumPy allocations) of one
``detect`` call on an ISBI slice tiled 2 x 2 (1024 x 1024 px):

* cold: the first call with these parameters, filter bank built (what a
  worker pays for a new tile size or new parameters);
* warm: a second call (filter bank cached).

A filter bank keeps 2-D transfer functions only up to
``mhd.functions._scalespace.DENSE_BYTES``, else their 1-D factors, so both
should stay about flat from ``n_bin`` 16 to 64, also with ``--tol 0`` (every
level at full resolution).

Usage::

    python bench/bench_memory.py [--levels 8 16 32 64] [--tile 2] [--tol 0.001]
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from mhd.functions import DEFAULTS, _scalespace, detect

ISBI = Path(__file__).resolve().parents[1] / "tests" / "data" / "isbi2012"
MB = 2**20


def peak_bytes(image: np.ndarray, n_bin: int, tol: float) -> tuple[int, int]:
    """Traced peak of a cold and of a warm ``detect`` call (bytes)."""
    _scalespace._bank_cached.cache_clear()
    peaks = []
    for _ in range(2):
        gc.collect()
        tracemalloc.start()
        try:
            detect(image, n_bin=n_bin, tol=tol, backend="numpy")
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return peaks[0], peaks[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--tile", type=int, default=2, help="the 512 px ISBI slice tiled N x N")
    ap.add_argument("--tol", type=float, default=DEFAULTS["tol"], help="decimation tolerance (0: every level at full resolution)")
    args = ap.parse_args()
    image = np.tile(iio.imread(sorted(ISBI.glob("train_*.png"))[14]), (args.tile, args.tile))
    print(f"detect on {image.shape[0]} x {image.shape[1]} px, tol {args.tol:g}, numpy backend: traced peak per call")
    peaks = {n_bin: peak_bytes(image, n_bin, args.tol) for n_bin in args.levels}
    base = 16 if 16 in peaks else args.levels[0]
    for n_bin, (cold, warm) in peaks.items():
        print(
            f"n_bin {n_bin:3d}: cold {cold / MB:7.1f} MiB ({cold / peaks[base][0]:.2f} x n_bin {base}), "
            f"warm {warm / MB:7.1f} MiB ({warm / peaks[base][1]:.2f} x)"
        )


if __name__ == "__main__":
    main()
