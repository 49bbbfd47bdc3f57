"""Pure computation: the multi-scale histologic feature detector (MHD).

Image in, numbers out; NumPy/SciPy on the CPU or CuPy on a GPU from one code
path. No Globus, no files, no environment, no command line here
(``tests/project/test_layout.py`` checks it). What runs around it on an endpoint's
workers (the registered function, decoding, confinement, limits, the tile
record) is :mod:`mhd.functions.worker`.

>>> from mhd.functions import detect, normalize
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see; at run time, _EXPORTS loads each on first use
    from ._astigmatism import ASTIGMATISM_THRESHOLD
    from ._backend import Backend, cuda_available, get_backend
    from ._detect import DEFAULTS, Detection, detect, detect_batch
    from ._normalize import estimate_noise, normalize, saturation_limits
    from ._scalespace import scales

#: Public name -> the module that defines it. Loaded on first use (PEP 562), so
#: that importing :mod:`mhd.functions.worker.remote` (which the client registers) does
#: not load NumPy and SciPy with the detector.
_EXPORTS = {
    "ASTIGMATISM_THRESHOLD": "._astigmatism",
    "Backend": "._backend",
    "cuda_available": "._backend",
    "get_backend": "._backend",
    "DEFAULTS": "._detect",
    "Detection": "._detect",
    "detect": "._detect",
    "detect_batch": "._detect",
    "estimate_noise": "._normalize",
    "normalize": "._normalize",
    "saturation_limits": "._normalize",
    "scales": "._scalespace",
}

__all__ = [
    "ASTIGMATISM_THRESHOLD",
    "Backend",
    "DEFAULTS",
    "Detection",
    "cuda_available",
    "detect",
    "detect_batch",
    "estimate_noise",
    "get_backend",
    "normalize",
    "saturation_limits",
    "scales",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
