"""Peak memory of the detector against the number of scale-space levels (``n_bin``).

Measured, not asserted (it was a bound in the unit suite, moved here by issue
#16: unit tests keep behaviour, benches keep performance). Once every group
of levels fills the CPU lanes (>= 16 levels), the detector's buffers are fixed,
so the peak should stay about flat from ``n_bin`` 16 to 64 (it was under 1.3 x).

Peak is ``tracemalloc``'s traced peak (Python and NumPy allocations) of one
``detect`` call after a warm-up call with the same ``n_bin`` (filter bank
cached), on an ISBI slice tiled 2 x 2 (1024 x 1024 px).

Usage::

    python bench/bench_memory.py [--levels 8 16 32 64] [--tile 2]
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from mhd.functions import detect

ISBI = Path(__file__).resolve().parents[1] / "tests" / "data" / "isbi2012"
MB = 2**20


def peak_bytes(image: np.ndarray, n_bin: int) -> int:
    """Traced peak of one warm ``detect`` call (bytes)."""
    detect(image, n_bin=n_bin, backend="numpy")  # warm: filter bank cached
    gc.collect()
    tracemalloc.start()
    try:
        detect(image, n_bin=n_bin, backend="numpy")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--tile", type=int, default=2, help="the 512 px ISBI slice tiled N x N")
    args = ap.parse_args()
    image = np.tile(iio.imread(sorted(ISBI.glob("train_*.png"))[14]), (args.tile, args.tile))
    print(f"detect on {image.shape[0]} x {image.shape[1]} px, numpy backend: traced peak per call")
    peaks = {n_bin: peak_bytes(image, n_bin) for n_bin in args.levels}
    base = 16 if 16 in peaks else args.levels[0]
    for n_bin, peak in peaks.items():
        print(f"n_bin {n_bin:3d}: {peak / MB:8.1f} MiB  ({peak / peaks[base]:.2f} x n_bin {base})")


if __name__ == "__main__":
    main()
