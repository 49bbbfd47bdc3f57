"""score_tiles: results, per-tile errors, parameters and every confinement rule.

These call the function in-process; ``test_executors.py`` runs the same
function serialized by source through the endpoint's task execution path.
"""

from __future__ import annotations

import base64
import inspect
import json
import os

import numpy as np
import pytest

from mhd.contracts.record import RESULT_KEYS
from mhd.functions import detect
from mhd.functions.worker.remote import score_tiles
from mhd.functions.worker.scoring import _check_opened, check_params
from mhd.functions.worker.settings import Limits
from mhd.functions.worker.tileio import TileError
from tilegen import blobs, encode, png_header_only


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A data root with two good tiles and one corrupt file; MHD_DATA_ROOT points at it."""
    data = tmp_path / "root"
    (data / "sec").mkdir(parents=True)
    (data / "sec" / "a.png").write_bytes(encode(blobs((96, 96), 1), "PNG"))
    (data / "sec" / "b.tif").write_bytes(encode(blobs((96, 80), 2), "TIFF"))
    (data / "sec" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    monkeypatch.setenv("MHD_DATA_ROOT", str(data))
    for name in ("MHD_MAX_PIXELS", "MHD_MAX_INLINE_BYTES", "MHD_MAX_TILES"):
        monkeypatch.delenv(name, raising=False)
    return data


@pytest.fixture
def outside(tmp_path):
    """A valid tile outside the data root."""
    path = tmp_path / "secret.png"
    path.write_bytes(encode(blobs((64, 64), 3), "PNG"))
    return path


def refused(entry: dict, match: str) -> bool:
    return entry["error"] is not None and match in entry["error"] and entry["features"] is None


# ------------------------------------------------------------ results


def test_path_tile_scores_like_the_detector(root):
    [entry] = score_tiles(["sec/a.png"], {"backend": "numpy"})
    det = detect(blobs((96, 96), 1), backend="numpy")
    assert tuple(entry) == RESULT_KEYS
    assert entry["error"] is None
    assert entry["features"] == det.count > 0
    assert entry["density"] == pytest.approx(det.count / (96 * 96) * 1e6)
    assert entry["grid"] == det.grid.tolist() and entry["shape"] == [96, 96]
    assert entry["backend"] == "numpy" and entry["ms"] >= entry["detect_ms"] > 0
    json.dumps(entry)  # JSON-safe


def test_inline_bytes_and_base64_match_the_path(root):
    raw = (root / "sec" / "b.tif").read_bytes()
    by_path, by_bytes, by_b64 = score_tiles(
        ["sec/b.tif", {"name": "b.tif", "data": raw}, {"name": "b64.tif", "data": base64.b64encode(raw).decode()}]
    )
    assert by_path["features"] == by_bytes["features"] == by_b64["features"] > 0
    assert by_bytes["tile"] == "b.tif" and by_b64["tile"] == "b64.tif"


def test_one_bad_tile_never_fails_the_batch(root):
    entries = score_tiles(["sec/a.png", "sec/bad.png", 42, {"name": "tiny", "data": encode(blobs((8, 8)), "PNG")}, "sec/b.tif"])
    assert [e["error"] is None for e in entries] == [True, False, False, False, True]
    assert entries[1]["error"].startswith("sec/bad.png: cannot decode PNG")
    assert entries[2]["tile"] == "<tile 2>" and "must be a path" in entries[2]["error"]
    assert entries[3]["error"].startswith("tiny: image is too small")
    assert all(e["ms"] >= 0 for e in entries)


def test_device_field_reports_cuda_visible_devices(root, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    [entry] = score_tiles(["sec/a.png"], {"backend": "numpy"})
    assert entry["device"] == "3" and entry["backend"] == "numpy"


def test_registered_source_is_self_contained(root):
    namespace: dict = {}
    exec(inspect.getsource(score_tiles), namespace)
    [entry] = namespace["score_tiles"](["sec/a.png"])
    assert entry["features"] > 0


# ------------------------------------------------------------- params


def test_params_change_the_detection(root):
    [default] = score_tiles(["sec/a.png"])
    [strict] = score_tiles(["sec/a.png"], {"threshold": 0.4, "grid": [2, 2]})
    assert strict["features"] < default["features"]
    assert np.array(strict["grid"]).shape == (2, 2)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"nbins": 4}, "unknown parameter"),
        ({"n_bin": 10_000}, "n_bin"),
        ({"n_bin": 4.5}, "integer"),
        ({"block_size": 10**6}, "block_size"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"grid": [4]}, "grid"),
        ({"min_t": 5.0, "max_t": 2.0}, "min_t < max_t"),
        ({"polarity": "up"}, "polarity"),
        ({"backend": "tpu"}, "backend"),
        ([1, 2], "params must be a dict"),
    ],
)
def test_bad_params_fail_the_task_with_a_clear_message(root, params, match):
    with pytest.raises(ValueError, match=match):
        score_tiles(["sec/a.png"], params)


def test_check_params_defaults_backend_to_auto():
    assert check_params(None) == {"backend": "auto"}
    assert check_params({"n_bin": 8, "grid": (3, 5)}) == {"n_bin": 8, "grid": (3, 5), "backend": "auto"}


# -------------------------------------------------------- confinement


def test_dotdot_is_refused_without_opening(root, outside, monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    entries = score_tiles(["../secret.png", "sec/../../secret.png", "sec/../sec/a.png"])
    assert all(refused(e, "'..' in a path is refused") for e in entries)
    assert opened == []


def test_absolute_paths_are_refused_even_inside_the_root(root, outside):
    entries = score_tiles([str(outside), str(root / "sec" / "a.png"), "/etc/passwd"])
    assert all(refused(e, "absolute paths are refused") for e in entries)


def test_symlink_out_of_the_root_is_refused_without_opening(root, outside, monkeypatch):
    (root / "sec" / "link.png").symlink_to(outside)
    (root / "outdir").symlink_to(outside.parent)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    entries = score_tiles(["sec/link.png", "outdir/secret.png"])
    assert all(refused(e, "resolves outside the data root") for e in entries)
    assert opened == []


@pytest.mark.parametrize("sibling", ["root2", "root.old", "root-backup"])
def test_symlink_into_a_sibling_whose_name_starts_with_the_roots_is_refused(root, sibling, monkeypatch):
    """``<tmp>/root2/secret.png`` starts with the text ``<tmp>/root`` but is not under it: a
    prefix test on the path string would score it; only a path-component test refuses it."""
    secret = root.parent / sibling / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(encode(blobs((64, 64), 4), "PNG"))
    (root / "l.png").symlink_to(secret)
    (root / "sec" / "into").symlink_to(secret.parent)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    entries = score_tiles(["l.png", "sec/into/secret.png", "sec/a.png"])
    assert all(refused(e, "resolves outside the data root") for e in entries[:2]), entries
    assert entries[2]["error"] is None and entries[2]["features"] > 0  # the root itself still works
    assert [os.path.basename(p) for p in opened] == ["a.png"]  # the sibling's file was never opened
    fd = os.open(secret, os.O_RDONLY)  # the check after opening (a link swapped in late) too
    try:
        with pytest.raises(TileError, match="outside the data root"):
            _check_opened(fd, root)
    finally:
        os.close(fd)


def test_symlink_inside_the_root_is_followed(root):
    (root / "alias.png").symlink_to(root / "sec" / "a.png")
    [entry] = score_tiles(["alias.png"])
    assert entry["error"] is None and entry["features"] > 0


def test_file_swapped_for_an_outside_one_after_the_check_is_caught(root, outside):
    fd = os.open(outside, os.O_RDONLY)
    try:
        with pytest.raises(TileError, match="outside the data root"):
            _check_opened(fd, root)
    finally:
        os.close(fd)


@pytest.mark.parametrize("proc", [True, False], ids=["with-proc", "without-proc"])
def test_a_tile_swapped_for_a_link_out_between_the_check_and_the_open_is_never_opened(root, outside, monkeypatch, proc):
    """The race the check alone loses: the path resolves inside the root, then the tile is replaced by a symbolic
    link to a file outside it before it is opened. The open must not follow the link (the outside file is never
    opened, whatever is checked after), and the tile is refused, also where /proc/self/fd is not there to check."""
    import mhd.functions.worker.scoring as scoring

    real_realpath = os.path.realpath
    swapped = []

    def realpath_then_swap(path, *args, **kwargs):
        real = real_realpath(path, *args, **kwargs)
        if str(path).endswith("sec/a.png") and not swapped:  # checked inside the root; now the race is lost
            link = root / "sec" / "swap.tmp"
            link.symlink_to(outside)
            os.replace(link, root / "sec" / "a.png")
            swapped.append(path)
        return real

    secret = os.stat(outside)
    opened = []
    real_open = os.open

    def spy_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        st = os.fstat(fd)
        opened.append((st.st_dev, st.st_ino))
        return fd

    monkeypatch.setattr(scoring.os.path, "realpath", realpath_then_swap)
    monkeypatch.setattr(scoring.os, "open", spy_open)
    if not proc:
        real_exists = os.path.exists
        monkeypatch.setattr(scoring.os.path, "exists", lambda p: not str(p).startswith("/proc/") and real_exists(p))
    [entry] = score_tiles(["sec/a.png"], {"backend": "numpy"})
    assert swapped and os.path.islink(root / "sec" / "a.png")
    assert (secret.st_dev, secret.st_ino) not in opened  # the file outside the root was never opened
    assert entry["error"] is not None and entry["features"] is None, entry
    assert str(root) not in entry["error"]


def test_fifo_directory_missing_and_empty_are_refused(root):
    os.mkfifo(root / "pipe.png")  # opening it for reading would block without O_NONBLOCK
    (root / "empty.png").write_bytes(b"")
    entries = score_tiles(["pipe.png", "sec", "nope.png", "empty.png", "", "a\x00b"])
    assert refused(entries[0], "not a regular file")
    assert refused(entries[1], "not a regular file")
    assert refused(entries[2], "no such file under the data root")
    assert refused(entries[3], "empty file")
    assert refused(entries[4], "empty path")
    assert refused(entries[5], "NUL byte")


def test_messages_never_reveal_the_data_root(root, outside):
    (root / "sec" / "link.png").symlink_to(outside)
    entries = score_tiles(["sec/link.png", "nope.png", "sec/bad.png", "../x"])
    assert all(str(root) not in e["error"] for e in entries)


def test_path_tiles_are_refused_when_no_data_root_is_set(root, monkeypatch):
    monkeypatch.delenv("MHD_DATA_ROOT")
    [path, inline] = score_tiles(["sec/a.png", {"name": "x", "data": (root / "sec" / "a.png").read_bytes()}])
    assert refused(path, "MHD_DATA_ROOT is not set")
    assert inline["error"] is None


@pytest.mark.parametrize("top", ["/", "//", "/tmp/.."])
def test_the_file_systems_root_is_no_data_root(root, monkeypatch, top):
    monkeypatch.setenv("MHD_DATA_ROOT", top)
    with pytest.raises(ValueError, match="MHD_DATA_ROOT must be a folder for tiles, not the file system's root"):
        score_tiles(["etc/passwd"])


def test_pixel_limit_comes_from_the_environment(root, monkeypatch):
    monkeypatch.setenv("MHD_MAX_PIXELS", "9000")  # a.png is 96 x 96 = 9216
    entries = score_tiles(["sec/a.png", "sec/b.tif", {"name": "bomb", "data": png_header_only(50000, 50000)}])
    assert refused(entries[0], "9,216 pixels, above the limit of 9,000 (MHD_MAX_PIXELS)")
    assert entries[1]["error"] is None  # 96 x 80 = 7680
    assert refused(entries[2], "above the limit of 9,000")


def test_inline_size_limit_and_types(root, monkeypatch):
    raw = (root / "sec" / "a.png").read_bytes()
    monkeypatch.setenv("MHD_MAX_INLINE_BYTES", str(len(raw) - 1))
    entries = score_tiles(
        [
            {"name": "big", "data": raw},
            {"name": "big64", "data": base64.b64encode(raw).decode()},
            {"name": "b64junk", "data": "not base64!"},
            {"name": "nodata"},
            {"name": "list", "data": [1, 2, 3]},
        ]
    )
    assert refused(entries[0], "above the limit of") and "MHD_MAX_INLINE_BYTES" in entries[0]["error"]
    assert refused(entries[1], "MHD_MAX_INLINE_BYTES")
    assert refused(entries[2], "not valid base64")
    assert refused(entries[3], "got NoneType")
    assert refused(entries[4], "got list")


def test_huge_base64_text_is_refused_before_decoding(root, monkeypatch):
    monkeypatch.setenv("MHD_MAX_INLINE_BYTES", "1000")
    [entry] = score_tiles([{"name": "x", "data": "A" * 10**6}])
    assert refused(entry, "MHD_MAX_INLINE_BYTES")


def test_too_many_tiles_fail_the_task(root, monkeypatch):
    monkeypatch.setenv("MHD_MAX_TILES", "2")
    with pytest.raises(ValueError, match="3 tiles in one task, above the limit of 2"):
        score_tiles(["sec/a.png"] * 3)
    with pytest.raises(ValueError, match="tiles must be a list"):
        score_tiles("sec/a.png")


@pytest.mark.parametrize("name,value", [("MHD_MAX_PIXELS", "lots"), ("MHD_MAX_TILES", "0"), ("MHD_MAX_INLINE_BYTES", "-5")])
def test_bad_limit_settings_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Limits.from_env({name: value})


def test_limit_defaults():
    limits = Limits.from_env({})
    assert limits.data_root is None
    assert (limits.max_pixels, limits.max_inline_bytes, limits.max_tiles) == (16384**2, 8 * 2**20, 1024)
    assert limits.max_decoded_bytes == 4 * 16384**2


@pytest.mark.gpu
def test_on_a_gpu_worker_the_backend_is_cupy(root):
    from mhd.functions import cuda_available

    if not cuda_available():
        pytest.skip("needs CuPy and a CUDA GPU; this machine has none")
    [gpu] = score_tiles(["sec/a.png"], {"backend": "cupy"})
    [cpu] = score_tiles(["sec/a.png"], {"backend": "numpy"})
    assert gpu["backend"].startswith("cupy:") and gpu["error"] is None
    assert abs(gpu["features"] - cpu["features"]) <= max(2, 0.02 * cpu["features"])


def test_functions_registered_before_the_worker_side_moved_still_find_score_batch():
    """Their source text, stored by the service, imports ``mhd.functions._score.score_batch``."""
    from mhd.functions._score import score_batch as old
    from mhd.functions.worker.scoring import score_batch

    assert old is score_batch


def test_the_worker_measures_tissue_on_the_detectors_grid(root):
    """The verdict's ``empty`` rule needs the contrast: the worker returns it, per cell of the grid asked for."""
    flat = {"name": "resin.png", "data": encode(np.full((96, 96), 120, np.uint8), "png")}
    tissue, resin = score_tiles(["sec/a.png", flat], {"backend": "numpy", "grid": [2, 3]})
    assert np.asarray(tissue["grid"]).shape == np.asarray(tissue["contrast_cells"]).shape == (2, 3)
    assert tissue["contrast"] > 3 > resin["contrast"]
    [tiny] = score_tiles([{"name": "tiny.png", "data": encode(blobs((96, 96), 1)[:16], "png")}], {"backend": "numpy", "grid": [16, 3]})
    assert tiny["error"] is None and tiny["contrast"] is None and tiny["contrast_cells"] is None  # fewer than 2 px per cell


def test_the_finest_grid_allowed_gives_strict_json(root):
    """grid 64 x 64 on a 1024^2 tile: every cell's contrast is a number (it was NaN, which strict JSON refuses)."""
    tile = {"name": "big.png", "data": encode(np.tile(blobs((256, 256), 7), (4, 4)), "png")}
    [entry] = score_tiles([tile], {"backend": "numpy", "grid": [64, 64]})
    assert entry["error"] is None and np.asarray(entry["contrast_cells"]).shape == (64, 64)
    assert np.isfinite(entry["contrast_cells"]).all()
    json.loads(json.dumps(entry, allow_nan=False))
