"""Which rule judges a section: the relative rule, or the calibration chosen for that section.

A calibration holds for one microscope and imaging setting, so none is applied to a section it was not chosen
for. ``client calibrate --name NAME`` stores one as ``<config dir>/calibrations/NAME.json``
(:func:`named_path`); ``--calibration NAME`` (or ``--calibration FILE``) on ``submit``, ``watch`` or ``report``
chooses it. ``submit`` and ``watch`` record the rule they judge a section by in the section's results folder
(:data:`mhd.contracts.files.RULE_CHOICE`, :func:`record`), and later commands on that section use it again
(:func:`choose`):

1. ``--relative`` or ``--calibration NAME|FILE``: that rule (on a section recorded under another, the new one wins:
   ``submit``/``watch`` record it and say what it replaced; ``report`` uses it for that report only);
2. else the rule recorded for the section;
3. else the configuration key ``calibration`` (NAME or FILE): a default the user set, named as such every time;
4. else the relative rule. A ``calibration.json`` beside the configuration file (where earlier versions stored the
   one calibration applied to every section) is not applied: a note says how to use it.

The configuration key ``max_defocus`` overrides a calibration's own limit, as before.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mhd.contracts.files import RESULTS_NAME, RULE_CHOICE

from .calibration import Calibration
from .config import calibrations_dir, legacy_calibration_path
from .rule import Rule, thresholds

__all__ = ["Choice", "check_name", "choose", "locate", "named_path", "read_choice", "record", "stored_names"]

#: A calibration's name: a letter or digit, then letters, digits, ``.``, ``_`` and ``-`` (64 at most).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """``name`` if it can name a calibration (:data:`NAME`: it becomes a file name); else ValueError."""
    if not NAME.fullmatch(name):
        raise ValueError(
            f"calibration name {name!r}: use a letter or digit, then letters, digits, '.', '_' or '-' (at most 64), e.g. zeiss-5kx"
        )
    return name


def named_path(name: str) -> Path:
    """Where the calibration ``name`` is stored: ``<config dir>/calibrations/<name>.json`` (ValueError: a bad name)."""
    return calibrations_dir() / f"{check_name(name)}.json"


def stored_names() -> list[str]:
    """The names of the calibrations stored in ``<config dir>/calibrations``, sorted."""
    folder = calibrations_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def locate(spec: str) -> tuple[Path, str]:
    """The file of ``--calibration NAME|FILE`` and the name it is known by ("" for a file given by path).

    A value with a path separator or ending in ``.json`` is a FILE; anything else is a NAME stored by
    ``client calibrate --name``.

    Raises
    ------
    ValueError
        A bad name, or no such calibration (the message lists the stored names and how to make one).
    """
    if os.sep in spec or "/" in spec or spec.endswith(".json"):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"calibration file {path} does not exist")
        return path, ""
    path = named_path(spec).resolve()
    if not path.is_file():
        names = stored_names()
        known = f"stored: {', '.join(names)}" if names else f"none stored in {path.parent}"
        raise ValueError(f"no calibration named '{spec}' ({known}); make it with 'client calibrate --dir SERIES --name {spec}'")
    return path, spec


@dataclass(frozen=True)
class Choice:
    """The rule recorded for a section (the JSON of :data:`~mhd.contracts.files.RULE_CHOICE`).

    Attributes
    ----------
    calibration : str, optional
        The calibration's file (absolute); None: the relative rule.
    name : str
        Its name ("" for a file given by path).
    fitted : str
        When it was fitted (:attr:`Calibration.fitted`), to tell a later fit under the same name.
    chosen : str
        When the section was first judged by it (ISO 8601).
    """

    calibration: str | None
    name: str = ""
    fitted: str = ""
    chosen: str = ""

    @property
    def label(self) -> str:
        """The rule in a few words: ``calibration 'NAME'``, ``calibration FILE`` or ``the relative rule``."""
        return _label(self.calibration, self.name)


def _label(path: str | None, name: str) -> str:
    if path is None:
        return "the relative rule"
    return f"calibration '{name}'" if name else f"calibration {path}"


def read_choice(folder: Path) -> Choice | None:
    """The rule recorded in a section's results folder, or None where none is (ValueError: a damaged file)."""
    path = folder / RULE_CHOICE
    try:
        data = json.loads(path.read_text())
        return Choice(**data)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path}: not a rule choice ({exc}); delete it and choose with --calibration NAME|FILE or --relative") from None


