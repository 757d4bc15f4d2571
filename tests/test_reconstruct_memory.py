"""CryoGAN holds every particle it trains on at the training box: a set that would take more
than a quarter of the memory is subsampled, with a warning, instead of running out of it."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

import cryogan_core.commands.reconstruct as reconstruct_command
from cryogan_core.commands.reconstruct import run_reconstruct
from cryogan_core.commands.reconstruct_inputs import max_particles_in_memory
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.report.progress import ProgressLog
from conftest import StopAtCall


def test_particles_per_memory_follow_the_training_box() -> None:
    gib = 2**30
    # a quarter of 32 GiB: 1,000,000 particles of 38 px (5.8 GB) fit, 1,000,000 of 128 px (66 GB) do not
    assert max_particles_in_memory(38, 32 * gib) == 8 * gib // (4 * 38 * 38) > 1_000_000
    assert max_particles_in_memory(128, 32 * gib) == 131072
    assert max_particles_in_memory(128, None) is None


def test_the_job_reads_a_random_subset_when_the_set_would_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  log_messages: list[str]) -> None:
    run_simulate(tmp_path / "sim", n=40, snr_db=0.0, seed=4, box=16, pixel_size_A=8.0, project_dir=tmp_path)
    monkeypatch.setattr(reconstruct_command, "available_memory_bytes", lambda: 4 * 30 * 4 * 16 * 16)  # room for 30 particles
    monkeypatch.setattr(reconstruct_command, "ProgressLog", functools.partial(ProgressLog, every_s=0.0))
    with pytest.raises(StopAtCall.Stop):  # the second call: before half set 2 is read
        run_reconstruct(tmp_path / "sim/particles.star", tmp_path / "rec", {"box_train": 16, "symmetry": "C1"}, project_dir=tmp_path,
                        should_stop=StopAtCall(2))
    assert any("Using a random subset of 30 of 40 particles: at the training box 16 px" in m for m in log_messages)
    assert any(m.startswith("Reading particles: ") and "/30 particles (" in m for m in log_messages)
