"""Shared fixtures: the real EM slices, a PATH that finds the venv's tools, and a home of the suite's own."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

#: 30 in-focus ISBI 2012 EM slices (512 x 512 uint8); attribution in its README.md.
ISBI_DIR = Path(__file__).parent / "data" / "isbi2012"

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
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def isbi_paths() -> list[Path]:
    return sorted(ISBI_DIR.glob("train_*.png"))


@pytest.fixture(scope="session")
def isbi() -> list[np.ndarray]:
    """All 30 slices as uint8 arrays, in order."""
    return [iio.imread(p) for p in isbi_paths()]


@pytest.fixture
def isolated_config(tmp_path, monkeypatch):
    """A client configuration of its own: no MHD_* variables from outside, the config file in tmp_path."""
    for key in list(os.environ):
        if key.startswith("MHD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MHD_CONFIG", str(tmp_path / "cfg" / "config.json"))
