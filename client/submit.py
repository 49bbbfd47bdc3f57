"""``client submit``: score a whole section, resuming where an earlier run stopped.

Which tiles are scored: every tile of the section without a record in
``mhd-results.jsonl``, plus those whose record is an ``error`` (retried: the
cause may have been the network). ``rescore=True`` starts a fresh log (the
old one is kept as a ``.bak``) and scores everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from mhd.params import DEFAULTS

from .config import Config
from .console import Reporter, summary_lines, summary_table
from .discover import RESULTS_NAME, Discovery, Tile, discover
from .interrupt import EXIT_INTERRUPTED, Interrupt
from .pipeline import OofHook, Pipeline
from .results import ResultsLog
from .score import tissue_probe
from .transport import MB, DiskTransport, GlobusTransport, InlineTransport, SharedTransport, Transport, choose_transport
from .verdicts import Judge, Rule, exit_status

__all__ = ["EXIT_INTERRUPTED", "Outcome", "auto_batch", "backend_kind", "local_workers", "make_transport", "open_backend", "run_section", "section_summary", "todo_tiles"]

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a run ended.

    Attributes
    ----------
    records : dict of str to dict
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
    """

    records: dict[str, dict]
    new: int
    elapsed: float
    interrupted: bool = False
    found: Discovery | None = None
    new_failed: int = 0
    results: Path | None = None

    def accounting(self) -> dict[str, int]:
        """Where every file found went: ``found == scored + failed + skipped + unscored``.

        ``scored`` tiles have a verdict (ok, oof, empty), ``failed`` ones an
        error, ``skipped`` files are not tiles (wrong type, still being
        written) and ``unscored`` tiles have no record yet (an interrupted
        run). ``gone`` counts records of tiles no longer in the folder.
        """
        tiles = self.found.tiles if self.found else []
        verdicts = [self.records[t.id]["verdict"] for t in tiles if t.id in self.records]
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
            out[rec["verdict"]] = out.get(rec["verdict"], 0) + 1
        return out

    @property
    def exit_status(self) -> int:
        """130 if interrupted, else :func:`mhd.client.verdicts.exit_status`."""
        return EXIT_INTERRUPTED if self.interrupted else exit_status(self.counts)


def backend_kind(cfg: Config) -> str:
    """``local`` or ``globus``: ``auto`` is Globus when endpoint and function are configured."""
    if cfg["executor"] != "auto":
        return cfg["executor"]
    return "globus" if cfg["endpoint"] and cfg["function"] else "local"


def check_backend(cfg: Config, kind: str) -> None:
    """Raise ValueError when the ``globus`` backend lacks its endpoint or function UUID."""
    if kind == "globus" and not (cfg["endpoint"] and cfg["function"]):
        raise ValueError("the globus executor needs an endpoint and a function UUID: run 'client register --endpoint UUID' (see 'client config')")


def local_workers(cfg: Config) -> int:
    """Worker processes of the local backend."""
    return cfg["workers"] or max(1, min(8, os.cpu_count() or 1))


def open_backend(cfg: Config, kind: str, data_root: Path | None = None, compute_client: Callable[[], Any] | None = None) -> Any:
    """Start the backend (a context manager with ``submit`` and ``name``).

    Parameters
    ----------
    cfg : Config
    kind : str
        ``local`` or ``globus``.
    data_root : Path, optional
        Local backend: the folder path tiles are relative to (shared transport).
    compute_client : callable, optional
        Returns an authenticated ``globus_compute_sdk.Client`` (only called
        for ``globus``).

    Raises
    ------
    ValueError
        If ``globus`` is asked for without an endpoint and a function UUID,
        or without a ``compute_client``.
    """
    from . import backends

    if kind == "local":
        return backends.LocalBackend(workers=local_workers(cfg), data_root=data_root)
    check_backend(cfg, kind)
    if compute_client is None:
        raise ValueError("the globus executor needs a Globus Compute client")
    return backends.GlobusBackend(cfg["endpoint"], cfg["function"], compute_client())


