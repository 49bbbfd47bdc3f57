"""Tiles -> transport -> executor -> verdicts -> results log: the client's engine.

:class:`Pipeline` is fed tiles (all at once by ``submit``, a few at a time by
``watch``), stages them through a transport, submits one task per staged
batch with at most ``max_inflight`` tasks outstanding (so memory stays bounded
however large the section), collects futures as they complete, turns each
result into a verdict and appends it to the results log before telling
anyone about it.

A task that fails for a reason unrelated to its tiles (a lost worker, a
transient service error, an unreachable result stream: see
:func:`mhd.client.tasks.retryable`) is submitted again, up to ``retries``
times; only then are its tiles recorded, as errors that the next run
retries. A task without a result after ``task_timeout`` seconds (an
endpoint that is down keeps tasks queued) is given up the same way, so a run
always ends. Each tile is recorded once, whatever happened to its tasks.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from mhd.contracts.record import TileRecord

from .console import printable
from .discover import Tile
from .judge import Judge
from .portable import split_command
from .results import ResultsLog
from .tasks import WorkerLost, failure_message, retryable
from .transport import Staged, Transport

__all__ = ["OofHook", "Pipeline", "record_from_result"]

log = logging.getLogger(__name__)

#: Longest error message kept from a failed task (characters).
MAX_ERROR = 400


@dataclass
class _Task:
    staged: Staged
    t0: float
    attempt: int = 1
    alone: bool = False  # a lost worker's tile, tried with nothing else in flight


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _single_tiles(staged: Staged) -> list[Staged]:
    """One :class:`Staged` per tile of ``staged`` (payload items are paths, or inline dicts with a ``name``)."""
    out = []
    for item in staged.payload:
        key = item["name"] if isinstance(item, dict) else item
        out.append(Staged({key: staged.tiles[key]}, [item]))
    return out


def record_from_result(result: TileRecord, tile: Tile, transport: str, roundtrip_ms: float) -> TileRecord:
    """A results-log record from one ``score_tiles`` result.

    Parameters
    ----------
    result : TileRecord
        One entry of ``score_tiles``'s list (fields this client does not
        know are kept in ``extra``).
    tile : Tile
        The local tile it belongs to (its id replaces the payload id; its
        size and mtime are recorded as ``file_size`` and ``file_mtime_ns``:
        the version of the file scored).
    transport : str
    roundtrip_ms : float
        Task submission to result (milliseconds).
    """
    return replace(
        result,
        tile=tile.id,
        transport=transport,
        roundtrip_ms=round(roundtrip_ms, 1),
        scored_at=_now(),
        file_size=tile.size,
        file_mtime_ns=tile.mtime_ns,
    )


def _short(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR]


class OofHook:
    """Run a user command for each out-of-focus tile, without a shell.

    The command line is split once as the platform's shell would
    (:func:`mhd.client.portable.split_command`); the tile's absolute path is appended as one extra argument, so
    no character in a file name can inject anything. ``MHD_TILE``,
    ``MHD_VERDICT`` and ``MHD_REASON`` are also set in its environment.
    Commands run in the background; :meth:`close` waits for them.

    Parameters
    ----------
    command : str
        E.g. ``"notify-send 'MHD: out of focus'"``.
    """

    def __init__(self, command: str) -> None:
        self.argv = split_command(command)
        if not self.argv:
            raise ValueError("--on-oof command is empty")
        self._procs: list[subprocess.Popen] = []

    def __call__(self, record: TileRecord, path: Path) -> None:
        env = {**os.environ, "MHD_TILE": str(path), "MHD_VERDICT": record.verdict, "MHD_REASON": record.reason or ""}
        try:
            self._procs.append(subprocess.Popen([*self.argv, str(path)], env=env, stdin=subprocess.DEVNULL))
        except OSError as exc:
            log.error("--on-oof %s: %s", self.argv[0], exc)
        self._procs = [p for p in self._procs if p.poll() is None]

    def close(self, timeout: float = 10.0) -> None:
        """Wait for running commands (at most ``timeout`` seconds each)."""
        for p in self._procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("--on-oof command %d still running; not waiting", p.pid)
        self._procs = []


@dataclass
class Pipeline:
    """Score, judge and record tiles.

    Parameters
    ----------
    executor : object
        ``submit(tiles, params) -> Future[list[dict]]`` (``mhd.client.executors``).
    transport : Transport
    judge : Judge
    results : ResultsLog
    params : dict or None
        Detector parameters for ``score_tiles``.
    on_verdicts : callable
        Called with each list of records just recorded.
    on_scored : callable
        Called with the number of tiles each completed task (or staging
        failure) accounts for, before the verdicts (which warm-up may delay).
    on_oof : OofHook, optional
    max_inflight : int
        Most tasks outstanding.
    retries : int
        Times a task whose failure is :func:`~mhd.client.tasks.retryable`
        is submitted again before its tiles are recorded as errors.
    task_timeout : float
        Seconds a task may go without a result before its tiles are recorded
        as errors.
    landed : dict of str to float
        Tile id -> when it finished landing (epoch seconds, its mtime):
        records of these tiles get ``latency_ms``, landing to verdict
        (``watch`` fills it).
    stop : callable
        ``stop() -> bool``, polled between steps: once True, :meth:`run`
        raises :class:`KeyboardInterrupt` (Ctrl-C, see
        :class:`mhd.client.interrupt.Interrupt`); the caller then
        :meth:`drain`-s.
    shield : callable
        ``shield()`` -> a context manager around the recording of verdicts:
        a second Ctrl-C (:meth:`mhd.client.interrupt.Interrupt.shield`) waits
        for its end, so no verdict is half recorded or lost on the way.
    abandoned_tiles : int
        Set by :meth:`drain`: tiles of the tasks it gave up on (no record:
        the next run scores them).
    released_tiles : int
        Set by :meth:`drain`: of the tiles it recorded, those that had been
        held for the section baseline (judged with the baseline there was).
    """

    executor: Any
    transport: Transport
    judge: Judge
    results: ResultsLog
    params: dict | None = None
    on_verdicts: Callable[[list[TileRecord]], None] = lambda recs: None
    on_scored: Callable[[int], None] = lambda n: None
    on_oof: OofHook | None = None
    max_inflight: int = 8
    retries: int = 2
    task_timeout: float = 3600.0
    landed: dict[str, float] = field(default_factory=dict)
    stop: Callable[[], bool] = lambda: False
    shield: Callable[[], ContextManager[Any]] = contextlib.nullcontext
    abandoned_tiles: int = 0
    released_tiles: int = 0
    _streams: list[Iterator[Staged | None]] = field(default_factory=list)
    _futures: dict[cf.Future, _Task] = field(default_factory=dict)
    _quarantine: list[tuple[Staged, int]] = field(default_factory=list)
    _local: dict[str, Tile] = field(default_factory=dict)
    _warned_no_contrast: bool = False

    # ------------------------------------------------------------ feeding

    def feed(self, tiles: list[Tile]) -> None:
        """Queue tiles; they are staged and submitted by :meth:`pump`."""
        if tiles:
            self._local.update((t.id, t) for t in tiles)
            self.judge.expect(t.id for t in tiles)  # verdicts in this order, whatever order the results come in
            self._streams.append(self.transport.stage(tiles))

    @property
    def busy(self) -> bool:
        """True while tiles are queued, moving or being scored."""
        return bool(self._streams or self._futures or self._quarantine)

    @property
    def inflight(self) -> int:
        """Scoring tasks outstanding."""
        return len(self._futures)

    @property
    def inflight_tiles(self) -> int:
        """Tiles of the scoring tasks outstanding (those of a lost worker waiting to be tried alone included)."""
        return sum(len(task.staged.tiles) for task in self._futures.values()) + sum(len(s.tiles) for s, _ in self._quarantine)

    def pump(self, timeout: float) -> None:
        """Submit what is ready, then collect results for up to ``timeout`` seconds.

        Returns early when a task completes. While every queued batch waits
        on its transport (a Transfer in progress), waits at most the
        transport's ``poll`` seconds.
        """
        if self._quarantine or any(task.alone for task in self._futures.values()):
            self._release_quarantine()
        elif self._stage():
            timeout = min(timeout, self.transport.poll)
            if not self._futures:
                time.sleep(timeout)
                return
        self.collect(timeout)

    def run(self, tiles: list[Tile], tick: float = 0.5) -> None:
        """Feed ``tiles`` and pump until every one is recorded (pending warm-up included).

        Raises
        ------
        KeyboardInterrupt
            When ``stop()`` becomes true (checked at least every ``tick`` seconds).
        """
        self.feed(tiles)
        while self.busy:
            if self.stop():
                raise KeyboardInterrupt
            self.pump(tick)
        self.finish()

    def finish(self) -> int:
        """Judge and record the tiles still waiting for the baseline (with the baseline there is); return how many."""
        with self.shield():
            held = self.judge.flush()
            self._record(held)
        return len(held)

    def drain(self, timeout: float) -> None:
        """Stop staging; record what completes within ``timeout`` seconds; cancel the rest.

        Tiles held for the baseline are then judged and recorded
        (:meth:`finish`); tiles of cancelled or unfinished tasks get no
        record, so the next run scores them.
        """
        self._streams.clear()
        deadline = time.monotonic() + timeout
        while self._futures and time.monotonic() < deadline:
            self.collect(max(0.0, deadline - time.monotonic()))
        self.abandoned_tiles = self.inflight_tiles
        self._quarantine.clear()
        for fut in list(self._futures):
            fut.cancel()
        self._futures.clear()
        self.released_tiles = self.finish()

    # ----------------------------------------------------------- internals

    def _stage(self) -> bool:
        """Submit staged batches while below ``max_inflight``.

        Returns
        -------
        bool
            True when it stopped because every queued stream is waiting.
        """
        waiting = 0
        while self._streams and len(self._futures) < self.max_inflight and waiting < len(self._streams):
            try:
                staged = next(self._streams[0])
            except StopIteration:
                self._streams.pop(0)
                waiting = 0
                continue
            self._streams.append(self._streams.pop(0))
            if staged is None:
                waiting += 1
                continue
            waiting = 0
            self._submit(staged)
        return bool(self._streams) and waiting >= len(self._streams)

    def _release_quarantine(self) -> None:
        """Tiles of tasks whose worker died are scored one at a time with nothing else in flight: a tile that
        kills its worker (a decoder's crash, memory) then fails alone instead of breaking the pool under the
        tasks beside it, which would fail with it on every retry."""
        if self._quarantine and not self._futures:
            staged, attempt = self._quarantine.pop(0)
            self._submit(staged, attempt, alone=True)

    def _submit(self, staged: Staged, attempt: int = 1, alone: bool = False) -> None:
        if staged.failed:
            self._judged(staged.failed)
        if not staged.payload:
            return
        try:
            fut = self.executor.submit(staged.payload, self.params)
        except Exception as exc:  # the executor refused the task: its tiles fail, the run goes on
            log.debug("submission of %d tile(s) failed", len(staged.tiles), exc_info=exc)
            self._fail(staged, f"submission failed: {_short(exc)}")
            return
        self._futures[fut] = _Task(staged, time.perf_counter(), attempt, alone)

    def collect(self, timeout: float) -> None:
        """Record the tasks that complete within ``timeout`` seconds."""
        if not self._futures:
            return
        done, _ = cf.wait(list(self._futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        with self.shield():
            for fut in done:
                task = self._futures.pop(fut)
                self._complete(fut, task)
            self._give_up_late()

    def _give_up_late(self) -> None:
        """Record as errors the tiles of tasks older than ``task_timeout``."""
        now = time.perf_counter()
        for fut, task in list(self._futures.items()):
            if now - task.t0 > self.task_timeout:
                del self._futures[fut]
                fut.cancel()
                log.warning("no result for %d tile(s) after %g s: giving up on them", len(task.staged.tiles), self.task_timeout)
                self._fail(task.staged, f"no result within {self.task_timeout:g} s (is the endpoint running?); retried on the next run")

    def _complete(self, fut: cf.Future, task: _Task) -> None:
        ms = (time.perf_counter() - task.t0) * 1e3
        staged = task.staged
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._task_failed(task, exc)
            return
        results = fut.result()
        seen = set()
        recs = []
        for res in results if isinstance(results, list) else []:
            try:
                result = TileRecord.from_json(res)
            except ValueError:  # not a result entry: its tile is reported below
                continue
            if result.error is None and "contrast" not in res and not self._warned_no_contrast:
                self._warned_no_contrast = True
                log.warning(
                    "the worker returned no tissue contrast (its mhd is older than this client's): empty tiles "
                    "cannot be told from blurred ones; install this version of mhd where the tasks run"
                )
            tile = staged.tiles.get(result.tile)
            if tile is None or tile.id in seen:
                continue
            seen.add(tile.id)
            if self._current(tile):
                recs.append(record_from_result(result, tile, self.transport.name, ms))
        for tile in staged.tiles.values():
            if tile.id not in seen and self._current(tile):
                recs.append(TileRecord.failed(tile.id, "no result returned for this tile", transport=self.transport.name))
        self._judged(recs)

    def _current(self, tile: Tile) -> bool:
        """Whether ``tile`` is the version of its file last fed: a task for an older version (the tile was
        re-imaged while it was scored) must not record its verdict over the newer one's."""
        last = self._local.get(tile.id)
        return last is None or (last.size, last.mtime_ns) == (tile.size, tile.mtime_ns)

    def _task_failed(self, task: _Task, exc: BaseException) -> None:
        """Submit a task again if its failure allows it, else record its tiles as errors."""
        why = failure_message(exc)
        again = retryable(exc)
        n = len(task.staged.tiles)
        log.debug("task of %d tile(s), attempt %d: %s\n%s", n, task.attempt, why, getattr(exc, "details", ""), exc_info=exc)
        if again and task.attempt <= self.retries:
            log.warning("%s; submitting its %d tile(s) again (attempt %d of %d)", why, n, task.attempt + 1, self.retries + 1)
            if isinstance(exc, WorkerLost):  # one of these tiles may be what killed it: each alone, nothing beside it
                self._quarantine += [(one, task.attempt + 1) for one in _single_tiles(task.staged)]
            else:
                self._submit(Staged(task.staged.tiles, task.staged.payload), task.attempt + 1)
            return
        tries = f" (after {task.attempt} attempts)" if task.attempt > 1 else ""
        self._fail(task.staged, f"{why}{tries}" + ("; retried on the next run" if again else ""))

    def _fail(self, staged: Staged, message: str) -> None:
        self._judged([TileRecord.failed(t.id, message, transport=self.transport.name) for t in staged.tiles.values() if self._current(t)])

    def _judged(self, records: list[TileRecord]) -> None:
        """Judge new records; record those whose verdict is final (warm-up may hold some)."""
        with self.shield():
            self.on_scored(len(records))
            self._record([final for rec in records for final in self.judge.add(rec)])

    def _record(self, judged: list[TileRecord]) -> None:
        if not judged:
            return
        now = time.time()
        records = []
        for rec in judged:
            rec = replace(rec, scored_at=rec.scored_at or _now())
            if rec.tile in self.landed:
                rec = replace(rec, latency_ms=round((now - self.landed.pop(rec.tile)) * 1e3, 1))
            self.results.append(rec)
            records.append(rec)
            if rec.verdict == "error":
                log.info("error: %s", printable(rec.reason or ""))
        self.on_verdicts(records)
        if self.on_oof is not None:
            for rec in records:
                if rec.verdict == "oof":
                    self.on_oof(rec, self._local[rec.tile].path)
