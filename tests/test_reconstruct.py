"""Direct Fourier inversion recovers a map from its own CTF-modulated, shifted projections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryogan_core.physics.ctf import CtfParams
from cryogan_core.physics.euler import random_euler_deg
from cryogan_core.physics.projection import forward_model
from cryogan_core.physics.reconstruct import FourierAccumulator, reconstruct


def blobs_volume(
    d: int, seed: int = 0, n_blobs: int = 6, sigma: tuple[float, float] = (1.5, 3.0), spread: float = 0.2
) -> torch.Tensor:
    """Asymmetric sum of Gaussians centred near d//2 (float32)."""
    rng = np.random.default_rng(seed)
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    v = np.zeros((d, d, d))
    for _ in range(n_blobs):
        p = rng.uniform(-d * spread, d * spread, 3)
        s = rng.uniform(*sigma)
        v += rng.uniform(0.5, 1.5) * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    return torch.tensor(v, dtype=torch.float32)


def random_ctf(n: int, gen: torch.Generator) -> CtfParams:
    """``n`` random 300 kV CTFs, defocus 8,000–23,000 Å, any astigmatism angle."""
    return CtfParams(
        defocus_u_A=8000 + 15000 * torch.rand(n, generator=gen),
        defocus_v_A=8000 + 15000 * torch.rand(n, generator=gen),
        defocus_angle_deg=180 * torch.rand(n, generator=gen),
        voltage_kV=torch.full((n,), 300.0),
        cs_mm=torch.full((n,), 2.7),
        amplitude_contrast=torch.full((n,), 0.1),
        phase_shift_deg=torch.zeros(n),
        bfactor_A2=torch.zeros(n),
        scale=torch.ones(n),
    )


def simulate(
    d: int, n: int, seed: int, vol: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, CtfParams]:
    """Noise-free CTF'd projections of ``vol`` (default: blobs) at ``n`` random poses and ±2.5 px origins: volume, images, angles_deg, origins_A, CTF."""
    gen = torch.Generator().manual_seed(seed)
    vol = blobs_volume(d, seed) if vol is None else vol
    angles = random_euler_deg(n, gen)
    origins = (torch.rand(n, 2, generator=gen) - 0.5) * 10.0  # Å, ±2.5 px at 2 Å
    ctf = random_ctf(n, gen)
    images = forward_model(vol, angles, origins, 2.0, ctf)
    return vol, images, angles, origins, ctf


def cc(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two tensors of any shape."""
    return float(np.corrcoef(a.numpy().ravel(), b.numpy().ravel())[0, 1])


@pytest.mark.parametrize("d", [32, 33])
def test_recovers_volume_with_ctf_and_shifts(d: int) -> None:
    vol, images, angles, origins, ctf = simulate(d, 120, seed=d)
    rec = reconstruct(images, angles, origins, 2.0, ctf, batch_size=50)
    assert rec.shape == (d, d, d) and rec.dtype == torch.float32
    assert cc(rec, vol) >= 0.95
    scale = float((rec * vol).sum() / (vol * vol).sum())
    assert scale == pytest.approx(1.0, abs=0.1)
    # nothing moved: centre of mass of the strong density agrees to a fraction of a voxel
    def com(v: torch.Tensor) -> np.ndarray:
        """Centre of mass (voxels, in the array's axis order) of the voxels above 30 % of the maximum."""
        w = torch.where(v > 0.3 * v.max(), v, torch.zeros_like(v))
        return np.array([float((w * torch.arange(d).reshape(s)).sum() / w.sum())
                         for s in [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]])

    np.testing.assert_allclose(com(rec), com(vol), atol=0.25)


def test_wrong_conventions_fail() -> None:
    d = 32
    structured = blobs_volume(d, 1, n_blobs=10, sigma=(1.0, 1.5), spread=0.25)
    vol, images, angles, origins, ctf = simulate(d, 120, seed=1, vol=structured)
    assert cc(reconstruct(images, angles, origins, 2.0, ctf), vol) >= 0.9
    transposed = torch.tensor(
        Rotation.from_euler("ZYZ", angles.numpy(), degrees=True).inv().as_euler("ZYZ", degrees=True),
        dtype=torch.float32,
    )
    assert cc(reconstruct(images, transposed, origins, 2.0, ctf), vol) < 0.75
    assert cc(reconstruct(images, angles, -origins, 2.0, ctf), vol) < 0.6


def test_batching_does_not_change_the_result() -> None:
    vol, images, angles, origins, ctf = simulate(24, 40, seed=2)
    a = reconstruct(images, angles, origins, 2.0, ctf, batch_size=7)
    b = reconstruct(images, angles, origins, 2.0, ctf, batch_size=256)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5 * float(b.abs().max()))


def test_streaming_accumulator_equals_reconstruct() -> None:
    vol, images, angles, origins, ctf = simulate(25, 30, seed=3)
    acc = FourierAccumulator(25, device="cpu")
    acc.add(images[:11], angles[:11], origins[:11], 2.0, ctf[:11])
    acc.add(images[11:], angles[11:], origins[11:], torch.full((19,), 2.0), ctf[11:])
    assert acc.count == 30
    ref = reconstruct(images, angles, origins, 2.0, ctf)
    np.testing.assert_allclose(acc.finish().numpy(), ref.numpy(), atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(ValueError):
        acc.add(torch.zeros(2, 24, 24), torch.zeros(2, 3), torch.zeros(2, 2), 2.0)


def test_without_ctf() -> None:
    d = 25
    gen = torch.Generator().manual_seed(4)
    vol = blobs_volume(d, 4)
    angles = random_euler_deg(100, gen)
    origins = torch.zeros(100, 2)
    rec = reconstruct(forward_model(vol, angles, origins, 1.0), angles, origins, 1.0)
    assert cc(rec, vol) >= 0.97


def test_bad_inputs_raise() -> None:
    imgs = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError):
        reconstruct(imgs, torch.zeros(2, 3), torch.zeros(3, 2), 1.0)
    with pytest.raises(ValueError):
        reconstruct(imgs, torch.zeros(3, 3), torch.zeros(3, 2), 1.0, batch_size=0)
    with pytest.raises(ValueError):
        reconstruct(torch.zeros(3, 8, 9), torch.zeros(3, 3), torch.zeros(3, 2), 1.0)
    with pytest.raises(ValueError):
        reconstruct(imgs, torch.zeros(3, 3), torch.zeros(3, 2), -1.0)


def test_particle_array_mismatches_name_the_shapes() -> None:
    """The projector and both back-projection paths check the per-particle arrays alike."""
    vol, images, angles, origins, ctf = simulate(16, 6, seed=1)
    with pytest.raises(ValueError, match=r"angles_deg must be \(6, 3\).*got \(5, 3\)"):
        reconstruct(images, angles[:5], origins, 2.0, ctf)
    with pytest.raises(ValueError, match="ctf has 5 particles, angles_deg 6"):
        reconstruct(images, angles, origins, 2.0, ctf[:5])
    acc = FourierAccumulator(16, device="cpu")
    with pytest.raises(ValueError, match="ctf has 5 particles"):
        acc.add(images, angles, origins, 2.0, ctf[:5])
    with pytest.raises(ValueError, match=r"origins_A \(6, 2\), got \(6, 3\) and \(6, 1\)"):
        forward_model(vol, angles, origins[:, :1], 2.0, ctf)
    assert acc.count == 0
