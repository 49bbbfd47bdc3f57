"""Numbers of the verdict rule that the end-to-end tests only meet on friendly inputs.

The example sections have square 4 x 4 grids on tiles whose sides divide by 4,
and no tile denser than the calibration's in-focus line; these pin the rule
itself where those would not notice a change (found by ``bench/mutation.py``).
"""

from __future__ import annotations

import math

import pytest

from mhd.client.calibration import Calibration, rule_from_config
from mhd.client.judge import focus_map
from mhd.client.rule import Rule
from mhd.contracts.record import TileRecord


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


def test_a_tile_denser_than_the_in_focus_line_is_estimated_at_zero_defocus():
    cal = Calibration(intercept=math.log(2e4), slope=-0.8, r=-0.99, n=9, units="um", max_defocus=1.0)
    assert cal.defocus(math.log(3e4)) == 0.0  # never a negative |defocus|
    assert cal.defocus(math.log(2e4) - 1.6) == pytest.approx(2.0)
    assert cal.log_threshold == pytest.approx(math.log(2e4) - 0.8)


# ------------------------------------------------- one definition of the rule


def test_the_configuration_keys_of_the_rule_are_its_fields():
    from mhd.client import config as config_mod
    from mhd.client.rule import thresholds

    fields = thresholds()
    assert [f.name for f in fields] == [
        "oof_k",
        "oof_min_drop",
        "warmup",
        "focus_measure",
        "blur_max",
        "blur_k",
        "astigmatism_share",
        "partial_blur",
        "partial_drop",
        "empty_cnr",
        "astigmatism_max",
    ]
    for f in fields:
        key = config_mod.KEYS[f.name]
        assert (key.default, key.help) == (f.default, f.metadata["help"]) == (getattr(Rule(), f.name), f.metadata["help"])


def test_the_rule_is_built_by_keyword_from_the_configuration(tmp_path, monkeypatch):
    from mhd.client import config as config_mod
    from mhd.client.rule import thresholds

    with pytest.raises(TypeError):
        Rule(3.0)  # keyword only: no silent swap of thresholds
    monkeypatch.setenv("MHD_CONFIG", str(tmp_path / "config.json"))
    values = {
        "oof_k": "2.5",
        "oof_min_drop": "0.4",
        "warmup": "3",
        "focus_measure": "COUNT",
        "blur_max": "1.5",
        "blur_k": "2.5",
        "astigmatism_share": "0.3",
        "partial_blur": "2",
        "partial_drop": "0.9",
        "empty_cnr": "4",
        "astigmatism_max": "0.3",
    }
    for key, value in values.items():
        monkeypatch.setenv(f"MHD_{key.upper()}", value)
    rule = rule_from_config(config_mod.load(), use_calibration=False)
    expected = {
        "oof_k": 2.5,
        "oof_min_drop": 0.4,
        "warmup": 3,
        "focus_measure": "count",
        "blur_max": 1.5,
        "blur_k": 2.5,
        "astigmatism_share": 0.3,
        "partial_blur": 2.0,
        "partial_drop": 0.9,
        "empty_cnr": 4.0,
        "astigmatism_max": 0.3,
    }
    assert {f.name: getattr(rule, f.name) for f in thresholds()} == expected
    assert type(rule.warmup) is int and rule.calibration is None


@pytest.mark.parametrize(
    "given, match",
    [
        (dict(oof_k=-1.0), "oof_k.*>= 0"),
        (dict(blur_max=math.nan), "blur_max"),
        (dict(warmup="many"), "warmup"),
        (dict(focus_measure="sharpness"), "focus_measure.*one of blur, count"),
    ],
)
def test_a_threshold_outside_its_limits_is_refused(given, match):
    with pytest.raises(ValueError, match=match):
        Rule(**given)


def test_a_configured_threshold_outside_its_limits_names_the_key_and_source(tmp_path, monkeypatch):
    from mhd.client import config as config_mod

    monkeypatch.setenv("MHD_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setenv("MHD_EMPTY_CNR", "-3")
    with pytest.raises(ValueError, match=r"empty_cnr from \$MHD_EMPTY_CNR: invalid value '-3' \(must be a number >= 0\)"):
        config_mod.load()


def test_the_blur_reason_states_what_the_tile_adds_the_section_median_and_the_limit():
    from mhd.client.judge import BlurPoint, BlurReference, SectionBlur

    ref = BlurReference(median=0.83**2, spread=0.01, error=0.02, delta=0j, delta_spread=complex(0.05, 0.05), n=7)
    judged = SectionBlur.of(BlurPoint(3.26**2, 0.02, None), ref, Rule())
    limit = math.sqrt(Rule().blur_max ** 2 * (1 + 8 / 7))  # the floor, widened for a section of 7 tiles
    assert judged.oof and judged.defocus_reason() == (
        f"blurrier than the section: {math.sqrt(3.26**2 - 0.83**2):.2f} px added in quadrature to the section's 0.83 px "
        f"(limit {limit:.2f} px, n=7)"
    )
