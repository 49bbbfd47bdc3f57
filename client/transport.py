"""How tiles reach the scoring function: inline, shared storage, or Globus Transfer.

A transport turns tiles into *staged batches*: the list a ``score_tiles`` task
receives (inline ``{"name", "data"}`` dicts, or paths relative to the
endpoint's data root) plus the error records of tiles that could not be
staged. :meth:`Transport.stage` is a generator; it yields ``None`` when nothing
is ready yet (a Globus Transfer still running) so the caller can collect
results meanwhile: transfer and scoring overlap.
"""

from __future__ import annotations

import abc
import base64
import logging
import os
import posixpath
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mhd.contracts.limits import REQUEST_BYTES
from mhd.contracts.record import TileRecord

from .discover import Tile

__all__ = [
    "DiskTransport",
    "GlobusTransport",
    "InlineTransport",
    "SharedTransport",
    "Staged",
    "Transport",
    "choose_transport",
    "read_in_section",
]

log = logging.getLogger(__name__)

MB = 1_000_000


@dataclass
class Staged:
    """One scoring task's worth of tiles.

    Attributes
    ----------
    tiles : dict of str to Tile
        Payload id (as ``score_tiles`` will report it) -> tile.
    payload : list
        What ``score_tiles`` receives, in order.
    failed : list of TileRecord
        Error records of tiles that could not be staged.
    """

    tiles: dict[str, Tile] = field(default_factory=dict)
    payload: list = field(default_factory=list)
    failed: list[TileRecord] = field(default_factory=list)


def _failed(tile: Tile, message: str) -> TileRecord:
    return TileRecord.failed(tile.id, message)


def read_in_section(tile: Tile, section: str | Path) -> bytes:
    """The bytes of a discovered tile, opened only inside its section.

    The scoring function's own :func:`mhd.functions.worker.scoring.open_in_root`, with the section as the data
    root: what the local workers do with each tile of ``client submit`` (the disk transport). A tile whose real
    location (symbolic links resolved) is outside ``section``, or that is no longer a non-empty regular file, is
    refused with the workers' message, whatever the transport. Where the platform has no ``O_NOFOLLOW``
    (Windows), the same check of the real location, then a plain open of it.

    Parameters
    ----------
    tile : Tile
        A tile that :func:`mhd.client.discover.discover` found in ``section`` (its ``id`` is relative to it).
    section : str or Path
        The section folder.

    Raises
    ------
    mhd.functions.worker.tileio.TileError
        A ``ValueError`` saying why, without the section's path.
    """
    from mhd.functions.worker.scoring import open_in_root  # NumPy and the detector: not for every command

    root = Path(os.path.realpath(section))
    if hasattr(os, "O_NOFOLLOW"):
        with open_in_root(tile.id, root) as fh:
            return fh.read()
    return _read_in_root_portably(tile.id, root)


