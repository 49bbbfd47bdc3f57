"""The per-section results log: ``mhd-results.jsonl``, one JSON record per tile.

Each verdict is appended, flushed and ``fsync``-ed the moment it is known, so a
client killed at any instant loses at most the record it was writing. That
torn last line is dropped (and cut off the file) when the log is opened again;
its tile is then simply scored again. A write that fails (disk full, quota,
I/O error) is cut off at once and raises :class:`ResultsWriteError`: the
records before it stay intact. A file lock keeps two clients from writing one
section at once.

A tile has one record. A newer record for the same tile (a retried error)
supersedes the older one when read, and :meth:`ResultsLog.compact` rewrites the
file atomically with one line per tile.

Records are :class:`~mhd.contracts.record.TileRecord`-s, one JSON
object per line (:meth:`~mhd.contracts.record.TileRecord.to_json`);
logs written by earlier versions read as they were. In memory a log keeps
only each record's :meth:`~mhd.contracts.record.TileRecord.brief`
(no per-cell arrays: what the run needs), so a section of tens of thousands
of tiles costs a few MB; the file keeps every field (:func:`read_records`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from mhd.contracts.files import RESULTS_NAME, SECTION_MARK
from mhd.contracts.record import TileRecord
from mhd.contracts.verdicts import Verdict

from .portable import lock_file

__all__ = ["ResultsLog", "ResultsWriteError", "SectionLocked", "check_writable", "read_records", "results_folder"]

log = logging.getLogger(__name__)


def results_folder(section: Path, root: str | os.PathLike | None, create: bool = True) -> Path:
    """The folder of a section's results log, client log, lock and report.

    Parameters
    ----------
    section : Path
        The section folder (absolute).
    root : str or Path, optional
        ``--results`` / the ``results`` key: results go to
        ``<root>/<section name>/``. None: the section itself.
    create : bool
        Create the folder (and its :data:`SECTION_MARK`) if needed.

    Raises
    ------
    ValueError
        If the folder already holds the results of another section of the
        same name.
    OSError
        If it cannot be created.
    """
    if not root:
        return section
    folder = Path(root).expanduser().resolve() / section.name
    mark = folder / SECTION_MARK
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    if mark.exists():
        other = mark.read_text(errors="replace").strip()
        if other != str(section):
            raise ValueError(f"{folder} holds the results of {other}, not of {section}: give another --results folder")
    elif create:
        mark.write_text(f"{section}\n")
    return folder


def check_writable(folder: Path, section: Path) -> None:
    """Raise a clear :class:`OSError` when ``folder`` cannot take the results (read-only, no permission).

    A section that is read-only (an archive, another user's mounted
    acquisition) is told to use ``--results``.
    """
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".mhd-check-"):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        if folder == section:
            raise OSError(
                exc.errno,
                f"{section}: cannot write the results here ({why}); give --results DIR (or the config key "
                f"'results') to keep this section's mhd-results.jsonl, log and report in DIR/{section.name}/",
            ) from None
        raise OSError(exc.errno, f"{folder}: cannot write the results there ({why})") from None


class SectionLocked(RuntimeError):
    """Another client holds the section's results log."""


class ResultsWriteError(RuntimeError):
    """A record could not be made durable (disk full, quota, I/O error); the earlier ones are intact."""


def read_records(path: str | Path) -> tuple[dict[str, TileRecord], int]:
    """Records of a results log, the newest per tile, in first-seen order.

    Parameters
    ----------
    path : str or Path
        A ``mhd-results.jsonl`` file (missing means empty).

    Returns
    -------
    records : dict of str to TileRecord
        Tile id -> record.
    lines : int
        Complete record lines read (more than ``len(records)`` when some
        records were superseded).
    """
    path = Path(path)
    if not path.exists():
        return {}, 0
    records: dict[str, TileRecord] = {}
    lines = 0
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            rec = _parse(raw, path, n)
            if rec is not None:
                records[rec.tile] = rec
                lines += 1
    return records, lines


def _parse(raw: bytes, path: Path, n: int) -> TileRecord | None:
    if not raw.endswith(b"\n"):
        log.warning("%s:%d: incomplete last line ignored (client stopped mid-write)", path, n)
        return None
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("%s:%d: unreadable line ignored", path, n)
        return None
    try:
        record = TileRecord.from_json(rec)
    except ValueError:
        log.warning("%s:%d: line without a tile id ignored", path, n)
        return None
    if record.verdict not in Verdict._value2member_map_:
        log.warning("%s:%d: record of %r without a verdict ignored (the tile is scored again)", path, n, record.tile)
        return None
    return record


