"""The end-of-training check that simulated particles have the real ones' power spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryogan_core.commands.reconstruct_outputs import SPECTRA_CAUSES, log_spectra
from cryogan_core.metrics.images import normalize_background
from cryogan_core.physics.euler import random_euler_deg
from cryogan_core.physics.noise import BackgroundNoise
from cryogan_core.physics.phantom import procedural_volume
from cryogan_core.physics.simulator import random_ctf_params, simulate_particles, uniform_shifts_px
from cryogan_core.report.reconstruct_report import spectra_figure, summary_lines
from cryogan_core.train.cryogan_simulator import SimulationPriors
from cryogan_core.train.simulator_check import SpectraCheck, spectra_check


def matched_data(box: int, n: int = 600, snr_db: float = -5.0):
    """Real particles of the procedural volume (white noise) and the priors and volume that
    make them: the simulator IS the data's process, in the normalised particles' units."""
    g = torch.Generator().manual_seed(box)
    truth = torch.from_numpy(procedural_volume(box))
    ctf = random_ctf_params(n, generator=g)
    sim = simulate_particles(truth, 6.0, random_euler_deg(n, generator=g), uniform_shifts_px(n, 1.0, generator=g) * 6.0,
                             ctf, snr_db, generator=g)
    radius = 0.4 * box
    real = normalize_background(sim.noisy, radius)
    priors = SimulationPriors(ctf=ctf, pixel_size_A=6.0, box=box, noise=BackgroundNoise("white", box, 1.0),
                              bg_radius_px=radius, shift_px=1.0, pad_factor=2.0)
    return truth / sim.noise_sigma, priors, real


@pytest.mark.parametrize("box", [24, 25])
def test_the_data_s_own_process_matches_and_a_wrong_amplitude_is_caught(box: int) -> None:
    vol, priors, real = matched_data(box)
    good = spectra_check(vol, priors, real, seed=1)
    assert good.n_particles == 600 and good.ratio.shape == (box // 2 + 1,)
    dev = np.abs(good.ratio[1:] - 1.0)
    assert np.all(dev < np.maximum(0.05, 4 * good.ratio_se[1:])), (good.ratio, good.ratio_se)
    # the parts: the noise alone is white with the background's unit variance; signal + noise ≈ simulated
    np.testing.assert_allclose(good.noise[1:], 1.0, rtol=0.15)
    assert np.all(good.signal[1:4] > good.noise[1:4])  # -5 dB: the signal dominates the lowest rings
    # twice the volume: the normalised simulated particles carry too much power where the signal is
    bad = spectra_check(2.0 * vol, priors, real, seed=1)
    r = bad.worst_ring()
    assert bad.ratio[r] > 1.3 and abs(bad.ratio[r] - 1.0) > 3 * bad.ratio_se[r]
    assert bad.to_dict()["worst_ring_A"] == pytest.approx(1.0 / bad.freq_inv_A[r])


def test_spectra_check_rejects_particles_at_another_box() -> None:
    vol, priors, real = matched_data(24, n=20)
    with pytest.raises(ValueError, match=r"\(n, 24, 24\)"):
        spectra_check(vol, priors, real[:, :20, :20])
    with pytest.raises(ValueError, match="non-empty"):
        spectra_check(vol, priors, real[:0])


def test_spectra_figure_and_summary_line() -> None:
    vol, priors, real = matched_data(24, n=64)
    checks = {"half 1": spectra_check(vol, priors, real), "half 2": spectra_check(vol, priors, real, seed=2)}
    fig = spectra_figure(checks)
    top, bottom = fig.axes
    assert len(top.lines) == 4 and len(bottom.lines) == 2 + 3  # four spectra; two ratios and the 1, ±5 % lines
    assert top.get_yscale() == "log"
    with pytest.raises(ValueError, match="no spectra"):
        spectra_figure({})
    summary = {"options": {"symmetry": "C1", "seed": 0}, "n_particles": 64, "n_half1": 32, "n_half2": 32,
               "estimated_snr_db": -5.0, "box": 24, "pixel_size_A": 6.0, "box_train": 24, "nyquist_train_A": 12.0,
               "steps": 1, "epochs": 1.0, "training_time_s": 1.0, "stopped_by": "epochs", "resolution_A_fsc_0.143": 20.0,
               "spectra": {k: c.to_dict() for k, c in checks.items()}}
    w = checks["half 1"].to_dict()
    line = next(s for s in summary_lines(summary, -15.0) if s.startswith("simulated/real power"))
    assert f"{w['worst_ratio']:.3f}" in line and f"{w['worst_ring_A']:.1f} Å" in line


def made_up_check(ratio_at_3: float, se: float, noise_at_3: float = 1.0) -> SpectraCheck:
    """A check of 9 rings, all matched (real power 1) but ring 3: ratio ``ratio_at_3`` ± ``se``,
    the simulator's noise alone ``noise_at_3``."""
    ones = np.ones(9)
    ratio = ones.copy()
    ratio[3] = ratio_at_3
    noise = np.full(9, 0.5)
    noise[3] = noise_at_3
    return SpectraCheck(freq_inv_A=np.arange(9) / 96.0, real=ones, simulated=ratio, signal=1.0 - noise, noise=noise,
                        ratio_se=np.full(9, se), n_particles=100)


def test_the_log_warns_only_beyond_5_percent_and_4_standard_errors_and_says_what_the_spectra_tell(log_messages) -> None:
    log_spectra({"half 1": made_up_check(1.04, 0.001), "half 2": made_up_check(0.92, 0.025)})
    assert len(log_messages) == 2 and not any("at 32.0 Å: simulated / real" in m for m in log_messages)
    assert "half 1: simulated / real particles within 4.0% in every ring (largest at 32.0 Å: 1.040 ± 0.001" in log_messages[0]
    log_messages.clear()
    log_spectra({"1": made_up_check(1.20, 0.01, noise_at_3=1.15), "2": made_up_check(1.20, 0.01, noise_at_3=0.9),
                 "3": made_up_check(0.80, 0.01, noise_at_3=0.9)})
    warnings = [m.strip() for m in log_messages if "at 32.0 Å: simulated / real" in m]
    assert len(log_messages) == 6 and len(warnings) == 3
    assert warnings[0].startswith("Power spectra, 1, at 32.0 Å: simulated / real 1.200 ± 0.010: " + SPECTRA_CAUSES["noise"])
    assert warnings[1].endswith(SPECTRA_CAUSES["map"]) and warnings[2].endswith(SPECTRA_CAUSES["neither"])
