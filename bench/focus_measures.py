"""MHD count against classic focus measures on simulated SEM through-focus series.

Data: the 30 in-focus ISBI 2012 training slices (serial-section TEM of the
Drosophila first-instar larva ventral nerve cord, Cardona et al., PLoS Biol.
8(10) 2010; ISBI 2012 challenge, Arganda-Carreras et al., Front. Neuroanat.
2015), each taken as recorded with a 0.5 px probe and scanned again by
:mod:`mhd.functions.simulate` at

* defocus 0, 0.5, 1, 2, 3, 4 um, i.e. a Gaussian probe of sigma
  ``sqrt(0.5**2 + defocus**2)`` = 0.50, 0.71, 1.12, 2.06, 3.04, 4.03 px
  (an added blur of ``defocus`` px);
* every dose of ``--doses`` (electrons per pixel at full brightness; inf = no
  shot noise): 5, 20, 100, inf by default;
* a random gain (0.4..0.9 of full scale), offset (0..0.1) and bit depth (8 or
  16) per scan.

**In focus** = probe sigma <= 0.5 px (defocus 0); **out of focus** = probe
sigma >= 2 px (defocus >= 2 um); the tiles in between (0.7 and 1.1 px) enter the
rank correlation only.

Scores: the MHD feature count (``mhd.functions.detect``) and, on the image
normalised by ``mhd.functions.normalize`` (so gain, offset and bit depth do not
matter to them either), the variance of the Laplacian, Tenengrad and Brenner
(``mhd.functions.classic``).

Reported per measure, pooled over all slices, doses and detector settings:

* Spearman rho of the score with |defocus| (-1 is a perfect ranking);
* AUC: probability that an in-focus tile outscores an out-of-focus tile of
  any slice, dose and setting (1 perfect, 0.5 chance, < 0.5 backwards);
* the worst AUC over (in-focus dose, out-of-focus dose) pairs, naming the pair;
* the AUC within each dose.

A count can also rise with noise, which would buy AUC for the wrong reason, so
``compare`` and ``sweep`` also report how much shot noise is counted: the
median noisy/clean count ratio of the most defocused scans (worst dose; > 1
means noise adds features) and the features per megapixel on featureless noisy
scans. ``loglinear`` fits log(count) against defocus 0..5 um per slice.

Commands (a sweep row takes ~35 s on 2 cores)::

    python bench/focus_measures.py compare                    # the table, detector defaults
    python bench/focus_measures.py compare --polarity both --threshold 0.1
    python bench/focus_measures.py compare --polarity both --invert   # membranes bright
    python bench/focus_measures.py sweep                      # detector parameters
    python bench/focus_measures.py sweep --grid-polarity both --grid-threshold 0.04 0.08 0.12 \\
        --grid-noise-k 3 3.5 4 --grid-scales --grid-n-bin        # another grid
    python bench/focus_measures.py noise                      # estimate_noise vs truth
    python bench/focus_measures.py loglinear --polarity both  # per-slice r of log(count) vs defocus

``MHD_ISBI_DIR`` overrides the data folder (default ``tests/data/isbi2012``,
whose README.md holds the attribution).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import imageio.v3 as iio
import numpy as np
from scipy import stats

from mhd.functions import DEFAULTS, detect_batch, estimate_noise, normalize, saturation_limits
from mhd.functions.classic import CLASSIC_MEASURES
from mhd.functions.simulate import blur, defocus_image, digitize, psf_sigma, shot_noise, to_signal

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MHD_ISBI_DIR", ROOT / "tests" / "data" / "isbi2012"))
DEFOCUS_UM = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)
IN_FOCUS_MAX_SIGMA = 0.5  # px
OUT_OF_FOCUS_MIN_SIGMA = 2.0  # px
DOSES = (5.0, 20.0, 100.0, np.inf)
BATCH = 8


@dataclass(frozen=True)
class Scan:
    """One simulated tile and how it was made."""

    slice_index: int
    defocus: float  # um
    sigma: float  # px
    dose: float  # electrons / px at full brightness
    gain: float
    offset: float
    bits: int
    image: np.ndarray


def load_slices(limit: int | None = None, invert: bool = False) -> list[np.ndarray]:
    """The in-focus slices (uint8); ``invert`` gives membranes bright, as in raw backscatter SEM."""
    paths = sorted(DATA.glob("train_*.png"))[:limit]
    if not paths:
        raise SystemExit(f"no ISBI slices (train_*.png) in {DATA}; set MHD_ISBI_DIR")
    return [255 - iio.imread(p) if invert else iio.imread(p) for p in paths]


def make_scans(slices: list[np.ndarray], doses: Iterable[float], seed: int) -> list[Scan]:
    """Every slice at every defocus and dose, with random detector settings."""
    rng = np.random.default_rng(seed)
    scans = []
    for i, image in enumerate(slices):
        for d, dose in itertools.product(DEFOCUS_UM, doses):
            gain, offset, bits = rng.uniform(0.4, 0.9), rng.uniform(0.0, 0.1), int(rng.choice([8, 16]))
            tile = defocus_image(image, d, dose=dose, gain=gain, offset=offset, bits=bits, rng=rng)
            scans.append(Scan(i, d, float(psf_sigma(d)), dose, gain, offset, bits, tile))
    return scans


def mhd_scores(scans: list[Scan], measure: str = "count", **params) -> np.ndarray:
    """MHD counts (or minus the blur, so that higher means sharper), batched by equal dtype."""
    out = np.empty(len(scans))
    for start in range(0, len(scans), BATCH):
        chunk = scans[start : start + BATCH]
        for dtype in {s.image.dtype for s in chunk}:
            idx = [start + j for j, s in enumerate(chunk) if s.image.dtype == dtype]
            dets = detect_batch([scans[k].image for k in idx], backend="numpy", **params)
            out[idx] = [d.count if measure == "count" else (-d.blur if np.isfinite(d.blur) else -1e9) for d in dets]
    return out


def classic_scores(scans: list[Scan], fn: Callable[[np.ndarray], float]) -> np.ndarray:
    return np.array([fn(normalize(s.image, backend="numpy")) for s in scans])


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + P(pos == neg) / 2 (Mann-Whitney)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def evaluate(scans: list[Scan], score: np.ndarray) -> dict[str, object]:
    """Spearman rho, pooled AUC, worst cross-dose AUC and per-dose AUC of one measure."""
    sigma = np.array([s.sigma for s in scans])
    dose = np.array([s.dose for s in scans])
    defocus = np.array([abs(s.defocus) for s in scans])
    inf_ = sigma <= IN_FOCUS_MAX_SIGMA + 1e-9
    oof = sigma >= OUT_OF_FOCUS_MIN_SIGMA
    doses = sorted(set(dose))
    pairs = {(a, b): auc(score[inf_ & (dose == a)], score[oof & (dose == b)]) for a in doses for b in doses}
    worst = min(pairs, key=pairs.get)
    return {
        "rho": float(stats.spearmanr(score, defocus).statistic),
        "auc": auc(score[inf_], score[oof]),
        "worst": pairs[worst],
        "worst_pair": worst,
        "per_dose": {a: pairs[(a, a)] for a in doses},
    }


def _dose(d: float) -> str:
    return "inf" if np.isinf(d) else f"{d:g}"


def print_table(rows: dict[str, dict[str, object]], doses: list[float]) -> None:
    head = (
        "| measure | Spearman rho vs abs(defocus) | pooled AUC | worst AUC (in-focus dose / OOF dose) | "
        + " | ".join(f"AUC dose {_dose(d)}" for d in doses)
        + " |"
    )
    print(head)
    print("|" + "---|" * (4 + len(doses)))
    for name, r in rows.items():
        a, b = r["worst_pair"]
        per = " | ".join(f"{r['per_dose'][d]:.3f}" for d in doses)
        print(f"| {name} | {r['rho']:.3f} | {r['auc']:.3f} | {r['worst']:.3f} ({_dose(a)} / {_dose(b)}) | {per} |")


def provenance() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "functions"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "git: unknown"
    return f"git {head}" + (" (functions/ has uncommitted changes)" if dirty else "")


def header(slices: list[np.ndarray], scans: list[Scan], doses: list[float], seed: int, invert: bool) -> None:
    print(
        f"Data: {len(slices)} ISBI 2012 slices ({DATA}){', contrast inverted' if invert else ''}; {len(scans)} "
        f"simulated scans, seed {seed}; {provenance()}"
    )
    print(
        f"Defocus (um): {list(DEFOCUS_UM)}; probe sigma (px): "
        f"{[round(float(psf_sigma(d)), 2) for d in DEFOCUS_UM]}; doses (e-/px): {[_dose(d) for d in doses]}"
    )
    print(
        f"In focus: probe sigma <= {IN_FOCUS_MAX_SIGMA} px; out of focus: probe sigma >= "
        f"{OUT_OF_FOCUS_MIN_SIGMA} px. Random gain 0.4-0.9, offset 0-0.1, 8/16 bit.\n"
    )


# ------------------------------------------------------------------ commands

#: Detector parameters the commands set and report.
TUNED = ("polarity", "threshold", "noise_k", "noise_margin", "min_t", "max_t", "n_bin")


def _params(args: argparse.Namespace) -> dict[str, object]:
    """Detector parameters given on the command line (the rest keep DEFAULTS)."""
    return {k: getattr(args, k) for k in TUNED if getattr(args, k, None) is not None}


def _series(args: argparse.Namespace) -> tuple[list, list]:
    """The simulated scans and featureless flat fields that compare and sweep score, header printed."""
    slices = load_slices(args.slices, args.invert)
    scans = make_scans(slices, args.doses, args.seed)
    flats = flat_fields([d for d in args.doses if np.isfinite(d)], args.seed + 1)
    header(slices, scans, args.doses, args.seed, args.invert)
    return scans, flats


def cmd_compare(args: argparse.Namespace) -> None:
    scans, flats = _series(args)
    params = _params(args)
    t0 = time.perf_counter()
    used = ", ".join(f"{k}={params.get(k, DEFAULTS[k])}" for k in TUNED)
    mhd = mhd_scores(scans, **params)
    rows = {f"MHD count ({used})": evaluate(scans, mhd), "MHD blur (lower = sharper)": evaluate(scans, mhd_scores(scans, "blur", **params))}
    for name, fn in CLASSIC_MEASURES.items():
        rows[name] = evaluate(scans, classic_scores(scans, fn))
    print_table(rows, sorted(args.doses))
    gain, flat = noise_leak(scans, mhd, flats, mhd_scores(flats, **params))
    print(
        f"\nMHD and shot noise: at defocus {max(DEFOCUS_UM)} um the noisy/clean count ratio is at most "
        f"{gain:.2f} (median over slices, worst dose);"
    )
    print(
        f"featureless noisy scans give at most {flat:.0f} features per megapixel (median, worst dose). ({time.perf_counter() - t0:.0f} s)"
    )


def sweep_configs(args: argparse.Namespace) -> list[dict[str, object]]:
    """Rows of the sweep: polarity x threshold x noise_k, then each scale range, then each n_bin."""
    configs: list[dict[str, object]] = [
        dict(polarity=p, threshold=t, noise_k=k) for p in args.grid_polarity for t in args.grid_threshold for k in args.grid_noise_k
    ]
    configs += [dict(min_t=a, max_t=b) for a, b in (map(float, r.split(":")) for r in args.grid_scales)]
    configs += [dict(n_bin=n) for n in args.grid_n_bin]
    return configs


def flat_fields(doses: Iterable[float], seed: int, size: int = 512) -> list[Scan]:
    """Featureless scans: uniform signal 0.15..0.85 with shot noise, random detector settings."""
    rng = np.random.default_rng(seed)
    scans = []
    for dose in doses:
        for level in np.linspace(0.15, 0.85, 6):
            gain, offset, bits = rng.uniform(0.4, 0.9), rng.uniform(0.0, 0.1), int(rng.choice([8, 16]))
            tile = digitize(shot_noise(np.full((size, size), level), dose, rng), bits, gain, offset)
            scans.append(Scan(-1, 0.0, 0.0, dose, gain, offset, bits, tile))
    return scans


def noise_leak(scans: list[Scan], score: np.ndarray, flats: list[Scan], flat_score: np.ndarray) -> tuple[float, float]:
    """How much shot noise is counted as features.

    Returns
    -------
    gain : float
        Largest (over finite doses) median (over slices) of count(dose) / count(no noise)
        for the most defocused scans; > 1 means noise adds features.
    flat : float
        Largest (over doses) median features per megapixel on featureless noisy scans.
    """
    far = max(s.defocus for s in scans)
    clean = {s.slice_index: score[i] for i, s in enumerate(scans) if s.defocus == far and np.isinf(s.dose)}
    ratios: dict[float, list[float]] = {}
    for i, s in enumerate(scans):
        if s.defocus == far and np.isfinite(s.dose) and clean.get(s.slice_index, 0) > 0:
            ratios.setdefault(s.dose, []).append(score[i] / clean[s.slice_index])
    gain = max((float(np.median(v)) for v in ratios.values()), default=float("nan"))
    per_mpx = flat_score / (flats[0].image.size / 1e6) if flats else flat_score
    flat = max((float(np.median(per_mpx[[f.dose == d for f in flats]])) for d in {f.dose for f in flats}), default=float("nan"))
    return gain, flat


def cmd_sweep(args: argparse.Namespace) -> None:
    scans, flats = _series(args)
    given = _params(args)
    base = {k: given.get(k, DEFAULTS[k]) for k in TUNED}
    print(f"Base: {base}; each row changes only the listed parameters.")
    print(f"noise gain: median count(dose)/count(no noise) at defocus {max(DEFOCUS_UM)} um, worst dose (> 1: noise counted as features);")
    print(f"flat: features per megapixel on featureless noisy scans ({len(flats)} scans), worst dose. ms/tile is indicative (2 cores).\n")
    print(
        "| parameters | Spearman rho | pooled AUC | worst AUC (in-focus dose / OOF dose) | min AUC within a "
        "dose (dose) | noise gain | flat /Mpx | median count in focus, no noise | ms/tile |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    inf_clean = np.array([s.sigma <= IN_FOCUS_MAX_SIGMA and np.isinf(s.dose) for s in scans])
    for cfg in [{}] + sweep_configs(args):
        t0 = time.perf_counter()
        score = mhd_scores(scans, **{**given, **cfg})
        ms = (time.perf_counter() - t0) * 1e3 / len(scans)
        gain, flat = noise_leak(scans, score, flats, mhd_scores(flats, **{**given, **cfg}))
        r = evaluate(scans, score)
        a, b = r["worst_pair"]
        d_min = min(r["per_dose"], key=r["per_dose"].get)
        name = ", ".join(f"{k}={v}" for k, v in cfg.items()) or "base"
        clean = f"{np.median(score[inf_clean]):.0f}" if inf_clean.any() else "-"
        print(
            f"| {name} | {r['rho']:.3f} | {r['auc']:.3f} | {r['worst']:.3f} ({_dose(a)} / {_dose(b)}) | "
            f"{r['per_dose'][d_min]:.3f} ({_dose(d_min)}) "
            f"| {gain:.2f} | {flat:.0f} | {clean} | {ms:.0f} |",
            flush=True,
        )


def noise_truth(image: np.ndarray, added_blur: float, dose: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """(estimated, true shot, estimate without shot noise), in normalised units of the noisy scan.

    The scan is 16 bit at gain 0.8, offset 0.05, so quantisation is negligible.
    """
    gain, offset, bits = 0.8, 0.05, 16
    signal = blur(to_signal(image), added_blur)
    noisy = digitize(shot_noise(signal, dose, rng), bits, gain, offset)
    clean = digitize(signal, bits, gain, offset)
    lo, hi = saturation_limits(noisy, backend="numpy")  # what normalize() maps to [0, 1]
    shot = (noisy - (offset + gain * signal) * (2**bits - 1)) / (hi - lo)
    est = estimate_noise(normalize(noisy, backend="numpy"), backend="numpy")
    return est, float(np.std(shot)), estimate_noise(normalize(clean, backend="numpy"), backend="numpy")


def cmd_noise(args: argparse.Namespace) -> None:
    slices = load_slices(args.slices, args.invert)
    rng = np.random.default_rng(args.seed)
    print(f"Data: {len(slices)} ISBI 2012 slices ({DATA}); 16-bit scans, gain 0.8, offset 0.05; {provenance()}")
    print("estimate = estimate_noise(normalize(scan)); true = std of the added shot noise in the same normalised units;")
    print("intrinsic = estimate on the scan without shot noise (the TEM slice's own noise, after the added blur);")
    print("expected = sqrt(true^2 + intrinsic^2). Medians over slices.\n")
    print(
        "| added blur (px) | dose (e-/px) | true shot noise | intrinsic | estimate | estimate / true | "
        "estimate / expected (min-max over slices) |"
    )
    print("|---|---|---|---|---|---|---|")
    for sigma in (0.0, 2.0):  # the slice as recorded; blurred so that its own noise is gone
        for dose in args.doses:
            if np.isinf(dose):
                continue
            rows = np.array([noise_truth(im, sigma, dose, rng) for im in slices])
            est, true, intrinsic = rows.T
            expected = np.hypot(true, intrinsic)
            print(
                f"| {sigma:g} | {_dose(dose)} | {np.median(true):.4f} | {np.median(intrinsic):.4f} | "
                f"{np.median(est):.4f} | {np.median(est / true):.3f} | {np.median(est / expected):.3f} "
                f"({np.min(est / expected):.3f}-{np.max(est / expected):.3f}) |"
            )


def cmd_loglinear(args: argparse.Namespace) -> None:
    slices = load_slices(args.slices, args.invert)
    params = _params(args)
    defocus = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    rng = np.random.default_rng(args.seed)
    used = ", ".join(f"{k}={params.get(k, DEFAULTS[k])}" for k in TUNED)
    print(
        f"Pearson r of log(count) with |defocus| = {defocus.tolist()} um (added blur 0..5 px), per slice; "
        f"{len(slices)} slices{' (contrast inverted)' if args.invert else ''}; {used}; {provenance()}\n"
    )
    print("| dose (e-/px) | min r | median r | max r | pooled r | slices with a rising step | median counts |")
    print("|---|---|---|---|---|---|---|")
    for dose in args.doses:
        counts = np.array(
            [
                [d.count for d in detect_batch([defocus_image(im, z, dose=dose, rng=rng) for z in defocus], backend="numpy", **params)]
                for im in slices
            ]
        )
        logc = np.log(np.maximum(counts, 1))
        r = np.array([stats.pearsonr(defocus, row).statistic for row in logc])
        pooled = stats.pearsonr(np.tile(defocus, len(logc)), logc.ravel()).statistic
        rising = int((np.diff(counts, axis=1) >= 0).any(axis=1).sum())
        print(
            f"| {_dose(dose)} | {r.min():.4f} | {np.median(r):.4f} | {r.max():.4f} | {pooled:.4f} | {rising} | "
            f"{np.median(counts, axis=0).astype(int).tolist()} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, fn, helptext in (
        ("compare", cmd_compare, "MHD vs classic measures (markdown table)"),
        ("sweep", cmd_sweep, "MHD parameter grid (markdown table)"),
        ("noise", cmd_noise, "estimate_noise against the true shot noise"),
        ("loglinear", cmd_loglinear, "per-slice log-linear fit of the count against defocus"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.set_defaults(func=fn)
        p.add_argument("--slices", type=int, default=None, help="use only the first N slices (default all 30)")
        p.add_argument(
            "--doses",
            type=float,
            nargs="+",
            default=list(DOSES if name != "noise" else (5.0, 20.0, 100.0, 1000.0)),
            help="electrons/px at full brightness; inf = no shot noise",
        )
        p.add_argument("--seed", type=int, default=2012)
        p.add_argument("--invert", action="store_true", help="invert the slices' contrast (membranes bright) before simulating")
        if name == "sweep":
            p.add_argument("--grid-polarity", nargs="*", default=["dark", "bright", "both"], choices=("dark", "bright", "both"))
            p.add_argument("--grid-threshold", nargs="*", type=float, default=[0.02, 0.08, 0.12])
            p.add_argument("--grid-noise-k", nargs="*", type=float, default=[3.0, 4.0, 5.0])
            p.add_argument("--grid-scales", nargs="*", default=["0.75:8", "1.5:8", "2:8", "1:6", "1:12"], help="min_t:max_t pairs (px)")
            p.add_argument("--grid-n-bin", nargs="*", type=int, default=[8, 32])
        if name != "noise":
            for key in ("threshold", "noise_k", "noise_margin", "min_t", "max_t"):
                p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=float, default=None)
            p.add_argument("--n-bin", dest="n_bin", type=int, default=None)
            p.add_argument("--polarity", choices=("dark", "bright", "both"), default=None)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
