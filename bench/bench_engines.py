"""What running score_tiles through an endpoint engine costs, against the detector itself.

Paths measured in one run, on the same 512 x 512 EM tiles (ISBI 2012 slices as
PNG files under a temporary data root, or synthetic tiles if the slices are
not beside the checkout):

* ``detect``       the detector called in-process on decoded arrays (its own time)
* ``score_tiles``  the registered function called in-process (confinement, decode, detect)
* ``process-pool`` ``LocalExecutor``: the endpoint's ProcessPoolEngine, spawned
  workers, the function rebuilt from source, ``execute_task``, JSON results
* ``gce``          the endpoint's ``GlobusComputeEngine`` (Parsl HTEX on
  127.0.0.1, LocalProvider) running the same task bodies

For each engine and batch size (tiles per task) it reports:

* ``cold s``       the first task after the engine starts (worker start-up,
  imports, first filter bank); warm tasks reuse all of that
* ``lat ms``       median latency of one task submitted alone (warm)
* ``tasks/s``, ``tiles/s``  throughput with every task of a round in flight
* ``x detect``     time per tile at that throughput over the in-process detector's
  (1.00 = no cost beyond the detector)
* ``ovh ms/tile``  per-tile overhead of the engine path: ``(lat - sum of the
  detector's own ms in the task) / tiles``, median over repeats
* ``det ms``       median detector time per tile inside the workers

and the peak RSS of this process and of the (exited) workers.

Usage::

    python bench/bench_engines.py                   # 1 worker, batches 1 8 32
    python bench/bench_engines.py --workers 2 --repeat 7 --tiles 64
    python bench/bench_engines.py --engines process-pool --batches 1 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from mhd.client.executors import EngineExecutor, LocalExecutor
from mhd.client.registration import ALLOWED_SERIALIZERS
from mhd.functions import detect
from mhd.functions.worker.remote import score_tiles

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "isbi2012"
OUT = Path(__file__).resolve().parent / "out"


def make_root(n: int) -> tuple[Path, list[str], list[np.ndarray]]:
    """A data root with ``n`` tile files; returns it, their names and the decoded arrays."""
    root = Path(tempfile.mkdtemp(prefix="mhd-bench-"))
    sources = sorted(DATA.glob("train_*.png"))
    rng = np.random.default_rng(0)
    names, images = [], []
    for i in range(n):
        image = iio.imread(sources[i % len(sources)]) if sources else rng.integers(0, 255, (512, 512), dtype=np.uint8)
        name = f"tile_{i:04d}.png"
        iio.imwrite(root / name, image)
        names.append(name)
        images.append(image)
    return root, names, images


def in_process(names: list[str], images: list[np.ndarray], root: Path, repeat: int) -> list[dict]:
    """The detector and score_tiles called directly (warm), median ms per tile."""
    os.environ["MHD_DATA_ROOT"] = str(root)
    detect(images[0])  # warm: filter bank, FFT plans
    det = [_ms(lambda im=im: detect(im)) for _ in range(repeat) for im in images[:8]]
    lat, ovh = [], []
    for _ in range(repeat):
        for name in names[:8]:
            t0 = time.perf_counter()
            [entry] = score_tiles([name])
            lat.append((time.perf_counter() - t0) * 1e3)
            ovh.append(lat[-1] - entry["detect_ms"])
    return [
        {
            "engine": "detect",
            "batch": 1,
            "det_ms": statistics.median(det),
            "lat_ms": statistics.median(det),
            "tiles_s": 1e3 / statistics.median(det),
        },
        {
            "engine": "score_tiles",
            "batch": 1,
            "det_ms": statistics.median(det),
            "lat_ms": statistics.median(lat),
            "ovh_ms_tile": statistics.median(ovh),
            "tiles_s": 1e3 / statistics.median(lat),
        },
    ]


def _ms(call) -> float:
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1e3


def gce_backend(root: Path, workers: int, run_dir: str) -> EngineExecutor:
    """GlobusComputeEngine on this host, configured like the shipped endpoint (no GPUs)."""
    from globus_compute_endpoint.engines import GlobusComputeEngine
    from parsl.providers import LocalProvider

    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    engine = GlobusComputeEngine(
        address="127.0.0.1",
        max_workers_per_node=workers,
        provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1, worker_init=f"export MHD_DATA_ROOT={root}"),
        job_status_kwargs={"strategy_period": 0.5},
        allowed_serializers=list(ALLOWED_SERIALIZERS),
    )
    engine.start(endpoint_id=uuid.uuid4(), run_dir=run_dir)
    return EngineExecutor(engine)


def measure(backend, names: list[str], batch: int, repeat: int) -> dict:
    """Latency of lone tasks and throughput of a round of tasks, warm."""
    chunks = [names[i : i + batch] for i in range(0, len(names), batch)]
    lat, ovh, det = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        entries = backend.submit(chunks[0]).result(timeout=600)
        wall = (time.perf_counter() - t0) * 1e3
        assert all(e["error"] is None for e in entries), entries
        lat.append(wall)
        ovh.append((wall - sum(e["detect_ms"] for e in entries)) / len(entries))
        det += [e["detect_ms"] for e in entries]
    rounds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        futures = [backend.submit(c) for c in chunks]
        for f in futures:
            f.result(timeout=600)
        rounds.append(time.perf_counter() - t0)
    wall_s = statistics.median(rounds)
    return {
        "batch": batch,
        "lat_ms": statistics.median(lat),
        "ovh_ms_tile": statistics.median(ovh),
        "det_ms": statistics.median(det),
        "tasks_s": len(chunks) / wall_s,
        "tiles_s": len(names) / wall_s,
    }


def run_engine(kind: str, root: Path, names: list[str], batches: list[int], workers: int, repeat: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="mhd-bench-run-") as run_dir:
        t0 = time.perf_counter()
        backend = (
            LocalExecutor(data_root=root, workers=workers, run_dir=run_dir)
            if kind == "process-pool"
            else gce_backend(root, workers, run_dir)
        )
        try:
            backend.submit(names[:1]).result(timeout=600)
            cold = time.perf_counter() - t0
            for _ in range(workers):  # warm every worker
                backend.submit(names[:2])
            backend.submit(names[:1]).result(timeout=600)
            rows = [{"engine": kind, "workers": workers, "cold_s": cold, **measure(backend, names, b, repeat)} for b in batches]
        finally:
            backend.shutdown()
    return rows


def table(rows: list[dict]) -> str:
    base = rows[0]["det_ms"]
    for r in rows:
        r["vs_detect"] = 1e3 / r["tiles_s"] / base if r.get("tiles_s") else None
    cols = [
        ("engine", "engine", "{}"),
        ("workers", "wk", "{}"),
        ("batch", "batch", "{}"),
        ("cold_s", "cold s", "{:.2f}"),
        ("lat_ms", "lat ms", "{:.1f}"),
        ("tasks_s", "tasks/s", "{:.1f}"),
        ("tiles_s", "tiles/s", "{:.1f}"),
        ("vs_detect", "x detect", "{:.2f}"),
        ("ovh_ms_tile", "ovh ms/tile", "{:.2f}"),
        ("det_ms", "det ms", "{:.1f}"),
    ]
    cells = [[label for _, label, _ in cols]] + [[fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["process-pool", "gce"], choices=["process-pool", "gce"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--tiles", type=int, default=64, help="tiles per throughput round")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    root, names, images = make_root(max(args.tiles, max(args.batches)))
    rows = in_process(names, images, root, args.repeat)
    for kind in args.engines:
        rows += run_engine(kind, root, names[: args.tiles], args.batches, args.workers, args.repeat)
    peak = {
        "client_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    print(
        f"{len(names)} tiles of 512 x 512 from {'ISBI 2012' if DATA.exists() else 'synthetic noise'}; "
        f"{os.cpu_count()} CPUs; median of {args.repeat}"
    )
    print(table(rows))
    print(f"peak RSS: client {peak['client_peak_rss_mb']:.0f} MB, workers {peak['worker_peak_rss_mb']:.0f} MB")
    OUT.mkdir(exist_ok=True)
    (OUT / "engines.json").write_text(json.dumps({"args": vars(args), "rows": rows, **peak}, indent=1))


if __name__ == "__main__":
    main()
