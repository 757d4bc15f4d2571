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

    sigma = 1.1 * max(box / 64.0, 0.5)
    vol = splat_gaussians(xyz, weights.astype(np.float32), box, sigma)
    vol = np.clip(vol, 0.0, None)
    return (vol / vol.max()).astype(np.float32)


def splat_gaussians(xyz_vox: np.ndarray, weights: np.ndarray, box: int, sigma_vox: float,
                    reach_sigmas: float = 7.0) -> np.ndarray:
    """Sum of isotropic 3D Gaussians on a voxel grid, slab by slab.

    ``vol[z, y, x] = Σ_a w_a · gz_a(z) · gy_a(y) · gx_a(x)`` with
    ``g_a(u) = exp(-(u - u_a)² / (2σ²))`` on the grid ``u = index - box // 2``. Each z slab
    sums only the atoms within ``reach_sigmas · σ`` of it in z (one matrix product per slab),
    so the cost grows as ``box³ · n_atoms · reach / box`` rather than ``box³ · n_atoms``:
    a 256-px built-in volume takes seconds instead of about an hour. Atoms left out of a slab
    contribute less than ``exp(-reach_sigmas² / 2)`` (2e-11 at 7σ) of their weight there.

    Args:
        xyz_vox: ``(n, 3)`` float atom positions ``(x, y, z)`` in voxels relative to the
            box centre (index ``box // 2``).
        weights: ``(n,)`` float32 atom weights.
        box: edge of the cubic grid (voxels).
        sigma_vox: Gaussian standard deviation (voxels), > 0.
        reach_sigmas: atoms farther than this many σ from a slab are skipped there.

    Returns:
        float32 array ``(box, box, box)`` = ``(z, y, x)``.

    Raises:
        ValueError: ``xyz_vox`` not ``(n, 3)``, ``weights`` not ``(n,)`` or ``sigma_vox <= 0``.
    """
    xyz_vox = np.asarray(xyz_vox, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float32)
    if xyz_vox.ndim != 2 or xyz_vox.shape[1] != 3 or weights.shape != (len(xyz_vox),):
        raise ValueError(f"atoms must be (n, 3) with (n,) weights, got {xyz_vox.shape} and {weights.shape}")
    if not sigma_vox > 0:
        raise ValueError(f"sigma_vox must be > 0, got {sigma_vox}")
    grid = np.arange(box, dtype=np.float32) - box // 2
    # each atom's 1D Gaussian along x, y and z: (3, n, box) float32
    gx, gy, gz = np.exp(-((grid[None, None, :] - xyz_vox.T[:, :, None]) ** 2) / (2 * sigma_vox**2)).astype(np.float32)
    order = np.argsort(xyz_vox[:, 2], kind="stable")
    z_sorted = xyz_vox[order, 2]
    reach = reach_sigmas * sigma_vox
    vol = np.zeros((box, box, box), dtype=np.float32)
    for iz, z in enumerate(grid):
        lo, hi = (int(i) for i in np.searchsorted(z_sorted, [z - reach, z + reach]))
        if hi <= lo:
            continue
        near = order[lo:hi]
        vol[iz] = ((weights[near] * gz[near, iz])[:, None] * gy[near]).T @ gx[near]
    return vol
