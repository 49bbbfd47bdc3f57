"""Tiles landing in a watched folder (``mhd.client.watch.Landing``): handed out once complete and stable, again
when re-imaged, given up on when they never decode; a file still being written is activity."""

from __future__ import annotations

import os
import time

import mhd.client.watch as watch
from conftest import EXAMPLE, rename_over
from mhd.client.discover import Tile
from mhd.client.watch import Landing


def test_landing_waits_for_stable_complete_files(tmp_path):
    data = (EXAMPLE / "tile_r0_c0.png").read_bytes()
    landing = Landing(tmp_path, settle=100.0, give_up=100.0)
    (tmp_path / "a.png").write_bytes(data[:1000])
    (tmp_path / ".b.png").write_bytes(data)
    assert landing.poll() == []  # first sight: not yet known to be stable
    assert landing.poll() == []  # stable but truncated: not complete
    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / ".b.png").rename(tmp_path / "b.png")
    assert landing.poll() == []  # both changed since the last look
    ready = landing.poll()
    assert [t.id for t, _ in ready] == ["a.png", "b.png"] and all(isinstance(t, Tile) for t, _ in ready)
    assert landing.poll() == []  # each tile is handed out once


def test_landing_hands_out_a_recorded_tile_again_once_its_file_changes(tmp_path):
    data = (EXAMPLE / "tile_r0_c0.png").read_bytes()
    rename_over(tmp_path / "a.png", data, time.time() - 60)
    rename_over(tmp_path / "old.png", data, time.time() - 60)
    st = (tmp_path / "a.png").stat()
    landing = Landing(tmp_path, {"a.png": (st.st_size, st.st_mtime_ns), "old.png": (None, None)}, settle=1.0, give_up=100.0)
    assert landing.poll() == []  # recorded, unchanged; old.png's record predates file versions: kept
    rename_over(tmp_path / "a.png", data, time.time() - 30)  # re-imaged: same name, same size, another mtime
    rename_over(tmp_path / "old.png", data[:-1] + b"x", time.time() - 30)
    [(tile, landed)] = landing.poll()
    assert tile.id == "a.png" and tile.mtime_ns == (tmp_path / "a.png").stat().st_mtime_ns and tile.size == len(data)
    assert landing.poll() == []  # handed out once per version
    (tmp_path / "a.png").write_bytes(data[:1000])  # re-imaged again, while this watch runs: waits until complete
    assert landing.poll() == [] and landing.poll() == []
    (tmp_path / "a.png").write_bytes(data)
    os.utime(tmp_path / "a.png", (time.time() - 10, time.time() - 10))
    assert [t.id for t, _ in landing.poll()] == ["a.png"]


def test_landing_notes_when_a_file_appears_or_changes(tmp_path):
    data = (EXAMPLE / "tile_r0_c0.png").read_bytes()
    landing = Landing(tmp_path, settle=100.0, give_up=100.0)
    landing.poll()
    assert landing.changed_at == 0.0  # nothing seen yet
    (tmp_path / "a.png").write_bytes(data[:1000])
    before = time.monotonic()
    landing.poll()
    first = landing.changed_at
    assert first >= before
    landing.poll()
    assert landing.changed_at == first  # unchanged since: no activity
    (tmp_path / "a.png").write_bytes(data[:2000])
    landing.poll()
    assert landing.changed_at > first  # still being written


def test_landing_has_nothing_pending_once_a_file_is_back_to_the_version_scored(tmp_path):
    data = (EXAMPLE / "tile_r0_c0.png").read_bytes()
    rename_over(tmp_path / "a.png", data, time.time() - 60)
    st = (tmp_path / "a.png").stat()
    landing = Landing(tmp_path, {"a.png": (st.st_size, st.st_mtime_ns)}, settle=100.0, give_up=100.0)
    (tmp_path / "a.png").write_bytes(data[:100])  # re-imaging starts ...
    assert landing.poll() == [] and landing.pending == 1
    rename_over(tmp_path / "a.png", data, st.st_mtime_ns / 1e9)  # ... and the scored file comes back (cp -p, rsync -t)
    os.utime(tmp_path / "a.png", ns=(st.st_mtime_ns, st.st_mtime_ns))
    assert landing.poll() == [] and landing.pending == 0  # an idle watch would otherwise wait for it forever


def test_a_file_written_under_a_partial_name_is_activity(tmp_path):
    landing = Landing(tmp_path, settle=100.0, give_up=100.0)
    (tmp_path / "a.png.part").write_bytes(b"x" * 10)
    landing.poll()
    first = landing.changed_at
    assert first > 0
    landing.poll()
    assert landing.changed_at == first
    (tmp_path / "a.png.part").write_bytes(b"x" * 20)
    landing.poll()
    assert landing.changed_at > first and landing.pending == 0


def test_landing_forgets_a_pending_file_that_is_removed(tmp_path):
    landing = Landing(tmp_path, settle=100.0, give_up=100.0)
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    landing.poll()
    assert landing.pending == 1
    (tmp_path / "a.png").unlink()
    landing.poll()
    assert landing.pending == 0  # an idle watch would otherwise wait for it forever


def test_landing_gives_up_on_files_that_never_decode(tmp_path):
    landing = Landing(tmp_path, settle=0.0, give_up=0.2)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    assert landing.poll() == []
    time.sleep(0.25)
    assert [t.id for t, _ in landing.poll()] == ["broken.tif"]


def test_landing_gives_up_give_up_seconds_after_it_first_found_a_file_incomplete(tmp_path, monkeypatch):
    """--give-up counts from the first look that found the file stable but incomplete (or empty), not from each look:
    the file is handed out at that look + give_up, not before, and then only once."""
    (tmp_path / "cut.png").write_bytes((EXAMPLE / "tile_r0_c0.png").read_bytes()[:500])
    (tmp_path / "empty.png").write_bytes(b"")
    clock = [time.time() + 1.0]  # ahead of the files' mtimes, whatever the file system's timestamp granularity

    class Clock:  # the module's time, with a wall clock the test moves
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def time():
            return clock[0]

    monkeypatch.setattr(watch, "time", Clock)
    landing = Landing(tmp_path, settle=0.0, give_up=10.0)
    start = clock[0]
    assert landing.poll() == []  # first look: found incomplete, the give-up clock starts
    for after in (0.5, 5.0, 9.99):
        clock[0] = start + after
        assert landing.poll() == [], after
        assert landing.pending == 2
    clock[0] = start + 10.0
    assert sorted(t.id for t, _ in landing.poll()) == ["cut.png", "empty.png"]
    assert landing.poll() == [] and landing.pending == 0


def test_a_copy_that_kept_an_old_modification_time_lands_when_it_is_seen(tmp_path):
    """cp -p and rsync -t keep a file's old mtime: its time to verdict counts from when the watch saw it, not from
    hours before; a file written now lands at its last write."""
    old, new = tmp_path / "old.png", tmp_path / "new.png"
    old.write_bytes((EXAMPLE / "tile_r0_c0.png").read_bytes())
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    before = time.time()
    [(tile, landed)] = Landing(tmp_path, settle=1.0, give_up=100.0).poll()
    assert tile.id == "old.png" and before <= landed <= time.time()
    old.unlink()
    new.write_bytes((EXAMPLE / "tile_r0_c0.png").read_bytes())
    mtime = new.stat().st_mtime
    landing = Landing(tmp_path, settle=0.0, give_up=100.0)
    [(tile, landed)] = landing.poll()
    assert tile.id == "new.png" and 0.0 <= landed - mtime < 1.0  # seen just after its last write
