"""Detector speed and memory against peers, measured in one run.

Peers, run round-robin on the same tile (in a shuffled order each round) so that a noisy machine slows them alike:

* ``mhd``          the package's detector (decimated coarse levels, cubic upsampling)
* ``mhd-1-thread`` the same on one CPU thread (how much the lanes give)
* ``mhd-exact``    the same with ``tol=0`` (every level at full resolution)
* ``mhd-transforms`` the Fourier work of ``mhd``'s scale space alone, on one thread: the forward
  transform of the padded tile and, per level, the product with its transfer function and the inverse
  transform on its (decimated) grid, and nothing else. No detector that uses these levels can take less;
  ``mhd`` less this is what everything else costs (normalising, the noise model, the per-level passes,
  the merge, the NMS, the blur fit, the moments)
* ``naive_mhd``    the honest outside peer: ``shared/peers/naive_mhd.py`` beside the
  clone (folder overridable by ``MHD_PEERS_DIR``; skipped with a note when absent),
  timed as ``MHD(shape, n_bin).count(normalize(img))`` with the instance (its
  cached transfer functions) built once per shape, as mhd caches its filter banks
* ``straightforward``  the paper done plainly but not wastefully: one rfft2,
  cached analytic Gaussian transfer functions, one full-size irfft2 per DoG
  level, running max over scales, 3x3 maximum as two 1-D passes of shifted maxima (no padding:
  wraps around; no per-tile noise threshold)
* ``skimage``      ``skimage.feature.blob_dog`` (a different algorithm: geometric
  scales, 3-D maxima, pruning), only up to ``--skimage-max`` pixels a side

``--base COMMIT`` then compares this tree's detector with the one of that commit
(its ``functions/`` from ``git archive``) at each size and number of levels:
fresh processes, one per detector, alternate for ``--rounds`` rounds, each
timing ``--repeat`` calls after a warm-up; it prints each round's pair of
medians, how many rounds this tree won, and the median of the per-round
ratios. In one process the two copies disturb each other: an identical copy
loaded beside ``mhd`` measured 25 % slower in the round-robin.

Prints, per size and number of levels, the median milliseconds per tile after
a warm-up, peak memory allocated during one warm call (tracemalloc, MB; cached
filter banks excluded), ratios to ``naive_mhd`` (to ``straightforward`` when
naive_mhd is absent), and the feature agreement of ``mhd`` with ``mhd-exact``
(fraction of features with a partner within 1 px, the smaller of both ways).

With CuPy and a GPU (``--gpu``) it also measures ``detect`` on the GPU, batched
throughput of 1024^2 tiles and the GPU memory of one 16384^2 tile with 64 levels.
``--json PATH`` also writes every figure printed to one JSON file.

Usage::

    python bench/bench_detector.py                      # 512..4096, 8/16/32 levels
    python bench/bench_detector.py --sizes 1024 --levels 16 --repeat 21
    python bench/bench_detector.py --gpu --sizes 1024 4096
    python bench/bench_detector.py --sizes 1024 --levels 16 --skimage-max 0 --base f1dca4b --rounds 10
    python bench/bench_detector.py --sizes 1024 --levels 16 --skimage-max 0 --dtype float32   # float tiles
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import os
import random
import statistics
import time
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import scipy.fft
from scipy.spatial import cKDTree

from mhd.functions import DEFAULTS, cuda_available, detect, detect_batch, get_backend, normalize, scales
from mhd.functions._geometry import fast_size, halo_width
from mhd.functions._scalespace import dog_pairs, filter_bank
from mhd.functions._upsample import crop_spectrum

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "isbi2012"

#: Outside peers: ``shared/peers`` beside the clone, or ``$MHD_PEERS_DIR``.
PEERS_DIR = Path(os.environ.get("MHD_PEERS_DIR") or Path(__file__).resolve().parents[2] / "shared" / "peers")

#: Every figure printed, for ``--json``.
FIGURES: dict[str, list[dict]] = {"cpu": [], "gpu": []}


def load_naive_mhd():
    """The ``naive_mhd`` module from :data:`PEERS_DIR`, or None (with a printed note) when it is absent."""
    path = PEERS_DIR / "naive_mhd.py"
    if not path.is_file():
        print(f"note: {path} not found (set MHD_PEERS_DIR): the naive_mhd peer is skipped")
        return None
    spec = importlib.util.spec_from_file_location("naive_mhd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_base(commit: str):
    """``mhd.functions`` as of ``commit`` (``git archive`` of ``functions/`` into a temporary folder), imported as ``mhd_base``."""
    import subprocess
    import sys
    import tempfile

    root = Path(__file__).resolve().parents[1]
    dest = Path(tempfile.mkdtemp(prefix="mhd-base-"))
    subprocess.run(f"git -C {root} archive {commit} functions | tar -x -C {dest}", shell=True, check=True)
    spec = importlib.util.spec_from_file_location(
        "mhd_base", dest / "functions" / "__init__.py", submodule_search_locations=[str(dest / "functions")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["mhd_base"] = module  # its modules import each other relatively, as mhd_base.*
    spec.loader.exec_module(module)
    return module


def em_tile(size: int) -> np.ndarray:
    """A size x size uint8 EM tile: ISBI slices tiled (mirrored) to the size."""
    slices = [iio.imread(p) for p in sorted(DATA.glob("train_*.png"))[:4]]
    base = np.block([[slices[0], slices[1]], [slices[2], slices[3]]])
    reps = -(-size // base.shape[0])
    return np.tile(base, (reps, reps))[:size, :size]


@functools.lru_cache(maxsize=8)
def _plain_transfers(shape: tuple[int, int], n_bin: int, min_t: float, max_t: float) -> list[np.ndarray]:
    """The straightforward peer's transfer functions, cached per shape as mhd caches its filter banks."""
    k2 = (2 * np.pi * np.fft.fftfreq(shape[0]))[:, None] ** 2 + (2 * np.pi * np.fft.rfftfreq(shape[1]))[None, :] ** 2
    t0, t1, gain = dog_pairs(scales(n_bin, min_t, max_t))  # the same levels as mhd
    return [(gain[i] * (np.exp(-0.5 * k2 * t1[i] ** 2) - np.exp(-0.5 * k2 * t0[i] ** 2))).astype(np.float32) for i in range(n_bin)]


