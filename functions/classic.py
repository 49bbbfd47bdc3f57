"""Classic passive focus measures, for comparison with the MHD count.

Each takes one 2-D image and returns one float that grows with sharpness.
They are computed on the image as given (float64); to compare tiles taken
with different gain, offset or bit depth, pass ``mhd.functions.normalize(image)``.

References: Pech-Pacheco et al., ICPR 2000 (variance of the Laplacian);
Krotkov, IJCV 1988 (Tenengrad); Brenner et al., J. Histochem. Cytochem. 1976.

>>> import numpy as np
>>> from mhd.functions.classic import variance_of_laplacian
>>> x = np.zeros((32, 32)); x[::2] = 1.0
>>> variance_of_laplacian(x) > 0
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["variance_of_laplacian", "tenengrad", "brenner", "CLASSIC_MEASURES"]


def _float_image(image: Any) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 3:
        raise ValueError(f"image must be 2-D and at least 3 x 3 pixels, got shape {x.shape}")
    return x


def variance_of_laplacian(image: Any) -> float:
    """Variance of the 4-neighbour Laplacian (interior pixels).

    Parameters
    ----------
    image : (M, N) array

    Returns
    -------
    float
        In squared image units.
    """
    x = _float_image(image)
    lap = x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:] - 4.0 * x[1:-1, 1:-1]
    return float(lap.var())


def tenengrad(image: Any) -> float:
    """Mean squared Sobel gradient magnitude (interior pixels).

    Parameters
    ----------
    image : (M, N) array

    Returns
    -------
    float
        ``mean(Gx**2 + Gy**2)`` with 3 x 3 Sobel kernels, in squared image units.
    """
    x = _float_image(image)
    gx = ndimage.sobel(x, axis=1)[1:-1, 1:-1]
    gy = ndimage.sobel(x, axis=0)[1:-1, 1:-1]
    return float(np.mean(gx * gx + gy * gy))


def brenner(image: Any) -> float:
    """Brenner's gradient: mean squared difference of pixels two apart.

    Parameters
    ----------
    image : (M, N) array

    Returns
    -------
    float
        Mean of ``(I[r, c + 2] - I[r, c])**2`` and ``(I[r + 2, c] - I[r, c])**2``
        over both directions, in squared image units.
    """
    x = _float_image(image)
    return float(0.5 * (np.mean((x[:, 2:] - x[:, :-2]) ** 2) + np.mean((x[2:, :] - x[:-2, :]) ** 2)))


#: Name -> function, in the order reports list them.
CLASSIC_MEASURES = {
    "variance of Laplacian": variance_of_laplacian,
    "Tenengrad": tenengrad,
    "Brenner": brenner,
}
