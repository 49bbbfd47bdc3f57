"""Simulated through-focus series of an in-focus EM image (pure NumPy/SciPy).

The model, step by step (all lengths in pixels of the input image):

1. **Object.** The input is an in-focus scan: integer images are divided by
   their dtype's maximum, floating-point images are taken as already in
   [0, 1] (fractions of full brightness). It was recorded with the in-focus
   probe, so that probe's blur is already in it.
2. **Probe (defocus).** The beam spot is a Gaussian of standard deviation

       psf_sigma(defocus) = sqrt(sigma0**2 + (k * defocus)**2)   [px]

   ``sigma0`` (px) is the in-focus probe size; ``k`` (px per micrometre) is
   the convergence semi-angle over the pixel size, so a defocus of ``d``
   micrometres widens the spot by ``k * d`` px (e.g. 4 mrad at 4 nm/px gives
   ``k = 1``, the default, so large defocus in um reads directly as sigma in px).
3. **Astigmatism.** The two line foci sit at ``defocus -/+ astigmatism / 2``:
   the spot is an anisotropic Gaussian, ``psf_sigma(defocus - a/2)`` along the
   astigmatism axis and ``psf_sigma(defocus + a/2)`` across it, so its long axis
   turns by 90 degrees through focus (:func:`astigmatic_psf`).
4. **Blur** (:func:`blur`): the input already holds the in-focus probe, so it is
   convolved with the Gaussian that widens that probe to the defocused one
   (covariances subtract: axes ``sqrt(sigma**2 - sigma0**2)``, which is
   ``k * |defocus|`` without astigmatism; defocus 0 changes nothing). Exact
   Gaussian transfer function in the Fourier domain (the blur of the
   band-limited image the samples represent), the image mirror-padded so
   nothing wraps around its edges.
5. **Shot noise** (:func:`shot_noise`): Poisson counts with mean
   ``dose * signal``; ``dose`` is electrons (detected counts) per pixel at full
   brightness, ``inf`` for none. The signal estimate is ``counts / dose``.
6. **Detector** (:func:`digitize`): ``offset + gain * signal`` (brightness and
   contrast, in fractions of full scale), clipped and rounded to ``bits``
   unsigned integer levels (uint8 up to 8 bits, uint16 up to 16).

**SEM image formation** (:func:`sem_scan`), physically plainer and closer to a
real scanning microscope than the Gaussian model above:

a. **Defocused probe: a disk.** Geometrically, the beam is a cone of
   convergence semi-angle ``alpha``; at a defocus ``d`` its cross-section on the
   specimen is a disk of radius ``alpha * |d|`` (pixels: :func:`disk_radius`),
   convolved with the focused spot already in the input. Its transfer
   function ``2 J1(k R) / (k R)`` has zeros, unlike a Gaussian's. Astigmatism
   makes the disk an ellipse (radii ``R_major``, ``R_minor`` along ``angle``).
   A Gaussian of "equal effect" has ``sigma = R / 2`` (the same second
   moment, the same transfer function at low frequencies).
b. **Shot noise:** Poisson counts at ``dose`` detected electrons per pixel at
   full brightness (1 .. 100 covers fast to slow scans).
c. **Detector bandwidth** (:func:`scan_lowpass`): the detector and amplifier
   respond to the current with a time constant ``tau`` (in pixel dwells,
   0.2 .. 2), and each pixel integrates the response over its dwell. Signal
   and noise are both filtered, along the scan line only (causal: a pixel
   carries the past of its line, never the next line). Rows stay
   independent, columns become correlated: lag-1 autocorrelation 0.56 and
   lag-2 0.22 at ``tau`` = 1.06, as measured on the real 100 ns scans of
   ``shared/data/sem-kriss`` (0.57 and 0.22; ``python bench/sem_focus.py noise``).
   Each line starts after the beam has settled on its first point for
   :data:`SETTLE` time constants, so the detector's response is stationary
   from the first pixel on, as in the real scans (their first recorded
   columns have the noise of the rest; a line that started from its own first
   pixel's current left that pixel unaveraged, about twice as noisy at
   ``tau`` = 2, and the detector counted noise features down that column).
d. **Line jitter:** each scan line gets a random offset (standard deviation
   ``jitter``, fraction of full scale): the beam-current and detector drift
   from line to line.
e. **Detector:** gain, offset, 8- or 16-bit, as in step 6.

Angles are in degrees, counter-clockwise from the column (+x) axis as the image
is displayed (row 0 at the top), so 90 degrees points to row 0.

Everything is deterministic given ``rng`` (a seed or ``numpy.random.Generator``).

Examples
--------
>>> import numpy as np
>>> from mhd.functions.simulate import through_focus
>>> image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
>>> series = through_focus(image, [0.0, 1.0, 2.0], dose=20.0, rng=1)
>>> series.shape, series.dtype
((3, 64, 64), dtype('uint8'))
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.fft
import scipy.signal
import scipy.special

__all__ = [
    "SIGMA0",
    "K_PX_PER_UM",
    "psf_sigma",
    "astigmatic_psf",
    "gaussian_otf",
    "blur",
    "to_signal",
    "shot_noise",
    "digitize",
    "defocus_image",
    "through_focus",
    "disk_radius",
    "disk_otf",
    "scan_lowpass",
    "sem_scan",
]

#: In-focus probe standard deviation (pixels).
SIGMA0 = 0.5
#: Growth of the probe standard deviation with defocus (pixels per micrometre).
K_PX_PER_UM = 1.0
#: Half-width of the mirror padding, in probe standard deviations.
_PAD_SIGMAS = 4.0


def psf_sigma(defocus: Any, sigma0: float = SIGMA0, k: float = K_PX_PER_UM) -> Any:
    """Probe standard deviation at a defocus.

    Parameters
    ----------
    defocus : float or array
        Distance from best focus, micrometres (either sign).
    sigma0 : float
        In-focus probe standard deviation, pixels (>= 0).
    k : float
        Spot growth, pixels per micrometre of defocus (>= 0).

    Returns
    -------
    float or array
        ``sqrt(sigma0**2 + (k * defocus)**2)``, pixels; the shape of ``defocus``.
    """
    if sigma0 < 0 or k < 0:
        raise ValueError("sigma0 and k must be >= 0")
    return np.hypot(sigma0, k * np.asarray(defocus, dtype=np.float64))[()]


def astigmatic_psf(
    defocus: float, astigmatism: float = 0.0, angle: float = 0.0, sigma0: float = SIGMA0, k: float = K_PX_PER_UM
) -> tuple[float, float, float]:
    """Axes of the astigmatic probe at a defocus.

    Parameters
    ----------
    defocus : float
        Distance of the mean focus from the specimen, micrometres.
    astigmatism : float
        Distance between the two line foci, micrometres (>= 0).
    angle : float
        Direction of the astigmatism axis, degrees (see the module docstring).
    sigma0, k : float
        As for :func:`psf_sigma`.

    Returns
    -------
    sigma_major, sigma_minor : float
        Standard deviations along the long and the short axis, pixels.
    angle_major : float
        Direction of the long axis, degrees in [0, 180): ``angle`` when the
        spot is longer along the astigmatism axis, ``angle + 90`` otherwise.
    """
    if astigmatism < 0:
        raise ValueError("astigmatism must be >= 0 (micrometres between the line foci)")
    s_u = float(psf_sigma(defocus - astigmatism / 2, sigma0, k))
    s_v = float(psf_sigma(defocus + astigmatism / 2, sigma0, k))
    if s_u >= s_v:
        return s_u, s_v, float(angle % 180.0)
    return s_v, s_u, float((angle + 90.0) % 180.0)


def gaussian_otf(shape: tuple[int, int], sigma_major: float, sigma_minor: float | None = None, angle: float = 0.0) -> np.ndarray:
    """Transfer function of a rotated anisotropic Gaussian on the ``rfft2`` grid.

    ``H(k) = exp(-k^T C k / 2)`` with covariance ``C = R diag(sigma_major^2,
    sigma_minor^2) R^T`` and ``R`` the rotation by ``angle``.

    Parameters
    ----------
    shape : (P, Q)
        Real-space shape of the transform.
    sigma_major : float
        Standard deviation along the ``angle`` direction, pixels (>= 0).
    sigma_minor : float, optional
        Standard deviation across it, pixels; defaults to ``sigma_major`` (isotropic).
    angle : float
        Degrees counter-clockwise from the column axis as displayed.

    Returns
    -------
    (P, Q // 2 + 1) float64 ndarray
        Real, 1 at zero frequency (the blur conserves the mean).
    """
    sigma_minor = sigma_major if sigma_minor is None else sigma_minor
    if sigma_major < 0 or sigma_minor < 0:
        raise ValueError("PSF standard deviations must be >= 0 (pixels)")
    P, Q = shape
    ky = 2 * np.pi * np.fft.fftfreq(P)[:, None]  # along rows (downwards)
    kx = 2 * np.pi * np.fft.rfftfreq(Q)[None, :]  # along columns
    theta = np.deg2rad(angle)
    # unit vector of the major axis in (x, y-down) coordinates: (cos, -sin)
    k_major = kx * np.cos(theta) - ky * np.sin(theta)
    k_minor = kx * np.sin(theta) + ky * np.cos(theta)
    return np.exp(-0.5 * ((sigma_major * k_major) ** 2 + (sigma_minor * k_minor) ** 2))


def blur(image: Any, sigma_major: float, sigma_minor: float | None = None, angle: float = 0.0) -> np.ndarray:
    """Convolve with a rotated anisotropic Gaussian (Fourier domain, mirrored borders).

    Parameters
    ----------
    image : (M, N) array
        Any real dtype.
    sigma_major, sigma_minor, angle
        As for :func:`gaussian_otf` (pixels, pixels, degrees).

    Returns
    -------
    (M, N) float64 ndarray
        The image seen through the Gaussian probe; borders are mirror-padded
        by 4 standard deviations, so no structure wraps around the edges.
    """
    x = _as_2d(image).astype(np.float64)
    sigma_minor = sigma_major if sigma_minor is None else sigma_minor
    if max(sigma_major, sigma_minor) == 0:
        return x
    pad = int(np.ceil(_PAD_SIGMAS * max(sigma_major, sigma_minor))) + 1
    M, N = x.shape
    P = scipy.fft.next_fast_len(M + 2 * pad, real=True)
    Q = scipy.fft.next_fast_len(N + 2 * pad, real=True)
    padded = np.pad(x, ((pad, P - M - pad), (pad, Q - N - pad)), mode="symmetric")
    F = scipy.fft.rfft2(padded)
    F *= gaussian_otf((P, Q), sigma_major, sigma_minor, angle)
    return scipy.fft.irfft2(F, s=(P, Q))[pad : pad + M, pad : pad + N]


def to_signal(image: Any) -> np.ndarray:
    """Grey levels as fractions of full brightness.

    Parameters
    ----------
    image : (M, N) array
        Unsigned/signed integers (divided by the dtype's maximum) or floats
        already in [0, 1]; booleans are 0 or 1.

    Returns
    -------
    (M, N) float64 ndarray in [0, 1]
    """
    x = _as_2d(image)
    if x.dtype.kind in "ui":
        return np.clip(x.astype(np.float64) / np.iinfo(x.dtype).max, 0.0, 1.0)
    if x.dtype.kind == "b":
        return x.astype(np.float64)
    if x.dtype.kind != "f":
        raise TypeError(f"image dtype {x.dtype} is not numeric")
    if not np.isfinite(x).all():
        raise ValueError("image contains NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise ValueError("a floating-point image must hold fractions of full brightness in [0, 1]")
    return x.astype(np.float64)


def shot_noise(signal: Any, dose: float, rng: Any = None) -> np.ndarray:
    """Poisson (electron counting) noise of a scan.

    Parameters
    ----------
    signal : (M, N) array
        Mean signal, fractions of full brightness in [0, 1] (values outside
        are clipped).
    dose : float
        Electrons (detected counts) per pixel at full brightness, > 0;
        ``numpy.inf`` returns the signal unchanged.
    rng : None, int or numpy.random.Generator
        Source of randomness (a seed makes the result reproducible).

    Returns
    -------
    (M, N) float64 ndarray
        ``counts / dose``: unbiased, with variance ``signal / dose``.
    """
    if not dose > 0:
        raise ValueError("dose must be > 0 electrons per pixel (inf for no shot noise)")
    s = np.clip(np.asarray(signal, dtype=np.float64), 0.0, 1.0)
    if np.isinf(dose):
        return s
    return np.random.default_rng(rng).poisson(s * dose) / dose


def digitize(signal: Any, bits: int = 8, gain: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """The detector's grey levels for a signal.

    Parameters
    ----------
    signal : (M, N) array
        Signal in fractions of full brightness (may exceed 1 with noise).
    bits : int
        Bit depth, 1..16; the output is uint8 up to 8 bits, uint16 above.
    gain : float
        Contrast: grey-level span (fractions of full scale) per unit of
        signal, > 0.
    offset : float
        Brightness: grey level (fraction of full scale) of zero signal.

    Returns
    -------
    (M, N) uint8 or uint16 ndarray
        ``round(clip(offset + gain * signal, 0, 1) * (2**bits - 1))``.
    """
    if int(bits) != bits or not 1 <= bits <= 16:
        raise ValueError("bits must be an integer from 1 to 16")
    if not gain > 0:
        raise ValueError("gain must be > 0")
    full = 2 ** int(bits) - 1
    levels = np.clip(offset + gain * np.asarray(signal, dtype=np.float64), 0.0, 1.0) * full
    return np.rint(levels).astype(np.uint8 if bits <= 8 else np.uint16)


def defocus_image(
    image: Any,
    defocus: float,
    *,
    astigmatism: float = 0.0,
    astigmatism_angle: float = 0.0,
    sigma0: float = SIGMA0,
    k: float = K_PX_PER_UM,
    dose: float = np.inf,
    gain: float = 1.0,
    offset: float = 0.0,
    bits: int = 8,
    rng: Any = None,
) -> np.ndarray:
    """One simulated scan of ``image`` at a defocus.

    The probe widens from ``sigma0`` to :func:`astigmatic_psf` (module
    docstring, steps 2-6); then shot noise and the detector.

    Parameters
    ----------
    image : (M, N) array
        In-focus grey levels (see :func:`to_signal`), recorded with the
        in-focus probe of standard deviation ``sigma0``.
    defocus : float
        Micrometres from best focus.
    astigmatism, astigmatism_angle : float
        Line-focus separation (micrometres) and axis (degrees); see :func:`astigmatic_psf`.
    sigma0, k : float
        Probe model, see :func:`psf_sigma` (pixels, pixels per micrometre).
    dose : float
        Electrons per pixel at full brightness (``inf``: no shot noise).
    gain, offset, bits
        Detector settings, see :func:`digitize`.
    rng : None, int or numpy.random.Generator
        Randomness of the shot noise.

    Returns
    -------
    (M, N) uint8 or uint16 ndarray
    """
    s_major, s_minor, theta = astigmatic_psf(defocus, astigmatism, astigmatism_angle, sigma0, k)
    added = np.sqrt(np.maximum(np.array([s_major, s_minor]) ** 2 - sigma0**2, 0.0))  # on top of the recorded probe
    signal = blur(to_signal(image), float(added[0]), float(added[1]), theta)
    return digitize(shot_noise(signal, dose, rng), bits, gain, offset)


def through_focus(image: Any, defocus: Sequence[float], *, rng: Any = None, **settings: Any) -> np.ndarray:
    """A through-focus series: one independent scan per defocus.

    Parameters
    ----------
    image : (M, N) array
        In-focus grey levels.
    defocus : sequence of float
        Micrometres from best focus, one per scan.
    rng : None, int or numpy.random.Generator
        One generator drives all scans (reproducible from a seed).
    **settings
        Keyword arguments of :func:`defocus_image` (astigmatism, dose, gain, ...).

    Returns
    -------
    (len(defocus), M, N) uint8 or uint16 ndarray
    """
    if len(defocus) == 0:
        raise ValueError("defocus must hold at least one value")
    gen = np.random.default_rng(rng)
    return np.stack([defocus_image(image, float(d), rng=gen, **settings) for d in defocus])


def _as_2d(image: Any) -> np.ndarray:
    x = np.asarray(image)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array (rows, cols), got shape {x.shape}")
    return x


# ------------------------------------------------------------ SEM formation

#: Sub-samples per pixel dwell used to integrate the detector's response.
_SUBSAMPLES = 8


def disk_radius(defocus: Any, alpha_mrad: float, pixel_nm: float) -> Any:
    """Radius (pixels) of the defocused probe: the beam cone's cross-section.

    Parameters
    ----------
    defocus : float or array
        Distance from best focus, micrometres (either sign).
    alpha_mrad : float
        Convergence semi-angle, milliradians (> 0).
    pixel_nm : float
        Pixel size, nanometres (> 0).

    Returns
    -------
    float or array
        ``alpha * |defocus| / pixel`` in pixels (1 um at 5 mrad and 5 nm/px: 1 px).
    """
    if not (alpha_mrad > 0 and pixel_nm > 0):
        raise ValueError("alpha_mrad and pixel_nm must be > 0")
    return (np.abs(np.asarray(defocus, dtype=np.float64)) * alpha_mrad / pixel_nm)[()]


def disk_otf(shape: tuple[int, int], radius_major: float, radius_minor: float | None = None, angle: float = 0.0) -> np.ndarray:
    """Transfer function of a uniform (elliptical) disk on the ``rfft2`` grid.

    ``H(k) = 2 J1(rho) / rho`` with ``rho = |(R_major k_major, R_minor k_minor)|``:
    the Fourier transform of a uniform ellipse of unit mass.

    Parameters
    ----------
    shape : (P, Q)
        Real-space shape of the transform.
    radius_major, radius_minor : float
        Semi-axes, pixels (>= 0); ``radius_minor`` defaults to ``radius_major``.
    angle : float
        Direction of the major axis, degrees (module docstring).

    Returns
    -------
    (P, Q // 2 + 1) float64 ndarray
        Real, 1 at zero frequency; negative beyond its first zero (contrast reversal).
    """
    radius_minor = radius_major if radius_minor is None else radius_minor
    if radius_major < 0 or radius_minor < 0:
        raise ValueError("disk radii must be >= 0 (pixels)")
    P, Q = shape
    ky = 2 * np.pi * np.fft.fftfreq(P)[:, None]
    kx = 2 * np.pi * np.fft.rfftfreq(Q)[None, :]
    theta = np.deg2rad(angle)
    rho = np.hypot(radius_major * (kx * np.cos(theta) - ky * np.sin(theta)), radius_minor * (kx * np.sin(theta) + ky * np.cos(theta)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rho < 1e-8, 1.0, 2 * scipy.special.j1(rho) / rho)


def _convolve_otf(x: np.ndarray, otf: Any, pad: int) -> np.ndarray:
    M, N = x.shape
    P = scipy.fft.next_fast_len(M + 2 * pad, real=True)
    Q = scipy.fft.next_fast_len(N + 2 * pad, real=True)
    padded = np.pad(x, ((pad, P - M - pad), (pad, Q - N - pad)), mode="symmetric")
    F = scipy.fft.rfft2(padded) * otf((P, Q))
    return scipy.fft.irfft2(F, s=(P, Q))[pad : pad + M, pad : pad + N]


def scan_lowpass(lines: Any, tau: float) -> np.ndarray:
    """The detector's response along each scan line, integrated over each dwell.

    A first-order (RC) response of time constant ``tau`` dwells to the
    current, integrated over each pixel's dwell; the current is constant
    during a dwell. Computed on ``8`` sub-samples per dwell.

    Parameters
    ----------
    lines : (M, N) array
        Current per pixel (rows are scan lines, scanned left to right).
    tau : float
        Time constant, pixel dwells (>= 0; 0 returns the input).

    Returns
    -------
    (M, N) float64 ndarray
        Same mean; each row filtered causally and independently.
    """
    x = np.asarray(lines, dtype=np.float64)
    if tau < 0:
        raise ValueError("tau must be >= 0 (pixel dwells)")
    if tau == 0:
        return x.copy()
    a = np.exp(-1.0 / (_SUBSAMPLES * tau))
    sub = np.repeat(x, _SUBSAMPLES, axis=1)
    # start each line in its steady state for its first pixel (no transient from 0)
    zi = (a * x[:, :1]).astype(np.float64)
    out, _ = scipy.signal.lfilter([1 - a], [1, -a], sub, axis=1, zi=zi)
    return out.reshape(x.shape[0], x.shape[1], _SUBSAMPLES).mean(axis=2)


#: Time constants the beam settles on the first point of each line before it is recorded (:func:`sem_scan`):
#: the detector's response is then within exp(-10) of its steady state.
SETTLE = 10


def sem_scan(
    image: Any,
    radius: float = 0.0,
    *,
    radius_minor: float | None = None,
    angle: float = 0.0,
    dose: float = np.inf,
    tau: float = 0.0,
    jitter: float = 0.0,
    gain: float = 1.0,
    offset: float = 0.0,
    bits: int = 8,
    rng: Any = None,
) -> np.ndarray:
    """One simulated SEM scan of an in-focus image (module docstring, steps a-e).

    Parameters
    ----------
    image : (M, N) array
        In-focus grey levels (see :func:`to_signal`), recorded with the focused spot.
    radius : float
        Radius of the defocused probe's disk, pixels (0: in focus); the major
        semi-axis when ``radius_minor`` is given (astigmatism).
    radius_minor : float, optional
        Minor semi-axis, pixels.
    angle : float
        Direction of the major axis, degrees.
    dose : float
        Detected electrons per pixel at full brightness (``inf``: no shot noise).
    tau : float
        Detector time constant, pixel dwells (0: infinite bandwidth).
    jitter : float
        Standard deviation of the per-line offset, fraction of full scale.
    gain, offset, bits
        Detector settings, see :func:`digitize`.
    rng : None, int or numpy.random.Generator

    Returns
    -------
    (M, N) uint8 or uint16 ndarray
    """
    gen = np.random.default_rng(rng)
    signal = to_signal(image)
    r_minor = radius if radius_minor is None else radius_minor
    if max(radius, r_minor) > 0:
        pad = int(np.ceil(max(radius, r_minor))) + 2
        signal = _convolve_otf(signal, lambda shape: disk_otf(shape, radius, r_minor, angle), pad)
    if tau < 0:
        raise ValueError("tau must be >= 0 (pixel dwells)")
    settle = int(np.ceil(SETTLE * tau))  # dwells on each line's first point before it is recorded
    if settle:
        signal = np.concatenate([np.repeat(signal[:, :1], settle, axis=1), signal], axis=1)
    current = shot_noise(signal, dose, gen)
    current = scan_lowpass(current, tau)[:, settle:]
    if jitter < 0:
        raise ValueError("jitter must be >= 0")
    if jitter > 0:
        current = current + gen.normal(0.0, jitter, (current.shape[0], 1))
    return digitize(current, bits, gain, offset)
