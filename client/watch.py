"""``client watch``: score tiles as the microscope writes them.

The folder is polled (no extra dependency, works on network file systems).
A tile is taken once it is completely written:

- names that writers use while writing (``.tile.png``, ``tile.png.part``,
  ``*.tmp``) are ignored until renamed into place;
- its size and modification time are unchanged since the previous poll, or
  it was last modified at least ``settle`` seconds ago;
- and its container is whole (:func:`mhd.contracts.formats.is_complete`), judged from its
  structure without decoding a pixel: the worker decodes it, once.

A file another program still has open where that keeps it from being read
(the acquisition software writing it, on Windows) is not complete yet, for as
long as that lasts. A tile that stays incomplete (or empty) for ``give_up`` seconds is taken
anyway, so it gets an ``error`` verdict naming it instead of being silently
ignored; ``idle_exit`` waits for it.

A tile already recorded (or handed out by this watch) is taken again when its
file changes: a different size or modification time than the version scored
(re-imaged under the same name, written in place or renamed over the old
file). It then lands like a new tile (the same checks), and its new record
replaces the old one. Records written before the file's size and mtime were
recorded are kept as they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console

from mhd.contracts.formats import is_complete

from .config import Config
from .console import Reporter
from .discover import Tile, discover
from .interrupt import ignored_note
from .live import SectionPage
from .options import RunOptions
from .pipeline import Pipeline
from .portable import held_by_another
from .session import Outcome, RunSession, rule_line

__all__ = ["Landing", "watch_section"]

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    first_bad: float | None = None
    first: float = 0.0  # when any version of the file was first seen (epoch seconds)


@dataclass
class Landing:
    """Tracks files in a folder until each is completely written.

    Parameters
    ----------
    section : Path
    done : dict of str to (int or None, int or None)
        Tile ids already recorded or handed out -> the (size, mtime_ns) of
        the file version scored. Such a tile is handed out again only once
        its file differs in a value that is known (re-imaged under the same
        name); (None, None): never again. A set of ids means the latter.
    settle : float
        A file unmodified for this many seconds counts as complete without a
        second look.
    give_up : float
        Seconds a stable but incomplete (or empty) file waits before it is
        handed out anyway (to be reported as an error).
    complete : callable
        ``complete(path) -> bool``: is the file's container whole (default :func:`mhd.contracts.formats.is_complete`).

    Attributes
    ----------
    changed_at : float
        ``time.monotonic()`` when :meth:`poll` last saw a tile file appear or
        change, or one being written under a partial name (0.0: never): a
        file still being written is activity too.
    """

    section: Path
    done: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    settle: float = 1.0
    give_up: float = 10.0
    complete: Callable[[Path], bool] = lambda p: is_complete(p)
    changed_at: float = 0.0
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _partials: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        """Tile files seen but not handed out yet (still being written, or waiting out ``give_up``)."""
        return len(self._seen)

    def __post_init__(self) -> None:
        if not isinstance(self.done, dict):
            self.done = dict.fromkeys(self.done, (None, None))

    def poll(self) -> list[tuple[Tile, float]]:
        """Tiles that became complete since the last call, in acquisition order.

        Returns
        -------
        list of (Tile, float)
            Each tile and when it landed (epoch seconds): its mtime, or when this watch first saw the file where
            that is later (a copy that kept an old mtime).
        """
        ready = []
        now = time.time()
        found = discover(self.section)
        self._note_partials(found.ignored)
        present = {t.id for t in found.tiles}
        for gone in [k for k in self._seen if k not in present]:  # removed or renamed away while pending
            del self._seen[gone]
        for tile in found.tiles:
            size, mtime_ns = tile.size, tile.mtime_ns
            if tile.id in self.done and not _differs(self.done[tile.id], size, mtime_ns):
                self._seen.pop(tile.id, None)  # back to the version scored (cp -p, rsync -t): nothing pending
                continue
            if self._complete(tile, size, mtime_ns, now):
                self.done[tile.id] = (size, mtime_ns)
                seen = self._seen.pop(tile.id)
                # landed: its last write, or when it was first seen where that is later (a copy that kept an old
                # modification time, cp -p or rsync -t, or a tile already there when the watch started)
                ready.append((Tile(tile.id, tile.path, size, mtime_ns), max(mtime_ns / 1e9, seen.first)))
        return ready

    def _note_partials(self, names: list[str]) -> None:
        """A file being written under a partial name (``.x.png``, ``x.png.part``) that appears or grows is activity too."""
        now = {}
        for name in names:
            try:
                st = (self.section / name).stat()
            except OSError:
                continue
            now[name] = (st.st_size, st.st_mtime_ns)
        if any(self._partials.get(name) != version for name, version in now.items()):
            self.changed_at = time.monotonic()
        self._partials = now

    def _complete(self, tile: Tile, size: int, mtime_ns: int, now: float) -> bool:
        prev = self._seen.get(tile.id)
        unchanged = prev is not None and (prev.size, prev.mtime_ns) == (size, mtime_ns)
        if not unchanged:
            self._seen[tile.id] = _Seen(size, mtime_ns, first=prev.first if prev is not None else now)
            self.changed_at = time.monotonic()
        if not (unchanged or now - mtime_ns / 1e9 >= self.settle):
            return False
        if size > 0 and self.complete(tile.path):
            return True
        seen = self._seen[tile.id]
        if _held_open(tile.path):  # the acquisition software is still writing it (Windows): wait, however long
            seen.first_bad = None
            return False
        seen.first_bad = seen.first_bad or now
        return now - seen.first_bad >= self.give_up


def _held_open(path: Path) -> bool:
    """Whether another program has ``path`` open so that it cannot be read (a Windows sharing violation)."""
    try:
        with open(path, "rb"):
            return False
    except OSError as exc:
        return held_by_another(exc)


def _differs(version: tuple[int | None, int | None], size: int, mtime_ns: int) -> bool:
    """Whether a file of ``size`` and ``mtime_ns`` is not ``version`` (values not known do not count)."""
    known_size, known_mtime = version
    return (known_size is not None and size != known_size) or (known_mtime is not None and mtime_ns != known_mtime)


def watch_section(section: Path, cfg: Config, console: Console, options: RunOptions) -> Outcome:
    """Follow ``section`` until Ctrl-C (or ``options.idle_exit`` seconds without a new or changing tile file, once
    every tile file seen has been scored; ``options.poll`` and ``options.give_up`` pace the looks).

    Tiles already recorded are not scored again unless their file changes
    (re-imaged under the same name: scored again once it settles, the new
    record replacing the old). Each verdict is recorded
    (fsync) and printed as it arrives; ``latency_ms`` in each record is the
    time from the tile's last write to its verdict. ``results_dir`` holds
    the results log (``options.results_dir``, default: the section).

    Ctrl-C stops following: the tasks that finish within ``drain_timeout``
    seconds are recorded, the others are left for the next run. The run is
    a :class:`~mhd.client.session.RunSession` (as ``submit``'s) fed tiles as
    they land.

    Returns
    -------
    Outcome
        ``interrupted`` is False: Ctrl-C is how a watch normally ends.

    Raises
    ------
    KeyboardInterrupt
        Ctrl-C before following started (nothing recorded).
    """
    run = RunSession(section, cfg, console, options)
    poll = options.poll
    with run:
        transport = run.use_transport(None, cfg["batch"] or 1)  # tiles not known yet: auto prefers what carries any size
        done = {t: (r.file_size, r.file_mtime_ns) for t, r in run.results.records.items() if r.verdict != "error"}
        landing = Landing(section, done, settle=max(poll, 0.5), give_up=options.give_up)
        console.print(
            f"[bold]watching {section}[/] ({len(run.results.records)} tiles already recorded; executor "
            f"{run.kind}, transport {transport.name}); Ctrl-C to stop"
        )
        console.print(rule_line(options.rule), highlight=False)
        note = ignored_note()
        if note:
            console.print(f"[yellow]{note}[/]", highlight=False)
        reporter = Reporter(console, None, show_ok=True)
        settings = {
            "executor": f"{run.kind} ({run.workers} workers)" if run.workers else run.kind,
            "transport": transport.name,
            "detector parameters": ", ".join(f"{k}={v}" for k, v in sorted((options.params or {}).items())) or "the detector's defaults",
        }
        page = SectionPage(section, options.results_dir or section, options.rule, settings, options.serve).start()
        try:

            def news(pending: int) -> None:
                page.update(sum(reporter.counts.values()), pending)

            run.drive(lambda pipe: _follow(pipe, landing, poll, options.idle_exit, run.stop, news), reporter, what="stopping")
        finally:
            found = discover(section)
            unscored = sum(t.id not in run.results.records for t in found.tiles)
            console.print(f"writing the section's page ({page.folder / 'index.html'}) ...", highlight=False)
            page.close(unscored)
    return run.outcome(reporter, found, interrupted=False)


#: Longest single wait of the watch loop (seconds): how soon it sees Ctrl-C.
_TICK = 0.25


def _follow(
    pipe: Pipeline,
    landing: Landing,
    poll: float,
    idle_exit: float | None,
    stop: Callable[[], bool] = lambda: False,
    news: Callable[[int], None] = lambda pending: None,
) -> None:
    """Look at the folder every ``poll`` seconds and score what landed;
    raises KeyboardInterrupt once ``stop()`` (checked every ``_TICK`` s). ``news(pending)`` is told, each turn, the
    tiles seen that have no verdict yet (for :meth:`SectionPage.update`)."""
    last_new = time.monotonic()
    next_look = last_new
    while True:
        if stop():
            raise KeyboardInterrupt
        news(len(pipe.landed) + landing.pending)
        now = time.monotonic()
        if now >= next_look:
            next_look = now + poll
            ready = landing.poll()
            if ready:
                last_new = time.monotonic()
                pipe.landed.update((t.id, landed) for t, landed in ready)
                pipe.feed([t for t, _ in ready])
        wait = max(0.05, min(next_look - time.monotonic(), _TICK))
        if pipe.busy:
            pipe.pump(wait)
        else:
            idle = time.monotonic() - max(last_new, landing.changed_at)
            if idle_exit is not None and idle >= idle_exit and not landing.pending:
                pipe.finish()
                return
            _sleep(wait, stop)


def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep ``seconds`` in short steps, returning early once ``stop()``."""
    end = time.monotonic() + seconds
    while not stop() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, _TICK))
