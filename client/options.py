"""What a ``submit`` or ``watch`` run is given: one :class:`RunOptions`, built once by the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .interrupt import Interrupt
from .live import LiveServer
from .rule import Rule

__all__ = ["RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """The options of one run over a section (besides its folder, configuration and console).

    Attributes
    ----------
    rule : Rule
        How verdicts are reached.
    record_rule : bool
        Record ``rule`` as the section's in its results folder once the run holds the section's lock
        (:func:`mhd.client.choice.record`), so that later commands on the section judge by it too.
    params : dict, optional
        Detector parameters sent with each ``score_tiles`` task.
    on_oof : str, optional
        ``--on-oof`` command, run for each out-of-focus tile (:class:`~mhd.client.pipeline.OofHook`).
    results_dir : Path, optional
        Folder of the results log (default: the section).
    transfer_client, compute_client : callable, optional
        Build the authenticated Globus clients; called only when the Globus
        transport / executor is used.
    interrupt : Interrupt, optional
        The caller's Ctrl-C handler (else the run installs its own).
    rescore : bool
        ``submit``: score every tile again, starting a fresh results log.
    show_ok : bool
        ``submit``: print a line for ok tiles too (``watch`` always does).
    poll : float
        ``watch``: seconds between looks at the folder.
    give_up : float
        ``watch``: seconds a stable but incomplete file waits before it is scored (and fails).
    idle_exit : float, optional
        ``watch``: stop after this many seconds without a new or growing tile file,
        once every tile seen is scored; None runs until Ctrl-C.
    serve : LiveServer, optional
        ``watch``: the live page's server, bound by the command line (:class:`~mhd.client.live.LiveServer`).
    """

    rule: Rule
    record_rule: bool = False
    params: dict | None = None
    on_oof: str | None = None
    results_dir: Path | None = None
    transfer_client: Callable[[list[str]], Any] | None = None
    compute_client: Callable[[], Any] | None = None
    interrupt: Interrupt | None = None
    rescore: bool = False
    show_ok: bool = False
    poll: float = 0.25
    give_up: float = 10.0
    idle_exit: float | None = None
    serve: LiveServer | None = None
