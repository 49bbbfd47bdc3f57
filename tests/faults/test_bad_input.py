"""Hostile and broken tiles through ``client submit``: each fails alone, named; the rest is scored.

One section mixes good tiles (crops of the real ISBI slices, in colour, 16
bit, float and under a non-UTF-8 name too) with every kind of bad file. The
client runs as a separate process, the way an operator runs it, and must give
every tile exactly one record, name each bad file in its error, print no
traceback, and put the details in ``mhd-client.log``. It runs twice: inline
(the client reads the files) and shared storage (the workers read them by
path under ``MHD_DATA_ROOT``).

Two files need the moment or the operating system to be hostile:

- ``vanished.png`` is deleted after discovery, before it is read: the
  subprocess runs the real ``client`` with ``discover`` wrapped to delete it
  right after listing the folder.
- ``locked.png`` cannot be read, in one of two variants:

  ``kernel``: it is ``chmod 000``. Root ignores file modes, and these tests
  often run as root, so the client then runs as root *without* the
  ``CAP_DAC_OVERRIDE`` and ``CAP_DAC_READ_SEARCH`` capabilities (dropped from
  its bounding set before ``exec``; its spawned workers inherit that): the
  kernel itself answers EACCES, as it does for any non-root user. Dropping
  them needs ``CAP_SETPCAP``, which a root without extra capabilities (as
  in some CI containers) may not have; then this variant is skipped.
  (Running as another uid is not possible here: the Python interpreter may
  live under ``/root``.)

  ``injected``: needs no privilege, so it runs wherever the tests run. The
  file stays readable, and every open of it, in the client and in the
  endpoint workers it spawns, fails with EACCES: a ``sitecustomize`` on the
  child's ``PYTHONPATH`` installs an audit hook on the ``open`` event (the
  one event that ``open()``, ``io.open`` and ``os.open`` all raise). Every
  other file and every other check is the same in both variants.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import ImageFile

from conftest import isbi_paths, read_results
from mhd.functions.worker.remote import score_tiles
from tilegen import encode, png_header_only, tiff_header_only

#: prctl(2) option and capability numbers (linux/prctl.h, linux/capability.h).
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SETPCAP = 24, 1, 2, 8

#: ``client`` with ``discover`` wrapped: the file named by $VANISH_TILE is deleted right after discovery.
CLIENT_WITH_VANISHING_TILE = """
import os
import mhd.client.submit as submit
from mhd.client.cli import main

listed = submit.discover

def discover_then_vanish(section):
    found = listed(section)
    os.remove(os.path.join(section, os.environ["VANISH_TILE"]))
    return found

submit.discover = discover_then_vanish
main(prog_name="client")
"""

#: ``sitecustomize`` of the ``injected`` variant: opening a file named $MHD_TEST_DENY_OPEN fails with EACCES.
DENY_OPEN = """
import errno
import os
import sys

_DENIED = os.environ.get("MHD_TEST_DENY_OPEN")


def _deny(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and os.path.basename(os.fsdecode(args[0])) == _DENIED:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(args[0]))


if _DENIED:
    sys.addaudithook(_deny)
"""

NON_UTF8_GOOD = b"latin1_\xe9t\xe9.png"
NON_UTF8_BAD = b"bad_\xff\xfe.tif"


def crop(i: int, size: int = 160) -> np.ndarray:
    """A real in-focus EM crop (uint8)."""
    return iio.imread(isbi_paths()[i])[:size, :size]


def bad_and_good_files() -> dict[bytes, tuple[bytes, str | None]]:
    """File name -> (content, expected error text or None when it must be scored)."""
    rgb = np.stack([crop(1), crop(2), crop(3)], axis=-1)
    nan = crop(4).astype(np.float32)
    nan[7, 9] = np.nan
    inf = crop(5).astype(np.float32)
    inf[0, 0] = np.inf
    files: dict[bytes, tuple[bytes, str | None]] = {f"good_{i:02d}.png".encode(): (encode(crop(i), "PNG"), None) for i in range(10, 18)}
    files.update(
        {
            b"zero.tif": (b"", "empty file (0 bytes)"),
            b"truncated.png": (encode(crop(6), "PNG")[:300], "cannot decode PNG image"),
            b"truncated.tif": (encode(crop(7), "TIFF")[:2000], "cannot decode TIFF image"),
            b"text.tif": (b"tile list, not a tile\n", "not a PNG, TIFF, BMP or JPEG image"),
            b"bomb.png": (png_header_only(200_000, 200_000), "200000 x 200000 = 40,000,000,000 pixels, above the limit"),
            b"rgb.png": (encode(rgb, "PNG"), None),
            b"rgba.png": (encode(np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1), "PNG"), None),
            b"16bit.tif": (encode(crop(8).astype(np.uint16) * 257, "TIFF"), None),
            b"float32.tif": (encode(crop(9).astype(np.float32) / 255, "TIFF"), None),
            b"stack.tif": (encode(np.stack([crop(i, 64) for i in range(3)]), "TIFF"), "image is 3-D"),
            b"nan.tif": (encode(nan, "TIFF"), "NaN or Inf"),
            b"inf.tif": (encode(inf, "TIFF"), "NaN or Inf"),
            b"constant.png": (encode(np.full((160, 160), 90, np.uint8), "PNG"), None),
            b"tiny.png": (encode(np.zeros((2, 3), np.uint8), "PNG"), "too small (2 x 3)"),
            b"vanished.png": (encode(crop(19), "PNG"), "vanished"),
            b"locked.png": (encode(crop(20), "PNG"), "Permission denied"),
            NON_UTF8_GOOD: (encode(crop(21), "PNG"), None),
            NON_UTF8_BAD: (b"\x00\x01 garbage", "not a PNG, TIFF, BMP or JPEG image"),
        }
    )
    return files


def can_drop_root_bypass() -> bool:
    """True if a child of this root process can give up ignoring file modes."""
    caps = dict(line.split(":\t") for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Cap"))
    return bool(int(caps["CapEff"], 16) >> CAP_SETPCAP & 1)


def obey_file_modes() -> None:
    """preexec_fn: drop root's permission bypass for this process and its children."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(params=["kernel", "injected"])
