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
from .pipeline import OofHook, Pipeline
from .results import ResultsLog
from .score import load_image, tissue_probe
from .submit import DRAIN_SECONDS, Outcome, backend_kind, local_workers, make_transport, open_backend
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
) -> Outcome:
    """Follow ``section`` until Ctrl-C (or ``idle_exit`` seconds without a new tile).

    Tiles already recorded are not scored again. Each verdict is recorded
    (fsync) and printed as it arrives; ``latency_ms`` in each record is the
    time from the tile's last write to its verdict.

    Returns
    -------
    Outcome
        ``interrupted`` is False: Ctrl-C is how a watch normally ends.
    """
    with ResultsLog(section) as results:
        kind = backend_kind(cfg)
        workers = local_workers(cfg) if kind == "local" else 0
        transport = make_transport(cfg, section, [], cfg["batch"] or 1, transfer_client, kind)
        landing = Landing(section, {t for t, r in results.records.items() if r.get("verdict") != "error"}, settle=max(poll, 0.5), give_up=give_up)
        judge = Judge(rule, tissue_probe(section), prior=results.records.values())
        hook = OofHook(on_oof) if on_oof else None
        console.print(f"[bold]watching {section}[/] ({len(results.records)} tiles already recorded; backend {kind}, transport {transport.name}); Ctrl-C to stop")
        reporter = Reporter(console, None, show_ok=True)
        data_root = Path(cfg["shared_local"]) if transport.name == "shared" else None
        with open_backend(cfg, kind, data_root, compute_client) as backend:
            pipe = Pipeline(backend, transport, judge, results, params, on_verdicts=reporter, on_scored=reporter.scored, on_oof=hook, max_inflight=max(4, 2 * workers), task_timeout=cfg["task_timeout"])
            try:
                _follow(pipe, landing, poll, idle_exit)
            except KeyboardInterrupt:
                console.print(f"[bold]stopping[/]: recording the {pipe.inflight} task(s) in flight")
                pipe.drain(DRAIN_SECONDS)
        if hook is not None:
            hook.close()
        results.compact()
        return Outcome(dict(results.records), sum(reporter.counts.values()), reporter.elapsed, found=discover(section))


def _follow(pipe: Pipeline, landing: Landing, poll: float, idle_exit: float | None) -> None:
    last_new = time.monotonic()
    while True:
        ready = landing.poll()
        if ready:
            last_new = time.monotonic()
            pipe.landed.update((t.id, landed) for t, landed in ready)
            pipe.feed([t for t, _ in ready])
        if pipe.busy:
            pipe.pump(poll)
        else:
            if idle_exit is not None and time.monotonic() - last_new >= idle_exit:
                pipe.finish()
                return
            time.sleep(poll)
