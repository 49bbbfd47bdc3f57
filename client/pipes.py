"""Standard output that outlives its reader: ``client submit | head`` still scores the whole section.

When the program reading our output exits (``head``, ``less`` quit early),
writes to standard output raise :class:`BrokenPipeError`. A run must not die
of that: its verdicts go to the results log, which is what counts. The first
refused write sends standard output to ``/dev/null`` for the rest of the run
and says so once on standard error.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["PipeSafeStdout", "install"]

log = logging.getLogger(__name__)


class PipeSafeStdout:
    """A text stream that forwards to ``stream`` until its reader goes away, then to ``/dev/null``."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.closed_reader = False

    def _reader_gone(self) -> None:
        if self.closed_reader:
            return
        self.closed_reader = True
        try:  # the file descriptor too: the interpreter's final flush must not fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        self._stream = open(os.devnull, "w")  # lives as long as the program
        log.warning("standard output was closed by its reader; the run goes on, its verdicts are in the results log")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


def install() -> None:
    """Make ``sys.stdout`` a :class:`PipeSafeStdout` (the ``client`` program only, never on import)."""
    if not isinstance(sys.stdout, PipeSafeStdout) and sys.stdout is not None:
        sys.stdout = PipeSafeStdout(sys.stdout)
