"""Progress lines and aborts in the loops that read or prepare every particle before training:
the denoiser's pair preparation (one projection of the map per particle) and CryoGAN's reading
of the particles. On a large set each runs for minutes."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import cryogan_core.commands.denoise as denoise_command
import cryogan_core.commands.denoise_outputs as denoise_outputs
import cryogan_core.commands.denoise_pairs as denoise_pairs
import cryogan_core.commands.reconstruct as reconstruct_command
import cryogan_core.commands.simulate as simulate_command
from cryogan_core.commands.denoise import DenoiseInputs, run_denoise
from cryogan_core.commands.reconstruct import run_reconstruct
from cryogan_core.commands.reconstruct_inputs import load_images
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.star import read_particles
from cryogan_core.report.progress import ProgressLog
from conftest import StopAtCall


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project folder with 40 simulated particles (16 px, 8 Å/px) under ``sim/``."""
    root = tmp_path_factory.mktemp("progress")
    run_simulate(root / "sim", n=40, snr_db=0.0, seed=4, box=16, pixel_size_A=8.0, project_dir=root)
    return root


def test_lines_come_every_interval_with_the_rate_and_the_time_left(log_messages: list[str]) -> None:
    now = [0.0]
    progress = ProgressLog("Reading particles:", 1000, every_s=20.0, clock=lambda: now[0])
    now[0] = 10.0
    progress.advance(100)  # 10 s in: no line yet
    assert log_messages == []
    now[0] = 25.0
    progress.advance(150)  # 250 in 25 s: 10/s, 750 left = 75 s
    now[0] = 30.0
    progress.advance(50)  # 5 s after the last line: none
    assert [m.strip() for m in log_messages] == ["Reading particles: 250/1000 particles (10 particles/s, 1.2 min left)"]


def test_reading_particles_reports_each_batch_and_stops_between_batches(sim: Path) -> None:
    star = read_particles(sim / "sim/particles.star")
    images = ParticleImages(star.particles, sim, sim / "sim/particles.star")
    rows = np.arange(len(star.particles))
    counts: list[int] = []
    out = load_images(images, rows, 12, 4.0, on_batch=counts.append)
    assert out.shape == (40, 12, 12) and counts == [40]
    stop = StopAtCall(2)
    with pytest.raises(StopAtCall.Stop):
        load_images(images, np.concatenate([rows] * 13), 12, 4.0, should_stop=stop)  # 520: two batches of 512
    assert stop.calls == 2


def test_the_denoiser_reports_its_pairs_each_stack_and_the_pace_of_its_scores(
    sim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_messages: list[str]
) -> None:
    """One small job: lines while the pairs are prepared and within each output stack, and the
    scores' pace judged once, after the first batch (``scores_advice`` records what it is given)."""
    monkeypatch.setattr(denoise_command, "ProgressLog", functools.partial(ProgressLog, every_s=0.0))
    monkeypatch.setattr(denoise_outputs, "ProgressLog", functools.partial(ProgressLog, every_s=0.0))
    monkeypatch.setattr(denoise_pairs, "ProgressLog", functools.partial(ProgressLog, every_s=0.0))
    monkeypatch.setattr(denoise_outputs, "ADVISE_AFTER_S", 0.0)
    seen: list[tuple[int, float, float]] = []

    def advise(n_left: int, rate: float, share: float) -> str:
        seen.append((n_left, rate, share))
        return "SCORES ADVICE"

    monkeypatch.setattr(denoise_outputs, "scores_advice", advise)
    run_denoise(DenoiseInputs(sim / "sim/particles.star", tmp_path / "den", sim / "sim/ground_truth_map.mrc", project_dir=sim),
                {"n_steps": 1, "batch_size": 4, "base_channels": 4, "depth": 2, "validation_fraction": 0, "n_report": 20,
                 "stack_size": 30, "synthetic_pairs": 12})
    pairs = [m.split(" (")[0] for m in log_messages if m.startswith("Preparing training/validation/report pairs: ")]
    # 20 training particles of half set 1, then the 20 of half set 2 reported on
    assert pairs == ["Preparing training/validation/report pairs: 20/40 particles",
                     "Preparing training/validation/report pairs: 40/40 particles"]
    assert [m.split(" (")[0] for m in log_messages if m.startswith("Making synthetic")] == ["Making synthetic training pairs: 12/12 pairs"]
    # the bias controls say what they are doing before the minutes they can take
    start = next(i for i, m in enumerate(log_messages) if m.startswith("Reference-bias controls on 20 held-out particles"))
    assert log_messages[start + 1].startswith("Bias controls: ")
    stacks = [m.split(" (")[0] for m in log_messages if m.startswith("Denoising into ")]
    assert stacks == ["Denoising into particles_000001.mrcs: 30/30 particles", "Denoising into particles_000002.mrcs: 10/10 particles"]
    # judged once, after the first batch (the 30 of the first stack): 10 left; the scores take part of the time
    assert len(seen) == 1 and seen[0][0] == 10 and seen[0][1] > 0 and 0 < seen[0][2] < 1
    assert sum("SCORES ADVICE" in m for m in log_messages) == 1


def test_cryogan_reports_its_reading_and_an_abort_there_stops_it(sim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 log_messages: list[str]) -> None:
    monkeypatch.setattr(reconstruct_command, "ProgressLog", functools.partial(ProgressLog, every_s=0.0))
    with pytest.raises(StopAtCall.Stop):  # the second call: before half set 2 is read
        run_reconstruct(sim / "sim/particles.star", tmp_path / "rec", {"box_train": 16, "symmetry": "C1"}, project_dir=sim,
                        should_stop=StopAtCall(2))
    assert any(m.startswith("Reading particles: 20/40 particles (") for m in log_messages)
    assert not (tmp_path / "rec/checkpoint.pt").exists()


def test_simulate_reports_its_projections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_messages: list[str]) -> None:
    """``cryogan simulate`` projects in batches of 256 with a line after each (every_s 0 here):
    5,000 particles of 256 px take minutes on a CPU."""
    monkeypatch.setattr(simulate_command, "ProgressLog", functools.partial(ProgressLog, every_s=0.0))
    run_simulate(tmp_path / "sim", n=300, snr_db=0.0, seed=1, box=16, pixel_size_A=8.0, project_dir=tmp_path)
    lines = [m.split(" (")[0] for m in log_messages if m.startswith("Projecting: ")]
    assert lines == ["Projecting: 256/300 particles", "Projecting: 300/300 particles"]
