"""One run over a section, the same for ``client submit`` and ``client watch``: :class:`RunSession`.

A run needs Ctrl-C handling, the section's results log (locked), an
executor (local worker processes or Globus Compute), a transport, the verdict
judge, the ``--on-oof`` hook and the :class:`~mhd.client.pipeline.Pipeline`
that ties them together with :func:`max_inflight` tasks outstanding. A
:class:`RunSession` sets all of these up one way; ``submit`` feeds it the
finished list of tiles to score, ``watch`` feeds it tiles as they land.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from mhd.contracts.record import TileRecord
from mhd.contracts.verdicts import exit_status

from .config import Config
from .console import Reporter, printable
from .discover import Discovery, Tile
from .interrupt import EXIT_INTERRUPTED, Abandoned, Interrupt, abandon, exit_code, stopped_by
from .judge import Judge
from .options import RunOptions
from .pipeline import OofHook, Pipeline
from .results import ResultsLog
from .rule import Rule, rule_summary
from .transport import MB, DiskTransport, GlobusTransport, InlineTransport, SharedTransport, Transport, choose_transport

__all__ = [
    "Outcome",
    "RunSession",
    "executor_kind",
    "check_executor",
    "local_workers",
    "make_transport",
    "max_inflight",
    "open_executor",
    "rule_line",
]

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a run ended.

    Attributes
    ----------
    records : dict of str to TileRecord
        Every record of the section.
    new : int
        Tiles recorded in this run.
    elapsed : float
        Seconds.
    interrupted : bool
    found : Discovery, optional
        What the section folder held (for :meth:`accounting`).
    new_failed : int
        Of ``new``, the tiles recorded as errors.
    results : Path, optional
        The results log (``mhd-results.jsonl``).
    signum : int, optional
        The signal that stopped the run (SIGINT, SIGTERM, SIGHUP), if one did.
    """

    records: dict[str, TileRecord]
    new: int
    elapsed: float
    interrupted: bool = False
    found: Discovery | None = None
    new_failed: int = 0
    results: Path | None = None
    signum: int | None = None

    def accounting(self) -> dict[str, int]:
        """Where every file found went: ``found == scored + failed + skipped + unscored``.

        ``scored`` tiles have a verdict (ok, oof, empty), ``failed`` ones an
        error, ``skipped`` files are not tiles (wrong type, still being
        written) and ``unscored`` tiles have no record yet (an interrupted
        run). ``gone`` counts records of tiles no longer in the folder.
        """
        tiles = self.found.tiles if self.found else []
        verdicts = [self.records[t.id].verdict for t in tiles if t.id in self.records]
        ids = {t.id for t in tiles}
        return {
            "found": len(tiles) + len(self.found.skipped if self.found else []),
            "scored": sum(v != "error" for v in verdicts),
            "failed": verdicts.count("error"),
            "skipped": len(self.found.skipped) if self.found else 0,
            "unscored": len(tiles) - len(verdicts),
            "gone": sum(t not in ids for t in self.records),
        }

    @property
    def counts(self) -> dict[str, int]:
        """Tiles per verdict."""
        out: dict[str, int] = {}
        for rec in self.records.values():
            out[rec.verdict] = out.get(rec.verdict, 0) + 1
        return out

    @property
    def exit_status(self) -> int:
        """128 + the signal's number if SIGTERM or SIGHUP stopped the run, 130 if Ctrl-C interrupted
        it, else :func:`mhd.contracts.verdicts.exit_status` (a ``watch`` ended by Ctrl-C too)."""
        if self.signum is not None and self.signum != signal.SIGINT:
            return exit_code(self.signum)
        return EXIT_INTERRUPTED if self.interrupted else exit_status(self.counts)


def executor_kind(cfg: Config) -> str:
    """``local`` or ``globus``: ``auto`` is Globus when endpoint and function are configured."""
    if cfg["executor"] != "auto":
        return cfg["executor"]
    return "globus" if cfg["endpoint"] and cfg["function"] else "local"


def check_executor(cfg: Config, kind: str) -> None:
    """Raise ValueError when the ``globus`` executor lacks its endpoint or function UUID."""
    if kind == "globus" and not (cfg["endpoint"] and cfg["function"]):
        raise ValueError(
            "the globus executor needs an endpoint and a function UUID: run 'client register --endpoint UUID' (see 'client config')"
        )


