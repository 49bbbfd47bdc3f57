"""How a tile is cut into blocks for the Fourier-domain scale space: FFT sizes, blocks and their context."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._scalespace import MAX_DECIMATION

__all__ = ["RADIX7_MIN", "extract_block", "fast_size", "halo_width", "split_blocks"]


def halo_width(sigma: float) -> int:
    """Pixels of context needed on each side of a block: 4 ``sigma`` of the widest Gaussian, plus the NMS margin."""
    return int(np.ceil(4.0 * sigma)) + 2


#: Smallest padded side that may have a factor 7 (pixels).
RADIX7_MIN = 512


def fast_size(n: int) -> int:
    """Smallest m >= n that is a multiple of MAX_DECIMATION and has only factors 2, 3, 5 (and 7 from :data:`RADIX7_MIN`).

    The factor 7 is as fast as its neighbours in ducc0, pocketfft and cuFFT: a
    1024^2 tile pads to 1120^2 instead of 1152^2, 0.8x the time of an inverse
    2-D transform on one thread in both CPU libraries. One rule for every
    backend keeps their grids, and so their results, the same. Smaller grids
    keep the 2, 3, 5 sizes: the astigmatism measure's limit on mirrored
    content (``MIN_MIRROR_FACTOR``) was set on them, and with a factor 7 a
    256 px tile (grid 336, not 384) would pass it.
    """
    m = -(-n // MAX_DECIMATION) * MAX_DECIMATION
    while not _smooth(m, (2, 3, 5, 7) if m >= RADIX7_MIN else (2, 3, 5)):
        m += MAX_DECIMATION
    return m


def _smooth(n: int, primes: tuple[int, ...]) -> bool:
    """True when ``n`` has no prime factor outside ``primes``."""
    for p in primes:
        while n % p == 0:
            n //= p
    return n == 1


def split_blocks(n: int, size: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into near-equal consecutive blocks of at most ``size``."""
    k = -(-n // size)
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def extract_block(norm: Any, y0: int, y1: int, x0: int, x1: int, h: int, shape: tuple[int, int], xp: Any) -> Any:
    """Block ``[y0, y1) x [x0, x1)`` of the (B, H, W) stack with ``h`` pixels of context.

    Context comes from the image where it exists and by mirror reflection
    beyond the image borders; the result is then padded to the FFT ``shape``.
    """
    H, W = norm.shape[1:]
    a0, a1, b0, b1 = max(y0 - h, 0), min(y1 + h, H), max(x0 - h, 0), min(x1 + h, W)
    block = norm[:, a0:a1, b0:b1]
    P, Q = shape
    top, left = a0 - (y0 - h), b0 - (x0 - h)
    pad = ((0, 0), (top, P - (a1 - a0) - top), (left, Q - (b1 - b0) - left))
    return xp.pad(block, pad, mode="reflect") if any(p for p in pad[1] + pad[2]) else block