class ResultsLog:
    """Append-only, crash-safe results log of one section (a context manager).

    Parameters
    ----------
    section : str or Path
        Section folder; the log is ``section/mhd-results.jsonl``.
    fresh : bool
        Start a new log: an existing one is kept as
        ``mhd-results.jsonl.<UTC time>.bak`` (``--rescore``; ``...-1.bak`` and
        so on within one second).

    The section is locked by ``mhd-results.jsonl.lock`` beside the log
    (:func:`mhd.client.portable.lock_file`, released when the process ends).

    Attributes
    ----------
    records : dict of str to TileRecord
        Tile id -> the :meth:`~mhd.contracts.record.TileRecord.brief` of its newest record.

    Raises
    ------
    SectionLocked
        If another client has the log open.
    """

    def __init__(self, section: str | Path, fresh: bool = False) -> None:
        self.path = Path(section) / RESULTS_NAME
        # the lock is on a file of its own, never replaced: compacting or starting afresh replaces the log
        # itself, and a lock on it would be free between the rename and the reopening
        try:
            self._lock: Any = lock_file(self.path.with_name(RESULTS_NAME + ".lock"))
        except BlockingIOError:
            raise SectionLocked(f"{self.path}: another client is writing this section") from None
        try:
            if fresh and self.path.exists() and self.path.stat().st_size:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                backup, n = self.path.with_name(f"{RESULTS_NAME}.{stamp}.bak"), 1
                while backup.exists():  # two fresh starts within a second keep both logs
                    backup, n = self.path.with_name(f"{RESULTS_NAME}.{stamp}-{n}.bak"), n + 1
                os.replace(self.path, backup)  # before the log is opened: Windows replaces no open file
                log.info("previous results kept in %s", backup)
            self._fh = self.path.open("ab+", buffering=0)  # unbuffered: a failed write leaves nothing pending
            self._cut_torn_tail()
            full, self._lines = read_records(self.path)
        except BaseException:
            self.close()  # the lock is not kept by a log that failed to open
            raise
        self.records = {tile: rec.brief() for tile, rec in full.items()}

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> "ResultsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the log and release the lock."""
        fh = getattr(self, "_fh", None)
        if fh is not None and not fh.closed:
            fh.close()
        self._lock.release()

    # --------------------------------------------------------------- writes

    def append(self, record: TileRecord) -> None:
        """Append one record and make it durable (flush + fsync) before returning."""
        data = (json.dumps(record.to_json(), separators=(",", ":"), default=_jsonable) + "\n").encode()
        end = self._fh.seek(0, os.SEEK_END)
        try:
            if self._fh.write(data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._cut(end)
            raise ResultsWriteError(
                f"{self.path}: cannot record the verdict of {record.tile}: {exc.strerror or exc}. "
                f"The {len(self.records)} records written before are intact; free space and run again "
                "to score the tiles without one."
            ) from exc
        self.records[record.tile] = record.brief()
        self._lines += 1

    def extend(self, records: Iterable[TileRecord]) -> None:
        """Append several records (each made durable)."""
        for rec in records:
            self.append(rec)

    @property
    def superseded(self) -> int:
        """Record lines in the file that a newer record of the same tile replaced."""
        return self._lines - len(self.records)

    def compact(self) -> None:
        """Rewrite the log with one line per tile (atomic: temp file, fsync, rename)."""
        if not self.superseded:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            full, _ = read_records(self.path)
            with tmp.open("wb") as out:
                for rec in full.values():
                    out.write((json.dumps(rec.to_json(), separators=(",", ":"), default=_jsonable) + "\n").encode())
                out.flush()
                os.fsync(out.fileno())
            try:
                self._fh.close()  # Windows replaces no open file, this process's own handle included
                os.replace(tmp, self.path)
            finally:
                self._reopen()
        except OSError as exc:  # a full disk; on Windows a reader holding the log open: the log as it is stays valid
            tmp.unlink(missing_ok=True)
            log.warning("%s: not compacted (%s); superseded records are ignored when read", self.path, exc.strerror or exc)
            return
        self._lines = len(self.records)

    # -------------------------------------------------------------- helpers

    def _reopen(self) -> None:
        self._fh = self.path.open("ab+", buffering=0)

    def _cut_torn_tail(self) -> None:
        size = self.path.stat().st_size
        if not size:
            return
        self._fh.seek(0)
        data = self._fh.read()
        end = data.rfind(b"\n") + 1
        if end < size:
            log.warning("%s: dropped an incomplete last record (%d bytes)", self.path, size - end)
            self._fh.truncate(end)
            os.fsync(self._fh.fileno())
        self._fh.seek(0, os.SEEK_END)

    def _cut(self, end: int) -> None:
        """Drop whatever a failed append left after byte ``end`` (best effort:
        a torn tail left behind is dropped when the log is next opened)."""
        try:
            self._fh.truncate(end)
        except OSError as exc:
            log.warning("%s: could not cut a failed record off (%s); it is dropped on the next run", self.path, exc.strerror)
            return
        with contextlib.suppress(OSError):  # the cut is in place; making it durable is best effort
            os.fsync(self._fh.fileno())


def _jsonable(obj: Any) -> Any:
    """JSON fallback for NumPy scalars/arrays and tuples in result dicts."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
