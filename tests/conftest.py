"""Shared fixtures: the real EM slices, and a PATH that finds the venv's tools."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

#: 30 in-focus ISBI 2012 EM slices (512 x 512 uint8); attribution in its README.md.
ISBI_DIR = Path(__file__).parent / "data" / "isbi2012"

# Globus Compute engines start `globus-compute-endpoint` workers by name.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


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
