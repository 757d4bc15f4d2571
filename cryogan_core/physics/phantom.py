"""A built-in procedural test volume: asymmetric, protein-like, made from a fixed seed.

This is the project's embedded default dataset: it needs no data files, so every command
and test can run on a fresh machine.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BOX = 64
DEFAULT_PIXEL_SIZE_A = 3.54


def procedural_volume(box: int = DEFAULT_BOX, seed: int = 0) -> np.ndarray:
    """Make an asymmetric, protein-like density map from pseudo-atoms.

    Four globular domains of different sizes and shapes (ellipsoids filled with
    Gaussian pseudo-atoms, one every ~40 Å³ like protein at ~1.35 g/cm³ sampled coarsely),
    joined by two chains of atoms and carrying one long helix-like rod, are placed
    without any symmetry. Distances are scaled with ``box`` so the particle fills about
    70 % of the box diameter whatever its size.

    Args:
        box: edge of the cubic map in voxels (odd or even, >= 16).
        seed: random seed; the same seed always gives the same map.

    Returns:
        float32 array of shape ``(box, box, box)`` = ``(z, y, x)``, density >= 0,
        centred at index ``box // 2``, normalised to a maximum of 1.

    Raises:
        ValueError: if ``box < 16``.
    """
    if box < 16:
        raise ValueError(f"box must be >= 16 voxels, got {box}")
    rng = np.random.default_rng(seed)
    scale = 1.35 * box / 64.0
    # domain centres (x, y, z) in voxels relative to the box centre, radii (x, y, z)
    domains = [
        ((-7.0, -4.0, 2.0), (9.0, 7.0, 8.0)),
        ((8.0, -6.0, -3.0), (6.0, 8.0, 5.5)),
        ((2.0, 9.0, 4.0), (7.0, 5.0, 6.0)),
        ((-4.0, 5.0, -9.0), (4.5, 4.5, 4.0)),
    ]
    atoms: list[np.ndarray] = []
    for centre, radii in domains:
        c = np.asarray(centre) * scale
        r = np.asarray(radii) * scale
        n_atoms = int(0.8 * np.prod(r))
        pts = rng.uniform(-1.0, 1.0, size=(4 * n_atoms, 3))
        pts = pts[(pts**2).sum(axis=1) <= 1.0][:n_atoms]
        atoms.append(c + pts * r)
    # linkers between domains 0-1 and 2-3, a rod (helix-like) sticking out of domain 2
    for a, b in ((0, 1), (2, 3)):
        ca = np.asarray(domains[a][0]) * scale
        cb = np.asarray(domains[b][0]) * scale
        t = np.linspace(0.0, 1.0, int(12 * scale) + 2)[:, None]
        atoms.append(ca + t * (cb - ca) + rng.normal(0.0, 0.6 * scale, size=(len(t), 3)))
    t = np.linspace(0.0, 1.0, int(40 * scale) + 2)
    helix = np.stack(
        [
            (4.0 + 9.0 * t) * scale,
            (11.0 + 1.6 * np.cos(2 * np.pi * 6 * t)) * scale,
            (8.0 + 1.6 * np.sin(2 * np.pi * 6 * t)) * scale,
        ],
        axis=1,
    )
    atoms.append(helix)
    xyz = np.concatenate(atoms, axis=0)
    weights = rng.uniform(0.6, 1.4, size=len(xyz))

    centre = box // 2
    grid = np.arange(box, dtype=np.float32) - centre
    sigma = 1.1 * max(box / 64.0, 0.5)
    # separable Gaussian splatting: sum_i w_i gx_i(x) gy_i(y) gz_i(z)
    gx = np.exp(-((grid[None, :] - xyz[:, 0:1]) ** 2) / (2 * sigma**2)).astype(np.float32)
    gy = np.exp(-((grid[None, :] - xyz[:, 1:2]) ** 2) / (2 * sigma**2)).astype(np.float32)
    gz = np.exp(-((grid[None, :] - xyz[:, 2:3]) ** 2) / (2 * sigma**2)).astype(np.float32)
    vol = np.einsum("a,az,ay,ax->zyx", weights.astype(np.float32), gz, gy, gx, optimize=True)
    vol = np.clip(vol, 0.0, None)
    return (vol / vol.max()).astype(np.float32)
