"""The real ``globus-compute-endpoint start`` and ``list`` on every layout ``configure`` writes.

Offline, with a temporary HOME and stdin closed, ``start`` reads the
configuration, makes its checks (no ``engine`` in config.yaml; a contact
``email`` when run as root) and then asks for a Globus login, which fails at
once without a terminal ("Aborted!"). With stored credentials it would try the
network instead ("Network failure; unable to register endpoint"). A layout
passes when ``start`` gets to one of those two and reports no configuration
error; the two negative tests show that the check fails on the layouts that
4.x refuses.

The recommended layout is started as a non-root account: when the tests run
as root (CI), as ``nobody`` through a user namespace (``unshare --user``,
file access as the invoking root) or ``setpriv``. The root layout is started
only when the tests run as root: its checks apply to a root process only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import REAL_HOME, SUITE_HOME

BIN = Path(sys.executable).parent
GCE = BIN / "globus-compute-endpoint"
FID = "4b116d3c-1703-4f8f-9f6f-39921e5864df"
IDMAP = [
    {
        "DATA_TYPE": "expression_identity_mapping#1.0.0",
        "mappings": [{"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}"}],
    }
]
NOBODY = 65534
IS_ROOT = os.geteuid() == 0
#: What ``start`` prints when it stops at the login (no terminal) or at the network.
LOGIN = ("Please authenticate with Globus here", "Enter the resulting Authorization Code")
NETWORK = "Network failure; unable to register endpoint"
#: Any of these means a configuration check stopped it.
CONFIG_ERRORS = ("Error:", "Traceback", "Failed to find or parse endpoint configuration", "contains an `engine` field", "contact email")


@lru_cache(maxsize=None)
def _non_root_prefix() -> tuple[tuple[str, ...] | None, str]:
    """A command prefix that runs a command as a non-root account, or None and why not."""
    if not IS_ROOT:
        return (), ""
    probe = [sys.executable, "-c", "import os, globus_compute_endpoint; assert os.getuid() != 0"]
    tried = []
    for prefix in (
        ("unshare", "--user", f"--map-user={NOBODY}", f"--map-group={NOBODY}"),
        ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"),
    ):
        if shutil.which(prefix[0]) is None:
            tried.append(f"{prefix[0]} is not installed")
            continue
        proc = subprocess.run([*prefix, *probe], capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return prefix, ""
        tried.append(f"{' '.join(prefix[:2])}: {(proc.stderr.strip().splitlines() or ['exit %d' % proc.returncode])[-1]}")
    return None, "the tests run as root and cannot run this Python as a non-root account (" + "; ".join(tried) + ")"


def _as_account(layout: str) -> tuple[str, ...]:
    """The prefix that runs commands as the account this layout is started by (or skip)."""
    if layout == "root":
        if not IS_ROOT:
            pytest.skip(f"the root layout's checks apply to a root process; the tests run as uid {os.geteuid()}")
        return ()
    prefix, why = _non_root_prefix()
    if prefix is None:
        pytest.skip(why)
    return prefix


@pytest.fixture
def home():
    """A temporary HOME that a non-root account can use (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mhd-start-"))
    if IS_ROOT and _non_root_prefix()[0] and _non_root_prefix()[0][0] == "setpriv":
        os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(home: Path, **extra: str) -> dict[str, str]:
    """HOME of its own, this venv first on PATH, no Globus credentials from outside."""
    return {
        "HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "LANG": "C.UTF-8",
        "MHD_CONFIG": str(home / "mhd.json"),
        **extra,
    }


def _configure(prefix: tuple[str, ...], home: Path, *args: str) -> str:
    """Run ``python -m mhd.endpoint configure`` as the account; return the command it says starts the endpoint."""
    cmd = [*prefix, sys.executable, "-m", "mhd.endpoint", "configure", "--gpus", "2", "--env", sys.prefix, "--function-id", FID, *args]
    proc = subprocess.run(cmd, env=_env(home), capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return re.search(r"^Start it with:\s+(.+)$", proc.stdout, re.M).group(1)


def _run(prefix: tuple[str, ...], home: Path, command: str) -> subprocess.CompletedProcess:
    """Run a printed shell command (``VAR=value ... program args``) as the account, stdin closed."""
    words = shlex.split(command)
    assignments = {}
    while "=" in words[0] and not words[0].startswith("/"):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    return subprocess.run(
        [*prefix, *words], env=_env(home, **assignments), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90, cwd="/"
    )


def _stopped_at(proc: subprocess.CompletedProcess) -> str:
    """Where ``start`` stopped: "login", "network", or the configuration error it printed."""
    out = proc.stdout + proc.stderr
    if any(marker in out for marker in CONFIG_ERRORS) or proc.returncode == 0:
        return f"a configuration check (exit {proc.returncode}):\n{out}"
    if all(marker in out for marker in LOGIN) and "auth.globus.org" in out:
        return "login"
    if NETWORK in out:
        return "network"
    return f"something else (exit {proc.returncode}):\n{out}"


def _root_args(home: Path) -> list[str]:
    idmap = home / "idmap.json"
    idmap.write_text(json.dumps(IDMAP))
    return ["--email", "em-admin@example.org", "--identity-mapping", str(idmap)]


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["local", "slurm", "pbspro"])
@pytest.mark.parametrize("layout", ["service-account", "root"])
def test_start_gets_past_every_configuration_check(home, layout, provider):
    """As an admin would: configure as the account that runs the endpoint, then the command it prints."""
    prefix = _as_account(layout)
    args = _root_args(home) if layout == "root" else []
    command = _configure(prefix, home, "--provider", provider, "--partition", "gpu", *args)
    assert command == f"{GCE} start mhd-gpu"
    proc = _run(prefix, home, command)
    assert _stopped_at(proc) in ("login", "network")
    assert (home / ".globus_compute" / "mhd-gpu" / "endpoint.log").exists()


@pytest.mark.slow
def test_start_finds_a_configuration_written_with_home(home):
    """``--home`` elsewhere: the printed command names the folder, and ``start`` reads it from there."""
    layout = "root" if IS_ROOT else "service-account"
    prefix = _as_account(layout)
    elsewhere = home / "svc"
    elsewhere.mkdir()
    args = _root_args(home) if layout == "root" else []
    command = _configure(prefix, home, "--home", str(elsewhere), *args)
    assert command == f"GLOBUS_COMPUTE_USER_DIR={elsewhere / '.globus_compute'} {GCE} start mhd-gpu"
    proc = _run(prefix, home, command)
    assert _stopped_at(proc) in ("login", "network")
    assert (elsewhere / ".globus_compute" / "mhd-gpu" / "endpoint.log").exists()
    assert not (home / ".globus_compute" / "mhd-gpu").exists()


@pytest.mark.slow
def test_start_check_fails_on_the_layout_4x_refuses(home):
    """The pre-4.x layout (an engine in config.yaml) stops at a configuration check, and the test says so."""
    prefix = ()  # as whoever runs the tests: `start` checks for an engine first
    command = _configure(prefix, home, "--single-user")
    config = home / ".globus_compute" / "mhd-gpu" / "config.yaml"
    with config.open("a") as fh:
        fh.write("engine:\n  type: ThreadPoolEngine\n")
    stopped = _stopped_at(_run(prefix, home, command))
    assert stopped.startswith("a configuration check") and "contains an `engine` field" in stopped


@pytest.mark.slow
def test_start_check_fails_when_root_starts_the_service_account_layout(home):
    """Started as root, the service-account layout stops at the missing contact email."""
    prefix = _as_account("root")
    command = _configure(prefix, home, "--single-user")
    stopped = _stopped_at(_run(prefix, home, command))
    assert stopped.startswith("a configuration check") and "Multi-user endpoints require a contact email" in stopped


@pytest.mark.slow
def test_list_shows_the_configured_endpoint(home):
    """admin.md's "is it up?" check: ``globus-compute-endpoint list`` prints a table (texttable constrained)."""
    prefix = _as_account("service-account")
    _configure(prefix, home)
    proc = _run(prefix, home, f"{GCE} list")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in proc.stdout.splitlines() if line.startswith("|")]
    assert rows[0] == ["Endpoint ID", "Status", "Endpoint Name"]
    assert rows[1] == ["None", "Initialized", "mhd-gpu"]


def test_the_suite_runs_in_a_home_of_its_own():
    """conftest.py points HOME at a temporary folder before globus-compute is imported."""
    from globus_compute_sdk.sdk.compute_dir import get_compute_dir

    assert Path.home() == SUITE_HOME != REAL_HOME
    assert get_compute_dir().is_relative_to(SUITE_HOME)
