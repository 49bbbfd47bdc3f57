"""One API over two array modules: NumPy/SciPy on the CPU, CuPy/cupyx on a GPU.

Everything in :mod:`mhd.functions` computes through a :class:`Backend`, so the
CPU tests exercise the same code that runs on the GPU.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft

__all__ = ["Backend", "get_backend", "cuda_available"]


@dataclass(frozen=True)
class Backend:
    """An array module with the FFTs the detector needs.

    Attributes
    ----------
    name : str
        ``"numpy"`` or ``"cupy:<device id>"``.
    xp : module
        ``numpy`` or ``cupy``.
    device : int or None
        CUDA device id for CuPy, None for NumPy.
    workers : int
        Threads used by ``scipy.fft`` (ignored by CuPy).
    """

    name: str
    xp: ModuleType
    device: int | None
    workers: int

    def rfft2(self, x: Any) -> Any:
        """Real 2-D FFT over the last two axes (unnormalised forward)."""
        if self.device is None:
            return scipy.fft.rfft2(x, axes=(-2, -1), workers=self.workers)
        return self.xp.fft.rfft2(x, axes=(-2, -1))

    def irfft2(self, X: Any, shape: tuple[int, int], workers: int | None = None, overwrite: bool = False) -> Any:
        """Inverse of :meth:`rfft2` to real arrays of ``shape`` over the last two axes.

        ``workers`` overrides the thread count (CPU only); ``overwrite`` lets
        the transform reuse ``X`` as scratch space.
        """
        if self.device is None:
            return scipy.fft.irfft2(X, s=shape, axes=(-2, -1), workers=workers or self.workers, overwrite_x=overwrite)
        return self.xp.fft.irfft2(X, s=shape, axes=(-2, -1))

    def rfft(self, x: Any) -> Any:
        """Real 1-D FFT along the last axis (unnormalised forward)."""
        if self.device is None:
            return scipy.fft.rfft(x, axis=-1, workers=self.workers)
        return self.xp.fft.rfft(x, axis=-1)

    def irfft(self, X: Any, n: int) -> Any:
        """Inverse of :meth:`rfft` to ``n`` real samples along the last axis."""
        if self.device is None:
            return scipy.fft.irfft(X, n, axis=-1, workers=self.workers)
        return self.xp.fft.irfft(X, n, axis=-1)

    def asarray(self, x: Any) -> Any:
        """Move ``x`` to this backend's device (a no-op when it is already there)."""
        if self.device is None:
            return np.asarray(x)
        with self.xp.cuda.Device(self.device):
            return self.xp.asarray(x)

    def to_host(self, x: Any) -> np.ndarray:
        """Return ``x`` as a NumPy array on the host."""
        if self.device is None:
            return np.asarray(x)
        return self.xp.asnumpy(x)

    def use(self):
        """Context manager that makes this backend's device current (no-op on the CPU)."""
        if self.device is None:
            return _NullContext()
        return self.xp.cuda.Device(self.device)

    def synchronize(self) -> None:
        """Wait for queued device work (so timings are honest); no-op on the CPU."""
        if self.device is not None:
            self.xp.cuda.Device(self.device).synchronize()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError when no driver, ...
        return False


def get_backend(backend: str | Backend = "auto", workers: int | None = None) -> Backend:
    """Resolve a backend name.

    Parameters
    ----------
    backend : {"auto", "numpy", "cpu", "cupy", "gpu", "cupy:N"} or Backend
        ``"auto"`` picks CuPy on the current device when a CUDA GPU is present,
        NumPy otherwise. ``"cupy:N"`` selects device ``N``. Under Globus Compute
        each worker sees only its own GPU(s) through ``CUDA_VISIBLE_DEVICES``.
    workers : int, optional
        Threads for ``scipy.fft``; default: all CPUs available to this process.

    Raises
    ------
    ValueError
        For an unknown name, or a CuPy backend when CUDA is not available.
    """
    if isinstance(backend, Backend):
        return backend
    name = str(backend).lower()
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if name in ("numpy", "cpu") or (name == "auto" and not cuda_available()):
        return Backend("numpy", np, None, workers)
    if name in ("auto", "cupy", "gpu") or name.startswith("cupy:"):
        if not cuda_available():
            raise ValueError(f"backend {backend!r} needs CuPy and a CUDA GPU, and none is available")
        import cupy

        device = int(name.split(":", 1)[1]) if ":" in name else cupy.cuda.runtime.getDevice()
        return Backend(f"cupy:{device}", cupy, device, workers)
    raise ValueError(f"unknown backend {backend!r}: use 'auto', 'numpy' or 'cupy[:N]'")
