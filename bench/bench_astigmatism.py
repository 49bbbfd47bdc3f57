"""Issue 5 measures: astigmatism (extra cost over the detector, separation from defocus) and best-focus search.

Cost: ``spectral_anisotropy`` on a 1024 x 1024 tile's padded spectrum (the
one the detector computes anyway) against ``detect()`` on the same tile
(16 levels, NumPy backend), medians of repeated runs after warm-up, in one
process. Quality: the 30 ISBI 2012 slices at several doses, in focus, blurred
isotropically and blurred by astigmatic probes of the same mean square
width: strength percentiles, AUC (astigmatic vs isotropic, and vs in focus)
and the error of the blur direction. Focus: ``best_focus`` on detector
counts of simulated 9-image sweeps (2 um steps, probe widening 1 px/um) of
10 ISBI slices, best focus on a sample and a third and two thirds of a step
off: error against the true best focus, and the fit's own uncertainty.

Usage::

    .venv/bin/python bench/bench_astigmatism.py            # all parts
    .venv/bin/python bench/bench_astigmatism.py --cost     # cost only
    .venv/bin/python bench/bench_astigmatism.py --quality  # astigmatism table only
    .venv/bin/python bench/bench_astigmatism.py --focus    # best-focus table only
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import scipy.fft

from mhd.functions import detect, estimate_noise, normalize
from mhd.functions._astigmatism import ASTIGMATISM_THRESHOLD, spectral_anisotropy
from mhd.functions.focus import best_focus
from mhd.functions.simulate import blur, digitize, shot_noise, through_focus, to_signal

ISBI = Path(__file__).resolve().parents[1] / "tests" / "data" / "isbi2012"
T = np.linspace(1.0, 8.0, 17)
HALO = 34  # 4 * max_t + 2 px, as the detector pads
PROBES = [(1.2, 0.6), (2.0, 1.0), (4.0, 2.0)]  # (long, short) axis of the astigmatic probe, px
DOSES = [10.0, 50.0, np.inf]


def padded_spectrum(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int], float, tuple[int, int]]:
    """rfft2 of the normalised, mirror-padded tile as the detector makes it: (F, (P, Q), noise, mirrored)."""
    norm = normalize(image, backend="numpy")
    H, W = norm.shape
    P, Q = (scipy.fft.next_fast_len(-(-(s + 2 * HALO) // 32) * 32, real=True) for s in (H, W))
    padded = np.pad(norm, ((HALO, P - H - HALO), (HALO, Q - W - HALO)), mode="reflect")
    return scipy.fft.rfft2(padded[None]), (P, Q), estimate_noise(norm, backend="numpy"), (P - H, Q - W)


def measure(image: np.ndarray) -> tuple[float, float]:
    F, shape, noise, mirrored = padded_spectrum(image)
    strength, angle = spectral_anisotropy(F, shape, T, "numpy", noise, mirrored)
    return float(strength[0]), float(angle[0])


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def cost(repeats: int) -> None:
    tile = np.kron(iio.imread(ISBI / "train_00.png"), np.ones((2, 2), np.uint8))  # 1024 x 1024
    F, shape, noise, mirrored = padded_spectrum(tile)
    x = np.zeros((1,) + shape, np.float32)
    t_detect = median_ms(lambda: detect(tile, n_bin=16, backend="numpy"), repeats)
    t_fft = median_ms(lambda: scipy.fft.rfft2(x, workers=-1), repeats)
    t_aniso = median_ms(lambda: spectral_anisotropy(F, shape, T, "numpy", noise, mirrored), repeats)
    print(f"cost on {tile.shape[0]}x{tile.shape[1]}, spectrum {shape[0]}x{shape[1]}, medians of {repeats} runs:")
    print(f"  detect(n_bin=16)          {t_detect:8.2f} ms")
    print(f"  rfft2 (for scale)         {t_fft:8.2f} ms")
    print(f"  spectral_anisotropy       {t_aniso:8.2f} ms   = {100 * t_aniso / t_detect:.1f} % of detect()")


def auc(positive: list[float], negative: list[float]) -> float:
    p, n = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def angle_error(a: float, b: float) -> float:
    return abs((a - b + 90.0) % 180.0 - 90.0)


def quality() -> None:
    slices = [to_signal(iio.imread(p)) for p in sorted(ISBI.glob("train_*.png"))]
    rng = np.random.default_rng(2012)
    print(f"quality on {len(slices)} ISBI slices (512x512); dose = electrons/px at full brightness; threshold {ASTIGMATISM_THRESHOLD}")
    print("angle errors (degrees) over the astigmatic tiles with strength > 0 (no direction otherwise); 'none' counts those without")
    print(
        f"{'dose':>6} {'probe px':>9} | {'focus p50/max':>13} | {'isotropic p50/max':>17} | "
        f"{'astig min/p50':>13} | {'AUC iso':>7} {'AUC foc':>7} | {'flagged':>7} | "
        f"{'angle err p50/p95/max':>21} {'none':>4}"
    )
    for dose in DOSES:
        focus = [measure(digitize(shot_noise(s, dose, rng)))[0] for s in slices]
        for major, minor in PROBES:
            iso, ast, err = [], [], []
            for s in slices:
                psf_angle = float(rng.uniform(0.0, 180.0))
                iso.append(measure(digitize(shot_noise(blur(s, np.hypot(major, minor) / np.sqrt(2)), dose, rng)))[0])
                strength, angle = measure(digitize(shot_noise(blur(s, major, minor, psf_angle), dose, rng)))
                ast.append(strength)
                err.append(angle_error(angle, psf_angle))
            flagged = np.mean(np.asarray(ast) >= ASTIGMATISM_THRESHOLD)
            measured = np.asarray(err)[np.isfinite(err)]
            print(
                f"{dose:>6g} {major:>4g}/{minor:<4g} | {np.median(focus):6.3f}/{max(focus):.3f} | {np.median(iso):10.3f}/{max(iso):.3f} | "
                f"{min(ast):6.3f}/{np.median(ast):.3f} | {auc(ast, iso):7.3f} {auc(ast, focus):7.3f} | {flagged:7.0%} | "
                f"{np.median(measured):6.1f}/{np.percentile(measured, 95):6.1f}/{measured.max():6.1f} {len(err) - len(measured):>4}"
            )


def focus(step: float = 2.0) -> None:
    slices = [iio.imread(p) for p in sorted(ISBI.glob("train_*.png"))[::3]]
    print(f"best focus on {len(slices)} ISBI slices x 3 offsets, 9 images {step:g} um apart, default points=5")
    print(
        f"{'dose':>6} | {'max |err| um':>12} {'(steps)':>7} | {'rms err um':>10} | {'median unc um':>13} | "
        f"{'rms err/unc':>11} | {'median r':>8}"
    )
    for dose in DOSES:
        err, unc, r = [], [], []
        for k, image in enumerate(slices):
            for wd0 in (4.0, 4.0 + step / 3, 4.0 + 2 * step / 3):
                wd = np.arange(-4, 5) * step + 5.0
                series = through_focus(image, wd - wd0, dose=dose, rng=k)
                bf = best_focus(wd, [detect(s, backend="numpy").count for s in series])
                err.append(bf.wd - wd0)
                unc.append(bf.uncertainty)
                r.append(bf.r)
        e, u = np.asarray(err), np.asarray(unc)
        print(
            f"{dose:>6g} | {np.abs(e).max():12.3f} {np.abs(e).max() / step:7.3f} | "
            f"{np.sqrt(np.mean(e**2)):10.3f} | {np.median(u):13.3f} | {np.sqrt(np.mean((e / u) ** 2)):11.2f} | "
            f"{np.median(r):8.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cost", action="store_true", help="only the cost")
    ap.add_argument("--quality", action="store_true", help="only the astigmatism table")
    ap.add_argument("--focus", action="store_true", help="only the best-focus table")
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per measurement")
    args = ap.parse_args()
    every = not (args.cost or args.quality or args.focus)
    if every or args.cost:
        cost(args.repeats)
    if every or args.quality:
        quality()
    if every or args.focus:
        focus()


if __name__ == "__main__":
    main()
