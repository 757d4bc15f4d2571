"""Fourier shell / ring correlation, ring power spectra, resolution estimates and RELION-style FSC tables.

Shells: shell index ``round(|k|·D)`` with k from ``fftfreq(D)`` (cycles per pixel), i.e.
shells of width ``1/(D·pixel)`` Å⁻¹, from 0 (DC) to ``D//2`` (Nyquist for even D).
``FSC(s) = Re Σ F1·F2* / sqrt(Σ|F1|² · Σ|F2|²)`` over the full (Hermitian) spectrum
(van Heel & Schatz, J. Struct. Biol. 2005; RELION ``getFSC``, ``src/fftw.cpp``). A shell
with zero power in either input gets 0.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch

from cryogan_core.errors import InputError

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike) -> np.ndarray:
    """float64 numpy copy of a numpy array or (possibly CUDA, grad-carrying) tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _rfft_shells_and_multiplicity(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Shell index round(|k|·D) and Hermitian multiplicity (1 or 2) on an rfftn grid."""
    d = shape[0]
    axes = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt(sum(g * g for g in grids))
    shells = np.rint(radius * d).astype(np.int64)
    n_last = shape[-1]
    mult = np.full(grids[-1].shape, 2.0)
    mult[..., 0] = 1.0
    if n_last % 2 == 0:
        mult[..., -1] = 1.0
    return shells, mult


def _ring_grid(h: int, pixel_size_A: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rings of an ``(H, H)`` image's rfft2 grid: ``(freq_inv_A (H//2+1,), ring index, multiplicity)``.

    Raises:
        ValueError: if the pixel size is not positive.
    """
    if not pixel_size_A > 0:
        raise ValueError(f"pixel_size_A must be positive, got {pixel_size_A}")
    shells, mult = _rfft_shells_and_multiplicity((h, h))
    return np.arange(h // 2 + 1) / (h * pixel_size_A), shells, mult


def _shell_sums(values: np.ndarray, shells: np.ndarray, mult: np.ndarray, n_shells: int) -> np.ndarray:
    """Multiplicity-weighted sum per item and shell: ``values (m, *grid)`` -> ``(m, n_shells)``
    (grid samples in shells >= ``n_shells``, beyond the Nyquist, are left out)."""
    m = values.shape[0]
    keep = shells < n_shells
    offsets = (np.arange(m)[:, None] * n_shells + shells[keep][None, :]).ravel()
    weights = (values[:, keep] * mult[keep]).ravel()
    return np.bincount(offsets, weights=weights, minlength=m * n_shells).reshape(m, n_shells)


def _shell_correlation(
    f1: np.ndarray, f2: np.ndarray, shells: np.ndarray, mult: np.ndarray, n_shells: int
) -> np.ndarray:
    """Per-item shell correlation; f1, f2 (m, *grid) complex -> (m, n_shells)."""
    num = _shell_sums(np.real(f1 * np.conj(f2)), shells, mult, n_shells)
    den = np.sqrt(_shell_sums(np.abs(f1) ** 2, shells, mult, n_shells) * _shell_sums(np.abs(f2) ** 2, shells, mult, n_shells))
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def fsc(map1: ArrayLike, map2: ArrayLike, pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """3-D Fourier shell correlation of two maps.

    Args:
        map1, map2: ``(D, D, D)`` maps (numpy or torch, any device), same shape.
        pixel_size_A: Å per voxel.

    Returns:
        ``(freq_inv_A, fsc)``, both ``(D//2 + 1,)`` float64: shell s has frequency
        ``s / (D·pixel_size_A)`` Å⁻¹; FSC per shell from 0 (DC) to ``D//2``.

    Raises:
        ValueError: if the maps are not cubic, differ in shape, or the pixel size is
            not positive.
    """
    a, b = _as_numpy(map1), _as_numpy(map2)
    if a.ndim != 3 or len(set(a.shape)) != 1 or a.shape != b.shape:
        raise ValueError(f"maps must be cubic and equal in shape, got {a.shape} and {b.shape}")
    if not pixel_size_A > 0:
        raise ValueError(f"pixel_size_A must be positive, got {pixel_size_A}")
    d = a.shape[0]
    n_shells = d // 2 + 1
    shells, mult = _rfft_shells_and_multiplicity(a.shape)
    curve = _shell_correlation(np.fft.rfftn(a)[None], np.fft.rfftn(b)[None], shells, mult, n_shells)[0]
    return np.arange(n_shells) / (d * pixel_size_A), curve


def fsc_2d(
    images1: ArrayLike, images2: ArrayLike, pixel_size_A: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Fourier ring correlation.

    Args:
        images1, images2: ``(n, H, H)`` images (numpy or torch), same shape.
        pixel_size_A: Å per pixel.

    Returns:
        ``(freq_inv_A (H//2+1,), frc (n, H//2+1))`` float64; ring r has frequency
        ``r / (H·pixel_size_A)`` Å⁻¹, ring index ``round(|k|·H)``.

    Raises:
        ValueError: if the stacks are not ``(n, H, H)`` or differ in shape, or the pixel
            size is not positive.
    """
    a, b = _as_numpy(images1), _as_numpy(images2)
    if a.ndim != 3 or a.shape[-1] != a.shape[-2] or a.shape != b.shape:
        raise ValueError(f"image stacks must be (n, H, H) and equal, got {a.shape} and {b.shape}")
    freq, shells, mult = _ring_grid(a.shape[-1], pixel_size_A)
    fa = np.fft.rfft2(a)
    fb = np.fft.rfft2(b)
    return freq, _shell_correlation(fa, fb, shells, mult, len(freq))


def ring_power_spectrum(images: ArrayLike, pixel_size_A: float, per_image: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rotationally averaged power spectrum of a stack of images (their mean, or each image's).

    ``power[r] = mean over the images and over the Fourier coefficients k of ring r of
    |DFT(image)(k)|² / H²``, rings as :func:`fsc_2d`'s (``round(|k|·H)``, the full Hermitian
    spectrum counted). With this normalisation white noise of variance σ² reads σ² in every
    ring (Parseval), so spectra of images in the same units compare directly.

    Args:
        images: ``(n, H, H)`` images (numpy or torch, any device), n >= 1.
        pixel_size_A: Å per pixel.
        per_image: return each image's spectrum ``(n, H//2+1)`` instead of their mean.

    Returns:
        ``(freq_inv_A (H//2+1,), power (H//2+1,) or (n, H//2+1))`` float64; ring r has frequency
        ``r / (H·pixel_size_A)`` Å⁻¹, from 0 (DC) to ``H//2``.

    Raises:
        ValueError: if the stack is not ``(n, H, H)`` with n >= 1, or the pixel size is not
            positive.
    """
    a = _as_numpy(images)
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"images must be a non-empty (n, H, H) stack, got {a.shape}")
    h = a.shape[-1]
    freq, shells, mult = _ring_grid(h, pixel_size_A)
    power = np.abs(np.fft.rfft2(a)) ** 2 / float(h * h)
    if not per_image:
        power = power.mean(axis=0, keepdims=True)
    count = _shell_sums(np.ones((1, *shells.shape)), shells, mult, len(freq))
    rings = _shell_sums(power, shells, mult, len(freq)) / count
    return freq, rings if per_image else rings[0]


def resolution_at(freq_inv_A: np.ndarray, curve: np.ndarray, threshold: float = 0.143) -> float:
    """Resolution (Å) where an FSC/FRC curve first falls below ``threshold``.

    Shell 0 is ignored. The crossing between shells i−1 and i (first i >= 1 with
    ``curve[i] < threshold``) is located by linear interpolation in frequency, and
    ``1/f`` is returned. If the curve never falls below, ``1/freq_inv_A[-1]`` (Nyquist,
    2·pixel, for even boxes; the last measured shell for odd ones). If it is already
    below at shell 1, ``inf``.

    Args:
        freq_inv_A: ``(n_shells,)`` shell frequencies in Å⁻¹ (increasing, from 0).
        curve: ``(n_shells,)`` correlation values.
        threshold: e.g. 0.143 (gold standard, Rosenthal & Henderson 2003) or 0.5.

    Returns:
        resolution in Å (float).

    Raises:
        ValueError: if the arrays differ in length or have fewer than 2 shells.
    """
    f = np.asarray(freq_inv_A, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    if f.shape != c.shape or f.ndim != 1 or f.size < 2:
        raise ValueError(f"freq and curve must be equal 1-D arrays of >= 2 shells, got {f.shape}, {c.shape}")
    below = np.nonzero(c[1:] < threshold)[0]
    if below.size == 0:
        return float(1.0 / f[-1])
    i = int(below[0]) + 1
    if i == 1:
        return float("inf")
    t = (c[i - 1] - threshold) / (c[i - 1] - c[i])
    f_cross = f[i - 1] + t * (f[i] - f[i - 1])
    return float(1.0 / f_cross)


def shells_up_to(freq_inv_A: np.ndarray, curve: np.ndarray, max_freq_inv_A: float) -> tuple[np.ndarray, np.ndarray]:
    """The shells of an FSC curve up to ``max_freq_inv_A`` (inclusive, to within 1e-9).

    For maps Fourier-padded from a smaller cube (CryoGAN trains at ``box_train`` and writes
    at the particles' box): beyond the training Nyquist, ``1 / (2 · pixel_train_A)``, only
    the corners of the training cube carry data, so those shells are partial and a
    resolution read from them would claim more than the training box can hold. Cut the
    curve there first; ``resolution_at`` of the result is then at most that Nyquist.

    Args:
        freq_inv_A: ``(n_shells,)`` shell frequencies in Å⁻¹, increasing.
        curve: ``(n_shells,)`` FSC values.
        max_freq_inv_A: the highest frequency to keep, in Å⁻¹.

    Returns:
        ``(freq, curve)``: float64 copies of the first shells, ``(m,)`` with ``m <= n_shells``.

    Raises:
        ValueError: if the arrays differ in shape, or fewer than 2 shells would remain.
    """
    f = np.asarray(freq_inv_A, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    if f.shape != c.shape:
        raise ValueError(f"freq and curve differ in shape: {f.shape}, {c.shape}")
    keep = f <= max_freq_inv_A + 1e-9
    if keep.sum() < 2:
        raise ValueError(f"fewer than 2 shells below {max_freq_inv_A:g} 1/Å")
    return f[keep].copy(), c[keep].copy()


def mean_fsc_in_band(
    freq_inv_A: np.ndarray, curves: np.ndarray, low_A: float = 40.0, high_A: float = 10.0
) -> np.ndarray:
    """Mean of FSC/FRC curves over the shells with ``1/low_A <= f <= 1/high_A``.

    Args:
        freq_inv_A: ``(n_shells,)`` Å⁻¹.
        curves: ``(..., n_shells)``.
        low_A: low-resolution end of the band, Å (e.g. 40).
        high_A: high-resolution end, Å (e.g. 10), ``high_A < low_A``.

    Returns:
        ``(...)`` float64 array of band means.

    Raises:
        InputError: if no shell falls in the band (box too small or pixel too coarse).
        ValueError: if ``high_A >= low_A`` or the last axis does not match.
    """
    f = np.asarray(freq_inv_A, dtype=np.float64)
    c = np.asarray(curves, dtype=np.float64)
    if not 0 < high_A < low_A:
        raise ValueError(f"need 0 < high_A < low_A, got high_A={high_A}, low_A={low_A}")
    if c.shape[-1] != f.shape[0]:
        raise ValueError(f"curves have {c.shape[-1]} shells, freq has {f.shape[0]}")
    band = (f >= 1.0 / low_A - 1e-12) & (f <= 1.0 / high_A + 1e-12)
    if not band.any():
        nyq = 1.0 / f[-1] if f[-1] > 0 else float("inf")
        raise InputError(
            f"no Fourier shell between {low_A} Å and {high_A} Å "
            f"(shell spacing {f[1] if f.size > 1 else 0:.4g} 1/Å, highest shell {nyq:.3g} Å)"
        )
    return c[..., band].mean(axis=-1)


def write_fsc_star(path: str | os.PathLike, freq_inv_A: np.ndarray, fsc: np.ndarray) -> None:
    """Write an FSC curve as a RELION-style STAR table ``data_fsc`` (atomically).

    Columns: rlnSpectralIndex (int), rlnResolution (Å⁻¹), rlnAngstromResolution (Å;
    999 for shell 0, as RELION writes it), rlnFourierShellCorrelation. The file is
    written to a temporary name in the same folder, then ``os.replace``d.

    Args:
        path: output .star path.
        freq_inv_A: ``(n_shells,)`` Å⁻¹.
        fsc: ``(n_shells,)`` correlation values.

    Raises:
        ValueError: if the arrays differ in length or are not 1-D.
    """
    f = np.asarray(freq_inv_A, dtype=np.float64)
    c = np.asarray(fsc, dtype=np.float64)
    if f.ndim != 1 or f.shape != c.shape:
        raise ValueError(f"freq and fsc must be equal 1-D arrays, got {f.shape}, {c.shape}")
    with np.errstate(divide="ignore"):
        res_A = np.where(f > 0, 1.0 / np.where(f > 0, f, 1.0), 999.0)
    df = pd.DataFrame(
        {
            "rlnSpectralIndex": np.arange(f.size, dtype=np.int64),
            "rlnResolution": f,
            "rlnAngstromResolution": res_A,
            "rlnFourierShellCorrelation": c,
        }
    )
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        starfile.write({"fsc": df}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