def local_workers(cfg: Config) -> int:
    """Worker processes of the local executor."""
    return cfg["workers"] or max(1, min(8, os.cpu_count() or 1))


def max_inflight(kind: str, workers: int) -> int:
    """Scoring tasks kept outstanding.

    32 on Globus Compute (its latency hides behind many tasks), else two per
    local worker (at least 4).
    """
    return 32 if kind == "globus" else max(4, 2 * workers)


def open_executor(cfg: Config, kind: str, data_root: Path | None = None, compute_client: Callable[[], Any] | None = None) -> Any:
    """Start the executor (a context manager with ``submit`` and ``name``).

    Parameters
    ----------
    cfg : Config
    kind : str
        ``local`` or ``globus``.
    data_root : Path, optional
        Local executor: the folder path tiles are relative to (shared transport).
    compute_client : callable, optional
        Returns an authenticated ``globus_compute_sdk.Client`` (only called
        for ``globus``).

    Raises
    ------
    ValueError
        If ``globus`` is asked for without an endpoint and a function UUID,
        or without a ``compute_client``.
    """
    from . import executors

    if kind == "local":
        return executors.LocalExecutor(workers=local_workers(cfg), data_root=data_root)
    check_executor(cfg, kind)
    if compute_client is None:
        raise ValueError("the globus executor needs a Globus Compute client")
    return executors.GlobusExecutor(cfg["endpoint"], cfg["function"], compute_client())


def make_transport(
    cfg: Config,
    section: Path,
    tiles: list[Tile] | None,
    batch: int,
    transfer_client: Callable[[list[str]], Any] | None = None,
    kind: str = "globus",
) -> Transport:
    """The transport the configuration (and ``auto``) asks for.

    With the local executor the workers read the tiles from disk themselves
    (``auto``: paths relative to the section, so any tile the function
    accepts is scored, whatever its size; ``shared``: relative to
    ``shared_local`` when set); ``inline`` still sends bytes, and ``globus``
    is refused (a Transfer delivers to the endpoint's storage, which local
    workers do not see).

    Parameters
    ----------
    transfer_client : callable, optional
        ``transfer_client(collection_ids) -> globus_sdk.TransferClient``
        (only called for ``globus``; the two collections' data-access scopes
        are requested).

    Raises
    ------
    ValueError
        If the chosen transport is not configured (the message names the keys).
    """
    shared_ready = bool(cfg["shared_local"])
    if kind == "local":
        return _local_transport(cfg, section, batch)
    globus_ready = all(cfg[k] for k in ("source_collection", "dest_collection", "dest_path", "source_local"))
    name = choose_transport(cfg["transport"], tiles, int(cfg["inline_max_mb"] * MB), shared_ready, globus_ready)
    if name == "inline":
        return InlineTransport(batch, int(cfg["request_mb"] * MB), hint=_inline_hint(shared_ready, globus_ready), root=section)
    if name == "shared":
        if not shared_ready:
            raise ValueError("transport shared needs shared_local (and shared_remote): see 'client config'")
        return SharedTransport(batch, cfg["shared_local"], cfg["shared_remote"])
    if not globus_ready or transfer_client is None:
        raise ValueError("transport globus needs source_collection, source_local, dest_collection and dest_path: see 'client config'")
    return GlobusTransport(
        batch,
        transfer_client([cfg["source_collection"], cfg["dest_collection"]]),
        source_collection=cfg["source_collection"],
        dest_collection=cfg["dest_collection"],
        source_local=cfg["source_local"],
        source_path=cfg["source_path"],
        dest_path=cfg["dest_path"],
        dest_remote=cfg["dest_remote"],
        section_name=section.name,
        transfer_batch=cfg["transfer_batch"],
        deadline=cfg["transfer_timeout"],
    )


def _local_transport(cfg: Config, section: Path, batch: int) -> Transport:
    name = cfg["transport"]
    if name == "globus":
        raise ValueError(
            "transport globus copies tiles to the endpoint's storage, which the local engine does not see: use "
            "--transport auto (the local engine reads tiles from disk) or --executor globus"
        )
    if name == "inline":
        return InlineTransport(
            batch,
            int(cfg["request_mb"] * MB),
            hint="use --transport auto (the local engine then reads tiles from disk, any size)",
            root=section,
        )
    if name == "shared" and cfg["shared_local"]:
        return SharedTransport(batch, cfg["shared_local"], "")
    return DiskTransport(batch, section)


