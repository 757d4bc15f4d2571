"""The denoiser caps its training particles (and the synthetic pairs made next to them) so that
their pairs fit in a quarter of the memory."""

from __future__ import annotations

from pathlib import Path

import pytest

import cryogan_core.commands.denoise as denoise_command
from cryogan_core.commands.denoise import DenoiseInputs, run_denoise
from cryogan_core.commands._common import available_memory_bytes
from cryogan_core.commands.denoise_pairs import MIN_VALIDATION, max_pairs_in_memory, synthetic_pairs_that_fit
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.io.star import read_particles


def test_pairs_per_memory_follow_the_images_each_pair_holds() -> None:
    gib = 2**30
    # 3 float32 images of 256² = 786,432 bytes a pair; a quarter of 16 GiB holds 5,461
    assert max_pairs_in_memory(256, False, 16 * gib) == 4 * gib // (3 * 256 * 256 * 4) == 5461
    # the CTF-aware mode adds the CTF, 256 x 129 floats
    assert max_pairs_in_memory(256, True, 16 * gib) == 4 * gib // (4 * 256 * (3 * 256 + 129))
    # the default 20,000 particles of 64 px fit in a quarter of 8 GiB; never fewer than a validation set
    assert max_pairs_in_memory(64, True, 8 * gib) > 20000
    assert max_pairs_in_memory(512, True, 1024) == MIN_VALIDATION
    assert max_pairs_in_memory(64, True, None) is None


def test_this_machine_reports_its_memory() -> None:
    m = available_memory_bytes()
    assert m is None or m > 2**28  # more than 256 MiB wherever the tests run


def test_the_job_trains_on_fewer_particles_when_their_pairs_would_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_messages: list[str]
) -> None:
    run_simulate(tmp_path / "sim", n=160, snr_db=0.0, seed=2, box=16, pixel_size_A=8.0, project_dir=tmp_path)
    per_pair = 4 * 16 * (3 * 16 + 9)  # CTF-aware (the default): 3 images and the CTF
    monkeypatch.setattr(denoise_command, "available_memory_bytes", lambda: 4 * 50 * per_pair)  # room for 50 pairs
    summary = run_denoise(
        DenoiseInputs(tmp_path / "sim/particles.star", tmp_path / "out", tmp_path / "sim/ground_truth_map.mrc", project_dir=tmp_path),
        {"n_steps": 1, "batch_size": 4, "base_channels": 4, "depth": 2, "validation_fraction": 0, "n_report": 20,
         "no_bias_controls": True, "no_scores": True},
    )
    n_half1 = (read_particles(tmp_path / "sim/particles.star").particles["rlnRandomSubset"] == 1).sum()
    assert n_half1 > 50
    assert any(f"Training on 50 particles of half set 1, not {n_half1}" in m and "a quarter of this machine's memory" in m
               for m in log_messages)
    assert summary["n_train_particles"] == 50


def test_synthetic_pairs_fill_only_the_room_the_training_pairs_leave() -> None:
    assert synthetic_pairs_that_fit(20000, 500, None) == 20000  # memory unknown: as asked
    assert synthetic_pairs_that_fit(20000, 500, 27487) == 20000
    assert synthetic_pairs_that_fit(20000, 10000, 27487) == 17487
    assert synthetic_pairs_that_fit(20000, 30000, 27487) == 0


def test_the_job_makes_fewer_synthetic_pairs_when_they_would_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_messages: list[str]
) -> None:
    run_simulate(tmp_path / "sim", n=100, snr_db=0.0, seed=2, box=16, pixel_size_A=8.0, project_dir=tmp_path)
    per_pair = 4 * 16 * (3 * 16 + 9)
    monkeypatch.setattr(denoise_command, "available_memory_bytes", lambda: 4 * 50 * per_pair)  # room for 50 pairs
    summary = run_denoise(
        DenoiseInputs(tmp_path / "sim/particles.star", tmp_path / "out", tmp_path / "sim/ground_truth_map.mrc", project_dir=tmp_path),
        {"n_steps": 1, "batch_size": 4, "base_channels": 4, "depth": 2, "validation_fraction": 0, "n_report": 20,
         "max_train_particles": 30, "synthetic_pairs": 100, "no_bias_controls": True, "no_scores": True},
    )
    assert summary["n_train_particles"] == 30
    assert summary["n_synthetic_pairs"] == 20
    assert any("--synthetic_pairs 100: making 20; more, with the 30 training pairs" in m for m in log_messages)
    assert any(m.startswith("Made 20 synthetic training pairs") for m in log_messages)
