"""``client config``: every key's value and where it comes from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import run
from mhd.client import cli

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


@pytest.mark.usefixtures("two_workers")
def test_client_config_is_compact_and_verbose_on_request():
    runner = CliRunner()
    short = runner.invoke(cli.main, ["config"], terminal_width=80)
    assert short.exit_code == 0
    lines = short.output.splitlines()
    from mhd.client.config import KEYS

    # one line a key, under a header of three
    assert len(lines) <= len(KEYS) + 3 and any(line.split()[:3] == ["oof_k", "3.0", "default"] for line in lines)
    long = runner.invoke(cli.main, ["config", "--verbose"]).output
    assert "relative rule: OOF below median - k * robust sigma of log density" in long
