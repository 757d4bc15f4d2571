"""Reference-bias controls of a reference-guided denoiser ("Einstein from noise").

A network trained to map particles to reference projections can paint the reference into
anything (Henderson 2013, PNAS 110:18037, "Avoiding the pitfalls of single particle
cryo-electron microscopy: Einstein from noise"). Two controls:

1. Pure noise in: do the outputs look like reference projections? Compare the best
   correlation of each output with a library of reference images, for noise inputs and for
   real particles (:func:`max_cc_with_library`).
2. Apo versus complex (Su et al. 2018, Fig. 5): train on particles of map A, denoise
   particles of map B = A + an extra domain that A lacks, and measure the fraction of the
   extra domain's signal recovered, ``r = <out - P_A, P_B - P_A> / ||P_B - P_A||²``
   (:func:`recovery_fraction`; 1 = recovered, 0 = the reference painted over it).
3. High-resolution painting: denoise particles of map A low-passed at 20 Å (they carry no
   signal past 20 Å) and measure the outputs' mean FRC with map A's projections over
   20–10 Å; whatever agreement is there was painted in (:func:`lowpass_volume`,
   :func:`cryogan_core.train.evaluate.highres_control`).
"""

from __future__ import annotations

import torch



def _unit_vectors(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked pixels of each image, mean removed and scaled to unit norm: ``(n, n_masked)``."""
    v = images[:, mask]
    v = v - v.mean(dim=1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def max_cc_with_library(outputs: torch.Tensor, library: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Best masked Pearson CC of each output with any image of a reference library.

    The CC matrix is one matrix product of mean-removed, unit-norm masked pixel vectors
    (the same number as :func:`cryogan_core.metrics.images.masked_pearson` pair by pair).

    Args:
        outputs: ``(n, H, W)`` denoised images.
        library: ``(m, H, W)`` reference images (e.g. CTF'd projections at many poses).
        mask: ``(H, W)`` bool.

    Returns:
        ``(n,)`` float32 maximum CC over the library (CPU).
    """
    a = _unit_vectors(outputs.float(), mask.to(outputs.device))
    b = _unit_vectors(library.float().to(outputs.device), mask.to(outputs.device))
    return (a @ b.T).max(dim=1).values.cpu()


def recovery_fraction(outputs: torch.Tensor, proj_a: torch.Tensor, proj_b: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of the extra domain's signal a denoiser recovered (Su et al. 2018, Fig. 5).

    ``r = Σ_i <out_i - P_A,i, P_B,i - P_A,i>_mask / Σ_i ||P_B,i - P_A,i||²_mask``, pooled
    over particles: the projection of the output's departure from map A onto the true
    departure. 1: the extra domain is fully recovered; 0: the output is map A's projection
    (the reference painted over the data); between: partly.

    Args:
        outputs: ``(n, H, W)`` denoised images of particles of map B.
        proj_a: ``(n, H, W)`` the images map A predicts at the same poses (same units).
        proj_b: ``(n, H, W)`` the images map B predicts (the truth without noise).
        mask: ``(H, W)`` bool.

    Returns:
        r as a float.

    Raises:
        ValueError: if the two maps predict identical images (no extra domain).
    """
    m = mask.to(outputs.dtype)
    diff = (proj_b - proj_a) * m
    den = float((diff * diff).sum())
    if den <= 0:
        raise ValueError("map B predicts the same images as map A: no extra domain to recover")
    return float((((outputs - proj_a) * m) * diff).sum()) / den


def add_extra_domain(volume: torch.Tensor, mass_fraction: float = 0.06, radius_px: float | None = None, seed: int = 0, max_radius_frac: float = 0.36) -> torch.Tensor:
    """Map B: map A plus a globular domain it lacks, attached to its surface.

    A random direction (seeded) is followed from the box centre until A's density falls
    below 5 % of its maximum; a smooth sphere (cosine edge, radius ``radius_px``) is centred
    one radius beyond that surface point (kept within ``max_radius_frac`` × box of the
    centre so it stays inside the particle mask) and scaled so that its integrated density
    is ``mass_fraction`` × the integral of A's positive density.

    Args:
        volume: ``(D, D, D)`` map A (positive = protein).
        mass_fraction: mass of the extra domain relative to A (>= 0.05 for Su et al.'s test).
        radius_px: radius of the domain; default 0.08 × D.
        seed: seed of the direction.
        max_radius_frac: the domain centre stays within this fraction of D from the centre.

    Returns:
        ``(D, D, D)`` map B (same dtype and device).
    """
    d = volume.shape[-1]
    r = float(radius_px) if radius_px else 0.08 * d
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(3, generator=g)
    direction = direction / direction.norm()
    centre = torch.tensor([d // 2] * 3, dtype=torch.float32)
    thresh = 0.05 * float(volume.max())
    t = 0.0
    vol_cpu = volume.detach().cpu()
    while t < d / 2:
        p = torch.round(centre + t * direction).long().clamp(0, d - 1)
        if float(vol_cpu[p[2], p[1], p[0]]) < thresh and t > 2:
            break
        t += 0.5
    dist = min(t + r, max_radius_frac * d)
    c = centre + dist * direction  # (x, y, z)
    zz, yy, xx = torch.meshgrid(*(torch.arange(d, dtype=torch.float32),) * 3, indexing="ij")
    rr = torch.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2)
    edge = 2.0
    sphere = torch.where(rr <= r, torch.ones_like(rr), 0.5 * (1 + torch.cos(torch.pi * torch.clamp((rr - r) / edge, 0, 1))))
    sphere = torch.where(rr > r + edge, torch.zeros_like(rr), sphere)
    mass_a = float(vol_cpu.clamp_min(0).sum())
    domain = sphere * (mass_fraction * mass_a / float(sphere.sum()))
    return volume + domain.to(volume.device, volume.dtype)


def lowpass_volume(volume: torch.Tensor, pixel_size_A: float, cutoff_A: float) -> torch.Tensor:
    """The map with every Fourier component past ``cutoff_A`` set to zero (a hard sphere).

    Args:
        volume: ``(D, D, D)`` float map.
        pixel_size_A: voxel size in Å.
        cutoff_A: resolution in Å; components at spatial frequency ``> 1/cutoff_A`` are removed.

    Returns:
        ``(D, D, D)`` float32 map on ``volume.device``.

    Raises:
        ValueError: if the map is not cubic or ``pixel_size_A`` / ``cutoff_A`` is not positive.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must be cubic (D, D, D), got {tuple(volume.shape)}")
    if not (pixel_size_A > 0 and cutoff_A > 0):
        raise ValueError(f"pixel_size_A and cutoff_A must be > 0, got {pixel_size_A} and {cutoff_A}")
    d = volume.shape[-1]
    f = torch.fft.fftfreq(d, d=pixel_size_A, device=volume.device)
    fx = torch.fft.rfftfreq(d, d=pixel_size_A, device=volume.device)
    radius = torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)
    keep = (radius <= 1.0 / cutoff_A).to(torch.float32)
    return torch.fft.irfftn(torch.fft.rfftn(volume.to(torch.float32)) * keep, s=volume.shape)
