"""Load: many small tiles through ``client submit``'s pipeline on the local backend.

A section of ``--tiles`` PNG tiles (``--size`` px a side, real EM texture cut
from the ISBI slices) is scored by :func:`mhd.client.submit.run_section`
with the local backend (the endpoint's process-pool engine, spawned workers,
inline transport, fsync'ed results log), exactly as ``client submit`` runs.
Every ``--interval`` seconds a sampler records the tiles recorded so far, the
client's resident memory (RSS) and the workers' total RSS. Printed: tiles/s
overall (start-up included) and at steady state (after the first
``--warmup`` fraction of tiles), and the RSS growth from the end of the
warm-up to the largest later sample. Measured, not asserted
(``tests/load/test_load.py`` checks one record per tile and flat memory on a
CI-sized run).

Usage::

    python bench/bench_load.py [--tiles 10000] [--size 64] [--workers 2] [--batch 0] [--interval 1] [--traced] [--out bench/out/load.json]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

import imageio.v3 as iio
import psutil
from rich.console import Console

from mhd.client.config import load
from mhd.client.options import RunOptions
from mhd.client.rule import Rule
from mhd.client.submit import run_section
from mhd.contracts.files import RESULTS_NAME

ISBI = Path(__file__).resolve().parents[1] / "tests" / "data" / "isbi2012"
MB = 2**20


@dataclass
class Sample:
    """One look at the run: seconds since start, tiles recorded, RSS in MiB, and the
    client's Python heap (``tracemalloc``'s traced bytes, MiB; nan when not tracing)."""

    t: float
    recorded: int
    client_mib: float
    workers_mib: float
    traced_mib: float = float("nan")

    @property
    def total_mib(self) -> float:
        return self.client_mib + self.workers_mib


def make_section(folder: Path, n: int, size: int = 64, distinct: int = 256) -> Path:
    """``n`` PNG tiles of ``size`` x ``size`` px; ``distinct`` different crops, repeated round-robin."""
    slices = [iio.imread(p) for p in sorted(ISBI.glob("train_*.png"))]
    step = max(1, (slices[0].shape[0] - size) // 3)
    crops = []
    for i in range(distinct):
        image = slices[i % len(slices)]
        r, c = divmod((i // len(slices)) % 16, 4)
        crops.append(iio.imwrite("<bytes>", image[r * step : r * step + size, c * step : c * step + size], extension=".png"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"tile_{i:05d}.png").write_bytes(crops[i % distinct])
    return folder


def _processes(children: list) -> list[psutil.Process]:
    """psutil handles of child processes, leaving out any that exited since they were listed (a worker replaced)."""
    procs = []
    for child in children:
        try:
            procs.append(psutil.Process(child.pid))
        except psutil.Error:
            pass
    return procs


def _rss(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / MB


class RssSampler(threading.Thread):
    """Samples this process's and its pool workers' RSS, and the records written, every ``interval`` s.

    Parameters
    ----------
    results : Path
        The section's results log (its lines are the tiles recorded).
    interval : float
        Seconds between samples.
    on_sample : callable, optional
        Called with each :class:`Sample`.
    """

    def __init__(self, results: Path, interval: float = 1.0, on_sample=None) -> None:
        super().__init__(daemon=True)
        self.results, self.interval, self.on_sample = results, interval, on_sample
        self.samples: list[Sample] = []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()
        self._me = psutil.Process()

    def sample(self) -> Sample:
        recorded = self.results.read_bytes().count(b"\n") if self.results.exists() else 0
        workers = _processes(multiprocessing.active_children())
        traced = tracemalloc.get_traced_memory()[0] / MB if tracemalloc.is_tracing() else float("nan")
        s = Sample(
            round(time.perf_counter() - self._t0, 2), recorded, round(self._me.memory_info().rss / MB, 1), round(_rss(workers), 1), traced
        )
        self.samples.append(s)
        if self.on_sample is not None:
            self.on_sample(s)
        return s

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()


def growth(samples: list[Sample], tiles: int, warmup: float = 0.2) -> dict:
    """RSS growth after warm-up: largest later sample over the first sample past ``warmup * tiles``.

    Returns
    -------
    dict
        ``client`` and ``total`` (fractions, 0.05 = 5 %), the warm-up sample
        and the steady tiles/s between it and the last sample.
    """
    after = [s for s in samples if s.recorded >= warmup * tiles]
    if len(after) < 2:
        raise ValueError(f"only {len(after)} sample(s) after warm-up: lower --interval or raise --tiles")
    base, last = after[0], after[-1]
    return {
        "warmup_sample": asdict(base),
        "client": max(s.client_mib for s in after) / base.client_mib - 1,
        "total": max(s.total_mib for s in after) / base.total_mib - 1,
        "steady_tiles_per_s": (last.recorded - base.recorded) / (last.t - base.t) if last.t > base.t else float("nan"),
    }


def per_record(samples: list[Sample], tiles: int, warmup: float = 0.2, field: str = "traced_mib") -> float:
    """Memory growth per recorded tile after warm-up, bytes: least-squares slope of ``field`` against ``recorded``.

    A leak of ``k`` bytes per record shows as a slope of about ``k`` on top of
    what a record legitimately costs (the in-memory brief of each record:
    about 1 KB). ``traced_mib`` (``tracemalloc``) sees Python and NumPy
    allocations byte for byte; RSS moves in allocator arenas and pages, so its
    slope is coarser (see ``tests/load/test_load.py`` for what each can see).
    """
    after = [s for s in samples if s.recorded >= warmup * tiles]
    x = [float(s.recorded) for s in after]
    y = [getattr(s, field) * MB for s in after]
    if len(after) < 3 or max(x) - min(x) < 0.2 * tiles:
        raise ValueError(
            f"{len(after)} sample(s) over {max(x, default=0) - min(x, default=0):.0f} records after warm-up: "
            "lower --interval or raise --tiles"
        )
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def run_load(section: Path, workers: int = 2, batch: int = 0, interval: float = 1.0, on_sample=None) -> dict:
    """Score ``section`` as ``client submit`` does, sampling memory; see the module docstring.

    Returns
    -------
    dict
        ``tiles``, ``records`` (unique tiles recorded), ``lines`` (lines in
        the results log), ``verdicts`` (counts), ``elapsed_s``,
        ``tiles_per_s`` (start-up included) and ``samples``.
    """
    cfg = load().override(executor="local", transport="inline", workers=workers, batch=batch or None)
    n = sum(1 for _ in section.glob("*.png"))
    sampler = RssSampler(section / RESULTS_NAME, interval, on_sample)
    sampler.sample()
    sampler.start()
    t0 = time.perf_counter()
    try:
        outcome = run_section(section, cfg, Console(file=io.StringIO()), RunOptions(rule=Rule()))
    finally:
        sampler.stop()
    elapsed = time.perf_counter() - t0
    sampler.sample()
    return {
        "tiles": n,
        "records": len(outcome.records),
        "lines": (section / RESULTS_NAME).read_bytes().count(b"\n"),
        "verdicts": outcome.counts,
        "elapsed_s": round(elapsed, 2),
        "tiles_per_s": round(n / elapsed, 1),
        "samples": [asdict(s) for s in sampler.samples],
        "_samples": sampler.samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64, help="tile side, px (the detector needs >= 16)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--batch", type=int, default=0, help="tiles per task (0: automatic)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of tiles before memory is compared")
    ap.add_argument(
        "--traced", action="store_true", help="trace the client's Python heap (tracemalloc; slower) and print its growth per record"
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "load.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mhd-load-") as tmp:
        os.environ["MHD_CONFIG"] = str(Path(tmp) / "config.json")  # defaults, not the user's configuration
        section = make_section(Path(tmp) / "section", args.tiles, args.size)
        print(f"{args.tiles} tiles of {args.size}x{args.size} px, local backend, {args.workers} workers, python {sys.version.split()[0]}")
        print(f"{'t (s)':>8} {'recorded':>9} {'tiles/s':>8} {'client MiB':>11} {'workers MiB':>12}")
        prev: list[Sample] = []

        def show(s: Sample) -> None:
            rate = (s.recorded - prev[-1].recorded) / (s.t - prev[-1].t) if prev and s.t > prev[-1].t else 0.0
            prev.append(s)
            print(f"{s.t:8.1f} {s.recorded:9d} {rate:8.1f} {s.client_mib:11.1f} {s.workers_mib:12.1f}", flush=True)

        if args.traced:
            tracemalloc.start()
        try:
            result = run_load(section, args.workers, args.batch, args.interval, show)
        finally:
            tracemalloc.stop()
    samples = result.pop("_samples")
    grew = growth(samples, args.tiles, args.warmup)
    if args.traced:
        grew["client_heap_bytes_per_record"] = per_record(samples, args.tiles, args.warmup)
    grew["client_rss_bytes_per_record"] = per_record(samples, args.tiles, args.warmup, "client_mib")
    result.update(size=args.size, workers=args.workers, rss_growth_after_warmup=grew)
    print(
        f"\nrecorded {result['records']} of {result['tiles']} tiles ({result['lines']} lines) in {result['elapsed_s']} s: "
        f"{result['tiles_per_s']} tiles/s overall, {grew['steady_tiles_per_s']:.1f} tiles/s after warm-up"
    )
    print(
        f"RSS growth after {args.warmup:.0%} of the tiles: client {grew['client']:+.1%}, client + workers {grew['total']:+.1%}; "
        f"client RSS {grew['client_rss_bytes_per_record']:+.0f} B/record"
        + (f", client heap {grew['client_heap_bytes_per_record']:+.0f} B/record" if args.traced else "")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
