"""The denoiser's science: training pairs, gold-standard training, reuse of a model, outputs, bias metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryogan_core.commands._common import map_for_particles
from cryogan_core.commands.denoise import DenoiseInputs, load_model, run_denoise
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.errors import InputError
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.mrc import open_stack
from cryogan_core.io.star import read_particles
from cryogan_core.metrics.bias import add_extra_domain, lowpass_volume, max_cc_with_library, recovery_fraction
from cryogan_core.metrics.images import circular_mask, masked_pearson
from cryogan_core.physics.ctf_filters import ctf_modulate, phase_flip
from cryogan_core.physics.phantom import procedural_volume
from cryogan_core.physics.ctf import CtfParams
from cryogan_core.physics.projection import forward_model
from cryogan_core.physics.resample import fourier_crop_images
from cryogan_core.train.evaluate import HeldoutSimulation, highres_control
from cryogan_core.train.pairs import (PairSettings, default_bg_radius_px, input_transform, make_targets, predictions,
                                      prepare_inputs, train_box_ctf)

SMALL = {"base_channels": 8, "depth": 2, "disc_channels": 8, "batch_size": 8, "n_report": 60, "stack_size": 100}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project folder with 240 simulated particles (32 px, 7 Å/px, -10 dB) under ``sim/``."""
    root = tmp_path_factory.mktemp("den")
    run_simulate(root / "sim", n=240, snr_db=-10.0, shift_px=1.0, seed=7, box=32, pixel_size_A=7.0, project_dir=root)
    return root


@pytest.fixture(scope="module")
def trained(sim: Path) -> tuple[Path, dict]:
    """Output folder and summary of one small denoiser run (300 steps) on :func:`sim`."""
    out = sim / "run1"
    summary = run_denoise(DenoiseInputs(sim / "sim/particles.star", out, sim / "sim/ground_truth_map.mrc", project_dir=sim), {**SMALL, "n_steps": 300, "validation_fraction": 0.2, "validate_every": 100})
    return out, summary


def test_make_targets_recovers_a_known_scale_and_offset() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(20, 24, 24, generator=g)
    particles = 3.0 * ref + 0.5 + 0.01 * torch.randn(20, 24, 24, generator=g)
    mask = circular_mask(24, 10)
    targets, slope = make_targets(particles, ref, ref, mask)
    assert torch.allclose(slope, torch.full((20,), 3.0), atol=0.01)
    assert (targets - particles)[:, mask].abs().max() < 0.1
    pooled, s2 = make_targets(particles, ref, ref, mask, scale_mode="pooled")
    assert torch.allclose(s2, torch.full((20,), 3.0), atol=0.01)
    with pytest.raises(ValueError):
        make_targets(particles, ref, ref, mask, scale_mode="bogus")


@pytest.mark.parametrize("box, train_box", [(32, 32), (33, 33), (32, 24), (33, 20)])
def test_inputs_are_relion_normalised_and_targets_share_their_units(box: int, train_box: int) -> None:
    g = torch.Generator().manual_seed(1)
    raw = 5.0 + 2.0 * torch.randn(6, box, box, generator=g)
    s = PairSettings(box, train_box, 0.375 * box, 0.45 * box)
    x = prepare_inputs(raw, s)
    assert x.shape == (6, train_box, train_box)
    bg = ~circular_mask(train_box, 0.375 * train_box)
    assert torch.allclose(x[:, bg].mean(1), torch.zeros(6), atol=1e-4)
    assert torch.allclose(x[:, bg].std(1, unbiased=False), torch.ones(6), atol=1e-4)
    t = input_transform(raw, s)
    # the same affine map applied to the particle itself gives the inputs exactly
    assert torch.allclose(t(raw), x, atol=1e-5)
    assert torch.allclose(t.crop(t.normalise(raw)), x, atol=1e-5)


