"""The CryoGAN generator's volume: the start (Gaussian ball or a given map), its learned scale, resizing.

The volume is ``amplitude · exp(log_scale) · V`` (Gupta et al. 2021, the learned
``scalar[0]`` of the reference code ``Generators_Clean.py``); see :mod:`cryogan_core.train.wgan`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cryogan_core.errors import InputError
from cryogan_core.metrics.bias import lowpass_volume
from cryogan_core.models.volume import VoxelVolume
from cryogan_core.physics.resample import fourier_crop_or_pad_map
from cryogan_core.train.cryogan_simulator import SimulationPriors, clean_signal_variance

__all__ = ["ScaledVolume", "gaussian_ball", "initial_volume", "resize_volume", "soft_sphere_mask"]


# ----------------------------------------------------------------------------- volumes


def soft_sphere_mask(box: int, radius_px: float, edge_px: float = 2.0, device: torch.device | str | None = None) -> torch.Tensor:
    """Spherical mask with a raised-cosine edge, centre ``box//2``.

    1 inside ``radius_px``, ``½(1 + cos(π (r − R)/edge))`` for ``R < r < R + edge``, 0 beyond.

    Args:
        box: side in voxels.
        radius_px: radius R in voxels.
        edge_px: width of the cosine edge in voxels (0: hard edge).
        device: torch device.

    Returns:
        ``(box, box, box)`` float32 ``(z, y, x)``.
    """
    c = torch.arange(box, dtype=torch.float32, device=device) - box // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    if edge_px <= 0:
        return (r <= radius_px).float()
    t = ((r - radius_px) / edge_px).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def gaussian_ball(box: int, sigma_px: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Isotropic Gaussian ``exp(−r² / 2σ²)`` centred at ``box//2`` (the starting volume).

    Args:
        box: side in voxels.
        sigma_px: standard deviation in voxels (> 0).
        device: torch device.

    Returns:
        ``(box, box, box)`` float32 with maximum 1.
    """
    c = torch.arange(box, dtype=torch.float32, device=device) - box // 2
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    return torch.exp(-r2 / (2.0 * sigma_px**2))


def initial_volume(volume: torch.Tensor, box: int, pixel_size_A: float, lowpass_A: float, name: str = "initial model") -> torch.Tensor:
    """The start of training from a given map: at the training box, low-passed, non-negative.

    The map is Fourier-cropped (or padded) to ``box``, every Fourier component beyond
    ``lowpass_A`` is zeroed (:func:`~cryogan_core.metrics.bias.lowpass_volume`, a hard
    sphere, as RELION's initial low-pass filter), negative densities are set to 0 (the
    volume's positivity; a map in RELION's convention has protein positive) and the result
    is scaled to a maximum of 1 (each half's volume is rescaled to the particles' signal
    afterwards).

    Args:
        volume: ``(D, D, D)`` float32 map ``(z, y, x)`` at the particles' pixel size and box.
        box: the training box (px).
        pixel_size_A: the training pixel size (Å).
        lowpass_A: the resolution (Å) beyond which components are zeroed (> 0).
        name: how the error message names the map.

    Returns:
        ``(box, box, box)`` float32 tensor, maximum 1.

    Raises:
        InputError: the low-passed map's total density is not positive (an empty map, or
            protein negative: inverted contrast).
    """
    v = fourier_crop_or_pad_map(volume, box) if volume.shape[-1] != box else volume
    v = lowpass_volume(v, pixel_size_A, lowpass_A)
    total = float(v.sum())
    if not math.isfinite(total) or total <= 0:
        raise InputError(f"--initial_model {name}: its density sums to {total:.3g} after the {lowpass_A:g} Å low-pass; "
                         "an empty map, or protein negative (inverted contrast)?")
    v = v.clamp_min(0.0)
    return v / v.max()