def _read_in_root_portably(rel: str, root: Path) -> bytes:
    """:func:`read_in_section` without ``O_NOFOLLOW`` and ``O_NONBLOCK``: the real location checked, then opened."""
    from mhd.functions.worker.tileio import TileError

    real = os.path.realpath(os.path.join(root, rel))
    try:
        inside = os.path.commonpath([real, str(root)]) == str(root)
    except ValueError:  # another drive
        inside = False
    if ".." in Path(rel).parts or not inside:
        raise TileError("path resolves outside the data root (symbolic link?): refused")
    try:
        with open(real, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise TileError("not a regular file: refused")
            data = fh.read()
    except FileNotFoundError:
        raise TileError("no such file under the data root") from None
    except OSError as exc:
        raise TileError(f"cannot open: {exc.strerror}") from None
    if not data:
        raise TileError("empty file (0 bytes)")
    return data


class Transport(abc.ABC):
    """Base: ``batch`` tiles per scoring task; subclasses implement :meth:`stage`."""

    name = "base"
    #: Seconds the caller may wait for results between two ``None`` yields.
    poll = 0.0

    def __init__(self, batch: int) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.batch = batch

    @abc.abstractmethod
    def stage(self, tiles: list[Tile]) -> Iterator[Staged | None]:
        """Yield a :class:`Staged` task as soon as its tiles are ready, or None while waiting."""


class InlineTransport(Transport):
    """Tile bytes inside the task; each task's tiles stay under ``request_bytes``.

    The bytes travel base64-encoded (``{"name": id, "data": str}``): task
    arguments are serialized as JSON (``JSONData``), which has no bytes type.

    Parameters
    ----------
    batch : int
        At most this many tiles per task.
    request_bytes : int
        Raw tile bytes per task. The service takes 10 MB per request and
        base64 grows data by 4/3: 6 MB raw is 8 MB sent.
    hint : str
        What to do about a larger tile (the working option), appended to its error.
    root : str or Path, optional
        The section the tiles were discovered in: each is read with :func:`read_in_section`, so a tile that
        resolves outside it (a symbolic link) fails alone, as it does with the disk and shared transports.
        None: each tile's path is read as it is.
    """

    name = "inline"

    def __init__(
        self, batch: int, request_bytes: int = REQUEST_BYTES, hint: str = "use --transport shared or globus", root: str | Path | None = None
    ) -> None:
        super().__init__(batch)
        self.request_bytes = request_bytes
        self.hint = hint
        self.root = root

    def stage(self, tiles: list[Tile]) -> Iterator[Staged]:
        cur, size = Staged(), 0
        for tile in tiles:
            try:
                data = tile.path.read_bytes() if self.root is None else read_in_section(tile, self.root)
            except OSError as exc:
                cur.failed.append(_failed(tile, f"cannot read: {exc.strerror or exc}"))
                continue
            except ValueError as exc:  # read_in_section's refusal (TileError)
                cur.failed.append(_failed(tile, str(exc)))
                continue
            if len(data) > self.request_bytes:
                cur.failed.append(
                    _failed(
                        tile,
                        f"{len(data) / MB:.1f} MB is over the inline limit of {self.request_bytes / MB:g} MB "
                        f"per task (request_mb); {self.hint}",
                    )
                )
                continue
            if cur.payload and (len(cur.payload) >= self.batch or size + len(data) > self.request_bytes):
                yield cur
                cur, size = Staged(), 0
            cur.tiles[tile.id] = tile
            cur.payload.append({"name": tile.id, "data": base64.b64encode(data).decode("ascii")})
            size += len(data)
        if cur.payload or cur.failed:
            yield cur


class SharedTransport(Transport):
    """The endpoint sees the same storage: send paths, mapped by prefix.

    Parameters
    ----------
    batch : int
    local_root : str or Path
        Folder on this machine that the endpoint also sees.
    remote_prefix : str
        The same folder relative to the endpoint's data root (``""``: it is
        the data root).
    """

    name = "shared"

    def __init__(self, batch: int, local_root: str | Path, remote_prefix: str = "") -> None:
        super().__init__(batch)
        self.local_root = Path(local_root).expanduser().resolve()
        self.remote_prefix = remote_prefix.strip("/")

    def remote_id(self, path: Path) -> str:
        """Path of a local file relative to the endpoint's data root.

        Raises
        ------
        ValueError
            If ``path`` is not under ``local_root``.
        """
        rel = Path(path).resolve().relative_to(self.local_root).as_posix()
        return posixpath.join(self.remote_prefix, rel) if self.remote_prefix else rel

    def stage(self, tiles: list[Tile]) -> Iterator[Staged]:
        cur = Staged()
        for tile in tiles:
            try:
                rid = self.remote_id(tile.path)
            except ValueError:
                cur.failed.append(_failed(tile, f"not under the shared folder {self.local_root}"))
                continue
            if len(cur.payload) >= self.batch:
                yield cur
                cur = Staged()
            cur.tiles[rid] = tile
            cur.payload.append(rid)
        if cur.payload or cur.failed:
            yield cur


class DiskTransport(SharedTransport):
    """The local engine reads each tile from disk itself: paths relative to the section.

    Nothing crosses a network, so no size limit applies here: any tile up to
    the function's ``MHD_MAX_PIXELS`` is scored. The local workers' data root
    is ``local_root`` (the section).
    """

    name = "disk"

    def remote_id(self, path: Path) -> str:
        """Path of a tile relative to the section (symbolic links are not followed here)."""
        return Path(path).relative_to(self.local_root).as_posix()


@dataclass
class _Transfer:
    task_id: str
    tiles: list[Tile]
    remote: list[str]
    warned: bool = False
    started: float = field(default_factory=time.monotonic)
    checked: float | None = None  # when its status was last asked for (None: not yet)


class GlobusTransport(Transport):
    """Globus Transfer to the endpoint's collection, checksum-verified.

    Tiles go in Transfer tasks of ``transfer_batch`` tiles, at most
    ``max_active`` running at once; a task's tiles are scored as soon as it
    succeeds, while later tasks are still moving. A task that fails, or has
    not succeeded ``deadline`` seconds after submission (stalled, paused, or
    its status unknown), fails its tiles with a message naming it; an
    overdue task is cancelled.

    Parameters
    ----------
    batch : int
        Tiles per scoring task.
    transfer_client : globus_sdk.TransferClient
    source_collection, dest_collection : str
        Collection UUIDs (instrument, endpoint).
    source_local : str or Path
        Local folder that is ``source_path`` on the source collection.
    source_path : str
        Its path on the source collection.
    dest_path : str
        Folder on the destination collection that receives the tiles (under
        ``<dest_path>/<section name>/``).
    dest_remote : str
        ``dest_path`` relative to the endpoint's data root.
    section_name : str
        Sub-folder of ``dest_path`` for this section.
    transfer_batch : int
        Tiles per Transfer task.
    poll : float
        Seconds between status checks of a running Transfer task.
    max_active : int
        Transfer tasks running at once.
    deadline : float
        Seconds a Transfer task may take.
    """

    name = "globus"

    def __init__(
        self,
        batch: int,
        transfer_client: Any,
        *,
        source_collection: str,
        dest_collection: str,
        source_local: str | Path,
        source_path: str,
        dest_path: str,
        dest_remote: str,
        section_name: str,
        transfer_batch: int = 16,
        poll: float = 2.0,
        max_active: int = 4,
        deadline: float = 3600.0,
    ) -> None:
        super().__init__(batch)
        self.tc = transfer_client
        self.source_collection, self.dest_collection = source_collection, dest_collection
        self.source_local = Path(source_local).expanduser().resolve()
        self.source_path, self.dest_path = source_path, dest_path
        self.dest_remote, self.section_name = dest_remote.strip("/"), section_name
        self.transfer_batch, self.poll, self.max_active, self.deadline = transfer_batch, poll, max_active, deadline

    def stage(self, tiles: list[Tile]) -> Iterator[Staged | None]:
        todo: list[Tile] = []
        for tile in tiles:
            try:
                tile.path.resolve().relative_to(self.source_local)
                todo.append(tile)
            except ValueError:
                yield Staged(failed=[_failed(tile, f"not under the source folder {self.source_local}")])
        chunks = [todo[i : i + self.transfer_batch] for i in range(0, len(todo), self.transfer_batch)]
        active: list[_Transfer] = []
        while chunks or active:
            while chunks and len(active) < self.max_active:
                started = self._start(chunks.pop(0))
                if isinstance(started, Staged):
                    yield started
                else:
                    active.append(started)
            still = []
            for tr in active:
                now = time.monotonic()
                if tr.checked is not None and now - tr.checked < self.poll:  # the pipeline may look sooner than poll
                    still.append(tr)
                    continue
                tr.checked = now
                staged = self._check(tr)
                if staged is None:
                    still.append(tr)
                else:
                    yield from staged
            active = still
            if active:
                yield None

    def _start(self, chunk: list[Tile]) -> _Transfer | Staged:
        import globus_sdk

        td = globus_sdk.TransferData(
            self.source_collection,
            self.dest_collection,
            label=f"mhd {self.section_name}"[:128],
            sync_level="checksum",
            verify_checksum=True,
        )
        remote = []
        for tile in chunk:
            rel = tile.path.resolve().relative_to(self.source_local).as_posix()
            td.add_item(posixpath.join(self.source_path, rel), posixpath.join(self.dest_path, self.section_name, tile.id))
            remote.append(
                posixpath.join(self.dest_remote, self.section_name, tile.id)
                if self.dest_remote
                else posixpath.join(self.section_name, tile.id)
            )
        try:
            task_id = self.tc.submit_transfer(td)["task_id"]
        except globus_sdk.GlobusError as exc:
            return Staged(failed=[_failed(t, f"Globus Transfer submission failed: {exc}") for t in chunk])
        log.info("transfer task %s: %d tiles", task_id, len(chunk))
        return _Transfer(task_id, chunk, remote)

    def _check(self, tr: _Transfer) -> list[Staged] | None:
        """Staged batches when the task is done (or failed), ``None`` while it runs."""
        import globus_sdk

        try:
            task = self.tc.get_task(tr.task_id)
        except globus_sdk.GlobusError as exc:
            log.warning("transfer task %s: status unknown (%s); retrying", tr.task_id, exc)
            return self._overdue(tr, "unknown")
        status = task["status"]
        if status == "SUCCEEDED":
            return self._batches(tr)
        if status == "FAILED":
            why = task.get("nice_status_short_description") or task.get("nice_status") or "failed"
            return [Staged(failed=[_failed(t, f"Globus Transfer task {tr.task_id} failed: {why}") for t in tr.tiles])]
        if status == "INACTIVE" and not tr.warned:
            tr.warned = True
            log.warning("transfer task %s is INACTIVE (%s): waiting", tr.task_id, task.get("nice_status") or "paused")
        return self._overdue(tr, status)

    def _overdue(self, tr: _Transfer, status: str) -> list[Staged] | None:
        """Its tiles failed (and the task cancelled) once past the deadline, else ``None``."""
        import globus_sdk

        if time.monotonic() - tr.started < self.deadline:
            return None
        try:
            self.tc.cancel_task(tr.task_id)
        except globus_sdk.GlobusError as exc:
            log.warning("transfer task %s: cancel failed (%s)", tr.task_id, exc)
        why = f"Globus Transfer task {tr.task_id} did not finish within {self.deadline:g} s (status {status}); cancelled"
        return [Staged(failed=[_failed(t, why) for t in tr.tiles])]

    def _batches(self, tr: _Transfer) -> list[Staged]:
        out = []
        for i in range(0, len(tr.tiles), self.batch):
            tiles, remote = tr.tiles[i : i + self.batch], tr.remote[i : i + self.batch]
            out.append(Staged(dict(zip(remote, tiles)), list(remote)))
        return out


def choose_transport(name: str, tiles: list[Tile] | None, inline_max_bytes: int, shared_ready: bool, globus_ready: bool) -> str:
    """The transport ``auto`` means for these tiles.

    Inline while every tile is at most ``inline_max_bytes``; else shared
    storage when configured, else Globus Transfer when configured, else inline
    (large tiles then fail alone with a message saying what to configure).
    ``tiles`` None means not known yet (``watch``): then shared storage or
    Globus Transfer when configured, since any tile may be large.
    """
    if name != "auto":
        return name
    if tiles is not None and all(t.size <= inline_max_bytes for t in tiles):
        return "inline"
    if shared_ready:
        return "shared"
    if globus_ready:
        return "globus"
    return "inline"
