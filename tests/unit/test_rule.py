"""One definition of the verdict rule's thresholds (``mhd.client.rule``): the configuration's keys are its fields,
it is built by keyword, and a threshold outside its limits is refused, naming the key and where it came from."""

from __future__ import annotations

import math

import pytest

from mhd.client.calibration import rule_from_config
from mhd.client.rule import Rule

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_the_configuration_keys_of_the_rule_are_its_fields():
    from mhd.client import config as config_mod
    from mhd.client.rule import thresholds

    fields = thresholds()
    assert [f.name for f in fields] == [
        "oof_k",
        "oof_min_drop",
        "warmup",
        "focus_measure",
        "blur_focus",
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
        "blur_focus": "0.5",
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
        "blur_focus": 0.5,
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


@pytest.mark.parametrize("value", ["0", "0.6", "1", "nan"])
def test_the_section_s_focus_is_a_quantile_of_its_sharp_half(value):
    """``blur_focus`` outside 0.05..0.5 is refused by name (above the median, the out-of-focus tiles would set it)."""
    from mhd.client.rule import parse_threshold, thresholds

    field = {f.name: f for f in thresholds()}["blur_focus"]
    with pytest.raises(ValueError, match="between 0.05 and 0.5"):
        parse_threshold(field, value)
    with pytest.raises(ValueError, match="blur_focus"):
        Rule(blur_focus=float(value))


def test_the_section_s_focus_may_be_any_quantile_from_0_05_to_the_median():
    assert Rule(blur_focus=0.05).blur_focus == 0.05 and Rule(blur_focus=0.5).blur_focus == 0.5
    with pytest.raises(ValueError, match="between 0.05 and 0.5"):
        Rule(blur_focus=0.049)
