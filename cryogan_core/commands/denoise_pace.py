"""Advice when the denoiser's training would run for hours: a smaller ``--train_box`` that fits.

The U-Net and PatchGAN are convolutional, so a training step costs in proportion to the
number of pixels: measured on 2 CPU threads (default network, batch 16), 50–60 and 12–13
particles/s at train box 64 and 128 px (stop 42; an earlier measurement read 83 / 22, for
reasons not traced), i.e. about (128/64)² = 4× the time for twice the box.
A particle set extracted at 256–400 px (the usual RELION box at ~1 Å/px) would train for
hours on a CPU at its own box; Fourier-cropping to a smaller one (the ``--train_box``
option) trades resolution the denoised images rarely carry (their SNR is lowest there) for
that time. The job logs the advice once, from the measured pace, and changes nothing itself.
"""

from __future__ import annotations

import math

#: Training longer than this (seconds, estimated from the measured pace) gets the advice.
ADVISE_ABOVE_S = 3600.0
#: The smallest box the advice suggests (64 px: where the denoiser's benchmarks were made).
MIN_SUGGESTED_BOX = 64


def train_box_for_time(train_box: int, eta_s: float, target_s: float = ADVISE_ABOVE_S, min_box: int = MIN_SUGGESTED_BOX) -> int:
    """The largest even training box whose training would take about ``target_s``.

    Time per step is taken as proportional to ``train_box²`` (convolutions over every pixel).

    Args:
        train_box: the current training box (px).
        eta_s: estimated training time left at ``train_box`` (s, > 0).
        target_s: the training time to fit in (s, > 0).
        min_box: the smallest box suggested (px).

    Returns:
        An even box in ``[min(min_box, train_box), train_box]`` (px); ``train_box`` when the
        training already fits or ``train_box <= min_box``.

    Raises:
        ValueError: ``eta_s`` or ``target_s`` not positive.
    """
    if not (eta_s > 0 and target_s > 0):
        raise ValueError(f"eta_s {eta_s} and target_s {target_s} must be positive")
    if eta_s <= target_s or train_box <= min_box:
        return train_box
    box = 2 * math.floor(train_box * math.sqrt(target_s / eta_s) / 2)
    return max(min_box, box)


def pace_advice(train_box: int, pixel_size_train_A: float, eta_s: float, device: str) -> str | None:
    """One log line advising a smaller ``--train_box`` (or a GPU) when training would take hours.

    Args:
        train_box: the current training box (px).
        pixel_size_train_A: its pixel size (Å/px).
        eta_s: estimated training time left (s), from the pace measured so far.
        device: the torch device the job runs on (``cpu``, ``cuda:0``, ...).

    Returns:
        None when ``eta_s <= ADVISE_ABOVE_S``; else the advice: the suggested box with its
        pixel size, Nyquist and estimated time, and a GPU where the job runs on the CPU.
    """
    if not eta_s > ADVISE_ABOVE_S:
        return None
    text = f"Training will take about {eta_s / 3600:.1f} h more at train box {train_box} px on {device}."
    box = train_box_for_time(train_box, eta_s)
    if box < train_box:
        pix = pixel_size_train_A * train_box / box
        est = eta_s * (box / train_box) ** 2
        text += (f" --train_box {box} ({pix:.2f} Å/px, Nyquist {2 * pix:.1f} Å) would take about {est / 60:.0f} min: the network "
                 "then works, and writes the denoised particles, at that box and pixel size.")
    else:
        text += " Fewer --n_steps would shorten it."
    if device.startswith("cpu"):
        text += " A CUDA GPU is used automatically when present (--device)."
    return text


#: The agreement scores' share of the denoising time above which the advice names --no_scores.
SCORES_SHARE_ADVISED = 0.4


def scores_advice(n_left: int, rate_per_s: float, scores_share: float) -> str | None:
    """One log line when denoising every particle would take hours and the agreement scores
    (one projection of the map per particle: about 37 / 140 / 520–760 projections/s at
    256 / 128 / 64 px on 2 CPU threads, ``benchmarks/bench_projection_speed.py``) take much of it.

    Args:
        n_left: particles still to denoise.
        rate_per_s: particles denoised per second so far (scores included).
        scores_share: fraction of that time spent on the scores, in [0, 1].

    Returns:
        None when the rest takes at most ``ADVISE_ABOVE_S`` or the scores take less than
        ``SCORES_SHARE_ADVISED`` of it; else the time left with and without the scores.

    Raises:
        ValueError: ``rate_per_s`` not positive or ``scores_share`` outside [0, 1].
    """
    if not rate_per_s > 0 or not 0.0 <= scores_share <= 1.0:
        raise ValueError(f"rate_per_s {rate_per_s} must be positive and scores_share {scores_share} in [0, 1]")
    eta_s = n_left / rate_per_s
    if eta_s <= ADVISE_ABOVE_S or scores_share < SCORES_SHARE_ADVISED:
        return None
    return (f"Denoising the {n_left} particles left will take about {eta_s / 3600:.1f} h, {100 * scores_share:.0f} % of it for the "
            f"agreement scores (one projection of the map per particle); without them, about {eta_s * (1 - scores_share) / 3600:.1f} h: "
            "the same command with --no_scores on this output folder keeps the trained network and the finished stacks.")


__all__ = ["ADVISE_ABOVE_S", "MIN_SUGGESTED_BOX", "SCORES_SHARE_ADVISED", "pace_advice", "scores_advice", "train_box_for_time"]
