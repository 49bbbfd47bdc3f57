"""Load: many small tiles through ``client submit``'s pipeline; every tile recorded once, memory flat.

CI size: 500 tiles of 64 x 64 px (the detector needs at least 16 px a side).
``MHD_LOAD_TILES=10000`` runs the full size. The machinery (tile section,
RSS sampler) is ``bench/bench_load.py``'s, which also prints tiles/s and
RSS over time; here only correctness and flat memory are asserted, never speed.

Flat memory is measured as growth per recorded tile after warm-up: the
slope of the client's traced Python heap (``tracemalloc``, which also sees
NumPy buffers) against the tiles recorded. What each measure sees at CI size
(500 tiles, this VM, 2 workers), without and with a leak of 10 KB of random
bytes kept per record (the ``leak`` variant injects exactly that):

==========================  ==================  ==================
measure                     as is               10 KB/record leak
==========================  ==================  ==================
traced heap slope           -0.3 .. +0.1 KB     9.9 .. 10.1 KB
client RSS slope            0.4 .. 0.7 KB       3.8 .. 4.8 KB
client RSS growth (max)     +0.2 %              +1.1 .. +1.4 %
==========================  ==================  ==================

RSS moves in allocator arenas and pages, so a bound on its growth that
tolerates start-up noise (10 %) let a 40 KB/record leak through (+8.6 to
+11 %); the traced slope separates 10 KB from none by a factor of 30. The
workers' memory (separate processes, not traced) keeps the RSS bound.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tracemalloc

import pytest

from conftest import ROOT, read_results

BENCH = ROOT / "bench" / "bench_load.py"
TILES = int(os.environ.get("MHD_LOAD_TILES", "500"))

#: Largest growth per recorded tile taken as flat (bytes): each record's brief stays in memory by design (under 1 KB).
FLAT_PER_RECORD = 3_000

#: The leak the ``leak`` variant injects (bytes kept per record), which the measure must see.
LEAK = 10_000


@pytest.fixture(scope="module")
def bench_load():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.slow
@pytest.mark.parametrize("leak", [0, LEAK], ids=["as-is", "leak"])
def test_many_small_tiles_are_each_recorded_once_with_flat_memory(bench_load, tmp_path, monkeypatch, isolated_config, leak):
    """``leak``: the check of the check; a record log that keeps 10 KB per record must be seen."""
    if leak:
        from mhd.client.results import ResultsLog

        kept, append = [], ResultsLog.append

        def leaky_append(self, record):
            append(self, record)
            kept.append(os.urandom(leak))  # random bytes: real pages, as a leaked buffer would be

        monkeypatch.setattr(ResultsLog, "append", leaky_append)
    section = bench_load.make_section(tmp_path / "section", TILES, size=64)
    tracemalloc.start()
    try:
        result = bench_load.run_load(section, workers=2, interval=max(0.1, TILES / 5000))
    finally:
        tracemalloc.stop()
    assert result["records"] == result["lines"] == TILES  # one record per tile, none twice
    assert result["verdicts"].get("error", 0) == 0 and sum(result["verdicts"].values()) == TILES
    ids = [r["tile"] for r in read_results(section)]
    assert sorted(ids) == [f"tile_{i:05d}.png" for i in range(TILES)]
    samples = result["_samples"]
    grew = bench_load.growth(samples, TILES, warmup=0.2)
    per_record = bench_load.per_record(samples, TILES, warmup=0.2)
    figures = (
        f"load ({'leak of %d B/record injected' % leak if leak else 'as is'}): {TILES} tiles of 64x64 px, "
        f"client heap {per_record:+.0f} B/record after warm-up (RSS "
        f"{bench_load.per_record(samples, TILES, 0.2, 'client_mib'):+.0f} B/record); "
        f"RSS growth client {grew['client']:+.1%}, with workers {grew['total']:+.1%}"
    )
    print(figures)  # captured: shown with -s or -rP, never among the dots
    if leak:
        assert per_record > 0.6 * leak, figures  # the measure sees a leak of this size
    else:
        assert per_record < FLAT_PER_RECORD, figures
        assert grew["total"] < 0.10, figures  # the workers (not traced) by their RSS
