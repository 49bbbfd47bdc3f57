"""The report (``mhd.client.report``, ``figures``, ``thumbs``, ``page``): what is drawn and shown, and that every
output of it says the same of every tile."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from conftest import EXAMPLE, copy_example, fake, read_results, run, write_results
from mhd.client.calibration import Calibration
from mhd.client.figures import text_colour
from mhd.client.page import render_page, state_json
from mhd.client.report import blur_threshold, make_report, section_verdicts, view_section
from mhd.client.rule import Rule
from mhd.contracts.record import TileRecord

pytestmark = pytest.mark.usefixtures("isolated_config")


def _section(tmp_path, rows=None):
    section = tmp_path / "s"
    write_results(
        section,
        rows
        or [fake(f"tile_r0_c{c}.png", 1.4e4, blur=0.8 + 0.01 * c, blur_err=0.02) for c in range(9)]
        + [fake("tile_r1_c0.png", 1.3e4, "oof", blur=2.5, blur_err=0.02)],
    )
    return section


@pytest.mark.parametrize(
    ("rule", "drawn"), [({}, "limit (out of focus beyond)"), ({"focus_measure": "count"}, "limit (out of focus below)")]
)
def test_the_figures_draw_the_limit_of_the_measure_the_verdicts_use(tmp_path, monkeypatch, rule, drawn):
    """The blur rule: focus.png draws each tile's added blur and its limit (px), the count has no limit line; the
    count's rule: density.png draws the count's threshold."""
    import matplotlib.axes

    lines = []
    for name in ("axhline", "step"):
        real = getattr(matplotlib.axes.Axes, name)
        monkeypatch.setattr(
            matplotlib.axes.Axes,
            name,
            lambda ax, *a, _real=real, _name=name, **kw: lines.append((_name, kw.get("label"), a)) or _real(ax, *a, **kw),
        )
    chosen = Rule(**rule)
    rep = make_report(_section(tmp_path), chosen)
    limits = [(name, args) for name, label, args in lines if label == drawn]
    assert len(limits) == 1
    if rule:
        assert limits[0] == ("axhline", (pytest.approx(math.exp(rep.baseline.threshold)),))
    else:
        judged, _ = section_verdicts(rep.records, chosen)
        steps = np.asarray(limits[0][1][1])
        # ten tiles of little spread: the floor, blur_max in quadrature, widened while the section is small (x 1 + 8 / n)
        assert np.median(steps) == pytest.approx(chosen.blur_max * math.sqrt(1 + 8 / 10), abs=0.02)
        typical = math.sqrt(0.84**2 + float(np.median(steps)) ** 2)
        assert blur_threshold(judged.values(), chosen) == pytest.approx(typical, abs=0.02)


def test_the_measure_of_each_tile_is_what_decided_its_verdict(tmp_path):
    """The added blur of a tile flagged for defocus exceeds its limit; an ok tile's does not."""
    view = view_section("s", [TileRecord.from_json(r) for r in read_results(_section(tmp_path))], Rule())
    assert view.measure == "added blur" and view.units == "px"
    for s in view.tiles:
        e = s.explanation
        assert (e.value > e.limit) == (s.verdict == "oof"), s.rec.tile
    flagged = [s.rec.tile for s in view.flagged]
    assert flagged == ["tile_r1_c0.png"] and view.flagged[0].explanation.value == pytest.approx(math.sqrt(2.5**2 - 0.84**2), abs=0.03)


def _agree(section, rule):
    """Every output of a report says the same of every tile: the list, the CSV, the page's state, the figures."""
    from mhd.client import page

    states = []
    real = page.section_state
    page.section_state = lambda *a, **kw: states.append(real(*a, **kw)) or states[-1]
    try:
        rep = make_report(section, rule)
    finally:
        page.section_state = real
    log = {r["tile"]: r for r in read_results(section)}
    listed = [line.split("\t")[0] for line in rep.reacquire.read_text().splitlines()]
    rows = {r["tile"]: r for r in csv.DictReader(rep.csv.open())}
    state = states[0]
    assert [f["tile"] for f in state["flagged"]] == listed
    assert [t["tile"] for t in state["tiles"] if t["verdict"] in ("oof", "error")] == listed
    assert [t for t, r in rows.items() if r["shown_verdict"] in ("oof", "error")] == listed
    for t in state["tiles"]:
        assert t["recorded"] == log[t["tile"]]["verdict"] == rows[t["tile"]]["verdict"]
        if log[t["tile"]]["verdict"] in ("oof", "error") or rows[t["tile"]]["section_verdict"] == "oof":
            assert t["tile"] in listed
    assert sum(state["counts"].values()) == len(log) and state["counts"]["oof"] + state["counts"]["error"] == len(listed)
    index = rep.page.read_text()
    assert state_json(state)[:200] in index  # the page holds this state
    return rep, state


