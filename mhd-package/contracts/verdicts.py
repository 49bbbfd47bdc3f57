"""The verdicts a tile can get, the kinds of out-of-focus, and how each looks.

A record's ``verdict`` and ``kind`` are plain strings on the wire and in the
results log (``"oof"``, ``"astigmatism"``); :class:`Verdict` and :class:`Kind`
name them in code, and :data:`LOOKS` says in one table how the console, the
report's figures and its montage show each, so a new kind needs one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["LOOKS", "Kind", "Look", "Verdict", "exit_status", "look"]


class Verdict(str, Enum):
    """A tile's verdict (the value is what records hold), in the order summaries list them."""

    OK = "ok"
    OOF = "oof"
    EMPTY = "empty"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


class Kind(str, Enum):
    """What kind of out-of-focus an ``oof`` verdict is."""

    DEFOCUS = "defocus"
    ASTIGMATISM = "astigmatism"
    PARTIAL = "partial"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Look:
    """How a verdict (or an out-of-focus kind) is shown.

    Attributes
    ----------
    label : str
        Console label, 5 characters wide so lines align.
    style : str
        Rich style of the label.
    colour : str
        Matplotlib colour in the report's figures.
    marker : str
        Matplotlib marker in ``density.png``.
    mark : str
        Letter drawn on the tile in ``montage.png`` ("" for none).
    """

    label: str
    style: str
    colour: str
    marker: str
    mark: str


_OOF = Look("OOF  ", "bold white on red", "tab:red", "o", "X")

#: The look of every verdict and every kind.
LOOKS: dict[Verdict | Kind, Look] = {
    Verdict.OK: Look("ok   ", "green", "tab:green", "o", ""),
    Verdict.OOF: _OOF,
    Verdict.EMPTY: Look("empty", "yellow", "tab:olive", "o", "o"),
    Verdict.ERROR: Look("ERROR", "bold magenta", "tab:purple", "o", "!"),
    Kind.DEFOCUS: _OOF,
    Kind.ASTIGMATISM: Look("OOF  ", "bold white on red", "tab:red", "^", "A"),
    Kind.PARTIAL: Look("OOF  ", "bold white on red", "tab:red", "s", "P"),
}


def look(verdict: str, kind: str | None = None) -> Look:
    """The look of a record: its kind's for an ``oof`` verdict with a kind, else its verdict's.

    A kind this version does not know (a record written by a newer one) looks
    like a plain ``oof``.

    Raises
    ------
    ValueError
        For a verdict that is not a :class:`Verdict`.
    """
    v = Verdict(verdict)
    if v is Verdict.OOF and kind in Kind._value2member_map_:
        return LOOKS[Kind(kind)]
    return LOOKS[v]


def exit_status(counts: dict[str, int]) -> int:
    """Exit status of a section from its verdict counts: 1 if any tile errored, else 2 if any is out of focus, else 0.

    Errors take precedence: an errored tile's focus is unknown, and it must
    be looked at before the section counts as done.
    """
    if counts.get(Verdict.ERROR):
        return 1
    if counts.get(Verdict.OOF):
        return 2
    return 0
