"""The verdict rule's thresholds: one definition of each default, limit and meaning.

:class:`Rule` is the definition: each threshold is a field whose metadata holds
its one-line help and its limits. The configuration (:data:`mhd.client.config.KEYS`,
shown by ``client config --verbose``) builds its keys from these fields, and
:func:`mhd.client.calibration.rule_from_config` builds the rule from the configuration
by keyword. What each threshold does is explained in :mod:`mhd.client.judge`.

Standard library only: the configuration is read by every command, which must
not load NumPy or SciPy for it.
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from mhd.params import ASTIGMATISM_THRESHOLD

if TYPE_CHECKING:
    from .calibration import Calibration

__all__ = ["FOCUS_MEASURES", "Rule", "parse_threshold", "rule_summary", "thresholds"]

#: Focus measures the relative rule can use.
FOCUS_MEASURES = ("blur", "count")


def _threshold(
    default: Any, help: str, *, lo: float | None = 0.0, hi: float | None = None, integer: bool = False, choices: tuple[str, ...] = ()
) -> Any:
    """A field of :class:`Rule` that is a configurable threshold (``lo``, ``hi``: inclusive limits)."""
    limits = {"lo": None, "hi": None} if choices else {"lo": lo, "hi": hi}
    return field(default=default, metadata={"help": help, **limits, "integer": integer, "choices": choices})


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Thresholds of the verdict rule (see :mod:`mhd.client.judge`), given by keyword.

    Every field but ``calibration``, ``calibration_path`` and ``origin`` is a threshold (:func:`thresholds`): a
    configuration key of the same name with the default, limits and help
    given here. A value outside its limits raises ``ValueError``.

    ``calibration`` is the through-focus law in force (None: the relative rule), ``calibration_path`` the file
    it was read from, and ``origin`` why this rule judges the section (``"--calibration"``, ``"as recorded for this
    section on 2026-12-07"``, ...; empty when not known): :func:`rule_summary` puts them into words.
    """

    oof_k: float = _threshold(3.0, "relative rule: OOF below median - k * robust sigma of log density")
    oof_min_drop: float = _threshold(0.3, "relative rule: ... and at least this far below it (natural log units)")
    warmup: int = _threshold(8, "relative rule: tiles scored before the first verdict", integer=True)
    focus_measure: str = _threshold(
        "blur", "relative rule's measure: 'blur' (px, dose-free) or 'count' (feature density)", choices=FOCUS_MEASURES
    )
    blur_focus: float = _threshold(
        0.25,
        "blur rule: the section's focus is this quantile of its tiles' blurs, 0.05-0.5 (0.5: the median; the lower "
        "quartile, 0.25, is not carried along by a slow focus drift)",
        lo=0.05,
        hi=0.5,
    )
    blur_max: float = _threshold(
        0.7, "blur rule: OOF only when a tile adds at least this blur to the section's focus (px, in quadrature) ..."
    )
    blur_k: float = _threshold(
        2.0, "... and this many robust standard deviations of the section's blurs (px^2; and of the tile's own error)"
    )
    astigmatism_share: float = _threshold(
        0.25,
        "blur rule: an OOF tile whose added blur is at least this share anisotropic (0..0.5) is astigmatic (stigmators); "
        "so is one its own anisotropy makes ~19 % longer one way",
    )
    partial_blur: float = _threshold(
        2.0,
        "grid cell adding at least this blur to its tile's median cell (px, in quadrature, beyond its error): partly defocused",
    )
    partial_drop: float = _threshold(
        0.7,
        "records without blur_cells (older workers): grid cell below the tile threshold by this much (log) flags a partly defocused tile",
    )
    empty_cnr: float = _threshold(3.0, "contrast-to-noise below which a low-count tile is 'empty' (no tissue)")
    astigmatism_max: float = _threshold(
        ASTIGMATISM_THRESHOLD,
        "under a calibration, and for records without the blur's axes: astigmatism strength (0..1) from which a tile is 'oof', "
        "kind astigmatism (turn the stigmators)",
    )
    calibration: Calibration | None = None
    calibration_path: str | None = None
    origin: str = ""

    def __post_init__(self) -> None:
        for f in thresholds():
            try:
                value = parse_threshold(f, getattr(self, f.name))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{f.name}: invalid value {getattr(self, f.name)!r} ({exc})") from None
            object.__setattr__(self, f.name, value)

    @property
    def measure(self) -> str:
        """The focus measure the verdicts use: the calibration's, else ``focus_measure``."""
        return self.calibration.measure if self.calibration is not None else self.focus_measure


