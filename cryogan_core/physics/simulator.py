"""The cryo-EM image simulator: volume -> posed, shifted, CTF-modulated projections + noise.

Follows the image formation model of Gupta et al., "CryoGAN" (IEEE TCI 2021), Sec. III:
``y = S_t( H_phi( P_theta(x) ) ) + n`` (projection at pose theta, CTF phi, shift t, additive
noise n). Here the noise is white Gaussian and its variance is set from the target SNR as
in the paper's experiments: ``SNR_dB = 10 log10( var(clean) / var(noise) )`` with
``var(clean)`` the mean over images of each clean image's variance over the whole box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from cryogan_core.physics.ctf import CtfParams
from cryogan_core.physics.projection import Projector, forward_model


@dataclass
class SimulatedParticles:
    """A simulated particle set.

    Attributes:
        noisy: ``(n, D, D)`` float32 particle images (clean + noise), protein positive.
        clean: ``(n, D, D)`` float32 noise-free images: CTF-modulated projections
            shifted by ``-origin`` (the ground truth).
        angles_deg: ``(n, 3)`` float32 RELION Euler angles [rot, tilt, psi] in degrees.
        origins_A: ``(n, 2)`` float32 RELION origins [x, y] in Å (rlnOriginX/YAngst).
        ctf: the CTF parameters of each particle, or None for CTF-free images.
        noise_sigma: standard deviation of the added white Gaussian noise (image units).
    """

    noisy: torch.Tensor
    clean: torch.Tensor
    angles_deg: torch.Tensor
    origins_A: torch.Tensor
    ctf: CtfParams | None
    noise_sigma: float


def noise_sigma_for_snr(clean: torch.Tensor, snr_db: float) -> float:
    """Noise standard deviation that gives the requested SNR for a set of clean images.

    ``var(noise) = mean_i var(clean_i) / 10**(snr_db / 10)`` (Gupta et al. 2021, Sec. V),
    the variance of each clean image taken over its whole box.

    Args:
        clean: ``(n, H, W)`` float tensor of noise-free images.
        snr_db: signal-to-noise ratio in decibels (e.g. -10 or -20).

    Returns:
        The noise standard deviation (same units as the images).

    Raises:
        ValueError: if the clean images have zero variance.
    """
    return noise_sigma_from_variances(image_variances(clean), snr_db)


def image_variances(clean: torch.Tensor) -> torch.Tensor:
    """Each image's variance over its whole box (unbiased), the signal term of the SNR.

    Args:
        clean: ``(n, H, W)`` float tensor.

    Returns:
        ``(n,)`` tensor of the input's dtype; an image's value does not depend on the
        others, so a set can be measured batch by batch (:func:`noise_sigma_from_variances`).
    """
    return clean.reshape(clean.shape[0], -1).var(dim=1)


def noise_sigma_from_variances(variances: torch.Tensor, snr_db: float) -> float:
    """:func:`noise_sigma_for_snr` from the images' variances (:func:`image_variances`).

    Args:
        variances: ``(n,)`` variance of each clean image.
        snr_db: signal-to-noise ratio in decibels.

    Returns:
        ``sqrt(mean(variances) / 10**(snr_db / 10))``.

    Raises:
        ValueError: if the mean variance is not positive.
    """
    signal_var = variances.mean().item()
    if signal_var <= 0.0:
        raise ValueError("clean images have zero variance: cannot set an SNR")
    return float((signal_var / 10.0 ** (snr_db / 10.0)) ** 0.5)


def uniform_shifts_px(n: int, max_shift_px: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random in-plane shifts, uniform in ``[-max_shift_px, max_shift_px]`` on each axis.

    Returns:
        ``(n, 2)`` float32 shifts [x, y] in pixels.
    """
    return (torch.rand(n, 2, generator=generator) * 2.0 - 1.0) * float(max_shift_px)


def random_ctf_params(
    n: int,
    generator: torch.Generator | None = None,
    defocus_range_A: tuple[float, float] = (10000.0, 25000.0),
    astigmatism_max_A: float = 500.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
) -> CtfParams:
    """Draw CTF parameters from uniform ranges (when no STAR gives real values).

    Mean defocus is uniform in ``defocus_range_A``; the astigmatism half-difference
    ``(U - V) / 2`` is uniform in ``[0, astigmatism_max_A]`` (so DefocusU >= DefocusV, as
    CTFFIND writes them) and the astigmatism angle uniform in [0, 180) degrees. No phase
    shift, no B-factor, scale 1.

    Returns:
        A :class:`CtfParams` of length ``n`` (float32 tensors, CPU).
    """
    lo, hi = defocus_range_A
    mean = lo + (hi - lo) * torch.rand(n, generator=generator)
    half_astig = astigmatism_max_A * torch.rand(n, generator=generator)
    angle = 180.0 * torch.rand(n, generator=generator)

    def full(v: float) -> torch.Tensor:
        """``(n,)`` float32 tensor filled with ``v``."""
        return torch.full((n,), float(v), dtype=torch.float32)

    return CtfParams(
        defocus_u_A=(mean + half_astig).float(),
        defocus_v_A=(mean - half_astig).float(),
        defocus_angle_deg=angle.float(),
        voltage_kV=full(voltage_kV),
        cs_mm=full(cs_mm),
        amplitude_contrast=full(amplitude_contrast),
        phase_shift_deg=full(0.0),
        bfactor_A2=full(0.0),
        scale=full(1.0),
    )


