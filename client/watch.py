"""``client watch``: score tiles as the microscope writes them.

The folder is polled (no extra dependency, works on network file systems).
A tile is taken once it is completely written:

- names that writers use while writing (``.tile.png``, ``tile.png.part``,
  ``*.tmp``) are ignored until renamed into place;
- its size and modification time are unchanged since the previous poll, or
  it was last modified at least ``settle`` seconds ago;
- and it decodes (a truncated PNG or TIFF does not).

A tile that stays undecodable for ``give_up`` seconds is taken anyway, so it
gets an ``error`` verdict naming it instead of being silently ignored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console

from .config import Config
from .console import Reporter
from .discover import Tile, discover
from .interrupt import Interrupt
from .pipeline import OofHook, Pipeline
from .results import ResultsLog
from .score import load_image, tissue_probe
from .submit import (
    Outcome,
    _handling,
    backend_kind,
    check_backend,
    interrupted_stop,
    local_data_root,
    local_workers,
    make_transport,
    open_backend,
)
from .verdicts import Judge, Rule

__all__ = ["Landing", "watch_section"]

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    first_bad: float | None = None


@dataclass
class Landing:
    """Tracks files in a folder until each is completely written.

    Parameters
    ----------
    section : Path
    done : set of str
        Tile ids never to hand out again (already recorded).
    settle : float
        A file unmodified for this many seconds counts as complete without a
        second look.
    give_up : float
        Seconds a stable but undecodable file waits before it is handed out
        anyway (to be reported as an error).
    decodes : callable
        ``decodes(path) -> bool``.
    """

    section: Path
    done: set[str] = field(default_factory=set)
    settle: float = 1.0
    give_up: float = 10.0
    decodes: Callable[[Path], bool] = lambda p: _decodes(p)
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def poll(self) -> list[tuple[Tile, float]]:
        """Tiles that became complete since the last call, in acquisition order.

        Returns
        -------
        list of (Tile, float)
            Each tile and when it landed (its mtime, epoch seconds).
        """
        ready = []
        now = time.time()
        for tile in discover(self.section).tiles:
            if tile.id in self.done:
                continue
            try:
                st = tile.path.stat()
            except FileNotFoundError:
                continue
            if self._complete(tile, st.st_size, st.st_mtime_ns, now):
                self.done.add(tile.id)
                self._seen.pop(tile.id, None)
                ready.append((Tile(tile.id, tile.path, st.st_size), st.st_mtime_ns / 1e9))
        return ready

    def _complete(self, tile: Tile, size: int, mtime_ns: int, now: float) -> bool:
        prev = self._seen.get(tile.id)
        unchanged = prev is not None and (prev.size, prev.mtime_ns) == (size, mtime_ns)
        if not unchanged:
            self._seen[tile.id] = _Seen(size, mtime_ns)
        if size == 0 or not (unchanged or now - mtime_ns / 1e9 >= self.settle):
            return False
        if self.decodes(tile.path):
            return True
        seen = self._seen[tile.id]
        seen.first_bad = seen.first_bad or now
        return now - seen.first_bad >= self.give_up


def _decodes(path: Path) -> bool:
    try:
        load_image(path)
        return True
    except (OSError, ValueError):
        return False


def watch_section(
    section: Path,
    cfg: Config,
    console: Console,
    *,
    rule: Rule,
    params: dict | None = None,
    on_oof: str | None = None,
    poll: float = 0.25,
    give_up: float = 10.0,
    idle_exit: float | None = None,
    transfer_client: Callable | None = None,
    compute_client: Callable | None = None,
    results_dir: Path | None = None,
    interrupt: Interrupt | None = None,
) -> Outcome:
    """Follow ``section`` until Ctrl-C (or ``idle_exit`` seconds without a new tile).

    Tiles already recorded are not scored again. Each verdict is recorded
    (fsync) and printed as it arrives; ``latency_ms`` in each record is the
    time from the tile's last write to its verdict. ``results_dir`` holds
    the results log (default: the section).

    Ctrl-C stops following: the tasks that finish within ``drain_timeout``
    seconds are recorded, the others are left for the next run (see
    :func:`mhd.client.submit.run_section`).

    Returns
    -------
    Outcome
        ``interrupted`` is False: Ctrl-C is how a watch normally ends.

    Raises
    ------
    KeyboardInterrupt
        Ctrl-C before following started (nothing recorded).
    """
    check_backend(cfg, backend_kind(cfg))
    with _handling(interrupt) as stop, ResultsLog(results_dir or section) as results:
        kind = backend_kind(cfg)
        workers = local_workers(cfg) if kind == "local" else 0
        transport = make_transport(cfg, section, [], cfg["batch"] or 1, transfer_client, kind)
        landing = Landing(section, {t for t, r in results.records.items() if r.verdict != "error"}, settle=max(poll, 0.5), give_up=give_up)
        judge = Judge(rule, tissue_probe(section), prior=results.records.values())
        hook = OofHook(on_oof) if on_oof else None
        console.print(f"[bold]watching {section}[/] ({len(results.records)} tiles already recorded; executor {kind}, transport {transport.name}); Ctrl-C to stop")
        reporter = Reporter(console, None, show_ok=True)
        stopped = False
        with open_backend(cfg, kind, local_data_root(kind, transport), compute_client) as backend:
            pipe = Pipeline(backend, transport, judge, results, params, on_verdicts=reporter, on_scored=reporter.scored, on_oof=hook, max_inflight=max(4, 2 * workers), task_timeout=cfg["task_timeout"], stop=stop)
            stop.defer()
            try:
                _follow(pipe, landing, poll, idle_exit, stop)
            except KeyboardInterrupt:
                stopped = True
                interrupted_stop(pipe, backend, console, cfg["drain_timeout"], what="stopping")
        if hook is not None:
            hook.close(timeout=1.0 if stopped else 10.0)
        results.compact()
        return Outcome(dict(results.records), sum(reporter.counts.values()), reporter.elapsed, found=discover(section), new_failed=reporter.counts["error"], results=results.path)


#: Longest single wait of the watch loop (seconds): how soon it sees Ctrl-C.
_TICK = 0.25


def _follow(pipe: Pipeline, landing: Landing, poll: float, idle_exit: float | None, stop: Callable[[], bool] = lambda: False) -> None:
    """Look at the folder every ``poll`` seconds and score what landed;
    raises KeyboardInterrupt once ``stop()`` (checked every ``_TICK`` s)."""
    last_new = time.monotonic()
    next_look = last_new
    while True:
        if stop():
            raise KeyboardInterrupt
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
            if idle_exit is not None and time.monotonic() - last_new >= idle_exit:
                pipe.finish()
                return
            _sleep(wait, stop)


def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep ``seconds`` in short steps, returning early once ``stop()``."""
    end = time.monotonic() + seconds
    while not stop() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, _TICK))
