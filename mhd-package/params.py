"""The detector's parameters: one definition of each default and limit.

Read by the detector (:func:`mhd.functions.detect` and ``detect_batch``: their
defaults and validation), the worker (:func:`mhd.functions.worker.scoring.check_params`:
what a task may ask for) and the client (the ``--n-bin``, ``--min-t``,
``--max-t`` and ``--threshold`` options of ``client``, and their help). Standard
library only, so that the command line builds its options without loading
NumPy or SciPy.

Limits
------
One set of limits holds for the detector, the worker and the command line alike, each for a reason:

* ``n_bin`` <= 64: bounds a task's work, one inverse transform per level and block, for a hostile or
  mistaken task. The detector could represent 127 levels (the level index is packed into 7 bits of each
  response, ``mhd.functions._tags.MAX_LEVELS``); a test checks that 64 stays within that.
* ``min_t`` and ``max_t`` in [0.1, 64] px, with ``min_t < max_t``: a Gaussian narrower than a tenth of a
  pixel does not change a sampled image, and the blocks' overlap grows with ``max_t``.
* ``block_size`` in [64, 8192] px, ``grid`` cells in [1, 64], ``threshold`` in [0, 1000], ``noise_k`` and
  ``noise_margin`` in [0, 100]: bounds on a task's memory and work.
* ``tol`` in [0, 1], ``saturation`` in [0, 49] percent at each end: what the quantities can mean.

The defaults of ``noise_k`` and ``noise_margin`` were chosen by measurement (docs/validation.md, "The
feature count").

>>> from mhd.params import DEFAULTS, validate
>>> validate({"n_bin": 8, "grid": [3, 5]})
{'n_bin': 8, 'grid': (3, 5)}
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["ASTIGMATISM_THRESHOLD", "DEFAULTS", "PARAMS", "POLARITIES", "Param", "cli_params", "validate"]

#: Feature polarities the detector counts: minima ("dark"), maxima ("bright") of the DoG, or both.
POLARITIES = ("dark", "bright", "both")

#: Astigmatism strength (0..1) from which a tile is astigmatic: the detector's recommended cut
#: (:data:`mhd.functions.ASTIGMATISM_THRESHOLD`) and the default of the verdict rule's ``astigmatism_max``.
ASTIGMATISM_THRESHOLD = 0.2


@dataclass(frozen=True)
class Param:
    """One detector parameter.

    Attributes
    ----------
    name : str
        Keyword of :func:`mhd.functions.detect` and key of a task's ``params``.
    kind : {"int", "float", "choice", "cells"}
        ``cells``: two integers (rows, cols), each within ``lo`` .. ``hi``.
    default : Any
    help : str
        One line, without the default or the limits.
    unit : str
        ``"px"``, ``"%"`` or ``""`` (normalised units, counts).
    lo, hi : float or None
        Inclusive limits of a number (of each cell for ``cells``).
    choices : tuple of str
        The values of a ``choice``.
    cli : bool
        Whether ``client`` has an option for it (``--n-bin`` for ``n_bin``).
    """

    name: str
    kind: str
    default: Any
    help: str
    unit: str = ""
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    cli: bool = False

    @property
    def option(self) -> str:
        """The command-line option: ``--n-bin`` for ``n_bin``."""
        return "--" + self.name.replace("_", "-")

    def limits(self) -> str:
        """The allowed values in words: ``"an integer in [2, 64]"``."""
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        if self.kind == "cells":
            return f"two integers (rows, cols), each in [{self.lo:g}, {self.hi:g}]"
        kind = "an integer" if self.kind == "int" else "a number"
        return f"{kind} in [{self.lo:g}, {self.hi:g}]"

    def check(self, value: Any) -> Any:
        """``value`` in its canonical type (int, float, str or a tuple of two ints).

        Raises
        ------
        ValueError
            Naming the parameter, its limits and the value.
        """
        if self.kind == "choice":
            if value not in self.choices:
                raise self._error(value)
            return value
        if self.kind == "cells":
            if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(self._in_range(v, integer=True) for v in value):
                raise self._error(value)
            return int(value[0]), int(value[1])
        if not self._in_range(value, integer=self.kind == "int"):
            raise self._error(value)
        return int(value) if self.kind == "int" else float(value)

    def _in_range(self, v: Any, integer: bool) -> bool:
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or self.lo is None or self.hi is None:
            return False
        if not isinstance(v, numbers.Integral) and not math.isfinite(v):  # an int of any size compares exactly
            return False
        value: Any = v  # a real number: int, float or a NumPy scalar
        return bool(self.lo <= value <= self.hi and (not integer or int(value) == value))

    def _error(self, value: Any) -> ValueError:
        unit = f" ({self.unit})" if self.unit else ""
        if isinstance(value, int) and value.bit_length() > 192:  # repr() itself refuses ints of over 4300 digits
            shown = f"an integer of {value.bit_length()} bits"
        else:
            shown = repr(value)
        if len(shown) > 60:  # a hostile value is not echoed whole
            shown = shown[:57] + "..."
        return ValueError(f"{self.name} must be {self.limits()}{unit}, got {shown}")


#: Every detector parameter, in the order ``detect`` documents them.
PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("n_bin", "int", 16, "DoG levels (scales) from min_t to max_t", lo=2, hi=64, cli=True),
        Param("min_t", "float", 1.0, "smallest Gaussian scale t", "px", lo=0.1, hi=64, cli=True),
        Param("max_t", "float", 8.0, "largest Gaussian scale t (above min_t)", "px", lo=0.1, hi=64, cli=True),
        Param("threshold", "float", 0.05, "response threshold of a feature (normalised units)", lo=0, hi=1000, cli=True),
        Param(
            "noise_k",
            "float",
            3.5,
            "a level's threshold is at least this many standard deviations of its response to the tile's noise",
            lo=0,
            hi=100,
        ),
        Param("noise_margin", "float", 2.0, "... and at least threshold plus this many", lo=0, hi=100),
        Param("polarity", "choice", "both", "features counted: dark, bright or both", choices=POLARITIES),
        Param("grid", "cells", (4, 4), "(rows, cols) of the feature-count grid over the tile", lo=1, hi=64),
        Param("block_size", "int", 4096, "side of the blocks a larger image is processed in", "px", lo=64, hi=8192),
        Param("tol", "float", 1e-3, "spectral tolerance of the decimated coarse levels (0: every level at full resolution)", lo=0, hi=1),
        Param("saturation", "float", 0.175, "pixels saturated at each end when normalising", "%", lo=0, hi=49),
    )
}

#: Default of every parameter, by name (derived from :data:`PARAMS`; also :data:`mhd.functions.DEFAULTS`).
DEFAULTS: dict[str, Any] = {name: p.default for name, p in PARAMS.items()}


def cli_params() -> list[Param]:
    """The parameters that ``client`` has options for, in order."""
    return [p for p in PARAMS.values() if p.cli]


def validate(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check detector parameters against :data:`PARAMS`.

    Parameters
    ----------
    params : mapping
        Any of :data:`PARAMS` (the others keep their defaults).

    Returns
    -------
    dict
        The given parameters only, in canonical types (``grid`` a tuple).

    Raises
    ------
    ValueError
        For an unknown name, a value out of its limits, or ``min_t >= max_t``;
        the message names the parameter.
    """
    unknown = sorted(str(k) for k in params if k not in PARAMS)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(PARAMS)}")
    checked = {k: PARAMS[k].check(v) for k, v in params.items()}
    lo, hi = checked.get("min_t", DEFAULTS["min_t"]), checked.get("max_t", DEFAULTS["max_t"])
    if lo >= hi:
        raise ValueError(f"parameters must satisfy min_t < max_t (px), got min_t={lo:g}, max_t={hi:g}")
    return checked
