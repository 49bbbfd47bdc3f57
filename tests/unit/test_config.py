"""The client's configuration (``mhd.client.config``): defaults, the file, variables and options, in that order of
precedence, each value's source, errors that name the key, and the keys of earlier versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run
from mhd.client.config import load

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_config_reads_the_old_backend_key_and_variable(tmp_path, monkeypatch):
    path = Path(os.environ["MHD_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backend": "local"}))
    cfg = load()
    assert cfg["executor"] == "local" and cfg.sources["executor"] == str(path)
    monkeypatch.setenv("MHD_BACKEND", "globus")
    assert load()["executor"] == "globus"
    monkeypatch.setenv("MHD_EXECUTOR", "local")
    assert load()["executor"] == "local", "the new name wins"
    path.write_text(json.dumps({"backend": "local", "executor": "globus"}))
    monkeypatch.delenv("MHD_BACKEND")
    monkeypatch.delenv("MHD_EXECUTOR")
    assert load()["executor"] == "globus"
    assert "backend" not in run("config").output.split()
