"""CTF preconditioning of the CryoGAN volume gradient (cryogan_core.train.precondition).

References: the textbook CTF written out in numpy (χ = πλΔf k² − π/2 Cs λ³ k⁴, RELION's
amplitude-contrast mixing), shell averages computed pixel by pixel, and plane waves whose
Fourier filtering is known in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryogan_core.physics.ctf import CtfParams
from cryogan_core.train.precondition import ctf_preconditioner, mean_ctf2_profile, precondition_gradient_

from test_cryogan_train import _dataset, _trainer


def _ctf(defocus_A: list[float], voltage_kV: float = 200.0, cs_mm: float = 1.4, q0: float = 0.1) -> CtfParams:
    n = len(defocus_A)
    t = lambda v: torch.full((n,), float(v))  # noqa: E731
    d = torch.tensor(defocus_A, dtype=torch.float32)
    return CtfParams(defocus_u_A=d, defocus_v_A=d.clone(), defocus_angle_deg=t(0), voltage_kV=t(voltage_kV),
                     cs_mm=t(cs_mm), amplitude_contrast=t(q0), phase_shift_deg=t(0), bfactor_A2=t(0), scale=t(1))


def _textbook_ctf2(k_inv_A: np.ndarray, defocus_A: float, voltage_kV: float = 200.0, cs_mm: float = 1.4, q0: float = 0.1) -> np.ndarray:
    """CTF² of a non-astigmatic CTF at spatial frequencies ``k`` (1/Å)."""
    v = voltage_kV * 1e3
    lam = 12.2643247 / math.sqrt(v * (1.0 + 0.978466e-6 * v))  # Å (relativistic)
    cs = cs_mm * 1e7
    chi = math.pi * lam * defocus_A * k_inv_A**2 - 0.5 * math.pi * cs * lam**3 * k_inv_A**4
    return (math.sqrt(1 - q0 * q0) * np.sin(chi) + q0 * np.cos(chi)) ** 2


@pytest.mark.parametrize("box", [32, 33])
def test_profile_is_the_shell_mean_of_the_textbook_ctf2(box):
    px = 7.08
    defoci = [8000.0, 11700.0]
    prof = mean_ctf2_profile(_ctf(defoci), box, px).numpy()
    fy = np.fft.fftfreq(box)[:, None]
    fx = np.fft.rfftfreq(box)[None, :]
    k = np.sqrt(fy**2 + fx**2)  # 1/px
    c2 = np.mean([_textbook_ctf2(k / px, d) for d in defoci], axis=0)
    shell = np.rint(k * box).astype(int)
    for i in range(shell.max() + 1):
        assert prof[i] == pytest.approx(c2[shell == i].mean(), abs=2e-3), i
    assert np.all(prof[shell.max() + 1 :] == prof[shell.max()])  # beyond the 2-D corners


@pytest.mark.parametrize("box", [32, 33])
def test_weights_boost_the_shells_near_the_first_ctf_zero(box):
    px, defocus = 7.08, 10000.0
    w = ctf_preconditioner(_ctf([defocus]), box, px, max_boost=10.0)
    assert w.shape == (box, box, box // 2 + 1) and w.dtype == torch.float32
    assert float(w.min()) >= 1.0 - 1e-6 and float(w.max()) <= 10.0 + 1e-5
    assert float(w[0, 0, 0]) == pytest.approx(1.0)
    # the first zero of the CTF (χ' = sin + q0 cos = 0 past the first maximum), in shells
    kk = np.linspace(1e-4, 0.5 / px, 20000)
    c2 = _textbook_ctf2(kk, defocus)
    first_max = np.argmax(c2 > 0.999 * c2[: np.argmax(np.diff(c2) < 0) + 1].max())
    k_zero = kk[first_max + np.argmin(c2[first_max:])]
    zero_shell = k_zero * px * box
    along_x = w[0, 0, :].numpy()
    assert abs(int(np.argmax(along_x)) - zero_shell) <= 1.0
    assert along_x[int(np.argmax(along_x))] == pytest.approx(10.0, rel=0.05)  # capped there
    assert np.all(along_x[: int(zero_shell) - 3] < 1.5)  # low frequencies untouched
    # radial: the same weight along every axis (up to the grid's interpolation)
    assert float(w[int(round(zero_shell)), 0, 0]) == pytest.approx(float(w[0, 0, int(round(zero_shell))]), rel=1e-5)
    torch.testing.assert_close(ctf_preconditioner(_ctf([defocus]), box, px, max_boost=1.0), torch.ones_like(w))


@pytest.mark.parametrize("box", [24, 25])
def test_preconditioning_scales_each_plane_wave_by_its_weight(box):
    weights = torch.ones(box, box, box // 2 + 1)
    weights[:, :, 3] = 4.0  # every frequency with |kx| = 3
    z, y, x = torch.meshgrid(*(torch.arange(box, dtype=torch.float32),) * 3, indexing="ij")
    low = torch.cos(2 * math.pi * 1 * x / box + 0.3)
    high = torch.sin(2 * math.pi * 3 * x / box) * torch.cos(2 * math.pi * 2 * y / box)
    p = torch.zeros(box, box, box, requires_grad=True)
    p.grad = (low + high).clone()
    precondition_gradient_(p, weights)
    torch.testing.assert_close(p.grad, low + 4.0 * high, atol=1e-4, rtol=0)
    p.grad = (low + high).clone()
    precondition_gradient_(p, torch.ones(box, box, box // 2 + 1))
    torch.testing.assert_close(p.grad, low + high, atol=1e-5, rtol=0)


def test_bad_input_is_refused():
    p = torch.zeros(8, 8, 8, requires_grad=True)
    p.grad = torch.ones(8, 8, 8)
    with pytest.raises(ValueError, match="rFFT grid"):
        precondition_gradient_(p, torch.ones(8, 8, 8))
    with pytest.raises(ValueError, match="max_boost"):
        ctf_preconditioner(_ctf([10000.0]), 8, 5.0, max_boost=0.5)
    with pytest.raises(ValueError, match="empty"):
        mean_ctf2_profile(_ctf([10000.0])[torch.tensor([], dtype=torch.long)], 8, 5.0)
    with pytest.raises(ValueError, match="pixel size"):
        mean_ctf2_profile(_ctf([10000.0]), 8, 0.0)
    q = torch.zeros(4, 4, 4, requires_grad=True)
    precondition_gradient_(q, torch.ones(4, 4, 3))  # no gradient yet: nothing to do
    assert q.grad is None


def test_trainer_applies_the_preconditioner_to_the_volume_update():
    """The same step with and without the option: same critic and losses before the volume
    update, different volumes after it; the weights are built at the trainer's box."""
    box = 24
    _, ctf, real = _dataset(box, 200, 0.0, seed=3)
    plain = _trainer(box, real, ctf, 1)
    pre = _trainer(box, real, ctf, 1, ctf_precondition=8.0)
    assert plain.preconditioner is None
    assert pre.preconditioner is not None and pre.preconditioner.shape == (box, box, box // 2 + 1)
    assert float(pre.preconditioner.max()) > 2.0
    batch = real[: plain.config.batch_size * plain.config.n_critic]
    r_plain = plain.train_step(batch, 1.0, 0.0)
    r_pre = pre.train_step(batch, 1.0, 0.0)
    assert r_plain["loss_gen"] == pytest.approx(r_pre["loss_gen"], rel=1e-5)
    assert not torch.allclose(plain.current_volume(), pre.current_volume(), atol=1e-6)