def _inline_hint(shared_ready: bool, globus_ready: bool) -> str:
    """What to do about a tile over the inline limit, given what is configured."""
    if shared_ready:
        return "use --transport shared (shared_local is configured)"
    if globus_ready:
        return "use --transport globus (Globus Transfer is configured)"
    return (
        "score it on this machine with --executor local, or configure shared storage (shared_local, shared_remote) "
        "or Globus Transfer for the endpoint (see 'client config')"
    )


def local_data_root(kind: str, transport: Transport) -> Path | None:
    """The local workers' data root: the folder path tiles are relative to (None: inline only)."""
    if kind == "local" and isinstance(transport, SharedTransport):
        return transport.local_root
    return None


class RunSession:
    """One run over ``section``: a context manager that ``submit`` and ``watch`` drive alike.

    Entering it installs Ctrl-C handling (``interrupt``, the caller's, or one
    of its own) and opens the results log (locked; ``rescore`` starts a fresh
    one); leaving it normally waits for ``--on-oof`` commands and compacts the
    log. In between, :meth:`use_transport` chooses how tiles travel and
    :meth:`drive` starts the executor and feeds the pipeline.

    Parameters
    ----------
    section : Path
    cfg : Config
    console : Console
    options : RunOptions

    Attributes
    ----------
    kind : str
        Executor: ``local`` or ``globus``.
    workers : int
        Local worker processes (0 on Globus).
    max_inflight : int
        Scoring tasks outstanding (:func:`max_inflight`).
    results : ResultsLog
        Once entered.
    interrupted : bool
        Whether Ctrl-C ended :meth:`drive`.

    Raises
    ------
    ValueError
        The Globus executor without its endpoint or function UUID (from the constructor).
    """

    def __init__(self, section: Path, cfg: Config, console: Console, options: RunOptions) -> None:
        self.kind = executor_kind(cfg)
        check_executor(cfg, self.kind)
        self.section, self.cfg, self.console, self.options = section, cfg, console, options
        self.workers = local_workers(cfg) if self.kind == "local" else 0
        self.max_inflight = max_inflight(self.kind, self.workers)
        self.interrupted = False
        self.transport: Transport | None = None
        self._hook: OofHook | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "RunSession":
        with contextlib.ExitStack() as stack:
            opts = self.options
            self.stop = stack.enter_context(_handling(opts.interrupt))
            self.results = stack.enter_context(ResultsLog(opts.results_dir or self.section, fresh=opts.rescore))
            if opts.record_rule:  # under the lock: a run refused as locked changes nothing
                from .choice import record

                record(opts.results_dir or self.section, opts.rule)
            self._hook = OofHook(opts.on_oof) if opts.on_oof else None
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        with self._stack:
            if exc_type is None:
                if self._hook is not None:
                    self._hook.close(timeout=1.0 if self.interrupted else 10.0)
                self.results.compact()

    def use_transport(self, tiles: list[Tile] | None, batch: int) -> Transport:
        """Choose the transport for ``tiles``, ``batch`` tiles per task (:func:`make_transport`).

        ``auto`` looks at the tiles' sizes; ``tiles`` None means not known yet
        (``watch``).
        """
        self.transport = make_transport(self.cfg, self.section, tiles, batch, self.options.transfer_client, self.kind)
        return self.transport

    def drive(self, feed: Callable[[Pipeline], None], reporter: Reporter, what: str = "interrupted") -> bool:
        """Start the executor and run ``feed(pipeline)``; return whether Ctrl-C ended it.

        From the moment the pipeline exists, Ctrl-C makes ``feed`` raise
        :class:`KeyboardInterrupt` between steps: the tasks that finish within
        ``drain_timeout`` seconds are recorded, the others are left for the
        next run (``what`` names the stop in the messages).

        Parameters
        ----------
        feed : callable
            Gives the pipeline its tiles and pumps it until done
            (``pipe.run(todo)``, or watch's loop over the folder).
        reporter : Reporter
            Shown each verdict and each scored batch.
        """
        if self.transport is None:
            raise RuntimeError("use_transport() first")
        judge = Judge(self.options.rule, prior=self.results.records.values())
        root = local_data_root(self.kind, self.transport)
        with open_executor(self.cfg, self.kind, root, self.options.compute_client) as executor:
            pipe = Pipeline(
                executor,
                self.transport,
                judge,
                self.results,
                self.options.params,
                on_verdicts=reporter,
                on_scored=reporter.scored,
                on_oof=self._hook,
                max_inflight=self.max_inflight,
                task_timeout=self.cfg["task_timeout"],
                stop=self.stop,
                shield=getattr(self.stop, "shield", contextlib.nullcontext),
            )
            self.stop.defer()
            try:
                try:
                    feed(pipe)
                except KeyboardInterrupt:
                    self.interrupted = True
                    _drain(pipe, executor, self.console, self.cfg["drain_timeout"], what, self.signum)
                except Exception:
                    # an unforeseen failure (the section folder removed, a full disk): the verdicts held for the
                    # baseline are judged and recorded before it is reported, as on Ctrl-C
                    with contextlib.suppress(Exception):
                        pipe.finish()
                    raise
            except Abandoned as again:
                self.interrupted = True
                _abandon(pipe, again.signum)
        return self.interrupted

    @property
    def signum(self) -> int:
        """The signal that stopped the run (SIGINT when none is known)."""
        return getattr(self.stop, "signum", None) or signal.SIGINT

    def outcome(self, reporter: Reporter, found: Discovery | None, interrupted: bool) -> Outcome:
        """How the run ended (after the session is left: the log compacted)."""
        return Outcome(
            dict(self.results.records),
            sum(reporter.counts.values()),
            reporter.elapsed,
            interrupted,
            found,
            reporter.counts["error"],
            self.results.path,
            self.signum if self.interrupted else None,
        )


