"""``client config``: every key's value and where it comes from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_config_shows_values_and_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("MHD_OOF_K", "4")
    Path(os.environ["MHD_CONFIG"]).parent.mkdir()
    Path(os.environ["MHD_CONFIG"]).write_text(json.dumps({"endpoint": "abc"}))
    data = json.loads(run("config", "--json").output)
    assert data["oof_k"] == {"value": 4.0, "source": "$MHD_OOF_K"}
    assert data["endpoint"] == {"value": "abc", "source": os.environ["MHD_CONFIG"]}
    assert data["transport"]["source"] == "default"
    table = run("config")
    assert table.exit_code == 0 and "$MHD_OOF_K" in table.output and "calibration" in table.output
    monkeypatch.setenv("MHD_WORKERS", "lots")
    bad = run("config")
    assert bad.exit_code == 1 and "workers from $MHD_WORKERS" in bad.output
