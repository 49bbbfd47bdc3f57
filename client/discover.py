"""Find the tiles of a section, in acquisition order.

Acquisition order is the *natural sort* of the tiles' paths relative to the
section folder (``tile_2`` before ``tile_10``; folders before their
contents sort like any other path component). Names are what the microscope
controls and what an operator reads; modification times change when files
are copied or transferred, so they are not used for the order (with the size,
they tell whether a recorded tile was re-imaged since: :class:`Tile`).
"""

from __future__ import annotations

import csv
import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from mhd.contracts.files import is_own
from mhd.contracts.formats import IMAGE_SUFFIXES

__all__ = [
    "Discovery",
    "Tile",
    "discover",
    "is_image_name",
    "is_partial_name",
    "match_names",
    "natural_key",
    "tile_positions",
]

#: Suffixes and prefixes of files still being written (renamed into place when complete).
_PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", "~")
_PARTIAL_PREFIXES = (".",)


_DIGITS = re.compile(r"(\d+)")
_POSITION = re.compile(r"(?:^|[^a-z0-9])r(?:ow)?[_-]?(\d+)[_-]?c(?:ol)?[_-]?(\d+)(?:[^0-9]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Tile:
    """One tile file.

    Attributes
    ----------
    id : str
        Path relative to the section folder, ``/``-separated (the tile id in
        results and in the task sent to the scoring function).
    path : Path
        Absolute path on this machine.
    size : int
        Size in bytes when discovered.
    mtime_ns : int or None
        Modification time (ns since the epoch) when discovered; with
        ``size``, what identifies the version of the file that is scored
        (a tile re-imaged under the same name differs in one or both).
    """

    id: str
    path: Path
    size: int
    mtime_ns: int | None = None


@dataclass
class Discovery:
    """What :func:`discover` found.

    Attributes
    ----------
    tiles : list of Tile
        Image files in acquisition order.
    skipped : list of str
        Relative paths of other files (not images).
    ignored : list of str
        Relative paths of hidden files and files still being written
        (:func:`is_partial_name`: ``.x.png``, ``x.png.part``, ``x.tmp``):
        neither tiles nor skipped until renamed into place.
    """

    tiles: list[Tile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def match_names(names: list[str], pattern: str, what: str) -> dict[str, re.Match]:
    """Match a user's regular expression against each file name (not its folder).

    Parameters
    ----------
    names : list of str
        Tile ids (paths relative to a section).
    pattern : str
        Regular expression, case-insensitive, with at least one group.
    what : str
        What the first group captures, for the error message.

    Returns
    -------
    dict of str to re.Match
        Tile id -> match, for the names that match.

    Raises
    ------
    ValueError
        For an invalid pattern, or one without a capturing group.
    """
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"--pattern {pattern!r}: {exc}") from None
    if rx.groups < 1:
        raise ValueError(f"--pattern {pattern!r} needs a group that captures the {what}")
    return {name: m for name in names if (m := rx.search(Path(name).name))}


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: ``r2_c10`` after ``r2_c9``.

    Parameters
    ----------
    text : str

    Returns
    -------
    tuple
        Alternating lower-cased text and integer parts.
    """
    parts = _DIGITS.split(text)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))


def is_partial_name(name: str) -> bool:
    """True for names that writers use while a file is incomplete (``.tile.png``, ``tile.png.part``)."""
    return name.startswith(_PARTIAL_PREFIXES) or name.lower().endswith(_PARTIAL_SUFFIXES)


def is_image_name(name: str) -> bool:
    """True when ``name`` has a tile suffix and is not a partial-write name."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not is_partial_name(name)


def discover(section: str | Path) -> Discovery:
    """List the tiles under ``section`` (recursively) in acquisition order.

    Parameters
    ----------
    section : str or Path
        Section folder.

    Returns
    -------
    Discovery
        Tiles sorted by :func:`natural_key` of their relative path; other
        files (except the client's own outputs) in ``skipped``, hidden and
        partly written ones in ``ignored``.

    Raises
    ------
    NotADirectoryError
        If ``section`` is not a folder.
    """
    root = Path(section).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{section}: not a folder")
    found = Discovery()
    for path, st in _files(root):
        rel = path.relative_to(root)
        if is_own(rel.parts):
            continue
        if is_partial_name(path.name):
            found.ignored.append(rel.as_posix())
        elif is_image_name(path.name):
            found.tiles.append(Tile(rel.as_posix(), path, st.st_size, st.st_mtime_ns))
        else:
            found.skipped.append(rel.as_posix())
    found.tiles.sort(key=lambda t: natural_key(t.id))
    found.skipped.sort(key=natural_key)
    found.ignored.sort(key=natural_key)
    return found


def _files(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Every regular file under ``root`` (a link to one counts; links to folders are not followed) with its stat.

    A folder or file removed while the walk runs (a microscope's scratch
    folder, a file renamed away) is left out, not an error: ``watch`` walks
    a folder that is being written.
    """
    out = []
    for folder, _, names in os.walk(root, onerror=_vanished_or_raise):
        for name in names:
            path = Path(folder, name)
            try:
                st = path.stat()
            except OSError as exc:  # removed since the folder was listed, a dangling link or a link loop: as Path.is_file
                if exc.errno in _NOT_A_FILE:
                    continue
                raise
            if stat.S_ISREG(st.st_mode):
                out.append((path, st))
    return out


#: stat() errors that mean "no file here" (those Path.is_file() reads as False).
_NOT_A_FILE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


def _vanished_or_raise(exc: OSError) -> None:
    """``os.walk``'s error handler: a folder removed meanwhile is skipped; any other error (EIO, EACCES, a
    stale NFS handle) is raised, so that a listing that failed is never taken for an empty folder."""
    if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        raise exc


def tile_positions(tile_ids: list[str], positions_file: str | Path | None = None) -> dict[str, tuple[int, int]]:
    """Montage position (row, col) of each tile, where known.

    Positions come from ``positions_file`` when given (CSV with columns
    ``tile,row,col``), else from names such as ``tile_r3_c4``, ``r03-c04`` or
    ``row3_col4`` (the last such pattern in the relative path).

    Parameters
    ----------
    tile_ids : list of str
        Tile ids (relative paths).
    positions_file : str or Path, optional

    Returns
    -------
    dict of str to (int, int)
        Only the tiles whose position is known.

    Raises
    ------
    ValueError
        If ``positions_file`` lacks the ``tile``, ``row`` or ``col`` column or
        has a non-integer row/col (the message names the line).
    """
    if positions_file is not None:
        return _read_positions(Path(positions_file), set(tile_ids))
    out = {}
    for tid in tile_ids:
        hits = _POSITION.findall(Path(tid).stem)
        if hits:
            r, c = hits[-1]
            out[tid] = (int(r), int(c))
    return out


def _read_positions(path: Path, wanted: set[str]) -> dict[str, tuple[int, int]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"tile", "row", "col"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need tile,row,col)")
        out = {}
        for line, row in enumerate(reader, start=2):
            try:
                pos = (int(row["row"]), int(row["col"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: row and col must be integers") from None
            if row["tile"] in wanted:
                out[row["tile"]] = pos
    return out
