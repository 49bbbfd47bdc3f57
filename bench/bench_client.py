"""Client overhead and watch latency, measured (not asserted).

1. **Detector alone**: ``detect`` on decoded tiles in this process, one after
   the other (tiles/s).
2. **In-process score** (read + decode + detect, ``client score``'s path).
3. **client submit, local backend**: the whole pipeline (discovery, inline
   transport, JSON serialization, the endpoint's process-pool engine with
   spawned workers, verdicts, fsync'ed results log) on a fresh section;
   reported with and without the backend's start-up, and as a ratio to (1)
   per worker.
4. **client report**: the whole report of that section (judged against the
   whole section, figures, thumbnails, the page), and the page's size.
5. **client watch latency**: a writer drops tiles (written as ``.part`` and
   renamed into place) every ``--interval`` seconds into a watched folder;
   latency is each record's ``latency_ms`` (tile landed -> verdict recorded),
   at steady state (after the relative rule's warm-up).

Each timing is the median of ``--repeats`` runs after one warm-up run.

Usage::

    python bench/bench_client.py [--tiles 64] [--workers 2] [--repeats 3] [--watch-tiles 24] [--out bench/out/client.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from mhd.client.config import load
from mhd.client.discover import discover
from mhd.client.options import RunOptions
from mhd.client.results import read_records
from mhd.client.rule import Rule
from mhd.client.score import load_image, score_file
from mhd.client.submit import run_section
from mhd.functions import detect

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "section_042"


def make_section(folder: Path, n: int) -> Path:
    """``n`` tiles copied round-robin from the example section."""
    tiles = discover(EXAMPLE).tiles
    folder.mkdir(parents=True)
    for i in range(n):
        src = tiles[i % len(tiles)].path
        shutil.copy(src, folder / f"tile_{i:05d}{src.suffix}")
    return folder


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_detector(section: Path, repeats: int) -> dict:
    paths = [t.path for t in discover(section).tiles]
    images = [load_image(p) for p in paths]
    alone = median_time(lambda: [detect(im, backend="numpy") for im in images], repeats)
    scored = median_time(lambda: [score_file(p, backend="numpy") for p in paths], repeats)
    return {"tiles": len(paths), "detector_tiles_per_s": len(paths) / alone, "score_in_process_tiles_per_s": len(paths) / scored}


def bench_submit(section: Path, workers: int, repeats: int) -> dict:
    os.environ["MHD_WORKERS"] = str(workers)
    cfg = load()
    n = len(discover(section).tiles)
    totals, rates = [], []
    for i in range(repeats + 1):
        (section / "mhd-results.jsonl").unlink(missing_ok=True)
        t0 = time.perf_counter()
        out = run_section(section, cfg, Console(file=io.StringIO()), RunOptions(rule=Rule()))
        total = time.perf_counter() - t0
        first, last = _span(out.records.values())
        if i:  # the first run is the warm-up
            totals.append(total)
            rates.append(n / (last - first) if last > first else float("nan"))
    return {
        "workers": workers,
        "submit_total_s": statistics.median(totals),
        "submit_tiles_per_s_incl_startup": n / statistics.median(totals),
        "submit_tiles_per_s_steady": statistics.median(rates),
    }


def bench_report(section: Path, repeats: int) -> dict:
    """``client report``'s work on a scored section: the judgement, figures, thumbnails, page and files."""
    from mhd.client.report import make_report

    seconds = median_time(lambda: make_report(section, Rule()), repeats)
    page = section / "mhd-report" / "index.html"
    return {"report_s": seconds, "report_page_mb": page.stat().st_size / 1e6}


def _span(records) -> tuple[float, float]:
    """First and last verdict times (epoch seconds) of a run."""
    from datetime import datetime

    times = sorted(datetime.fromisoformat(r.scored_at).timestamp() for r in records)
    return times[0], times[-1]


def bench_watch(tmp: Path, n: int, interval: float, workers: int) -> dict:
    section = tmp / "watched"
    section.mkdir()
    src = [t.path for t in discover(EXAMPLE).tiles]
    env = {**os.environ, "MHD_WORKERS": str(workers), "MHD_CONFIG": str(tmp / "cfg.json")}
    cmd = [sys.executable, "-m", "mhd.client", "watch", "--dir", str(section), "--poll", "0.1", "--idle-exit", "10"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4.0)  # let the executor start before the first tile lands
    for i in range(n):
        part = section / f".tile_{i:05d}{src[i % len(src)].suffix}.part"
        shutil.copy(src[i % len(src)], part)
        part.rename(section / part.name[1:-5])
        time.sleep(interval)
    proc.wait(timeout=120)
    recs = sorted(read_records(section / "mhd-results.jsonl")[0].values(), key=lambda r: r.tile)
    steady = sorted(r.latency_ms for r in recs[Rule().warmup :])
    return {
        "watch_tiles": len(recs),
        "watch_interval_s": interval,
        "watch_latency_ms_median": statistics.median(steady),
        "watch_latency_ms_p90": steady[int(0.9 * (len(steady) - 1))],
        "watch_latency_ms_max": steady[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--watch-tiles", type=int, default=24)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between tiles written in the watch benchmark")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "client.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MHD_CONFIG"] = str(Path(tmp) / "cfg.json")  # defaults, no user calibration
        section = make_section(Path(tmp) / "section", args.tiles)
        res = {"tile_shape": list(load_image(discover(section).tiles[0].path).shape)}
        res.update(bench_detector(section, args.repeats))
        res.update(bench_submit(section, args.workers, args.repeats))
        res.update(bench_report(section, args.repeats))
        res.update(bench_watch(Path(tmp), args.watch_tiles, args.interval, args.workers))
    res["submit_steady_vs_detector_per_worker"] = res["submit_tiles_per_s_steady"] / (res["detector_tiles_per_s"] * args.workers)
    res["peak_rss_mb_client"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["peak_rss_mb_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    for key, value in res.items():
        print(f"{key:42s} {value:.3f}" if isinstance(value, float) else f"{key:42s} {value}")


if __name__ == "__main__":
    main()
