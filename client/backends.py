"""Deprecated name of :mod:`mhd.client.executors` (the task runners were called backends until 0.1).

The old names still resolve, with a :class:`DeprecationWarning`, until 0.2.0,
when this module is removed: ``LocalBackend`` is
:class:`~mhd.client.executors.LocalExecutor`, ``GlobusBackend``
:class:`~mhd.client.executors.GlobusExecutor`, ``EngineBackend``
:class:`~mhd.client.executors.EngineExecutor` and ``Backend``
:class:`~mhd.client.executors.TaskExecutor`; everything else keeps its name.
"""

from __future__ import annotations

import warnings
from typing import Any

from . import executors

#: Old name -> new name in :mod:`mhd.client.executors`.
RENAMED = {"Backend": "TaskExecutor", "EngineBackend": "EngineExecutor", "LocalBackend": "LocalExecutor", "GlobusBackend": "GlobusExecutor"}


def __getattr__(name: str) -> Any:
    new = RENAMED.get(name, name)
    if not hasattr(executors, new):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"mhd.client.backends.{name} is mhd.client.executors.{new}; the old module goes in 0.2.0", DeprecationWarning, stacklevel=2
    )
    return getattr(executors, new)
