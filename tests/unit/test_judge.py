"""The verdict rule (``mhd.client.judge``): the relative rule and its warm-up, empty and partial tiles, the blur
rule and the kinds of out-of-focus tile (defocus, astigmatism, partial), focus maps, calibrated estimates, and
verdicts independent of the order results arrive in.

Two helpers of ``conftest.py`` make the results judged: ``scored`` (a tile's cells as fractional feature counts)
and ``scored_cells`` (cell densities rounded to whole counts, with an astigmatism measure). The last part pins
numbers of the rule that the end-to-end tests only meet on friendly inputs: the example sections have square
4 x 4 grids on tiles whose sides divide by 4, and no tile denser than the calibration's in-focus line (found by
``bench/mutation.py``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest

from conftest import SIDE, scored, scored_cells
from mhd.client import config as config_mod
from mhd.client.calibration import Calibration, rule_from_config
from mhd.client.judge import ASTIGMATIC_ELONGATION, BlurPoint, Judge, SectionBlur, focus_map
from mhd.client.rule import Rule
from mhd.client.wording import describe
from mhd.contracts.record import TileRecord
from mhd.contracts.verdicts import exit_status
from mhd.functions import ASTIGMATISM_THRESHOLD

pytestmark = pytest.mark.usefixtures("isolated_config")


# ------------------------------------------------------- the relative rule, empty and partial tiles, the order of results


def test_relative_rule_waits_for_warmup_then_flags_low_tiles():
    judge = Judge(Rule(warmup=5))
    densities = [1.0e4, 1.05e4, 0.97e4, 1.02e4]
    for i, d in enumerate(densities):
        assert judge.add(scored(f"t{i}", d)) == []
    assert judge.pending == 4
    done = judge.add(scored("blurry", 0.4e4))
    assert [r.tile for r in done] == ["t0", "t1", "t2", "t3", "blurry"]
    assert [r.verdict for r in done] == ["ok"] * 4 + ["oof"]
    assert "below section median" in done[-1].reason
    slight = judge.add(scored("slight", 0.85e4))  # -15 %: inside the 26 % floor
    assert slight[0].verdict == "ok"
    base = judge.baseline()
    assert base.threshold == pytest.approx(base.median - 0.3)


def test_resumed_judge_needs_no_warmup():
    prior = [replace(scored(f"t{i}", 1e4), verdict="ok") for i in range(8)]
    judge = Judge(Rule(warmup=8), prior=prior)
    assert judge.add(scored("x", 0.3e4))[0].verdict == "oof"


def test_empty_needs_a_low_count_and_low_contrast():
    judge = Judge(Rule(warmup=1), prior=[replace(scored(f"t{i}", 1e4), verdict="ok") for i in range(8)])
    assert judge.add(scored("flat_but_dense", 1e4, contrast=1.0))[0].verdict == "ok"  # contrast matters only below the threshold
    resin = judge.add(scored("resin", 30, contrast=1.2))[0]
    assert resin.verdict == "empty" and "no tissue" in resin.reason and "1.2" in resin.reason
    blurry = judge.add(scored("blurry", 300, contrast=12.0))[0]
    assert blurry.verdict == "oof"
    unknown = judge.add(scored("old_worker", 300))[0]  # no contrast measured: counted as tissue
    assert unknown.verdict == "oof"
    assert judge.baseline().n == 11  # 8 + 4 judged, less the empty tile


def test_partial_tile_flags_blurred_cells_not_sparse_ones():
    """With ``blur_cells`` the partial rule reads the cells' blur against the tile's own cells: a cell of sparse
    content (a tenth of the features) but sharp is not partial; cells blurred beyond their uncertainty are, and so is
    one with no detail left."""
    sharp = [[1.0, 1.1, 0.9, 1.0] for _ in range(4)]
    err = [[0.2] * 4 for _ in range(4)]
    prior = [replace(scored(f"t{i}", 1e4, blur=0.6, blur_cells=sharp, blur_cells_err=err), verdict="ok") for i in range(8)]
    sparse = [[40.96] * 4 for _ in range(4)]
    sparse[3][1] = 4.0
    judge = Judge(Rule(warmup=1), prior=prior)
    assert judge.cell_limit() == pytest.approx(2.0**2)  # partial_blur 2 px: the sharp cells spread far less
    ok = judge.add(scored("particles", 1e4, grid=sparse, blur=0.6, blur_cells=sharp, blur_cells_err=err))[0]
    assert ok.verdict == "ok", ok.reason  # the density rule would call cell 3,1 low

    wrinkle = [row[:3] + [3.0] for row in sharp]
    wrinkle[0][3] = 2.3  # 2.3 px against the cells' 1.0: above the limit (2.24 px) by less than its uncertainty
    wrinkle[1][3] = None  # no detail above the noise
    out = judge.add(scored("wrinkle", 1e4, blur=0.7, blur_cells=wrinkle, blur_cells_err=err))[0]
    assert (out.verdict, out.kind, out.reason) == ("oof", "partial", "partial: cells 1,3 2,3 3,3 blurred")

    most = [row[:1] + [3.0] * 3 for row in sharp]  # 12 of 16 cells blurred: the focus, not a region
    whole = judge.add(scored("blurred_all_over", 1e4, blur=0.7, blur_cells=most, blur_cells_err=err))[0]
    assert (whole.verdict, whole.kind) == ("oof", "defocus")
    assert whole.reason == "defocus: 12 of 16 cells blurred (more than 2.00 px added in quadrature to the tile's median cell)"

    resumed = Judge(Rule(warmup=8), prior=[r.brief() for r in prior])  # a resumed run keeps records without their cells
    assert resumed.cell_limit() == pytest.approx(2.0**2)
    assert resumed.add(scored("wrinkle", 1e4, blur=0.7, blur_cells=wrinkle, blur_cells_err=err))[0].kind == "partial"


def test_the_cell_limit_follows_how_much_the_section_s_cells_vary():
    """A section whose fields mix smooth and detailed regions (particles on a support) spreads its cells' blur
    within each tile; a cell must then stand out further to be called blurred."""
    rng = np.random.default_rng(0)
    varied = [rng.uniform(0.5, 3.0, (4, 4)).round(2).tolist() for _ in range(10)]
    err = [[0.1] * 4 for _ in range(4)]
    judge = Judge(
        Rule(warmup=1),
        prior=[replace(scored(f"t{i}", 1e4, blur=1.2, blur_cells=c, blur_cells_err=err), verdict="ok") for i, c in enumerate(varied)],
    )
    assert judge.cell_limit() > 2.0**2


def test_a_cell_of_smooth_content_is_not_judged_for_focus():
    """The inside of a large particle on a real SEM scan: coarse shading far above the noise (not resin), a tenth
    of its neighbours' contrast and no detail, or a loose blur of several px. It is not called blurred; a cell
    behind a defocused probe keeps its coarse contrast and is."""
    sharp = [[1.0, 1.1, 0.9, 1.0] for _ in range(4)]
    err = [[0.2] * 4 for _ in range(4)]
    prior = [replace(scored(f"t{i}", 1e4, blur=0.6, blur_cells=sharp, blur_cells_err=err), verdict="ok") for i in range(8)]
    judge = Judge(Rule(warmup=1), prior=prior)
    cells = [row[:] for row in sharp]
    cells[2][0], cells[0][1] = None, 12.0
    contrast = [[400.0] * 4 for _ in range(4)]
    contrast[2][0], contrast[0][1] = 20.0, 60.0  # 0.05 and 0.15 of the median cell: smooth
    smooth = judge.add(scored("sphere", 1e4, blur=1.1, blur_cells=cells, blur_cells_err=err, contrast=300.0, contrast_cells=contrast))[0]
    assert smooth.verdict == "ok", smooth.reason
    contrast[0][1] = 100.0  # 0.25 of the median: judged
    out = judge.add(scored("wrinkle", 1e4, blur=1.1, blur_cells=cells, blur_cells_err=err, contrast=300.0, contrast_cells=contrast))[0]
    assert (out.verdict, out.kind, out.reason) == ("oof", "partial", "partial: cells 0,1 blurred")


def test_partial_tile_without_cell_blurs_flags_low_density_cells_unless_they_have_no_tissue():
    cell = 1e4 * (64 * 64) / 1e6
    grid = [[cell] * 4 for _ in range(4)]
    for r in range(4):
        grid[r][3] = cell * 0.1
    judge = Judge(Rule(warmup=1), prior=[replace(scored(f"t{i}", 1e4), verdict="ok") for i in range(8)])
    out = judge.add(scored("wrinkle", 0.9e4, grid=[row[:] for row in grid]))[0]
    assert out.verdict == "oof" and out.reason == "partial: cells 0,3 1,3 2,3 3,3 low"

    edge = [[10.0, 10.0, 10.0, 1.0]] * 4  # right column is resin: low contrast there
    judge = Judge(Rule(warmup=1), prior=[replace(scored(f"t{i}", 1e4), verdict="ok") for i in range(8)])
    assert judge.add(scored("edge_of_section", 0.9e4, grid=grid, contrast=10.0, contrast_cells=edge))[0].verdict == "ok"


def test_calibrated_rule_estimates_defocus(tmp_path):
    cal = Calibration(intercept=math.log(1e4), slope=-0.5, r=-0.99, n=9, units="um", max_defocus=1.0)
    path = cal.save(tmp_path / "c.json")
    cal = Calibration.load(path)
    judge = Judge(Rule(calibration=cal, warmup=100))
    ok = judge.add(scored("a", 0.8e4))[0]  # no warm-up with a calibration
    assert ok.verdict == "ok" and ok.defocus == pytest.approx(-math.log(0.8) / 0.5, abs=1e-3)
    bad = judge.add(scored("b", 1e4 * math.exp(-1.0)))[0]  # 2 um
    assert bad.verdict == "oof" and "est. defocus 2 um > 1 um" in bad.reason
    path.write_text(json.dumps({**json.loads(path.read_text()), "slope": 0.1}))
    with pytest.raises(ValueError, match="must be negative"):
        Calibration.load(path)


def test_errors_are_final_at_once_and_exit_status_precedence():
    judge = Judge(Rule(warmup=10))
    out = judge.add(TileRecord.failed("x", "cannot decode"))
    assert out[0].verdict == "error" and out[0].reason == "x: cannot decode"
    assert exit_status({"ok": 3}) == 0 and exit_status({"empty": 1, "ok": 1}) == 0
    assert exit_status({"oof": 1}) == 2 and exit_status({"oof": 1, "error": 1}) == 1


def test_verdicts_do_not_depend_on_the_order_results_arrive_in():
    """Each tile is judged against the tiles before it in the section's order, whatever order the results come
    back in (two workers finish tiles out of order): the same verdicts either way, in the section's order."""
    rng = np.random.default_rng(3)
    blurs = list(rng.normal(1.0, 0.08, 30))
    blurs[11], blurs[20] = 1.75, 1.32  # a 3 px disk, and one at the limit
    records = [scored(f"t{i:02d}", 1e4, blur=b, blur_err=0.03) for i, b in enumerate(blurs)]

    def run(order):
        judge = Judge(Rule())
        judge.expect(r.tile for r in records)
        out = [v for i in order for v in judge.add(records[i])] + judge.flush()
        return [(r.tile, r.verdict) for r in out]

    in_order = run(range(30))
    shuffled = list(range(30))
    for i in range(0, 28, 3):  # neighbours finish out of order
        shuffled[i], shuffled[i + 2] = shuffled[i + 2], shuffled[i]
    assert run(shuffled) == in_order
    assert [t for t, _ in in_order] == [r.tile for r in records]
    assert dict(in_order)["t11"] == "oof"


