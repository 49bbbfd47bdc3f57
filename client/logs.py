"""The client's logs: one line a message on the terminal, everything in the section's log, tracebacks in a file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import click

from mhd.contracts.files import LOG_NAME

__all__ = ["OneLine", "SectionLogHandler", "save_traceback", "section_log", "terminal_logging"]


def terminal_logging(verbose: int) -> None:
    """Log to stderr, one line a message: warnings, ``-v`` info, ``-vv`` debug."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr, force=True)
    logging.getLogger("PIL").setLevel(max(level, logging.INFO))  # -vv: our debug lines, not every PNG chunk
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
        handler.setFormatter(OneLine("%(levelname)s: %(message)s"))


def save_traceback() -> str:
    """Write the exception being handled to a new file in the temporary folder; its path."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="mhd-client-", suffix=".traceback.txt")
    with os.fdopen(fd, "w") as fh:
        fh.write(traceback.format_exc())
    return path


class OneLine(logging.Formatter):
    """Terminal format: the message without any traceback (that goes to the section log)."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None}))


class SectionLogHandler(logging.FileHandler):
    """The section's log file. A write that fails (disk full) stops it with one
    line on stderr instead of the logging module's traceback."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); it gets no more lines this run\n")

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            self.failed = True


@contextlib.contextmanager
def section_log(section: Path) -> Iterator[Path]:
    """Append the ``mhd`` loggers (all levels) and every warning to ``section/mhd-client.log``."""

    path = section / LOG_NAME
    try:
        handler = SectionLogHandler(path, encoding="utf-8", errors="backslashreplace")
    except OSError as exc:
        click.echo(f"warning: cannot open {path} ({exc.strerror}); running without a section log", err=True)
        yield path
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours, root = logging.getLogger("mhd"), logging.getLogger()
    saved = ours.level
    ours.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        ours.setLevel(saved)
        handler.close()
