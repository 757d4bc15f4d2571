"""CryoGAN's figures and the summary page of its ``logfile.pdf``.

Pure functions of the run's numbers and maps (no training, no files): central slices of
volumes, the critic and generator loss curves, resolution against time, the power spectra
of real and simulated particles, and the headline
lines of the PDF's first page. ``cryogan_core.commands.reconstruct`` saves them as PNGs and
writes them as the pages of ``logfile.pdf`` (RELION shows it from the Display menu when the
node is labelled ``LogFile.pdf.relion``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cryogan_core.report.plots import curves_figure  # noqa: E402


def format_duration(seconds: float) -> str:
    """A duration for logs and reports: ``1h02m03s``, ``4m05s`` or ``12s``.

    Args:
        seconds: the duration in seconds (negative reads as 0; rounded to whole seconds).

    Returns:
        The formatted text; ``"?"`` when ``seconds`` is not finite.
    """
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def slices_figure(volumes: Mapping[str, np.ndarray], title: str) -> Figure:
    """Central z, y and x slices of each volume, one row per volume.

    Args:
        volumes: label -> ``(D, D, D)`` float map in ``(z, y, x)`` order; the slices are
            taken at index ``D // 2`` (the RELION centre).
        title: the figure's title.

    Returns:
        A matplotlib figure with ``len(volumes)`` rows of 3 grey-scale panels.
    """
    fig, axes = plt.subplots(len(volumes), 3, figsize=(7.5, 2.5 * len(volumes)), squeeze=False)
    for r, (label, vol) in enumerate(volumes.items()):
        c = vol.shape[0] // 2
        for k, (img, name) in enumerate([(vol[c], "z"), (vol[:, c], "y"), (vol[:, :, c], "x")]):
            ax = axes[r, k]
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(f"central {name} slice", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean of ``(n,)`` values over ``window`` samples, same length (``np.convolve``, ``same``)."""
    return np.convolve(values, np.ones(window) / window, mode="same")


