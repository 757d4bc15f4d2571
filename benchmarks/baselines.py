"""Classical denoisers the cGAN is compared with (benchmarks only).

- Gaussian low-pass: amplitude 0.5 at the given resolution (scipy.ndimage.gaussian_filter).
- CTF-aware Wiener filter for the CTF-modulated projection:
  ``H_i(k) = CTF_i(k)² S(k) / (CTF_i(k)² S(k) + N(k))`` with S the radial power of the
  CTF-free signal and N the radial noise power, both estimated from training pairs
  (particle, scaled reference) of half set 1.
- BM3D (Dabov et al. 2007; the ``bm3d`` package) with the noise std of normalised particles.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from cryogan_core.physics.ctf import CtfParams, compute_ctf


def gaussian_lowpass(images: np.ndarray, pixel_size_A: float, resolution_A: float = 20.0) -> np.ndarray:
    """Gaussian low-pass whose transfer is 0.5 at ``1/resolution_A`` (periodic boundary).

    Args:
        images: ``(n, H, W)`` float32.
        pixel_size_A: pixel size in Å.
        resolution_A: resolution where the amplitude is halved.

    Returns:
        ``(n, H, W)`` float32 filtered images.
    """
    sigma_k = (1.0 / resolution_A) / math.sqrt(2.0 * math.log(2.0))  # 1/Å
    sigma_px = 1.0 / (2.0 * math.pi * sigma_k * pixel_size_A)
    return ndimage.gaussian_filter(images, sigma=(0, sigma_px, sigma_px), mode="wrap").astype(np.float32)


def radial_index(box: int) -> torch.Tensor:
    """Integer radius (Fourier shell) of each rfft2 sample, ``(box, box//2+1)``."""
    ky = torch.fft.fftfreq(box) * box
    kx = torch.fft.rfftfreq(box) * box
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long()


def radial_mean(power: torch.Tensor, shells: torch.Tensor) -> torch.Tensor:
    """Mean of ``(…, H, W//2+1)`` power over each shell (averaged over leading dims)."""
    p = power.reshape(-1, *power.shape[-2:]).mean(0)
    n = int(shells.max()) + 1
    s = torch.zeros(n).index_add_(0, shells.flatten(), p.flatten())
    c = torch.zeros(n).index_add_(0, shells.flatten(), torch.ones_like(p.flatten()))
    return s / c.clamp_min(1)


def radial_whitening_filter(images: torch.Tensor) -> torch.Tensor:
    """``W = sqrt(mean P / P(k))`` from ``(n, H, H)`` images, in ``rfft2`` layout ``(H, H//2+1)``.

    ``P(k)`` is ``|rfft2(image)|²`` averaged over the images and over the integer shell
    ``round(|k|)`` (``k`` in cycles per box): :func:`radial_index` and
    :func:`radial_mean`, the shells of the benchmark's Wiener filter.
    """
    shells = radial_index(images.shape[-1])
    profile = radial_mean(torch.fft.rfft2(images.float()).abs() ** 2, shells)
    w = torch.sqrt(profile.mean() / profile.clamp_min(profile.max() * 1e-6))
    return w[shells].float()


def subtract_background_mean(images: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``(n, H, H)`` images minus each one's mean over the ``(H, H)`` bool ``background`` pixels
    (the mean half of RELION's normalisation, for images whose scale is set elsewhere)."""
    return images - images[:, background].mean(1)[:, None, None]


class CtfWiener:
    """A CTF-aware Wiener filter fitted on (particle, reference) training pairs.

    Args:
        inputs: ``(n, H, W)`` normalised training particles.
        references: ``(n, H, W)`` their noise-free CTF-modulated references (same units).
        ctf: the training particles' CTFs.
        pixel_size_A: pixel size of the images.
    """

    def __init__(self, inputs: torch.Tensor, references: torch.Tensor, ctf: CtfParams, pixel_size_A: float) -> None:
        box = inputs.shape[-1]
        self.box, self.pixel_size_A = box, pixel_size_A
        self.shells = radial_index(box)
        c2 = compute_ctf(ctf, box, pixel_size_A) ** 2
        sig = radial_mean(torch.fft.rfft2(references).abs() ** 2, self.shells)
        noise = radial_mean(torch.fft.rfft2(inputs - references).abs() ** 2, self.shells)
        c2r = radial_mean(c2, self.shells).clamp_min(1e-3)
        self.signal = (sig / c2r)[self.shells]
        self.noise = noise.clamp_min(1e-12)[self.shells]

    def __call__(self, images: torch.Tensor, ctf: CtfParams) -> torch.Tensor:
        """Filter ``(n, H, W)`` images with their own CTFs; returns ``(n, H, W)``."""
        c2 = compute_ctf(ctf, self.box, self.pixel_size_A) ** 2
        h = c2 * self.signal / (c2 * self.signal + self.noise)
        return torch.fft.irfft2(torch.fft.rfft2(images) * h, s=images.shape[-2:])


def bm3d_denoise(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """BM3D on each image (``bm3d`` package), noise std ``sigma`` (1 for normalised particles).

    Raises:
        ImportError: when the ``bm3d`` package is not installed (``pip install bm3d``).
    """
    import bm3d

    return np.stack([bm3d.bm3d(img.astype(np.float64), sigma_psd=sigma).astype(np.float32) for img in images])
