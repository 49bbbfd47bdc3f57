"""``client endpoint configure``: the endpoint's configuration written, validated, never overwritten by accident."""

from __future__ import annotations

import pytest

from conftest import run

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_endpoint_configure_writes_validated_config_and_refuses_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args = [
        "endpoint",
        "configure",
        "--gpus",
        "4",
        "--env",
        "/opt/mhd/venv",
        "--single-user",
        "--function-id",
        "2f1c7ed8-6e2e-4b7e-9d0b-0d4b6d1f8a11",
    ]
    out = run(*args)
    assert out.exit_code == 0, out.output
    folder = tmp_path / "home" / ".globus_compute" / "mhd-gpu"
    assert "2f1c7ed8-6e2e-4b7e-9d0b-0d4b6d1f8a11" in (folder / "config.yaml").read_text()
    assert "source /opt/mhd/venv/bin/activate" in (folder / "user_config_template.yaml.j2").read_text()
    again = run(*args)
    assert again.exit_code == 1 and "--force" in again.output
    assert run(*args, "--force", "--gpus", "8").exit_code == 0


def test_endpoint_configure_allows_the_registered_function_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MHD_FUNCTION", "7d3f2a10-0c1e-4b55-8f0e-1a2b3c4d5e6f")
    out = run(
        "endpoint", "configure", "--gpus", "2", "--env", "/opt/mhd/venv", "--single-user", "--provider", "slurm", "--partition", "gpu"
    )
    assert out.exit_code == 0, out.output
    folder = tmp_path / "home" / ".globus_compute" / "mhd-gpu"
    assert "7d3f2a10-0c1e-4b55-8f0e-1a2b3c4d5e6f" in (folder / "config.yaml").read_text()
    assert "SlurmProvider" in (folder / "user_config_template.yaml.j2").read_text()