def loss_figures(histories: Sequence[Sequence[Mapping[str, float]]]) -> list[Figure]:
    """The critic's and the generator's losses against the volume update, per half set.

    Args:
        histories: one per half set: the trainer's per-step records, each with
            ``wasserstein``, ``loss_critic`` and ``loss_gen`` (floats). The curves are cut to
            the shortest history and smoothed by a running mean over ~1 % of the steps.

    Returns:
        ``[critic losses, generator loss]``, or ``[]`` when a history is empty.
    """
    n = min((len(h) for h in histories), default=0)
    if n == 0:
        return []
    steps = np.arange(1, n + 1)
    window = max(1, n // 100)

    def curve(h: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
        """The smoothed ``(n,)`` curve of one record key."""
        return _moving_average(np.array([r[key] for r in h[:n]], dtype=float), window)

    critic = {f"{label}, half {i}": curve(h, key)
              for i, h in enumerate(histories, start=1)
              for key, label in (("wasserstein", "Wasserstein estimate"), ("loss_critic", "critic loss"))}
    generator = {f"generator loss, half {i}": curve(h, "loss_gen") for i, h in enumerate(histories, start=1)}
    return [
        curves_figure(steps, critic, "volume update (step)", "loss", title="Critic losses (moving average)"),
        curves_figure(steps, generator, "volume update (step)", "loss", title="Generator loss (moving average)"),
    ]


def resolution_vs_time_figure(evals: Sequence[Mapping[str, float]], with_reference: bool) -> Figure:
    """Half-map resolution (and, with a reference, the map's) against training time.

    Args:
        evals: the in-training evaluations, each with ``elapsed_s`` (s),
            ``resolution_A_fsc_0.143`` and ``resolution_A_fsc_0.5`` (Å, half maps) and, with a
            reference, ``resolution_A_vs_reference_fsc_0.5`` (Å; missing entries plot as gaps).
        with_reference: draw the FSC-with-the-reference curve.

    Returns:
        A matplotlib figure, time in minutes against resolution in Å.
    """
    t_min = np.array([e["elapsed_s"] / 60.0 for e in evals])
    curves = {
        "half-map FSC 0.143": np.array([e["resolution_A_fsc_0.143"] for e in evals], dtype=float),
        "half-map FSC 0.5": np.array([e["resolution_A_fsc_0.5"] for e in evals], dtype=float),
    }
    if with_reference:
        curves["average vs reference, FSC 0.5"] = np.array(
            [e.get("resolution_A_vs_reference_fsc_0.5", np.nan) for e in evals], dtype=float)
    return curves_figure(t_min, curves, "training time (min)", "resolution (Å)", title="Resolution against time")


def spectra_figure(checks: Mapping[str, Any]) -> Figure:
    """Power spectra of real and simulated particles (top) and their ratio per ring (bottom).

    Args:
        checks: half-set label -> :class:`~cryogan_core.train.simulator_check.SpectraCheck`
            (attributes ``freq_inv_A``, ``real``, ``simulated``, ``signal``, ``noise``,
            ``ratio``, ``ratio_se``, all ``(R,)``); the top panel draws the first one.

    Returns:
        The figure: frequency (Å⁻¹) against power (log scale) and against
        simulated / real power, with ±2 standard errors shaded and the ±5 % lines.

    Raises:
        ValueError: ``checks`` is empty.
    """
    if not checks:
        raise ValueError("no spectra to plot")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.0, 6.0), sharex=True)
    label, first = next(iter(checks.items()))
    f = first.freq_inv_A[1:]  # DC left out: every image's background mean is removed
    for name, curve in (("real particles", first.real), ("simulated particles", first.simulated),
                        ("simulated signal alone", first.signal), ("simulator's noise alone", first.noise)):
        top.plot(f, curve[1:], lw=1.2, label=name)
    top.set_yscale("log")
    top.set_ylabel("power per ring")
    top.set_title(f"Power spectra, {label} ({first.n_particles} particles each)", fontsize=10)
    top.legend(fontsize=8)
    for name, c in checks.items():
        (line,) = bottom.plot(f, c.ratio[1:], lw=1.2, label=name)
        bottom.fill_between(f, (c.ratio - 2 * c.ratio_se)[1:], (c.ratio + 2 * c.ratio_se)[1:],
                            color=line.get_color(), alpha=0.2, lw=0)
    for y, style in ((1.0, "-"), (0.95, ":"), (1.05, ":")):
        bottom.axhline(y, color="0.5", ls=style, lw=0.8)
    bottom.set_xlabel("spatial frequency (1/Å)")
    bottom.set_ylabel("simulated / real power")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summary_lines(summary: Mapping[str, Any], low_snr_db: float) -> list[str]:
    """The first page of ``logfile.pdf``: the run's headline numbers, one ``label  value`` line each.

    Args:
        summary: the run's summary (``summary.json``): ``options`` (``symmetry``, ``seed``),
            ``n_particles``, ``n_half1``, ``n_half2``, ``estimated_snr_db``, ``box``,
            ``pixel_size_A``, ``box_train``, ``nyquist_train_A``, ``steps``, ``epochs``,
            ``training_time_s``, ``stopped_by``, ``resolution_A_fsc_0.143`` and, with a
            reference, ``resolution_A_vs_reference_fsc_0.5``; optionally ``spectra``
            (half label -> :meth:`SpectraCheck.to_dict
            <cryogan_core.train.simulator_check.SpectraCheck.to_dict>`) and ``critic_check``
            (half label -> :meth:`CriticCheck.to_dict
            <cryogan_core.train.critic_check.CriticCheck.to_dict>`).
        low_snr_db: below this particle SNR (dB) the page advises another seed.

    Returns:
        The lines of text.

    Raises:
        KeyError: a required entry of ``summary`` is missing.
    """
    o = summary["options"]
    rows = [
        ("particles (half 1 / half 2)", f"{summary['n_particles']} ({summary['n_half1']} / {summary['n_half2']})"),
        ("particle SNR, dB (pose-free; reads low)", f"{summary['estimated_snr_db']:.1f}"),
        ("box, pixel size", f"{summary['box']} px, {summary['pixel_size_A']:.3f} Å"),
        ("training box, its Nyquist", f"{summary['box_train']} px, {summary['nyquist_train_A']:.1f} Å"),
        ("symmetry; training seed", f"{o['symmetry']}; {o['seed']}"),
        ("steps, epochs, training time", f"{summary['steps']}, {summary['epochs']:.1f}, {format_duration(summary['training_time_s'])}"),
        ("stopped by", str(summary["stopped_by"])),
        ("half-map FSC 0.143 (optimistic)", f"{summary['resolution_A_fsc_0.143']:.1f} Å"),
    ]
    if "spectra" in summary:
        w = summary["spectra"]["half 1"]
        rows.append(("simulated/real power, worst ring (half 1)",
                     f"{w['worst_ratio']:.3f} ± {w['worst_ratio_se']:.3f} at {w['worst_ring_A']:.1f} Å"))
    if "critic_check" in summary:
        c = summary["critic_check"]["half 1"]
        rows.append(("critic estimate, own / unseen particles (half 1)",
                     f"{c['total']:.2f} / {c['held_out']:.2f} (memory {c['memory']:.2f} ± {c['memory_se']:.2f})"))
    if "resolution_A_vs_reference_fsc_0.5" in summary:
        rows.append(("FSC 0.5 with the reference (aligned)", f"{summary['resolution_A_vs_reference_fsc_0.5']:.1f} Å"))
    lines = ["cryogan reconstruct"] + [f"{k:42s} {v}" for k, v in rows]
    lines += ["", "Both half maps start from the same volume and share the simulator,",
              "so their FSC runs ahead of the map's agreement with an independent map."]
    if summary["estimated_snr_db"] < low_snr_db:
        lines += [f"Below {low_snr_db:.0f} dB our maps moved by 10 Å or more with the seed: run another seed."]
    return lines