def test_a_tile_that_never_arrives_holds_the_others_only_so_long():
    """A record more than MAX_HELD tiles ahead of a missing one goes on without it; the end of a run releases
    everything held."""
    from mhd.client.judge import MAX_HELD

    judge = Judge(Rule(warmup=1))
    judge.expect(f"t{i:03d}" for i in range(MAX_HELD + 5))
    out = [v for i in range(1, MAX_HELD + 1) for v in judge.add(scored(f"t{i:03d}", 1e4, blur=1.0, blur_err=0.03))]
    assert out == [] and judge.pending == MAX_HELD
    out = judge.add(scored(f"t{MAX_HELD + 1:03d}", 1e4, blur=1.0, blur_err=0.03))
    assert [r.tile for r in out][:2] == ["t001", "t002"] and judge.pending == 0
    late = judge.add(scored("t000", 1e4, blur=1.0, blur_err=0.03))  # judged when it comes
    assert [r.tile for r in late] == ["t000"]
    judge.add(scored(f"t{MAX_HELD + 3:03d}", 1e4, blur=1.0, blur_err=0.03))
    assert [r.tile for r in judge.flush()] == [f"t{MAX_HELD + 3:03d}"]


def test_records_are_not_changed_in_place_by_the_judge():
    rec = TileRecord.from_json({"tile": "x", "features": 1, "density": 10.0, "blur": None, "error": None})
    with pytest.raises(FrozenInstanceError):
        rec.verdict = "ok"
    [judged] = Judge(Rule(calibration=None, warmup=1)).add(rec)
    assert judged is not rec and rec.verdict is None and judged.verdict == "oof"
    assert replace(judged, verdict=None, kind=None, reason=None, focus_map=None) == rec


