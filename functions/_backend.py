"""One API over two array modules: NumPy/SciPy on the CPU, CuPy/cupyx on a GPU.

Everything in :mod:`mhd.functions` computes through a :class:`Backend`, so the
CPU tests exercise the same code that runs on the GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft

__all__ = ["Backend", "get_backend", "cuda_available", "FFT_LIBRARIES", "default_fft"]

#: CPU FFT libraries, fastest first (by ``bench/bench_detector.py --fft``): ducc0 (the optional
#: ``fast`` extra; pocketfft's successor, ~1.7x faster inverse 2-D transforms of 1152^2 float32 on one
#: thread, as fast as planned FFTW without plans) and scipy's bundled pocketfft, always there.
FFT_LIBRARIES = ("ducc0", "scipy")


@functools.lru_cache(maxsize=1)
def default_fft() -> str:
    """The fastest CPU FFT library that is installed: an entry of :data:`FFT_LIBRARIES`."""
    return "ducc0" if importlib.util.find_spec("ducc0") is not None else "scipy"


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
        Threads used by the CPU FFTs (ignored by CuPy).
    fft : str
        CPU FFT library for the 2-D transforms, one of :data:`FFT_LIBRARIES`
        (default: :func:`default_fft`, the fastest installed); ignored by CuPy.
    """

    name: str
    xp: ModuleType
    device: int | None
    workers: int
    fft: str = field(default_factory=default_fft)

    def __post_init__(self) -> None:
        if self.fft not in FFT_LIBRARIES:
            raise ValueError(f"fft must be one of {FFT_LIBRARIES}, got {self.fft!r}")

    def rfft2(self, x: Any) -> Any:
        """Real 2-D FFT over the last two axes (unnormalised forward)."""
        if self.device is not None:
            return self.xp.fft.rfft2(x, axes=(-2, -1))
        if self.fft == "ducc0":
            import ducc0

            return ducc0.fft.r2c(np.asarray(x), axes=(-2, -1), forward=True, nthreads=self.workers)
        return scipy.fft.rfft2(x, axes=(-2, -1), workers=self.workers)

    def irfft2(self, X: Any, shape: tuple[int, int], workers: int | None = None, overwrite: bool = False) -> Any:
        """Inverse of :meth:`rfft2` to real arrays of ``shape`` over the last two axes.

        ``workers`` overrides the thread count (CPU only); ``overwrite`` lets
        the transform reuse ``X`` as scratch space.
        """
        if self.device is not None:
            return self.xp.fft.irfft2(X, s=shape, axes=(-2, -1))
        if self.fft == "ducc0" and X.shape[-2] == shape[0] and X.shape[-1] == shape[1] // 2 + 1:
            import ducc0

            return ducc0.fft.c2r(
                X,
                axes=(-2, -1),
                lastsize=shape[1],
                forward=False,
                inorm=2,
                nthreads=workers or self.workers,
                allow_overwriting_input=overwrite,
            )
        return scipy.fft.irfft2(X, s=shape, axes=(-2, -1), workers=workers or self.workers, overwrite_x=overwrite)

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
        host: np.ndarray = self.xp.asnumpy(x)
        return host

    def use(self) -> contextlib.AbstractContextManager[Any]:
        """Context manager that makes this backend's device current (no-op on the CPU)."""
        if self.device is None:
            return contextlib.nullcontext()
        device: contextlib.AbstractContextManager[Any] = self.xp.cuda.Device(self.device)
        return device

    def synchronize(self) -> None:
        """Wait for queued device work (so timings are honest); no-op on the CPU."""
        if self.device is not None:
            self.xp.cuda.Device(self.device).synchronize()


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # ImportError, CUDARuntimeError when no driver, ...
        return False


def get_backend(backend: str | Backend = "auto", workers: int | None = None, fft: str | None = None) -> Backend:
    """Resolve a backend name.

    Parameters
    ----------
    backend : {"auto", "numpy", "cpu", "cupy", "gpu", "cupy:N"} or Backend
        ``"auto"`` picks CuPy on the current device when a CUDA GPU is present,
        NumPy otherwise. ``"cupy:N"`` selects device ``N``. Under Globus Compute
        each worker sees only its own GPU(s) through ``CUDA_VISIBLE_DEVICES``.
    workers : int, optional
        Threads for the CPU FFTs; default: all CPUs available to this process.
    fft : {"ducc0", "scipy"}, optional
        CPU FFT library; default: the fastest installed (:func:`default_fft`).

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
        return Backend("numpy", np, None, workers, fft or default_fft())
    if name in ("auto", "cupy", "gpu") or name.startswith("cupy:"):
        if not cuda_available():
            raise ValueError(f"backend {backend!r} needs CuPy and a CUDA GPU, and none is available")
        import cupy

        device = int(name.split(":", 1)[1]) if ":" in name else cupy.cuda.runtime.getDevice()
        return Backend(f"cupy:{device}", cupy, device, workers, fft or default_fft())
    raise ValueError(f"unknown backend {backend!r}: use 'auto', 'numpy' or 'cupy[:N]'")
