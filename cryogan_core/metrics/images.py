"""Per-image measures: circular masks, masked correlation, least-squares scale, PSNR,
signal and noise variance (SNR), and RELION background normalisation. All batched over
``(n, H, W)`` torch tensors on any device; results are float32 on the inputs' device.
"""

from __future__ import annotations

import math

import torch

from cryogan_core.device import to_device
from cryogan_core.errors import InputError


def circular_mask(box: int, radius_px: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean disc of radius ``radius_px`` centred at ``(box//2, box//2)``.

    Args:
        box: side length in pixels.
        radius_px: radius in pixels; a pixel is inside when its distance to the centre
            is <= radius (RELION's background is ``r > bg_radius``).
        device: torch device.

    Returns:
        ``(box, box)`` bool tensor.

    Raises:
        ValueError: if ``box < 1`` or ``radius_px < 0``.
    """
    if box < 1 or radius_px < 0:
        raise ValueError(f"need box >= 1 and radius_px >= 0, got box={box}, radius_px={radius_px}")
    c = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    r2 = c.reshape(-1, 1) ** 2 + c.reshape(1, -1) ** 2
    return r2 <= float(radius_px) ** 2


def _prepare(
    a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes; return float32 (n, H, W) tensors and a float (1, H, W) mask weight."""
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"inputs must be equal (n, H, W) stacks, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.to(torch.float32)
    b = b.to(device=a.device, dtype=torch.float32)
    if mask is None:
        m = torch.ones(a.shape[-2:], device=a.device)
    else:
        if tuple(mask.shape) != tuple(a.shape[-2:]):
            raise ValueError(f"mask must be {tuple(a.shape[-2:])}, got {tuple(mask.shape)}")
        m = mask.to(device=a.device, dtype=torch.float32)
        if float(m.sum()) == 0:
            raise ValueError("mask selects no pixels")
    return a, b, m.unsqueeze(0)


def _masked_centre(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x minus its per-image mean inside the mask, zero outside."""
    mean = (x * m).sum(dim=(-2, -1), keepdim=True) / m.sum()
    return (x - mean) * m


def masked_pearson(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image Pearson correlation inside a mask.

    Args:
        a, b: ``(n, H, W)`` images.
        mask: ``(H, W)`` bool (True = used) or None for all pixels.

    Returns:
        ``(n,)`` float32; 0 where either image is constant inside the mask.

    Raises:
        ValueError: on shape mismatch or an empty mask.
    """
    a, b, m = _prepare(a, b, mask)
    ac, bc = _masked_centre(a, m), _masked_centre(b, m)
    num = (ac * bc).sum(dim=(-2, -1))
    den = torch.sqrt((ac * ac).sum(dim=(-2, -1)) * (bc * bc).sum(dim=(-2, -1)))
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


def least_squares_scale(
    target: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image scale a minimising ``‖(t − t̄) − a·(r − r̄)‖²`` inside the mask.

    Means (inside the mask) are removed first, so a is the slope of the regression
    ``target ≈ a·reference + b``; constant offsets (e.g. a normalised particle vs a
    projection with a DC term) do not bias it.

    Args:
        target: ``(n, H, W)`` images, e.g. particles.
        reference: ``(n, H, W)`` images, e.g. CTF-modulated projections.
        mask: ``(H, W)`` bool or None.

    Returns:
        ``(n,)`` float32 ``a = <t − t̄, r − r̄> / <r − r̄, r − r̄>``; 0 where the reference
        is constant inside the mask.

    Raises:
        ValueError: on shape mismatch or an empty mask.
    """
    t, r, m = _prepare(target, reference, mask)
    tc, rc = _masked_centre(t, m), _masked_centre(r, m)
    num = (tc * rc).sum(dim=(-2, -1))
    den = (rc * rc).sum(dim=(-2, -1))
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


def psnr(estimate: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, dB.

    ``PSNR = 10·log10(peak² / MSE)`` with ``peak = max(truth) − min(truth)`` and
    ``MSE = mean((estimate − truth)²)``, both over the mask pixels of each image (all
    pixels when mask is None). No mean removal or rescaling.

    Args:
        estimate, truth: ``(n, H, W)``.
        mask: ``(H, W)`` bool or None.

    Returns:
        ``(n,)`` float32 dB; ``+inf`` where MSE is 0, ``-inf`` where the truth is
        constant (peak 0) but the estimate differs.

    Raises:
        ValueError: on shape mismatch or an empty mask.
    """
    e, t, m = _prepare(estimate, truth, mask)
    sel = m.expand_as(t) > 0
    big = torch.finfo(torch.float32).max
    peak = torch.where(sel, t, torch.full_like(t, -big)).amax(dim=(-2, -1)) - torch.where(
        sel, t, torch.full_like(t, big)
    ).amin(dim=(-2, -1))
    mse = (((e - t) ** 2) * m).sum(dim=(-2, -1)) / m.sum()
    out = 10.0 * torch.log10(peak**2 / mse.clamp_min(torch.finfo(torch.float32).tiny))
    return torch.where(mse > 0, out, torch.full_like(out, math.inf))


def signal_and_noise_variance(particles: torch.Tensor, predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each particle's signal and noise variance, given its noise-free prediction.

    The signal is the prediction (e.g. the CTF'd projection at the particle's pose, put in
    the particle's units by least squares), the noise is what is left,
    ``particle − prediction``; each variance is taken over the whole box, as in the SNR
    definition of Gupta et al. 2021, Sec. V (:func:`cryogan_core.physics.simulator.noise_sigma_for_snr`).
    Where the prediction misses part of the signal (a wrong pose, a map that lacks a
    domain), that part counts as noise, so the SNR it gives is a lower bound.

    Args:
        particles: ``(n, H, W)`` float images.
        predictions: ``(n, H, W)`` their noise-free predictions, same units.

    Returns:
        ``(signal_var (n,), noise_var (n,))`` float32 (image units squared; population
        variances over the ``H·W`` pixels).

    Raises:
        ValueError: on shape mismatch.
    """
    if particles.shape != predictions.shape or particles.dim() != 3:
        raise ValueError(f"particles {tuple(particles.shape)} and predictions {tuple(predictions.shape)} must both be (n, H, W)")
    p = particles.to(torch.float32).reshape(particles.shape[0], -1)
    s = predictions.to(torch.float32).reshape(predictions.shape[0], -1)
    return s.var(dim=1, unbiased=False), (p - s).var(dim=1, unbiased=False)


def background_signal_and_noise_variance(images: torch.Tensor, radius_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each particle's signal and noise variance without a pose: from its background.

    The noise variance is the variance of the pixels farther than ``radius_px`` from the
    centre ``(D//2, D//2)`` (RELION's background); the signal variance is the variance
    over the whole box minus it, so that, with stationary noise, the two are the terms of
    the SNR definition of Gupta et al. 2021, Sec. V, as in :func:`signal_and_noise_variance`
    but with no prediction. Neighbouring particles, ice edges and signal spread past the
    radius by the CTF count as noise, so on real particles it reads low (the 1,211 real
    β-gal particles: −12.0 dB here at radius 0.4 × box, −11.7 dB from their poses and map).

    Args:
        images: ``(n, D, D)`` float images.
        radius_px: particle radius in pixels (> 0).

    Returns:
        ``(signal_var (n,), noise_var (n,))`` float32 (image units squared; population
        variances; a signal variance may be negative for pure noise).

    Raises:
        ValueError: if images are not ``(n, D, D)`` or ``radius_px`` is not positive.
        InputError: if no pixel lies outside the radius.
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square (n, D, D), got {tuple(images.shape)}")
    if not radius_px > 0:
        raise ValueError(f"radius_px must be > 0, got {radius_px}")
    box = images.shape[-1]
    bg = ~circular_mask(box, radius_px)
    if not bool(bg.any()):
        raise InputError(f"background radius {radius_px:.1f} px leaves no background pixels in a {box} px box")
    x = images.to(torch.float32)
    noise = x[:, to_device(bg, x.device)].var(dim=1, unbiased=False)
    return x.reshape(x.shape[0], -1).var(dim=1, unbiased=False) - noise, noise


def snr_db(signal_var: torch.Tensor, noise_var: torch.Tensor) -> float:
    """Signal-to-noise ratio of a particle set in dB: ``10·log10(mean(signal_var) / mean(noise_var))``.

    The definition of Gupta et al. 2021, Sec. V, used by ``cryogan simulate``: the mean
    over images of each image's signal variance over the mean noise variance.

    Args:
        signal_var, noise_var: ``(n,)`` per-image variances
            (:func:`signal_and_noise_variance`).

    Returns:
        The SNR in dB (float); ``-inf`` for zero signal.

    Raises:
        ValueError: for empty inputs or zero noise variance.
    """
    if signal_var.numel() == 0 or noise_var.numel() == 0:
        raise ValueError("no particles to estimate an SNR from")
    noise = float(noise_var.to(torch.float64).mean())
    if noise <= 0.0:
        raise ValueError("the noise variance is zero: the particles equal their predictions")
    signal = float(signal_var.to(torch.float64).mean())
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def normalize_background(images: torch.Tensor, radius_px: float) -> torch.Tensor:
    """RELION normalisation: mean 0, standard deviation 1 of the background pixels.

    The background is every pixel farther than ``radius_px`` from the centre
    ``(D//2, D//2)`` (RELION ``relion_preprocess --norm --bg_radius``; ``normalise`` in
    ``src/preprocessing.cpp``). The population standard deviation (ddof 0) is used, as
    RELION does. An image with a constant background is only mean-subtracted.

    Args:
        images: ``(n, D, D)`` float images.
        radius_px: background radius in pixels.

    Returns:
        ``(n, D, D)`` float32 normalised images.

    Raises:
        InputError: if no pixel lies outside the radius (radius too large for the box).
        ValueError: if images are not square ``(n, D, D)`` or radius is negative.
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square (n, D, D), got {tuple(images.shape)}")
    if radius_px < 0:
        raise ValueError(f"radius_px must be >= 0, got {radius_px}")
    x = images.to(torch.float32)
    box = x.shape[-1]
    # the mask is made and counted on the CPU, then copied without a wait (counting it on a
    # GPU would make the CPU wait for the GPU's queue)
    bg = (~circular_mask(box, radius_px)).to(torch.float32)
    n_bg = float(bg.sum())
    bg = to_device(bg, x.device)
    if n_bg == 0:
        max_r = math.hypot(box // 2, box // 2)
        raise InputError(
            f"background radius {radius_px} px leaves no background pixels in a {box}x{box} px box"
            f" (corner distance {max_r:.1f} px)"
        )
    mean = (x * bg).sum(dim=(-2, -1), keepdim=True) / n_bg
    var = (((x - mean) ** 2) * bg).sum(dim=(-2, -1), keepdim=True) / n_bg
    std = torch.sqrt(var)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x - mean) / std
