"""What the client and the endpoint agree on about a scoring task's size and form.

- The worker's limits (:data:`WORKER_LIMITS`): the environment variables an
  endpoint admin sets in ``worker_init`` and their defaults; read by
  :mod:`mhd.functions.worker.settings`, written by :mod:`mhd.endpoint.configure`.
- The inline tile sizes: the worker refuses an inline tile above
  ``MHD_MAX_INLINE_BYTES``; the client sends a tile inline (``transport=auto``)
  only up to :data:`INLINE_SEND_BYTES`, below it, and packs at most
  :data:`REQUEST_BYTES` of tiles into one task (the web service takes 10 MB a
  request, after base64).
- The serializers (:data:`ALLOWED_SERIALIZERS`): function source text and JSON
  data, nothing pickled, on the endpoint (``allowed_serializers``), in the
  local engine and in the client.
- The data root: :func:`check_data_root`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ALLOWED_SERIALIZERS",
    "BYTES_PER_PIXEL",
    "INLINE_SEND_BYTES",
    "LIMIT_VARS",
    "REQUEST_BYTES",
    "RESULT_SERIALIZERS",
    "WORKER_LIMITS",
    "check_data_root",
]

#: The worker's integer limits (``worker_init`` environment variables) and their defaults.
WORKER_LIMITS: dict[str, int] = {
    "MHD_MAX_PIXELS": 16384 * 16384,  # largest rows x cols, checked from the header before decoding
    "MHD_MAX_INLINE_BYTES": 8 * 2**20,  # largest encoded inline tile (bytes)
    "MHD_MAX_TILES": 1024,  # most tiles in one task
}
#: Names of :data:`WORKER_LIMITS`, in order.
LIMIT_VARS = tuple(WORKER_LIMITS)
#: Bytes of decoded sample data allowed per allowed pixel (float32 grey).
BYTES_PER_PIXEL = 4

#: Largest tile the client sends inline under ``transport=auto`` (bytes; config ``inline_max_mb``).
INLINE_SEND_BYTES = 4_000_000
#: Tile bytes the client packs into one inline task (config ``request_mb``).
REQUEST_BYTES = 6_000_000

#: Import paths of the only strategies the endpoint deserializes (its ``allowed_serializers``).
ALLOWED_SERIALIZERS = (
    "globus_compute_sdk.serialize.PureSourceTextInspect",
    "globus_compute_sdk.serialize.JSONData",
)
#: Strategies results travel in: JSON, so the client unpickles nothing either.
RESULT_SERIALIZERS = ("globus_compute_sdk.serialize.JSONData",)


def check_data_root(root: str | os.PathLike[str]) -> Path:
    """The resolved data root (symbolic links followed).

    Raises
    ------
    ValueError
        When it resolves to the file system's root: it would confine nothing.
    """
    real = Path(os.path.realpath(root))
    if real == Path(real.anchor):
        raise ValueError(f"must be a folder for tiles, not the file system's root ({str(root)!r}): it would confine nothing")
    return real
