"""Focus on real SEM noise: the sem-kriss pairs, the scan-noise model, and the SEM simulation.

Commands::

    python bench/sem_focus.py pairs        # real fast vs slow scans of the same in-focus fields
    python bench/sem_focus.py noise        # simulated scan noise against the real fast scans
    python bench/sem_focus.py section      # a mixed section of fast, slow and blurred slow scans
    python bench/sem_focus.py sim          # ISBI slices through the SEM model: AUC table
    python bench/sem_focus.py sim --slices 10 --doses 2 20   # a quicker table
    python bench/sem_focus.py sim --set noise_k=3.5   # the same with other detector parameters (pairs too)
    python bench/sem_focus.py sim --model other   # the same through another degradation model
    python bench/sem_focus.py astig        # astigmatic vs isotropic disk of equal area, scan noise
    python bench/sem_focus.py partial      # tiles with a quarter behind a disk: partial verdicts by cell blur / density
    python bench/sem_focus.py verdicts     # astigmatic and round disks judged against sharp scans: verdict kinds
    python bench/sem_focus.py wedges       # real scans: power along the columns / along the rows, by frequency
    python bench/sem_focus.py thresholds   # each level's noise threshold against the true noise, low-dose tiles

Data: ``MHD_KRISS_DIR`` (default ``tests/data/sem-kriss``, a vendored subset;
``../shared/data/sem-kriss`` holds all 25 pairs per folder) and
``MHD_ISBI_DIR`` (default ``tests/data/isbi2012``). See the READMEs there for
sources and licences.

**pairs** prints, per folder, the median and largest ``count(fast) /
count(slow)`` over the pairs (noise can only hide features, so <= 1.1 and <=
1.3 are the goals) and the fraction of pairs whose ``blur`` agrees within
0.3 px + 15 % (the goal: >= 90 %).

**noise** registers each fast scan on its slow scan (sub-pixel), takes the
residual as the real noise and compares its autocorrelation along x (lags 1,
2), across rows (lag 1), and its power spectrum along x, with
``simulate.sem_scan`` applied to the slow scan at the dose and ``tau`` that
match (the residual across rows also holds what registration misses).

**sim** scans the 30 ISBI slices with ``simulate.sem_scan``: a disk probe of
radius 0, 0.5, 1, 2, 3, 4 px, doses 2, 6, 20, 80 detected electrons per white
pixel, a detector time constant drawn from 0.2 .. 2 dwells, line jitter, random
gain, offset and bit depth. In focus = radius <= 0.5 px, out of focus = radius
>= 2 px. It reports the pooled AUC and the AUC within each dose for the blur
(higher blur = out of focus), the count and the classic measures, and the
count's AUC at each dose against each blurred radius on its own, and that of
the features whose winning level is at most :data:`FINE_SCALE` px alone.

``sim --model other`` makes the same table through a degradation model the
detector was neither designed nor tuned on (:func:`other_scan`): a two-pole
detector response (two RC stages of ``tau / 2``), a probe whose disk sends 10 %
of the current into a Gaussian halo 1.5 times its radius, Gaussian read noise
of 2 % of full scale on top of the shot noise, and twice the line jitter.

**bias** adds synthetic scan noise at the fast scans' level and correlation
(rows independent, a one-pole low-pass along x with lag-1 correlation 0.55,
standard deviation 6.5 % of the grey-level range: what ``noise`` and
``detect().noise`` read on the real 100 ns scans) to each real slow scan, two
realizations each, and prints how far the blur moves (noise cannot blur the
signal, so any move is the estimate's bias) and how often it stays within
0.3 px + 15 % of the clean scan's, with the count ratio noisy / clean.

**partial** scans 15 ISBI slices per dose (2, 5, 20, 80) with the right
quarter of each tile (the last column of the 4 x 4 grid) behind a disk of
radius 3, 4 or 6 px, and judges each tile against 15 sharp scans of the
same slices (``client``'s verdict rule, defaults): how many are called
``partial`` (or out of focus at all) by the cells' blur, and by the
cells' feature density (the rule for records without ``blur_cells``);
the sharp tiles themselves are judged too (false alarms).

**verdicts** judges 2:1 elliptical disks and round disks (radius 1 to 4 px)
on 10 ISBI slices against 30 sharp scans of them (doses 5, 20, 50) with
``client``'s rule, and prints the verdict kinds, and how many of the
elliptical ones the astigmatism strength alone (>= 0.2) would call.

**thresholds** scans 6 ISBI slices twice with independent noise (dose 2, 6,
20; in focus and a 3 px disk) and prints, over the 16 levels, the ratio of the
noise standard deviation the detector measures on one scan to that of the
level's response to the true noise (the difference of the two scans / sqrt 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from mhd.functions import detect, normalize
from mhd.functions.classic import CLASSIC_MEASURES
from mhd.functions.simulate import digitize, disk_otf, scan_lowpass, sem_scan, shot_noise, to_signal
from mhd.functions.worker.tileio import trim_frame

ROOT = Path(__file__).resolve().parents[1]
KRISS = Path(os.environ.get("MHD_KRISS_DIR", ROOT / "tests" / "data" / "sem-kriss"))
ISBI = Path(os.environ.get("MHD_ISBI_DIR", ROOT / "tests" / "data" / "isbi2012"))
FOLDERS = {"time": ("fast_100ns", "slow_30us"), "line": ("single_line", "integrated_50x")}
RADII = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)
#: Scale (px) below which a feature counts as fine in ``sim``'s extra line.
FINE_SCALE = 4.0
DOSES = (2.0, 6.0, 20.0, 80.0)


def scan(path: Path) -> np.ndarray:
    """A sem-kriss PNG's image area, as a tile is read: without the line of the microscope's frame it kept."""
    return trim_frame(iio.imread(path))


def pairs(folder: str) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(fast, slow, index) images of one sem-kriss folder."""
    fast, slow = FOLDERS[folder]
    out = []
    for f in sorted((KRISS / folder).glob(f"{fast}_*.png")):
        idx = f.stem.rsplit("_", 1)[1]
        s = KRISS / folder / f"{slow}_{idx}.png"
        if s.exists():
            out.append((scan(f), scan(s), idx))
    return out


