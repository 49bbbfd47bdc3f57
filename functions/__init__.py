"""Pure computation: the multi-scale histologic feature detector (MHD).

Image in, numbers out; NumPy/SciPy on the CPU or CuPy on a GPU from one code
path. No Globus, no files, no environment, no command line here
(``tests/test_layout.py`` checks it). What runs around it on an endpoint's
workers (the registered function, decoding, confinement, limits, the tile
record) is :mod:`mhd.functions.worker`.

>>> from mhd.functions import detect, normalize
"""

from ._astigmatism import ASTIGMATISM_THRESHOLD
from ._backend import Backend, cuda_available, get_backend
from ._detect import DEFAULTS, Detection, detect, detect_batch
from ._normalize import estimate_noise, normalize, saturation_limits
from ._scalespace import scales

__all__ = [
    "ASTIGMATISM_THRESHOLD",
    "DEFAULTS",
    "Backend",
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
