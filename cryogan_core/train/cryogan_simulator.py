"""The CryoGAN simulator: particle images of a volume at random poses, differentiable w.r.t. the volume.

Gupta, McCann, Donati & Unser, IEEE TCI 7:759 (2021), Sec. III::

    y = normalise( S_t( H_φ( P_θ(V) ) ) + n )

a pose θ from the prior, the CTF ``H_φ`` of a randomly drawn real particle, a shift ``t`` from
the shift prior (RELION's origin convention), background noise ``n``
(:mod:`cryogan_core.physics.noise`) and RELION's background normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryogan_core.device import to_device
from cryogan_core.metrics.images import circular_mask, normalize_background
from cryogan_core.physics.ctf import CtfParams, compute_ctf
from cryogan_core.physics.euler import euler_to_matrix, random_euler_deg
from cryogan_core.physics.noise import BackgroundNoise, CroppedNoise
from cryogan_core.physics.projection import project, shift_phase

#: Shift priors the simulator draws origins from (see :class:`SimulationPriors`).
SHIFT_PRIORS = ("uniform", "gaussian", "star", "none")

__all__ = ["SHIFT_PRIORS", "SimulationPriors", "clean_signal_variance", "estimate_signal_variance", "simulate_batch"]


# ----------------------------------------------------------------------------- simulator


@dataclass
class SimulationPriors:
    """Everything the simulator draws from, at the training sampling.

    Attributes:
        ctf: CTFs of the real particles (length m); each simulated image takes a random one.
        pixel_size_A: training pixel size (Å).
        box: training box (px).
        noise: the background-noise source (its ``box`` must equal ``box``); a
            :class:`~cryogan_core.physics.noise.CroppedNoise` when the particles were
            Fourier-cropped to ``box``.
        bg_radius_px: radius (training px) outside which images are normalised to mean 0,
            std 1 (RELION ``--bg_radius``).
        shift_prior: ``"uniform"`` (each axis uniform in ±``shift_px``), ``"gaussian"``
            (σ = ``shift_px``), ``"star"`` (the ``origins_px`` rows, drawn at random), or
            ``"none"``.
        shift_px: half-width or σ of the shift prior, training px.
        angles_deg: ``(k, 3)`` RELION Euler angles to draw poses from (the input's pose
            distribution as prior), or None for uniform over SO(3).
        origins_px: ``(k, 2)`` RELION origins ``[x, y]`` in training px for ``"star"``.
        pad_factor: padding of the Fourier-slice projector (``project``).
    """

    ctf: CtfParams
    pixel_size_A: float
    box: int
    noise: BackgroundNoise | CroppedNoise
    bg_radius_px: float
    shift_prior: str = "uniform"
    shift_px: float = 0.0
    angles_deg: torch.Tensor | None = None
    origins_px: torch.Tensor | None = None
    pad_factor: float = 1.5

    def __post_init__(self) -> None:
        """Check consistency.

        Raises:
            ValueError: unknown shift prior, ``"star"`` without origins, noise box mismatch,
                empty CTF table.
        """
        if self.shift_prior not in SHIFT_PRIORS:
            raise ValueError(f"shift_prior must be one of {SHIFT_PRIORS}, got {self.shift_prior!r}")
        if self.shift_prior == "star" and (self.origins_px is None or len(self.origins_px) == 0):
            raise ValueError("shift_prior 'star' needs origins_px")
        if self.noise.box != self.box:
            raise ValueError(f"noise images are {self.noise.box} px, the training box is {self.box} px")
        if len(self.ctf) == 0:
            raise ValueError("the CTF table is empty")

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, CtfParams]:
        """Draw ``n`` (rotation matrices A ``(n, 3, 3)``, origins ``(n, 2)`` px, CTFs) on the CPU."""
        if self.angles_deg is None:
            angles = random_euler_deg(n, generator=generator)
        else:
            angles = self.angles_deg[torch.randint(0, len(self.angles_deg), (n,), generator=generator)]
        rot = euler_to_matrix(angles.float())
        if self.shift_prior == "uniform":
            origins = (torch.rand(n, 2, generator=generator) * 2.0 - 1.0) * self.shift_px
        elif self.shift_prior == "gaussian":
            origins = torch.randn(n, 2, generator=generator) * self.shift_px
        elif self.shift_prior == "star":
            origins = self.origins_px[torch.randint(0, len(self.origins_px), (n,), generator=generator)].float()
        else:
            origins = torch.zeros(n, 2)
        ctf = self.ctf[torch.randint(0, len(self.ctf), (n,), generator=generator)]
        return rot, origins, ctf


def simulate_batch(
    volume: torch.Tensor,
    priors: SimulationPriors,
    n: int,
    generator: torch.Generator,
    add_noise: bool = True,
    normalise: bool = True,
) -> torch.Tensor:
    """Simulated particles of a volume, differentiable w.r.t. the volume.

    ``normalise( irfft2( CTF · P̂_A · exp(+2πi k·o/N) ) + noise )``: projection at a pose
    from the prior, RELION's −origin shift (:func:`~cryogan_core.physics.projection.shift_phase`
    with −origin), the CTF of a random real particle at the training pixel size, a noise
    image, then :func:`~cryogan_core.metrics.images.normalize_background`.

    Args:
        volume: ``(D, D, D)`` float32 ``(z, y, x)``, D = ``priors.box``.
        priors: the simulation priors.
        n: number of images.
        generator: CPU generator for every random draw.
        add_noise: add background noise (False: clean CTF-modulated images).
        normalise: apply the background normalisation.

    Returns:
        ``(n, D, D)`` float32 on the volume's device.
    """
    d = priors.box
    dev = volume.device
    rot, origins_px, ctf = priors.draw(n, generator)
    proj = project(volume, to_device(rot, dev), priors.pad_factor)
    ft = torch.fft.rfft2(proj) * shift_phase(d, d, -to_device(origins_px, dev))
    ft = ft * compute_ctf(ctf.to(dev), d, priors.pixel_size_A, rfft=True)
    img = torch.fft.irfft2(ft, s=(d, d))
    if add_noise:
        img = img + to_device(priors.noise.sample(n, generator), dev)
    if normalise:
        img = normalize_background(img, priors.bg_radius_px)
    return img


def estimate_signal_variance(images: torch.Tensor, radius_px: float) -> float:
    """Signal variance inside the particle radius: ``mean var(inside) − mean var(outside)``.

    For normalised particles (noise std ≈ 1 everywhere) the difference is the variance the
    projections add inside the particle radius.

    Args:
        images: ``(n, D, D)`` normalised real particles.
        radius_px: particle radius (px; inside = within it of ``(D//2, D//2)``,
            :func:`~cryogan_core.metrics.images.circular_mask`).

    Returns:
        The estimate (may be ≤ 0 for pure noise; callers clamp it).

    Raises:
        ValueError: ``radius_px`` is negative.
    """
    inside = circular_mask(images.shape[-1], radius_px, device=images.device)
    var_in = images[:, inside].var(dim=1).mean()
    var_out = images[:, ~inside].var(dim=1).mean()
    return float(var_in - var_out)


def clean_signal_variance(volume: torch.Tensor, priors: SimulationPriors, n: int = 64, seed: int = 0) -> float:
    """Mean variance, inside the particle radius, of clean simulated images of ``volume``.

    Args:
        volume: ``(D, D, D)`` float32.
        priors: the simulation priors.
        n: number of images.
        seed: seed of the draws.

    Returns:
        The mean variance (image units²).
    """
    with torch.no_grad():
        img = simulate_batch(volume, priors, n, torch.Generator().manual_seed(seed), add_noise=False, normalise=False)
    d = priors.box
    c = torch.arange(d, device=img.device, dtype=torch.float32) - d // 2
    inside = (c[:, None] ** 2 + c[None, :] ** 2) <= priors.bg_radius_px**2
    return float(img[:, inside].var(dim=1).mean())


