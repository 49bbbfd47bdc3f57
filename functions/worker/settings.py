"""Limits of the remote scoring function, read from the worker's environment.

The endpoint administrator sets these in the endpoint's ``worker_init``
(``mhd.endpoint.configure`` writes them); a caller cannot change them.

==========================  ==============================  ================================
Variable                    Default                         Meaning
==========================  ==============================  ================================
``MHD_DATA_ROOT``           unset: path tiles are refused   Folder that tile paths are
                                                            relative to; nothing outside it
                                                            is read.
``MHD_MAX_PIXELS``          268435456 (16384 x 16384)       Largest image (rows x cols),
                                                            checked from the header before
                                                            decoding. Decoded samples may
                                                            take at most 4 bytes per allowed
                                                            pixel (1 GiB by default).
``MHD_MAX_INLINE_BYTES``    8388608 (8 MiB)                 Largest encoded image sent
                                                            inline in a task.
``MHD_MAX_TILES``           1024                            Most tiles in one task.
==========================  ==============================  ================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mhd.contracts.limits import BYTES_PER_PIXEL, WORKER_LIMITS, check_data_root

__all__ = ["Limits", "ENV_VARS"]

#: Environment variables read by :meth:`Limits.from_env`, with their defaults
#: (:data:`mhd.contracts.limits.WORKER_LIMITS`).
ENV_VARS: dict[str, int | None] = {"MHD_DATA_ROOT": None, **WORKER_LIMITS}


@dataclass(frozen=True)
class Limits:
    """What one scoring task may read and decode.

    Attributes
    ----------
    data_root : Path or None
        Resolved folder that tile paths are relative to; None refuses path tiles.
    max_pixels : int
        Largest ``rows * cols`` of a tile.
    max_inline_bytes : int
        Largest encoded inline tile, in bytes.
    max_tiles : int
        Most tiles in one task.
    """

    data_root: Path | None
    max_pixels: int
    max_inline_bytes: int
    max_tiles: int

    @property
    def max_decoded_bytes(self) -> int:
        """Largest decoded sample buffer (all channels), in bytes."""
        return self.max_pixels * BYTES_PER_PIXEL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Limits":
        """Read the limits from ``environ`` (default: ``os.environ``).

        Raises
        ------
        ValueError
            When a limit is not a positive integer; the message names the variable.
        """
        env = os.environ if environ is None else environ
        root = env.get("MHD_DATA_ROOT") or None
        try:
            real = check_data_root(root) if root else None
        except ValueError as exc:
            raise ValueError(f"MHD_DATA_ROOT {exc}") from None
        return cls(
            data_root=real,
            max_pixels=_positive_int(env, "MHD_MAX_PIXELS"),
            max_inline_bytes=_positive_int(env, "MHD_MAX_INLINE_BYTES"),
            max_tiles=_positive_int(env, "MHD_MAX_TILES"),
        )


def _positive_int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return WORKER_LIMITS[name]
    try:
        value = int(str(raw).replace("_", ""))
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value