def straightforward(
    image: np.ndarray, n_bin: int, min_t: float = 1.0, max_t: float = 8.0, threshold: float = DEFAULTS["threshold"]
) -> np.ndarray:
    """The paper without tricks, but not wasteful; returns (N, 2) feature positions.

    One rfft2; per level one product with a cached float32 transfer function and
    one full-size irfft2 (no padding, so it wraps around the tile edges); a
    running max over levels; a 3x3 maximum as two 1-D passes. The same levels,
    polarity and absolute threshold as mhd, but no per-tile noise threshold.
    """
    x = normalize(image, backend="numpy")
    F = scipy.fft.rfft2(x, workers=-1)
    buf = np.empty_like(F)
    best = None
    for h in _plain_transfers(x.shape, n_bin, min_t, max_t):
        d = scipy.fft.irfft2(np.multiply(F, h, out=buf), s=x.shape, workers=-1, overwrite_x=True)
        if DEFAULTS["polarity"] != "dark":
            d = np.abs(d, out=d) if DEFAULTS["polarity"] == "both" else np.negative(d, out=d)
        best = d if best is None else np.maximum(best, d, out=best)
    pooled = best
    for axis in (0, 1):  # np.roll is periodic, as the FFT; ndimage's mode="wrap" is 4x slower
        pooled = np.maximum(np.maximum(pooled, np.roll(pooled, 1, axis)), np.roll(pooled, -1, axis))
    return np.argwhere((best == pooled) & (best > threshold))


