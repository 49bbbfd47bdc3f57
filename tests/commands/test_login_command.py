"""``client login`` and ``client logout`` where there is no terminal and no token."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conftest import run
from mhd.client.cli import main

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_login_without_a_terminal_fails_clearly_and_logout_without_tokens_succeeds(monkeypatch):
    for var in ("GLOBUS_COMPUTE_CLIENT_ID", "GLOBUS_COMPUTE_CLIENT_SECRET"):
        monkeypatch.delenv(var, raising=False)
    out = CliRunner().invoke(main, ["login"], input="")
    assert out.exit_code == 1 and "Error: login failed: there is no terminal here to log in from: run 'client login'" in out.output
    assert "Traceback" not in out.output and "auth.globus.org" not in out.output  # no URL and prompt it cannot read
    bye = run("logout")
    assert bye.exit_code == 0 and "stored tokens deleted" in bye.output