def record(folder: Path, rule: Rule) -> Path | None:
    """Record ``rule`` as the section's (atomic write); the file is kept as it is when it already names this rule.

    Returns the file written, None when it was kept.
    """
    cal = rule.calibration
    choice = Choice(rule.calibration_path if cal is not None else None, cal.name if cal else "", cal.fitted if cal else "")
    old = read_choice(folder)
    if old is not None and (old.calibration, old.fitted) == (choice.calibration, choice.fitted):
        return None
    path = folder / RULE_CHOICE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(Choice(**{**asdict(choice), "chosen": _now()})), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def relative_rule(cfg: Any, origin: str = "") -> Rule:
    """The relative rule with the configuration's thresholds."""
    return Rule(origin=origin, **{f.name: cfg[f.name] for f in thresholds()})


def calibrated_rule(cfg: Any, path: Path, origin: str = "") -> Rule:
    """The rule of the calibration in ``path``; the configuration's ``max_defocus`` overrides the calibration's own.

    Raises
    ------
    ValueError
        The file is missing or not a calibration.
    """
    if not path.is_file():
        raise ValueError(f"calibration file {path} does not exist")
    cal = Calibration.load(path)
    if cfg["max_defocus"] is not None:
        cal = Calibration(**{**asdict(cal), "max_defocus": cfg["max_defocus"]})
    return Rule(calibration=cal, calibration_path=str(path), origin=origin, **{f.name: cfg[f.name] for f in thresholds()})


def choose(cfg: Any, folder: Path | None, given: str | None = None, relative: bool = False, report: bool = False) -> tuple[Rule, list[str]]:
    """The rule that judges the section whose results folder is ``folder`` (None: no section), and notes to show.

    ``given`` is ``--calibration NAME|FILE``, ``relative`` ``--relative``; ``report`` says the choice is for one
    report only (``client report`` does not record it). The notes say what an explicit choice replaced, that a
    calibration was fitted again since the section was judged by it, or that an earlier version's
    ``calibration.json`` is not applied.

    Raises
    ------
    ValueError
        A bad name, a missing calibration (given, recorded or configured), a file that is not one.
    """
    recorded = read_choice(folder) if folder is not None else None
    if relative or given:
        if relative:
            rule = relative_rule(cfg, "chosen with --relative" + (" for this report only" if report else ""))
        else:
            path, name = locate(str(given))
            rule = calibrated_rule(cfg, path, "chosen with --calibration" + (" for this report only" if report else ""))
        return rule, _replaced(folder, recorded, rule, report)
    if recorded is not None:
        return _recorded(cfg, recorded)
    if cfg["calibration"]:
        path, _ = locate(cfg["calibration"])
        return calibrated_rule(cfg, path, f"the configured default (config 'calibration', from {cfg.sources['calibration']})"), []
    legacy = legacy_calibration_path()
    notes = []
    if legacy.is_file():
        notes.append(
            f"{legacy} (stored by an earlier version) is no longer applied to every section: use it with --calibration {legacy}, "
            f"or move it to {calibrations_dir()}{os.sep}NAME.json and use --calibration NAME"
        )
    return relative_rule(cfg, "no calibration chosen for this section" if folder is not None else ""), notes


def _recorded(cfg: Any, recorded: Choice) -> tuple[Rule, list[str]]:
    """The rule recorded for a section (a missing calibration file: ValueError naming it)."""
    since = f" on {recorded.chosen[:10]}" if recorded.chosen else ""
    if recorded.calibration is None:  # judged relative from its first run (no calibration chosen then): kept so
        return relative_rule(cfg, f"as this section was first judged{since} (--calibration NAME to choose one)"), []
    path = Path(recorded.calibration)
    if not path.is_file():
        raise ValueError(
            f"this section was judged by {recorded.label} ({path}), which is missing: restore it, or choose with "
            "--calibration NAME|FILE or --relative"
        )
    rule = calibrated_rule(cfg, path, f"as recorded for this section{since}")
    notes = []
    cal = rule.calibration
    if cal is not None and recorded.fitted and cal.fitted != recorded.fitted:
        notes.append(
            f"{recorded.label} was fitted again ({cal.fitted or 'date not recorded'}) since this section was "
            f"judged by it (fit of {recorded.fitted}): the tiles already recorded keep their verdicts (--rescore judges them again)"
        )
    return rule, notes


def _replaced(folder: Path | None, recorded: Choice | None, rule: Rule, report: bool) -> list[str]:
    """A note when an explicit choice differs from the rule recorded for a section that has verdicts."""
    new = rule.calibration_path if rule.calibration is not None else None
    if folder is None or recorded is None or recorded.calibration == new or not _has_results(folder):
        return []
    label = _label(new, rule.calibration.name if rule.calibration else "")
    if report:
        return [f"{label} for this report only: the section's verdicts were judged by {recorded.label}"]
    return [
        f"{label} replaces {recorded.label} recorded for this section: the tiles already recorded keep their verdicts "
        "(--rescore judges them all again)"
    ]


def _has_results(folder: Path) -> bool:
    """Whether the folder holds a results log with verdicts in it."""
    try:
        return (folder / RESULTS_NAME).stat().st_size > 0
    except OSError:
        return False