def rule_line(rule: Rule) -> str:
    """The header's line naming the rule in force (:func:`~mhd.client.rule.rule_summary`), as console markup."""
    return "rule: " + printable(rule_summary(rule)).replace("[", r"\[")


@contextlib.contextmanager
def _handling(interrupt: Interrupt | None):
    """The caller's Ctrl-C handler, or one of our own for this run."""
    if interrupt is not None:
        yield interrupt
        return
    with Interrupt() as own:
        yield own


def _drain(
    pipe: Pipeline, executor: Any, console: Console, drain_timeout: float, what: str = "interrupted", signum: int = signal.SIGINT
) -> None:
    """After Ctrl-C (SIGTERM, SIGHUP): record the tasks that finish within ``drain_timeout`` seconds and
    the verdicts held for the section baseline, then stop the executor."""
    if signum != signal.SIGINT:
        what = f"{what} ({signal.Signals(signum).name})"
    again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    held = pipe.judge.pending
    holding = f"; {held} scored tile(s) held for the section baseline or an earlier tile are recorded then" if held else ""
    _say(
        console,
        f"[bold]{what}[/]: {len(pipe.results.records)} tile(s) recorded; waiting up to {drain_timeout:g} s for the "
        f"{pipe.inflight} task(s) in flight ({pipe.inflight_tiles} tile(s)){holding}; {again} again to leave them for the next run",
    )
    before = len(pipe.results.records)
    pipe.drain(drain_timeout)
    executor.abort()
    left = pipe.abandoned_tiles
    released = pipe.released_tiles
    judged = (
        f" ({released} of them held for the section baseline or an earlier tile, judged with the {pipe.judge.baseline().n} tile(s) it has)"
    )
    _say(
        console,
        f"{what}: {len(pipe.results.records) - before} more tile(s) recorded{judged if released else ''}; "
        f"{left} tile(s) in flight left for the next run",
    )


def _abandon(pipe: Pipeline, signum: int) -> None:
    """After a second stop signal: record the verdicts held for the baseline, then end the process now."""
    released = pipe.finish()
    held = f"{released} tile(s) held for the section baseline or an earlier tile judged and recorded; " if released else ""
    left = pipe.inflight_tiles
    abandon(
        f"{stopped_by(signum)} again: stopping now; {held}{len(pipe.results.records)} tile(s) recorded in all; "
        f"{left} tile(s) in flight left for the next run",
        exit_code(signum),
    )


def _say(console: Console, text: str) -> None:
    """Print a line; a terminal that hung up (SIGHUP) must not stop the drain."""
    try:
        console.print(text, highlight=False)
    except OSError:
        pass
