"""``initial_model``: CryoGAN starts both half maps from a given map, low-passed, instead of
the Gaussian ball (``cryogan_core.train.cryogan_volume.initial_volume``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryogan_core.commands.reconstruct import run_reconstruct
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.errors import InputError
from cryogan_core.physics.phantom import procedural_volume
from cryogan_core.physics.resample import fourier_crop_or_pad_map
from cryogan_core.train.cryogan_volume import initial_volume

TINY = {"box_train": "16", "max_minutes": "0", "n_epochs": "0.2", "eval_minutes": "0", "log_seconds": "1000",
        "symmetry": "C1", "particle_diameter_A": "160"}


@pytest.mark.parametrize("box_in, box", [(32, 16), (31, 15), (24, 24), (25, 25)])
def test_initial_volume_against_numpy(box_in: int, box: int) -> None:
    """Fourier crop (tested in test_resample), then a hard low-pass, clamp at 0 and peak 1,
    checked against numpy's FFT; odd and even boxes."""
    vol = torch.from_numpy(procedural_volume(box_in)) * 5.0 - 0.02  # a slightly negative background
    pixel_A = 4.0 * box_in / box
    v = initial_volume(vol, box, pixel_A, lowpass_A=30.0)
    assert v.shape == (box, box, box) and v.dtype == torch.float32
    cropped = (fourier_crop_or_pad_map(vol, box) if box != box_in else vol).numpy().astype(np.float64)
    f = np.fft.fftfreq(box, d=pixel_A)
    fx = np.fft.rfftfreq(box, d=pixel_A)
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)
    want = np.fft.irfftn(np.fft.rfftn(cropped) * (r <= 1 / 30.0), s=cropped.shape, axes=(0, 1, 2)).clip(min=0)
    want /= want.max()
    np.testing.assert_allclose(v.numpy(), want, atol=2e-5)
    assert float(v.max()) == pytest.approx(1.0) and float(v.min()) == 0.0


def test_a_map_with_nothing_positive_is_refused_with_its_name() -> None:
    vol = -torch.from_numpy(procedural_volume(16))
    with pytest.raises(InputError, match=r"--initial_model start\.mrc: its density sums to -.*inverted contrast"):
        initial_volume(vol, 16, 8.0, 40.0, name="start.mrc")


def test_the_job_starts_from_the_initial_model(tmp_path: Path, log_messages: list[str]) -> None:
    """With the simulation's own map as the initial model the maps start close to the truth;
    from the Gaussian ball, after the same few steps, they are far from it."""
    run_simulate(tmp_path / "sim", n=120, snr_db=0.0, shift_px=1.0, seed=5, box=24, pixel_size_A=8.0, project_dir=tmp_path)
    star, truth = tmp_path / "sim/particles.star", tmp_path / "sim/ground_truth_map.mrc"
    with_start = run_reconstruct(star, tmp_path / "start", {**TINY, "initial_model": str(truth), "initial_lowpass_A": "30"},
                                 ref_path=truth, project_dir=tmp_path)
    ball = run_reconstruct(star, tmp_path / "ball", TINY, ref_path=truth, project_dir=tmp_path)
    assert any(f"{truth} low-passed at 30 Å inside the mask" in m for m in log_messages)
    # the closing line puts the half-map FSC's caveat next to the measure that holds
    assert any("optimistic for CryoGAN" in m and f"FSC with the reference: 0.5 at {ball['resolution_A_vs_reference_fsc_0.5']:.1f} Å" in m
               for m in log_messages)
    assert with_start["to_reference"]["cc"] > 0.8
    assert with_start["to_reference"]["cc"] > ball["to_reference"]["cc"] + 0.1


def test_a_missing_initial_model_is_one_error_naming_it(tmp_path: Path) -> None:
    run_simulate(tmp_path / "sim", n=40, snr_db=0.0, seed=1, box=24, pixel_size_A=8.0, project_dir=tmp_path)
    with pytest.raises(InputError, match="nothere.mrc"):
        run_reconstruct(tmp_path / "sim/particles.star", tmp_path / "out", {**TINY, "initial_model": str(tmp_path / "nothere.mrc")},
                        project_dir=tmp_path)


def test_initial_lowpass_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="initial_lowpass_A"):
        run_reconstruct(tmp_path / "x.star", tmp_path / "out", {"initial_lowpass_A": "0"})
