"""Plots people would rather look at than read: FSC curves, montages (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cryogan_core.io.atomic import atomic_path  # noqa: E402


def save_figure(fig: Figure, path: str | Path, dpi: int = 110, close: bool = True) -> None:
    """Save a figure atomically (temporary name + rename), and close it unless ``close=False``.

    The format follows the suffix of ``path`` (``.png``, ``.pdf``). The figure is saved at its
    own size: the figures of this module are laid out when made (``tight_layout``, or sized to
    their text), so ``bbox_inches="tight"`` is not used (it draws every figure twice).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    if close:
        plt.close(fig)


def text_figure(lines: Sequence[str]) -> Figure:
    """A page of plain monospace text (a report's summary page).

    Args:
        lines: the lines, top to bottom.

    Returns:
        The figure (6 × 3 in, wider for lines of more than 68 characters, taller for more than
        16 lines); the caller closes it.
    """
    # 9-pt monospace: a character is 0.6 em = 0.075 in wide, a line ~0.15 in high
    width_in = max(6.0, 0.075 * max((len(line) for line in lines), default=0) + 0.9)
    fig = plt.figure(figsize=(width_in, max(3.0, 0.18 * len(lines))))
    fig.text(0.3 / width_in, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=9)
    return fig


def fsc_figure(
    freq_inv_A: np.ndarray,
    curves: Mapping[str, np.ndarray],
    thresholds: Sequence[float] = (0.143,),
    title: str = "Fourier shell correlation",
) -> Figure:
    """An FSC plot in RELION's style: FSC against resolution (1/Å), with threshold lines.

    Args:
        freq_inv_A: ``(n_shells,)`` spatial frequency of each shell in 1/Å.
        curves: label -> ``(n_shells,)`` FSC values.
        thresholds: horizontal lines to draw (0.143 gold-standard, 0.5 vs a reference).
        title: the plot title.

    Returns:
        The matplotlib figure (save it with :func:`save_figure`).
    """
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for label, fsc in curves.items():
        ax.plot(freq_inv_A, fsc, label=label, lw=1.5)
    for t in thresholds:
        ax.axhline(t, color="grey", ls="--", lw=0.8)
        ax.text(freq_inv_A[-1], t, f" {t:g}", va="center", fontsize=8, color="grey")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xlabel("Resolution (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0.0, float(freq_inv_A[-1]))
    top = ax.secondary_xaxis("top", functions=(lambda f: f, lambda f: f))
    ticks = ax.get_xticks()
    top.set_xticks(ticks[ticks > 0])
    top.set_xticklabels([f"{1.0 / t:.1f}" for t in ticks[ticks > 0]])
    top.set_xlabel("Resolution (Å)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def montage_figure(
    rows: Mapping[str, np.ndarray], n_columns: int = 8, title: str | None = None
) -> Figure:
    """A grid of images: one row per labelled stack, the same particles in each column.

    Args:
        rows: label -> ``(n, H, W)`` images (the first ``n_columns`` are shown). Each image
            is scaled to its own 1st-99th percentile range.
        n_columns: number of particles shown.
        title: optional figure title.

    Returns:
        The matplotlib figure.
    """
    labels = list(rows)
    n_cols = min(n_columns, min(len(v) for v in rows.values()))
    # one axes per row, its particles tiled side by side (a grid of axes per particle took
    # ~0.9 s a figure to lay out); each image keeps its own 1st-99th percentile scaling
    fig, axes = plt.subplots(len(labels), 1, figsize=(1.3 * n_cols, 1.4 * len(labels)), squeeze=False)
    cmap = plt.get_cmap("gray").with_extremes(bad="white")  # the gaps between particles
    for r, label in enumerate(labels):
        tiles = []
        for c in range(n_cols):
            img = np.asarray(rows[label][c], dtype=np.float32)
            lo, hi = np.percentile(img, [1, 99])
            tiles.append(np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0))
            if c < n_cols - 1:
                tiles.append(np.full((img.shape[0], max(1, img.shape[1] // 16)), np.nan, dtype=np.float32))
        ax = axes[r, 0]
        ax.imshow(np.concatenate(tiles, axis=1), cmap=cmap, vmin=0.0, vmax=1.0, origin="lower", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_pdf(path: str | Path, figures: Sequence[Figure]) -> None:
    """Write figures as the pages of one PDF (e.g. RELION's ``logfile.pdf``), atomically.

    Each figure is closed after it is written.

    Args:
        path: destination ``.pdf``.
        figures: one figure per page, in order (at least one).

    Raises:
        ValueError: if ``figures`` is empty.
    """
    from matplotlib.backends.backend_pdf import PdfPages

    if not figures:
        raise ValueError("write_pdf needs at least one figure")
    with atomic_path(path) as tmp:
        with PdfPages(tmp) as pdf:
            for fig in figures:
                pdf.savefig(fig)  # laid out when made, as in save_figure
                plt.close(fig)


def curves_figure(
    x: np.ndarray,
    curves: Mapping[str, np.ndarray],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> Figure:
    """A simple line plot of several curves against one x axis (loss curves, resolution vs time).

    Args:
        x: ``(n,)`` x values.
        curves: label -> ``(n,)`` y values (NaN gaps allowed).
        xlabel, ylabel: axis labels (with units).
        title: plot title.
        logy: logarithmic y axis.

    Returns:
        The matplotlib figure.
    """
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for label, y in curves.items():
        ax.plot(x, y, label=label, lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def histogram_figure(values: Mapping[str, np.ndarray], xlabel: str, title: str = "", bins: int = 50) -> Figure:
    """Overlaid histograms (e.g. per-particle CC of raw and denoised particles).

    Args:
        values: label -> ``(n,)`` values.
        xlabel: the quantity and its unit.
        title: plot title.
        bins: number of bins over the common range.

    Returns:
        The matplotlib figure.
    """
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    finite = [np.asarray(v)[np.isfinite(v)] for v in values.values()]
    lo = min(float(v.min()) for v in finite if v.size) if any(v.size for v in finite) else 0.0
    hi = max(float(v.max()) for v in finite if v.size) if any(v.size for v in finite) else 1.0
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for (label, _), v in zip(values.items(), finite):
        # one filled outline per set, not a patch per bin (the same picture, ~50x fewer artists to draw)
        ax.hist(v, bins=edges, alpha=0.5, histtype="stepfilled", label=f"{label} (mean {v.mean():.3f})" if v.size else label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("particles")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
