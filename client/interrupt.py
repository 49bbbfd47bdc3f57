"""Ctrl-C, SIGTERM and SIGHUP for ``submit`` and ``watch``: stop soon, record what was obtained, never a traceback.

A terminal sends SIGINT to its whole foreground process group; ``systemctl
stop`` sends SIGTERM to the whole control group (``timeout`` and ``kill``
send it to the client); a closed terminal (ssh, tmux) sends SIGHUP. The
local engine's workers ignore all three (:mod:`mhd.client.executors`: the
client stops them); the client handles them alike with :class:`Interrupt`:

- while starting (before tiles are scored) the first signal raises
  :class:`Stopped` (a :class:`KeyboardInterrupt`), which unwinds the
  start-up (nothing is recorded yet) and ends the command with status
  128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP);
- once the pipeline runs (:meth:`Interrupt.defer`) the first signal only
  sets :attr:`Interrupt.requested`: the pipeline stops submitting, records
  the tasks that finish within ``drain_timeout`` seconds, judges and records
  the verdicts held for the section baseline, leaves the other tasks for the
  next run and stops the executor;
- a second signal raises :class:`Abandoned` (never inside the recording of
  a verdict, see :meth:`Interrupt.shield`): the verdicts held for the
  baseline are judged and recorded, then the process ends at once
  (:func:`abandon`): tasks still in flight are left for the next run and
  worker processes are killed. A third signal ends it without that.

A signal that the client was started ignoring (``nohup``) stays ignored.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from typing import Any, Iterator

from .portable import STOP_SIGNALS

__all__ = [
    "EXIT_INTERRUPTED",
    "SIGNALS",
    "Abandoned",
    "Interrupt",
    "Stopped",
    "abandon",
    "exit_code",
    "ignored_note",
    "install_early_handler",
    "stopped_by",
]

log = logging.getLogger(__name__)

#: :func:`abandon` has begun: a signal handled meanwhile ends the process at once.
_abandoning = False

#: Interrupted by the user (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

#: The signals handled like Ctrl-C (those this platform has: :data:`mhd.client.portable.STOP_SIGNALS`).
SIGNALS: tuple[int, ...] = STOP_SIGNALS


def exit_code(signum: int) -> int:
    """The conventional exit status after signal ``signum``: 128 + its number."""
    return 128 + int(signum)


def stopped_by(signum: int) -> str:
    """A few words for what signal ``signum`` means here."""
    if signum == signal.SIGINT:
        return "interrupted"
    words = {"SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP)", "SIGBREAK": "stopped (Ctrl-Break)"}
    return next((w for name, w in words.items() if signum == getattr(signal, name, None)), f"stopped by signal {signum}")


class Stopped(KeyboardInterrupt):
    """The first stop signal, before the pipeline runs (``signum``: which)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


class Abandoned(BaseException):
    """A second stop signal: record the held verdicts and end now (``signum``: the first signal's)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


def _write(text: str) -> None:
    """Write to stderr without Python's buffers or locks (safe inside a signal handler)."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def abandon(
    message: str = "interrupted again: stopping now; tiles still in flight are scored on the next run", status: int = EXIT_INTERRUPTED
) -> None:
    """End the process at once with ``status`` (default 130), cleanly.

    Restores the terminal's cursor (hidden by the progress bar), kills
    this process's worker processes (they ignore SIGINT, SIGTERM and SIGHUP),
    unlinks their semaphores and exits without unwinding (which could wait
    for threads or tasks). A signal that arrives meanwhile (the third Ctrl-C)
    ends the process at once.
    """
    global _abandoning
    if _abandoning:
        os._exit(status)
    _abandoning = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not stop the exit
            pass
    if os.isatty(2):
        _write("\x1b[?25h")
    _write(f"\n{message}\n")
    try:
        for child in multiprocessing.active_children():
            child.kill()
    except Exception:  # best effort: workers also exit once their parent is gone
        pass
    _release_semaphores()
    logging.shutdown()
    os._exit(status)


def _release_semaphores(timeout: float = 1.0) -> None:
    """Unlink the worker pool's named semaphores, as a normal exit does, before :func:`os._exit`.

    ``os._exit`` skips multiprocessing's exit finalizers, so its resource
    tracker found the pool's semaphores still registered and printed "There
    appear to be 6 leaked semaphore objects" on the terminal after every
    second Ctrl-C. Only the semaphores' own finalizers run (unlink, then
    unregister from the tracker), in a thread waited for at most ``timeout``
    seconds: should the interrupted main thread hold the tracker's lock, the
    exit goes on and the tracker unlinks them itself (with its warning).
    """
    from multiprocessing import synchronize, util

    def release() -> None:
        for finalizer in list(util._finalizer_registry.values()):
            if getattr(finalizer, "_callback", None) is synchronize.SemLock._cleanup:
                try:
                    finalizer()
                except Exception:  # one that fails is the tracker's to clean up
                    pass

    runner = threading.Thread(target=release, name="mhd-release-semaphores", daemon=True)
    runner.start()
    runner.join(timeout)


