"""The client's configuration (``mhd.client.config``): defaults, the file, variables and options, in that order of
precedence, each value's source, errors that name the key, and the keys of earlier versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run
from mhd.client import config as config_mod
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
    assert config_mod.calibrations_dir() == tmp_path / "cfg" / "calibrations"
    assert config_mod.legacy_calibration_path() == tmp_path / "cfg" / "calibration.json"


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
