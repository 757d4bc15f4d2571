"""``cryogan reconstruct`` estimates the particles' SNR without poses (whole-box variance
over background variance), logs it, writes it to summary.json as ``estimated_snr_db`` and
to the PDF's summary page, and warns below -15 dB, where our benchmarks (docs/cryogan_benchmarks.md)
measured CryoGAN maps moving with the seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cryogan_core.commands.options import options_from_mapping
from cryogan_core.commands.reconstruct import LOW_SNR_DB, run_reconstruct
from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.report.reconstruct_report import summary_lines

TINY = {"box_train": "16", "max_minutes": "0", "n_epochs": "1", "eval_minutes": "0", "log_seconds": "1000",
        "symmetry": "C1", "particle_diameter_A": "160"}


def _simulate(root: Path, snr_db: float) -> Path:
    """120 particles of the built-in volume, 24 px at 8 Å/px, at ``snr_db``; returns the STAR."""
    run_simulate(root / "Simulate", n=120, snr_db=snr_db, shift_px=1.0, seed=5, box=24, pixel_size_A=8.0, project_dir=root)
    return root / "Simulate/particles.star"


@pytest.mark.parametrize("snr_db, warned", [(0.0, False), (-20.0, True)])
def test_the_job_reports_the_particles_snr_and_warns_when_low(tmp_path, log_messages, snr_db, warned):
    star = _simulate(tmp_path, snr_db)
    torch.set_num_threads(1)
    summary = run_reconstruct(star, tmp_path / "out", options_from_mapping(ReconstructOptions, TINY),
                              project_dir=tmp_path)
    got = summary["estimated_snr_db"]
    # 120 particles of 24 px: the pose-free estimate reads about 0.5-1 dB low at 0 dB (signal
    # spread past the radius) and is noisy at -20 dB (the difference of two variances)
    assert (-1.5 < got < 0.3) if snr_db == 0.0 else (got < LOW_SNR_DB)
    text = "".join(log_messages)
    assert f"Particle SNR {got:.1f} dB (120 particles; pose-free" in text
    assert ("another --seed" in text) is warned
    assert "optimistic for CryoGAN" in text and "give an independent map (--in_3dref)" in text  # no reference given
    # the PDF's first page: the same numbers
    page = "\n".join(summary_lines(summary, LOW_SNR_DB))
    assert f"particle SNR, dB (pose-free; reads low)    {got:.1f}" in page
    assert f"{summary['resolution_A_fsc_0.143']:.1f} Å" in page and "120 (" in page
    assert ("run another seed" in page) is warned