def denial(request) -> str:
    """How ``locked.png`` is made unreadable (see the module docstring)."""
    if request.param == "kernel" and os.geteuid() == 0 and not can_drop_root_bypass():
        pytest.skip(
            "running as root without CAP_SETPCAP: the kernel cannot be made to refuse root a chmod-000 file; "
            "the 'injected' variant covers the same unreadable file (EACCES at open, no privilege needed)"
        )
    return request.param


@pytest.fixture
def section(tmp_path: Path, denial: str) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path / "section_bad"
    folder.mkdir()
    expected = {}
    for name, (data, error) in bad_and_good_files().items():
        with open(os.path.join(os.fsencode(folder), name), "wb") as fh:
            fh.write(data)
        expected[os.fsdecode(name)] = error
    (folder / "README.md").write_text("not a tile: listed as skipped, never scored\n")
    if denial == "kernel":
        os.chmod(folder / "locked.png", 0)
    return folder, expected


def run_client(folder: Path, env: dict[str, str], denial: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", CLIENT_WITH_VANISHING_TILE, "submit", "--dir", str(folder)]
    full_env = {**os.environ, **env, "VANISH_TILE": "vanished.png"}
    preexec = None
    if denial == "kernel":
        preexec = obey_file_modes if os.geteuid() == 0 else None
    else:
        hooks = folder.parent / "deny_open"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(DENY_OPEN)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
        full_env["MHD_TEST_DENY_OPEN"] = "locked.png"
    return subprocess.run(cmd, env=full_env, capture_output=True, timeout=180, preexec_fn=preexec)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["inline", "shared"])
def test_every_bad_file_fails_alone_with_its_name_and_the_rest_is_scored(section, tmp_path, transport, denial):
    folder, expected = section
    env = {"MHD_CONFIG": str(tmp_path / "cfg" / "config.json"), "MHD_WORKERS": "2", "MHD_TRANSPORT": transport}
    if transport == "shared":
        env["MHD_SHARED_LOCAL"] = str(folder)
    proc = run_client(folder, env, denial)
    terminal = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, terminal  # errors recorded
    assert "Traceback" not in terminal

    lines = read_results(folder)
    records = {r["tile"]: r for r in lines}
    assert len(lines) == len(records) == len(expected)  # every file one record, none twice
    assert set(records) == set(expected)  # README.md is no tile
    log = (folder / "mhd-client.log").read_text(encoding="utf-8")
    for tile, error in expected.items():
        rec = records[tile]
        if error is None:
            assert rec["verdict"] in ("ok", "oof", "empty") and rec["error"] is None, rec
            continue
        assert rec["verdict"] == "error" and rec["reason"] == rec["error"], rec
        assert rec["error"].startswith(f"{tile}: "), rec  # names the file
        if error == "vanished":  # inline reads as the workers do (mhd.client.transport.read_in_section): the same message
            error = "no such file under the data root"
        assert error in rec["error"], rec
        assert rec["error"].encode("utf-8", "backslashreplace").decode() in log  # the details are in the log
        assert f"ERROR {tile}:" in terminal or not tile.isascii()

    scored = [t for t, e in expected.items() if e is None]
    assert all(records[t]["features"] > 0 for t in scored if t != "constant.png")
    assert records["constant.png"]["features"] == 0 and records["constant.png"]["verdict"] == "empty"
    assert records[os.fsdecode(NON_UTF8_GOOD)]["shape"] == [160, 160]
    assert records["rgb.png"]["transport"] == transport
    n_failed = sum(e is not None for e in expected.values())
    found = len(expected) + 1
    assert f"{found} files found = {found - 1 - n_failed} scored + {n_failed} failed + 1 skipped (not tiles)" in terminal
    assert "skipped (not an image): README.md" in terminal


@pytest.mark.parametrize("name,data", [("bomb.png", png_header_only(200_000, 200_000)), ("bomb.tif", tiff_header_only(200_000, 200_000))])
def test_decompression_bomb_is_refused_from_its_header_and_never_decoded(monkeypatch, name, data):
    import tifffile

    def forbidden(*args, **kwargs):
        raise AssertionError("a decoder ran on a decompression bomb")

    # the modules a first call imports (decoders, the detector) are not what is measured
    warm = encode(np.full((16, 16), 9, np.uint8), "PNG" if name.endswith(".png") else "TIFF")
    assert score_tiles([{"name": "warm" + name[-4:], "data": warm}])[0]["error"] is None

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", forbidden)
    tracemalloc.start()
    try:
        [entry] = score_tiles([{"name": name, "data": data}])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert re.fullmatch(
        rf"{re.escape(name)}: image is 200000 x 200000 = 40,000,000,000 pixels, above the limit of 268,435,456 \(MHD_MAX_PIXELS\)",
        entry["error"],
    )
    assert peak < 2 * 2**20  # bytes: the header is all that was read
