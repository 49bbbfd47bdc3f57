"""What the client prints (``mhd.client.console``): summaries that name a tile once, the run's counts on one line,
tile ids shortened from the left on a narrow terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from mhd.client.console import shorten_left, summary_lines, summary_table
from mhd.contracts.record import TileRecord

pytestmark = pytest.mark.usefixtures("isolated_config", "two_workers")


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