# ------------------------------------------------------- kinds of out-of-focus tile


def warm_judge(rule=Rule(warmup=1), n=8, density=1e4):
    return Judge(rule, prior=[replace(scored_cells(f"t{i}", density), verdict="ok") for i in range(n)])


def test_astigmatism_at_the_threshold_is_oof_even_with_a_normal_count():
    judge = warm_judge()
    rec = judge.add(scored_cells("astig", 0.95e4, astigmatism=0.2, angle=34.4))[0]
    assert (rec.verdict, rec.kind) == ("oof", "astigmatism")
    assert rec.reason == "astigmatism: 0.20 >= 0.2, blur along 34 deg"
    assert describe(rec) == "astigmatism 34 deg"
    below = judge.add(scored_cells("round", 0.95e4, astigmatism=0.19, angle=34.4))[0]
    assert (below.verdict, below.kind, below.reason) == ("ok", None, "")


def axes(blur, major, minor, angle):
    """The blur fields of a record whose point spread function has these axes (px) and direction (degrees)."""
    return dict(blur=blur, blur_err=0.02, blur_major=major, blur_minor=minor, blur_angle=angle)


def test_anisotropy_the_section_shares_is_not_astigmatism_and_a_tile_s_own_is():
    """The blur rule compares each tile's blur along its two axes with the section's: an anisotropy every tile has
    (a slow scan that resolves its slow axis a little worse) is the section's, not a stigmator error; an elliptical
    probe's, which stands out of it, is."""
    rng = np.random.default_rng(0)
    section = [
        replace(scored_cells(f"t{i}", 1e4, **axes(b, np.sqrt(b * b + 0.15), np.sqrt(b * b - 0.15), 92.0 + rng.normal(0, 3))), verdict="ok")
        for i, b in enumerate(rng.normal(0.9, 0.03, 20))
    ]
    judge = Judge(Rule(warmup=1), prior=section)
    ref = judge.blur_reference()
    assert abs(ref.delta) == pytest.approx(0.15, abs=0.02) and ref.n == 20
    shared = judge.add(scored_cells("slow_scan", 1e4, **axes(0.92, 1.0, 0.84, 91.0)))[0]
    assert (shared.verdict, shared.kind) == ("ok", None)
    # a 3:1 elliptical disk of 3 px at 30 deg adds 2.25 and 0.25 px^2 along its axes to 0.81
    astig = judge.add(scored_cells("astig", 1e4, **axes(np.sqrt(0.81 + 1.25), np.sqrt(0.81 + 2.25), np.sqrt(0.81 + 0.25), 30.0)))[0]
    assert (astig.verdict, astig.kind) == ("oof", "astigmatism")
    said = re.match(r"astigmatism: blurrier along (\d+) deg \(adjust the stigmators\)", astig.reason)
    assert said and abs(int(said.group(1)) - 30) < 5, astig.reason  # the section's own anisotropy taken off
    assert describe(astig) == f"astigmatism {astig.blur_angle:.0f} deg"
    # a round 3 px disk adds 2.25 px^2 in every direction: defocus
    round_ = judge.add(
        scored_cells("round", 1e4, **axes(np.sqrt(0.81 + 2.25), np.sqrt(0.81 + 2.25 + 0.15), np.sqrt(0.81 + 2.25 - 0.15), 92.0))
    )[0]
    assert (round_.verdict, round_.kind) == ("oof", "defocus") and round_.reason.startswith("defocus: blurrier than the section")
    older = judge.add(scored_cells("older_worker", 1e4, astigmatism=0.26, angle=94.0))[0]  # no blur field: strength alone
    assert older.kind == "astigmatism"


