"""Finding a section's tiles (``mhd.client.discover``): natural order, what is skipped and ignored, links, a folder
that changes while it is walked, and tile positions from names or a CSV."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from conftest import touch
from mhd.client.discover import discover, natural_key, tile_positions

pytestmark = pytest.mark.usefixtures("isolated_config")


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
