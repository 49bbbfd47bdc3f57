"""Client building blocks without a backend: discovery, results log, config, verdicts, tissue, transports."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mhd.client import config as config_mod
from mhd.client.calibration import Calibration
from mhd.client.discover import discover, natural_key, tile_positions
from mhd.client.judge import Judge
from mhd.client.results import ResultsLog, SectionLocked, read_records
from mhd.client.rule import Rule
from mhd.client.transport import InlineTransport, SharedTransport, choose_transport
from mhd.contracts.record import TileRecord
from mhd.contracts.verdicts import exit_status
from mhd.functions.tissue import contrast_to_noise

pytestmark = pytest.mark.usefixtures("isolated_config")


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- discovery


def test_discovery_natural_order_recursive_and_skips(tmp_path):
    for name in [
        "t10.png",
        "t9.tif",
        "t1.TIFF",
        "sub/t2.jpg",
        "a.bmp",
        "notes.txt",
        ".t3.png",
        "t4.png.part",
        "mhd-results.jsonl",
        "mhd-report/density.png",
    ]:
        touch(tmp_path / name)
    found = discover(tmp_path)
    assert [t.id for t in found.tiles] == ["a.bmp", "sub/t2.jpg", "t1.TIFF", "t9.tif", "t10.png"]
    assert found.skipped == ["notes.txt"]  # not an image
    assert found.ignored == [".t3.png", "t4.png.part"]  # being written: neither a tile nor skipped (README)
    assert found.tiles[0].path == tmp_path.resolve() / "a.bmp" and found.tiles[0].size == 1


def test_discovery_counts_linked_files_but_does_not_follow_linked_folders(tmp_path):
    outside = tmp_path / "outside"
    touch(outside / "far.png")
    section = tmp_path / "s"
    touch(section / "t1.png")
    (section / "link.png").symlink_to(outside / "far.png")
    (section / "folder").symlink_to(outside, target_is_directory=True)
    (section / "dangling.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(section / "fifo.png")
    (section / "loop.png").symlink_to(section / "loop.png")
    found = discover(section)
    assert [t.id for t in found.tiles] == ["link.png", "t1.png"] and found.skipped == []


def test_discovery_survives_folders_and_files_vanishing_meanwhile(tmp_path):
    """A folder removed while discover() walks the section is skipped, not an error (watch walks a live folder)."""
    touch(tmp_path / "t1.png")
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            scratch = tmp_path / "scratch" / "deeper"
            scratch.mkdir(parents=True, exist_ok=True)
            for i in range(20):
                touch(scratch / f"x{i}.png")
            shutil.rmtree(tmp_path / "scratch", ignore_errors=True)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert "t1.png" in [t.id for t in discover(tmp_path).tiles]
    finally:
        stop.set()
        worker.join()


def test_a_listing_that_fails_is_an_error_not_an_empty_folder():
    from mhd.client.discover import _vanished_or_raise

    _vanished_or_raise(FileNotFoundError(2, "gone"))  # removed while walked: skipped
    for exc in (PermissionError(13, "denied"), OSError(5, "I/O error"), OSError(116, "Stale file handle")):
        with pytest.raises(OSError):
            _vanished_or_raise(exc)


def test_natural_key_orders_numbers_by_value():
    names = ["r2_c10", "r2_c9", "r10_c1", "R1_c1"]
    assert sorted(names, key=natural_key) == ["R1_c1", "r2_c9", "r2_c10", "r10_c1"]


def test_discover_refuses_a_file(tmp_path):
    with pytest.raises(NotADirectoryError):
        discover(touch(tmp_path / "x.png"))


def test_positions_from_names_and_csv(tmp_path):
    ids = ["tile_r3_c4.png", "s/row02-col11.tif", "plain.png"]
    assert tile_positions(ids) == {"tile_r3_c4.png": (3, 4), "s/row02-col11.tif": (2, 11)}
    csv = tmp_path / "pos.csv"
    csv.write_text("tile,row,col\nplain.png,1,2\nother.png,0,0\n")
    assert tile_positions(ids, csv) == {"plain.png": (1, 2)}
    csv.write_text("tile,row\nplain.png,1\n")
    with pytest.raises(ValueError, match="missing column"):
        tile_positions(ids, csv)
    csv.write_text("tile,row,col\nplain.png,x,2\n")
    with pytest.raises(ValueError, match=":2: row and col"):
        tile_positions(ids, csv)


# -------------------------------------------------------------- results log


def rec(tile, verdict="ok", density=1e4):
    return TileRecord(tile, verdict=verdict, density=density, features=10)


def test_results_append_read_and_torn_last_line(tmp_path):
    with ResultsLog(tmp_path) as log:
        log.append(rec("a"))
        log.append(rec("b", "oof"))
    path = tmp_path / "mhd-results.jsonl"
    with path.open("ab") as fh:
        fh.write(b'{"tile": "c", "verd')  # killed mid-write
    records, lines = read_records(path)
    assert list(records) == ["a", "b"] and lines == 2
    with ResultsLog(tmp_path) as log:  # reopening cuts the torn tail off
        assert set(log.records) == {"a", "b"}
        log.append(rec("c"))
    assert [json.loads(x)["tile"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_results_newer_record_supersedes_and_compact_dedupes(tmp_path):
    with ResultsLog(tmp_path) as log:
        log.append(rec("a", "error"))
        log.append(rec("b"))
        log.append(rec("a", "ok"))
        assert log.superseded == 1 and log.records["a"].verdict == "ok"
        log.compact()
        log.append(rec("c"))
    lines = (tmp_path / "mhd-results.jsonl").read_text().splitlines()
    assert [json.loads(x)["tile"] for x in lines] == ["a", "b", "c"]
    assert json.loads(lines[0])["verdict"] == "ok"


def test_results_lock_and_fresh_backup(tmp_path):
    with ResultsLog(tmp_path) as log:
        log.append(rec("a"))
        with pytest.raises(SectionLocked, match="another client"):
            ResultsLog(tmp_path)
    with ResultsLog(tmp_path, fresh=True) as log:
        assert log.records == {}
        log.append(rec("b"))
    with ResultsLog(tmp_path, fresh=True):  # again within the second: the first backup is kept too
        pass
    backups = sorted(tmp_path.glob("mhd-results.jsonl.*.bak"))
    assert sorted(json.loads(b.read_text())["tile"] for b in backups) == ["a", "b"]


def test_the_section_stays_locked_while_the_log_is_compacted(tmp_path):
    """The lock is on a file of its own: compacting replaces the log, and a lock on it was free meanwhile."""
    with ResultsLog(tmp_path) as log:
        log.append(rec("a"))
        log.append(replace(rec("a"), reason="again"))
        log.compact()
        with pytest.raises(SectionLocked):
            ResultsLog(tmp_path)
        log.append(rec("b"))
    with ResultsLog(tmp_path) as log:  # released when closed
        assert set(log.records) == {"a", "b"}


def test_results_numpy_values_are_written(tmp_path):
    with ResultsLog(tmp_path) as log:
        log.append(TileRecord("a", verdict="ok", features=np.int64(3), grid=np.zeros((2, 2), int)))
    assert read_records(tmp_path / "mhd-results.jsonl")[0]["a"].grid == [[0, 0], [0, 0]]


# ------------------------------------------------------------------ config


def test_config_precedence_and_sources(tmp_path, monkeypatch):
    cfg = config_mod.load()
    assert cfg["executor"] == "auto" and cfg.sources["executor"] == "default"
    path = config_mod.save_values(endpoint="e1", oof_k=4)
    assert path == tmp_path / "cfg" / "config.json"
    monkeypatch.setenv("MHD_OOF_K", "5.5")
    cfg = config_mod.load().override(workers=3, batch=None)
    assert (cfg["endpoint"], cfg.sources["endpoint"]) == ("e1", str(path))
    assert (cfg["oof_k"], cfg.sources["oof_k"]) == (5.5, "$MHD_OOF_K")
    assert (cfg["workers"], cfg.sources["workers"]) == (3, "command line")
    assert cfg.sources["batch"] == "default"
    assert cfg.calibration_path == tmp_path / "cfg" / "calibration.json"


def test_config_errors_name_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MHD_WARMUP", "many")
    with pytest.raises(ValueError, match=r"warmup from \$MHD_WARMUP"):
        config_mod.load()
    monkeypatch.delenv("MHD_WARMUP")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text('{"endpiont": "x"}')
    with pytest.raises(ValueError, match="unknown key.*endpiont"):
        config_mod.load()
    (tmp_path / "cfg" / "config.json").write_text('{"transport": "carrier pigeon"}')
    with pytest.raises(ValueError, match="transport.*must be one of"):
        config_mod.load()


# ---------------------------------------------------------------- verdicts


def scored(tile, density, grid=None, shape=(256, 256), **extra):
    cells = grid if grid is not None else [[density * 0.004096 / 1] * 4] * 4
    return TileRecord.from_json(
        {"tile": tile, "features": int(density * 0.065536), "density": density, "grid": cells, "shape": list(shape), "error": None, **extra}
    )


def test_relative_rule_waits_for_warmup_then_flags_low_tiles():
    judge = Judge(Rule(warmup=5))
    densities = [1.0e4, 1.05e4, 0.97e4, 1.02e4]
    for i, d in enumerate(densities):
        assert judge.add(scored(f"t{i}", d)) == []
    assert judge.pending == 4
    done = judge.add(scored("blurry", 0.4e4))
    assert [r.tile for r in done] == ["t0", "t1", "t2", "t3", "blurry"]
    assert [r.verdict for r in done] == ["ok"] * 4 + ["oof"]
    assert "below section median" in done[-1].reason
    slight = judge.add(scored("slight", 0.85e4))  # -15 %: inside the 26 % floor
    assert slight[0].verdict == "ok"
    base = judge.baseline()
    assert base.threshold == pytest.approx(base.median - 0.3)


def test_resumed_judge_needs_no_warmup():
    prior = [replace(scored(f"t{i}", 1e4), verdict="ok") for i in range(8)]
    judge = Judge(Rule(warmup=8), prior=prior)
    assert judge.add(scored("x", 0.3e4))[0].verdict == "oof"


def test_empty_needs_a_low_count_and_low_contrast():
    judge = Judge(Rule(warmup=1), prior=[replace(scored(f"t{i}", 1e4), verdict="ok") for i in range(8)])
    assert judge.add(scored("flat_but_dense", 1e4, contrast=1.0))[0].verdict == "ok"  # contrast matters only below the threshold
    resin = judge.add(scored("resin", 30, contrast=1.2))[0]
    assert resin.verdict == "empty" and "no tissue" in resin.reason and "1.2" in resin.reason
    blurry = judge.add(scored("blurry", 300, contrast=12.0))[0]
    assert blurry.verdict == "oof"
    unknown = judge.add(scored("old_worker", 300))[0]  # no contrast measured: counted as tissue
    assert unknown.verdict == "oof"
    assert judge.baseline().n == 11  # 8 + 4 judged, less the empty tile


def test_partial_tile_flags_blurred_cells_not_sparse_ones():
    """With ``blur_cells`` the partial rule reads the cells' blur against the tile's own cells: a cell of sparse
    content (a tenth of the features) but sharp is not partial; cells blurred beyond their uncertainty are, and so is
    one with no detail left."""
    sharp = [[1.0, 1.1, 0.9, 1.0] for _ in range(4)]
    err = [[0.2] * 4 for _ in range(4)]
    prior = [replace(scored(f"t{i}", 1e4, blur=0.6, blur_cells=sharp, blur_cells_err=err), verdict="ok") for i in range(8)]
    sparse = [[40.96] * 4 for _ in range(4)]
    sparse[3][1] = 4.0
    judge = Judge(Rule(warmup=1), prior=prior)
    assert judge.cell_limit() == pytest.approx(2.0**2)  # partial_blur 2 px: the sharp cells spread far less
    ok = judge.add(scored("particles", 1e4, grid=sparse, blur=0.6, blur_cells=sharp, blur_cells_err=err))[0]
    assert ok.verdict == "ok", ok.reason  # the density rule would call cell 3,1 low

    wrinkle = [row[:3] + [3.0] for row in sharp]
    wrinkle[0][3] = 2.3  # 2.3 px against the cells' 1.0: above the limit (2.24 px) by less than its uncertainty
    wrinkle[1][3] = None  # no detail above the noise
    out = judge.add(scored("wrinkle", 1e4, blur=0.7, blur_cells=wrinkle, blur_cells_err=err))[0]
    assert (out.verdict, out.kind, out.reason) == ("oof", "partial", "partial: cells 1,3 2,3 3,3 blurred")

    most = [row[:1] + [3.0] * 3 for row in sharp]  # 12 of 16 cells blurred: the focus, not a region
    whole = judge.add(scored("blurred_all_over", 1e4, blur=0.7, blur_cells=most, blur_cells_err=err))[0]
    assert (whole.verdict, whole.kind) == ("oof", "defocus")
    assert whole.reason == "defocus: 12 of 16 cells blurred (more than 2.00 px added in quadrature to the tile's median cell)"

    resumed = Judge(Rule(warmup=8), prior=[r.brief() for r in prior])  # a resumed run keeps records without their cells
    assert resumed.cell_limit() == pytest.approx(2.0**2)
    assert resumed.add(scored("wrinkle", 1e4, blur=0.7, blur_cells=wrinkle, blur_cells_err=err))[0].kind == "partial"


def test_the_cell_limit_follows_how_much_the_section_s_cells_vary():
    """A section whose fields mix smooth and detailed regions (particles on a support) spreads its cells' blur
    within each tile; a cell must then stand out further to be called blurred."""
    rng = np.random.default_rng(0)
    varied = [rng.uniform(0.5, 3.0, (4, 4)).round(2).tolist() for _ in range(10)]
    err = [[0.1] * 4 for _ in range(4)]
    judge = Judge(
        Rule(warmup=1),
        prior=[replace(scored(f"t{i}", 1e4, blur=1.2, blur_cells=c, blur_cells_err=err), verdict="ok") for i, c in enumerate(varied)],
    )
    assert judge.cell_limit() > 2.0**2


def test_a_cell_of_smooth_content_is_not_judged_for_focus():
    """The inside of a large particle on a real SEM scan: coarse shading far above the noise (not resin), a tenth
    of its neighbours' contrast and no detail, or a loose blur of several px. It is not called blurred; a cell
    behind a defocused probe keeps its coarse contrast and is."""
    sharp = [[1.0, 1.1, 0.9, 1.0] for _ in range(4)]
    err = [[0.2] * 4 for _ in range(4)]
    prior = [replace(scored(f"t{i}", 1e4, blur=0.6, blur_cells=sharp, blur_cells_err=err), verdict="ok") for i in range(8)]
    judge = Judge(Rule(warmup=1), prior=prior)
    cells = [row[:] for row in sharp]
    cells[2][0], cells[0][1] = None, 12.0
    contrast = [[400.0] * 4 for _ in range(4)]
    contrast[2][0], contrast[0][1] = 20.0, 60.0  # 0.05 and 0.15 of the median cell: smooth
    smooth = judge.add(scored("sphere", 1e4, blur=1.1, blur_cells=cells, blur_cells_err=err, contrast=300.0, contrast_cells=contrast))[0]
    assert smooth.verdict == "ok", smooth.reason
    contrast[0][1] = 100.0  # 0.25 of the median: judged
    out = judge.add(scored("wrinkle", 1e4, blur=1.1, blur_cells=cells, blur_cells_err=err, contrast=300.0, contrast_cells=contrast))[0]
    assert (out.verdict, out.kind, out.reason) == ("oof", "partial", "partial: cells 0,1 blurred")


def test_partial_tile_without_cell_blurs_flags_low_density_cells_unless_they_have_no_tissue():
    cell = 1e4 * (64 * 64) / 1e6
    grid = [[cell] * 4 for _ in range(4)]
    for r in range(4):
        grid[r][3] = cell * 0.1
    judge = Judge(Rule(warmup=1), prior=[replace(scored(f"t{i}", 1e4), verdict="ok") for i in range(8)])
    out = judge.add(scored("wrinkle", 0.9e4, grid=[row[:] for row in grid]))[0]
    assert out.verdict == "oof" and out.reason == "partial: cells 0,3 1,3 2,3 3,3 low"

    edge = [[10.0, 10.0, 10.0, 1.0]] * 4  # right column is resin: low contrast there
    judge = Judge(Rule(warmup=1), prior=[replace(scored(f"t{i}", 1e4), verdict="ok") for i in range(8)])
    assert judge.add(scored("edge_of_section", 0.9e4, grid=grid, contrast=10.0, contrast_cells=edge))[0].verdict == "ok"


def test_calibrated_rule_estimates_defocus(tmp_path):
    cal = Calibration(intercept=math.log(1e4), slope=-0.5, r=-0.99, n=9, units="um", max_defocus=1.0)
    path = cal.save(tmp_path / "c.json")
    cal = Calibration.load(path)
    judge = Judge(Rule(calibration=cal, warmup=100))
    ok = judge.add(scored("a", 0.8e4))[0]  # no warm-up with a calibration
    assert ok.verdict == "ok" and ok.defocus == pytest.approx(-math.log(0.8) / 0.5, abs=1e-3)
    bad = judge.add(scored("b", 1e4 * math.exp(-1.0)))[0]  # 2 um
    assert bad.verdict == "oof" and "est. defocus 2 um > 1 um" in bad.reason
    path.write_text(json.dumps({**json.loads(path.read_text()), "slope": 0.1}))
    with pytest.raises(ValueError, match="must be negative"):
        Calibration.load(path)


def test_errors_are_final_at_once_and_exit_status_precedence():
    judge = Judge(Rule(warmup=10))
    out = judge.add(TileRecord.failed("x", "cannot decode"))
    assert out[0].verdict == "error" and out[0].reason == "x: cannot decode"
    assert exit_status({"ok": 3}) == 0 and exit_status({"empty": 1, "ok": 1}) == 0
    assert exit_status({"oof": 1}) == 2 and exit_status({"oof": 1, "error": 1}) == 1


# ------------------------------------------------------------------ tissue


def test_contrast_to_noise_separates_resin_from_blurred_tissue(isbi):
    rng = np.random.default_rng(1)
    tissue = rng.poisson(gaussian_filter(isbi[0][:256, :256].astype(float), 6) / 255 * 200) / 200 * 255
    shading = np.linspace(0.5, 0.7, 256)[None, :] * np.ones((256, 1))
    resin = rng.poisson(shading * 200) / 200 * 255
    t, r = contrast_to_noise(tissue), contrast_to_noise(resin)
    assert t.cnr > 5 and r.cnr < 2 and r.cells.shape == (4, 4) and r.cells.max() < 2
    assert contrast_to_noise(np.full((64, 64), 255.0)).cnr == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        contrast_to_noise(np.zeros((4, 4, 3)))
    fine = contrast_to_noise(tissue, (64, 64))  # 4 px per cell: smaller blocks for the cells, the same for the tile
    assert fine.cnr == t.cnr and np.isfinite(fine.cells).all() and fine.cells.shape == (64, 64)


# -------------------------------------------------------------- transports


def test_inline_batches_by_count_and_bytes_and_fails_large_tiles_alone(tmp_path):
    for name, size in [("a.png", 300), ("b.png", 300), ("c.png", 300), ("huge.png", 5000), ("d.png", 500)]:
        touch(tmp_path / name, bytes(size))
    tiles = discover(tmp_path).tiles
    (tmp_path / "b.png").unlink()  # vanished after discovery
    staged = list(InlineTransport(batch=2, request_bytes=700).stage(tiles))
    payload_names = [[p["name"] for p in s.payload] for s in staged]
    assert payload_names == [["a.png", "c.png"], ["d.png"]]
    errors = {f.tile: f.error for s in staged for f in s.failed}
    assert set(errors) == {"b.png", "huge.png"}
    assert "cannot read" in errors["b.png"] and "inline limit" in errors["huge.png"] and errors["huge.png"].startswith("huge.png:")
    assert base64.b64decode(staged[1].payload[0]["data"]) == bytes(500)


def test_shared_maps_paths_under_the_prefix(tmp_path):
    section = tmp_path / "mnt" / "sec1"
    touch(section / "t1.png")
    touch(section / "sub" / "t2.png")
    staged = list(SharedTransport(batch=8, local_root=tmp_path / "mnt", remote_prefix="/em/").stage(discover(section).tiles))
    assert staged[0].payload == ["em/sec1/sub/t2.png", "em/sec1/t1.png"]
    outside = list(SharedTransport(batch=8, local_root=tmp_path / "elsewhere").stage(discover(section).tiles))
    assert outside[0].payload == [] and all("not under the shared folder" in f.error for f in outside[0].failed)


def test_auto_transport_choice(tmp_path):
    touch(tmp_path / "small.png", bytes(10))
    touch(tmp_path / "big.tif", bytes(100))
    tiles = discover(tmp_path).tiles
    assert choose_transport("auto", tiles[1:], 50, False, False) == "inline"
    assert choose_transport("auto", tiles, 50, True, True) == "shared"
    assert choose_transport("auto", tiles, 50, False, True) == "globus"
    assert choose_transport("shared", tiles[1:], 50, False, False) == "shared"
    # tiles not known yet (watch): what carries any size, when configured
    assert [choose_transport("auto", None, 50, s, g) for s, g in ((True, True), (False, True), (False, False))] == [
        "shared",
        "globus",
        "inline",
    ]


def test_contrast_of_float_tiles_does_not_depend_on_their_scale(isbi):
    rng = np.random.default_rng(3)
    tissue = rng.poisson(gaussian_filter(isbi[0][:256, :256].astype(float), 6) / 255 * 200) / 200 * 255
    ref = contrast_to_noise(tissue).cnr
    for scale in (1 / 255, 1e-3 / 255, 1e6):  # the integer rounding floor (0.29 grey levels) made [0, 1] tissue look empty
        assert contrast_to_noise((tissue * scale).astype(np.float32)).cnr == pytest.approx(ref, rel=1e-3)
    assert contrast_to_noise(rng.normal(0.5, 0.05, (256, 256)).astype(np.float32)).cnr == pytest.approx(1.0, abs=0.2)


def test_transfer_status_is_asked_for_every_poll_seconds_however_often_the_pipeline_looks(tmp_path):
    from mhd.client.transport import GlobusTransport

    class Transfers:
        def __init__(self):
            self.asked = 0

        def submit_transfer(self, data):
            return {"task_id": "t1"}

        def get_task(self, task_id):
            self.asked += 1
            return {"status": "ACTIVE"}

    touch(tmp_path / "a.png", b"x")
    tc = Transfers()
    transport = GlobusTransport(
        1, tc, source_collection="s", dest_collection="d", source_local=tmp_path, source_path="/", dest_path="/in",
        dest_remote="", section_name="sec", poll=0.5,
    )  # fmt: skip
    stream = transport.stage(discover(tmp_path).tiles)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.3:  # the pipeline pumps much more often than poll
        assert next(stream) is None
    assert tc.asked == 1
    time.sleep(0.5)
    next(stream)
    assert tc.asked == 2


def test_verdicts_do_not_depend_on_the_order_results_arrive_in():
    """Each tile is judged against the tiles before it in the section's order, whatever order the results come
    back in (two workers finish tiles out of order): the same verdicts either way, in the section's order."""
    rng = np.random.default_rng(3)
    blurs = list(rng.normal(1.0, 0.08, 30))
    blurs[11], blurs[20] = 1.75, 1.32  # a 3 px disk, and one at the limit
    records = [scored(f"t{i:02d}", 1e4, blur=b, blur_err=0.03) for i, b in enumerate(blurs)]

    def run(order):
        judge = Judge(Rule())
        judge.expect(r.tile for r in records)
        out = [v for i in order for v in judge.add(records[i])] + judge.flush()
        return [(r.tile, r.verdict) for r in out]

    in_order = run(range(30))
    shuffled = list(range(30))
    for i in range(0, 28, 3):  # neighbours finish out of order
        shuffled[i], shuffled[i + 2] = shuffled[i + 2], shuffled[i]
    assert run(shuffled) == in_order
    assert [t for t, _ in in_order] == [r.tile for r in records]
    assert dict(in_order)["t11"] == "oof"


def test_a_tile_that_never_arrives_holds_the_others_only_so_long():
    """A record more than MAX_HELD tiles ahead of a missing one goes on without it; the end of a run releases
    everything held."""
    from mhd.client.judge import MAX_HELD

    judge = Judge(Rule(warmup=1))
    judge.expect(f"t{i:03d}" for i in range(MAX_HELD + 5))
    out = [v for i in range(1, MAX_HELD + 1) for v in judge.add(scored(f"t{i:03d}", 1e4, blur=1.0, blur_err=0.03))]
    assert out == [] and judge.pending == MAX_HELD
    out = judge.add(scored(f"t{MAX_HELD + 1:03d}", 1e4, blur=1.0, blur_err=0.03))
    assert [r.tile for r in out][:2] == ["t001", "t002"] and judge.pending == 0
    late = judge.add(scored("t000", 1e4, blur=1.0, blur_err=0.03))  # judged when it comes
    assert [r.tile for r in late] == ["t000"]
    judge.add(scored(f"t{MAX_HELD + 3:03d}", 1e4, blur=1.0, blur_err=0.03))
    assert [r.tile for r in judge.flush()] == [f"t{MAX_HELD + 3:03d}"]