def test_a_tile_defocused_and_elongated_by_its_own_anisotropy_is_astigmatism_and_a_weakly_anisotropic_one_defocus():
    """A tile defocused and astigmatic at once (in focus 0.81 px^2, plus 2 px^2 of round blur, plus an ellipse of
    1.25 px^2 mean): its own anisotropy is under a quarter of what it adds, yet at least
    :data:`ASTIGMATIC_ELONGATION` of its whole squared blur, so the operator is told to turn the stigmators and
    refocus, in the reason and in the re-acquire list. The same round blur with a weaker anisotropy, which still
    stands out of the section's, is defocus."""
    rng = np.random.default_rng(0)
    section = [
        replace(scored_cells(f"t{i}", 1e4, **axes(b, np.sqrt(b * b + 0.15), np.sqrt(b * b - 0.15), 92.0 + rng.normal(0, 3))), verdict="ok")
        for i, b in enumerate(rng.normal(0.9, 0.03, 20))
    ]
    judge = Judge(Rule(warmup=1), prior=section)
    mean2 = 0.81 + 2.0 + 1.25

    def tile(name: str, aniso: float) -> tuple[TileRecord, SectionBlur]:
        rec = judge.add(scored_cells(name, 1e4, **axes(np.sqrt(mean2), np.sqrt(mean2 + aniso), np.sqrt(mean2 - aniso), 30.0)))[0]
        return rec, SectionBlur.of(BlurPoint.of(rec), judge.blur_reference(), judge.rule)

    both, judged = tile("both", 0.75)
    assert judged.oof and judged.elongated and not judged.mostly_anisotropic
    # clear of both limits, not at their edge: the own anisotropy (the section's taken off) against 0.69 and 1.0 px^2
    assert ASTIGMATIC_ELONGATION * mean2 + 0.1 < judged.anisotropy < judge.rule.astigmatism_share * judged.excess - 0.1
    assert (both.verdict, both.kind) == ("oof", "astigmatism")
    said = re.match(
        r"astigmatism: blurrier along \d+ deg \(adjust the stigmators and refocus\): .*; its own anisotropy makes it (\d+)% longer",
        both.reason,
    )
    longer = np.sqrt((1 + judged.elongation) / (1 - judged.elongation)) - 1
    assert said and int(said.group(1)) == round(100 * longer), both.reason
    assert describe(both) == f"astigmatism {both.blur_angle:.0f} deg, refocus too"
    weak, judged = tile("weak", 0.3)
    assert judged.oof and 0 < judged.anisotropy < ASTIGMATIC_ELONGATION * mean2 - 0.1 and not judged.elongated
    assert (weak.verdict, weak.kind) == ("oof", "defocus"), weak.reason


