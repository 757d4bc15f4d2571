"""Align a map to a reference: rotation search over both hands, then translation.

Maps reconstructed without poses (CryoGAN) have no fixed orientation or hand: a
reconstruction is the truth up to a rotation, a translation and possibly a mirror (the
hand of a structure cannot be told from projections with a real, symmetric CTF). Before
an FSC with a reference (or between two half maps reconstructed independently) the map
is aligned:

1. both maps are Fourier-cropped to a small search box and low-passed (Gaussian), so a
   search over thousands of rotations takes seconds on a CPU;
2. exhaustive search: rotations of the map and of its mirror on a near-uniform grid of
   SO(3) (super-Fibonacci spiral, Alexa, "Super-Fibonacci spirals: fast, low-discrepancy
   sampling of SO(3)", CVPR 2022); for each, the best translation comes from the 3-D FFT
   cross-correlation, and the score is the normalised correlation at that translation;
3. local refinement of the best candidates of both hands (rotations about 13 axes by a
   step that halves when nothing improves), first at the search box, then at the full box;
4. the map is resampled once (trilinear ``grid_sample``) and shifted in Fourier space.

Transform convention: ``aligned(r) = M(Rᵀ (r − t))`` with ``M`` the moving map, mirrored
first when ``mirror`` is set (``M(x, y, z) → M(−x, y, z)`` about the centre), ``r``
relative to the centre ``D//2`` in voxels, ``(x, y, z)`` column vectors: the density is
rotated by R about the centre, then moved by ``t`` voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cryogan_core.metrics.fsc import fsc, resolution_at
from cryogan_core.physics.resample import fourier_crop_or_pad_map

__all__ = [
    "Alignment",
    "HalfMapAlignment",
    "align_half_maps",
    "align_maps",
    "apply_alignment",
    "gaussian_lowpass_map",
    "mirror_volume",
    "rotate_shift_volumes",
    "shift_volume",
    "small_rotations",
    "super_fibonacci_rotations",
]


@dataclass
class Alignment:
    """Result of :func:`align_maps`.

    Attributes:
        rotation: ``(3, 3)`` float64 matrix R (acting on ``(x, y, z)``).
        shift_vox: ``(3,)`` float64 translation ``t = (x, y, z)`` in voxels of the full box.
        mirror: the moving map was mirrored (x → −x) before rotating.
        cc: normalised correlation after alignment at the full box (no low-pass).
        aligned: the aligned map ``(D, D, D)`` float32 (CPU).
        freq_inv_A: ``(D//2+1,)`` FSC shell frequencies (Å⁻¹).
        fsc: ``(D//2+1,)`` FSC between the aligned map and the reference.
    """

    rotation: np.ndarray
    shift_vox: np.ndarray
    mirror: bool
    cc: float
    aligned: torch.Tensor
    freq_inv_A: np.ndarray
    fsc: np.ndarray

    def resolution_A(self, threshold: float = 0.5) -> float:
        """Resolution (Å) where the FSC with the reference falls below ``threshold``."""
        return resolution_at(self.freq_inv_A, self.fsc, threshold)


def super_fibonacci_rotations(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` rotation matrices spread near-uniformly over SO(3) (super-Fibonacci spiral).

    Quaternion ``i`` (``s = i + ½``, ``r = √(s/n)``, ``R = √(1 − s/n)``,
    ``α = 2πs/√2``, ``β = 2πs/ψ`` with ψ = 1.533751168755204288118041) is
    ``(r sin α, r cos α, R sin β, R cos β)`` (Alexa, CVPR 2022, Algorithm 1).

    Args:
        n: number of rotations (>= 1).
        dtype: float dtype of the result.

    Returns:
        ``(n, 3, 3)`` rotation matrices acting on ``(x, y, z)``.

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    s = torch.arange(n, dtype=torch.float64) + 0.5
    r = torch.sqrt(s / n)
    big_r = torch.sqrt(1.0 - s / n)
    alpha = 2.0 * math.pi * s / math.sqrt(2.0)
    beta = 2.0 * math.pi * s / 1.533751168755204288118041
    q = torch.stack([r * torch.sin(alpha), r * torch.cos(alpha), big_r * torch.sin(beta), big_r * torch.cos(beta)], -1)
    return _quat_to_matrix(q).to(dtype)


def _quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(n, 4)`` (x, y, z, w) → ``(n, 3, 3)`` rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )


def _axis_angle(axes: torch.Tensor, angle_rad: float) -> torch.Tensor:
    """Rotations by ``angle_rad`` about unit ``axes (k, 3)`` (Rodrigues), ``(k, 3, 3)`` float64."""
    u = axes / axes.norm(dim=-1, keepdim=True)
    k = torch.zeros(u.shape[0], 3, 3, dtype=torch.float64)
    k[:, 0, 1], k[:, 0, 2] = -u[:, 2], u[:, 1]
    k[:, 1, 0], k[:, 1, 2] = u[:, 2], -u[:, 0]
    k[:, 2, 0], k[:, 2, 1] = -u[:, 1], u[:, 0]
    eye = torch.eye(3, dtype=torch.float64).expand_as(k)
    return eye + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


def small_rotations(step_deg: float) -> torch.Tensor:
    """Identity plus rotations by ±``step_deg`` about the 13 axes of a cube's symmetry
    directions (3 faces, 6 edges, 4 vertices): ``(27, 3, 3)`` float64, identity first."""
    axes = []
    for v in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1),
              (1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)]:
        axes.append(v)
    a = torch.tensor(axes, dtype=torch.float64)
    rad = math.radians(step_deg)
    return torch.cat([torch.eye(3, dtype=torch.float64)[None], _axis_angle(a, rad), _axis_angle(a, -rad)])


def mirror_volume(volume: torch.Tensor) -> torch.Tensor:
    """Mirror a cubic map through the plane x = centre: ``out[z, y, x] = v[z, y, 2c − x]``.

    ``c = D//2``; for even D the index ``2c − 0 = D`` lies outside the box and that slab
    is 0.

    Args:
        volume: ``(D, D, D)`` ``(z, y, x)``.

    Returns:
        The mirrored map (same shape, dtype, device).
    """
    d = volume.shape[-1]
    flipped = volume.flip(-1)  # out[x] = v[D-1-x]
    if d % 2 == 1:
        return flipped
    out = torch.roll(flipped, 1, dims=-1)  # out[x] = v[D - x]
    out[..., 0] = 0
    return out


def gaussian_lowpass_map(volume: torch.Tensor, pixel_size_A: float, resolution_A: float) -> torch.Tensor:
    """Gaussian low-pass: Fourier amplitude ``exp(−½ (f/f₀)²)`` with f₀ = 1/resolution.

    The filter is 0.61 at ``1/resolution_A`` and 0.14 at twice that frequency.

    Args:
        volume: ``(..., D, D, D)`` float map.
        pixel_size_A: voxel size (Å).
        resolution_A: cut-off resolution (Å, > 0).

    Returns:
        Filtered map, same shape, float32.
    """
    d = volume.shape[-1]
    fz = torch.fft.fftfreq(d, d=pixel_size_A, device=volume.device)
    fx = torch.fft.rfftfreq(d, d=pixel_size_A, device=volume.device)
    f2 = fz[:, None, None] ** 2 + fz[None, :, None] ** 2 + fx[None, None, :] ** 2
    filt = torch.exp(-0.5 * f2 * resolution_A**2)
    return torch.fft.irfftn(torch.fft.rfftn(volume.float(), dim=(-3, -2, -1)) * filt, s=(d, d, d), dim=(-3, -2, -1))


def rotate_shift_volumes(volume: torch.Tensor, rotations: torch.Tensor, shift_vox: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate (and move) one map by many rotations: ``out_j(r) = V(R_jᵀ (r − t))``, trilinear.

    Args:
        volume: ``(D, D, D)`` float ``(z, y, x)``, centre ``D//2``.
        rotations: ``(k, 3, 3)`` matrices R acting on ``(x, y, z)``.
        shift_vox: ``(3,)`` translation t ``(x, y, z)`` in voxels, or None.

    Returns:
        ``(k, D, D, D)`` float32 (zeros where the source lies outside the box).
    """
    d = volume.shape[-1]
    dev = volume.device
    c = torch.arange(d, dtype=torch.float32, device=dev) - d // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.stack([x, y, z], dim=-1)
    if shift_vox is not None:
        r = r - torch.as_tensor(shift_vox, dtype=torch.float32, device=dev)
    rot = rotations.to(device=dev, dtype=torch.float32)
    src = torch.einsum("kji,zyxj->kzyxi", rot, r) + d // 2  # Rᵀ r, back to indices
    grid = src * (2.0 / max(d - 1, 1)) - 1.0
    k = rot.shape[0]
    out = F.grid_sample(
        volume.float()[None, None].expand(k, 1, d, d, d), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[:, 0]


def shift_volume(volume: torch.Tensor, shift_vox: torch.Tensor) -> torch.Tensor:
    """Move a map by ``shift_vox = (x, y, z)`` voxels (Fourier phase ramp, sub-voxel, periodic).

    Args:
        volume: ``(D, D, D)`` float.
        shift_vox: ``(3,)`` (x, y, z) voxels; content at r moves to r + t.

    Returns:
        ``(D, D, D)`` float32.
    """
    d = volume.shape[-1]
    t = torch.as_tensor(shift_vox, dtype=torch.float64)
    kz = torch.fft.fftfreq(d, dtype=torch.float64)
    kx = torch.fft.rfftfreq(d, dtype=torch.float64)
    arg = -2.0 * math.pi * (kx[None, None, :] * t[0] + kz[None, :, None] * t[1] + kz[:, None, None] * t[2])
    phase = torch.polar(torch.ones_like(arg), arg).to(torch.complex64).to(volume.device)
    return torch.fft.irfftn(torch.fft.rfftn(volume.float()) * phase, s=(d, d, d))


def _normalised(v: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-norm copy over the last three axes."""
    v = v - v.mean(dim=(-3, -2, -1), keepdim=True)
    return v / v.flatten(-3).norm(dim=-1).clamp_min(1e-12)[..., None, None, None]


def _best_shift_scores(ref_ft: torch.Tensor, moved: torch.Tensor, max_shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each moved map: the max normalised circular CC over shifts within ±max_shift and
    the shift ``(x, y, z)`` (voxels) that moves it onto the reference."""
    d = moved.shape[-1]
    m = _normalised(moved)
    cc = torch.fft.irfftn(ref_ft[None] * torch.conj(torch.fft.rfftn(m, dim=(-3, -2, -1))), s=(d, d, d), dim=(-3, -2, -1))
    lag = torch.fft.fftfreq(d, d=1.0 / d).round().abs()  # |integer lag| per index
    allowed = (lag[:, None, None] <= max_shift) & (lag[None, :, None] <= max_shift) & (lag[None, None, :] <= max_shift)
    cc = torch.where(allowed.to(cc.device), cc, torch.full_like(cc, -2.0))
    best, idx = cc.flatten(1).max(dim=1)
    iz, iy, ix = idx // (d * d), (idx // d) % d, idx % d
    to_lag = lambda i: torch.where(i > d // 2, i - d, i)  # noqa: E731
    shifts = torch.stack([to_lag(ix), to_lag(iy), to_lag(iz)], dim=1).double()
    return best, shifts


def _scores(ref_ft: torch.Tensor, moving: torch.Tensor, rotations: torch.Tensor, max_shift: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-shift scores and shifts of ``moving`` rotated by each of ``rotations``, in chunks."""
    scores, shifts = [], []
    for s in range(0, rotations.shape[0], chunk):
        moved = rotate_shift_volumes(moving, rotations[s : s + chunk])
        sc, sh = _best_shift_scores(ref_ft, moved, max_shift)
        scores.append(sc)
        shifts.append(sh)
    return torch.cat(scores), torch.cat(shifts)


def _refine(ref_ft: torch.Tensor, moving: torch.Tensor, rotation: torch.Tensor, max_shift: int, step_deg: float,
            min_step_deg: float, chunk: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Local rotation refinement: try R·ΔR for the 27 small rotations, halve the step when
    nothing is better; returns (R, score, shift)."""
    best_r = rotation.clone()
    sc, sh = _scores(ref_ft, moving, best_r[None], max_shift, chunk)
    best_s, best_t = float(sc[0]), sh[0]
    step = step_deg
    while step >= min_step_deg:
        cands = small_rotations(step) @ best_r  # left-multiply: perturb in the reference frame
        sc, sh = _scores(ref_ft, moving, cands, max_shift, chunk)
        j = int(torch.argmax(sc))
        if float(sc[j]) > best_s + 1e-7:
            best_r, best_s, best_t = cands[j], float(sc[j]), sh[j]
        else:
            step /= 2.0
    return best_r, best_s, best_t


def _subvoxel_shift(ref: torch.Tensor, moved: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Refine an integer shift by a parabola through the CC peak and its neighbours (per axis)."""
    d = moved.shape[-1]
    cc = torch.fft.irfftn(torch.fft.rfftn(_normalised(ref)) * torch.conj(torch.fft.rfftn(_normalised(moved))), s=(d, d, d))
    ix, iy, iz = (int(round(float(v))) % d for v in shift)
    out = shift.clone().double()
    for axis, (a, b, c) in enumerate(
        [
            (cc[iz, iy, (ix - 1) % d], cc[iz, iy, ix], cc[iz, iy, (ix + 1) % d]),
            (cc[iz, (iy - 1) % d, ix], cc[iz, iy, ix], cc[iz, (iy + 1) % d, ix]),
            (cc[(iz - 1) % d, iy, ix], cc[iz, iy, ix], cc[(iz + 1) % d, iy, ix]),
        ]
    ):
        den = float(a - 2 * b + c)
        if den < 0:
            out[axis] += max(-0.5, min(0.5, 0.5 * float(a - c) / den))
    return out


def apply_alignment(volume: torch.Tensor, rotation: torch.Tensor | np.ndarray, shift_vox: torch.Tensor | np.ndarray,
                    mirror: bool) -> torch.Tensor:
    """Apply an alignment to a map: mirror (optional), rotate about the centre, then shift.

    Args:
        volume: ``(D, D, D)`` float map.
        rotation: ``(3, 3)`` R.
        shift_vox: ``(3,)`` t ``(x, y, z)`` voxels (sub-voxel, applied in Fourier space).
        mirror: mirror x → −x first.

    Returns:
        ``(D, D, D)`` float32 on the input's device: ``M(Rᵀ (r − t))``.
    """
    v = mirror_volume(volume.float()) if mirror else volume.float()
    rot = torch.as_tensor(np.asarray(rotation), dtype=torch.float64)
    rotated = rotate_shift_volumes(v, rot[None])[0]
    return shift_volume(rotated, torch.as_tensor(np.asarray(shift_vox), dtype=torch.float64))


def align_maps(
    moving: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    pixel_size_A: float,
    search_box: int = 16,
    refine_box: int = 32,
    n_rotations: int = 2000,
    try_mirror: bool = True,
    n_candidates: int = 3,
    max_shift_fraction: float = 0.25,
) -> Alignment:
    """Align ``moving`` onto ``reference`` (rotation over both hands, then translation) and
    compute their FSC.

    Stages: (1) exhaustive search over ``n_rotations`` rotations per hand at
    ``search_box`` (Gaussian low-pass at 2.5 search voxels), each with its best
    translation; the ``n_candidates`` best of each hand are refined locally (8° → 1°);
    (2) the best candidate of each hand is refined at ``refine_box`` (low-pass at 2 voxels,
    2° → 0.25°) and the better hand is kept; (3) at the full box the translation is found
    by FFT cross-correlation with a parabolic sub-voxel peak, and the map is resampled once.

    Args:
        moving: ``(D, D, D)`` map to align (e.g. a CryoGAN map or half map).
        reference: ``(D, D, D)`` map on the same grid and voxel size.
        pixel_size_A: voxel size (Å) of both.
        search_box: box of the exhaustive search (Fourier crop to ``min(D, search_box)``).
        refine_box: box of the fine refinement (``min(D, refine_box)``).
        n_rotations: rotations of the exhaustive search per hand.
        try_mirror: also search the mirrored map (both hands).
        n_candidates: best rotations per hand refined in stage 1.
        max_shift_fraction: largest translation searched, as a fraction of the box.

    Returns:
        The :class:`Alignment` (aligned map at the full box, FSC with the reference).

    Raises:
        ValueError: maps not cubic or of different shapes, non-positive pixel size.
    """
    mov = (moving if isinstance(moving, torch.Tensor) else torch.as_tensor(np.asarray(moving))).detach().float().cpu()
    ref = (reference if isinstance(reference, torch.Tensor) else torch.as_tensor(np.asarray(reference))).detach().float().cpu()
    if mov.ndim != 3 or len(set(mov.shape)) != 1 or mov.shape != ref.shape:
        raise ValueError(f"maps must be cubic and equal in shape, got {tuple(mov.shape)} and {tuple(ref.shape)}")
    if not pixel_size_A > 0:
        raise ValueError(f"pixel_size_A must be > 0, got {pixel_size_A}")
    d = mov.shape[-1]
    hands = (False, True) if try_mirror else (False,)

    def level(box: int, lowpass_vox: float) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Reference and moving map at a search box (Fourier-cropped, low-passed at ``lowpass_vox`` voxels
        of that box), the box, and how many rotations to score per batch (~2e6 voxels)."""
        b = min(d, int(box))
        px = pixel_size_A * d / b
        def prep(v: torch.Tensor) -> torch.Tensor:
            """``(d, d, d)`` map -> ``(b, b, b)``, Fourier-cropped and Gaussian low-passed."""
            small = fourier_crop_or_pad_map(v, b) if b != d else v
            return gaussian_lowpass_map(small, px, lowpass_vox * px)
        return prep(ref), prep(mov), b, max(1, 2_000_000 // b**3)

    # stage 1: exhaustive search at the search box, local refinement of the best few
    ref_s, mov_s, bs, chunk = level(search_box, 2.5)
    ref_s_ft = torch.fft.rfftn(_normalised(ref_s))
    shift_s = max(1, int(max_shift_fraction * bs))
    grid = super_fibonacci_rotations(n_rotations)
    best_per_hand: dict[bool, tuple[float, torch.Tensor]] = {}
    for mirror in hands:
        m = mirror_volume(mov_s) if mirror else mov_s
        sc, _ = _scores(ref_s_ft, m, grid, shift_s, chunk)
        for j in torch.topk(sc, min(n_candidates, sc.numel())).indices.tolist():
            r, s, _ = _refine(ref_s_ft, m, grid[j], shift_s, step_deg=8.0, min_step_deg=1.0, chunk=chunk)
            if mirror not in best_per_hand or s > best_per_hand[mirror][0]:
                best_per_hand[mirror] = (s, r)

    # stage 2: refine the best rotation of each hand at the refinement box; keep the better hand
    ref_r, mov_r, br, chunk = level(refine_box, 2.0)
    ref_r_ft = torch.fft.rfftn(_normalised(ref_r))
    shift_r = max(1, int(max_shift_fraction * br))
    final: tuple[float, bool, torch.Tensor] | None = None
    for mirror, (_, r0) in best_per_hand.items():
        m = mirror_volume(mov_r) if mirror else mov_r
        r, s, _ = _refine(ref_r_ft, m, r0, shift_r, step_deg=2.0, min_step_deg=0.25, chunk=chunk)
        if final is None or s > final[0]:
            final = (s, mirror, r)
    assert final is not None
    _, mirror, rot = final

    # stage 3: translation at the full box, one resampling
    full_mov = mirror_volume(mov) if mirror else mov
    rotated = rotate_shift_volumes(full_mov, rot[None])[0]
    ref_ft = torch.fft.rfftn(_normalised(ref))
    _, shifts = _best_shift_scores(ref_ft, rotated[None], max(1, int(max_shift_fraction * d)))
    shift = _subvoxel_shift(ref, rotated, shifts[0])
    aligned = shift_volume(rotated, shift)
    cc = float((_normalised(aligned) * _normalised(ref)).sum())
    freq, curve = fsc(aligned, ref, pixel_size_A)
    return Alignment(
        rotation=rot.numpy().astype(np.float64),
        shift_vox=shift.numpy().astype(np.float64),
        mirror=bool(mirror),
        cc=cc,
        aligned=aligned,
        freq_inv_A=freq,
        fsc=curve,
    )


@dataclass
class HalfMapAlignment:
    """Result of :func:`align_half_maps`.

    Attributes:
        halves: half 2 aligned onto half 1 (:class:`Alignment`; ``halves.aligned`` is half 2
            in half 1's frame, ``halves.fsc`` the half-map FSC).
        average: ``(D, D, D)`` float32 ``(half 1 + aligned half 2) / 2``, in half 1's frame.
        to_reference: the average aligned onto the reference, or None without one.
    """

    halves: Alignment
    average: torch.Tensor
    to_reference: Alignment | None


def align_half_maps(
    half1: torch.Tensor,
    half2: torch.Tensor,
    pixel_size_A: float,
    reference: torch.Tensor | None = None,
) -> HalfMapAlignment:
    """Bring two independently reconstructed half maps into one frame, average them, and
    optionally align the average onto a reference (:func:`align_maps` for each step).

    Without poses each half map can come out in its own orientation and hand, so half 2 is
    aligned onto half 1 (rotation over both hands, then translation) before the half-map
    FSC and the average; the average, not either half, is what is compared with a reference.

    Args:
        half1: ``(D, D, D)`` float map; fixes the frame.
        half2: ``(D, D, D)`` float map on the same grid.
        pixel_size_A: voxel size (Å) of both (and of ``reference``).
        reference: optional ``(D, D, D)`` map on the same grid.

    Returns:
        The :class:`HalfMapAlignment`.

    Raises:
        ValueError: maps not cubic or of different shapes, non-positive pixel size.
    """
    halves = align_maps(half2, half1, pixel_size_A)
    average = 0.5 * (half1.detach().float().cpu() + halves.aligned)
    to_reference = None if reference is None else align_maps(average, reference, pixel_size_A)
    return HalfMapAlignment(halves=halves, average=average, to_reference=to_reference)
