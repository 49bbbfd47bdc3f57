"""Throughput of the embedded default (the local engine) on whole sections, against the detector alone.

For each tile size (256^2, 1024^2, 4096^2 by default) a section of uncompressed
TIFF tiles (ISBI 2012 slices tiled to the size) is written to a temporary data
root, then measured in one run:

* ``detect``          the detector in this process on decoded arrays, default
  threads (all CPUs): tiles/s = 1000 / median ms
* ``detect x cores``  the detector on one thread, times the number of CPUs: the
  ceiling for a pool of single-threaded workers
* ``local``           ``LocalExecutor`` (the embedded default: the endpoint's
  ``ProcessPoolEngine``, spawned workers) started fresh, as the ``client``
  command starts it, with every task of the section submitted at once:
  ``first s`` = seconds from submitting to the first verdict (a task's
  result), ``section s`` = to the last, ``tiles/s`` = tiles / section s;
  ``warm tiles/s`` = a second pass over the section on the same engine;
  with ``--compare`` also ``local, no warm-up``: a fresh engine whose workers
  start at the first tasks, as before :meth:`LocalExecutor._warm`.
  ``--lead`` seconds pass between starting the engine and submitting: the time
  a client spends discovering (and transferring) tiles while the engine starts

Usage::

    python bench/bench_sections.py                          # 256 1024 4096, 2 repeats
    python bench/bench_sections.py --sizes 256 --tiles 32 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from mhd.client.executors import LocalExecutor
from mhd.functions import detect, get_backend

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "isbi2012"
OUT = Path(__file__).resolve().parent / "out"
#: Tiles per section and tiles per task by tile side: a section of ~64 Mpx at most, tasks of ~4 Mpx.
SECTION = {256: (64, 16), 1024: (16, 2), 4096: (4, 1)}


def tile(size: int, k: int) -> np.ndarray:
    """A size x size uint8 EM tile: ISBI slices ``k ..`` tiled (mirrored by rolling) to the size."""
    slices = [iio.imread(p) for p in sorted(DATA.glob("train_*.png"))[:4]]
    base = np.roll(np.block([[slices[0], slices[1]], [slices[2], slices[3]]]), 97 * k, axis=(0, 1))
    reps = -(-size // base.shape[0])
    return np.ascontiguousarray(np.tile(base, (reps, reps))[:size, :size])


def make_section(size: int, n: int) -> tuple[Path, list[str], list[np.ndarray]]:
    root = Path(tempfile.mkdtemp(prefix=f"mhd-section-{size}-"))
    names, images = [], []
    for k in range(n):
        names.append(f"tile_{k:03d}.tif")
        images.append(tile(size, k))
        tifffile.imwrite(root / names[-1], images[-1])
    return root, names, images


def detector_alone(images: list[np.ndarray], repeat: int) -> tuple[float, float]:
    """Median ms per tile of detect with all threads and on one thread (warm)."""
    one = get_backend("numpy", workers=1)
    detect(images[0], backend="numpy")
    detect(images[0], backend=one)
    many, single = [], []
    for _ in range(repeat):
        for im in images[: min(len(images), 4)]:
            t0 = time.perf_counter()
            detect(im, backend="numpy")
            t1 = time.perf_counter()
            detect(im, backend=one)
            many.append((t1 - t0) * 1e3)
            single.append((time.perf_counter() - t1) * 1e3)
    return statistics.median(many), statistics.median(single)


def section_pass(backend: LocalExecutor, names: list[str], batch: int, t0: float) -> tuple[float, float]:
    """Submit every task at once; seconds from ``t0`` to the first and to the last verdict."""
    futures = [backend.submit(names[i : i + batch]) for i in range(0, len(names), batch)]
    first = None
    for f in _as_completed(futures):
        entries = f.result(timeout=900)
        assert all(e["error"] is None for e in entries), entries
        first = first if first is not None else time.perf_counter() - t0
    return first, time.perf_counter() - t0


def _as_completed(futures):
    import concurrent.futures

    return concurrent.futures.as_completed(futures)


def run(size: int, repeat: int, tiles: int | None, lead: float, compare: bool) -> list[dict]:
    n, batch = SECTION[size]
    n = tiles or n
    root, names, images = make_section(size, n)
    det_ms, det1_ms = detector_alone(images, repeat)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = {}
    for _ in range(repeat):
        for kind in ("local", "local, no warm-up") if compare else ("local",):  # alternated: a noisy machine slows both alike
            with LocalExecutor(data_root=root) as backend:
                if kind != "local":
                    backend._warm = lambda engine: None  # what LocalExecutor did before it warmed its workers
                    backend._engine.executor.shutdown(wait=True)  # the warm-up queued by __init__ is undone by a fresh engine
                    backend._engine = backend._new_engine()
                time.sleep(lead)
                first, section = section_pass(backend, names, batch, time.perf_counter())
                _, again = section_pass(backend, names, batch, time.perf_counter())
            for key, value in (("first", first), ("section", section), ("warm", again)):
                rows.setdefault(kind, {}).setdefault(key, []).append(value)
    common = dict(
        size=size,
        tiles=n,
        batch=batch,
        cores=cores,
        workers=backend.workers,
        lead_s=lead,
        detect_ms=det_ms,
        detect_tiles_s=1e3 / det_ms,
        detect_1thread_ms=det1_ms,
        detect_x_cores_tiles_s=cores * 1e3 / det1_ms,
    )
    return [
        dict(
            common,
            engine=kind,
            first_s=statistics.median(r["first"]),
            section_s=statistics.median(r["section"]),
            tiles_s=n / statistics.median(r["section"]),
            warm_tiles_s=n / statistics.median(r["warm"]),
        )
        for kind, r in rows.items()
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], choices=sorted(SECTION))
    ap.add_argument("--repeat", type=int, default=2, help="fresh engines per size (medians)")
    ap.add_argument("--tiles", type=int, help="tiles per section (default by size: 64, 16, 4)")
    ap.add_argument("--lead", type=float, default=0.0, help="seconds between starting the engine and submitting")
    ap.add_argument("--compare", action="store_true", help="also measure the engine without its warm-up, alternated")
    ap.add_argument("--json", type=Path, default=OUT / "sections.json")
    args = ap.parse_args(argv)
    rows = [row for s in args.sizes for row in run(s, args.repeat, args.tiles, args.lead, args.compare)]
    print(f"lead {args.lead:g} s; {rows[0]['cores']} CPUs; medians of {args.repeat} fresh engines")
    print(
        "| size | tiles | workers | detect tiles/s | detect 1-thread x cores tiles/s | engine | first verdict "
        "s | section s | tiles/s | warm tiles/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['tiles']} | {r['workers']} | {r['detect_tiles_s']:.1f} | "
            f"{r['detect_x_cores_tiles_s']:.1f} | {r['engine']} | {r['first_s']:.2f} | {r['section_s']:.2f} | "
            f"{r['tiles_s']:.1f} | {r['warm_tiles_s']:.1f} |"
        )
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, rows=rows), indent=1))


if __name__ == "__main__":
    main()