def test_the_count_s_rule_diagnoses_astigmatism_from_the_blur_s_axes_too():
    """Under ``focus_measure = count`` the count decides focus, and astigmatism is read as under the blur rule: a scan's
    own anisotropy, which every tile of the section shares, is not astigmatism even at a strength above
    ``astigmatism_max``; an elliptical probe's is."""
    rng = np.random.default_rng(0)
    section = [
        replace(scored_cells(f"t{i}", 1e4, **axes(b, np.sqrt(b * b + 0.15), np.sqrt(b * b - 0.15), 92.0 + rng.normal(0, 3))), verdict="ok")
        for i, b in enumerate(rng.normal(0.9, 0.03, 20))
    ]
    judge = Judge(Rule(warmup=1, focus_measure="count"), prior=section)
    # blurrier along its worst direction than the blur limit (1.2 * sqrt(1.3) > 1.22 px): the strength alone called it
    scan = judge.add(scored_cells("slow_scan", 1e4, astigmatism=0.3, angle=91.0, **axes(1.2, np.sqrt(1.59), np.sqrt(1.29), 91.0)))[0]
    assert (scan.verdict, scan.kind) == ("ok", None), scan.reason
    ellipse = axes(np.sqrt(0.81 + 1.25), np.sqrt(0.81 + 2.25), np.sqrt(0.81 + 0.25), 30.0)
    astig = judge.add(scored_cells("astig", 1e4, astigmatism=0.5, angle=30.0, **ellipse))[0]
    assert (astig.verdict, astig.kind) == ("oof", "astigmatism") and astig.reason.startswith("astigmatism: blurrier along")


