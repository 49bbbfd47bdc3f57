"""Load: many small tiles through ``client submit``'s pipeline; every tile recorded once, memory flat.

CI size: 500 tiles of 64 x 64 px (the detector needs at least 16 px a side).
``MHD_LOAD_TILES=10000`` runs the full size. The machinery (tile section,
RSS sampler) is ``bench/bench_load.py``'s, which also prints tiles/s and
RSS over time; here only correctness and flat memory are asserted, never speed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_load.py"
TILES = int(os.environ.get("MHD_LOAD_TILES", "500"))


@pytest.fixture(scope="module")
def bench_load():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.slow
def test_many_small_tiles_are_each_recorded_once_with_flat_memory(bench_load, tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("MHD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MHD_CONFIG", str(tmp_path / "cfg" / "config.json"))
    section = bench_load.make_section(tmp_path / "section", TILES, size=64)
    result = bench_load.run_load(section, workers=2, interval=max(0.25, TILES / 2000))
    assert result["records"] == result["lines"] == TILES  # one record per tile, none twice
    assert result["verdicts"].get("error", 0) == 0 and sum(result["verdicts"].values()) == TILES
    ids = [json.loads(line)["tile"] for line in (section / "mhd-results.jsonl").read_text().splitlines()]
    assert sorted(ids) == [f"tile_{i:05d}.png" for i in range(TILES)]
    grew = bench_load.growth(result["_samples"], TILES, warmup=0.2)
    figures = (f"load: {TILES} tiles of 64x64 px in {result['elapsed_s']} s ({result['tiles_per_s']} tiles/s overall, "
               f"{grew['steady_tiles_per_s']:.0f} after warm-up); RSS growth client {grew['client']:+.1%}, with workers {grew['total']:+.1%}")
    print(figures)  # captured: shown with -s or -rP, never among the dots
    assert grew["client"] < 0.10 and grew["total"] < 0.10, figures
