"""Take away what only POSIX has, in every Python started with this folder on PYTHONPATH.

``tests/unit/test_portable.py`` runs the client's end-to-end tests a second time
with it, so that a use of ``fcntl``, SIGHUP, signal masks or CPU affinities
that Windows lacks fails on Linux CI (there is no Windows machine here).
What it cannot take away: POSIX path syntax, fork/exec, mandatory file
locking semantics (Windows refuses to open or replace a file another
process holds; ``tests/unit/test_portable.py`` simulates that where it matters).
"""

import os
import signal
import sys
import warnings

if os.environ.get("MHD_WITHOUT_POSIX") == "1":
    for _module in ("fcntl", "pwd", "grp", "termios"):  # import fcntl: ModuleNotFoundError, as on Windows
        sys.modules[_module] = None  # type: ignore[assignment]
    for _name in ("SIGHUP", "pthread_sigmask", "SIG_BLOCK", "SIG_UNBLOCK", "SIG_SETMASK"):
        if hasattr(signal, _name):
            delattr(signal, _name)
    for _name in ("sched_setaffinity", "sched_getaffinity"):
        if hasattr(os, _name):
            delattr(os, _name)
    # without fcntl, filelock (the section's lock) falls back to a lock file's existence and says so; Windows
    # has its own file locks (msvcrt), which this simulation cannot give
    warnings.filterwarnings("ignore", message="only soft file lock is available")
