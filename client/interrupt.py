"""Ctrl-C for ``submit`` and ``watch``: stop soon, record what was obtained, never a traceback.

A terminal sends SIGINT to its whole foreground process group. The local
engine's workers ignore it (:mod:`mhd.client.executors`); the client handles
it with :class:`Interrupt`:

- while starting (before tiles are scored) the first Ctrl-C raises
  :class:`KeyboardInterrupt`, which unwinds the start-up (nothing is
  recorded yet) and ends the command with status 130;
- once the pipeline runs (:meth:`Interrupt.defer`) the first Ctrl-C only
  sets :attr:`Interrupt.requested`: the pipeline stops submitting, records
  the tasks that finish within ``drain_timeout`` seconds, leaves the others
  for the next run and stops the executor;
- a second Ctrl-C ends the process at once (:func:`abandon`): every verdict
  already recorded is on disk (each record is one ``write`` and an
  ``fsync``), tasks still in flight are left for the next run, worker
  processes are terminated, and the exit status is 130.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["EXIT_INTERRUPTED", "Interrupt", "abandon", "install_early_handler"]

log = logging.getLogger(__name__)

#: Interrupted by the user (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _write(text: str) -> None:
    """Write to stderr without Python's buffers or locks (safe inside a signal handler)."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def abandon(message: str = "interrupted again: stopping now; tiles still in flight are scored on the next run") -> None:
    """End the process at once with status 130, cleanly.

    Restores the terminal's cursor (hidden by the progress bar), terminates
    this process's worker processes and exits without unwinding (which
    could wait for threads or tasks).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream must not stop the exit
            pass
    if os.isatty(2):
        _write("\x1b[?25h")
    _write(f"\n{message}\n")
    try:
        for child in multiprocessing.active_children():
            child.terminate()
    except Exception:  # noqa: BLE001 - best effort: workers also exit once their parent is gone
        pass
    logging.shutdown()
    os._exit(EXIT_INTERRUPTED)


def _early(signum: int, frame: Any) -> None:
    abandon("interrupted")


def install_early_handler() -> None:
    """Ctrl-C before a command has set up its own handling exits 130 at once, quietly.

    For the ``client`` program only (never on import): Python's default
    handler would print a ``KeyboardInterrupt`` traceback from wherever the
    start-up happens to be.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _early)


class Interrupt:
    """SIGINT handling around a ``submit`` or ``watch`` run (a context manager).

    Outside the main thread (where signals cannot be handled) it does
    nothing and Python's own handling stays in place.

    Attributes
    ----------
    requested : bool
        Ctrl-C was pressed.
    deferring : bool
        The first Ctrl-C only sets ``requested`` (the pipeline polls it)
        instead of raising :class:`KeyboardInterrupt`.
    """

    def __init__(self) -> None:
        self.requested = False
        self.deferring = False
        self._saved: Any = None
        self._installed = False

    def __enter__(self) -> "Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._saved = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._saved if self._saved is not None else signal.SIG_DFL)
            self._installed = False

    def defer(self) -> None:
        """From now on the first Ctrl-C only sets :attr:`requested`."""
        self.deferring = True

    def __call__(self) -> bool:
        """True once Ctrl-C was pressed (the pipeline's ``stop`` test)."""
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            abandon()
        self.requested = True
        if not self.deferring:
            raise KeyboardInterrupt
