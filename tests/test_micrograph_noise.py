"""Background windows cut from micrographs (``--in_mics``): away from the picks, at the
particles' sampling, normalised; clear errors for bad micrograph input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import write_micrographs
from cryogan_core.errors import InputError
from cryogan_core.physics.micrograph_noise import micrograph_noise_patches, noise_from_micrograph_windows

def windows(star: Path, tmp: Path, particles: pd.DataFrame | None, **kw) -> torch.Tensor:
    """``micrograph_noise_patches`` with the test's sampling (particles 2 Å/px, box 32, out 16)."""
    args = dict(particle_pixel_A=2.0, particle_box=32, box_out=16, n_windows=400, generator=torch.Generator().manual_seed(1))
    args.update(kw)
    return micrograph_noise_patches(star, tmp, particles=particles, **args)


def test_windows_avoid_the_picked_particles(tmp_path: Path) -> None:
    star, parts = write_micrographs(tmp_path)
    # without the variance filter, only the exclusion keeps the discs out
    away = windows(star, tmp_path, parts, max_var_ratio=1e9)
    anywhere = windows(star, tmp_path, None, max_var_ratio=1e9)
    assert away.shape[1:] == (16, 16) and away.dtype == torch.float32 and away.shape[0] > 50
    # a 16-px window of normalised white noise rarely exceeds 6; a disc of 50 makes it ~10+
    assert away.amax(dim=(-2, -1)).max() < 6.0
    assert (anywhere.amax(dim=(-2, -1)) > 6.0).any(), "the control: without the picks, some windows hold a disc"


def test_variance_filter_drops_windows_with_particles(tmp_path: Path) -> None:
    star, _ = write_micrographs(tmp_path)
    kept = windows(star, tmp_path, None)
    assert kept.amax(dim=(-2, -1)).max() < 6.0


def test_windows_are_normalised_and_resampled(tmp_path: Path) -> None:
    # micrographs at 1 Å/px: a 32-px box at 2 Å/px is a 64-px window, Fourier-cropped to 16
    star, parts = write_micrographs(tmp_path, mic_pixel_A=1.0, side=400)
    w = windows(star, tmp_path, parts)
    assert w.shape[1:] == (16, 16)
    assert torch.allclose(w.mean(dim=(-2, -1)), torch.zeros(w.shape[0]), atol=1e-5)
    assert torch.allclose(w.reshape(w.shape[0], -1).std(dim=1), torch.ones(w.shape[0]), atol=1e-4)
    again = windows(star, tmp_path, parts)
    assert torch.equal(w, again), "the same generator seed cuts the same windows"


def test_noise_source_scales_windows_to_the_background_variance(tmp_path: Path) -> None:
    star, parts = write_micrographs(tmp_path)
    w = windows(star, tmp_path, parts)
    noise = noise_from_micrograph_windows(w, variance=4.0)
    assert noise.mode == "micrographs" and noise.box == 16
    sample = noise.sample(200, torch.Generator().manual_seed(0))
    assert sample.shape == (200, 16, 16)
    assert sample.var().item() == pytest.approx(4.0, rel=0.1)


def test_missing_pixel_size_is_a_clear_error(tmp_path: Path) -> None:
    star, parts = write_micrographs(tmp_path, mic_pixel_A=None)
    with pytest.raises(InputError, match=r"micrographs\.star: no rlnMicrographPixelSize"):
        windows(star, tmp_path, parts)


def test_missing_micrograph_is_a_clear_error(tmp_path: Path) -> None:
    star, parts = write_micrographs(tmp_path)
    (tmp_path / "Mics" / "mic1.mrc").unlink()
    with pytest.raises(InputError, match=r"row 2: rlnMicrographName Mics/mic1\.mrc: file not found"):
        windows(star, tmp_path, parts)


def test_micrograph_smaller_than_a_window_is_a_clear_error(tmp_path: Path) -> None:
    star, parts = write_micrographs(tmp_path, side=24)
    with pytest.raises(InputError, match=r"micrograph Mics/mic0\.mrc \(24 x 24 px\) is smaller than one particle window \(32 px\)"):
        windows(star, tmp_path, None)


def test_unreadable_star_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.star"
    bad.write_text("data_\nloop_\n_rlnMicrographName #1\n")
    with pytest.raises(InputError, match=r"bad\.star: "):
        windows(bad, tmp_path, None)
