"""``cryogan check-poses``: do a map and a particle set agree (poses, origins, CTF, hand)?

For each particle, the Pearson correlation inside a circular mask between the image and
RELION's prediction of it (projection of the map at the particle's pose, multiplied by its
CTF, shifted by -origin). The same with poses and origins shuffled between particles gives
the chance level. A ten-second test of conventions and of map/particle agreement.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from cryogan_core.commands._common import map_for_particles
from cryogan_core.errors import InputError
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.particles import check_ctf_columns
from cryogan_core.io.star import read_particles
from cryogan_core.metrics.images import circular_mask, masked_pearson
from cryogan_core.physics.ctf import CtfParams
from cryogan_core.physics.projection import Projector, forward_model
from cryogan_core.train.pairs import particle_arrays


def particle_projection_cc(
    images: torch.Tensor,
    volume: torch.Tensor | Projector,
    angles_deg: torch.Tensor,
    origins_A: torch.Tensor,
    ctf: CtfParams,
    pixel_size_A: float,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Masked Pearson CC between particle images and their predicted images.

    Args:
        images: ``(n, D, D)`` float32 particle images.
        volume: ``(D, D, D)`` float32 map at the particles' pixel size, or a
            :class:`~cryogan_core.physics.projection.Projector` of it (kept across batches).
        angles_deg: ``(n, 3)`` RELION [rot, tilt, psi] in degrees.
        origins_A: ``(n, 2)`` RELION origins [x, y] in Å.
        ctf: CTF parameters of the n particles.
        pixel_size_A: pixel size in Å.
        mask: ``(D, D)`` bool mask of the pixels compared.

    Returns:
        ``(n,)`` float32 correlations in [-1, 1].
    """
    with torch.no_grad():
        pred = forward_model(volume, angles_deg, origins_A, pixel_size_A, ctf=ctf)
        return masked_pearson(images, pred, mask)


def run_check_poses(
    star_path: Path,
    map_path: Path,
    project_dir: Path | None = None,
    n_max: int = 2000,
    mask_radius_px: float | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> dict:
    """Compute the mean particle/prediction CC with true and with shuffled poses.

    Particles are processed per pixel size (optics groups with different pixel sizes get
    the map resampled to each). Shuffling permutes (angles, origins) among the particles of
    the same pixel size; each particle keeps its own CTF.

    Args:
        star_path: particle STAR (any RELION flavour) with poses, CTF and rlnImageName.
        map_path: the map (resampled to the particles' pixel size/box if needed).
        project_dir: directory rlnImageName is relative to (default: cwd).
        n_max: use at most this many particles (a random subset, seeded), 0 = all.
        mask_radius_px: radius of the circular mask (pixels); None or 0: 0.45 × box.
        seed: seed of the subset and of the shuffle.
        batch_size: particles per batch.
        device: torch device.

    Returns:
        Dict with ``cc_true_poses``, ``cc_shuffled_poses`` (means), ``n_particles``,
        ``frac_true_better`` (fraction of particles whose own pose beats the shuffled one),
        ``mask_radius_px``, ``box`` and ``per_particle_cc`` is NOT included (large).

    Raises:
        InputError: for unreadable or incomplete inputs, or particles premultiplied by their
            CTF or phase-flipped, or CTF columns in another unit (:func:`~cryogan_core.io.particles.check_ctf_columns`);
            a negative ``n_max``, or a negative or non-finite ``mask_radius_px``.
    """
    if n_max < 0:
        raise InputError(f"--n {n_max}: must be >= 0 (the most particles used; 0 = all)")
    if mask_radius_px is not None and not (math.isfinite(mask_radius_px) and mask_radius_px >= 0):
        raise InputError(f"--mask-radius-px {mask_radius_px}: must be > 0 (pixels; unset or 0: 0.45 × box)")
    project_dir = Path(project_dir) if project_dir is not None else Path.cwd()
    star = read_particles(star_path, require_ctf=True, require_images=True, require_poses=True)
    df = star.particles
    check_ctf_columns(star_path, df)
    images = ParticleImages(df, project_dir, star_path)
    box = images.box
    radius = float(mask_radius_px) if mask_radius_px else 0.45 * box
    mask = circular_mask(box, radius, device=device)
    rng = np.random.default_rng(seed)
    rows = np.arange(len(df))
    if n_max and len(rows) > n_max:
        rows = np.sort(rng.choice(rows, size=n_max, replace=False))

    cc_true: list[np.ndarray] = []
    cc_shuf: list[np.ndarray] = []
    pix = df["rlnImagePixelSize"].to_numpy()
    for pixel_size in np.unique(pix[rows]):
        group = rows[pix[rows] == pixel_size]
        with torch.no_grad():  # the map's padded FFT once, not twice per batch (5 s each at 256 px)
            projector = Projector(map_for_particles(map_path, float(pixel_size), box, device))
        perm = rng.permutation(len(group))
        sub = df.iloc[group]
        angles, origins, ctf_all, _ = particle_arrays(sub)
        for start in range(0, len(group), batch_size):
            idx = np.arange(start, min(start + batch_size, len(group)))
            imgs = torch.from_numpy(images.read(group[idx])).to(device)
            ctf = ctf_all[torch.from_numpy(idx)].to(device)
            t = torch.from_numpy(idx)
            s = torch.from_numpy(perm[idx])
            cc_true.append(
                particle_projection_cc(imgs, projector, angles[t].to(device), origins[t].to(device), ctf, float(pixel_size), mask).cpu().numpy()
            )
            cc_shuf.append(
                particle_projection_cc(imgs, projector, angles[s].to(device), origins[s].to(device), ctf, float(pixel_size), mask).cpu().numpy()
            )
    true = np.concatenate(cc_true)
    shuf = np.concatenate(cc_shuf)
    result = {
        "cc_true_poses": float(true.mean()),
        "cc_shuffled_poses": float(shuf.mean()),
        "frac_true_better": float((true > shuf).mean()),
        "n_particles": int(len(true)),
        "mask_radius_px": radius,
        "box": box,
        "star": str(star_path),
        "map": str(map_path),
    }
    logger.info(
        f"{len(true)} particles: mean CC with own pose {result['cc_true_poses']:.3f}, "
        f"with shuffled poses {result['cc_shuffled_poses']:.3f} "
        f"({100 * result['frac_true_better']:.1f}% of particles prefer their own pose)"
    )
    return result
