"""Take away what only POSIX has, in every Python started with this folder on PYTHONPATH.

``tests/unit/test_portable.py`` runs the client's end-to-end tests (those marked
``portable``) a second time with it, so that a use of ``fcntl``, ``pwd``,
``grp``, SIGHUP, signal masks or CPU affinities that Windows lacks fails on
Linux CI (there is no Windows machine here).

Kept: ``filelock`` is imported first, with ``fcntl``: on Windows it locks with
its own Windows implementation, which cannot run here, and a lock that did
not outlive its process (as no real file lock does) is what the tests need.
``termios`` stays too: the tests drive the client through a pseudo-terminal.
Not simulated: POSIX path syntax, fork/exec, and Windows' refusal to open or
replace a file another process holds (``tests/unit/test_portable.py``
simulates that where it matters).
"""

import os
import signal
import sys

if os.environ.get("MHD_WITHOUT_POSIX") == "1":
    import filelock  # noqa: F401  # before fcntl goes: the section's lock is filelock's, a real one on every platform

    for _module in ("fcntl", "pwd", "grp"):  # import fcntl: ModuleNotFoundError, as on Windows
        sys.modules[_module] = None  # type: ignore[assignment]
    for _name in ("SIGHUP", "pthread_sigmask", "SIG_BLOCK", "SIG_UNBLOCK", "SIG_SETMASK"):
        if hasattr(signal, _name):
            delattr(signal, _name)
    for _name in ("sched_setaffinity", "sched_getaffinity"):
        if hasattr(os, _name):
            delattr(os, _name)
