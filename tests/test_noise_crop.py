"""CroppedNoise: simulator noise made at the particles' box and Fourier-cropped like them.

The reference is independent of the noise code: white Gaussian "particles" at the full box,
Fourier-cropped and normalised exactly as ``cryogan reconstruct`` reads particles; their
radially averaged power spectrum is what the simulator's noise must reproduce.
"""

from __future__ import annotations

import math

import pytest
import torch

from cryogan_core.commands.reconstruct_inputs import build_noise
from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.metrics.images import normalize_background
from cryogan_core.physics.noise import BackgroundNoise, CroppedNoise
from cryogan_core.physics.resample import fourier_crop_images


def _shell_power(images: torch.Tensor) -> torch.Tensor:
    """Mean |FFT|² per integer shell (rounded radius, cycles/box) of ``(n, b, b)`` images."""
    b = images.shape[-1]
    power = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1)).abs().pow(2).mean(0)
    c = torch.arange(b) - b // 2
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2).round().long().flatten()
    return torch.bincount(r, power.flatten()) / torch.bincount(r)


def _particles(n: int, box_full: int, box: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """White-noise particles at ``box_full`` (normalised) and cropped to ``box`` (normalised)."""
    full = torch.randn(n, box_full, box_full, generator=torch.Generator().manual_seed(seed))
    r_full, r = 0.4 * box_full, 0.4 * box_full * box / box_full
    return normalize_background(full, r_full), normalize_background(fourier_crop_images(full, box), r), r_full, r


@pytest.mark.parametrize(("box_full", "box"), [(64, 32), (63, 31), (64, 40)])
def test_cropped_noise_has_the_cropped_particles_spectrum(box_full: int, box: int) -> None:
    full, cropped, r_full, r = _particles(3000, box_full, box, seed=0)
    want = _shell_power(cropped)
    source = BackgroundNoise.from_particles(full, r_full, generator=torch.Generator().manual_seed(1))
    noise = CroppedNoise.from_source(source, box, float(cropped.var()))
    got = _shell_power(noise.sample(3000, torch.Generator().manual_seed(2)))
    ratio = got[1 : box // 2 + 1] / want[1 : box // 2 + 1]
    assert noise.sample(5).shape == (5, box, box)
    # shells 1-3: the patches lack up to ~6 % (their images' background mean was removed)
    assert torch.all((ratio[:3] - 1).abs() < 0.08), ratio
    assert torch.all((ratio[3:] - 1).abs() < 0.03), ratio


def test_mosaic_at_the_training_box_misses_the_cropped_nyquist_and_cropped_noise_does_not() -> None:
    """The defect CroppedNoise fixes: at an even cropped box the particles' Nyquist line holds
    twice the power; a mosaic of 6-px patches cut there smears it into the top shells."""
    full, cropped, r_full, r = _particles(3000, 64, 32, seed=3)
    want = _shell_power(cropped)
    old = BackgroundNoise.from_particles(cropped, r, generator=torch.Generator().manual_seed(1))
    assert old.patch_px == 6
    old_ratio = _shell_power(old.sample(3000, torch.Generator().manual_seed(2)))[14:16] / want[14:16]
    assert torch.all(old_ratio > 1.04), old_ratio  # 16.2 and 15.1 Å in the β-gal benchmark
    new = CroppedNoise.from_source(BackgroundNoise.from_particles(full, r_full), 32, 1.0)
    new_ratio = _shell_power(new.sample(3000, torch.Generator().manual_seed(2)))[14:17] / want[14:17]
    assert torch.all((new_ratio - 1).abs() < 0.04), new_ratio


def test_cropped_noise_variance_is_calibrated_and_draws_repeat() -> None:
    full, _, r_full, _ = _particles(200, 48, 24, seed=4)
    noise = CroppedNoise.from_source(BackgroundNoise("white", 48, 1.0), 24, 2.5)
    a = noise.sample(2000, torch.Generator().manual_seed(7))
    assert math.isclose(float(a.var()), 2.5, rel_tol=0.05)
    assert torch.equal(a[:10], noise.sample(10, torch.Generator().manual_seed(7)))
    assert noise.sample(0).shape == (0, 24, 24)
    assert noise.mode == "white" and noise.patch_px == 0 and "cropped to 24 px" in noise.describe()
    patches = CroppedNoise.from_source(BackgroundNoise.from_particles(full, r_full), 24, 1.0)
    assert patches.mode == "patches" and patches.to("cpu").box == 24


def test_cropped_noise_rejects_bad_boxes() -> None:
    source = BackgroundNoise("white", 32, 1.0)
    for bad in (32, 40, 0):
        with pytest.raises(ValueError, match="training box"):
            CroppedNoise(source, bad, 1.0, 1.0)
    with pytest.raises(ValueError, match="n_calibrate"):
        CroppedNoise.from_source(source, 16, 1.0, n_calibrate=0)


@pytest.mark.parametrize("mode", ["patches", "white"])
def test_job_makes_noise_at_the_particles_box_when_it_crops(mode: str) -> None:
    full, cropped, r_full, r = _particles(300, 64, 32, seed=5)
    opts = ReconstructOptions(noise=mode)
    noise = build_noise(opts, cropped, r, None, torch.Generator().manual_seed(0), (full, r_full))
    assert isinstance(noise, CroppedNoise) and noise.box == 32 and noise.source.box == 64
    assert noise.mode == mode
    same_box = build_noise(opts, cropped, r, None, torch.Generator().manual_seed(0))
    assert isinstance(same_box, BackgroundNoise) and same_box.box == 32
