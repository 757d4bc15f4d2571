"""``cryogan reconstruct`` estimates the particles' SNR without poses (whole-box variance
over background variance), logs it, writes it to summary.json as ``estimated_snr_db`` and
to the PDF's summary page, and warns below -15 dB, where our benchmarks (docs/cryogan_benchmarks.md)
measured CryoGAN maps moving with the seed."""

from __future__ import annotations

import pytest

from cryogan_core.commands.reconstruct import LOW_SNR_DB
from cryogan_core.report.reconstruct_report import summary_lines


@pytest.mark.parametrize("snr_db, warned", [(0.0, False), (-20.0, True)])
def test_the_job_reports_the_particles_snr_and_warns_when_low(tiny_reconstruct, snr_db, warned):
    summary, text, _ = tiny_reconstruct(snr_db, 1.0)  # the 0-dB job is the one the origins test runs too
    got = summary["estimated_snr_db"]
    # 120 particles of 24 px: the pose-free estimate reads about 0.5-1 dB low at 0 dB (signal
    # spread past the radius) and is noisy at -20 dB (the difference of two variances)
    assert (-1.5 < got < 0.3) if snr_db == 0.0 else (got < LOW_SNR_DB)
    assert f"Particle SNR {got:.1f} dB (120 particles; pose-free" in text
    assert ("another --seed" in text) is warned
    assert "optimistic for CryoGAN" in text and "give an independent map (--in_3dref)" in text  # no reference given
    # the PDF's first page: the same numbers
    page = "\n".join(summary_lines(summary, LOW_SNR_DB))
    assert f"particle SNR, dB (pose-free; reads low)    {got:.1f}" in page
    assert f"{summary['resolution_A_fsc_0.143']:.1f} Å" in page and "120 (" in page
    assert ("run another seed" in page) is warned