def agree(a: float, b: float) -> bool:
    """The issue's tolerance for two blurs of one field: 0.3 px + 15 %."""
    return abs(a - b) <= 0.3 + 0.15 * max(a, b)


def cmd_pairs(args: argparse.Namespace) -> None:
    print("| folder | pairs | count fast/slow median | max | blur fast (median px) | blur slow | blur agrees |")
    print("|---|---|---|---|---|---|---|")
    for folder in FOLDERS:
        rows = []
        for fast, slow, _ in pairs(folder):
            f, s = detect(fast, backend="numpy", **args.set), detect(slow, backend="numpy", **args.set)
            rows.append((f.count / max(s.count, 1), f.blur, s.blur))
        if not rows:
            continue
        r = np.array(rows)
        ok = np.mean([agree(a, b) for _, a, b in rows])
        print(
            f"| {folder} | {len(r)} | {np.median(r[:, 0]):.2f} | {r[:, 0].max():.2f} | {np.median(r[:, 1]):.2f} "
            f"| {np.median(r[:, 2]):.2f} | {ok:.0%} |"
        )


def _register(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Residual fast - (gain * shifted slow + offset) on the interior: the real noise."""
    from scipy.ndimage import fourier_shift
    from skimage.registration import phase_cross_correlation

    f, s = fast.astype(float), slow.astype(float)
    shift, _, _ = phase_cross_correlation(f, s, upsample_factor=20)
    s = np.fft.ifft2(fourier_shift(np.fft.fft2(s), shift)).real
    m = 16
    f, s = f[m:-m, m:-m], s[m:-m, m:-m]
    g, o = np.linalg.lstsq(np.c_[s.ravel(), np.ones(s.size)], f.ravel(), rcond=None)[0]
    return f - (g * s + o)


def _noise_stats(n: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    n = n - n.mean()
    v = n.var()
    spec = np.mean(np.abs(np.fft.rfft(n * np.hanning(n.shape[1]), axis=1)) ** 2, axis=0)
    bands = np.array_split(spec[1:], 8)
    rel = np.array([b.mean() for b in bands])
    return (
        float(np.mean(n[:, 1:] * n[:, :-1]) / v),
        float(np.mean(n[:, 2:] * n[:, :-2]) / v),
        float(np.mean(n[1:] * n[:-1]) / v),
        rel / rel[0],
    )


def cmd_noise(args: argparse.Namespace) -> None:
    real, sim = [], []
    rng = np.random.default_rng(args.seed)
    for fast, slow, _ in pairs("time")[: args.pairs]:
        n = _register(fast, slow)
        real.append(_noise_stats(n))
        clean = sem_scan(slow, tau=args.tau, bits=16).astype(float)
        noisy = sem_scan(slow, dose=args.dose, tau=args.tau, bits=16, rng=rng).astype(float)
        sim.append(_noise_stats(noisy - clean))
    for name, rows in (("real 100 ns scans", real), (f"sem_scan dose {args.dose:g}, tau {args.tau:g}", sim)):
        a = np.array([r[:3] for r in rows])
        spec = np.median([r[3] for r in rows], axis=0)
        print(
            f"{name}: lag-1 x {np.median(a[:, 0]):.2f}, lag-2 x {np.median(a[:, 1]):.2f}, lag-1 y {np.median(a[:, 2]):.2f}; "
            f"power along x in 8 bands 0..pi (relative): {' '.join(f'{v:.2f}' for v in spec)}"
        )


def cmd_section(args: argparse.Namespace) -> None:
    """A mixed section: fast and slow scans in focus, slow scans blurred by a disk with fast-scan-like noise."""
    rng = np.random.default_rng(args.seed)
    tiles = []
    for fast, slow, idx in pairs("time")[: args.pairs]:
        tiles += [(f"fast_{idx}", fast, False), (f"slow_{idx}", slow, False)]
        r = float(rng.uniform(1.5, 4.0))
        tiles.append((f"blur{r:.1f}_{idx}", sem_scan(slow, r, dose=20.0, tau=0.75, rng=rng), True))
    print("| tile | blurred | count | blur px |")
    print("|---|---|---|---|")
    for name, img, blurred in tiles:
        d = detect(img, backend="numpy")
        print(f"| {name} | {'yes' if blurred else ''} | {d.count} | {d.blur:.2f} +- {d.blur_err:.2f} |")


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + P(tie) / 2."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + eq / 2)


def scan_conditions(rng: np.random.Generator) -> dict:
    """Random scan conditions of one simulated tile, drawn in this order: detector time constant 0.2-2 dwells,
    line jitter 0-1 %, gain 0.4-0.9, offset 0-0.1, 8 or 16 bits (``simulate.sem_scan``'s keywords)."""
    return dict(
        tau=float(rng.uniform(0.2, 2.0)),
        jitter=float(rng.uniform(0, 0.01)),
        gain=float(rng.uniform(0.4, 0.9)),
        offset=float(rng.uniform(0, 0.1)),
        bits=int(rng.choice([8, 16])),
    )


def other_scan(
    image: np.ndarray, radius: float, *, dose: float, tau: float, jitter: float, gain: float, offset: float, bits: int, rng
) -> np.ndarray:
    """A scan through a degradation model other than ``simulate.sem_scan``'s (module docstring, ``--model other``).

    Built from the simulation's public pieces, composed differently: 90 % of
    the probe current in the disk, 10 % in a Gaussian halo of standard deviation
    ``1.5 max(radius, 0.5)`` px; Poisson shot noise; two RC stages of time
    constant ``tau / 2`` each (a two-pole detector), every line settled on its
    first point; Gaussian read noise of 0.02 of full scale; line jitter twice
    ``jitter``.
    """
    signal = to_signal(image)
    pad = int(np.ceil(3 * 1.5 * max(radius, 0.5))) + 2
    x = np.pad(signal, pad, mode="reflect")
    ky = 2 * np.pi * np.fft.fftfreq(x.shape[0])[:, None]
    kx = 2 * np.pi * np.fft.rfftfreq(x.shape[1])[None, :]
    halo = np.exp(-0.5 * (ky**2 + kx**2) * (1.5 * max(radius, 0.5)) ** 2)
    disk = disk_otf(x.shape, radius) if radius > 0 else 1.0
    signal = np.fft.irfft2(np.fft.rfft2(x) * (0.9 * disk + 0.1 * halo), s=x.shape)[pad:-pad, pad:-pad]
    signal = np.clip(signal, 0.0, None)
    settle = int(np.ceil(10 * tau))
    current = shot_noise(np.concatenate([np.repeat(signal[:, :1], settle, axis=1), signal], axis=1), dose, rng)
    current = scan_lowpass(scan_lowpass(current, tau / 2), tau / 2)[:, settle:]
    current = current + rng.normal(0.0, 0.02, current.shape) + rng.normal(0.0, 2 * jitter, (current.shape[0], 1))
    return digitize(current, bits, gain, offset)


SCANS = {"sem_scan": sem_scan, "other": other_scan}


def cmd_sim(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    files = sorted(ISBI.glob("*.png"))[: args.slices]
    scan_with = SCANS[args.model]
    rows = []
    t0 = time.perf_counter()
    for f in files:
        img = iio.imread(f)
        for dose in args.doses:
            for r in RADII:
                scan = scan_with(img, r, dose=dose, **scan_conditions(rng), rng=rng)
                d = detect(scan, backend="numpy", **args.set)
                norm = normalize(scan, backend="numpy")
                fine = int((d.features[:, 2] <= FINE_SCALE).sum())  # features whose winning level is fine
                rows.append(
                    dict(dose=dose, radius=r, count=d.count, fine=fine, blur=d.blur, **{k: fn(norm) for k, fn in CLASSIC_MEASURES.items()})
                )
    print(
        f"{len(rows)} scans ({args.model}) of {len(files)} slices in {time.perf_counter() - t0:.0f} s; "
        "in focus: radius <= 0.5 px, out: >= 2 px"
    )
    dose = np.array([r["dose"] for r in rows])
    radius = np.array([r["radius"] for r in rows])
    inf_, oof = radius <= 0.5, radius >= 2.0
    measures = {
        "MHD blur (higher = out of focus)": np.array([-r["blur"] if np.isfinite(r["blur"]) else -1e9 for r in rows]),
        "MHD count": np.array([r["count"] for r in rows], float),
    }
    measures.update({k: np.array([r[k] for r in rows], float) for k in CLASSIC_MEASURES})
    print("| measure | pooled AUC | " + " | ".join(f"dose {d:g}" for d in args.doses) + " |")
    print("|---|---|" + "---|" * len(args.doses))
    for name, s in measures.items():
        per = [auc(s[inf_ & (dose == d)], s[oof & (dose == d)]) for d in args.doses]
        print(f"| {name} | {auc(s[inf_], s[oof]):.3f} | " + " | ".join(f"{a:.3f}" for a in per) + " |")
    count = measures["MHD count"]
    for d in args.doses:
        print(
            f"count AUC at dose {d:g}, in focus against each blurred radius: "
            + ", ".join(f"R={r:g}: {auc(count[inf_ & (dose == d)], count[(radius == r) & (dose == d)]):.3f}" for r in RADII if r >= 2.0)
        )
    fine = np.array([r["fine"] for r in rows], float)
    print(
        f"features whose level is t <= {FINE_SCALE:g} px only (not a reported measure: coarse features survive a disk "
        "of a few px), AUC by dose: "
        + ", ".join(f"{d:g}: {auc(fine[inf_ & (dose == d)], fine[oof & (dose == d)]):.3f}" for d in args.doses)
    )
    b = np.array([r["blur"] for r in rows])
    print("median blur (px) by disk radius, pooled over doses: " + ", ".join(f"R={r:g}: {np.nanmedian(b[radius == r]):.2f}" for r in RADII))
    print(
        "median blur (px) by dose, in focus (R=0): "
        + ", ".join(f"{d:g}: {np.nanmedian(b[(radius == 0) & (dose == d)]):.2f}" for d in args.doses)
    )


def cmd_astig(args: argparse.Namespace) -> None:
    """AUC of the astigmatism strength: elliptical disk (axes ``ratio``:1) against the round disk of equal area."""
    rng = np.random.default_rng(args.seed)
    files = sorted(ISBI.glob("*.png"))[: args.slices]
    rows = []
    for f in files:
        img = iio.imread(f)
        for dose in args.doses:
            for r in args.radii:
                for astig in (False, True):
                    q = np.sqrt(args.ratio) if astig else 1.0
                    scan = sem_scan(
                        img,
                        r * q,
                        radius_minor=r / q,
                        angle=float(rng.uniform(0, 180)),
                        dose=dose,
                        **scan_conditions(rng),
                        rng=rng,
                    )
                    d = detect(scan, backend="numpy")
                    rows.append((dose, r, astig, d.astigmatism if np.isfinite(d.astigmatism) else 0.0))
    a = np.array(rows, dtype=float)
    print(f"{len(files)} slices, axes {args.ratio:g}:1 vs round of equal area, scan noise (tau 0.2..2 dwells)")
    print("| radius px | " + " | ".join(f"dose {d:g}" for d in args.doses) + " | all doses |")
    print("|---|" + "---|" * (len(args.doses) + 1))
    for r in list(args.radii) + ["all"]:
        m = np.ones(len(a), bool) if r == "all" else a[:, 1] == r
        per = [auc(a[m & (a[:, 0] == d) & (a[:, 2] == 1), 3], a[m & (a[:, 0] == d) & (a[:, 2] == 0), 3]) for d in args.doses]
        print(f"| {r} | " + " | ".join(f"{v:.3f}" for v in per) + f" | {auc(a[m & (a[:, 2] == 1), 3], a[m & (a[:, 2] == 0), 3]):.3f} |")
    print(
        f"isotropic strength: median {np.median(a[a[:, 2] == 0, 3]):.3f}, 95th percentile {np.percentile(a[a[:, 2] == 0, 3], 95):.3f}; "
        f"astigmatic median {np.median(a[a[:, 2] == 1, 3]):.3f}"
    )


RINGS = ((0.02, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.35))


def wedge_ratio(img: np.ndarray) -> np.ndarray:
    """Power within 22.5 degrees of the k_y axis over power within 22.5 degrees of the k_x axis, per ring of :data:`RINGS` (cycles/px).

    Below 1 in a ring: the image carries less detail across its rows (along
    the columns) than along them at those frequencies, whatever the cause
    (content, probe astigmatism, line-to-line jitter).
    """
    x = img.astype(float)
    P = np.abs(np.fft.fft2((x - x.mean()) * np.outer(np.hanning(x.shape[0]), np.hanning(x.shape[1])))) ** 2
    ky, kx = np.fft.fftfreq(x.shape[0])[:, None], np.fft.fftfreq(x.shape[1])[None, :]
    r, th = np.hypot(kx, ky), np.arctan2(np.abs(ky), np.abs(kx))
    out = []
    for lo, hi in RINGS:
        ring = (r >= lo) & (r < hi)
        out.append(P[ring & (th > 3 * np.pi / 8)].mean() / P[ring & (th < np.pi / 8)].mean())
    return np.array(out)


def cmd_partial(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from mhd.client.judge import Judge
    from mhd.client.rule import Rule
    from mhd.functions.worker.scoring import measure

    rng = np.random.default_rng(args.seed)
    files = sorted(ISBI.glob("*.png"))[: args.slices]
    radii = (3.0, 4.0, 6.0)
    table: dict[tuple[float, float], tuple[int, int]] = {}
    for dose in args.doses:
        sharp = [
            measure(f.name, sem_scan(iio.imread(f), 0.0, dose=dose, **scan_conditions(rng), rng=rng), {"backend": "numpy"}) for f in files
        ]
        prior = [replace(r, verdict="ok") for r in sharp]

        def judged(rec):
            """(by cell blur, by cell density): called out of focus at all."""
            old = replace(rec, blur_cells=None, blur_cells_err=None)
            return tuple(Judge(Rule(), prior=prior).add(r)[0].verdict == "oof" for r in (rec, old))

        table[(dose, 0.0)] = tuple(map(sum, zip(*(judged(r) for r in sharp))))
        for radius in radii:
            hits = []
            for f in files:
                img, cond = iio.imread(f), scan_conditions(rng)
                tile = sem_scan(img, 0.0, dose=dose, **cond, rng=rng)
                side = tile.shape[1] - tile.shape[1] // 4
                tile[:, side:] = sem_scan(img, radius, dose=dose, **cond, rng=rng)[:, side:]
                hits.append(judged(measure(f.name, tile, {"backend": "numpy"})))
            table[(dose, radius)] = tuple(map(sum, zip(*hits)))
    n = len(files)
    print(f"{n} ISBI slices per dose, right quarter behind a disk; called out of focus, of {n}: by cell blur / by cell density")
    print("| disk radius | " + " | ".join(f"{d:g} e/px" for d in args.doses) + " |")
    print("|---|" + "---|" * len(args.doses))
    for radius in radii:
        print(f"| {radius:g} px | " + " | ".join("%d / %d" % table[(d, radius)] for d in args.doses) + " |")
    print("| sharp tiles | " + " | ".join("%d / %d" % table[(d, 0.0)] for d in args.doses) + " |")


def cmd_verdicts(args: argparse.Namespace) -> None:
    import copy
    from collections import Counter

    from mhd.client.judge import Judge
    from mhd.client.rule import Rule
    from mhd.functions.worker.scoring import measure

    rng = np.random.default_rng(args.seed)
    files = sorted(ISBI.glob("*.png"))[: args.slices]
    for dose in args.doses:
        judge = Judge(Rule())
        for rep in range(3):
            for f in files:
                scan = sem_scan(iio.imread(f), 0.0, dose=dose, **scan_conditions(rng), rng=rng)
                judge.add(measure(f"{f.stem}_sharp{rep}", scan, {"backend": "numpy"}))
        judge.flush()
        cell = np.sqrt(judge.cell_limit())
        print(f"dose {dose:g}: blur limit {judge.blur_threshold():.2f} px, cell limit {cell:.2f} px over the tile's cells")
        for radius in args.radii:
            for ratio in (1.0, 2.0):
                kinds, strong = Counter(), 0
                for f in files:
                    q = np.sqrt(ratio)
                    scan = sem_scan(
                        iio.imread(f),
                        radius * q,
                        radius_minor=radius / q,
                        angle=float(rng.uniform(0, 180)),
                        dose=dose,
                        **scan_conditions(rng),
                        rng=rng,
                    )
                    rec = measure(f.stem, scan, {"backend": "numpy"})
                    out = copy.deepcopy(judge).add(rec)[0]
                    kinds[out.kind or out.verdict] += 1
                    strong += (rec.astigmatism or 0.0) >= 0.2
                shape = "2:1 ellipse" if ratio > 1 else "round disk"
                print(f"  {shape}, radius {radius:g} px: {dict(sorted(kinds.items()))}; strength >= 0.2: {strong} of {len(files)}")


def cmd_wedges(args: argparse.Namespace) -> None:
    """Median ``wedge_ratio`` and ``detect().astigmatism`` of each scan kind of the real pairs."""
    print(
        "| folder | scan | power k_y / k_x at "
        + " | ".join(f"{lo:g}-{hi:g}" for lo, hi in RINGS)
        + " cycles/px | astigmatism median (>= 0.2) |"
    )
    print("|---|---|" + "---|" * (len(RINGS) + 1))
    for folder, names in FOLDERS.items():
        ps = pairs(folder)
        for k, name in enumerate(names):
            w = np.median([wedge_ratio(p[k]) for p in ps], axis=0)
            a = np.array([detect(p[k], backend="numpy").astigmatism for p in ps])
            print(
                f"| {folder} | {name} | " + " | ".join(f"{v:.2f}" for v in w) + f" | {np.nanmedian(a):.2f} ({(a >= 0.2).sum()}/{len(a)}) |"
            )


def cmd_bias(args: argparse.Namespace) -> None:
    import scipy.signal

    rng = np.random.default_rng(args.seed)
    print("| folder | scans | blur clean / noisy (median px) | median bias px | blur agrees | count noisy / clean: median | largest |")
    print("|---|---|---|---|---|---|---|")
    for folder in FOLDERS:
        rows = []
        for _, slow, _ in pairs(folder):
            clean = detect(slow, backend="numpy", **args.set)
            lo, hi = np.percentile(slow, [0.1, 99.9])
            top = np.iinfo(slow.dtype).max
            for _ in range(args.reps):
                white = rng.standard_normal((slow.shape[0], slow.shape[1] + 20))
                noise = scipy.signal.lfilter([1 - args.lag1], [1, -args.lag1], white, axis=1)[:, 20:]  # settled lines
                noise *= args.sd * (hi - lo) / noise.std()
                noisy = np.clip(np.round(slow + noise), 0, top).astype(slow.dtype)
                d = detect(noisy, backend="numpy", **args.set)
                rows.append((clean.blur, d.blur, d.count / max(clean.count, 1)))
        if not rows:
            continue
        r = np.array(rows)
        ok = np.mean([agree(a, b) for a, b, _ in rows])
        print(
            f"| {folder} | {len(r)} | {np.nanmedian(r[:, 0]):.2f} / {np.nanmedian(r[:, 1]):.2f} | {np.nanmedian(r[:, 1] - r[:, 0]):.2f} "
            f"| {ok:.0%} | {np.median(r[:, 2]):.2f} | {r[:, 2].max():.2f} |"
        )


def cmd_thresholds(args: argparse.Namespace) -> None:
    """Each level's noise threshold against the noise it must hold back, on structured low-dose tiles."""
    from mhd.functions import DEFAULTS, get_backend, scales
    from mhd.functions._noise import level_noise_std, noise_spectrum
    from mhd.functions._normalize import prepare
    from mhd.functions._scalespace import dog_pairs

    be, p = get_backend("numpy"), dict(DEFAULTS)
    t = scales(p["n_bin"], p["min_t"], p["max_t"])
    t0, t1, g = dog_pairs(t)
    print("| dose | disk px | measured / true noise std of the levels: min | median | max |")
    print("|---|---|---|---|---|")
    for dose in args.doses:
        for radius in (0.0, 3.0):
            ratios = []
            for f in sorted(ISBI.glob("*.png"))[: args.slices]:
                img = iio.imread(f)
                cond = dict(dose=dose, tau=1.0, gain=0.7, offset=0.05, bits=16)
                (n1, step), (n2, _) = (prepare(sem_scan(img, radius, rng=seed, **cond), p, t, be) for seed in (1, 2))
                measured = level_noise_std(np.maximum(noise_spectrum(n1[None], be), step**2 / 12), t0, t1, g)[0]
                noise = (n1 - n2) / np.sqrt(2)  # two independent scans of one field: their difference is noise only
                ky, kx = 2 * np.pi * np.fft.fftfreq(noise.shape[0])[:, None], 2 * np.pi * np.fft.rfftfreq(noise.shape[1])[None]
                F, k2 = np.fft.rfft2(noise), ky**2 + kx**2
                true = [
                    np.fft.irfft2(F * gi * (np.exp(-b * b * k2 / 2) - np.exp(-a * a * k2 / 2)), noise.shape).std()
                    for a, b, gi in zip(t0, t1, g)
                ]
                ratios.append(measured / np.array(true))
            r = np.median(ratios, axis=0)
            print(f"| {dose:g} | {radius:g} | {r.min():.3f} | {np.median(r):.3f} | {r.max():.3f} |")


def _param(text: str) -> tuple[str, float]:
    """``KEY=VALUE`` of ``--set``: a numeric detector parameter."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, float(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs", help="count ratio and blur agreement on the real pairs")
    p.set_defaults(fn=cmd_pairs)
    p.add_argument(
        "--set", type=_param, action="append", default=[], metavar="KEY=VALUE", help="detector parameter, e.g. noise_k=3.5 (repeatable)"
    )
    p = sub.add_parser("noise", help="simulated scan noise against the real fast scans")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--dose", type=float, default=20.0, help="electrons per white pixel of the simulation")
    p.add_argument("--tau", type=float, default=0.75, help="detector time constant of the simulation, dwells")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_noise)
    p = sub.add_parser("bias", help="real slow scans with synthetic fast-scan noise: how far the blur moves")
    p.add_argument("--sd", type=float, default=0.065, help="noise standard deviation, fraction of the grey-level range")
    p.add_argument("--lag1", type=float, default=0.55, help="lag-1 correlation of the noise along the scan line")
    p.add_argument("--reps", type=int, default=2, help="noise realizations per scan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set", type=_param, action="append", default=[], metavar="KEY=VALUE", help="detector parameter, e.g. noise_k=3.5 (repeatable)"
    )
    p.set_defaults(fn=cmd_bias)
    p = sub.add_parser("section", help="a mixed section of fast, slow and blurred scans")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_section)
    p = sub.add_parser("sim", help="AUC table on the ISBI slices through the SEM model")
    p.add_argument("--slices", type=int, default=30)
    p.add_argument("--doses", type=float, nargs="+", default=list(DOSES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set", type=_param, action="append", default=[], metavar="KEY=VALUE", help="detector parameter, e.g. noise_k=3.5 (repeatable)"
    )
    p.add_argument("--model", choices=["sem_scan", "other"], default="sem_scan", help="degradation model (other: see other_scan)")
    p.set_defaults(fn=cmd_sim)
    p = sub.add_parser("astig", help="astigmatism AUC with scan-correlated noise, including strong defocus")
    p.add_argument("--slices", type=int, default=10)
    p.add_argument("--doses", type=float, nargs="+", default=[5.0, 20.0, 50.0])
    p.add_argument("--radii", type=float, nargs="+", default=[2.0, 4.0, 6.0, 8.0], help="radius of the round disk, px")
    p.add_argument("--ratio", type=float, default=2.0, help="axis ratio of the astigmatic disk")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_astig)
    p = sub.add_parser("partial", help="tiles with a quarter behind a disk: partial verdicts by cell blur and by cell density")
    p.add_argument("--slices", type=int, default=15)
    p.add_argument("--doses", type=float, nargs="+", default=[2.0, 5.0, 20.0, 80.0])
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(fn=cmd_partial)
    p = sub.add_parser("verdicts", help="astigmatic and round disks judged against sharp scans: verdict kinds")
    p.add_argument("--slices", type=int, default=10)
    p.add_argument("--doses", type=float, nargs="+", default=[5.0, 20.0, 50.0])
    p.add_argument("--radii", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0], help="radius of the round disk, px")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_verdicts)
    p = sub.add_parser("thresholds", help="each level's noise threshold against the true noise of two independent scans")
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--doses", type=float, nargs="+", default=[2.0, 6.0, 20.0])
    p.set_defaults(fn=cmd_thresholds)
    p = sub.add_parser("wedges", help="real scans: detail along the columns against along the rows, and the astigmatism read")
    p.set_defaults(fn=cmd_wedges)
    args = ap.parse_args()
    args.set = dict(getattr(args, "set", []))
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