def test_the_section_s_focus_is_its_sharp_quarter_and_a_drift_does_not_carry_it_along():
    """``blur_focus`` 0.25: the lower quartile of the squared blurs, the spread read around it; 0.5: the median and the
    smaller half-spread of the quartiles. Ten tiles at 1.0 px, then a focus drifting to 1.45 px over twenty: against
    the median the drift's end passes, against the lower quartile it is flagged."""
    blurs = list(1.0 + np.random.default_rng(2).normal(0, 0.02, 10)) + list(np.linspace(1.02, 1.45, 20))
    prior = [replace(scored_cells(f"t{i:02d}", 1e4, **axes(b, b, b, None)), verdict="ok") for i, b in enumerate(blurs)]
    sq = np.square(blurs)
    quarter, median = Judge(Rule(), prior=prior).blur_reference(), Judge(Rule(blur_focus=0.5), prior=prior).blur_reference()
    assert quarter.focus == pytest.approx(np.quantile(sq, 0.25)) and median.focus == pytest.approx(np.median(sq))
    q8, q25, q37 = np.quantile(sq, [0.125, 0.25, 0.375])  # z: -1.1503, -0.6745, -0.3186
    assert quarter.spread == pytest.approx(min((q25 - q8) / (1.1503494 - 0.6744898), (q37 - q25) / (0.6744898 - 0.3186394)))
    assert quarter.spread > 0
    q25, m, q75 = np.percentile(sq, [25, 50, 75])
    assert median.spread == pytest.approx(min(m - q25, q75 - m) / 0.6744897501960817)
    end = scored_cells("t99", 1e4, **axes(1.45, 1.45, 1.45, None))
    assert Judge(Rule(), prior=prior).add(end)[0].verdict == "oof"
    assert Judge(Rule(blur_focus=0.5), prior=prior).add(end)[0].verdict == "ok"


def test_the_section_s_focus_is_the_quantile_of_each_tile_s_worst_blur():
    """:meth:`BlurReference.of` takes every tile's worst blur at once; it is the same as :meth:`BlurReference.worst_of`
    tile by tile (round tiles, tiles with a shared anisotropy, tiles whose own stands out, tiles without axes)."""
    from mhd.client.judge import BlurPoint, BlurReference

    rng = np.random.default_rng(3)
    mean2 = rng.uniform(0.8, 2.0, 60)
    points = [BlurPoint(float(m), 0.05, complex(*rng.normal(0, 0.3, 2)) if i % 4 else None) for i, m in enumerate(mean2)]
    points += [BlurPoint(1.0, 0.05, 3 + 0j), BlurPoint(1.0, 0.05, -2j)]  # anisotropies that stand out
    ref = BlurReference.of(points, Rule())
    worst = [ref.worst_of(p, Rule()) for p in points]
    assert worst[-2] == pytest.approx(1.0 + 3.0, abs=0.4) and worst[-1] == pytest.approx(1.0 + 2.0, abs=0.4)
    assert ref.focus == pytest.approx(np.quantile(worst, 0.25))


