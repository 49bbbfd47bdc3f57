"""How tiles travel to the workers (``mhd.client.transport``): inline batches by count and bytes, paths under a
shared folder, the automatic choice, and Globus Transfer's status asked for no more often than it should be."""

from __future__ import annotations

import base64
import os
import time

import pytest

from conftest import touch
from mhd.client.discover import discover
from mhd.client.transport import InlineTransport, SharedTransport, choose_transport, read_in_section
from mhd.functions.worker.tileio import TileError

pytestmark = pytest.mark.usefixtures("isolated_config")


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


@pytest.mark.parametrize("nofollow", [True, False], ids=["posix", "without-O_NOFOLLOW"])
def test_a_tile_is_read_only_inside_its_section_as_the_workers_read_it(tmp_path, monkeypatch, nofollow):
    if not nofollow:  # Windows has no O_NOFOLLOW: the portable check refuses the same tiles with the same words
        monkeypatch.delattr(os, "O_NOFOLLOW")
    section = tmp_path / "sec"
    touch(section / "a.png", b"inside")
    touch(section / "sub" / "b.png", b"deeper")
    touch(tmp_path / "elsewhere" / "secret.png", b"outside")
    (section / "in.png").symlink_to("sub/b.png")  # a link that stays inside the section is a tile like any other
    (section / "out.png").symlink_to("../elsewhere/secret.png")
    touch(section / "zero.png", b"")
    tiles = {t.id: t for t in discover(section).tiles}
    assert set(tiles) == {"a.png", "in.png", "out.png", "sub/b.png", "zero.png"}
    assert read_in_section(tiles["a.png"], section) == b"inside"
    assert read_in_section(tiles["in.png"], section) == b"deeper"
    with pytest.raises(TileError, match=r"^path resolves outside the data root \(symbolic link\?\): refused$"):
        read_in_section(tiles["out.png"], section)
    with pytest.raises(TileError, match="empty file"):
        read_in_section(tiles["zero.png"], section)
    (section / "a.png").unlink()
    with pytest.raises(TileError, match="no such file under the data root"):
        read_in_section(tiles["a.png"], section)

    staged = list(InlineTransport(batch=8, root=section).stage(list(tiles.values())))
    assert [p["name"] for s in staged for p in s.payload] == ["in.png", "sub/b.png"]
    errors = {f.tile: f.error for s in staged for f in s.failed}
    assert errors["out.png"] == "out.png: path resolves outside the data root (symbolic link?): refused"  # as client submit says
    assert set(errors) == {"a.png", "out.png", "zero.png"} and str(tmp_path) not in "".join(errors.values())
    unconfined = list(InlineTransport(batch=8).stage([tiles["out.png"]]))  # no section given: the path as it is
    assert base64.b64decode(unconfined[0].payload[0]["data"]) == b"outside"


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
