"""Phase flipping and CTF modulation (the denoiser's CTF-aware mode), against numpy and physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryogan_core.models.symmetry_average import apply_symmetry
from cryogan_core.physics.ctf import CtfParams, compute_ctf
from cryogan_core.physics.ctf_filters import ctf_modulate, phase_flip
from cryogan_core.train.pix2pix import _modulate_in_frame


def astigmatic_ctf(n: int, box: int, angle_deg: float = 30.0, pixel_size_A: float = 3.0) -> torch.Tensor:
    """``(n, box, box//2+1)`` CTFs with strong astigmatism (1.0 / 1.6 µm) at ``angle_deg``."""
    f = lambda v: torch.full((n,), float(v))  # noqa: E731
    params = CtfParams(f(10000), f(16000), f(angle_deg), f(300), f(2.7), f(0.1), f(0), f(0), f(1))
    return compute_ctf(params, box, pixel_size_A, rfft=True)


@pytest.mark.parametrize("box", [32, 33])
def test_filters_match_numpy(box: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, box, box)).astype(np.float32)
    ctf = astigmatic_ctf(3, box)
    c = ctf.numpy().astype(np.float64)
    sign = np.where(c >= 0, 1.0, -1.0)
    sign[:, 0, 0] = 1.0
    c1 = c.copy()
    c1[:, 0, 0] = 1.0
    ref_flip = np.fft.irfft2(np.fft.rfft2(x) * sign, s=(box, box))
    ref_mod = np.fft.irfft2(np.fft.rfft2(x) * c1, s=(box, box))
    np.testing.assert_allclose(phase_flip(torch.tensor(x), ctf).numpy(), ref_flip, atol=1e-4)
    np.testing.assert_allclose(ctf_modulate(torch.tensor(x), ctf).numpy(), ref_mod, atol=1e-4)
    assert (c < 0).any() and (c > 0).any()  # the test CTF does flip


@pytest.mark.parametrize("box", [32, 33])
def test_modulating_a_phase_flipped_image_applies_the_ctf_magnitude(box: int) -> None:
    # CTF · sign(CTF) = |CTF|: the sign pattern cancels whatever the defocus. Compared in
    # Fourier space without an even box's Nyquist column, where an astigmatic CTF is not
    # Hermitian-symmetric and irfft2 keeps only the symmetric part.
    x = torch.randn(2, box, box)
    ctf = astigmatic_ctf(2, box)
    mag = ctf.abs()
    mag[:, 0, 0] = 1.0
    cols = slice(0, box // 2) if box % 2 == 0 else slice(None)
    got = torch.fft.rfft2(ctf_modulate(phase_flip(x, ctf), ctf))[..., cols]
    expected = (torch.fft.rfft2(x) * mag)[..., cols]
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="ctf must be"):
        phase_flip(torch.zeros(2, 32, 32), astigmatic_ctf(2, 30))
    with pytest.raises(ValueError, match="ctf must be"):
        ctf_modulate(torch.zeros(3, 32, 32), astigmatic_ctf(2, 32))


@pytest.mark.parametrize("box", [32, 33])
def test_training_modulates_in_the_particles_own_frame(box: int) -> None:
    # a batch mirrored in x (the training's random symmetry): modulating the mirrored output
    # in the particle's frame equals modulating it with the mirrored CTF, whose astigmatism
    # angle is -phi (physics, not the code's own inverse)
    o = torch.randn(2, box, box)
    ctf = astigmatic_ctf(2, box, angle_deg=30.0)
    ctf_mirrored = astigmatic_ctf(2, box, angle_deg=-30.0)
    # (spectra without an even box's Nyquist row and column, where +1/2 and -1/2 cycles/px
    # share one bin, so the mirrored CTF is not defined by the mirror)
    keep_rows = [i for i in range(box) if 2 * i != box]

    def spectrum(img: torch.Tensor) -> torch.Tensor:
        """The rfft2 coefficients without an even box's Nyquist row and column."""
        ft = torch.fft.rfft2(img)[..., keep_rows, :]
        return ft[..., : box // 2] if box % 2 == 0 else ft
    flipped = apply_symmetry(o, 0, True)
    got = _modulate_in_frame(flipped.unsqueeze(1), ctf, 0, True)[:, 0]
    torch.testing.assert_close(spectrum(got), spectrum(ctf_modulate(flipped, ctf_mirrored)), atol=1e-3, rtol=0)
    assert (ctf - ctf_mirrored).abs().max() > 0.5  # the mirror matters for this CTF
    # a half turn is a point reflection, under which every CTF is unchanged
    turned = apply_symmetry(o, 2, False)
    got = _modulate_in_frame(turned.unsqueeze(1), ctf, 2, False)[:, 0]
    torch.testing.assert_close(spectrum(got), spectrum(ctf_modulate(turned, ctf)), atol=1e-3, rtol=0)