def transforms_only(image: np.ndarray, n_bin: int, backend) -> None:
    """The Fourier transforms of ``detect``'s scale space for ``image`` and nothing else (see the module docstring).

    The padded grid, the filter bank and its decimated groups are the detector's own (one block, defaults
    otherwise); the input is the tile as float32, reflected into the grid.
    """
    p = DEFAULTS
    h = halo_width(dog_pairs(scales(n_bin, p["min_t"], p["max_t"]))[1].max())
    P, Q = (fast_size(n + 2 * h) for n in image.shape)
    bank = filter_bank((P, Q), n_bin, p["min_t"], p["max_t"], p["polarity"], p["tol"], backend)
    grid = np.pad(image.astype(np.float32), ((h, P - image.shape[0] - h), (h, Q - image.shape[1] - h)), mode="reflect")[None]
    F = backend.rfft2(grid)
    for g in bank.groups:
        Fd = F if g.factor == 1 else crop_spectrum(F, g.factor, np)
        buf, out, tmp = np.empty_like(Fd), np.empty(Fd.shape[1:], np.float32), np.empty(Fd.shape[1:], np.float32)
        for j in range(len(g.levels)):
            np.multiply(Fd, g.transfer_into(j, out, tmp, np), out=buf)
            backend.irfft2(buf, (P // g.factor, Q // g.factor), overwrite=True)


def skimage_peer(image: np.ndarray, n_bin: int) -> np.ndarray:
    from skimage.feature import blob_dog

    ratio = (8.0 / 1.0) ** (1.0 / n_bin)
    return blob_dog(normalize(image, backend="numpy"), min_sigma=1.0, max_sigma=8.0, sigma_ratio=ratio, threshold=0.02)[:, :2]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 or len(b) == 0:
        return float(len(a) == len(b))
    da, _ = cKDTree(b[:, :2]).query(a[:, :2], distance_upper_bound=1.5)
    db, _ = cKDTree(a[:, :2]).query(b[:, :2], distance_upper_bound=1.5)
    return float(min(np.isfinite(da).mean(), np.isfinite(db).mean()))


def peak_mb(fn) -> tuple[float, object]:
    gc.collect()
    tracemalloc.start()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20, out


def run_cpu(sizes, levels, repeat, skimage_max, dtype="uint8"):
    one_thread = get_backend("numpy", workers=1)
    naive = load_naive_mhd()
    base_name = "naive_mhd" if naive is not None else "straightforward"
    print(f"| size | levels | peer | median ms | peak MB | x {base_name} | features |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        img = em_tile(size).astype(dtype)  # the same grey levels; float tiles take the normaliser's float path
        for n_bin in levels:
            peers = {
                "mhd": lambda: detect(img, n_bin=n_bin, backend="numpy").features,
                "mhd-1-thread": lambda: detect(img, n_bin=n_bin, backend=one_thread).features,
                "mhd-exact": lambda: detect(img, n_bin=n_bin, backend="numpy", tol=0).features,
                "mhd-transforms": lambda: transforms_only(img, n_bin, one_thread),
            }
            if naive is not None:
                model = naive.MHD(img.shape, n_bin=n_bin)  # its transfer functions, built once per shape
                peers["naive_mhd"] = lambda: model.count(naive.normalize(img))
            peers["straightforward"] = lambda: straightforward(img, n_bin)
            if size <= skimage_max:
                peers["skimage"] = lambda: skimage_peer(img, n_bin)
            reps = repeat if size <= 1024 else max(3, repeat // 4)
            results, times, mem = {}, {k: [] for k in peers}, {}
            for name, fn in peers.items():  # warm-up (filter banks, FFT plans), then memory of a warm call
                fn()
                mem[name], results[name] = peak_mb(fn)
            order = random.Random(size * 1000 + n_bin)
            for rep in range(reps):  # round-robin: a noisy machine slows every peer alike
                # in a new order each round, so that no peer always runs after the same one
                for name, fn in order.sample(list(peers.items()), len(peers)):
                    if name == "skimage" and rep >= 3:  # seconds per call: three timings are plenty
                        continue
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) * 1e3)
            base = statistics.median(times[base_name])
            for name in peers:
                med = statistics.median(times[name])
                n_feat = results[name] if results[name] is None or isinstance(results[name], int) else len(results[name])
                print(
                    f"| {size} | {n_bin} | {name} | {med:.1f} | {mem[name]:.0f} | {med / base:.2f} | {'-' if n_feat is None else n_feat} |"
                )
                FIGURES["cpu"].append(
                    dict(
                        size=size,
                        levels=n_bin,
                        peer=name,
                        median_ms=med,
                        peak_mb=mem[name],
                        ratio_to=base_name,
                        ratio=med / base,
                        features=n_feat,
                        runs=len(times[name]),
                    )
                )
            agree = agreement(results["mhd"], results["mhd-exact"])
            print(f"| {size} | {n_bin} | agreement mhd vs mhd-exact | {agree:.4f} | | | |")
            FIGURES["cpu"].append(dict(size=size, levels=n_bin, peer="agreement mhd vs mhd-exact", agreement=agree))


def run_gpu(sizes, levels, repeat):
    import cupy

    pool = cupy.get_default_memory_pool()
    print("\n| GPU | size | levels | median ms | tiles/s | peak GPU MB |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        img = cupy.asarray(em_tile(size))
        for n_bin in levels:
            detect(img, n_bin=n_bin, backend="cupy")
            pool.free_all_blocks()
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                detect(img, n_bin=n_bin, backend="cupy")
                times.append((time.perf_counter() - t0) * 1e3)
            med = statistics.median(times)
            print(f"| single | {size} | {n_bin} | {med:.2f} | {1e3 / med:.0f} | {pool.total_bytes() / 2**20:.0f} |")
            FIGURES["gpu"].append(
                dict(kind="single", size=size, levels=n_bin, median_ms=med, tiles_per_s=1e3 / med, pool_mb=pool.total_bytes() / 2**20)
            )
    for batch in (8, 32, 64):
        tiles = [cupy.asarray(em_tile(1024))] * batch
        detect_batch(tiles, backend="cupy")
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            detect_batch(tiles, backend="cupy")
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"| batch {batch} | 1024 | 16 | {med * 1e3 / batch:.2f} | {batch / med:.0f} | {pool.total_bytes() / 2**20:.0f} |")
        FIGURES["gpu"].append(
            dict(
                kind=f"batch {batch}",
                size=1024,
                levels=16,
                median_ms=med * 1e3 / batch,
                tiles_per_s=batch / med,
                pool_mb=pool.total_bytes() / 2**20,
            )
        )
    pool.free_all_blocks()
    big = cupy.asarray(em_tile(16384))
    t0 = time.perf_counter()
    det = detect(big, n_bin=64, backend="cupy")
    ms = (time.perf_counter() - t0) * 1e3
    print(f"| huge | 16384 | 64 | {ms:.0f} | - | {pool.total_bytes() / 2**20:.0f} (features {det.count}) |")
    FIGURES["gpu"].append(dict(kind="huge", size=16384, levels=64, ms=ms, pool_mb=pool.total_bytes() / 2**20, features=det.count))


def time_one(commit: str, size: int, n_bin: int, repeat: int, dtype: str) -> float:
    """Median ms of ``detect`` on the bench tile, this tree's (``commit`` "") or ``commit``'s, in this process."""
    module = load_base(commit) if commit else importlib.import_module("mhd.functions")
    img = em_tile(size).astype(dtype)
    for _ in range(3):
        module.detect(img, n_bin=n_bin, backend="numpy")
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        module.detect(img, n_bin=n_bin, backend="numpy")
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_ab(commit: str, size: int, n_bin: int, repeat: int, rounds: int, dtype: str) -> None:
    """This tree against ``commit``: alternating fresh processes (:func:`time_one`), the order swapped each round."""
    import subprocess
    import sys

    def one(which: str) -> float:
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_detector as b; "
        code += f"print(b.time_one({which!r}, {size}, {n_bin}, {repeat}, {dtype!r}))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])

    pairs = []
    for r in range(rounds):
        order = ("", commit) if r % 2 == 0 else (commit, "")
        got = {which: one(which) for which in order}
        pairs.append((got[""], got[commit]))
    ratios = [a / b for a, b in pairs]
    print(f"\n{size}^2 x {n_bin}, this tree against {commit}, ms per round (fresh processes, {repeat} calls each):")
    print("  " + ", ".join(f"{a:.1f} / {b:.1f}" for a, b in pairs))
    wins = sum(a < b for a, b in pairs)
    print(f"  this tree faster in {wins} of {rounds} rounds; median ratio {statistics.median(ratios):.3f}")
    FIGURES["cpu"].append(dict(size=size, levels=n_bin, base=commit, pairs_ms=pairs, wins=wins, median_ratio=statistics.median(ratios)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--levels", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--repeat", type=int, default=11, help="timed runs per peer (fewer above 1024^2)")
    ap.add_argument("--skimage-max", type=int, default=1024, help="largest size at which blob_dog runs")
    ap.add_argument("--gpu", action="store_true", help="also measure CuPy on the GPU")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--base", metavar="COMMIT", help="also compare with the detector as of this git commit, in alternating fresh processes")
    ap.add_argument("--rounds", type=int, default=8, help="rounds of --base (a fresh process per detector each)")
    ap.add_argument("--dtype", default="uint8", choices=["uint8", "uint16", "float32"], help="pixel type of the CPU tiles (default uint8)")
    args = ap.parse_args()
    try:
        run_cpu(args.sizes, args.levels, args.repeat, args.skimage_max, args.dtype)
        if args.base:
            for size in args.sizes:
                for n_bin in args.levels:
                    run_ab(args.base, size, n_bin, args.repeat, args.rounds, args.dtype)
        if args.gpu:
            if not cuda_available():
                raise SystemExit("--gpu: no CUDA device visible to CuPy")
            run_gpu(args.sizes, args.levels, args.repeat)
    finally:  # the figures measured so far, even when a later step fails
        if args.json:
            args.json.write_text(
                json.dumps(dict(args=vars(args) | {"json": str(args.json)}, peers_dir=str(PEERS_DIR), **FIGURES), indent=1)
            )


if __name__ == "__main__":
    main()
