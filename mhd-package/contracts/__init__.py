"""What the worker, the client and the endpoint share, in one place.

mhd.contracts.record
    :class:`TileRecord`: one tile's measurements and verdict, on the wire and in the results log.
mhd.contracts.verdicts
    :class:`Verdict`, :class:`Kind` and how each looks (:data:`LOOKS`).
mhd.contracts.files
    The names of the files the client writes into a section.
mhd.contracts.formats
    The image formats: suffixes, magic bytes, decoder, is-the-file-whole check.
mhd.contracts.limits
    The worker's limits, inline sizes, the serializer allow-list, the data-root check.

Importable without NumPy, the client or the endpoint; :mod:`mhd.params` (the
detector's parameters) is the other shared module.
"""

from .files import RESULTS_NAME
from .formats import FORMATS, IMAGE_SUFFIXES, ImageFormat
from .limits import ALLOWED_SERIALIZERS, WORKER_LIMITS
from .record import RESULT_KEYS, TileRecord
from .verdicts import LOOKS, Kind, Verdict

__all__ = [
    "ALLOWED_SERIALIZERS",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "LOOKS",
    "RESULTS_NAME",
    "RESULT_KEYS",
    "WORKER_LIMITS",
    "ImageFormat",
    "Kind",
    "TileRecord",
    "Verdict",
]