class ScaledVolume(nn.Module):
    """The generator: ``amplitude · exp(log_scale) · VoxelVolume()``.

    Args:
        voxels: the constrained voxel volume (positivity, mask, symmetry).
        amplitude: fixed scale (image units per voxel unit), from the data.
        learn_scale: make ``log_scale`` a learned parameter (else a fixed 0).
    """

    def __init__(self, voxels: VoxelVolume, amplitude: float = 1.0, learn_scale: bool = True) -> None:
        super().__init__()
        self.voxels = voxels
        self.register_buffer("amplitude", torch.tensor(float(amplitude)))
        self.log_scale = nn.Parameter(torch.zeros(()), requires_grad=learn_scale)

    def forward(self) -> torch.Tensor:
        """The volume ``(D, D, D)`` float32 in image units (differentiable)."""
        return self.amplitude * torch.exp(self.log_scale) * self.voxels()

    @torch.no_grad()
    def project_(self) -> None:
        """Project the voxels onto the constraint set after an optimiser step."""
        self.voxels.project_()

    @torch.no_grad()
    def band_limit_(self, kc_shells: float) -> None:
        """Zero every Fourier coefficient of the voxel parameter beyond ``kc_shells`` (in place).

        Args:
            kc_shells: cutoff radius in Fourier shells of the box ``D`` (cycles per box; a
                coefficient at ``|k| <= kc_shells`` is kept): a hard sphere, through
                :func:`~cryogan_core.metrics.bias.lowpass_volume` at a cutoff of ``D / kc`` px.

        Raises:
            ValueError: ``kc_shells`` is not positive.
        """
        if not kc_shells > 0:
            raise ValueError(f"kc_shells must be > 0, got {kc_shells}")
        density = self.voxels.density
        density.copy_(lowpass_volume(density, 1.0, density.shape[-1] / float(kc_shells)))


def resize_volume(
    volume: ScaledVolume,
    box: int,
    mask: torch.Tensor,
    old_priors: SimulationPriors,
    new_priors: SimulationPriors,
    old_signal_variance: float,
    new_signal_variance: float,
    seed: int = 0,
) -> ScaledVolume:
    """Carry a volume to a larger (or smaller) training box: coarse-to-fine training.

    The constrained volume is Fourier-padded (:func:`~cryogan_core.physics.resample.fourier_crop_or_pad_map`,
    values and physical extent kept) to ``box``, becomes the start of a new
    :class:`~cryogan_core.models.volume.VoxelVolume` with the same constraints and the new
    ``mask``, and gets the amplitude that keeps the volume's learned brightness relative to
    the data: the variance of its clean simulated particles over the data's estimated signal
    variance is the same after the change as before it (images at another box have another
    normalisation, so the amplitude cannot simply be copied). ``log_scale`` restarts at 0.

    Args:
        volume: the trained generator at the old box.
        box: the new training box (px).
        mask: ``(box, box, box)`` float32 volume mask at the new box.
        old_priors, new_priors: the simulation priors at the old and the new box.
        old_signal_variance, new_signal_variance: the real particles' estimated signal
            variance (:func:`~cryogan_core.train.cryogan_simulator.estimate_signal_variance`) at the old and the new box.
        seed: seed of the simulated particles that measure the variances.

    Returns:
        A new :class:`ScaledVolume` at ``box`` on the CPU; its output equals the padded
        old volume up to the positivity clamp of the padding's ringing, times a scalar.

    Raises:
        ValueError: ``mask`` is not ``(box, box, box)`` (from :class:`VoxelVolume`).
    """
    with torch.no_grad():
        old = volume().detach().float().cpu()
        peak = float(old.abs().max()) or 1.0
        start = fourier_crop_or_pad_map(old / peak, box)
        cfg = volume.voxels.config
        voxels = VoxelVolume(box, init=start, positivity=cfg["positivity"], mask=mask, symmetry=cfg["symmetry"])
        ratio = clean_signal_variance(old, old_priors, seed=seed) / max(old_signal_variance, 1e-12)
        target = ratio * max(new_signal_variance, 1e-12)
        sv_unit = clean_signal_variance(voxels(), new_priors, seed=seed)
        amplitude = math.sqrt(target / max(sv_unit, 1e-12))
    return ScaledVolume(voxels, amplitude, learn_scale=bool(volume.log_scale.requires_grad))

