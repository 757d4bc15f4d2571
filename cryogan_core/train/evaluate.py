"""Held-out evaluation and reference-bias controls of a trained denoiser.

Scores are computed on particles the network never saw in training (half set 2 by
default), against the reference image it was trained to produce (the map's projection at
the particle's pose, with or without the CTF, scaled to the particle by least squares).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from cryogan_core.metrics.bias import add_extra_domain, lowpass_volume, max_cc_with_library, recovery_fraction
from cryogan_core.metrics.fsc import fsc_2d, mean_fsc_in_band
from cryogan_core.metrics.images import masked_pearson, psnr
from cryogan_core.physics.ctf import CtfParams
from cryogan_core.train.pairs import InputTransform, PairSettings, input_transform, project_at_box
from cryogan_core.train.pix2pix import denoise_images


def image_scores(
    estimate: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, pixel_size_A: float, band_A: tuple[float, float] = (40.0, 10.0)
) -> dict[str, np.ndarray]:
    """Per-image agreement of estimates with references.

    Args:
        estimate: ``(n, H, W)`` images (raw or denoised).
        reference: ``(n, H, W)`` references (same units).
        mask: ``(H, W)`` bool mask for CC and PSNR.
        pixel_size_A: pixel size of the images in Å (for the FSC band).
        band_A: resolution band (low, high) in Å for the mean single-image FSC.

    Returns:
        Dict of ``(n,)`` arrays: ``cc`` (masked Pearson), ``fsc_band`` (mean FRC over the
        band: insensitive to linear filtering), ``psnr_db``; and ``frc`` ``(n, shells)`` with
        ``frc_freq_inv_A`` ``(shells,)``.
    """
    freq, frc = fsc_2d(estimate, reference, pixel_size_A)
    return {
        "cc": masked_pearson(estimate, reference, mask).cpu().numpy(),
        "fsc_band": mean_fsc_in_band(freq, frc, band_A[0], band_A[1]),
        "psnr_db": psnr(estimate, reference, mask).cpu().numpy(),
        "frc": frc,
        "frc_freq_inv_A": freq,
    }


def generator_cc(
    generator: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, ctf: torch.Tensor | None = None
) -> float:
    """Mean masked Pearson CC of the generator's outputs with their targets.

    Args:
        generator: the U-Net (switched to eval mode by :func:`denoise_images`).
        inputs: ``(n, H, W)`` float32 network inputs (normalised particles).
        targets: ``(n, H, W)`` float32 the images it should produce (same units).
        mask: ``(H, W)`` bool, the region scored.
        ctf: ``(n, H, W//2+1)`` the particles' CTFs for a CTF-aware model (see
            :func:`~cryogan_core.train.pix2pix.denoise_images`), else None.

    Returns:
        The mean over the n images of the CC inside the mask.
    """
    out = denoise_images(generator, inputs, ctf=ctf)
    return float(masked_pearson(out, targets.to(out.device), mask.to(out.device)).mean())


def noise_control(
    denoise: Callable[[torch.Tensor], torch.Tensor],
    real_inputs: torch.Tensor,
    real_outputs: torch.Tensor,
    library: torch.Tensor,
    mask: torch.Tensor,
    n_noise: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Control 1: feed pure noise and ask whether the outputs look like reference projections.

    The noise has the inputs' normalisation (white Gaussian, mean 0, std 1 = RELION's
    normalised background). Each output's best masked CC with a library of reference
    images is compared with that of real particles' outputs. A denoiser that paints the
    reference gives noise outputs as reference-like as real ones.

    Args:
        denoise: inputs ``(n, H, W)`` -> outputs ``(n, H, W)``.
        real_inputs: ``(m, H, W)`` normalised held-out particles (for the output power).
        real_outputs: ``(m, H, W)`` their denoised images.
        library: ``(k, H, W)`` reference images at many poses.
        mask: ``(H, W)`` bool.
        n_noise: number of noise images.
        seed: seed of the noise.

    Returns:
        ``bias_noise_max_cc_with_references`` (mean over noise outputs),
        ``bias_real_max_cc_with_references`` (mean over real outputs),
        ``bias_noise_output_rms_ratio`` (RMS of noise outputs / RMS of real outputs, inside
        the mask; 0 = the network outputs nothing for noise, ~1 = it paints particles).
    """
    g = torch.Generator().manual_seed(seed)
    h, w = real_inputs.shape[-2:]
    noise = torch.randn(n_noise, h, w, generator=g)
    out_noise = denoise(noise)
    m = mask.to(out_noise.dtype)

    def rms(x: torch.Tensor) -> float:
        """RMS inside the mask of ``(n, H, W)`` images, each minus its masked mean, over all n."""
        xc = x - (x * m).sum((-2, -1), keepdim=True) / m.sum()
        return float(torch.sqrt(((xc * m) ** 2).sum() / (m.sum() * x.shape[0])))

    return {
        "bias_noise_max_cc_with_references": float(max_cc_with_library(out_noise, library, mask).mean()),
        "bias_real_max_cc_with_references": float(max_cc_with_library(real_outputs, library, mask).mean()),
        "bias_noise_output_rms_ratio": rms(out_noise) / max(rms(real_outputs), 1e-12),
        "bias_noise_n_images": n_noise,
    }