def _detach_hung_up_terminal() -> None:
    """After SIGHUP: point stdout and stderr at ``/dev/null`` where they were a terminal that is now gone.

    A closed ssh or tmux session leaves the client writing to a hung-up
    terminal, where every write fails (EIO); the drain, the records and the
    exit status must not depend on the messages reaching anyone. A terminal
    still there (SIGHUP sent by ``kill``) is kept.
    """
    for fd in (1, 2):
        try:
            os.fstat(fd)
            if os.isatty(fd):
                continue
            mode = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
            if not (mode.startswith("/dev/pts/") or mode.startswith("/dev/tty")):
                continue  # a file or a pipe (a journal): not a terminal at all
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        except OSError:
            pass


def _early(signum: int, frame: Any) -> None:
    if signum == getattr(signal, "SIGHUP", None):
        _detach_hung_up_terminal()
    abandon(stopped_by(signum), exit_code(signum))


def _ignored(signum: int) -> bool:
    """Whether the process was started ignoring ``signum`` (``nohup``, a background job)."""
    return signal.getsignal(signum) is signal.SIG_IGN


def ignored_note() -> str | None:
    """A line for the header when Ctrl-C cannot stop this run, else None.

    A process started ignoring SIGINT (a background job of a script, ``cmd &``
    without job control) keeps ignoring it; the operator is told which
    signal still stops it cleanly.
    """
    if not hasattr(signal, "SIGINT") or not _ignored(signal.SIGINT):
        return None
    live = [s for s in SIGNALS if s != signal.SIGINT and not _ignored(s)]
    how = (
        f"kill -{signal.Signals(live[0]).name.removeprefix('SIG')} {os.getpid()}"
        if live
        else "nothing but kill -KILL (tasks in flight are lost)"
    )
    return f"Ctrl-C is ignored here (started with SIGINT ignored, as a background job is): stop it with {how}"


def install_early_handler() -> None:
    """Ctrl-C, SIGTERM or SIGHUP before a command has set up its own handling exits at once, quietly.

    For the ``client`` program only (never on import): Python's default
    handling would print a ``KeyboardInterrupt`` traceback from wherever the
    start-up happens to be (SIGINT), or end without a word (SIGTERM, SIGHUP).
    The status is 128 + the signal's number.
    """
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            if not _ignored(signum):
                signal.signal(signum, _early)


class Interrupt:
    """Handling of Ctrl-C, SIGTERM and SIGHUP around a ``submit`` or ``watch`` run (a context manager).

    Outside the main thread (where signals cannot be handled) it does
    nothing and Python's own handling stays in place.

    Attributes
    ----------
    requested : bool
        A stop signal arrived.
    signum : int or None
        The first stop signal (``signal.SIGINT``, ``SIGTERM``, ``SIGHUP``).
    deferring : bool
        The first signal only sets ``requested`` (the pipeline polls it)
        instead of raising :class:`Stopped`.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.deferring = False
        self.abandoning = False
        self._saved: dict[int, Any] = {}
        self._shielded = 0
        self._abandon_pending = False

    def __enter__(self) -> "Interrupt":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                if not _ignored(signum):
                    self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, saved in self._saved.items():
            signal.signal(signum, saved if saved is not None else signal.SIG_DFL)
        self._saved = {}

    def defer(self) -> None:
        """From now on the first signal only sets :attr:`requested`."""
        self.deferring = True

    def __call__(self) -> bool:
        """True once a stop signal arrived (the pipeline's ``stop`` test)."""
        return self.requested

    @property
    def status(self) -> int:
        """Exit status for the signal received: 128 + its number (130 without one)."""
        return exit_code(self.signum) if self.signum is not None else EXIT_INTERRUPTED

    @contextlib.contextmanager
    def shield(self) -> Iterator[None]:
        """A second signal waits for the end of this block (recording a verdict) before raising :class:`Abandoned`."""
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1
            if not self._shielded and self._abandon_pending:
                self._abandon_pending = False
                raise Abandoned(self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == getattr(signal, "SIGHUP", None):
            _detach_hung_up_terminal()
        if self.abandoning:
            abandon(f"{stopped_by(self.signum or signum)} again: stopping now", self.status)
        if self.requested:
            if not self.deferring:
                abandon(f"{stopped_by(self.signum or signum)} again: stopping now", self.status)
            self.abandoning = True
            if self._shielded:
                self._abandon_pending = True
                return
            raise Abandoned(self.signum or signum)
        self.requested = True
        self.signum = signum
        if not self.deferring:
            raise Stopped(signum)
