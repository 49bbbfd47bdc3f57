"""Shared paths, fixtures and helpers: the real EM slices, the example section, the results log, a PATH that finds
the venv's tools, and a home of the suite's own.

The suite is laid out by what it tests (``unit/``, ``commands/``, ``faults/``, ``security/``, ``load/``,
``validation/``, ``project/``); every file finds the repository through the paths here, never through its own
place (``Path(__file__)``), so that files can move between those folders. This folder is on ``sys.path`` (pytest's
default ``prepend`` import mode puts each ``conftest.py``'s folder there), so test files import it and the helper
modules beside it (``tilegen``, ``globus_offline``, ``strict_xp``) by name; test file names are unique across the
folders (there is no ``__init__.py``: each file is imported by its own name).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from mhd.contracts.files import RESULTS_NAME

#: The clone's root, and the folder of the tests and their helpers.
ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
#: The bundled example section: 16 tiles, 3 of them out of focus (``EXPECTED_OOF``), one resin only, a README.
EXAMPLE = ROOT / "examples" / "section_042"
EXPECTED_OOF = {"tile_r1_c2.png", "tile_r2_c3.png", "tile_r3_c1.png"}
#: 30 in-focus ISBI 2012 EM slices (512 x 512 uint8); attribution in its README.md.
ISBI_DIR = TESTS / "data" / "isbi2012"
#: Real SEM scans (KRISS, MIT licence; see its README.md).
KRISS_DIR = TESTS / "data" / "sem-kriss"

# Globus Compute engines start `globus-compute-endpoint` workers by name.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

#: The home directory of whoever runs the tests: nothing may be written there.
REAL_HOME = Path.home()
# Set before any test module imports globus-compute or globus-sdk (they create
# ~/.globus_compute and token stores on first use): the whole suite, and the
# processes it starts, get a temporary home. Tests that need their own still set HOME.
SUITE_HOME = Path(tempfile.mkdtemp(prefix="mhd-tests-home-"))
os.environ["HOME"] = str(SUITE_HOME)
for _var in ("GLOBUS_COMPUTE_USER_DIR", "MHD_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
    os.environ.pop(_var, None)
atexit.register(shutil.rmtree, SUITE_HOME, ignore_errors=True)


def default_stop_signals() -> None:
    """``preexec_fn`` for a client started to be signalled: SIGINT, SIGTERM and SIGHUP handled by default, as a
    shell gives its foreground jobs.

    A test run started in the background (``bash .ci/run &``) ignores SIGINT,
    and the client keeps a signal it was started ignoring ignored (``nohup``).
    """
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # those the platform (or tests/without_posix) has
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def isbi_paths() -> list[Path]:
    return sorted(ISBI_DIR.glob("train_*.png"))


@pytest.fixture(scope="session")
def isbi() -> list[np.ndarray]:
    """All 30 slices as uint8 arrays, in order."""
    return [iio.imread(p) for p in isbi_paths()]


# ------------------------------------------------------------ configuration


@pytest.fixture
def isolated_config(tmp_path, monkeypatch):
    """A client configuration of its own: no MHD_* or GLOBUS_COMPUTE_CLIENT* (service credentials) variables from
    outside, the config file (and the token store beside it) in tmp_path/cfg, and no Globus app cached by another
    test (it holds the token store it opened)."""
    from mhd.client import auth

    for key in list(os.environ):
        if key.startswith(("MHD_", "GLOBUS_COMPUTE_CLIENT")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MHD_CONFIG", str(tmp_path / "cfg" / "config.json"))
    auth._cached_app.cache_clear()
    yield
    auth._cached_app.cache_clear()


@pytest.fixture
def two_workers(monkeypatch):
    """The local engine with two workers (``MHD_WORKERS``), whatever this machine's CPU count."""
    monkeypatch.setenv("MHD_WORKERS", "2")


def run(*args):
    """``client ARGS...`` in this process (click's runner); arguments may be paths or numbers."""
    from click.testing import CliRunner

    from mhd.client.cli import main

    return CliRunner().invoke(main, list(map(str, args)))


# ------------------------------------------------------------ sections and files


def copy_example(dest: Path, readme: bool = True) -> Path:
    """A copy of the example section at ``dest`` (created), without any results of an earlier run; ``readme=False``
    leaves its README.md out (tiles only)."""
    ignore = ("mhd-*",) if readme else ("mhd-*", "README.md")
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(*ignore))
    return dest


@pytest.fixture
def example_copy(tmp_path) -> Path:
    """A fresh copy of the example section: ``tmp_path/section_042``."""
    return copy_example(tmp_path / "section_042")


def touch(path: Path, data: bytes = b"x") -> Path:
    """``path`` with ``data`` in it, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rename_over(path: Path, data: bytes, mtime: float) -> None:
    """Write ``data`` as ``path``.part, last modified at ``mtime``, and rename it over ``path``."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.utime(part, (mtime, mtime))
    part.replace(path)


# ------------------------------------------------------------ results logs