def test_gold_standard_training_improves_unseen_particles(trained: tuple[Path, dict]) -> None:
    out, s = trained
    # half 1 trains (a fifth of it only chooses the weights), half 2 is unseen
    assert s["n_train_particles"] == 96 and s["n_validation_particles"] == 24 and s["n_heldout_particles"] == 60
    assert s["train_steps"] == 300
    assert s["validation_best_step"] in (100, 200, 300) and s["validation_cc_best"] >= s["validation_cc_last"]
    assert s["heldout_cc_denoised"] > s["heldout_cc_raw"] + 0.1
    # the network is not worse on the particles it trained on than on unseen ones
    assert s["heldout_cc_denoised"] - 0.05 <= s["train_cc_denoised"] <= 1.0
    # the particles were simulated at -10 dB with this map: the job reads their SNR back
    assert s["estimated_snr_db"] == pytest.approx(-10.0, abs=0.3)
    for key in ("n_particles_written", "heldout_cc_raw", "heldout_cc_denoised", "heldout_fsc_40_10A_denoised",
                "heldout_fsc_40_10A_raw", "bias_noise_max_cc_with_references", "bias_extra_domain_recovery_r",
                "bias_highres_frc_full_map", "bias_highres_frc_lowpass_map"):
        assert key in s, key
    written = json.loads((out / "summary.json").read_text())
    assert written["n_particles_written"] == 240
    for name in ("particles.star", "model.pt", "logfile.pdf", "loss_curves.png", "montage_heldout.png", "fsc_heldout.png", "agreement_histogram.png",
                 "validation_cc.png"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("gan_weight, snr, warned", [(0.1, -20.0, True), (0.0, -20.0, False), (0.1, -10.0, False)])
def test_low_snr_advice_is_logged_only_where_it_applies(gan_weight: float, snr: float, warned: bool) -> None:
    from loguru import logger

    from cryogan_core.commands.denoise import DenoiseOptions
    from cryogan_core.commands.denoise_scores import estimated_snr

    n = 50
    pairs = [{"signal_var": torch.full((n,), 10 ** (snr / 10)), "noise_var": torch.ones(n)},
             {"signal_var": torch.full((n // 2,), 10 ** (snr / 10)), "noise_var": torch.ones(n // 2)}]
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), format="{level} {message}")
    try:
        value = estimated_snr(DenoiseOptions(gan_weight=gan_weight), pairs)
    finally:
        logger.remove(sink)
    assert value == pytest.approx(snr, abs=1e-6)
    assert any(m.startswith("INFO Particle SNR") and f"{snr:.1f} dB (75 particles" in m for m in messages)
    advice = [m for m in messages if m.startswith("WARNING") and "--recon_loss l2 --gan_weight 0" in m]
    assert len(advice) == int(warned)


def test_per_particle_scores_separate_right_from_wrong_poses(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    df = read_particles(out / "particles.star", require_poses=True).particles
    assert (df["rlnCryoganCCDenoised"] > df["rlnCryoganCCRaw"]).mean() > 0.9


def test_a_trained_model_denoises_another_run_identically(trained: tuple[Path, dict], sim: Path, log_messages: list[str]) -> None:
    out, _ = trained
    out2 = sim / "run2"
    s2 = run_denoise(DenoiseInputs(sim / "sim/particles.star", out2, None, project_dir=sim), {"model": str(out / "model.pt"), "no_scores": True, "stack_size": 100})
    assert "train_steps" not in s2 and s2["n_particles_written"] == 240
    # progress per stack of 100, with the time left for the rest (none after the last)
    assert sum("Denoised 100/240 particles (" in m and "min left)" in m for m in log_messages) == 1
    assert any("Denoised 240/240 particles (" in m and ", 0.0 min left)" in m for m in log_messages)
    a = np.asarray(open_stack(out / "Denoised/particles_000001.mrcs"))
    b = np.asarray(open_stack(out2 / "Denoised/particles_000001.mrcs"))
    np.testing.assert_allclose(a, b, atol=1e-4)
    df = read_particles(out2 / "particles.star", require_ctf=True).particles
    assert "rlnCryoganCCRaw" not in df


def test_the_job_writes_the_symmetry_averaged_particles(trained: tuple[Path, dict], sim: Path) -> None:
    out, _ = trained
    out2 = sim / "run_sym2"
    s = run_denoise(DenoiseInputs(sim / "sim/particles.star", out2, None, project_dir=sim),
                    {"model": str(out / "model.pt"), "no_scores": True, "stack_size": 100, "average_symmetries": 2})
    written = np.asarray(open_stack(out2 / "Denoised/particles_000001.mrcs"))
    gen, settings, _ = load_model(out / "model.pt", torch.device("cpu"))
    star_path = sim / "sim/particles.star"
    df = read_particles(star_path).particles
    raw = torch.from_numpy(ParticleImages(df, sim, star_path).read(np.arange(100)))
    assert settings.ctf_aware  # the default: phase-flipped input, CTF-modulated output
    ctf = train_box_ctf(df.iloc[:100], settings)
    x = phase_flip(input_transform(raw, settings)(raw), ctf).unsqueeze(1)
    with torch.inference_mode():
        averaged = 0.5 * (gen(x) + torch.rot90(gen(torch.rot90(x, 2, dims=(-2, -1))), -2, dims=(-2, -1)))
    by_hand = ctf_modulate(averaged[:, 0], ctf)
    np.testing.assert_allclose(written, by_hand.numpy(), atol=1e-4)
    plain = np.asarray(open_stack(out / "Denoised/particles_000001.mrcs"))
    assert np.abs(written - plain).max() > 1e-3
    assert s["options"]["average_symmetries"] == 2


def test_a_model_saved_before_the_ctf_aware_option_loads_as_plain(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = trained
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["settings"]["ctf_aware"] is True
    del blob["settings"]["ctf_aware"]  # what model.pt files of earlier versions hold
    torch.save(blob, tmp_path / "old.pt")
    _, settings, _ = load_model(tmp_path / "old.pt", torch.device("cpu"))
    assert settings.ctf_aware is False


def test_model_of_another_box_is_refused(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = trained
    run_simulate(tmp_path / "other", n=10, snr_db=0.0, seed=1, box=24, pixel_size_A=7.0, project_dir=tmp_path)
    with pytest.raises(InputError, match=r"trained on box 32 at (\d+\.\d{3}) Å/px; these particles are box 24 at 7\.000 Å/px "
                                         r"\(re-extract or rescale them to box 32 at \1 Å/px, or train a model on them\)"):
        run_denoise(DenoiseInputs(tmp_path / "other/particles.star", tmp_path / "o", None, project_dir=tmp_path),
                    {"model": str(out / "model.pt"), "no_scores": True, "stack_size": 100})


def test_train_box_float16_and_ctf_free_outputs(sim: Path) -> None:
    out = sim / "run3"
    s = run_denoise(DenoiseInputs(sim / "sim/particles.star", out, sim / "sim/ground_truth_map.mrc", project_dir=sim),
                    {**SMALL, "n_steps": 3, "train_box": 24, "float16": True, "ctf_free": True, "no_bias_controls": True,
                     "no_scores": True})
    assert s["pixel_size_output_A"] == pytest.approx(7.0 * 32 / 24)
    with mrcfile.open(out / "Denoised/particles_000001.mrcs", permissive=True) as m:
        assert m.header.mode == 12 and m.data.shape == (100, 24, 24)
        assert float(m.voxel_size.x) == pytest.approx(7.0 * 32 / 24, rel=1e-4)
    star = read_particles(out / "particles.star")
    assert np.allclose(star.particles["rlnImagePixelSize"], 7.0 * 32 / 24)
    assert (star.particles["rlnImageSize"] == 24).all()
    # --no_scores after training too: no agreement columns (the map served only the training)
    assert "rlnCryoganCCRaw" not in star.particles and "mean_cc_raw_all" not in s
    assert not s["ctf_targets"]
    assert not s["ctf_aware"]  # the CTF-aware mode needs CTF'd targets
    # a model without the CTF-aware mode: the written particles are the network's output as such
    gen, settings, _ = load_model(out / "model.pt", torch.device("cpu"))
    df_in = read_particles(sim / "sim/particles.star").particles
    raw = torch.from_numpy(ParticleImages(df_in, sim, sim / "sim/particles.star").read(np.arange(100)))
    with torch.inference_mode():
        by_hand = gen(input_transform(raw, settings)(raw).unsqueeze(1))[:, 0]
    written = np.asarray(open_stack(out / "Denoised/particles_000001.mrcs"), dtype=np.float32)
    np.testing.assert_allclose(written, by_hand.numpy(), atol=2e-2 * float(by_hand.abs().max()))


def test_scores_at_a_smaller_training_box_match_scores_from_full_box_predictions(sim: Path) -> None:
    out = sim / "run_scores_tb"
    run_denoise(DenoiseInputs(sim / "sim/particles.star", out, sim / "sim/ground_truth_map.mrc", project_dir=sim),
                {**SMALL, "n_steps": 2, "train_box": 20, "no_bias_controls": True})
    written = read_particles(out / "particles.star").particles
    df = read_particles(sim / "sim/particles.star").particles.reset_index(drop=True)
    rows = np.arange(100)
    raw = torch.from_numpy(ParticleImages(df, sim, sim / "sim/particles.star").read(rows))
    _, settings, _ = load_model(out / "model.pt", torch.device("cpu"))
    volume = map_for_particles(sim / "sim/ground_truth_map.mrc", 7.0, 32)
    # independent route: the map projected at the particles' box, then Fourier-cropped; both
    # scores at the training box (the raw particle as the network sees it)
    reference = fourier_crop_images(predictions(df.iloc[rows], lambda p: volume), 20)
    cc_raw = masked_pearson(fourier_crop_images(raw, 20), reference, settings.train_mask())
    denoised = torch.from_numpy(np.array(open_stack(out / "Denoised/particles_000001.mrcs"), dtype=np.float32))
    cc_den = masked_pearson(denoised, reference, settings.train_mask())
    # at the particles' box the raw particle carries the noise beyond the training box's
    # Nyquist: its CC there is lower, which made the denoiser's gain look larger than it is
    cc_raw_full = masked_pearson(raw, predictions(df.iloc[rows], lambda p: volume), circular_mask(32, settings.mask_radius_px))
    assert float(cc_raw_full.mean()) < float(cc_raw.mean()) - 0.02
    np.testing.assert_allclose(written["rlnCryoganCCRaw"].to_numpy()[rows], cc_raw.numpy(), atol=0.01)
    np.testing.assert_allclose(written["rlnCryoganCCDenoised"].to_numpy()[rows], cc_den.numpy(), atol=0.01)


def test_bad_inputs_are_one_line_errors(sim: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="reference map"):
        run_denoise(DenoiseInputs(sim / "sim/particles.star", tmp_path / "a", None, project_dir=sim), {})
    with pytest.raises(InputError, match="train_box 8"):
        run_denoise(DenoiseInputs(sim / "sim/particles.star", tmp_path / "b", sim / "sim/ground_truth_map.mrc", project_dir=sim), {"train_box": 8})
    with pytest.raises(InputError, match=r"unknown option --n_stepz \(known: --model, --train_box"):
        run_denoise(DenoiseInputs(sim / "sim/particles.star", tmp_path / "c", sim / "sim/ground_truth_map.mrc", project_dir=sim), {"n_stepz": 3})


def test_recovery_fraction_is_one_for_truth_zero_for_reference_and_linear_between() -> None:
    g = torch.Generator().manual_seed(2)
    pa = torch.randn(5, 16, 16, generator=g)
    pb = pa + 0.3 * torch.randn(5, 16, 16, generator=g)
    m = circular_mask(16, 7)
    assert recovery_fraction(pb, pa, pb, m) == pytest.approx(1.0)
    assert recovery_fraction(pa, pa, pb, m) == pytest.approx(0.0, abs=1e-6)
    assert recovery_fraction(0.5 * (pa + pb), pa, pb, m) == pytest.approx(0.5, abs=1e-5)
    with pytest.raises(ValueError):
        recovery_fraction(pa, pa, pa, m)


def test_extra_domain_has_the_requested_mass_outside_the_reference() -> None:
    a = torch.from_numpy(procedural_volume(32))
    b = add_extra_domain(a, mass_fraction=0.06, seed=3)
    extra = b - a
    assert float(extra.sum() / a.clamp_min(0).sum()) == pytest.approx(0.06, rel=1e-3)
    empty = a < 0.1 * a.max()
    assert float(extra[empty].sum() / extra.sum()) > 0.6  # mostly where A has no density
    assert not torch.equal(add_extra_domain(a, seed=4), b)  # the seed moves it


@pytest.mark.parametrize("box", [32, 33])
def test_lowpass_volume_removes_every_component_past_the_cutoff(box: int) -> None:
    a = torch.from_numpy(procedural_volume(box))
    lp = lowpass_volume(a, 4.0, 20.0)
    f = np.fft.fftfreq(box, d=4.0)
    radius = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + np.fft.rfftfreq(box, d=4.0)[None, None, :] ** 2)
    ft_a, ft_lp = np.fft.rfftn(a.numpy()), np.fft.rfftn(lp.numpy())
    assert np.abs(ft_lp[radius > 1 / 20.0]).max() < 1e-3 * np.abs(ft_a).max()
    np.testing.assert_allclose(ft_lp[radius <= 1 / 20.0], ft_a[radius <= 1 / 20.0], atol=1e-3 * np.abs(ft_a).max())
    with pytest.raises(ValueError):
        lowpass_volume(a, 4.0, 0.0)


def _control_particles(box: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, CtfParams]:
    """The built-in volume at ``box`` and ``n`` random poses, centred, with one 8,000-Å-defocus CTF."""
    vol = torch.from_numpy(procedural_volume(box))
    g = torch.Generator().manual_seed(0)
    angles = torch.stack([torch.rand(n, generator=g) * 360, torch.rand(n, generator=g) * 180, torch.rand(n, generator=g) * 360], 1)
    f = lambda v: torch.full((n,), float(v))  # noqa: E731
    return vol, angles, torch.zeros(n, 2), CtfParams(f(8000), f(8000), f(0), f(300), f(2.7), f(0.1), f(0), f(0), f(1))


def test_highres_control_tells_painted_detail_from_recovered_detail() -> None:
    box, pix, n = 32, 4.0, 40
    vol, angles, origins, ctf = _control_particles(box, n)
    settings = PairSettings(box, box, default_bg_radius_px(box), 0.45 * box)
    noise_std = 0.02 * float(forward_model(vol, angles, origins, pix, ctf=ctf).std())
    # a denoiser that returns its input: nothing past 20 Å in, nothing past 20 Å out
    held = HeldoutSimulation(angles, origins, ctf, pix, 1.0, settings, noise_std=noise_std)
    honest = highres_control(lambda x: x, vol, held)
    assert honest["bias_highres_band_A"] == [20.0, 10.0]
    assert honest["bias_highres_frc_full_map"] > 0.8
    assert abs(honest["bias_highres_frc_lowpass_map"]) < 0.1
    # a denoiser that paints the reference whatever comes in
    painted = forward_model(vol, angles, origins, pix, ctf=ctf)
    painter = highres_control(lambda x: painted, vol, held)
    assert painter["bias_highres_frc_lowpass_map"] > 0.95
    # a training box too coarse for the band: not measured
    coarse = PairSettings(box, 10, default_bg_radius_px(box), 0.45 * box)  # Nyquist 25.6 Å
    coarse_held = HeldoutSimulation(angles, origins, ctf, pix, 1.0, coarse)
    assert math.isnan(highres_control(lambda x: x, vol, coarse_held)["bias_highres_frc_lowpass_map"])


def test_the_controls_simulate_at_a_smaller_training_box_as_the_crop_of_full_box_particles() -> None:
    box, train_box, pix, n = 32, 24, 4.0, 40  # training Nyquist 10.7 Å: the 20-10 Å band is there
    vol, angles, origins, ctf = _control_particles(box, n)
    settings = PairSettings(box, train_box, default_bg_radius_px(box), 0.45 * box)
    full = forward_model(vol, angles, origins, pix, ctf=ctf)
    held = HeldoutSimulation(angles, origins, ctf, pix, 1.0, settings, noise_std=3.0)
    clean = held.predict(vol)
    # the images the network would get from full-box particles: the crop of the full-box prediction ...
    cropped = fourier_crop_images(full, train_box)
    assert clean.shape == (n, train_box, train_box)
    assert float((clean - cropped).norm() / cropped.norm()) < 0.03
    # ... and white noise of std 3 at the box, cropped: std 3 * 24 / 32
    assert float(held.noise(clean, seed=1).std()) == pytest.approx(3.0 * train_box / box, rel=0.02)
    # normalised as particles of the training box: background mean 0, std 1
    x = held.input_transform(clean + held.noise(clean, seed=1))(clean + held.noise(clean, seed=1))
    bg = ~circular_mask(train_box, default_bg_radius_px(box) * train_box / box)
    assert torch.allclose(x[:, bg].mean(1), torch.zeros(n), atol=1e-4)
    assert torch.allclose(x[:, bg].std(1, unbiased=False), torch.ones(n), atol=1e-4)
    # the high-resolution control still tells an honest denoiser from a painter there
    quiet = HeldoutSimulation(angles, origins, ctf, pix, 1.0, settings, noise_std=0.02 * float(full.std()))
    honest = highres_control(lambda x: x, vol, quiet)
    assert honest["bias_highres_band_A"] == pytest.approx([20.0, 2 * pix * box / train_box])
    assert honest["bias_highres_frc_full_map"] > 0.8 and abs(honest["bias_highres_frc_lowpass_map"]) < 0.1
    assert highres_control(lambda x: cropped, vol, quiet)["bias_highres_frc_lowpass_map"] > 0.95


def test_max_cc_with_library_matches_pairwise_pearson() -> None:
    g = torch.Generator().manual_seed(4)
    out = torch.randn(6, 16, 16, generator=g)
    lib = torch.randn(9, 16, 16, generator=g)
    lib[4] = 2 * out[1] - 1
    m = circular_mask(16, 6)
    ref = torch.stack([max(masked_pearson(out[i:i + 1], lib[j:j + 1], m)[0] for j in range(9)) for i in range(6)])
    assert torch.allclose(max_cc_with_library(out, lib, m), ref, atol=1e-5)
    assert max_cc_with_library(out, lib, m)[1] == pytest.approx(1.0, abs=1e-5)


def test_training_fit_is_the_cc_of_the_outputs_with_the_training_targets() -> None:
    from cryogan_core.commands.denoise_scores import training_fit

    identity = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        identity.weight.fill_(1.0)
        identity.bias.zero_()
    x = torch.randn(10, 24, 24, generator=torch.Generator().manual_seed(0))
    settings = PairSettings(24, 24, 10.0, 10.0, True, "particle")
    assert training_fit(identity, {"inputs": x, "targets": 3 * x + 1}, settings, 4, 0.5) == pytest.approx(1.0, abs=1e-5)
    assert training_fit(identity, {"inputs": x, "targets": -x}, settings, 100, 0.5) == pytest.approx(-1.0, abs=1e-5)


def test_continue_after_training_keeps_the_chosen_weights(trained: tuple[Path, dict], sim: Path, tmp_path: Path) -> None:
    import shutil

    out, s = trained
    again = tmp_path / "continued"
    shutil.copytree(out, again)
    s2 = run_denoise(DenoiseInputs(sim / "sim/particles.star", again, sim / "sim/ground_truth_map.mrc", project_dir=sim),
                     {**SMALL, "n_steps": 300, "validation_fraction": 0.2, "validate_every": 100, "no_bias_controls": True})
    # nothing left to train: the checkpoint's best weights (not the last step's) are used again
    assert s2["train_steps"] == 300
    assert s2["validation_best_step"] == s["validation_best_step"]
    assert s2["validation_cc_best"] == pytest.approx(s["validation_cc_best"])
    assert s2["heldout_cc_denoised"] == pytest.approx(s["heldout_cc_denoised"], abs=1e-4)


class _Stop(Exception):
    pass


def test_continue_while_training_on_both_halves_resumes_and_reports_unseen_weights(
    sim: Path, tmp_path: Path, log_messages: list[str]
) -> None:
    """An abort in the both-halves phase resumes there (not from step 0), and the held-out
    report is made again with the weights chosen before half set 2 was trained on."""
    # checkpoints every 20 steps instead of 200, so the run can be short: 60 steps on half
    # set 1, then both halves to step 90, aborted after the checkpoint of step 80
    opts = {**SMALL, "n_steps": 60, "checkpoint_every": 20, "validation_fraction": 0.2, "validate_every": 20, "train_both_halves": True, "no_bias_controls": True}
    inputs = DenoiseInputs(sim / "sim/particles.star", tmp_path / "both", sim / "sim/ground_truth_map.mrc", project_dir=sim)
    ckpt = tmp_path / "both/checkpoint.pt"
    seen = {"mtime": None}

    def stop_in_second_phase() -> None:
        """Abort once a checkpoint of the both-halves phase (step 80 of 90) is on disk."""
        if ckpt.is_file() and ckpt.stat().st_mtime_ns != seen["mtime"]:
            seen["mtime"] = ckpt.stat().st_mtime_ns
            if torch.load(ckpt, weights_only=True)["step_count"] >= 80:
                raise _Stop

    messages = log_messages
    with pytest.raises(_Stop):
        run_denoise(inputs, opts, should_stop=stop_in_second_phase)
    first_report = [m for m in messages if m.startswith("Held-out half set 2")]
    messages.clear()
    s = run_denoise(inputs, opts)
    assert any("at step 80/90 (training on both halves)" in m for m in messages)
    assert s["train_steps"] == 90
    # the same report as before the abort: the weights that never saw half set 2
    assert [m for m in messages if m.startswith("Held-out half set 2")] == first_report
    assert s["heldout_cc_denoised"] > s["heldout_cc_raw"]


def test_synthetic_pairs_join_training_and_a_checkpoint_without_them_is_not_continued(
    trained: tuple[Path, dict], sim: Path, tmp_path: Path, log_messages: list[str]
) -> None:
    import shutil

    out, s = trained
    again = tmp_path / "with_synthetic"
    shutil.copytree(out, again)
    s2 = run_denoise(DenoiseInputs(sim / "sim/particles.star", again, sim / "sim/ground_truth_map.mrc", project_dir=sim),
                     {**SMALL, "n_steps": 40, "validation_fraction": 0.2, "validate_every": 100, "no_bias_controls": True,
                      "synthetic_pairs": 48})
    text = "\n".join(log_messages)
    # the earlier run's checkpoint trained on real pairs only: it is not continued
    assert "made with other training options: starting training over" in text
    assert "Made 48 synthetic training pairs" in text and "96 training particles" in text
    assert s2["n_synthetic_pairs"] == 48 and s2["train_steps"] == 40
    assert s["n_synthetic_pairs"] == 0
    # the report is still on the 60 unseen particles of half set 2
    assert s2["n_heldout_particles"] == 60
    # "Continue!" on the finished run: nothing left to train, so no pairs are made again
    log_messages.clear()
    s3 = run_denoise(DenoiseInputs(sim / "sim/particles.star", again, sim / "sim/ground_truth_map.mrc", project_dir=sim),
                     {**SMALL, "n_steps": 40, "validation_fraction": 0.2, "validate_every": 100, "no_bias_controls": True,
                      "synthetic_pairs": 48})
    text = "\n".join(log_messages)
    assert "Continuing from" in text and "synthetic training pairs" not in text
    assert s3["heldout_cc_denoised"] == pytest.approx(s2["heldout_cc_denoised"], abs=1e-4)
