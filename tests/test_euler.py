"""RELION Euler convention: hand-written matrix elements, scipy, round trip, uniformity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.transform import Rotation

from cryogan_core.physics.euler import euler_to_matrix, matrix_to_euler, random_euler_deg


def relion_matrix_np(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION Euler_angles2matrix, element by element as in protocol doc §4.3."""
    f, t, p = np.deg2rad([rot, tilt, psi])
    cf, sf, ct, st, cp, sp = np.cos(f), np.sin(f), np.cos(t), np.sin(t), np.cos(p), np.sin(p)
    return np.array(
        [
            [cp * ct * cf - sp * sf, cp * ct * sf + sp * cf, -cp * st],
            [-sp * ct * cf - cp * sf, -sp * ct * sf + cp * cf, sp * st],
            [st * cf, st * sf, ct],
        ]
    )


def passive_product_np(rot: float, tilt: float, psi: float) -> np.ndarray:
    """A = Rz(psi)·Ry(tilt)·Rz(rot) with RELION's passive factors."""

    def rz(a: float) -> np.ndarray:
        """RELION's passive rotation about z by ``a`` degrees, ``(3, 3)``."""
        c, s = np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    def ry(b: float) -> np.ndarray:
        """RELION's passive rotation about y by ``b`` degrees, ``(3, 3)``."""
        c, s = np.cos(np.deg2rad(b)), np.sin(np.deg2rad(b))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])

    return rz(psi) @ ry(tilt) @ rz(rot)


@pytest.fixture
def angles() -> np.ndarray:
    """``(50, 3)`` random (rot, tilt, psi) in degrees, tilt in [0, 180]."""
    rng = np.random.default_rng(0)
    return np.stack(
        [rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)], axis=1
    )


def test_matrix_matches_relion_elements_and_factor_product(angles: np.ndarray) -> None:
    got = euler_to_matrix(torch.tensor(angles, dtype=torch.float64)).numpy()
    for a, m in zip(angles, got):
        np.testing.assert_allclose(m, relion_matrix_np(*a), atol=1e-12)
        np.testing.assert_allclose(m, passive_product_np(*a), atol=1e-12)


def test_matrix_is_transpose_of_scipy_zyz(angles: np.ndarray) -> None:
    got = euler_to_matrix(torch.tensor(angles, dtype=torch.float32)).numpy()
    ref = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    # and NOT scipy's matrix itself (the check can fail)
    assert np.abs(got - Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()).max() > 0.1


def test_dtype_device_and_batch_shape_preserved() -> None:
    a = torch.zeros(4, 5, 3, dtype=torch.float32)
    m = euler_to_matrix(a)
    assert m.shape == (4, 5, 3, 3) and m.dtype == torch.float32
    np.testing.assert_allclose(m.numpy(), np.broadcast_to(np.eye(3), (4, 5, 3, 3)), atol=1e-7)
    assert matrix_to_euler(m).shape == (4, 5, 3)


def test_round_trip_regular(angles: np.ndarray) -> None:
    a = torch.tensor(angles, dtype=torch.float64)
    back = matrix_to_euler(euler_to_matrix(a))
    np.testing.assert_allclose(back.numpy(), angles, atol=1e-8)


def test_round_trip_float32_matrices_agree() -> None:
    a = random_euler_deg(500, torch.Generator().manual_seed(3))
    m = euler_to_matrix(a)
    np.testing.assert_allclose(euler_to_matrix(matrix_to_euler(m)).numpy(), m.numpy(), atol=5e-6)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_gimbal_lock_branch(tilt: float) -> None:
    a = torch.tensor([[30.0, tilt, 50.0]], dtype=torch.float64)
    back = matrix_to_euler(euler_to_matrix(a))
    assert back[0, 0].item() == 0.0
    assert back[0, 1].item() == pytest.approx(tilt, abs=1e-9)
    # RELION: tilt 0 -> psi = rot + psi; tilt 180 -> psi = psi - rot
    expected_psi = 80.0 if tilt == 0.0 else 20.0
    assert back[0, 2].item() == pytest.approx(expected_psi, abs=1e-9)
    np.testing.assert_allclose(euler_to_matrix(back).numpy(), euler_to_matrix(a).numpy(), atol=1e-12)


def test_random_euler_uniform_over_so3() -> None:
    a = random_euler_deg(20000, torch.Generator().manual_seed(1234))
    assert a.shape == (20000, 3) and a.dtype == torch.float32
    m = euler_to_matrix(a.double()).numpy()
    # the model z axis seen in the image frame (A·z) and the viewing direction (Aᵀ·z)
    assert np.abs(m[:, :, 2].mean(axis=0)).max() < 0.02
    assert np.abs(m[:, 2, :].mean(axis=0)).max() < 0.02
    cos_tilt = np.cos(np.deg2rad(a[:, 1].numpy()))
    assert stats.kstest(cos_tilt, stats.uniform(loc=-1, scale=2).cdf).pvalue > 0.01
    assert stats.kstest(a[:, 0].numpy(), stats.uniform(loc=-180, scale=360).cdf).pvalue > 0.01
    assert stats.kstest(a[:, 2].numpy(), stats.uniform(loc=-180, scale=360).cdf).pvalue > 0.01
    # a uniform tilt (a common mistake) would fail the same test
    wrong = np.cos(np.deg2rad(np.random.default_rng(0).uniform(0, 180, 20000)))
    assert stats.kstest(wrong, stats.uniform(loc=-1, scale=2).cdf).pvalue < 1e-6


def test_random_euler_reproducible() -> None:
    a = random_euler_deg(10, torch.Generator().manual_seed(7))
    b = random_euler_deg(10, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        euler_to_matrix(torch.zeros(4, 2))
    with pytest.raises(ValueError):
        matrix_to_euler(torch.zeros(4, 3, 2))
    with pytest.raises(ValueError):
        random_euler_deg(-1)
