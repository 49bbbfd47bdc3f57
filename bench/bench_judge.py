"""How long the client's rule takes to judge a section, tile by tile as results arrive.

Each tile's verdict is judged against the section so far (``mhd.client.judge.Judge``), so
a section of ``n`` tiles costs about ``n**2`` reference updates. This times judging
``--tiles`` synthetic records (a blur of 1 +- 0.05 px, a slight anisotropy) in order, in
fresh processes: this tree, and with ``--base COMMIT`` that commit's ``client`` package,
alternating, so both see the same machine. Prints the median seconds of ``--repeat``
runs each, the ratio, and the peak memory of a run.

Usage::

    python bench/bench_judge.py --tiles 2000 --repeat 5 --base b500e41
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Run in a fresh process: judge the records, print seconds and peak memory (JSON).
RUN = """
import json, resource, sys, time, importlib
import numpy as np
from dataclasses import replace
base, n = sys.argv[1], int(sys.argv[2])
if base:
    sys.path.insert(0, base)
package = "oldclient" if base else "mhd.client"
J, R = importlib.import_module(package + ".judge"), importlib.import_module(package + ".rule")
from mhd.contracts.record import TileRecord
rng = np.random.default_rng(0)
records = []
for i in range(n):
    b = float(1.0 + rng.normal(0, 0.05))
    records.append(TileRecord.from_json({"tile": f"t{i:05d}", "features": 100, "density": 1e4, "grid": None,
        "shape": [512, 512], "error": None, "contrast": 10.0, "blur": b, "blur_err": 0.03,
        "blur_major": b * 1.05, "blur_minor": b * 0.95, "blur_angle": 90.0}))
t = time.perf_counter()
judge = J.Judge(R.Rule())
judge.expect([r.tile for r in records])
out = [v for r in records for v in judge.add(r)] + judge.flush()
assert len(out) == n
print(json.dumps({"s": time.perf_counter() - t, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _client_of(commit: str, into: Path) -> Path:
    """``commit``'s ``client`` package, importable as ``oldclient`` from the returned folder."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "client"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "client").rename(into / "oldclient")
    return into


def _once(base: str, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", RUN, base, str(n)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", type=int, default=2000, help="tiles in the section")
    ap.add_argument("--repeat", type=int, default=5, help="fresh processes each")
    ap.add_argument("--base", help="a commit to compare with (its client package)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        names = {"this tree": ""}
        if args.base:
            names[f"base {args.base}"] = str(_client_of(args.base, Path(tmp)))
        runs: dict[str, list[dict]] = {name: [] for name in names}
        _once("", min(args.tiles, 50))  # warm-up: imports, caches
        for _ in range(args.repeat):
            for name, base in names.items():
                runs[name].append(_once(base, args.tiles))
    med = {name: statistics.median(r["s"] for r in rs) for name, rs in runs.items()}
    for name, rs in runs.items():
        print(f"{name}: {med[name]:.2f} s for {args.tiles} tiles (median of {len(rs)}), peak {max(r['peak_mb'] for r in rs):.0f} MB")
    if args.base:
        print(f"ratio this tree / base: {med['this tree'] / med[f'base {args.base}']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