def auto_batch(n_tiles: int, workers: int, kind: str) -> int:
    """Tiles per scoring task: enough tasks to keep every worker busy, at most 8 tiles each.

    The Globus backend uses 8 (fewer, larger requests against the service's
    rate limit).
    """
    if kind == "globus":
        return 8
    return max(1, min(8, n_tiles // (4 * max(workers, 1))))


def make_transport(cfg: Config, section: Path, tiles: list[Tile], batch: int, transfer_client: Callable[[list[str]], Any] | None = None, kind: str = "globus") -> Transport:
    """The transport the configuration (and ``auto``) asks for.

    With the local backend the workers read the tiles from disk themselves
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
        return InlineTransport(batch, int(cfg["request_mb"] * MB), hint=_inline_hint(shared_ready, globus_ready))
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
        raise ValueError("transport globus copies tiles to the endpoint's storage, which the local engine does not see: use --transport auto (the local engine reads tiles from disk) or --executor globus")
    if name == "inline":
        return InlineTransport(batch, int(cfg["request_mb"] * MB), hint="use --transport auto (the local engine then reads tiles from disk, any size)")
    if name == "shared" and cfg["shared_local"]:
        return SharedTransport(batch, cfg["shared_local"], "")
    return DiskTransport(batch, section)


def _inline_hint(shared_ready: bool, globus_ready: bool) -> str:
    """What to do about a tile over the inline limit, given what is configured."""
    if shared_ready:
        return "use --transport shared (shared_local is configured)"
    if globus_ready:
        return "use --transport globus (Globus Transfer is configured)"
    return "score it on this machine with --executor local, or configure shared storage (shared_local, shared_remote) or Globus Transfer for the endpoint (see 'client config')"


def todo_tiles(found: Discovery, records: dict[str, dict]) -> list[Tile]:
    """Tiles without a record, or whose record is an error (retried)."""
    return [t for t in found.tiles if t.id not in records or records[t.id].get("verdict") == "error"]


def run_section(
    section: Path,
    cfg: Config,
    console: Console,
    *,
    rule: Rule,
    rescore: bool = False,
    params: dict | None = None,
    on_oof: str | None = None,
    show_ok: bool = False,
    transfer_client: Callable[[list[str]], Any] | None = None,
    compute_client: Callable[[], Any] | None = None,
    results_dir: Path | None = None,
    interrupt: Interrupt | None = None,
) -> Outcome:
    """Score the tiles of ``section`` that need it; record and print verdicts.

    ``transfer_client`` and ``compute_client`` build the authenticated Globus
    clients, and are called only when the Globus transport / backend is used.
    ``results_dir`` holds the results log (default: the section).

    Ctrl-C (SIGINT, see :mod:`mhd.client.interrupt`; ``interrupt`` is the
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
        Configuration or usage problems, before anything is scored.
    KeyboardInterrupt
        Ctrl-C before scoring started (nothing recorded).
    """
    check_backend(cfg, backend_kind(cfg))
    found = discover(section)
    folder = results_dir or section
    with _handling(interrupt) as stop, ResultsLog(folder, fresh=rescore) as results:
        todo = todo_tiles(found, results.records)
        kind = backend_kind(cfg)
        workers = local_workers(cfg) if kind == "local" else 0
        batch = cfg["batch"] or auto_batch(len(todo), workers, kind)
        transport = make_transport(cfg, section, todo, batch, transfer_client, kind)
        _header(console, section, found, len(results.records), len(todo), kind, workers, transport, rule)
        judge = Judge(rule, tissue_probe(section, _grid(params)), prior=results.records.values())
        hook = OofHook(on_oof) if on_oof else None
        interrupted = False
        with Reporter(console, len(todo), show_ok) as reporter:
            if todo:
                with open_backend(cfg, kind, local_data_root(kind, transport), compute_client) as backend:
                    pipe = Pipeline(backend, transport, judge, results, params, on_verdicts=reporter, on_scored=reporter.scored, on_oof=hook, max_inflight=_inflight(kind, workers), task_timeout=cfg["task_timeout"], stop=stop)
                    stop.defer()
                    interrupted = _run(pipe, todo, console, backend, cfg["drain_timeout"])
        if hook is not None:
            hook.close(timeout=1.0 if interrupted else 10.0)
        results.compact()
        return Outcome(dict(results.records), sum(reporter.counts.values()), reporter.elapsed, interrupted, found, reporter.counts["error"], results.path)


@contextlib.contextmanager
def _handling(interrupt: Interrupt | None):
    """The caller's Ctrl-C handler, or one of our own for this run."""
    if interrupt is not None:
        yield interrupt
        return
    with Interrupt() as own:
        yield own


def local_data_root(kind: str, transport: Transport) -> Path | None:
    """The local workers' data root: the folder path tiles are relative to (None: inline only)."""
    if kind == "local" and isinstance(transport, SharedTransport):
        return transport.local_root
    return None


def interrupted_stop(pipe: Pipeline, backend: Any, console: Console, drain_timeout: float, what: str = "interrupted") -> None:
    """After Ctrl-C: record the tasks that finish within ``drain_timeout`` seconds, then stop the backend."""
    tiles = pipe.inflight_tiles
    console.print(
        f"[bold]{what}[/]: {len(pipe.results.records)} tile(s) recorded; waiting up to {drain_timeout:g} s for the "
        f"{pipe.inflight} task(s) in flight ({tiles} tile(s)); Ctrl-C again to leave them for the next run",
        highlight=False,
    )
    before = len(pipe.results.records)
    pipe.drain(drain_timeout)
    backend.abort()
    left = pipe.abandoned_tiles
    console.print(f"{what}: {len(pipe.results.records) - before} more tile(s) recorded; {left} tile(s) in flight left for the next run", highlight=False)


def _run(pipe: Pipeline, todo: list[Tile], console: Console, backend: Any, drain_timeout: float) -> bool:
    """Run the pipeline; on Ctrl-C record what finishes in time and return True."""
    try:
        pipe.run(todo)
        return False
    except KeyboardInterrupt:
        interrupted_stop(pipe, backend, console, drain_timeout)
        return True


def _inflight(kind: str, workers: int) -> int:
    return 32 if kind == "globus" else max(4, 2 * workers)


def _grid(params: dict | None) -> tuple[int, int]:
    g = (params or {}).get("grid", DEFAULTS["grid"])
    return (int(g[0]), int(g[1])) if isinstance(g, (list, tuple)) else (int(g), int(g))


def _header(console: Console, section: Path, found: Discovery, done: int, todo: int, kind: str, workers: int, transport: Transport, rule: Rule) -> None:
    skipped = f", {len(found.skipped)} other file(s) skipped" if found.skipped else ""
    console.print(f"[bold]{section.name}[/]: {len(found.tiles)} tiles{skipped}; {done} already recorded, {todo} to score")
    for name in found.skipped[:5]:
        console.print(f"  [dim]skipped (not an image): {name}[/]")
    if len(found.skipped) > 5:
        console.print(f"  [dim]... and {len(found.skipped) - 5} more[/]")
    if found.ignored:
        names = ", ".join(found.ignored[:3]) + (", ..." if len(found.ignored) > 3 else "")
        console.print(f"  [dim]ignored {len(found.ignored)} hidden or partly written file(s) until renamed into place: {_esc(names)}[/]")
    where = f"local ({workers} worker{'s' if workers != 1 else ''})" if kind == "local" else "globus"
    if rule.calibration is not None:
        cal = rule.calibration
        how = f"calibrated, OOF beyond {cal.max_defocus:g} {cal.units} (r={cal.r:.3f})"
    else:
        how = f"relative to the section median, first verdicts after {rule.warmup} tiles"
    console.print(f"executor {where}, transport {transport.name}; rule: {how}", highlight=False)


def _esc(text: str) -> str:
    return text.replace("[", r"\[")


def section_summary(console: Console, section: Path, outcome: Outcome) -> None:
    """Print the summary (a table on a terminal, plain lines otherwise) and where the results are."""
    title = f"{section.name}: summary"
    if console.is_terminal:
        console.print(summary_table(outcome.records.values(), title, outcome.new, outcome.elapsed, failed=outcome.new_failed, width=console.width))
    else:
        for line in summary_lines(outcome.records.values(), title, outcome.new, outcome.elapsed, failed=outcome.new_failed):
            console.file.write(line + "\n")  # as is: rich would expand the tabs
    if outcome.found is not None:
        a = outcome.accounting()
        line = f"{a['found']} files found = {a['scored']} scored + {a['failed']} failed + {a['skipped']} skipped (not tiles)"
        line += f" + {a['unscored']} not scored yet" if a["unscored"] else ""
        line += f"; {a['gone']} earlier record(s) of tiles no longer in the folder" if a["gone"] else ""
        console.print(line, highlight=False)
    console.print(f"results: {outcome.results or section / RESULTS_NAME}   exit status {outcome.exit_status} ({_meaning(outcome.exit_status)})", highlight=False)


def _meaning(status: int) -> str:
    return {0: "all ok", 1: "some tiles failed", 2: "out-of-focus tiles", EXIT_INTERRUPTED: "interrupted"}[status]

