"""``cryogan reconstruct``'s outputs: final maps, FSC curves, figures, ``logfile.pdf`` and ``summary.json``.

Names as RELION's Refine3D: ``run_half1_class001_unfil.mrc``, ``run_half2_class001_unfil.mrc``,
``run_class001.mrc``, ``fsc.star``/``fsc.png`` and, with a reference,
``fsc_vs_reference.star/.png``; also ``spectra_real_vs_simulated.png``, the power spectra
of real and simulated particles (:mod:`cryogan_core.train.simulator_check`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
import torch
from loguru import logger

from cryogan_core.commands.export_cryosparc import volume_import_settings
from cryogan_core.commands.reconstruct_inputs import LOW_SNR_DB, HalfData
from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.io.mrc import write_map
from cryogan_core.io.summary import write_summary
from cryogan_core.metrics.align import HalfMapAlignment, apply_alignment
from cryogan_core.metrics.fsc import resolution_at, shells_up_to, write_fsc_star
from cryogan_core.physics.resample import fourier_crop_or_pad_map
from cryogan_core.report.plots import fsc_figure, montage_figure, save_figure, text_figure, write_pdf
from cryogan_core.report.reconstruct_report import (
    loss_figures, resolution_vs_time_figure, slices_figure, spectra_figure, summary_lines)
from cryogan_core.train.cryogan_simulator import simulate_batch
from cryogan_core.train.critic_check import CriticCheck, critic_check
from cryogan_core.train.simulator_check import SpectraCheck, spectra_check
from cryogan_core.train.wgan import CryoGanTrainer


def particles_figure(half: HalfData, trainer: CryoGanTrainer, step: int, title: str) -> Figure:
    """Montage: 8 real particles of ``half`` above 8 simulated from the current volume, noisy and noise-free.

    Args:
        half: the half set (its first 8 particles and its simulation priors).
        trainer: the half set's trainer (its current volume).
        step: the training step; seeds the simulation so a snapshot can be remade.
        title: the figure's title.

    Returns:
        The figure (three rows of 8 images, training box).
    """
    gen = torch.Generator().manual_seed(12345 + step)
    with torch.no_grad():
        vol = trainer.volume()
        sim = simulate_batch(vol, half.priors, 8, gen).cpu().numpy()
        clean = simulate_batch(vol, half.priors, 8, torch.Generator().manual_seed(12345 + step), add_noise=False).cpu().numpy()
    real = half.images[:8].numpy()
    return montage_figure({"real": real, "simulated": sim, "simulated, no noise": clean}, n_columns=8, title=title)



#: What the spectra can tell about a ring that is off (see :func:`log_spectra`).
SPECTRA_CAUSES = {
    "noise": "the simulator's noise alone has more power than the particles: the noise model is too strong "
             "(check noise and particle_diameter_A)",
    "map": "the map has more power than the particles leave above the simulator's noise (train longer, compare "
           "another seed, check the CTF parameters)",
    "neither": "the particles have power that neither the map nor the simulator's noise makes (a map short of "
               "it: train longer; or noise the background lacks: neighbours, ice gradients)",
}


def log_spectra(checks: dict[str, SpectraCheck]) -> None:
    """Log, per half set, how far the simulated particles' power is from the real ones'.

    One line per half: the worst ring (DC excluded) with its sampling error; then a warning
    for every ring off by more than 5 % and by more than 4 standard errors (about 17 rings
    per half are tested, so 3 would fire on chance alone one run in ten), saying what the
    spectra can tell (:data:`SPECTRA_CAUSES`): a particle's power in a ring is its signal's
    plus its noise's, so where the simulator's noise alone has more power than the particles
    (by 5 %) the noise model is too strong there (``noise``); where the simulated particles
    have more power but the noise alone does not, the map has more power than the particles
    leave above that noise (``map``); where they have less, the particles hold power that
    neither makes (``neither``).

    Args:
        checks: half-set label -> its :class:`SpectraCheck`.
    """
    for label, c in checks.items():
        r = c.worst_ring()
        logger.info(f"Power spectra, {label}: simulated / real particles within {abs(c.ratio[r] - 1.0):.1%} in every "
                    f"ring (largest at {1.0 / c.freq_inv_A[r]:.1f} Å: {c.ratio[r]:.3f} ± {c.ratio_se[r]:.3f}, "
                    f"{c.n_particles} particles each; spectra_real_vs_simulated.png)")
        for i in range(1, len(c.ratio)):
            dev = c.ratio[i] - 1.0
            if abs(dev) <= 0.05 or abs(dev) <= 4 * c.ratio_se[i]:
                continue
            cause = "noise" if c.noise[i] > 1.05 * c.real[i] else "map" if dev > 0 else "neither"
            logger.warning(f"Power spectra, {label}, at {1.0 / c.freq_inv_A[i]:.1f} Å: simulated / real "
                           f"{c.ratio[i]:.3f} ± {c.ratio_se[i]:.3f}: {SPECTRA_CAUSES[cause]}")


def log_critic_checks(checks: dict[str, CriticCheck]) -> None:
    """Log, per half set, its final critic's Wasserstein estimate on its own particles and on
    the other half set's (never seen by it), and their difference, the critic's memory of its
    own particles (:mod:`cryogan_core.train.critic_check`).

    Args:
        checks: half-set label -> its :class:`CriticCheck`.
    """
    for label, c in checks.items():
        logger.info(
            f"Critic, {label}: Wasserstein estimate {c.total:.2f} ± {c.total_se:.2f} on its own particles, "
            f"{c.held_out:.2f} ± {c.held_out_se:.2f} on the other half set's (never seen by it); the difference, "
            f"{c.memory:.2f} ± {c.memory_se:.2f}, is its memory of its own particles, not the map "
            f"({c.n_particles} particles each; summary.json critic_check)"
        )


def write_outputs(
    output_dir: Path, opts: ReconstructOptions, trainers: list[CryoGanTrainer], halves: list[HalfData],
    evals: list[dict], pixel_A: float, box: int, pixel_t: float, d: int, ref_path: str | Path | None,
    star_path: Path, reason: str, estimated_snr_db: float, aligned: HalfMapAlignment,
    origins_check: dict | None = None,
) -> dict:
    """Write the final maps, FSCs, figures, ``logfile.pdf`` and ``summary.json``.

    Both half maps are Fourier-padded from the training box ``d`` to the particles' box and
    put in one frame by ``aligned`` (half 2 onto half 1, then, with a reference, all maps onto
    it); their FSC is cut at the training Nyquist.

    Args:
        output_dir: the job's output folder.
        opts: the job's options (recorded in the summary).
        trainers: both half sets' trainers, half 1 first.
        halves: both half sets' inputs, half 1 first.
        evals: the evaluations made during training (``summary["history"]``).
        pixel_A: the particles' pixel size (Å).
        box: the particles' box (px).
        pixel_t: the final training pixel size (Å).
        d: the final training box (px).
        ref_path: the reference map ``aligned`` was aligned to, or None (named in the
            summary and the plot).
        star_path: the particle file (recorded).
        reason: why training ended, ``epochs`` or ``time`` (``summary["stopped_by"]``).
        estimated_snr_db: the particles' pose-free SNR (dB),
            :func:`~cryogan_core.commands.reconstruct_inputs.estimate_snr`.
        origins_check: how far the input's own origins spread beyond the shift prior,
            ``{"fraction_outside": float, "sigma_px": float, "warned": bool}``
            (:func:`~cryogan_core.commands.reconstruct_inputs.origins_outside_prior`), or None
            when nothing was checked; ``summary["origins_outside_shift_prior"]``.
        aligned: :func:`~cryogan_core.metrics.align.align_half_maps` of these very volumes,
            Fourier-padded to the particles' box, with the reference if there is one (the
            training loop's final evaluation).

    Returns:
        The summary dict (as written to ``summary.json``), with ``resolution_A_fsc_0.143``,
        ``spectra`` (per half set, :meth:`SpectraCheck.to_dict`), ``critic_check`` (per half
        set, :meth:`CriticCheck.to_dict`) and, with a reference,
        ``resolution_A_vs_reference_fsc_0.5``.
    """
    h1 = trainers[0].current_volume()
    if d != box:
        h1 = fourier_crop_or_pad_map(h1, box)
        logger.info(f"Maps Fourier-padded from the training box {d} px to the particles' box {box} px ({pixel_A:.3f} Å/px)")
    al = aligned.halves
    h2 = al.aligned
    logger.info(f"Half 2 aligned to half 1: CC {al.cc:.3f}{', mirrored (other hand)' if al.mirror else ''}")
    nyquist_t = 1.0 / (2.0 * pixel_t)  # Å⁻¹: nothing was learned beyond the training Nyquist
    freq, curve = shells_up_to(al.freq_inv_A, al.fsc, nyquist_t)  # FSC(half 1, aligned half 2)
    res = resolution_at(freq, curve, 0.143)
    figures = []
    summary: dict[str, Any] = {
        "command": "reconstruct",
        "n_particles": int(sum(len(h.rows) for h in halves)),
        "n_half1": int(len(halves[0].rows)),
        "n_half2": int(len(halves[1].rows)),
        "pixel_size_A": pixel_A,
        "box": box,
        "box_train": d,
        "pixel_size_train_A": pixel_t,
        "nyquist_train_A": 2 * pixel_t,
        "steps": trainers[0].step_count,
        "epochs": trainers[0].epoch(len(halves[0].rows)),
        "training_time_s": trainers[0].elapsed_s,
        "stopped_by": reason,
        "estimated_snr_db": estimated_snr_db,
        "origins_outside_shift_prior": origins_check,
        "resolution_A_fsc_0.143": res,
        "resolution_A_fsc_0.5": resolution_at(freq, curve, 0.5),
        "fsc_freq_inv_A": freq,
        "fsc": curve,
        "half2_to_half1": {"rotation": al.rotation, "shift_vox": al.shift_vox, "mirror": al.mirror, "cc": al.cc},
        "history": evals,
        "options": dataclasses.asdict(opts),
        "star": str(star_path),
    }
    avg, ral = aligned.average, aligned.to_reference
    if ral is not None:  # a reference was given
        h1 = apply_alignment(h1, ral.rotation, ral.shift_vox, ral.mirror)
        h2 = apply_alignment(h2, ral.rotation, ral.shift_vox, ral.mirror)
        avg = ral.aligned
        freq_ref, fsc_ref = shells_up_to(ral.freq_inv_A, ral.fsc, nyquist_t)
        res_ref = resolution_at(freq_ref, fsc_ref, 0.5)
        write_fsc_star(output_dir / "fsc_vs_reference.star", freq_ref, fsc_ref)
        fig = fsc_figure(freq_ref, {"map vs reference (aligned)": fsc_ref}, (0.5, 0.143),
                         title=f"FSC with {Path(ref_path).name}: {res_ref:.1f} Å at 0.5")
        save_figure(fig, output_dir / "fsc_vs_reference.png", close=False)
        figures.append(fig)
        summary.update({
            "reference": str(ref_path),
            "resolution_A_vs_reference_fsc_0.5": res_ref,
            "resolution_A_vs_reference_fsc_0.143": resolution_at(freq_ref, fsc_ref, 0.143),
            "fsc_vs_reference": fsc_ref,
            "to_reference": {"rotation": ral.rotation, "shift_vox": ral.shift_vox, "mirror": ral.mirror, "cc": ral.cc},
        })
        logger.info(
            f"Aligned to the reference {ref_path} (CC {ral.cc:.3f}{', other hand' if ral.mirror else ''}): "
            f"FSC 0.5 at {res_ref:.1f} Å; maps written in the reference's frame"
        )
    write_map(output_dir / "run_half1_class001_unfil.mrc", h1.numpy(), pixel_A)
    write_map(output_dir / "run_half2_class001_unfil.mrc", h2.numpy(), pixel_A)
    write_map(output_dir / "run_class001.mrc", avg.numpy(), pixel_A)
    summary["cryosparc_import"] = volume_import_settings(
        {"map": output_dir / "run_class001.mrc", "map_half_A": output_dir / "run_half1_class001_unfil.mrc",
         "map_half_B": output_dir / "run_half2_class001_unfil.mrc"}, pixel_A)
    write_fsc_star(output_dir / "fsc.star", freq, curve)
    title = f"Half-map FSC: {res:.1f} Å at 0.143 (optimistic; training Nyquist {2 * pixel_t:.1f} Å)"
    fig = fsc_figure(freq, {"half 1 vs half 2 (aligned, unmasked)": curve}, (0.143, 0.5), title=title)
    save_figure(fig, output_dir / "fsc.png", close=False)
    figures.insert(0, fig)

    figures += loss_figures([t.history for t in trainers])
    if evals:
        fig = resolution_vs_time_figure(evals, with_reference=ref_path is not None)
        save_figure(fig, output_dir / "resolution_vs_time.png", close=False)
        figures.append(fig)
    figures.append(slices_figure({"half 1": h1.numpy(), "half 2": h2.numpy(), "average": avg.numpy()}, "Final maps"))
    fig = particles_figure(halves[0], trainers[0], trainers[0].step_count, "Real versus simulated particles (half 1, final volume)")
    save_figure(fig, output_dir / "particles_real_vs_simulated.png", close=False)
    figures.append(fig)
    checks = {f"half {h.label}": spectra_check(t.volume().detach(), h.priors, h.images, seed=h.label)
              for h, t in zip(halves, trainers)}
    summary["spectra"] = {k: c.to_dict() for k, c in checks.items()}
    log_spectra(checks)
    critics = {f"half {h.label}": critic_check(t.critic, t.volume().detach(), h.priors, h.images, o.images,
                                                sigma_px=t.history[-1]["sigma_px"] if t.history else 0.0, seed=h.label)
               for h, o, t in zip(halves, halves[::-1], trainers)}
    summary["critic_check"] = {k: c.to_dict() for k, c in critics.items()}
    log_critic_checks(critics)
    fig = spectra_figure(checks)
    save_figure(fig, output_dir / "spectra_real_vs_simulated.png", close=False)
    figures.append(fig)
    figures.insert(0, text_figure(summary_lines(summary, LOW_SNR_DB)))
    write_pdf(output_dir / "logfile.pdf", figures)
    write_summary(output_dir / "summary.json", summary)
    if ref_path is not None:
        verdict = f"FSC with the reference: 0.5 at {summary['resolution_A_vs_reference_fsc_0.5']:.1f} Å, the map's resolution"
    else:
        verdict = "give an independent map (--in_3dref) to measure the map's resolution"
    logger.info(
        f"Half-map FSC = 0.143 at {res:.1f} Å (training Nyquist {2 * pixel_t:.1f} Å), optimistic for CryoGAN: both halves "
        f"start from the same volume and share the simulator's errors; {verdict}. Wrote {output_dir}"
    )
    return summary

