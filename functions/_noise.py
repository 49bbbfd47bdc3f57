"""Noise measured on each tile: a power spectrum along the scan line.

Scanned images (SEM, STEM) are written line by line. Their noise is
independent from one line to the next but correlated along the line: the
detector and its amplifier have a finite bandwidth, so each pixel carries
some of the signal and noise of the pixels scanned just before it. On the fast
scans of ``shared/data/sem-kriss`` the noise (fast scan minus the registered
slow scan) has a lag-1 autocorrelation of ~0.57 along x and its power falls
~30x from low to high horizontal frequencies. One white-noise sigma measured
at the highest frequencies (Immerkaer's operator) then underestimates the
noise that the coarser DoG levels see by several times, and they count noise
as features. Camera images (TEM) have white noise; the model covers them as
the flat case.

Model
-----
Noise ``n(r, c)``: rows independent, each row stationary along ``c`` with
power spectrum ``S(kx)`` (``kx`` in rad/px; ``S == sigma**2`` for white noise).
``S`` is piecewise linear between the centres :data:`CENTRES`
(``S(kx) = sum_c S_c phi_c(|kx|)``, ``phi_c`` the hat functions).

Estimate
--------
1. The second difference across rows, ``v = x[r-1] - 2 x[r] + x[r+1]``,
   cancels structure that is smooth from row to row; its noise has the row
   spectrum ``6 S(kx)`` exactly, because rows are independent.
2. Each row of ``v`` is filtered along x by each hat ``phi_b``; the
   variance of the output is ``6 sum_c M_bc S_c`` with
   ``M_bc = mean_kx phi_b^2 phi_c``. It is taken two ways
   (:class:`NoiseSpectra`): robustly, ``(median |o_b| / 0.6745)**2``, which,
   as in Immerkaer's estimator, ignores the sparse edges that survive step 1
   (the thresholds use it); and as the mean square of the outputs clipped at
   :data:`POWER_CLIP` robust sigmas, which is what the levels' energies hold
   where the noise varies across the tile (the blur subtracts it).
3. ``S_c >= 0`` from that small linear system (non-negative least squares).

The scan's detector smears signal and noise alike along x; since shot noise
enters before the detector, the shape of ``S`` along x is the detector's
response, and :func:`scan_smear` gives its Gaussian-equivalent width.

The standard deviation of a DoG level's response to this noise is then exact
under the model: ``var_i = sum_c S_c W_ic`` with
``W_ic = (2 pi)^-2 int int |H_i(ky, kx)|^2 phi_c(|kx|) dky dkx`` over the
sampled band ``[-pi, pi]^2`` (see :func:`level_noise_std`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import scipy.optimize
import scipy.special

from ._backend import Backend
from ._scalespace import dog_pairs

__all__ = [
    "CENTRES",
    "NoiseModel",
    "NoiseSpectra",
    "noise_model",
    "noise_spectra",
    "noise_spectrum",
    "level_noise_std",
    "scan_smear",
    "white_equivalent",
]

#: Centres of the hat functions of the noise spectrum, rad/px along the scan line.
#: Dense at low frequencies, where the coarse levels look and scan noise has most power.
CENTRES = np.pi * np.array([0.0, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1.0])
#: Samples of the second difference used per image (rows are subsampled to about this many).
SAMPLES = 1 << 16
#: Gaussian MAD to standard deviation.
_MAD = 0.6744897501960817


def _hats(k: np.ndarray) -> np.ndarray:
    """Hat functions at :data:`CENTRES` evaluated at ``|k|``: (len(CENTRES), len(k))."""
    k = np.abs(np.asarray(k, dtype=np.float64))
    eye = np.eye(len(CENTRES))
    return np.stack([np.interp(k, CENTRES, eye[c]) for c in range(len(CENTRES))])


@functools.lru_cache(maxsize=16)
def _row_geometry(Q: int) -> tuple[np.ndarray, np.ndarray]:
    """Hats on the rfft bins of a row of ``Q`` samples, and the system matrix ``6 M``."""
    k = 2 * np.pi * np.fft.rfftfreq(Q)
    phi = _hats(k)
    mult = np.full(k.shape, 2.0)  # rfft bins stand for +kx and -kx ...
    mult[0] = 1.0  # ... except DC and, for even Q, Nyquist
    if Q % 2 == 0:
        mult[-1] = 1.0
    M = 6.0 * np.einsum("bk,ck,k->bc", phi**2, phi, mult) / Q
    return phi.astype(np.float32), M


def _rows(H: int) -> np.ndarray:
    """Centre rows of the second differences used for an image of ``H`` rows."""
    return np.arange(1, H - 1)


class NoiseSpectra(NamedTuple):
    """Two estimates of the noise power spectrum along the rows, (B, len(CENTRES)) float64 each.

    Attributes
    ----------
    typical : ndarray
        From the median of each band's output: the noise of a typical pixel.
        Edges that survive the second difference do not move it, which is
        what the thresholds need; but it is the noise of the median pixel,
        not the mean (below).
    power : ndarray
        From the mean of the squared outputs, each clipped at
        :data:`POWER_CLIP` typical standard deviations (edges): the noise
        power a DoG level's energy holds, averaged over the image like the
        energy. Where the noise differs across the tile (shot noise that the
        variance-stabilising transform could not even out: a few detected
        electrons per pixel on a dark background are mostly zeros) the median
        falls well below the mean; subtracted from the energies, such an
        underestimate is left over as "signal" in the fine levels and reads
        as a sharp tile (a 2 px disk at 6 e/px on a real SEM scan of particles
        on a dark support read 0.00 px).
    """

    typical: np.ndarray
    power: np.ndarray


#: Band outputs beyond this many typical standard deviations are clipped in :attr:`NoiseSpectra.power` (edges).
POWER_CLIP = 6.0


def noise_spectra(images: Any, be: Backend, samples: int = SAMPLES) -> NoiseSpectra:
    """Noise power spectrum along the rows of each image, two ways (:class:`NoiseSpectra`).

    Parameters
    ----------
    images : (B, H, W) float array on ``be``
        Normalised images (0..1 units); ``H, W >= 3``.
    be : Backend
    samples : int
        About how many second differences to use per image.

    Returns
    -------
    NoiseSpectra
        ``S_c``: noise power per pixel at the frequencies :data:`CENTRES`
        (units of the image squared; white noise of standard deviation
        ``sigma`` gives ``sigma**2`` at every centre), from the median and
        from the clipped mean square of each band.
    """
    with be.use():  # the backend's device is current: arrays made here land on it, kernels run there
        xp = be.xp
        B, H, W = images.shape
        if B == 0 or H < 3 or W < 3:
            zero = np.zeros((B, len(CENTRES)))
            return NoiseSpectra(zero, zero.copy())
        rows = _rows(H)
        step = max(1, int(len(rows) * W // samples))
        rows = xp.asarray(rows[::step])
        phi, M = _row_geometry(W)
        phi_d = be.asarray(phi)
        stats = []
        for b in range(B):
            x = images[b]
            v = x[rows - 1] - 2 * x[rows] + x[rows + 1]
            V = be.rfft(v.astype(xp.float32, copy=False))
            # all bands in one batched transform; every other sample: band-passed, they are correlated
            o = xp.abs(be.irfft(V[None] * phi_d[:, None, :], W)[..., ::2]).reshape(len(CENTRES), -1)
            mid = o.shape[1] // 2
            # |values| order as their bit patterns do (non-negative float32): an integer partition is ~12 % faster
            median = xp.partition(o.view(xp.int32), mid, axis=1)[:, mid].view(xp.float32)
            clip = (POWER_CLIP / _MAD) * median[:, None]
            stats.append(xp.stack([median, xp.sqrt(xp.mean(xp.square(xp.minimum(o, clip)), axis=1))]))
        host = be.to_host(xp.stack(stats)).astype(np.float64)  # every image's in one read-back: (B, 2, C)
        typical = np.stack([scipy.optimize.nnls(M, (h / _MAD) ** 2)[0] for h in host[:, 0]])
        power = np.stack([scipy.optimize.nnls(M, h**2)[0] for h in host[:, 1]])
        return NoiseSpectra(typical, power)


def noise_spectrum(images: Any, be: Backend, samples: int = SAMPLES) -> np.ndarray:
    """:attr:`NoiseSpectra.typical` of :func:`noise_spectra`: (B, len(CENTRES)) float64."""
    return noise_spectra(images, be, samples).typical


@functools.lru_cache(maxsize=16)
def _level_weights(t0: tuple[float, ...], t1: tuple[float, ...], gain: tuple[float, ...]) -> np.ndarray:
    """``W_ic``: (n_bin, len(CENTRES)) response variance of level ``i`` per unit ``S_c``."""
    kx = np.linspace(-np.pi, np.pi, 4097)
    phi = _hats(kx)
    W = np.empty((len(t0), len(CENTRES)))
    for i, (a, b, g) in enumerate(zip(t0, t1, gain)):
        # |G(t1) - G(t0)|^2 = sum of three separable Gaussians exp(-s (kx^2 + ky^2)) with these s and signs
        total = np.zeros_like(kx)
        for s, sign in ((b * b, 1.0), (a * a, 1.0), ((a * a + b * b) / 2, -2.0)):
            ky_integral = np.sqrt(np.pi / s) * scipy.special.erf(np.pi * np.sqrt(s))
            total += sign * ky_integral * np.exp(-s * kx * kx)
        # trapezoid over kx; both integrals over [-pi, pi], divided by (2 pi)^2
        W[i] = g * g * np.trapezoid(phi * total, kx, axis=1) / (4 * np.pi**2)
    return np.clip(W, 0.0, None)


def level_noise_std(S: np.ndarray, t0: np.ndarray, t1: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Standard deviation of each DoG level's response to the measured noise.

    Parameters
    ----------
    S : (B, len(CENTRES)) array
        From :func:`noise_spectrum`.
    t0, t1, gain : (n_bin,) arrays
        Inner and outer Gaussian scales (pixels) and the gain of each level
        (``mhd.functions._scalespace.dog_pairs``).

    Returns
    -------
    (B, n_bin) float64 ndarray
        In the units of the image.
    """
    W = _level_weights(tuple(map(float, t0)), tuple(map(float, t1)), tuple(map(float, gain)))
    return np.sqrt(np.asarray(S, dtype=np.float64) @ W.T)