@dataclass(frozen=True)
class HeldoutSimulation:
    """How the bias controls simulate particles: at the held-out particles' poses, origins
    and CTFs, in the units of the normalised real particles (``slope`` × prediction + white
    noise of ``noise_std``).

    The particles are made at the training box, where the network sees them: the
    predictions are the Fourier crops of the full-box ones
    (:func:`~cryogan_core.train.pairs.project_at_box`, several times cheaper at large
    boxes) and the noise is white noise of ``noise_std`` Fourier-cropped the same way (std
    ``noise_std · train_box / box``); they are then normalised as particles of the training
    box (:meth:`input_transform`). With ``train_box == box`` this is the simulation at the
    particles' box.

    Attributes:
        angles_deg: ``(n, 3)`` RELION Euler angles ``[rot, tilt, psi]`` of the held-out
            particles (degrees).
        origins_A: ``(n, 2)`` their ``[rlnOriginXAngst, rlnOriginYAngst]`` (Å).
        ctf: their CTFs (length n).
        pixel_size_A: pixel size of the particles (Å).
        slope: the pooled particle/prediction scale of the real particles.
        settings: pair settings of the model (targets with or without CTF, boxes).
        noise_std: std of the simulated noise (1 = RELION-normalised background).
    """

    angles_deg: torch.Tensor
    origins_A: torch.Tensor
    ctf: CtfParams
    pixel_size_A: float
    slope: float
    settings: PairSettings
    noise_std: float = 1.0

    def predict(self, volume: torch.Tensor, with_ctf: bool = True) -> torch.Tensor:
        """Noise-free images ``(n, train_box, train_box)`` of ``volume`` ``(box, box, box)`` at
        the held-out poses (:func:`~cryogan_core.train.pairs.project_at_box`), CTF'd or not."""
        with torch.no_grad():
            return project_at_box(volume, self.angles_deg, self.origins_A, self.pixel_size_A,
                                  self.ctf if with_ctf else None, box_out=self.settings.train_box)

    def target(self, volume: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """The model's training target for ``volume``: ``predicted`` (its CTF'd images) for
        CTF'd targets, else its images without CTF."""
        return predicted if self.settings.ctf_targets else self.predict(volume, with_ctf=False)

    def noise(self, like: torch.Tensor, seed: int) -> torch.Tensor:
        """White Gaussian noise shaped and placed as ``like`` (training-box images): std
        ``noise_std`` at the particles' box, so ``noise_std · train_box / box`` after the crop."""
        g = torch.Generator().manual_seed(seed)
        std = self.noise_std * self.settings.train_box / self.settings.box
        return std * torch.randn(like.shape, generator=g).to(like.device)

    def input_transform(self, raw: torch.Tensor) -> InputTransform:
        """The normalisation of simulated ``(n, train_box, train_box)`` particles: RELION's, with
        the background radius scaled to the training box (:func:`~cryogan_core.train.pairs.input_transform`)."""
        return input_transform(raw, self.settings.at_train_box())


def extra_domain_control(
    denoise: Callable[[torch.Tensor], torch.Tensor],
    volume_a: torch.Tensor,
    held: HeldoutSimulation,
    mass_fraction: float = 0.06,
    seed: int = 0,
) -> dict[str, float]:
    """Control 2 (Su et al. 2018, Fig. 5): can the denoiser show density the reference lacks?

    Map B = map A + a globular domain of ``mass_fraction`` of A's mass
    (:func:`cryogan_core.metrics.bias.add_extra_domain`). Particles of B are simulated as
    ``held`` says, denoised by the network trained on A's references, and ``r``
    (:func:`recovery_fraction`) measures the fraction of the extra domain's signal in the
    outputs.

    Args:
        denoise: inputs ``(n, tb, tb)`` -> outputs.
        volume_a: ``(box, box, box)`` the reference map at the particles' pixel size.
        held: the held-out particles' poses, CTFs and units.
        mass_fraction: mass of the extra domain relative to A.
        seed: seed of the domain placement and the noise.

    Returns:
        ``bias_extra_domain_recovery_r``, ``bias_extra_domain_mass_fraction``,
        ``bias_extra_domain_r_noise_free`` (r for noise-free B inputs: the best case).
    """
    volume_b = add_extra_domain(volume_a, mass_fraction=mass_fraction, seed=seed)
    ctf_a, ctf_b = held.predict(volume_a), held.predict(volume_b)
    tgt_a, tgt_b = held.target(volume_a, ctf_a), held.target(volume_b, ctf_b)
    results = {}
    mask = held.settings.train_mask(ctf_b.device)
    noisy = held.slope * ctf_b + held.noise(ctf_b, seed + 1)
    transform = held.input_transform(noisy)  # the normalisation the noisy particles get
    ref_a, ref_b = transform(held.slope * tgt_a), transform(held.slope * tgt_b)
    for label, raw in (("bias_extra_domain_recovery_r", noisy), ("bias_extra_domain_r_noise_free", held.slope * ctf_b)):
        out = denoise(transform(raw)).to(raw.device)
        results[label] = recovery_fraction(out, ref_a, ref_b, mask)
    results["bias_extra_domain_mass_fraction"] = mass_fraction
    results["bias_extra_domain_n_particles"] = int(held.angles_deg.shape[0])
    return results


def highres_control(
    denoise: Callable[[torch.Tensor], torch.Tensor],
    volume_a: torch.Tensor,
    held: HeldoutSimulation,
    cutoff_A: float = 20.0,
    band_high_A: float = 10.0,
    seed: int = 0,
) -> dict[str, float]:
    """Control 3: does the denoiser paint the reference's high-resolution detail?

    Particles are simulated as ``held`` says twice: from map A, and from map A low-passed
    at ``cutoff_A`` (:func:`~cryogan_core.metrics.bias.lowpass_volume`), which carries no
    signal past it. Both are denoised, and each output's single-image FRC with map A's
    reference image is averaged over ``cutoff_A``–``band_high_A`` (capped at the training
    Nyquist). For the low-passed particles any agreement there was painted in from the
    training reference; for the full-map particles it is recovered signal plus painting.

    Args:
        denoise: inputs ``(n, tb, tb)`` -> outputs.
        volume_a: ``(box, box, box)`` the reference map at the particles' pixel size.
        held: the held-out particles' poses, CTFs and units.
        cutoff_A: the low-pass of the control map (Å).
        band_high_A: high-resolution end of the FRC band (Å).
        seed: seed of the noise.

    Returns:
        ``bias_highres_frc_full_map``, ``bias_highres_frc_lowpass_map`` (mean FRC over the
        band; NaN when the training Nyquist is coarser than ``cutoff_A``),
        ``bias_highres_band_A`` ``[low, high]``.
    """
    settings = held.settings
    pixel_train = held.pixel_size_A * settings.box / settings.train_box
    band = (cutoff_A, max(band_high_A, 2.0 * pixel_train))
    out: dict[str, Any] = {"bias_highres_band_A": [band[0], band[1]]}
    if band[1] >= band[0]:
        return {**out, "bias_highres_frc_full_map": math.nan, "bias_highres_frc_lowpass_map": math.nan}
    volume_lp = lowpass_volume(volume_a, held.pixel_size_A, cutoff_A)
    pred = {"full": held.predict(volume_a), "lowpass": held.predict(volume_lp)}
    ref_a = held.target(volume_a, pred["full"])
    noise = held.noise(ref_a, seed + 2)
    mask = settings.train_mask(ref_a.device)
    for key, clean in pred.items():
        raw = held.slope * clean + noise
        transform = held.input_transform(raw)
        est = denoise(transform(raw)).to(raw.device)
        scores = image_scores(est, transform(held.slope * ref_a), mask, pixel_train, band_A=band)
        out[f"bias_highres_frc_{key}_map"] = float(np.mean(scores["fsc_band"]))
    return out
