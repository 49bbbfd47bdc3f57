"""``client submit``: score a whole section, resuming where an earlier run stopped.

Which tiles are scored: every tile of the section without a record in
``mhd-results.jsonl``, plus those whose record is an ``error`` (retried: the
cause may have been the network), plus those whose file changed since it was
scored (its size or modification time differ from the record's
``file_size``/``file_mtime_ns``: re-imaged under the same name, e.g. from
``mhd-reacquire.txt``); the new record replaces the old one. Records written
before those fields existed are kept. ``rescore=True`` starts a fresh log (the
old one is kept as a ``.bak``) and scores everything.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from mhd.contracts.files import RESULTS_NAME
from mhd.contracts.formats import IMAGE_SUFFIXES
from mhd.contracts.record import TileRecord

from .config import Config
from .console import Reporter, printable, summary_lines, summary_table
from .discover import Discovery, Tile, discover
from .interrupt import EXIT_INTERRUPTED, ignored_note, stopped_by
from .options import RunOptions
from .rule import Rule
from .session import Outcome, RunSession, rule_line
from .transport import Transport

__all__ = ["auto_batch", "changed_tiles", "run_section", "section_summary", "todo_tiles"]

log = logging.getLogger(__name__)


def auto_batch(n_tiles: int, workers: int, kind: str) -> int:
    """Tiles per scoring task: enough tasks to keep every worker busy, at most 8 tiles each.

    The Globus executor uses 8 (fewer, larger requests against the service's
    rate limit).
    """
    if kind == "globus":
        return 8
    return max(1, min(8, n_tiles // (4 * max(workers, 1))))


def todo_tiles(found: Discovery, records: dict[str, TileRecord]) -> list[Tile]:
    """Tiles without a record, whose record is an error (retried), or whose file changed since it was scored."""
    return [t for t in found.tiles if (rec := records.get(t.id)) is None or rec.verdict == "error" or rec.changed(t.size, t.mtime_ns)]


def changed_tiles(records: dict[str, TileRecord], tiles: list[Tile]) -> list[Tile]:
    """Of ``tiles``, those recorded with a verdict whose file is not the version scored (size or mtime differ)."""
    return [t for t in tiles if (rec := records.get(t.id)) is not None and rec.verdict != "error" and rec.changed(t.size, t.mtime_ns)]


def run_section(section: Path, cfg: Config, console: Console, options: RunOptions) -> Outcome:
    """Score the tiles of ``section`` that need it; record and print verdicts.

    The run is a :class:`~mhd.client.session.RunSession` fed the whole list
    of tiles to score; ``options.rescore`` scores them all again.

    Ctrl-C (SIGINT, see :mod:`mhd.client.interrupt`; ``options.interrupt`` is the
    caller's handler, else one is installed here): before scoring starts it
    raises :class:`KeyboardInterrupt`; while scoring it stops submitting,
    records the tasks that finish within ``drain_timeout`` seconds, leaves
    the rest for the next run and returns an interrupted :class:`Outcome`.

    Returns
    -------
    Outcome

    Raises
    ------
    ValueError, NotADirectoryError, mhd.client.results.SectionLocked
        Configuration or usage problems (a folder without tiles among them),
        before anything is scored.
    KeyboardInterrupt
        Ctrl-C before scoring started (nothing recorded).
    """
    run = RunSession(section, cfg, console, options)
    found = discover(section)
    if not found.tiles:  # a mistyped or not yet written section is not "all ok"
        others = f"; {len(found.skipped) + len(found.ignored)} other file(s)" if found.skipped or found.ignored else ""
        raise ValueError(f"{section}: no tiles here ({', '.join(sorted(IMAGE_SUFFIXES))} files, in subfolders too){others}")
    with run:
        todo = todo_tiles(found, run.results.records)
        batch = cfg["batch"] or auto_batch(len(todo), run.workers, run.kind)
        transport = run.use_transport(todo, batch)
        changed = len(changed_tiles(run.results.records, todo))
        _header(console, section, found, len(run.results.records), len(todo), run.kind, run.workers, transport, options.rule, changed)
        with Reporter(console, len(todo), options.show_ok) as reporter:
            if todo:
                run.drive(lambda pipe: pipe.run(todo), reporter)
    return run.outcome(reporter, found, run.interrupted)


def _header(
    console: Console,
    section: Path,
    found: Discovery,
    done: int,
    todo: int,
    kind: str,
    workers: int,
    transport: Transport,
    rule: Rule,
    changed: int = 0,
) -> None:
    skipped = f", {len(found.skipped)} other file(s) skipped" if found.skipped else ""
    again = f" ({changed} changed since: scored again)" if changed else ""
    console.print(
        f"[bold]{_esc(printable(section.name))}[/]: {len(found.tiles)} tiles{skipped}; {done} already recorded{again}, {todo} to score"
    )
    for name in found.skipped[:5]:
        console.print(f"  [dim]skipped (not an image): {_esc(printable(name))}[/]")
    if len(found.skipped) > 5:
        console.print(f"  [dim]... and {len(found.skipped) - 5} more[/]")
    if found.ignored:
        names = ", ".join(printable(n) for n in found.ignored[:3]) + (", ..." if len(found.ignored) > 3 else "")
        console.print(f"  [dim]ignored {len(found.ignored)} hidden or partly written file(s) until renamed into place: {_esc(names)}[/]")
    where = f"local ({workers} worker{'s' if workers != 1 else ''})" if kind == "local" else "globus"
    console.print(f"executor {where}, transport {transport.name}", highlight=False)
    console.print(rule_line(rule), highlight=False)
    note = ignored_note()
    if note:
        console.print(f"[yellow]{note}[/]", highlight=False)


def _esc(text: str) -> str:
    return text.replace("[", r"\[")


def section_summary(console: Console, section: Path, outcome: Outcome) -> None:
    """Print the summary (a table on a terminal, plain lines otherwise) and where the results are."""
    title = f"{section.name}: summary"
    if console.is_terminal:
        console.print(
            summary_table(outcome.records.values(), title, outcome.new, outcome.elapsed, failed=outcome.new_failed, width=console.width)
        )
    else:
        for line in summary_lines(outcome.records.values(), title, outcome.new, outcome.elapsed, failed=outcome.new_failed):
            console.file.write(line + "\n")  # as is: rich would expand the tabs
    if outcome.found is not None:
        a = outcome.accounting()
        line = f"{a['found']} files found = {a['scored']} scored + {a['failed']} failed + {a['skipped']} skipped (not tiles)"
        line += f" + {a['unscored']} not scored yet" if a["unscored"] else ""
        line += f"; {a['gone']} earlier record(s) of tiles no longer in the folder" if a["gone"] else ""
        console.print(line, highlight=False)
    console.print(f"results: {outcome.results or section / RESULTS_NAME}", highlight=False)
    # a line of its own: after a long results path a terminal wrapped it mid-phrase
    console.print(f"exit status {outcome.exit_status} ({_meaning(outcome.exit_status)})", highlight=False, soft_wrap=True)


def _meaning(status: int) -> str:
    if status > 128:
        return stopped_by(status - 128)
    return {0: "all ok", 1: "some tiles failed", 2: "out-of-focus tiles", EXIT_INTERRUPTED: "interrupted"}[status]
