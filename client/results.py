"""The per-section results log: ``mhd-results.jsonl``, one JSON record per tile.

Each verdict is appended, flushed and ``fsync``-ed the moment it is known, so a
client killed at any instant loses at most the record it was writing. That
torn last line is dropped (and cut off the file) when the log is opened again;
its tile is then simply scored again. A file lock keeps two clients from
writing one section at once.

A tile has one record. A newer record for the same tile (a retried error)
supersedes the older one when read, and :meth:`ResultsLog.compact` rewrites the
file atomically with one line per tile.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

from .discover import RESULTS_NAME

__all__ = ["ResultsLog", "SectionLocked", "read_records"]

log = logging.getLogger(__name__)


class SectionLocked(RuntimeError):
    """Another client holds the section's results log."""


def read_records(path: str | Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Records of a results log, the newest per tile, in first-seen order.

    Parameters
    ----------
    path : str or Path
        A ``mhd-results.jsonl`` file (missing means empty).

    Returns
    -------
    records : dict of str to dict
        Tile id -> record.
    lines : int
        Complete record lines read (more than ``len(records)`` when some
        records were superseded).
    """
    path = Path(path)
    if not path.exists():
        return {}, 0
    records: dict[str, dict[str, Any]] = {}
    lines = 0
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            rec = _parse(raw, path, n)
            if rec is not None:
                records[rec["tile"]] = rec
                lines += 1
    return records, lines


def _parse(raw: bytes, path: Path, n: int) -> dict[str, Any] | None:
    if not raw.endswith(b"\n"):
        log.warning("%s:%d: incomplete last line ignored (client stopped mid-write)", path, n)
        return None
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("%s:%d: unreadable line ignored", path, n)
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("tile"), str):
        log.warning("%s:%d: line without a tile id ignored", path, n)
        return None
    return rec


class ResultsLog:
    """Append-only, crash-safe results log of one section (a context manager).

    Parameters
    ----------
    section : str or Path
        Section folder; the log is ``section/mhd-results.jsonl``.
    fresh : bool
        Start a new log: an existing one is kept as
        ``mhd-results.jsonl.<UTC time>.bak`` (``--rescore``).

    Raises
    ------
    SectionLocked
        If another client has the log open.
    """

    def __init__(self, section: str | Path, fresh: bool = False) -> None:
        self.path = Path(section) / RESULTS_NAME
        self._fh = self.path.open("ab+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise SectionLocked(f"{self.path}: another client is writing this section") from None
        if fresh and self.path.stat().st_size:
            backup = self.path.with_name(f"{RESULTS_NAME}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.bak")
            os.replace(self.path, backup)
            self._reopen()
            log.info("previous results kept in %s", backup)
        self._cut_torn_tail()
        self.records, self._lines = read_records(self.path)

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> "ResultsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock and close the file."""
        if not self._fh.closed:
            self._fh.close()

    # --------------------------------------------------------------- writes

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and make it durable (flush + fsync) before returning.

        Parameters
        ----------
        record : dict
            JSON-serialisable, with a ``tile`` id.
        """
        line = json.dumps(record, separators=(",", ":"), default=_jsonable) + "\n"
        self._fh.write(line.encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records[record["tile"]] = record
        self._lines += 1

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
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
        with tmp.open("wb") as out:
            for rec in self.records.values():
                out.write((json.dumps(rec, separators=(",", ":"), default=_jsonable) + "\n").encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        old = self._fh
        self._reopen()
        old.close()
        self._lines = len(self.records)

    # -------------------------------------------------------------- helpers

    def _reopen(self) -> None:
        self._fh = self.path.open("ab+")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

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
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self._fh.seek(0, os.SEEK_END)


def _jsonable(obj: Any) -> Any:
    """JSON fallback for NumPy scalars/arrays and tuples in result dicts."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
