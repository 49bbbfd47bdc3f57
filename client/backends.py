"""Deprecated name of :mod:`mhd.client.executors` (the task runners were called backends until 0.1;
what executors shared has since moved to :mod:`mhd.client.tasks` and :mod:`mhd.client.workers`).

The old names still resolve, with a :class:`DeprecationWarning`, until 0.2.0,
when this module is removed: ``LocalBackend`` is
:class:`~mhd.client.executors.LocalExecutor`, ``GlobusBackend``
:class:`~mhd.client.executors.GlobusExecutor`, ``EngineBackend``
:class:`~mhd.client.executors.EngineExecutor` and ``Backend``
:class:`~mhd.client.tasks.TaskExecutor`; everything else keeps its name.
"""

from __future__ import annotations

import warnings
from typing import Any

from . import executors, tasks, workers

#: Old name -> new name (in :mod:`mhd.client.executors` or :mod:`mhd.client.tasks`).
RENAMED = {"Backend": "TaskExecutor", "EngineBackend": "EngineExecutor", "LocalBackend": "LocalExecutor", "GlobusBackend": "GlobusExecutor"}


def __getattr__(name: str) -> Any:
    new = RENAMED.get(name, name)
    home = next((module for module in (executors, tasks, workers) if new in module.__all__), None)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"mhd.client.backends.{name} is {home.__name__}.{new}; the old module goes in 0.2.0", DeprecationWarning, stacklevel=2)
    return getattr(home, new)
