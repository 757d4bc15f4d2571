"""RELION Euler angles (ZYZ, degrees) and their rotation matrices, in torch.

Convention (RELION ``src/euler.cpp``, ``Euler_angles2matrix``; protocol doc §4.3):
``A = Rz(psi) · Ry(tilt) · Rz(rot)`` with the "passive" factors
``Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and ``Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``.
``A`` maps model (map) coordinates to image coordinates: a projection is
``P(x, y) = ∫ V(Aᵀ · (x, y, z)) dz`` with xyz column vectors (x = fast array axis).
``scipy.spatial.transform.Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix()``
equals ``Aᵀ``.
"""

from __future__ import annotations

import math

import torch

# RELION uses FLT_EPSILON thresholds in Euler_matrix2angles whatever RFLOAT is.
_FLT_EPSILON = 1.19209290e-07


def euler_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles -> rotation matrix A (model -> image frame).

    Args:
        angles_deg: ``(..., 3)`` float tensor ``[rot, tilt, psi]`` in degrees (RELION
            ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi``).

    Returns:
        ``(..., 3, 3)`` tensor ``A``, same dtype and device as ``angles_deg``, with
        ``A00 = cψ cθ cφ − sψ sφ``, ``A01 = cψ cθ sφ + sψ cφ``, ``A02 = −cψ sθ``,
        ``A10 = −sψ cθ cφ − cψ sφ``, ``A11 = −sψ cθ sφ + cψ cφ``, ``A12 = sψ sθ``,
        ``A20 = sθ cφ``, ``A21 = sθ sφ``, ``A22 = cθ`` (φ = rot, θ = tilt, ψ = psi).
        Computed in float64 internally, then cast back.

    Raises:
        ValueError: if the last dimension is not 3.

    Source: RELION ``src/euler.cpp`` ``Euler_angles2matrix``.
    """
    if angles_deg.shape[-1] != 3:
        raise ValueError(f"angles_deg must have shape (..., 3), got {tuple(angles_deg.shape)}")
    dtype = angles_deg.dtype if angles_deg.is_floating_point() else torch.float32
    a = torch.deg2rad(angles_deg.to(torch.float64))
    ca, cb, cg = torch.cos(a[..., 0]), torch.cos(a[..., 1]), torch.cos(a[..., 2])
    sa, sb, sg = torch.sin(a[..., 0]), torch.sin(a[..., 1]), torch.sin(a[..., 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], dim=-1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], dim=-1),
        torch.stack([sc, ss, cb], dim=-1),
    ]
    return torch.stack(rows, dim=-2).to(dtype)


def _sgn(x: torch.Tensor) -> torch.Tensor:
    """RELION's ``SGN`` macro: +1 for x >= 0, −1 otherwise (``src/macros.h``)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def matrix_to_euler(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation matrix A -> RELION Euler angles, inverse of :func:`euler_to_matrix`.

    Args:
        matrices: ``(..., 3, 3)`` float tensor of rotation matrices A (model -> image).

    Returns:
        ``(..., 3)`` tensor ``[rot, tilt, psi]`` in degrees, same dtype/device as the
        input: rot and psi in (−180, 180], tilt in [0, 180]. In the gimbal-lock case
        (``sqrt(A02² + A12²) <= 16·FLT_EPSILON``) rot = 0 and tilt = 0 with
        psi = atan2(−A10, A00) when A22 >= 0, or tilt = 180 with psi = atan2(A10, −A00).

    Raises:
        ValueError: if the trailing shape is not (3, 3).

    Source: RELION ``src/euler.cpp`` ``Euler_matrix2angles`` (translated branch by branch).
    """
    if matrices.shape[-2:] != (3, 3):
        raise ValueError(f"matrices must have shape (..., 3, 3), got {tuple(matrices.shape)}")
    dtype = matrices.dtype if matrices.is_floating_point() else torch.float32
    m = matrices.to(torch.float64)
    a02, a12, a22 = m[..., 0, 2], m[..., 1, 2], m[..., 2, 2]
    a20, a21 = m[..., 2, 0], m[..., 2, 1]
    a00, a10 = m[..., 0, 0], m[..., 1, 0]

    abs_sb = torch.sqrt(a02 * a02 + a12 * a12)
    regular = abs_sb > 16 * _FLT_EPSILON

    # Regular branch.
    gamma = torch.atan2(a12, -a02)
    alpha = torch.atan2(a21, a20)
    sin_g = torch.sin(gamma)
    sign_sb = torch.where(
        sin_g.abs() < _FLT_EPSILON,
        _sgn(-a02 / torch.cos(gamma)),
        torch.where(sin_g > 0, _sgn(a12), -_sgn(a12)),
    )
    beta = torch.atan2(sign_sb * abs_sb, a22)

    # Gimbal-lock branch: a rotation about z only.
    up = _sgn(a22) > 0
    gamma_lock = torch.where(up, torch.atan2(-a10, a00), torch.atan2(a10, -a00))
    beta_lock = torch.where(up, torch.zeros_like(a22), torch.full_like(a22, math.pi))

    rot = torch.where(regular, alpha, torch.zeros_like(alpha))
    tilt = torch.where(regular, beta, beta_lock)
    psi = torch.where(regular, gamma, gamma_lock)
    return torch.rad2deg(torch.stack([rot, tilt, psi], dim=-1)).to(dtype)


def random_euler_deg(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` orientations uniformly over SO(3) (Haar measure).

    Uniform random unit quaternions (normalised 4-D standard normal vectors; Shoemake,
    "Uniform random rotations", Graphics Gems III, 1992) are converted to matrices and
    then to RELION angles with :func:`matrix_to_euler`. The viewing directions are
    uniform on the sphere, so cos(tilt) is uniform on [−1, 1].

    Args:
        n: number of orientations (>= 0).
        generator: optional CPU ``torch.Generator`` for reproducibility.

    Returns:
        ``(n, 3)`` float32 CPU tensor ``[rot, tilt, psi]`` in degrees.

    Raises:
        ValueError: if ``n < 0``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    mat = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )
    return matrix_to_euler(mat).to(torch.float32)
