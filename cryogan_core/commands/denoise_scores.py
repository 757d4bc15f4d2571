"""The denoiser's scores: the particles' SNR, the fit on training particles, and the held-out report with bias controls.

Each is logged and goes into ``summary.json`` and ``logfile.pdf``
(:mod:`cryogan_core.report.denoise_report`); the CCs are inside the pair settings' mask.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from loguru import logger

from cryogan_core.commands.denoise_options import DenoiseOptions
from cryogan_core.metrics.images import snr_db
from cryogan_core.train.evaluate import (
    HeldoutSimulation,
    extra_domain_control,
    generator_cc,
    highres_control,
    image_scores,
    noise_control,
)
from cryogan_core.train.pairs import PairSettings, particle_arrays
from cryogan_core.train.pix2pix import denoise_images

# Below this particle SNR the adversarial default painted the reference over what the map
# lacks (README, "What the denoiser recovers": r 0.21 at -20 dB against 0.62 at -10 dB) and
# lost 0.09 in CC to L2 without the adversarial term.
LOW_SNR_DB = -15.0


def estimated_snr(opts: DenoiseOptions, pair_sets: list[dict[str, torch.Tensor]]) -> float:
    """The particles' SNR (dB) from their training pairs, logged, with advice below ``LOW_SNR_DB``.

    Signal: each particle's scaled CTF'd prediction; noise: the particle minus it; both over
    the whole box (:func:`cryogan_core.metrics.images.snr_db`, the definition ``cryogan
    simulate`` uses, so a simulation at -10 dB reads about -10 dB). Pose, CTF or map errors
    count as noise, so it is a lower bound on the particles' true SNR; with a training box
    smaller than the particles' box, the prediction is made up to its Nyquist
    (:func:`~cryogan_core.train.pairs.train_box_pairs`), so the signal beyond it counts as
    noise too (-0.35 dB on 512 real β-gal particles at 64 -> 32 px).

    Args:
        opts: the job options (the advice depends on ``gan_weight``).
        pair_sets: outputs of :func:`build_pairs` with ``signal_var`` and ``noise_var``.

    Returns:
        The SNR in dB.
    """
    signal = torch.cat([p["signal_var"] for p in pair_sets])
    noise = torch.cat([p["noise_var"] for p in pair_sets])
    value = snr_db(signal, noise)
    logger.info(f"Particle SNR {value:.1f} dB ({len(signal)} particles; signal: the map's CTF'd projection at each pose, "
                "scaled by least squares; noise: the particle minus it; whole box, as `cryogan simulate` defines it"
                + ("; the signal up to the training box's Nyquist)" if opts.train_box else ")"))
    if value < LOW_SNR_DB and opts.gan_weight > 0:
        logger.warning(f"Particle SNR {value:.1f} dB is below {LOW_SNR_DB:g} dB: there the adversarial term paints the reference "
                       "over what the map lacks and lowers the CC; --recon_loss l2 --gan_weight 0 is advised (README), "
                       "and read bias_extra_domain_recovery_r in summary.json")
    return value


def training_fit(generator: torch.nn.Module, train: dict[str, torch.Tensor], settings: PairSettings, n: int, cc_heldout: float) -> float:
    """Mean CC (inside the mask) of denoised training particles with their targets, over the
    first ``n`` training pairs: next to the held-out CC it tells over-fitting (training CC
    well above held-out) from under-fitting (both alike). Logged and returned.

    Args:
        generator: the denoiser (CPU float32 ``(n, train_box, train_box)`` in and out).
        train: the training pairs (:func:`~cryogan_core.train.pairs.build_pairs`): float32
            ``inputs``, ``targets`` ``(N, train_box, train_box)`` and, CTF-aware, ``ctf``.
        settings: the pair settings (the mask at the training box).
        n: training pairs to score (clipped to 1..N).
        cc_heldout: the unseen particles' mean CC, for the verdict.

    Returns:
        The mean CC, in [-1, 1].
    """
    n = max(1, min(n, train["inputs"].shape[0]))
    ctf = train.get("ctf")
    cc = generator_cc(generator, train["inputs"][:n], train["targets"][:n], settings.train_mask(), ctf=None if ctf is None else ctf[:n])
    verdict = "over-fitting: more particles or fewer steps would help" if cc - cc_heldout > 0.05 else "no over-fitting"
    logger.info(f"Fit: CC with the target {cc:.3f} on {n} training particles vs {cc_heldout:.3f} on unseen ones ({verdict})")
    return cc


def heldout_report(
    generator: torch.nn.Module,
    held: dict[str, torch.Tensor],
    settings: PairSettings,
    held_df: pd.DataFrame,
    volume_for_pixel: Callable[[float], torch.Tensor],
    opts: DenoiseOptions,
    device: torch.device,
) -> dict[str, Any]:
    """Scores of raw and denoised unseen particles against their references, and bias controls.

    Args:
        generator: the denoiser (CPU float32 ``(n, train_box, train_box)`` in and out).
        held: the unseen particles' pairs (:func:`~cryogan_core.train.pairs.build_pairs`):
            float32 ``inputs``, ``targets``, ``reference_ctf`` ``(n, train_box, train_box)``,
            ``slope`` ``(n,)`` and, CTF-aware, ``ctf``.
        settings: the pair settings.
        held_df: the ``n`` unseen particles' rows of the particle table (poses, CTFs, Å/px).
        volume_for_pixel: pixel size (Å) -> map ``(box, box, box)`` at that pixel size.
        opts: the job options (``no_bias_controls``, ``seed``).
        device: torch device of the projections.

    Returns:
        ``scores``: mean ``cc_*`` and ``fsc_40_10A_*`` (dimensionless) and ``psnr_db_*`` (dB) of
        the raw and the denoised particles; ``raw`` and ``denoised_scores``: the per-particle
        :func:`~cryogan_core.train.evaluate.image_scores` (``(n,)`` arrays); ``montage``: up
        to 8 raw, denoised and reference float32 ``(train_box, train_box)`` images; and,
        unless ``opts.no_bias_controls``, ``bias``: the bias controls' numbers
        (``bias_*`` keys of :mod:`cryogan_core.train.evaluate`).
    """
    tb = settings.train_box
    pixel_train = float(held_df["rlnImagePixelSize"].iloc[0]) * settings.box / tb
    mask = settings.train_mask()
    held_ctf = held.get("ctf")
    denoised = denoise_images(generator, held["inputs"], ctf=held_ctf)
    raw_scores = image_scores(held["inputs"], held["reference_ctf"], mask, pixel_train)
    den_scores = image_scores(denoised, held["targets"], mask, pixel_train)
    scores = {
        "cc_raw": float(raw_scores["cc"].mean()),
        "cc_denoised": float(den_scores["cc"].mean()),
        "fsc_40_10A_raw": float(raw_scores["fsc_band"].mean()),
        "fsc_40_10A_denoised": float(den_scores["fsc_band"].mean()),
        "psnr_db_raw": float(np.mean(raw_scores["psnr_db"])),
        "psnr_db_denoised": float(np.mean(den_scores["psnr_db"])),
    }
    logger.info(
        f"Held-out half set 2 ({len(held_df)} particles): CC with reference {scores['cc_raw']:.3f} raw -> {scores['cc_denoised']:.3f} denoised; "
        f"mean FSC 40-10 Å {scores['fsc_40_10A_raw']:.3f} -> {scores['fsc_40_10A_denoised']:.3f}"
    )
    report: dict[str, Any] = {"scores": scores, "raw": raw_scores, "denoised_scores": den_scores,
                              "montage": {"raw (unseen)": held["inputs"][:8].numpy(), "denoised": denoised[:8].numpy(), "reference": held["targets"][:8].numpy()}}
    if not opts.no_bias_controls:
        def denoiser_with(ctf: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
            """The trained generator on ``(n, d, d)`` float32 images (CPU in, CPU out); a
            CTF-aware one uses ``ctf`` (the n particles' CTFs, cycled when n is larger)."""
            def denoise(x: torch.Tensor) -> torch.Tensor:
                """``(n, d, d)`` float32 network inputs -> ``(n, d, d)`` float32 outputs (CPU)."""
                c = None if ctf is None else ctf[torch.arange(x.shape[0]) % ctf.shape[0]]
                return denoise_images(generator, x.cpu(), ctf=c)
            return denoise

        # four projections of each report particle (at the training box): a minute or more at large boxes
        logger.info(f"Reference-bias controls on {len(held_df)} held-out particles: pure noise, a map with an extra "
                    "domain, a low-passed map (each simulated at their poses and CTFs and denoised)")
        # pure-noise inputs get the held-out particles' CTFs (a CTF-aware network needs one)
        bias = noise_control(denoiser_with(held_ctf), held["inputs"], denoised, held["targets"], mask, seed=opts.seed)
        angles, origins, ctf, pix = particle_arrays(held_df, device)
        p0 = float(pix[0])
        sel = torch.nonzero(pix == p0).squeeze(1)
        slope = float(held["slope"].median())
        sel_ctf = None if held_ctf is None else held_ctf[sel.cpu()]
        held = HeldoutSimulation(angles[sel], origins[sel], ctf[sel], p0, slope, settings)
        bias.update(extra_domain_control(denoiser_with(sel_ctf), volume_for_pixel(p0), held, seed=opts.seed))
        bias.update(highres_control(denoiser_with(sel_ctf), volume_for_pixel(p0), held, seed=opts.seed))
        logger.info(
            f"Bias controls: noise outputs' best CC with references {bias['bias_noise_max_cc_with_references']:.3f} "
            f"(real particles {bias['bias_real_max_cc_with_references']:.3f}), noise output RMS ratio {bias['bias_noise_output_rms_ratio']:.2f}; "
            f"extra domain ({100 * bias['bias_extra_domain_mass_fraction']:.0f}% mass) recovered r = {bias['bias_extra_domain_recovery_r']:.2f} "
            f"(noise-free {bias['bias_extra_domain_r_noise_free']:.2f}); "
            f"FRC {bias['bias_highres_band_A'][0]:.0f}-{bias['bias_highres_band_A'][1]:.0f} Å with the reference: "
            f"{bias['bias_highres_frc_full_map']:.3f} for particles of the map, {bias['bias_highres_frc_lowpass_map']:.3f} "
            f"for particles of the map low-passed at {bias['bias_highres_band_A'][0]:.0f} Å (painted detail)"
        )
        report["bias"] = bias
    return report