def test_list_csv_page_and_figures_agree_on_the_example_relative_and_calibrated(tmp_path):
    """The example section, judged by the relative rule and under a blur calibration that flags more tiles than
    were recorded: the list, the CSV, the page and the figure legends agree on every tile."""
    section = copy_example(tmp_path / "section_042")
    assert run("submit", "--dir", section).exit_code == 2
    rep, state = _agree(section, Rule())
    assert state["rule"].startswith("relative") and len(state["flagged"]) == 3
    assert all(f["image"].startswith("data:image/jpeg;base64,") and f["neighbour"] for f in state["flagged"])
    strict = Calibration(intercept=0.5, slope=1.0, r=0.99, n=9, units="um", max_defocus=0.1, measure="blur")
    rep, state = _agree(section, Rule(calibration=strict))
    recorded_oof = sum(r["verdict"] == "oof" for r in read_results(section))
    assert state["counts"]["oof"] > recorded_oof and state["rule"].startswith("calibrated")
    assert state["measure"]["name"] == "defocus" and state["measure"]["limit"] == pytest.approx(0.1)
    assert {f["name"] for f in state["figures"]} == {"focus.png", "montage.png", "density.png"} | (
        {"focus-maps.png"} if rep.focus_maps else set()
    )


def test_figure_legends_count_the_verdicts_the_list_shows(tmp_path, monkeypatch):
    """A tile recorded ok that the whole section finds out of focus is drawn as oof (it is on the list)."""
    import matplotlib.axes

    labels = []
    real = matplotlib.axes.Axes.scatter
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", lambda ax, *a, **kw: labels.append(kw.get("label")) or real(ax, *a, **kw))
    rows = [fake(f"tile_r0_c{c}.png", 1.4e4, blur=0.8 + 0.01 * c, blur_err=0.02) for c in range(9)]
    rows[0] = fake("tile_r0_c0.png", 1.4e4, "ok", blur=2.5, blur_err=0.02)  # recorded ok while it streamed
    rep = make_report(_section(tmp_path, rows), Rule())
    assert rep.reacquire.read_text().splitlines() == ["tile_r0_c0.png\tdefocus"]
    assert "oof: defocus (1)" in labels and "ok (8)" in labels


def test_thumbnails_outline_the_blurred_cells_and_read_no_file_outside_the_section(tmp_path):
    from PIL import Image

    from mhd.client.thumbs import thumbnails

    section = copy_example(tmp_path / "section_042")
    assert run("submit", "--dir", section).exit_code == 2
    outside = tmp_path / "secret.png"
    outside.write_bytes((section / "tile_r0_c0.png").read_bytes())
    (section / "tile_r2_c3.png").unlink()
    (section / "tile_r2_c3.png").symlink_to(outside)  # the partly defocused tile, now a link out of the section
    view = view_section(section.name, [TileRecord.from_json(r) for r in read_results(section)], Rule())
    pairs = thumbnails(section, view)
    assert set(pairs) == {"tile_r1_c2.png", "tile_r2_c3.png", "tile_r3_c1.png"}
    assert pairs["tile_r2_c3.png"].image is None and pairs["tile_r2_c3.png"].neighbour
    os.unlink(section / "tile_r2_c3.png")
    (section / "tile_r2_c3.png").write_bytes((EXAMPLE / "tile_r2_c3.png").read_bytes())
    pairs = thumbnails(section, view)
    import io

    partial = np.asarray(Image.open(io.BytesIO(pairs["tile_r2_c3.png"].image)).convert("RGB")).astype(int)
    plain = np.asarray(Image.open(io.BytesIO(pairs["tile_r1_c2.png"].image)).convert("RGB")).astype(int)
    red = lambda a: int(((a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)).sum())  # noqa: E731
    assert red(partial) > 200 and red(plain) < 20  # outlines on the partly defocused tile only: the other is blurred all over
    assert max(partial.shape[:2]) <= 320
    r, c = view.positions[pairs["tile_r1_c2.png"].neighbour]
    assert max(abs(r - 1), abs(c - 2)) == 1  # a neighbour in the montage


def test_the_page_shows_names_as_text_and_its_state_cannot_close_its_script():
    state = {"section": "a<b", "tiles": [{"tile": "</script><script>alert(1)</script>"}]}
    text = render_page(state)
    assert "</script><script>alert(1)" not in text and "<title>mhd: a&lt;b</title>" in text
    assert json.loads(state_json(state)) == state


def test_a_section_without_positions_gets_no_montage_but_a_page(tmp_path):
    section = _section(tmp_path, [fake(f"img{i}.png", 1e4, blur=0.8, blur_err=0.02) for i in range(5)])
    rep = make_report(section, Rule())
    assert rep.montage is None and rep.page.stat().st_size > 1000 and rep.reacquire.read_text() == ""


@pytest.mark.parametrize(
    ("rgba", "colour"), [((0.65, 0.0, 0.15, 1), "white"), ((0.0, 0.41, 0.22, 1), "white"), ((1.0, 1.0, 0.75, 1), "black")]
)
def test_numbers_on_cells_are_readable(rgba, colour):
    assert text_colour(rgba) == colour
