"""Client configuration: defaults < config file < ``MHD_*`` environment < command line.

The file is JSON, ``$MHD_CONFIG`` or else ``~/.config/mhd/config.json``
(``$XDG_CONFIG_HOME`` is honoured). Every key can be overridden by an
environment variable named ``MHD_`` + the key in upper case (``MHD_ENDPOINT``,
``MHD_OOF_K``). :func:`load` records where each value came from, which
``client config`` shows.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mhd.contracts.limits import INLINE_SEND_BYTES, REQUEST_BYTES

from .rule import parse_threshold, thresholds

__all__ = ["KEYS", "Config", "calibrations_dir", "config_dir", "config_path", "legacy_calibration_path", "load", "save_values"]


@dataclass(frozen=True)
class Key:
    """One configuration key: its default, parser and meaning."""

    default: Any
    parse: Callable[[Any], Any]
    help: str


def _str(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


def _float(v: Any) -> float:
    return float(v)


def _int(v: Any) -> int:
    return int(v)


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = str(v).lower()
        if s not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return s

    return parse


#: Every configuration key. The verdict rule's thresholds are defined in :class:`mhd.client.rule.Rule`
#: and explained in :mod:`mhd.client.judge`.
KEYS: dict[str, Key] = {
    "endpoint": Key(None, _str, "Globus Compute endpoint UUID (the GPU endpoint 'mhd-gpu')"),
    "function": Key(None, _str, "registered score_tiles function UUID (client register)"),
    "executor": Key(
        "auto",
        _choice("auto", "local", "globus"),
        "where scoring tasks run: local (a process pool here) or globus (Globus Compute); auto: globus when "
        "endpoint and function are set, else local",
    ),
    "transport": Key(
        "auto", _choice("auto", "inline", "shared", "globus"), "auto: inline for small tiles, else shared/globus when configured"
    ),
    "inline_max_mb": Key(INLINE_SEND_BYTES / 1e6, _float, "largest tile sent inline by transport=auto (MB)"),
    "request_mb": Key(REQUEST_BYTES / 1e6, _float, "tile bytes per inline task (the service limit is 10 MB per request, after base64)"),
    "shared_local": Key(None, _str, "shared transport: local folder the endpoint also sees"),
    "shared_remote": Key("", lambda v: str(v or "").strip("/"), "shared transport: the same folder, relative to the endpoint's data root"),
    "source_collection": Key(None, _str, "globus transport: the instrument's collection UUID"),
    "source_local": Key(None, _str, "globus transport: local folder that is the root of source_path on that collection"),
    "source_path": Key("/", _str, "globus transport: that folder's path on the instrument collection"),
    "dest_collection": Key(None, _str, "globus transport: the endpoint's collection UUID"),
    "dest_path": Key(None, _str, "globus transport: folder on the endpoint collection tiles are copied to"),
    "dest_remote": Key("", lambda v: str(v or "").strip("/"), "globus transport: dest_path relative to the endpoint's data root"),
    "transfer_batch": Key(16, _int, "globus transport: tiles per Transfer task"),
    "transfer_timeout": Key(3600.0, _float, "globus transport: seconds a Transfer task may take; then it is cancelled and its tiles fail"),
    "workers": Key(0, _int, "local executor worker processes (0: one per CPU core, at most 8)"),
    "batch": Key(0, _int, "tiles per scoring task (0: automatic)"),
    "task_timeout": Key(3600.0, _float, "seconds a scoring task may go without a result; then its tiles are recorded as errors"),
    "drain_timeout": Key(3.0, _float, "after Ctrl-C, seconds to wait for the tasks in flight (the rest are scored on the next run)"),
    "results": Key(
        None,
        _str,
        "folder for results: each section's mhd-results.jsonl, log, lock and report go to <results>/<section name>/ (default: the section)",
    ),
    # the verdict rule's thresholds: defaults, limits and help are those of mhd.client.rule.Rule
    **{f.name: Key(f.default, functools.partial(parse_threshold, f), f.metadata["help"]) for f in thresholds()},
    "calibration": Key(
        None,
        _str,
        "default calibration (NAME stored by 'client calibrate --name', or a FILE) for sections not given --calibration or "
        "--relative and not already judged under another rule; unset: the relative rule. submit, watch and report name it",
    ),
    "max_defocus": Key(
        None, lambda v: None if v in (None, "") else float(v), "calibrated rule: largest acceptable |defocus| (series units)"
    ),
}


#: Old key -> its new name, still read from the file and the environment ($MHD_BACKEND).
RENAMED: dict[str, str] = {"backend": "executor"}


def config_dir() -> Path:
    """Folder of the client's files: the folder of ``$MHD_CONFIG``, else ``$XDG_CONFIG_HOME/mhd``."""
    if os.environ.get("MHD_CONFIG"):
        return Path(os.environ["MHD_CONFIG"]).expanduser().parent
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "mhd"