def clean_batches(
    volume: torch.Tensor,
    pixel_size_A: float,
    angles_deg: torch.Tensor,
    origins_A: torch.Tensor,
    ctf: CtfParams | None,
    batch_size: int = 256,
    pad_factor: float = 2.0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The noise-free particle images, batch by batch (the clean half of :func:`simulate_particles`).

    Each image is RELION's predicted particle
    (:func:`cryogan_core.physics.projection.forward_model`): the projection at the pose,
    multiplied by the CTF and shifted by ``-origin``.

    Args:
        volume: ``(D, D, D)`` float32 map, ``(z, y, x)``, centre at ``D // 2``.
        pixel_size_A: pixel size of the map and images in Å.
        angles_deg: ``(n, 3)`` RELION Euler angles [rot, tilt, psi] in degrees.
        origins_A: ``(n, 2)`` RELION origins [x, y] in Å.
        ctf: CTF parameters (length n) or None for no CTF.
        batch_size: images per batch (> 0).
        pad_factor: oversampling of the Fourier-slice projector.

    Yields:
        ``(start, images)``: the index of the batch's first particle and its ``(b, D, D)``
        float32 CPU images, in order.

    Raises:
        ValueError: if the lengths of poses, origins and CTF differ, or ``batch_size`` < 1.
    """
    n = angles_deg.shape[0]
    if origins_A.shape[0] != n or (ctf is not None and len(ctf) != n):
        raise ValueError("angles, origins and CTF must have the same number of particles")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = volume.device
    # no_grad around each step, not around the yields: the caller's code between batches
    # keeps its own grad mode
    with torch.no_grad():
        projector = Projector(volume, pad_factor)  # the map's padded FFT, once for all batches
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        sub_ctf = ctf[start:stop].to(device) if ctf is not None else None
        with torch.no_grad():
            images = forward_model(
                projector, angles_deg[start:stop].to(device), origins_A[start:stop].to(device), pixel_size_A, ctf=sub_ctf
            ).cpu()
        yield start, images


def simulate_particles(
    volume: torch.Tensor,
    pixel_size_A: float,
    angles_deg: torch.Tensor,
    origins_A: torch.Tensor,
    ctf: CtfParams | None,
    snr_db: float,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    pad_factor: float = 2.0,
) -> SimulatedParticles:
    """Simulate particle images of a map at given poses, origins and CTFs, plus white noise.

    Each clean image is RELION's predicted particle (see
    :func:`cryogan_core.physics.projection.forward_model`): the projection at the pose,
    multiplied by the particle's CTF and shifted by ``-origin``. White Gaussian noise with
    the standard deviation from :func:`noise_sigma_for_snr` is added.

    Args:
        volume: ``(D, D, D)`` float32 map, ``(z, y, x)``, centre at ``D // 2``.
        pixel_size_A: pixel size of the map and images in Å.
        angles_deg: ``(n, 3)`` RELION Euler angles [rot, tilt, psi] in degrees.
        origins_A: ``(n, 2)`` RELION origins [x, y] in Å.
        ctf: CTF parameters (length n) or None for no CTF.
        snr_db: target SNR in dB (Gupta et al. 2021 definition).
        generator: torch random generator for the noise (CPU).
        batch_size: projections computed per batch (memory only).
        pad_factor: oversampling of the Fourier-slice projector.

    Returns:
        A :class:`SimulatedParticles`; its tensors are on the CPU whatever the volume's device.

    Raises:
        ValueError: if the lengths of poses, origins and CTF differ.
    """
    clean = torch.empty((angles_deg.shape[0], volume.shape[-1], volume.shape[-1]), dtype=torch.float32)
    for start, batch in clean_batches(volume, pixel_size_A, angles_deg, origins_A, ctf, batch_size, pad_factor):
        clean[start : start + batch.shape[0]] = batch
    sigma = noise_sigma_for_snr(clean, snr_db)
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
    return SimulatedParticles(
        noisy=noisy,
        clean=clean,
        angles_deg=angles_deg.float().cpu(),
        origins_A=origins_A.float().cpu(),
        ctf=ctf,
        noise_sigma=sigma,
    )
