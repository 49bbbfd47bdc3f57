"""The files and folders the client writes into (or beside) a section.

Discovery skips all of them, so nothing the client wrote is ever scored as a tile.
"""

from __future__ import annotations

__all__ = [
    "CALIBRATION_PLOT",
    "LOG_NAME",
    "OWN_DIRS",
    "OWN_FILES",
    "REPORT_DIR",
    "RESULTS_NAME",
    "RULE_CHOICE",
    "SECTION_MARK",
    "SWEEP_PLOT",
    "is_own",
]

#: The results log: one JSON tile record a line (``submit``, ``watch``).
RESULTS_NAME = "mhd-results.jsonl"
#: The log ``submit`` and ``watch`` append to.
LOG_NAME = "mhd-client.log"
#: In a results folder kept outside its section (``--results``): the section's path.
SECTION_MARK = "mhd-section.txt"
#: In a section's results folder: the rule chosen for the section (a calibration's file, or the relative rule), JSON.
RULE_CHOICE = "mhd-rule.json"
#: The folder ``client report`` writes.
REPORT_DIR = "mhd-report"
#: The figure ``client calibrate`` writes into the through-focus series.
CALIBRATION_PLOT = "mhd-calibration.png"
#: The figure ``client focus-sweep`` writes into the sweep's folder.
SWEEP_PLOT = "mhd-focus-sweep.png"

#: Files of the client's own (the results log's rotated or temporary names start with RESULTS_NAME too).
OWN_FILES = frozenset({RESULTS_NAME, LOG_NAME, SECTION_MARK, RULE_CHOICE, CALIBRATION_PLOT, SWEEP_PLOT})
#: Folders of the client's own.
OWN_DIRS = frozenset({REPORT_DIR})


def is_own(parts: tuple[str, ...]) -> bool:
    """Whether a path relative to a section (its ``parts``) is something the client wrote there."""
    if not parts:
        return False
    return parts[0] in OWN_DIRS or parts[-1] in OWN_FILES or parts[-1].startswith(RESULTS_NAME)
