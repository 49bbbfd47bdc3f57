"""Calibrations: a through-focus law, its fit, and its file.

``client calibrate`` fits one of two laws to a through-focus series and
stores it (JSON, :meth:`Calibration.save`); a run then judges each tile by
its estimated |defocus| against ``max_defocus`` (:mod:`mhd.client.judge`).

* **blur** (default): the in-focus blur and the defocused probe's widening
  add in quadrature, ``blur**2 = a + b defocus**2`` (px). It holds across
  doses, so one calibration serves fast and slow scans.
* **count**: the paper's law, ``log(density) = a + b |defocus|``; it holds
  for one dose (the count also falls with noise).

A law holds only for the detector parameters it was fitted with, so a
calibration records them (:func:`fitted_params`) and a run with others is
refused (:meth:`Calibration.mismatch`).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mhd.params import DEFAULTS

from .rule import FOCUS_MEASURES, Rule, rule_summary

__all__ = [
    "DENSITY_FLOOR",
    "Calibration",
    "Fit",
    "fit",
    "fit_blur",
    "fitted_params",
    "rule_from_config",
    "rule_summary",
    "threshold_density",
]

#: Densities are floored at this many features per megapixel before the log.
DENSITY_FLOOR = 1.0
#: Detector parameters that change neither a tile's count nor its blur (how it is split into blocks, the count grid).
LAYOUT_PARAMS = ("block_size", "grid")


def fitted_params(params: dict | None) -> dict:
    """Every detector parameter that shapes the count and the blur, as a run with explicit ``params`` uses them.

    What a calibration records: defaults change between versions (``threshold`` 0.10 -> 0.05), and a law fitted
    under one set of parameters does not hold under another.
    """
    return {k: v for k, v in {**DEFAULTS, **(params or {})}.items() if k not in LAYOUT_PARAMS}


@dataclass(frozen=True)
class Calibration:
    """A through-focus law fitted by ``client calibrate``.

    ``measure == "blur"`` (default of ``client calibrate``):
    ``blur**2 = intercept + slope * defocus**2`` (blur in pixels: the
    in-focus blur and the probe's widening add in quadrature).
    ``measure == "count"`` (the paper's law, and files written before the blur
    existed): ``log(density) = intercept + slope * |defocus|``.

    Attributes
    ----------
    intercept : float
        Blur: in-focus ``blur**2`` (px^2). Count: ``log`` features per megapixel in focus.
    slope : float
        Blur: ``blur**2`` per unit ``defocus**2`` (positive). Count: change of
        ``log density`` per unit |defocus| (negative).
    r : float
        Pearson correlation of the fit (of ``blur**2`` with ``defocus**2``, or of
        ``log density`` with ``|defocus|``).
    n : int
        Images fitted.
    units : str
        Defocus units of the series (e.g. ``"um"``).
    max_defocus : float
        Largest acceptable |defocus| (``units``).
    params : dict
        Detector parameters the series was scored with (:func:`fitted_params`; files written by
        earlier versions hold only those given on the command line).
    source : str
        The series folder.
    measure : str
        ``"blur"`` or ``"count"``: the law (above).
    name : str
        The name given by ``client calibrate --name`` (the microscope and imaging setting it holds for); empty for a
        file written with ``--out`` only, or by an earlier version.
    fitted : str
        When it was fitted: ISO 8601 date and time with the UTC offset (e.g. ``2026-12-07T14:03:22+01:00``); empty
        in files written by earlier versions.
    """

    intercept: float
    slope: float
    r: float
    n: int
    units: str
    max_defocus: float
    params: dict = field(default_factory=dict)
    source: str = ""
    measure: str = "count"
    name: str = ""
    fitted: str = ""

    @property
    def log_threshold(self) -> float:
        """Count: ``log`` density at ``max_defocus``."""
        return self.intercept + self.slope * self.max_defocus

    @property
    def blur_threshold(self) -> float:
        """Blur: the blur (px) at ``max_defocus``."""
        return math.sqrt(max(self.intercept + self.slope * self.max_defocus**2, 0.0))

    def defocus(self, value: float) -> float:
        """Estimated |defocus| (``units``, >= 0): of a ``log`` density (count), or of a blur in px (blur)."""
        if self.measure == "blur":
            return math.sqrt(max(value * value - self.intercept, 0.0) / self.slope)
        return max(0.0, (value - self.intercept) / self.slope)

    def mismatch(self, params: dict | None) -> list[str]:
        """The recorded parameters that a run with explicit ``params`` (the rest default) scores differently:
        ``"name=fitted (this run: value)"`` each; empty when the law holds for its tiles."""
        run = fitted_params(params)
        return [f"{k}={self.params[k]!r} (this run: {run[k]!r})" for k in run if k in self.params and self.params[k] != run[k]]

    def check(self, params: dict | None, where: str) -> str | None:
        """Whether this law holds for a run with explicit ``params``: a warning when it may not, None when it does.

        ``where`` names the calibration file in the messages.

        Raises
        ------
        ValueError
            When it was fitted with other detector parameters: its law does not hold for these tiles.
        """
        differ = self.mismatch(params)
        if differ:
            raise ValueError(
                f"{where} was fitted with other detector parameters: {', '.join(differ)}. Score with the same options, "
                "run 'client calibrate' again, or pass --relative"
            )
        unrecorded = self.unrecorded()
        if self.measure != "count" or not unrecorded:
            return None
        changed = " (the default threshold was 0.10, now 0.05)" if "threshold" in unrecorded else ""
        return (
            f"{where} does not record the detector parameters its count law was fitted with ({', '.join(unrecorded)}; "
            f"written by an earlier version): if they were other than this run's{changed}, run 'client calibrate' again"
        )

    def unrecorded(self) -> list[str]:
        """Parameters this calibration does not record (a file written before calibrations recorded them all)."""
        return [k for k in fitted_params(None) if k not in self.params]

    def save(self, path: str | Path) -> Path:
        """Write as JSON (folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Read a calibration written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file is not a calibration or its slope is not negative.
        """
        try:
            data = json.loads(Path(path).read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: not a calibration file (not JSON; client calibrate --name NAME writes one)") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a calibration file (a JSON {type(data).__name__}, not an object)")
        known = {f.name for f in fields(cls)}
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.default is MISSING and f.default_factory is MISSING)
        if set(data) - known or missing:
            what = f"unknown keys {sorted(set(data) - known)}" if set(data) - known else f"missing {missing}"
            raise ValueError(f"{path}: not a calibration file ({what})")
        cal = cls(**{**data, "params": data.get("params") or {}})
        if not isinstance(cal.params, dict):
            raise ValueError(f"{path}: params must be an object of detector parameters, got {cal.params!r}")
        if cal.measure not in FOCUS_MEASURES:
            raise ValueError(f"{path}: measure must be one of {', '.join(FOCUS_MEASURES)}, got {cal.measure!r}")
        if cal.measure == "count" and not cal.slope < 0:
            raise ValueError(f"{path}: slope {cal.slope} must be negative (counts fall with defocus)")
        if cal.measure == "blur" and not cal.slope > 0:
            raise ValueError(f"{path}: slope {cal.slope} must be positive (blur grows with defocus)")
        return cal


def rule_from_config(cfg: Any, use_calibration: bool = True, section: str | Path | None = None, calibration: str | None = None) -> Rule:
    """The rule that judges ``section`` under a :class:`mhd.client.config.Config` (:func:`mhd.client.choice.choose`).

    ``calibration`` (NAME or FILE) chooses one, as ``--calibration`` does; else the rule recorded for ``section``
    (in its results folder, the configuration's ``results`` honoured) by ``submit`` or ``watch``; else the
    configuration's ``calibration`` key; else the relative rule. ``use_calibration=False`` is ``--relative``.
    ``max_defocus`` in the configuration overrides a calibration's own. :func:`mhd.client.rule.rule_summary` says
    which rule it is.

    Raises
    ------
    ValueError
        A bad name, a missing calibration, a file that is not one.
    """
    from .choice import choose
    from .results import results_folder

    folder = None
    if section is not None:
        path = Path(section).expanduser().resolve()
        folder = results_folder(path, cfg["results"], create=False)
    return choose(cfg, folder, calibration, relative=not use_calibration)[0]


#: Weakest correlation of a through-focus law that is stored (a series with no trend is not a calibration).
MIN_ABS_R = 0.5


@dataclass
class Fit:
    """A through-focus series and its line.

    Attributes
    ----------
    files : list of str
    defocus : (n,) float64 ndarray
        Signed defocus (series units).
    density : (n,) float64 ndarray
        Features per megapixel (count law) or blur in px (blur law): the fitted measure.
    calibration : Calibration
    """

    files: list[str]
    defocus: np.ndarray
    density: np.ndarray
    calibration: Calibration


def fit(
    files: list[str],
    defocus: np.ndarray,
    density: np.ndarray,
    *,
    units: str = "um",
    max_defocus: float | None = None,
    params: dict | None = None,
    source: str = "",
) -> Fit:
    """Least-squares line ``log(density) = a + b |defocus|``.

    Parameters
    ----------
    max_defocus : float, optional
        Largest acceptable |defocus|; default the smallest non-zero
        |defocus| of the series (the first step out of focus).

    Raises
    ------
    ValueError
        With fewer than 3 images, fewer than 2 distinct |defocus| values, or
        a slope that is not negative or a correlation weaker than
        :data:`MIN_ABS_R` (not a through-focus series).
    """
    ad = _distinct(defocus)
    y = np.log(np.maximum(density, DENSITY_FLOOR))
    slope, intercept, r = _line(ad, y)
    if not (slope < 0 and r <= -MIN_ABS_R):  # a flat series fits a slope of ~ -1e-15: no law
        raise ValueError(f"density does not fall with |defocus| (slope {slope:.3g} per {units}): is this a through-focus series?")
    limit = float(np.min(ad[ad > 0])) if max_defocus is None else float(max_defocus)
    cal = Calibration(intercept, slope, r, int(ad.size), units, limit, fitted_params(params), source)
    return Fit(files, defocus, density, cal)


def fit_blur(
    files: list[str],
    defocus: np.ndarray,
    blur: np.ndarray,
    *,
    units: str = "um",
    max_defocus: float | None = None,
    params: dict | None = None,
    source: str = "",
) -> Fit:
    """Least-squares line ``blur**2 = a + b defocus**2`` (blur in px).

    Parameters
    ----------
    max_defocus : float, optional
        Largest acceptable |defocus|; default the smallest non-zero |defocus|
        of the series (the first step out of focus).

    Raises
    ------
    ValueError
        With fewer than 3 images, fewer than 2 distinct |defocus| values, or
        a blur that does not grow with |defocus| clearly (``r`` under
        :data:`MIN_ABS_R`: not a through-focus series).
    """
    ad = _distinct(defocus)
    slope, intercept, r = _line(ad**2, np.asarray(blur, float) ** 2)
    if not (slope > 0 and r >= MIN_ABS_R):
        raise ValueError(f"blur does not grow with |defocus| (slope {slope:.3g} px^2 per {units}^2): is this a through-focus series?")
    limit = float(np.min(ad[ad > 0])) if max_defocus is None else float(max_defocus)
    cal = Calibration(intercept, slope, r, int(ad.size), units, limit, fitted_params(params), source, "blur")
    return Fit(files, defocus, np.asarray(blur, float), cal)


def _distinct(defocus: np.ndarray) -> np.ndarray:
    """``|defocus|``, when a line can be fitted through it: 3 images or more at 2 or more distinct values."""
    ad = np.abs(defocus)
    if ad.size < 3 or np.unique(ad).size < 2:
        raise ValueError(f"need at least 3 scored images at 2 or more distinct |defocus|, got {ad.size} at {np.unique(ad).size}")
    return ad


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares slope and intercept of ``y`` against ``x``, and their Pearson correlation (NaN for a constant)."""
    slope, intercept = np.polyfit(x, y, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = float(np.corrcoef(x, y)[0, 1])
    return float(slope), float(intercept), r


def threshold_density(cal: Calibration) -> float:
    """Density (features per megapixel) below which a tile is out of focus."""
    return math.exp(cal.log_threshold)