def thresholds() -> list[Field]:
    """The fields of :class:`Rule` that are thresholds, in order."""
    return [f for f in fields(Rule) if "help" in f.metadata]


def parse_threshold(f: Field, value: Any) -> Any:
    """``value`` (a number, or text from a file or the environment) as threshold ``f``'s type.

    Raises
    ------
    ValueError
        When it does not parse or is outside the limits (the message says what is allowed).
    """
    choices = f.metadata["choices"]
    if choices:
        text = str(value).lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text
    integer, lo, hi = f.metadata["integer"], f.metadata["lo"], f.metadata["hi"]
    number = int(value) if integer else float(value)
    if not math.isfinite(number) or (lo is not None and number < lo) or (hi is not None and number > hi):
        within = f">= {lo:g}" if hi is None else f"between {lo:g} and {hi:g}"
        raise ValueError(f"must be {'an integer' if integer else 'a number'} {within}")
    return number


def rule_summary(rule: Rule) -> str:
    """The rule in force, in words, for a terminal, a log or a report: relative (its thresholds), or calibrated (the
    calibration's name and file, its measure, when and on which series it was fitted, its limit), then why it is
    in force (:attr:`Rule.origin`) after a semicolon.

    Examples: ``relative: a tile is out of focus when it adds at least 0.7 px (in quadrature) to the section's
    focus (the lower quartile of its blurs) ...``; ``calibrated 'zeiss-5kx' (/cfg/calibrations/zeiss-5kx.json): blur, fitted 2026-12-07 on
    /data/focus_series, out of focus beyond 1 um; --calibration``.
    """
    cal = rule.calibration
    why = f"; {rule.origin}" if rule.origin else ""
    if cal is None:
        return _relative_words(rule) + why
    name = cal.name
    where = f"'{name}' ({rule.calibration_path})" if name and rule.calibration_path else f"'{name}'" if name else ""
    where = where or (f"from {rule.calibration_path}" if rule.calibration_path else "(file not known)")
    fitted = cal.fitted
    when = f"fitted {fitted[:10]}" if fitted else "fitted (date not recorded)"
    series = f" on {cal.source}" if cal.source else ""
    return f"calibrated {where}: {cal.measure}, {when}{series}, out of focus beyond {cal.max_defocus:g} {cal.units}{why}"


def _relative_words(rule: Rule) -> str:
    """The relative rule's thresholds in words (the measure it judges by, and its warm-up)."""
    first = f"; first verdicts after {rule.warmup} tiles"
    if rule.focus_measure == "blur":
        return (
            f"relative: a tile is out of focus when it adds at least {rule.blur_max:g} px (in quadrature) to the section's focus"
            f" (the {_quantile_words(rule.blur_focus)} of its blurs) and {rule.blur_k:g} robust standard deviations{first}"
        )
    return (
        f"relative (count): a tile is out of focus when its feature density is {rule.oof_k:g} robust standard deviations, and at "
        f"least {rule.oof_min_drop:g} in natural log, below the section's median{first}"
    )


def _quantile_words(q: float) -> str:
    """``0.25`` -> ``"lower quartile"``, ``0.5`` -> ``"median"``, ``0.1`` -> ``"10% quantile"``."""
    return {0.5: "median", 0.25: "lower quartile"}.get(q, f"{q:.0%} quantile")
