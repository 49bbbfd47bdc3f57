"""What differs between the platforms the client runs on (Linux, macOS, Windows), in one place.

The endpoint runs on Linux; the client also runs on the PC that drives the
microscope, often Windows. Everything here works on each of them, and uses a
platform's facility only where it has it:

- :data:`STOP_SIGNALS`: what stops a run as Ctrl-C does. SIGINT everywhere;
  SIGTERM and SIGHUP where they exist (POSIX: ``kill``, ``systemctl stop``,
  a closed terminal); SIGBREAK on Windows (Ctrl-Break in a console).
- :func:`blocked`: signals held back while a worker process starts (POSIX
  ``pthread_sigmask``; Windows has no signal mask and delivers console
  events to the client's main thread only).
- :func:`lock_file`: the section's lock, an exclusive lock on a file taken
  without waiting, through :mod:`filelock` (``flock`` on POSIX,
  ``LockFileEx`` on Windows; a lock file's existence where neither exists).
- :func:`held_by_another`: an error that says another program has a file
  open (the acquisition software still writing a tile: Windows refuses to
  open it, a sharing violation), which means "not written yet", not "broken".
- :func:`split_command`: an ``--on-oof`` command line split into its
  arguments as the platform's own shell would (backslashes are path
  separators on Windows, escapes on POSIX).
- :data:`CAN_PIN`: whether worker processes can be given their share of the
  CPUs (``sched_setaffinity``: Linux only).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Iterator

import filelock

__all__ = ["CAN_PIN", "STOP_SIGNALS", "WINDOWS", "blocked", "held_by_another", "lock_file", "split_command", "unblock"]

#: Running on Windows.
WINDOWS = sys.platform == "win32"

#: The signals handled like Ctrl-C, those of them this platform has.
STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, name)
)

#: Whether a process can be restricted to some of the CPUs.
CAN_PIN = hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")

#: Windows' ERROR_SHARING_VIOLATION and ERROR_LOCK_VIOLATION: another process has the file open (or locked).
_SHARING = (32, 33)


@contextlib.contextmanager
def blocked(signums: tuple[int, ...]) -> Iterator[None]:
    """Hold ``signums`` back in this thread for the block (a no-op where there is no signal mask)."""
    if not signums or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def unblock(signums: tuple[int, ...]) -> None:
    """Let ``signums`` through in this thread again (a no-op where there is no signal mask)."""
    if signums and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signums))


def lock_file(path: Path) -> Any:
    """An exclusive lock on ``path`` (created if needed), taken now; release it with ``.release()``.

    Held until released or the process ends (a crashed client leaves no lock
    behind, except where the platform has no file locks at all).

    Raises
    ------
    BlockingIOError
        When another process (or another lock in this one) holds it.
    """
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise BlockingIOError(errno.EWOULDBLOCK, f"{path} is locked") from None
    return lock


def held_by_another(exc: OSError) -> bool:
    """Whether ``exc`` (from opening a file) says another program has the file open: a Windows sharing violation."""
    return getattr(exc, "winerror", None) in _SHARING


def split_command(command: str, windows: bool = WINDOWS) -> list[str]:
    """The arguments of a command line, split once as this platform's shell would, without running a shell.

    POSIX: :func:`shlex.split` (quotes group, a backslash escapes). Windows: spaces split outside double
    quotes, and backslashes stay (``C:\\Tools\\notify.exe "out of focus"``).
    """
    if not windows:
        return shlex.split(command)
    lexer = shlex.shlex(command, posix=False)
    lexer.whitespace_split = True
    lexer.commenters = ""
    return [token[1:-1] if len(token) > 1 and token[0] == token[-1] == '"' else token for token in lexer]