#: Highest frequency (rad/px) of the noise spectrum that :func:`scan_smear` fits: the band of the finest levels.
SMEAR_MAX_K = np.pi / 2


def scan_smear(S: np.ndarray, S_y: np.ndarray) -> np.ndarray:
    """Width of the scan's detector response along x (pixels): what it adds to the blur along the scan line.

    Shot noise is white before the detector; the detector's finite bandwidth
    low-passes it, and the signal with it, along each scan line (a fast dwell
    smears along x, which is no defocus). The noise spectrum along the rows
    then falls as the response's power ``|R(kx)|^2``, while along the columns
    (independent rows) it stays flat. Their ratio is fitted as
    ``exp(-s**2 kx**2)`` (the Gaussian of equal second moment) over the
    centres ``0 < kx <= SMEAR_MAX_K``, relative to the mean of the two lowest
    non-zero centres (the zero centre also holds line-to-line jitter), by
    least squares in the logarithm. Whatever both directions share cancels:
    structure that the second differences let through on a sharp, noiseless
    tile falls with frequency alike along x and y (alone it read 0.9-1.5 px
    on ISBI slices), and so does noise correlated by a camera. On the real
    100 ns SEM scans of ``tests/data/sem-kriss`` the ratio falls to ~0.44 at
    ``pi / 2`` and ~0.08 at ``pi``: ``s`` ~0.58 px.

    Parameters
    ----------
    S, S_y : (B, len(CENTRES)) arrays
        Noise spectra along the rows and along the columns
        (:attr:`NoiseSpectra.typical` of the image and of its transpose).

    Returns
    -------
    (B,) float64 ndarray
        ``s`` in pixels, >= 0 (0 where the ratio does not fall).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(S, dtype=np.float64) / np.asarray(S_y, dtype=np.float64)
        use = (CENTRES > 0) & (CENTRES <= SMEAR_MAX_K)
        y = np.log(np.clip(ratio[:, use] / ratio[:, 1:3].mean(axis=1, keepdims=True), 1e-3, None))
    k2 = CENTRES[use] ** 2
    s2 = -(y @ k2) / (k2 @ k2)
    return np.sqrt(np.clip(np.nan_to_num(s2), 0.0, None))


def white_equivalent(S: np.ndarray) -> np.ndarray:
    """Per-pixel noise standard deviation, ``sqrt(mean over kx of S)``: (B,) float64."""
    k = np.linspace(0, np.pi, 1025)
    return np.sqrt(np.clip(np.asarray(S) @ np.trapezoid(_hats(k), k, axis=1) / np.pi, 0.0, None))


#: Intensity bins of the noise level function (equal numbers of samples).
LEVEL_BINS = 16
#: Entries of the variance-stabilising look-up table over [0, 1].
LUT_SIZE = 1024
#: Largest ratio of the stabiliser's steepest slope to its flattest (where a region measures no noise).
MAX_STRETCH = 100.0


def level_rows(H: int, W: int) -> np.ndarray:
    """Centre rows of the second differences :func:`noise_level_function` reads in an (H, W) image (about
    :data:`SAMPLES` pixels); it reads each with the rows above and below."""
    rows = _rows(H)
    return rows[:: max(1, int(len(rows) * W // SAMPLES))]


def noise_level_function(image: Any, be: Backend) -> tuple[np.ndarray, np.ndarray]:
    """Noise standard deviation as a function of local intensity.

    Shot noise grows with the signal: on the real fast SEM scans the noise is
    ~9 grey levels on the dark background and ~24 on the bright particles. The
    second difference across rows (noise variance ``6 sigma(I)**2``, rows
    independent) is binned by the local mean of the three rows (5 px along
    x), and each bin's robust (median) scale is taken.

    Parameters
    ----------
    image : (H, W) float array on ``be``
        Normalised image (0..1); ``H, W >= 5``.

    Returns
    -------
    level, sigma : (n,) float64 ndarrays, n <= LEVEL_BINS
        Median intensity of each (non-empty) bin, increasing, and the noise
        standard deviation there, both in image units.
    """
    with be.use():  # the backend's device is current: arrays made here land on it, kernels run there
        rows = be.xp.asarray(level_rows(*image.shape))
        return noise_level_function_of_rows(image[rows - 1], image[rows], image[rows + 1], be)


def noise_level_function_of_rows(a: Any, b: Any, c: Any, be: Backend) -> tuple[np.ndarray, np.ndarray]:
    """:func:`noise_level_function` from the rows it reads: ``a``, ``b``, ``c`` (n, W) float arrays on ``be``,
    the rows above, at and below each of :func:`level_rows`."""
    with be.use():
        xp = be.xp
        W = b.shape[1]
        v = xp.abs(a - 2 * b + c)[:, 2:-2].ravel()
        s = xp.cumsum(a + b + c, axis=1, dtype=xp.float32)
        mean = ((s[:, 4:] - xp.pad(s, ((0, 0), (1, 0)))[:, : W - 4]) / 15.0).ravel()
        # equal-count bins from the quantiles of a subsample; a stable sort of small labels is a counting sort
        edges = xp.quantile(mean[:: max(1, mean.size // 4096)], xp.linspace(0, 1, LEVEL_BINS + 1)[1:-1])
        # the bin of each sample, as searchsorted(edges, mean) counts it, by one comparison per edge: a binary search per
        # sample mispredicts its branches (1.6 ms against 0.27 for 65k samples)
        label = xp.zeros(mean.shape, dtype=xp.int8)
        wide = mean.astype(edges.dtype)
        for edge in edges:
            label += wide > edge
        level, sigma = _bin_medians(mean, v, label, be)
        return level, sigma / (_MAD * np.sqrt(6.0))


def _bin_medians(mean: Any, v: Any, label: Any, be: Backend) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``mean`` and of ``v`` within each non-empty bin of ``label``, in bin order.

    ``mean`` and ``v`` are non-negative float32 and ``label`` int8 (n,) arrays on ``be``;
    the bins are intervals of ``mean`` (:func:`noise_level_function_of_rows`). A
    median of an even count is the mean of its two middle values. Returns two
    (bins,) float64 ndarrays, the same on every backend to the bit.

    On the CPU each bin is partitioned alone (faster there than one selection over
    all samples). On a GPU, where ``partition`` sorts fully and each value read
    back waits for the device, the samples are sorted once per array, and the
    middle values of every bin read back in one transfer: the bins' order
    statistics of ``mean`` are the array's own, since each bin is an interval of
    it; ``v`` is sorted by its bin and then its value, as one int64 key (the bits
    of a non-negative float32 order as its values do).
    """
    xp = be.xp
    if be.device is None:
        counts = np.bincount(label, minlength=LEVEL_BINS)
    else:  # CuPy's bincount waits for the device twice before it counts (negative values, the maximum)
        counts = be.to_host((label[None, :] == xp.arange(LEVEL_BINS, dtype=label.dtype)[:, None]).sum(axis=1))
    counts = counts.astype(np.int64)
    full = counts > 0
    first = (np.cumsum(counts) - counts)[full]
    mid = np.stack([first + (counts[full] - 1) // 2, first + counts[full] // 2], axis=1)  # (bins, 2): the middle two
    if be.device is None:
        order = np.argsort(label, kind="stable")  # a stable sort of small labels is a counting sort
        middle = [
            [np.partition(x[lo : lo + n], pick - lo)[pick - lo] for lo, n, pick in zip(first, counts[full], mid)]
            for x in (mean[order], v[order])
        ]
    else:
        key = (label.astype(xp.int64) << 32) | v.view(xp.int32).astype(xp.int64)
        v_mid = (xp.sort(key)[mid] & 0xFFFFFFFF).astype(xp.int32).view(xp.float32)
        middle = be.to_host(xp.stack([xp.sort(mean)[mid], v_mid]))
    both = np.asarray(middle, dtype=np.float64).reshape(2, -1, 2)  # (mean or v, bin, lower or upper middle)
    return (both[0, :, 0] + both[0, :, 1]) / 2, (both[1, :, 0] + both[1, :, 1]) / 2


def stabilizer(level: np.ndarray, sigma: np.ndarray, floor: float) -> np.ndarray | None:
    """Look-up table of the variance-stabilising transform for a noise level function.

    ``f(x) = int_0^x du / s(u)`` with ``s = sqrt(sigma(u)**2 + floor**2)``
    (``sigma`` interpolated between the bins, constant beyond them), scaled so
    that ``f(1) = 1``. After ``f`` the noise has about the same standard
    deviation at every intensity, so one noise spectrum describes the whole
    tile. ``floor`` keeps noise far below what the detector's absolute
    threshold ignores from shaping the transform.

    Returns
    -------
    (LUT_SIZE,) float32 ndarray, or None
        ``f`` sampled on ``linspace(0, 1, LUT_SIZE)``; None where it is within
        1 % of the identity (no transform needed).
    """
    u = np.linspace(0.0, 1.0, LUT_SIZE)
    s = np.sqrt(np.interp(u, level, sigma) ** 2 + floor**2)
    # a flat region measures no noise at all: the slope stays within MAX_STRETCH of the noisiest level's
    s = np.maximum(s, max(float(s.max()), 1e-12) / MAX_STRETCH)
    f = np.concatenate([[0.0], np.cumsum((1 / s[1:] + 1 / s[:-1]) / 2)])
    f /= f[-1]
    if np.max(np.abs(f - u)) < 0.01:
        return None
    return f.astype(np.float32)


def stabilize(image: Any, lut: np.ndarray, be: Backend) -> Any:
    """Apply a :func:`stabilizer` table to a normalised image (nearest entry): same shape, float32."""
    with be.use():  # the backend's device is current: arrays made here land on it, kernels run there
        xp = be.xp
        idx = (image * xp.float32(LUT_SIZE - 1) + xp.float32(0.5)).astype(xp.int32)
        return xp.take(be.asarray(lut), idx)  # take: 0.6x the time of fancy indexing in NumPy


@dataclass(frozen=True)
class NoiseModel:
    """The measured noise of a (B, H, W) stack of normalised tiles and the thresholds it sets.

    Attributes
    ----------
    spectrum, spectrum_y : (B, len(CENTRES)) float64
        Noise power spectra along the rows and along the columns, of a typical
        pixel (``mhd.functions._noise.NoiseSpectra.typical``), at least the
        grey-level rounding's ``step**2 / 12``.
    power : (B, len(CENTRES)) float64
        The spectrum along the rows as the mean power of the noise over the
        tile (``NoiseSpectra.power``), with the same floor.
    white : (B,) float64
        Per-pixel standard deviation (:func:`mhd.functions._noise.white_equivalent`).
    level_sd : (B, n_bin) float64
        Standard deviation of each level's response to that noise (``spectrum``: what the thresholds need).
    level_var : (B, n_bin) float64
        Variance of each level's response to ``power``: the noise a level's energy holds, which the blur subtracts.
    smear : (B,) float64
        Width of the scan's detector response along x (pixels; ``mhd.functions._noise.scan_smear``).
    thresholds : (B, n_bin) float64
        Each level's threshold (:class:`Detection` ``thresholds``).
    ms : float
        Milliseconds the measurement took.
    """

    spectrum: np.ndarray
    spectrum_y: np.ndarray
    power: np.ndarray
    white: np.ndarray
    level_sd: np.ndarray
    level_var: np.ndarray
    smear: np.ndarray
    thresholds: np.ndarray
    ms: float


def noise_model(norm: Any, steps: Sequence[float], t: np.ndarray, p: dict[str, Any], be: Backend) -> NoiseModel:
    """Measure the noise of a normalised (B, H, W) stack on ``be`` and set each level's threshold."""
    t0 = time.perf_counter()
    with be.use():
        # rounding to grey levels is white noise of variance step^2 / 12, which the median of a smooth tile misses
        floor = np.square(steps)[:, None] / 12
        spectra = noise_spectra(norm, be)
        spectrum, power = np.maximum(spectra.typical, floor), np.maximum(spectra.power, floor)
        # along the columns too (coarser): noise correlated along x only is the scan's detector response
        spectrum_y = np.maximum(noise_spectrum(be.xp.swapaxes(norm, 1, 2), be, samples=1 << 14), floor)
    pairs = dog_pairs(t)
    level_sd = level_noise_std(spectrum, *pairs)
    thresholds = np.maximum(p["threshold"] + p["noise_margin"] * level_sd, p["noise_k"] * level_sd)
    return NoiseModel(
        spectrum=spectrum,
        spectrum_y=spectrum_y,
        power=power,
        white=white_equivalent(spectrum),
        level_sd=level_sd,
        level_var=level_noise_std(power, *pairs) ** 2,
        smear=scan_smear(spectrum, spectrum_y),
        thresholds=thresholds,
        ms=(time.perf_counter() - t0) * 1e3,
    )
