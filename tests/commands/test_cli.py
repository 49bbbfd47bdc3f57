"""The ``client`` command line as a whole: help and its examples, usage errors and their exit status, the program's
names, deprecated options, debug output, an unforeseen failure. Each command's own behaviour is in ``test_<command>_command.py`` beside
this file."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, run
from mhd import __version__
from mhd.client import cli
from mhd.client.cli import EXIT_USAGE, main

COMMANDS = [
    ["score"],
    ["submit"],
    ["watch"],
    ["report"],
    ["calibrate"],
    ["config"],
    ["register"],
    ["login"],
    ["logout"],
    ["endpoint"],
    ["endpoint", "configure"],
    ["focus-sweep"],
]


pytestmark = pytest.mark.usefixtures("isolated_config")


def test_help_version_and_examples():
    top = run("-h")
    assert top.exit_code == 0 and "Example:" in top.output and "submit" in top.output
    assert run("--version").output.strip().endswith(__version__)
    for cmd in COMMANDS:
        out = run(*cmd, "--help")
        assert out.exit_code == 0 and "Example:" in out.output, cmd


@pytest.mark.parametrize("command", [[], *COMMANDS], ids=" ".join)
def test_help_examples_are_kept_whole_for_copying(command):
    """click rewraps paragraphs; each example block is marked (\\b) so that its lines come out as written."""
    cmd = main
    for name in command:
        cmd = cmd.get_command(None, name)
    example = inspect.cleandoc(cmd.help).split("Example:", 1)[1].strip("\n").split("\n\n")[0]  # the block after it
    written = [line.strip() for line in example.splitlines() if line.strip() not in ("", "\b")]
    out = CliRunner().invoke(main, [*command, "--help"], terminal_width=60)
    shown = [line.strip() for line in out.output.split("Example:", 1)[1].splitlines()]
    assert out.exit_code == 0 and written and all(line in shown for line in written), (written, shown)


def test_watch_help_keeps_the_quoted_example_on_one_line():
    out = CliRunner().invoke(main, ["watch", "--help"], terminal_width=80)
    assert """client watch --dir /data/section_043 --on-oof "notify-send 'Out of focus'\"""" in out.output


@pytest.mark.parametrize("command", ["submit", "watch"])
def test_detector_options_come_after_the_run_options(command):
    helptext = run(command, "--help").output.split("Options:", 1)[1]
    assert helptext.index("--dir") < helptext.index("--results") < helptext.index("--n-bin") < helptext.index("--threshold")


def test_usage_errors_exit_64_not_2():
    assert run("submit").exit_code == EXIT_USAGE  # missing --dir
    assert run("submit", "--dir", ".", "--bogus").exit_code == EXIT_USAGE
    assert run("frobnicate").exit_code == EXIT_USAGE
    out = run("submit", "--dir", "/no/such/folder")
    assert out.exit_code == 1 and "not a folder" in out.output


# ------------------------------------------------------------ executor


@pytest.mark.parametrize("command", ["submit", "watch"])
def test_executor_option_and_its_deprecated_backend_alias(tmp_path, command):
    """--executor picks where tasks run; --backend (hidden) still does, with a one-line note on stderr."""
    assert "--executor [auto|local|globus]" in run(command, "--help").output
    assert "--backend" not in run(command, "--help").output
    for option, note in (("--executor", False), ("--backend", True)):
        out = CliRunner().invoke(main, [command, "--dir", str(EXAMPLE), option, "globus"])
        assert out.exit_code == 1, out.output
        assert "the globus executor needs an endpoint and a function UUID" in out.output  # globus chosen, not auto (local)
        deprecated = [line for line in out.stderr.splitlines() if "deprecated" in line]
        assert deprecated == (["client: --backend is deprecated for submit and watch; use --executor"] if note else [])


@pytest.mark.parametrize(
    ("argv0", "name"),
    [
        ("/usr/local/bin/mhd", "mhd"),
        ("/opt/venv/bin/client", "client"),
        ("/x/mhd/client/__main__.py", "client"),
        ("C:\\venv\\Scripts\\mhd.exe", "mhd"),
    ],
)
def test_program_name_is_the_one_started(monkeypatch, argv0, name):
    from mhd.client.cli import prog_name

    monkeypatch.setattr("sys.argv", [argv0.replace("\\", os.sep)])
    assert prog_name() == name


def test_both_entry_points_name_themselves_in_usage_and_notes():
    """``mhd`` says ``mhd``, also in its deprecation notes; ``python -m mhd.client`` says ``client``."""
    import subprocess
    import sys

    as_module = subprocess.run([sys.executable, "-m", "mhd.client", "--help"], capture_output=True, text=True, check=True)
    assert as_module.stdout.startswith("Usage: client ")
    script = Path(sys.executable).parent / "mhd"
    if not script.exists():
        pytest.skip("the mhd console script is not installed beside this interpreter")
    assert subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout.startswith("Usage: mhd ")
    out = subprocess.run([script, "score", "--backend", "numpy", EXAMPLE / "tile_r0_c0.png", "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.startswith("mhd: --backend is deprecated for score"), out.stderr


def test_debug_output_is_ours_not_every_png_chunk():
    """``client -vv`` printed PIL's debug line for every PNG chunk it read."""
    tile = EXAMPLE / "tile_r0_c0.png"
    out = CliRunner().invoke(main, ["-vv", "score", str(tile)])
    assert out.exit_code == 0, out.output
    assert "STREAM b'IHDR'" not in out.output


def test_an_unforeseen_failure_is_one_line_with_the_traceback_in_a_file(tmp_path, isolated_config, monkeypatch):
    import tempfile

    import mhd.client.report

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(mhd.client.report, "make_report", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    section = tmp_path / "s"
    section.mkdir()
    out = CliRunner().invoke(cli.main, ["report", "--dir", str(section)])
    assert out.exit_code == 1, out.output
    [saved] = tmp_path.glob("mhd-client-*.traceback.txt")
    assert out.output.strip() == f"Error: unexpected TypeError: unsupported operand (traceback in {saved})"
    assert "Traceback" not in out.output and "raise TypeError" in saved.read_text()


@pytest.mark.usefixtures("two_workers")
def test_on_oof_help_names_every_variable():
    text = CliRunner().invoke(cli.main, ["submit", "--help"], terminal_width=200).output
    assert "MHD_TILE, MHD_VERDICT and MHD_REASON" in text
