"""The report's figures (``mhd.client.report``): what is drawn, and how."""

from __future__ import annotations

import math

import pytest

from conftest import fake, write_results
from mhd.client.report import section_verdicts, text_colour
from mhd.client.rule import Rule

pytestmark = pytest.mark.usefixtures("isolated_config")


@pytest.mark.parametrize(("rule", "drawn"), [({}, "OOF threshold (blur)"), ({"focus_measure": "count"}, "OOF threshold")])
def test_report_draws_the_threshold_of_the_measure_the_verdicts_use(tmp_path, monkeypatch, rule, drawn):
    """Under the blur rule (default) the density gets no threshold line (the verdicts do not use one); the blur panel does."""
    import matplotlib.axes

    from mhd.client.report import blur_threshold, make_report

    lines = []
    real = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", lambda ax, y=0, **kw: lines.append((kw.get("label"), y)) or real(ax, y, **kw))
    section = tmp_path / "s"
    write_results(
        section,
        [fake(f"tile_r0_c{c}.png", 1.4e4, blur=0.8 + 0.01 * c, blur_err=0.02) for c in range(9)]
        + [fake("tile_r1_c0.png", 1.3e4, "oof", blur=2.5)],
    )
    chosen = Rule(**rule)
    rep = make_report(section, chosen)
    thresholds = [(label, y) for label, y in lines if label and label.startswith("OOF threshold")]
    if drawn == "OOF threshold":
        assert thresholds == [(drawn, pytest.approx(math.exp(rep.baseline.threshold)))]
    else:
        judged, _ = section_verdicts(rep.records, chosen)
        assert thresholds == [(drawn, pytest.approx(blur_threshold(judged.values(), chosen)))]
        # ten tiles of little spread: the floor, blur_max in quadrature, widened while the section is small (x 1 + 8 / n)
        assert thresholds[0][1] == pytest.approx(math.sqrt(0.84**2 + chosen.blur_max**2 * (1 + 8 / 10)), abs=0.02)


@pytest.mark.usefixtures("two_workers")
@pytest.mark.parametrize(
    ("rgba", "colour"), [((0.65, 0.0, 0.15, 1), "white"), ((0.0, 0.41, 0.22, 1), "white"), ((1.0, 1.0, 0.75, 1), "black")]
)
def test_focus_map_numbers_are_readable_on_their_cells(rgba, colour):
    assert text_colour(rgba) == colour
