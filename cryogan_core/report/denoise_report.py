"""The denoiser's figures: loss curves, held-out montage, FSC curves, agreement histograms.

Each figure is written as a PNG and all of them as the pages of ``logfile.pdf`` (RELION
shows it from the Display menu when the node is labelled ``LogFile.pdf.relion``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from cryogan_core.train.pix2pix import reconstruction_loss
from cryogan_core.report.plots import (
    curves_figure,
    fsc_figure,
    histogram_figure,
    montage_figure,
    save_figure,
    text_figure,
    write_pdf,
)


def write_denoise_report(
    out_dir: Path,
    history: Sequence[Mapping[str, float]],
    report: Mapping[str, Any],
    scores: Mapping[str, np.ndarray] | None,
    recon_loss: str = "l1",
) -> list[Path]:
    """Write the PNGs and ``logfile.pdf`` of a denoiser run.

    Args:
        out_dir: the job's output folder.
        history: per-step losses (``step``, ``loss_g_rec`` (``loss_g_l1`` in older checkpoints),
            ``loss_g_gan``, ``loss_d``); may be empty.
        report: the held-out report (``scores``, ``raw``/``denoised_scores`` with ``frc`` and
            ``frc_freq_inv_A``, ``montage``, ``bias``, optionally ``validation_curve``
            ``[(step, cc), ...]`` and ``validation_best_step``, ``average_symmetries`` and
            ``estimated_snr_db``); may be empty (``--model`` runs).
        scores: per-particle ``cc_raw`` and ``cc_denoised`` of all particles, or None.
        recon_loss: the generator's reconstruction term (``"l1"`` or ``"l2"``), for the plot's label.

    Returns:
        The paths written (PNGs, then the PDF).
    """
    pages: list[tuple[str, Figure]] = []
    if history:
        steps = np.array([h["step"] for h in history])
        pages.append(("loss_curves.png", curves_figure(
            steps,
            {f"generator {recon_loss.upper()}": np.array([reconstruction_loss(h) for h in history]),
             "generator adversarial": np.array([h["loss_g_gan"] for h in history]),
             "discriminator": np.array([h["loss_d"] for h in history])},
            "training step", "loss", title="Training losses (pix2pix)", logy=True)))
    if report.get("validation_curve"):
        val = np.array(report["validation_curve"], dtype=float)
        best_step = report["validation_best_step"]
        fig = curves_figure(
            val[:, 0], {"validation particles (half set 1, not trained on)": val[:, 1]}, "training step", "mean CC with the target",
            title=f"Validation: the weights of step {best_step} (best) are used")
        chosen = val[val[:, 0] == best_step]
        fig.axes[0].plot(chosen[:, 0], chosen[:, 1], "o", color="C3", label="weights used")
        fig.axes[0].legend(fontsize=8)
        pages.append(("validation_cc.png", fig))
    if report.get("montage"):
        pages.append(("montage_heldout.png", montage_figure(report["montage"], title="Unseen particles (half set 2): raw / denoised / reference")))
    if report.get("raw") is not None and report.get("denoised_scores") is not None:
        raw, den = report["raw"], report["denoised_scores"]
        pages.append(("fsc_heldout.png", fsc_figure(
            raw["frc_freq_inv_A"], {"raw vs reference": raw["frc"].mean(axis=0), "denoised vs reference": den["frc"].mean(axis=0)},
            thresholds=(0.143, 0.5), title="Mean single-particle FSC, unseen particles")))
    if scores is not None:
        pages.append(("agreement_histogram.png", histogram_figure(
            {"raw": scores["cc_raw"], "denoised": scores["cc_denoised"]}, "CC with the projection at the particle's pose",
            title="Per-particle agreement (rlnCryoganCCRaw / rlnCryoganCCDenoised)")))
    lines = ["cryogan denoise"]
    if report.get("estimated_snr_db") is not None:
        lines.append(f"{'particle SNR, dB (a lower bound)':40s} {report['estimated_snr_db']:.1f}")
    for key, value in {**report.get("scores", {}), **report.get("bias", {})}.items():
        lines.append(f"{key:40s} {value:.4g}" if isinstance(value, float) else f"{key:40s} {value}")
    if report.get("validation_curve"):
        lines.append(f"{'weights used: step':40s} {report['validation_best_step']} (best validation CC)")
    if report.get("average_symmetries", 1) > 1:
        lines.append(f"{'outputs averaged over symmetries':40s} {report['average_symmetries']} (flips / 90° rotations)")
    pages.insert(0, ("summary_text.png", text_figure(lines)))
    written = []
    for name, fig in pages[1:]:
        save_figure(fig, out_dir / name, close=False)
        written.append(out_dir / name)
    write_pdf(out_dir / "logfile.pdf", [fig for _, fig in pages])
    written.append(out_dir / "logfile.pdf")
    return written
