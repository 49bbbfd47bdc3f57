"""The pipeline (``mhd.client.pipeline``) with hand-made executors: an answer for an older version of a tile that
comes last, and the results of a worker older than the client."""

from __future__ import annotations

import json
import os

from mhd.client.discover import Tile
from mhd.client.judge import Judge
from mhd.client.results import ResultsLog
from mhd.client.rule import Rule


def test_a_verdict_for_an_older_version_of_a_tile_does_not_replace_the_newer_ones(tmp_path):
    """The tile is re-imaged while its first task runs (watch feeds it again); the first task answers last."""
    import concurrent.futures as cf

    from mhd.client.pipeline import Pipeline
    from mhd.client.transport import DiskTransport

    class Manual:
        name = "manual"

        def __init__(self):
            self.tasks = []

        def submit(self, tiles, params=None):
            fut = cf.Future()
            fut.set_running_or_notify_cancel()
            self.tasks.append(fut)
            return fut

    path = tmp_path / "a.png"
    executor = Manual()

    def answer(task, density):
        task.set_result([{"tile": "a.png", "features": 10, "density": density, "blur": 1.0, "error": None, "contrast": 50.0}])

    with ResultsLog(tmp_path) as log:
        pipe = Pipeline(executor, DiskTransport(1, tmp_path), Judge(Rule(warmup=1)), log)
        path.write_bytes(b"version 1")
        st = path.stat()
        pipe.feed([Tile("a.png", path, st.st_size, st.st_mtime_ns)])
        pipe.pump(0)
        path.write_bytes(b"version 2, longer")
        os.utime(path, ns=(st.st_mtime_ns + 10**9,) * 2)
        st2 = path.stat()
        pipe.feed([Tile("a.png", path, st2.st_size, st2.st_mtime_ns)])
        pipe.pump(0)
        answer(executor.tasks[1], 222.0)  # the new version's verdict first ...
        pipe.pump(0.1)
        answer(executor.tasks[0], 111.0)  # ... then the old version's (a slower worker, a retried task)
        pipe.pump(0.1)
        rec = log.records["a.png"]
    assert (rec.density, rec.file_size) == (222.0, st2.st_size)
    assert [json.loads(line)["density"] for line in (tmp_path / "mhd-results.jsonl").read_text().splitlines()] == [222.0]


def test_results_of_an_older_worker_without_contrast_are_recorded_with_one_warning(tmp_path, caplog):
    """A worker that predates the tissue contrast: verdicts still come, and the operator is told why empty tiles are not called."""
    import concurrent.futures as cf
    import logging

    from mhd.client.discover import discover
    from mhd.client.pipeline import Pipeline
    from mhd.client.results import ResultsLog
    from mhd.client.transport import InlineTransport

    section = tmp_path / "section"
    section.mkdir()
    for i in range(4):
        (section / f"tile_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # never decoded: the fake worker answers

    class OldWorker:
        def submit(self, tiles, params=None):
            fut = cf.Future()
            fut.set_result(
                [{"tile": t["name"], "features": 900, "density": 13733.0, "grid": [[1]], "shape": [256, 256], "error": None} for t in tiles]
            )
            return fut

    seen = []
    with ResultsLog(section) as results, caplog.at_level(logging.WARNING, logger="mhd"):
        Pipeline(OldWorker(), InlineTransport(2), Judge(Rule(warmup=1)), results, None, seen.extend).run(discover(section).tiles)
    assert len(seen) == 4 and all(r.error is None and r.contrast is None for r in seen)
    assert caplog.text.count("the worker returned no tissue contrast") == 1
