"""What the operator sees: live verdict lines, a progress bar and the summary table."""

from __future__ import annotations

import re
import time
import unicodedata
from collections import Counter
from typing import Iterable

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from mhd.contracts.record import TileRecord
from mhd.contracts.verdicts import Verdict, look

__all__ = ["Reporter", "printable", "shorten_left", "summary_lines", "summary_table", "verdict_line"]


#: Control characters (C0, DEL, C1), the backslash that escapes them, and any other non-ASCII character
#: (checked one by one: only line and paragraph separators and format characters are escaped).
_SUSPECT = re.compile(r"[\x00-\x1f\x7f-\uffff\\]|[\U00010000-\U0010ffff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
#: Unicode categories escaped: controls, format characters (bidi overrides such as U+202E), line and
#: paragraph separators (``str.splitlines`` splits on U+2028 and U+2029).
_ESCAPED_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")


def printable(text: str) -> str:
    r"""``text`` (a tile id, or a reason naming one) as one field of one line of output.

    A file name may hold a newline or a tab (``"evil\nOOF   other.png"``):
    printed as it is, it would forge a verdict line or a field of the
    ``verdict<TAB>tile<TAB>reason`` summary, and a bidi override can make it
    read as another name. Control and format characters and line separators
    become Python-style escapes (``\n``, ``\t``, ``\x1b``, ``\u202e``) and a
    backslash ``\\``, so every name still reads one way; other text (accented
    letters, any script) is unchanged. The results log keeps the real name
    (JSON escapes it).
    """
    if not _SUSPECT.search(text):
        return text
    return _SUSPECT.sub(_escape_char, text)


def _escape_char(m: re.Match) -> str:
    ch = m[0]
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch  # printable: an accented letter, a CJK name
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def verdict_line(rec: TileRecord) -> str:
    """One rich-markup line for a record: label, tile, density and reason."""
    v = rec.verdict
    label, style = look(v).label, look(v).style
    dens = f"{rec.density / 1000:7.1f}k/MP" if rec.density is not None else " " * 10
    reason = printable(rec.reason or "")
    late = f"  [dim](verdict {rec.latency_ms / 1e3:.2f} s after landing)[/]" if rec.latency_ms is not None else ""
    if v == "error":
        return f"[{style}]{label}[/] {_esc(reason)}{late}"
    extra = f"  {_esc(reason)}" if reason else ""
    return f"[{style}]{label}[/] {_esc(printable(rec.tile))}  {dens}{extra}{late}"


def _reason(rec: TileRecord) -> str:
    """The reason for a line that names the tile already: an error's leading ``TILE: `` left out (:func:`printable`)."""
    return printable((rec.reason or "").removeprefix(f"{rec.tile}: "))


def _esc(text: str) -> str:
    return text.replace("[", r"\[")


class _Rate(ProgressColumn):
    """Tiles per second since the bar started."""

    def render(self, task: Task) -> Text:
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        return Text(f"{rate:6.1f} tiles/s", style="cyan")


class Reporter:
    """Prints verdicts the moment they are recorded, under a live progress bar.

    Parameters
    ----------
    console : rich.console.Console
    total : int or None
        Tiles expected (``None`` for ``watch``: no bar, a line per tile).
    show_ok : bool
        Print a line for ``ok`` tiles too (problems are always printed).
    """

    def __init__(self, console: Console, total: int | None, show_ok: bool = False) -> None:
        self.console, self.show_ok = console, show_ok
        self.counts: Counter[str] = Counter()
        self.started = time.perf_counter()
        self.progress: Progress | None = None
        if total:
            self.progress = Progress(
                TextColumn("[bold]scoring"),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self.progress.add_task("tiles", total=total)

    def __enter__(self) -> "Reporter":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, records: list[TileRecord]) -> None:
        for rec in records:
            self.counts[rec.verdict] += 1
            if self.show_ok or rec.verdict != "ok":
                self.console.print(verdict_line(rec), highlight=False)

    def scored(self, n: int) -> None:
        """Advance the bar by ``n`` tiles scored (their verdicts may come later)."""
        if self.progress is not None:
            self.progress.advance(self._task, n)

    @property
    def elapsed(self) -> float:
        """Seconds since the reporter was made."""
        return time.perf_counter() - self.started


def shorten_left(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, shortened from the left (``…`` + its end).

    A tile id keeps its file name, the part that tells tiles apart.
    """
    if len(text) <= width:
        return text
    return "…" + text[len(text) - max(width - 1, 1) :]


def _caption(total: int, new: int, elapsed: float, failed: int) -> str:
    scored = new - failed
    rate = f", {scored / elapsed:.1f} tiles/s" if scored and elapsed > 0 else ""
    failures = f", {failed} failed" if failed else ""
    return f"{total} tile(s) recorded in the section; this run: {scored} scored{failures} in {elapsed:.1f} s{rate}"


#: Columns of the summary table other than the tile id and the reason, with borders and padding.
_FIXED_WIDTH = 25
#: Narrowest reason column before tile ids are shortened.
_MIN_REASON = 16


def summary_table(
    records: Iterable[TileRecord], title: str, new: int, elapsed: float, max_rows: int = 20, *, failed: int = 0, width: int | None = None
) -> Group:
    """The end-of-run table: counts per verdict, then the tiles that need attention; the run's counts below it.

    Parameters
    ----------
    records : iterable of dict
        Every record of the section (this run and earlier ones).
    title : str
    new : int
        Tiles recorded in this run.
    elapsed : float
        Seconds this run took.
    max_rows : int
        Problem tiles listed at most (the rest are counted).
    failed : int
        Of ``new``, the tiles recorded as errors (not counted as scored).
    width : int, optional
        The terminal's width: longer tile ids are shortened from the left
        (:func:`shorten_left`), never cut at the end.
    """
    recs = list(records)
    counts = Counter(r.verdict for r in recs)
    table = Table(title=_esc(printable(title)), title_justify="left")
    problems = [r for r in recs if r.verdict != "ok"]
    longest = max((len(printable(r.tile)) for r in problems[:max_rows]), default=4)
    tile_width = max(12, min(longest, (width or 10**6) - _FIXED_WIDTH - _MIN_REASON))
    table.add_column("verdict", no_wrap=True)
    table.add_column("tiles", justify="right", no_wrap=True)
    table.add_column("tile", no_wrap=True, min_width=min(longest, tile_width), max_width=tile_width)
    table.add_column("reason", overflow="fold")
    for v in Verdict:
        table.add_row(f"[{look(v).style}]{v}[/]", str(counts.get(v, 0)), "", "")
    if problems:
        table.add_section()
    for r in problems[:max_rows]:
        table.add_row(f"[{look(r.verdict).style}]{r.verdict}[/]", "", _esc(shorten_left(printable(r.tile), tile_width)), _esc(_reason(r)))
    if len(problems) > max_rows:
        table.add_row("", "", f"... and {len(problems) - max_rows} more", "see mhd-results.jsonl or client report")
    # the counts of the run on a line of their own: as a caption rich would wrap them to the table's width
    return Group(table, Text(_caption(len(recs), new, elapsed, failed)))


def summary_lines(records: Iterable[TileRecord], title: str, new: int, elapsed: float, max_rows: int = 20, *, failed: int = 0) -> list[str]:
    """The summary as plain lines (output that is not a terminal: logs, ``| tee``, journals).

    One line of counts, one line per tile that needs attention
    (``verdict<TAB>tile<TAB>reason``, so ``grep``/``cut`` work; an error's
    reason without the tile id it starts with), and the
    run's figures; nothing is wrapped or shortened.
    """
    recs = list(records)
    counts = Counter(r.verdict for r in recs)
    lines = [f"{printable(title)}: " + ", ".join(f"{v} {counts.get(v, 0)}" for v in Verdict)]
    problems = [r for r in recs if r.verdict != "ok"]
    lines += [f"{r.verdict}\t{printable(r.tile)}\t{_reason(r)}" for r in problems[:max_rows]]
    if len(problems) > max_rows:
        lines.append(f"... and {len(problems) - max_rows} more: see mhd-results.jsonl or client report")
    lines.append(_caption(len(recs), new, elapsed, failed))
    return lines