def calibrations_dir() -> Path:
    """Folder of the calibrations stored by name (``client calibrate --name NAME``: ``NAME.json``)."""
    return config_dir() / "calibrations"


def legacy_calibration_path() -> Path:
    """Where versions before named calibrations stored the one calibration they applied to every section."""
    return config_dir() / "calibration.json"


def config_path() -> Path:
    """The configuration file (it may not exist)."""
    if os.environ.get("MHD_CONFIG"):
        return Path(os.environ["MHD_CONFIG"]).expanduser()
    return config_dir() / "config.json"


@dataclass
class Config:
    """Effective configuration.

    Attributes
    ----------
    values : dict of str to Any
        Key -> parsed value.
    sources : dict of str to str
        Key -> ``"default"``, the file path, ``"$MHD_X"`` or ``"command line"``.
    """

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def override(self, **values: Any) -> "Config":
        """Apply command-line values (``None`` means not given)."""
        for key, value in values.items():
            if value is not None:
                self.values[key] = _parse(key, value, "command line")
                self.sources[key] = "command line"
        return self


def _parse(key: str, value: Any, source: str) -> Any:
    try:
        return KEYS[key].parse(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key} from {source}: invalid value {value!r} ({exc})") from None


def load(environ: dict[str, str] | None = None) -> Config:
    """Effective configuration from defaults, the file and the environment.

    Parameters
    ----------
    environ : dict, optional
        Environment (default ``os.environ``).

    Returns
    -------
    Config

    Raises
    ------
    ValueError
        If the file is not a JSON object, has an unknown key, or a value does
        not parse (the message names the key and where it came from).
    """
    environ = os.environ if environ is None else environ
    cfg = Config({k: key.default for k, key in KEYS.items()}, {k: "default" for k in KEYS})
    path = config_path()
    for key, value in _read_file(path).items():
        cfg.values[key] = _parse(key, value, str(path))
        cfg.sources[key] = str(path)
    for key, name in [*((new, f"MHD_{old.upper()}") for old, new in RENAMED.items()), *((k, f"MHD_{k.upper()}") for k in KEYS)]:
        if name in environ:  # a renamed key's old variable first: the new one wins
            cfg.values[key] = _parse(key, environ[name], f"${name}")
            cfg.sources[key] = f"${name}"
    return cfg


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object")
    unknown = set(data) - set(KEYS) - set(RENAMED)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(KEYS)}")
    for old, new in RENAMED.items():  # read the old name; the new one wins when both are there
        if old in data:
            value = data.pop(old)
            data.setdefault(new, value)
    return data


def save_values(**values: Any) -> Path:
    """Store keys in the configuration file (other keys kept; atomic write).

    Parameters
    ----------
    **values
        Keys of :data:`KEYS` and their values.

    Returns
    -------
    Path
        The file written.
    """
    path = config_path()
    data = _read_file(path)
    for key, value in values.items():
        _parse(key, value, "save")
        data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path