def read_results(path: Path) -> list[dict]:
    """Every line of a results log, parsed, in order: ``path`` is the log or the section (results folder) that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def write_results(section: Path, records: list[dict]) -> None:
    """A results log of these records (dicts, one line each) in ``section`` (created)."""
    section.mkdir(parents=True, exist_ok=True)
    (section / RESULTS_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))


def fake(tile, density, verdict="ok", **extra) -> dict:
    """A results-log line of a scored 256 x 256 tile of this density (features per megapixel) and verdict."""
    cell = density * 0.004096
    return {
        "tile": tile,
        "features": int(density * 0.065536),
        "density": density,
        "grid": [[cell] * 4] * 4,
        "shape": [256, 256],
        "verdict": verdict,
        "reason": "",
        "error": None,
        **extra,
    }


def line_ends(path: Path) -> list[int]:
    """The offset after each newline of a file: where each of its lines ends."""
    data = path.read_bytes()
    return [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]


@pytest.fixture
def synced(monkeypatch):
    """Every ``os.fsync`` of the results log in this process as ``(inode, size of the file when synced)``."""
    import mhd.client.results

    calls: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def watched(fd):
        st = os.fstat(fd)
        real_fsync(fd)
        calls.append((st.st_ino, st.st_size))

    monkeypatch.setattr(mhd.client.results.os, "fsync", watched)
    return calls


# ------------------------------------------------------------ verdicts


def scored(tile, density, grid=None, shape=(256, 256), **extra):
    """A ``score_tiles`` result (a ``TileRecord``, not judged) of this density: ``grid`` the (4 x 4) feature counts
    of its cells, by default even (fractional counts)."""
    from mhd.contracts.record import TileRecord

    cells = grid if grid is not None else [[density * 0.004096 / 1] * 4] * 4
    return TileRecord.from_json(
        {"tile": tile, "features": int(density * 0.065536), "density": density, "grid": cells, "shape": list(shape), "error": None, **extra}
    )


#: The side of the tiles of :func:`scored_cells`, and one cell's area in megapixels.
SIDE = 256
CELL_MP = (SIDE / 4) ** 2 / 1e6


def scored_cells(tile, density, astigmatism=None, angle=None, cells=None, **extra):
    """A score_tiles result: ``cells`` is a (4, 4) array of cell densities (default: uniform), rounded to whole
    feature counts as the worker returns them."""
    from mhd.contracts.record import TileRecord

    cells = np.full((4, 4), density) if cells is None else np.asarray(cells, float)
    grid = np.round(cells * CELL_MP).astype(int).tolist()
    return TileRecord.from_json(
        {
            "tile": tile,
            "features": int(density * SIDE * SIDE / 1e6),
            "density": density,
            "grid": grid,
            "shape": [SIDE, SIDE],
            "astigmatism": astigmatism,
            "astigmatism_angle": angle,
            "error": None,
            **extra,
        }
    )


#: The section of :func:`judged_section`: (slice, defocus um, astigmatism um, astigmatism axis deg) per tile, 384 x 384 px.
KINDS_TILES = {
    "tile_r0_c0.png": (1, 0.0, 0.0, 0.0),
    "tile_r0_c1.png": (4, 0.0, 0.0, 0.0),
    "tile_r0_c2.png": (7, 3.0, 0.0, 0.0),  # defocused
    "tile_r1_c0.png": (14, 1.0, 2.0, 30.0),  # astigmatic: line foci 2 um apart; blur longest across the axis, at 120 deg
    "tile_r1_c1.png": (17, 0.0, 0.0, 0.0),
    "tile_r1_c2.png": (23, 0.0, 0.0, 0.0),
    "tile_r2_c0.png": (26, 0.0, 0.0, 0.0),
    "tile_r2_c1.png": (29, 0.0, 0.0, 0.0),
}


@pytest.fixture(scope="session")
def judged_section(tmp_path_factory):
    """A small section of every kind of out-of-focus tile, scored by ``client submit`` (local backend), then
    ``client report``: (folder, submit output). Shared by the submit and the report tests (made once)."""
    from click.testing import CliRunner

    from mhd.client.cli import main
    from mhd.functions.simulate import defocus_image

    section = tmp_path_factory.mktemp("kinds") / "section"
    section.mkdir()
    paths = isbi_paths()
    for name, (i, dz, astig, axis) in KINDS_TILES.items():
        image = iio.imread(paths[i])[:384, :384]
        iio.imwrite(section / name, defocus_image(image, dz, astigmatism=astig, astigmatism_angle=axis, dose=200.0, rng=i))
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MHD_")]:
            mp.delenv(key)
        mp.setenv("MHD_CONFIG", str(section.parent / "cfg" / "config.json"))
        mp.setenv("MHD_WORKERS", "2")
        mp.setenv("MHD_WARMUP", "6")
        submit = CliRunner().invoke(main, ["submit", "--dir", str(section)])
        report = CliRunner().invoke(main, ["report", "--dir", str(section)])
    assert submit.exit_code == 2, submit.output
    assert report.exit_code == 0, report.output
    return section, submit.output
