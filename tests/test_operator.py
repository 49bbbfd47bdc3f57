"""The operator's client as a new user meets it: large tiles, read-only sections, logs, login, help.

(Ctrl-C is in test_interrupt.py.)
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from conftest import isbi_paths
from mhd.client import cli
from mhd.client.config import load
from mhd.client.console import shorten_left, summary_lines, summary_table
from mhd.client.report import text_colour
from mhd.client.session import make_transport
from mhd.client.transport import MB
from mhd.functions.worker.record import TileRecord

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "section_042"

pytestmark = pytest.mark.usefixtures("isolated_config")


@pytest.fixture(autouse=True)
def two_workers(monkeypatch):
    monkeypatch.setenv("MHD_WORKERS", "2")


def copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("mhd-*"))
    return dest


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ------------------------------------------------------------ large tiles


@pytest.mark.slow
def test_a_4096_square_16_bit_tiff_is_scored_on_the_local_engine_with_no_configuration(tmp_path):
    section = tmp_path / "section"
    section.mkdir()
    big = np.tile(iio.imread(isbi_paths()[0]).astype(np.uint16) * 257, (8, 8))  # 4096 x 4096, 16-bit
    iio.imwrite(section / "big.tif", big)
    assert (section / "big.tif").stat().st_size > 33 * MB  # over the 6 MB inline limit
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])
    assert out.exit_code == 0, out.output
    [rec] = records(section / "mhd-results.jsonl")
    assert rec["verdict"] == "ok" and rec["error"] is None and rec["shape"] == [4096, 4096] and rec["features"] > 0
    assert rec["transport"] == "disk"
    assert "transport disk" in out.output


def tile_of(tmp_path: Path, size: int):
    from mhd.client.discover import Tile

    path = tmp_path / "big.tif"
    path.write_bytes(b"\0" * size)
    return Tile("big.tif", path, size)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({}, "score it on this machine with --executor local"),
        ({"MHD_SHARED_LOCAL": "/mnt/em"}, "use --transport shared (shared_local is configured)"),
        (
            {
                "MHD_TRANSPORT": "inline",
                "MHD_SOURCE_COLLECTION": "s",
                "MHD_SOURCE_LOCAL": "/",
                "MHD_DEST_COLLECTION": "d",
                "MHD_DEST_PATH": "/in",
            },
            "use --transport globus (Globus Transfer is configured)",
        ),
    ],
)
def test_the_inline_limit_applies_where_a_request_crosses_the_network_and_names_what_works(settings, says, tmp_path, monkeypatch):
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MHD_TRANSPORT", "inline")
    tile = tile_of(tmp_path, 7 * MB)
    [staged] = list(make_transport(load(), tmp_path, [tile], 1, kind="globus").stage([tile]))
    [failed] = staged.failed
    assert failed.error.startswith("big.tif: 7.0 MB is over the inline limit of 6 MB per task (request_mb); ")
    assert says in failed.error


def test_the_local_engine_never_asks_for_a_transfer(tmp_path, monkeypatch):
    tile = tile_of(tmp_path, 7 * MB)
    assert make_transport(load(), tmp_path, [tile], 1, kind="local").name == "disk"
    monkeypatch.setenv("MHD_TRANSPORT", "globus")
    with pytest.raises(ValueError, match=r"use --transport auto \(the local engine reads tiles from disk\)"):
        make_transport(load(), tmp_path, [tile], 1, kind="local")


# ----------------------------------------------------- read-only sections


@pytest.fixture
def read_only_section(tmp_path):
    """The example section on a read-only file system (root: a tmpfs remounted read-only), else without write permission."""
    section = tmp_path / "archive" / "section_042"
    section.parent.mkdir()
    if os.geteuid() == 0:
        section.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(section)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        try:
            copy_example(tmp_path / "src")
            for f in (tmp_path / "src").iterdir():
                shutil.copy(f, section / f.name)
            subprocess.run(["mount", "-o", "remount,ro", str(section)], check=True)
            yield section
        finally:
            subprocess.run(["umount", "-l", str(section)], check=False)
    else:
        copy_example(section)
        section.chmod(0o555)
        try:
            yield section
        finally:
            section.chmod(0o755)


@pytest.mark.slow
def test_a_read_only_section_is_scored_with_results_elsewhere(read_only_section, tmp_path):
    runner = CliRunner()
    refused = runner.invoke(cli.main, ["submit", "--dir", str(read_only_section)])
    assert refused.exit_code == 1
    assert "cannot write the results here" in refused.output and "give --results DIR" in refused.output
    assert "Traceback" not in refused.output and "Errno" not in refused.output

    out_root = tmp_path / "results"
    done = runner.invoke(cli.main, ["submit", "--dir", str(read_only_section), "--results", str(out_root)])
    assert done.exit_code == 2, done.output
    folder = out_root / "section_042"
    assert len(records(folder / "mhd-results.jsonl")) == 16
    assert (folder / "mhd-client.log").exists()
    assert f"results: {folder / 'mhd-results.jsonl'}" in done.output

    watched = runner.invoke(cli.main, ["watch", "--dir", str(read_only_section), "--results", str(out_root), "--idle-exit", "0"])
    assert watched.exit_code == 2, watched.output
    assert "16 tiles already recorded" in watched.output

    report = runner.invoke(cli.main, ["report", "--dir", str(read_only_section), "--results", str(out_root)])
    assert report.exit_code == 0, report.output
    assert (folder / "mhd-report" / "mhd-reacquire.txt").exists()


@pytest.mark.slow
def test_the_results_key_keeps_sections_of_the_same_name_apart(tmp_path, monkeypatch):
    one, two = copy_example(tmp_path / "a" / "s"), tmp_path / "b" / "s"
    two.mkdir(parents=True)
    monkeypatch.setenv("MHD_RESULTS", str(tmp_path / "results"))
    runner = CliRunner()
    assert runner.invoke(cli.main, ["submit", "--dir", str(one)]).exit_code == 2
    clash = runner.invoke(cli.main, ["submit", "--dir", str(two)])
    assert clash.exit_code == 1 and f"holds the results of {one.resolve()}" in clash.output


# ------------------------------------------------------------------- logs


@pytest.mark.slow
def test_output_into_a_log_is_plain_unwrapped_lines(tmp_path):
    section = copy_example(tmp_path / "section")
    deep = section / ("acquisition_2024_03_01_overview_grid_" * 2) / "row_03"
    deep.mkdir(parents=True)
    long_id = f"{deep.relative_to(section).as_posix()}/tile_r1_c2_out_of_focus.png"
    shutil.copy(section / "tile_r1_c2.png", section / long_id)
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)], terminal_width=80)
    assert out.exit_code == 2, out.output
    text = out.output
    assert "\x1b[" not in text  # no colour codes in a log
    assert any(line.startswith("OOF") and long_id in line for line in text.splitlines())  # one line, whole
    assert f"oof\t{long_id}\tdefocus: " in text  # the summary: verdict<TAB>tile<TAB>reason
    assert "exit status 2 (out-of-focus tiles)" in text  # never split over two lines


def test_summaries_name_an_errors_tile_once():
    recs = [
        TileRecord(
            "tile_r2_c1.png",
            verdict="error",
            reason="tile_r2_c1.png: cannot decode (truncated)",
            error="tile_r2_c1.png: cannot decode (truncated)",
        )
    ]
    assert "error\ttile_r2_c1.png\tcannot decode (truncated)" in summary_lines(recs, "s: summary", 1, 1.0)
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=True, color_system=None).print(summary_table(recs, "s: summary", 1, 1.0, width=100))
    assert buf.getvalue().count("tile_r2_c1.png") == 1 and "cannot decode (truncated)" in buf.getvalue()


def test_the_runs_counts_below_the_summary_are_one_line_on_a_wide_terminal():
    recs = [TileRecord("a.png", verdict="ok"), TileRecord("b.png", verdict="oof", reason="blur 2.1 px")]
    buf = io.StringIO()
    Console(file=buf, width=160, force_terminal=True, color_system=None).print(summary_table(recs, "s: summary", 2, 3.2, width=160))
    assert "2 tile(s) recorded in the section; this run: 2 scored in 3.2 s, 0.6 tiles/s\n" in buf.getvalue()  # was wrapped at the table


def test_a_narrow_terminal_shortens_tile_ids_from_the_left():
    long_id = "acquisition_2024_03_01/overview_grid/row_03/col_04/tile_r3_c4_final.tif"
    recs = [TileRecord(long_id, verdict="oof", reason="defocus: 60% below section median 30.0k/MP (limit 26%, n=40)")]
    buf = io.StringIO()
    Console(file=buf, width=80, force_terminal=True, color_system=None).print(summary_table(recs, "s: summary", 1, 1.0, width=80))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    shown = shorten_left(long_id, 39)
    assert shown.startswith("…") and shown.endswith("col_04/tile_r3_c4_final.tif")
    assert shown in text  # the end of the id (its file name) is always there


def test_client_config_is_compact_and_verbose_on_request():
    runner = CliRunner()
    short = runner.invoke(cli.main, ["config"], terminal_width=80)
    assert short.exit_code == 0
    lines = short.output.splitlines()
    assert len(lines) <= 37 and any(line.split()[:3] == ["oof_k", "3.0", "default"] for line in lines)  # one line a key
    long = runner.invoke(cli.main, ["config", "--verbose"]).output
    assert "relative rule: OOF below median - k * robust sigma of log density" in long


# ------------------------------------------------------------------ login


def test_a_login_that_cannot_be_prompted_is_one_error_before_any_tile(tmp_path, monkeypatch):
    section = copy_example(tmp_path / "section")
    monkeypatch.setenv("MHD_ENDPOINT", "4b116d3c-1703-4f8f-9f6f-39921e5864df")
    monkeypatch.setenv("MHD_FUNCTION", "9d1c0a5e-0000-4000-8000-000000000001")
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])  # stdin is not a terminal
    assert out.exit_code == 1, out.output
    assert "not logged in to Globus, and there is no terminal here to log in from: run 'client login'" in out.output
    assert "https://" not in out.output and "Traceback" not in out.output
    results = section / "mhd-results.jsonl"
    assert not results.exists() or results.read_bytes() == b""  # no tile recorded because of it
    assert "scored" not in out.output


# ------------------------------------------------------------ docs vs behaviour


def test_on_oof_help_names_every_variable():
    text = CliRunner().invoke(cli.main, ["submit", "--help"], terminal_width=200).output
    assert "MHD_TILE, MHD_VERDICT and MHD_REASON" in text


@pytest.mark.parametrize(
    ("rgba", "colour"), [((0.65, 0.0, 0.15, 1), "white"), ((0.0, 0.41, 0.22, 1), "white"), ((1.0, 1.0, 0.75, 1), "black")]
)
def test_focus_map_numbers_are_readable_on_their_cells(rgba, colour):
    assert text_colour(rgba) == colour


@pytest.mark.slow
def test_the_reacquire_list_is_what_the_readme_says(tmp_path):
    section = copy_example(tmp_path / "section")
    runner = CliRunner()
    assert runner.invoke(cli.main, ["submit", "--dir", str(section)]).exit_code == 2
    assert runner.invoke(cli.main, ["report", "--dir", str(section)]).exit_code == 0
    lines = (section / "mhd-report" / "mhd-reacquire.txt").read_text().splitlines()
    assert lines and all(len(line.split("\t")) == 2 for line in lines)  # tile, a tab, what to fix
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "the tile id, a tab, what to fix" in readme and "one tile id per line" not in readme


@pytest.mark.slow
def test_a_tile_name_with_control_characters_cannot_forge_output_lines(tmp_path):
    """A file named ``evil\\nOOF   other.png.png`` is one escaped field of one line everywhere the client prints it."""
    from mhd.client.console import printable

    section = copy_example(tmp_path / "section")
    evil = "evil\nOOF   other.png.png"
    (section / "tile_r1_c2.png").rename(section / evil)  # the example's out-of-focus tile
    (section / "tab\tname.png").write_bytes((section / "tile_r0_c0.png").read_bytes())
    (section / "notes[bold]x.txt").write_text("not a tile")  # skipped: its name is not markup either
    out = CliRunner().invoke(cli.main, ["submit", "--dir", str(section)])
    assert out.exit_code == 2, out.output
    lines = out.output.splitlines()
    assert not any(line.startswith("OOF   other.png") for line in lines), out.output  # no forged verdict line
    assert "oof\tevil\\nOOF   other.png.png\tdefocus" in out.output
    assert all(line.count("\t") in (0, 2) for line in lines)  # the summary's fields stay three
    assert {r["tile"] for r in records(section / "mhd-results.jsonl")} >= {evil, "tab\tname.png"}  # real names kept
    rep = CliRunner().invoke(cli.main, ["report", "--dir", str(section)])
    assert rep.exit_code in (0, 2), rep.output
    reacquire = (section / "mhd-report" / "mhd-reacquire.txt").read_text().splitlines()
    assert "evil\\nOOF   other.png.png\tdefocus" in [line[: len("evil\\nOOF   other.png.png\tdefocus")] for line in reacquire]
    assert "skipped (not an image): notes[bold]x.txt" in out.output
    assert printable("a\\b\x1b[31m\r") == "a\\\\b\\x1b[31m\\r" and printable("ordinary é 漢字.png") == "ordinary é 漢字.png"
    assert printable("gnp.\u202etxt") == "gnp.\\u202etxt" and printable("p\u2028q") == "p\\u2028q"  # bidi override, line separator


@pytest.mark.slow
def test_the_bench_commands_the_docs_name_exist():
    """Every ``python bench/<script>.py <command>`` that the README and docs/ name is a command of that script."""
    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    named = sorted(set(re.findall(r"python bench/([a-z_]+)\.py ([a-z]+)", text)))
    assert ("blur_validation", "sections") in named
    helps: dict[str, str] = {}
    for script, command in named:
        if script not in helps:
            out = subprocess.run([sys.executable, str(root / "bench" / f"{script}.py"), "--help"], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            helps[script] = out.stdout
        assert re.search(rf"\b{command}\b", helps[script]), f"bench/{script}.py has no command {command}"
