"""Verdicts in words: the reasons the judge gives and what a flagged tile asks of the operator."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mhd.contracts.record import TileRecord, finite

if TYPE_CHECKING:
    from .calibration import Calibration
    from .judge import Baseline

__all__ = ["REFOCUS_TOO", "STIGMATORS", "astigmatism_reason", "cell_limit_words", "describe", "low_reason"]

#: What an astigmatic tile's reason asks of the operator (:meth:`mhd.client.judge.SectionBlur.astigmatism_reason`):
#: turn the stigmators, and refocus too where round blur makes most of what the tile adds.
STIGMATORS = "adjust the stigmators"
REFOCUS_TOO = "adjust the stigmators and refocus"


def describe(rec: TileRecord, units: str = "") -> str:
    """What a flagged record asks of the operator, in a few words.

    Parameters
    ----------
    rec : TileRecord
        A judged record.
    units : str
        Units of its calibrated ``defocus`` estimate (e.g. ``"um"``) when the
        record does not carry them (``defocus_units``: records written before
        it existed).

    Returns
    -------
    str
        ``"astigmatism 34 deg"`` (the direction of strongest blur: ``blur_angle``, or
        ``astigmatism_angle`` in records without the blur's axes; ``"astigmatism 34 deg, refocus too"`` where
        the reason asks for both, :data:`REFOCUS_TOO`),
        ``"defocus"`` (``"defocus, est. 2.1 um"`` with a calibrated
        estimate), the reason of a ``partial`` tile
        (``"partial: cells 0,3 1,3 low"``), ``"error: cannot decode ..."`` (what went wrong), or the verdict.
    """
    kind = rec.kind
    if rec.verdict == "error":  # what went wrong, without the tile's name that the list already gives
        why = str(rec.error or rec.reason or "").removeprefix(f"{rec.tile}: ").strip()
        return f"error: {why}" if why else "error"
    if kind == "astigmatism":
        angle = finite(rec.blur_angle) if rec.blur_angle is not None else finite(rec.astigmatism_angle)
        said = "astigmatism" if angle is None else f"astigmatism {angle:.0f} deg"
        return f"{said}, refocus too" if f"({REFOCUS_TOO})" in (rec.reason or "") else said
    if kind == "defocus":
        est = finite(rec.defocus)
        return "defocus" if est is None else f"defocus, est. {est:.2g} {rec.defocus_units or units}".rstrip()
    if kind == "partial":
        return rec.reason or "partial"
    return str(rec.verdict)


def cell_limit_words(limit: float) -> str:
    return f"more than {math.sqrt(limit):.2f} px added in quadrature to the tile's median cell"


def astigmatism_reason(strength: float, angle: float | None, limit: float, worst: tuple[float, float] | None) -> str:
    where = "" if angle is None else f", blur along {angle:.0f} deg"
    gate = "" if worst is None else f" ({worst[0]:.2f} px > {worst[1]:.2f} px)"
    return f"astigmatism: {strength:.2f} >= {limit:g}{where}{gate}"


def low_reason(x: float, base: "Baseline", cal: "Calibration | None") -> str:
    if cal is not None:
        return f"est. defocus {cal.defocus(x):.2g} {cal.units} > {cal.max_defocus:g} {cal.units} (calibrated)"
    drop = 1 - math.exp(x - base.median)
    limit = 1 - math.exp(base.threshold - base.median)
    return f"{drop:.0%} below section median {_k(math.exp(base.median))}/MP (limit {limit:.0%}, n={base.n})"


def _k(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