def test_a_blurrier_tile_is_held_to_its_error_as_if_in_focus():
    """The error of ``blur**2`` is ``2 blur blur_err``: a tile twice as blurred as the section would widen its own limit
    by its blur. The limit takes the error the same ``blur_err`` would give at the section's focus."""
    from mhd.client.judge import BlurPoint, BlurReference, SectionBlur

    ref = BlurReference(focus=1.0, spread=0.01, error=0.1, delta=0j, delta_spread=complex(0.05, 0.05), n=100)
    rule = Rule()
    blurred = SectionBlur.of(BlurPoint(2.0**2, 2 * 2.0 * 0.3, None), ref, rule)
    assert blurred.limit == pytest.approx(ref.limit(2 * 1.0 * 0.3, rule)) and blurred.limit < ref.limit(2 * 2.0 * 0.3, rule)
    sharp = SectionBlur.of(BlurPoint(0.8**2, 2 * 0.8 * 0.3, None), ref, rule)  # a sharper tile keeps its own
    assert sharp.limit == pytest.approx(ref.limit(2 * 0.8 * 0.3, rule))


def test_the_limit_follows_the_section_s_spread_and_the_tile_s_own_error():
    """A homogeneous section flags subtler blur than a varied one; a tile measured less surely needs more."""

    def section(spread):
        rng = np.random.default_rng(1)
        return Judge(
            Rule(warmup=1),
            prior=[
                replace(scored_cells(f"t{i}", 1e4, **axes(b, b, b, None)), verdict="ok") for i, b in enumerate(rng.normal(1.0, spread, 40))
            ],
        )

    tight, loose = section(0.03).blur_reference(), section(0.4).blur_reference()
    rule = Rule()
    assert tight.limit(tight.error, rule) == pytest.approx(rule.blur_max**2 * (1 + 8 / 40))  # the floor
    assert loose.limit(loose.error, rule) > 1.5 * tight.limit(tight.error, rule)
    assert tight.limit(1.0, rule) > tight.limit(tight.error, rule)  # a noisier tile
    # 1.3 px against 1.0: 0.83 px added in quadrature: flagged in the tight section only
    tile = scored_cells("x", 1e4, **axes(1.3, 1.3, 1.3, None))
    assert section(0.03).add(tile)[0].verdict == "oof"
    assert section(0.4).add(tile)[0].verdict == "ok"


def test_astigmatism_takes_precedence_over_a_low_count_and_over_partial_cells():
    judge = warm_judge()
    low = judge.add(scored_cells("astig_low", 0.4e4, astigmatism=0.55, angle=120.0))[0]
    assert (low.verdict, low.kind) == ("oof", "astigmatism") and "blur along 120 deg" in low.reason
    cells = np.full((4, 4), 1.1e4)
    cells[:, 3] = 0.1e4
    part = judge.add(scored_cells("astig_part", 0.9e4, astigmatism=0.3, angle=5.0, cells=cells))[0]
    assert part.kind == "astigmatism"


def test_without_a_measure_the_count_decides_defocus_or_partial():
    judge = warm_judge()
    for value in (None, math.nan):  # tiles < ~300 px, or an older endpoint / NaN from a hand-made result
        rec = judge.add(scored_cells(f"low_{value}", 0.4e4, astigmatism=value))[0]
        assert (rec.verdict, rec.kind) == ("oof", "defocus") and rec.reason.startswith("defocus: ") and "below section median" in rec.reason
        assert describe(rec) == "defocus"
    cells = np.full((4, 4), 1.1e4)
    cells[:, 3] = 0.1e4
    part = judge.add(scored_cells("part", 0.9e4, astigmatism=0.05, cells=cells))[0]
    assert (part.verdict, part.kind, part.reason) == ("oof", "partial", "partial: cells 0,3 1,3 2,3 3,3 low")
    assert describe(part) == part.reason


def test_empty_ok_and_error_have_no_kind():
    judge = Judge(Rule(warmup=1), prior=[replace(scored_cells(f"t{i}", 1e4), verdict="ok") for i in range(8)])
    resin = judge.add(scored_cells("resin", 50, astigmatism=0.9, angle=10.0, contrast=1.0))[0]  # no tissue: nothing to stigmate
    assert (resin.verdict, resin.kind, resin.focus_map) == ("empty", None, None)
    ok = judge.add(scored_cells("fine", 1.02e4, astigmatism=0.0))[0]
    assert (ok.verdict, ok.kind) == ("ok", None)
    err = judge.add(TileRecord.failed("x", "cannot decode"))[0]
    assert (err.verdict, err.kind, err.focus_map) == ("error", None, None) and describe(err) == "error: cannot decode"


def test_astigmatism_max_is_a_config_key_defaulting_to_the_detector_threshold(monkeypatch):
    assert config_mod.KEYS["astigmatism_max"].default == ASTIGMATISM_THRESHOLD == Rule().astigmatism_max
    assert rule_from_config(config_mod.load()).astigmatism_max == ASTIGMATISM_THRESHOLD
    monkeypatch.setenv("MHD_ASTIGMATISM_MAX", "0.6")
    rule = rule_from_config(config_mod.load())
    assert rule.astigmatism_max == 0.6
    assert warm_judge(Rule(warmup=1, astigmatism_max=0.6)).add(scored_cells("a", 1e4, astigmatism=0.5, angle=3.0))[0].verdict == "ok"
    monkeypatch.setenv("MHD_ASTIGMATISM_MAX", "strong")
    with pytest.raises(ValueError, match="astigmatism_max"):
        config_mod.load()


def test_focus_map_is_cell_density_relative_to_the_baseline():
    cells = np.full((4, 4), 2e4)
    cells[1, 2] = 0.5e4
    rec = warm_judge(density=2e4).add(scored_cells("m", 1.9e4, cells=cells))[0]
    fmap = np.array(rec.focus_map)
    assert fmap.shape == (4, 4) and fmap[1, 2] == pytest.approx(0.25, abs=0.02)
    assert np.delete(fmap.ravel(), 6) == pytest.approx(1.0, abs=0.02)
    assert focus_map(TileRecord("x", grid=[[]], shape=[SIDE, SIDE]), 0.0) is None and focus_map(scored_cells("x", 1e4), math.nan) is None


def test_calibrated_kinds_and_map_relative_to_the_in_focus_density():
    cal = Calibration(intercept=math.log(1e4), slope=-0.5, r=-0.99, n=9, units="um", max_defocus=1.0)
    judge = Judge(Rule(calibration=cal))
    far = judge.add(scored_cells("far", 1e4 * math.exp(-1.0)))[0]  # 2 um
    assert far.kind == "defocus" and far.reason.startswith("defocus: est. defocus 2 um") and describe(far, "um") == "defocus, est. 2 um"
    assert np.array(far.focus_map) == pytest.approx(math.exp(-1.0), abs=0.01)
    assert judge.add(scored_cells("astig", 0.9e4, astigmatism=0.4, angle=90.0))[0].kind == "astigmatism"


# ------------------------------------------------------- numbers the friendly inputs do not reach


def test_focus_map_of_a_non_square_grid_on_an_odd_sized_tile():
    rec = TileRecord("t", grid=[[100, 50, 0], [10, 200, 7]], shape=[255, 301])  # 2 x 3 cells of 127.5 x 100.33 px
    centre = math.log(1e4)  # baseline: 10,000 features per megapixel
    cell_mp = (255 / 2) * (301 / 3) / 1e6
    expected = [[round(max(n / cell_mp, 1.0) / 1e4, 2) for n in row] for row in rec.grid]  # floored at 1 /MP
    assert focus_map(rec, centre) == expected
    assert expected[0][:2] == [0.78, 0.39]  # what the formula gives, written out
    assert (
        focus_map(TileRecord("t", grid=[[1]], shape=[10, 10]), math.nan) is None
        and focus_map(TileRecord("t", grid=[], shape=[8, 8]), 0.0) is None
    )


def test_the_blur_reason_states_what_the_tile_adds_the_section_focus_and_the_limit():
    from mhd.client.judge import BlurPoint, BlurReference, SectionBlur

    ref = BlurReference(focus=0.83**2, spread=0.01, error=0.02, delta=0j, delta_spread=complex(0.05, 0.05), n=7)
    judged = SectionBlur.of(BlurPoint(3.26**2, 0.02, None), ref, Rule())
    limit = math.sqrt(Rule().blur_max ** 2 * (1 + 8 / 7))  # the floor, widened for a section of 7 tiles
    assert judged.oof and judged.defocus_reason() == (
        f"blurrier than the section: {math.sqrt(3.26**2 - 0.83**2):.2f} px added in quadrature to the section's focus 0.83 px "
        f"(limit {limit:.2f} px, n=7)"
    )
