"""The denoiser's training set: which particles train, choose the weights or are reported on, and the synthetic pairs.

Half set 1 trains (at most ``--max_train_particles``, :func:`select_rows`, less the
validation particles :func:`split_validation` draws to choose the weights); half set 2 is
reported on (``--n_report``). :func:`synthetic_training_pairs` makes ``--synthetic_pairs``
more pairs from the map and the training particles; :func:`with_synthetic` appends them to
the real ones. :func:`max_pairs_in_memory` caps the training particles so that their pairs,
held in memory for the whole training, fit in a quarter of the machine's memory.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
from loguru import logger

from cryogan_core.commands.denoise_options import DenoiseOptions
from cryogan_core.io.images import ParticleImages
from cryogan_core.report.progress import ProgressLog
from cryogan_core.train.pairs import PairSettings
from cryogan_core.train.synthetic_pairs import synthetic_pairs

MIN_VALIDATION = 20  # fewer validation particles than this score too noisily to choose weights
MAX_VALIDATION = 1000  # more cost time at every validation and choose no better


def split_validation(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (training, validation): a random ``fraction`` of them, between
    ``MIN_VALIDATION`` and ``MAX_VALIDATION`` particles, or none (fraction 0, or too few rows).
    Both parts sorted; drawn with their own generator so the other subsets do not change.

    Args:
        rows: ``(n,)`` int positions of the training particles in the particle table.
        fraction: the share of ``rows`` kept for validation, in [0, 1].
        seed: the job's seed (the draw uses ``seed + 1``).

    Returns:
        ``(training, validation)``: ``(n - m,)`` and ``(m,)`` int rows (``m`` = 0: ``rows`` and
        an empty array).
    """
    if fraction <= 0:
        return rows, rows[:0]
    n_val = min(int(round(fraction * len(rows))), MAX_VALIDATION)
    if n_val < MIN_VALIDATION or len(rows) - n_val < MIN_VALIDATION:
        logger.warning(f"--validation_fraction {fraction}: {n_val} of {len(rows)} training particles are too few to choose the weights; using the last step's")
        return rows, rows[:0]
    val = np.random.default_rng(seed + 1).choice(rows, size=n_val, replace=False)
    return np.setdiff1d(rows, val), np.sort(val)


#: Share of the machine's memory the training pairs may take (the rest: network, stacks, outputs).
PAIR_MEMORY_FRACTION = 0.25
#: float32 images held per training pair: the input, the target and the scaled CTF'd reference.
IMAGES_PER_PAIR = 3


def max_pairs_in_memory(train_box: int, ctf_aware: bool, memory_bytes: int | None) -> int | None:
    """The most training pairs whose images fit in ``PAIR_MEMORY_FRACTION`` of ``memory_bytes``.

    Each pair holds ``IMAGES_PER_PAIR`` float32 images of ``train_box²`` pixels
    (:func:`~cryogan_core.train.pairs.build_pairs`), plus its CTF ``(train_box, train_box//2+1)``
    in the CTF-aware mode: 197 KB at 128 px, 786 KB at 256 px, so the default 20,000
    training particles of a 256-px set take 15.7 GB.

    Args:
        train_box: the training box (px).
        ctf_aware: whether each pair also holds its CTF.
        memory_bytes: the memory available (bytes;
            :func:`~cryogan_core.commands._common.available_memory_bytes`), or None.

    Returns:
        The number of pairs (at least ``MIN_VALIDATION``), or None when ``memory_bytes`` is None.
    """
    if memory_bytes is None:
        return None
    per_pair = 4 * train_box * (IMAGES_PER_PAIR * train_box + (train_box // 2 + 1 if ctf_aware else 0))
    return max(MIN_VALIDATION, int(PAIR_MEMORY_FRACTION * memory_bytes // per_pair))


def synthetic_pairs_that_fit(n_asked: int, n_train: int, cap: int | None) -> int:
    """How many of the ``--synthetic_pairs`` asked for fit next to the real training pairs.

    Synthetic pairs are counted as real ones against :func:`max_pairs_in_memory`'s cap (they
    hold two images and the CTF, a real pair three: a small margin for the copy that joins
    them to the real pairs).

    Args:
        n_asked: ``--synthetic_pairs``.
        n_train: real training pairs.
        cap: :func:`max_pairs_in_memory`, or None (memory unknown: no cap).

    Returns:
        ``min(n_asked, cap - n_train)``, at least 0; ``n_asked`` when ``cap`` is None.
    """
    if cap is None:
        return n_asked
    return max(0, min(n_asked, cap - n_train))


def select_rows(rows: np.ndarray, n_max: int, rng: np.random.Generator) -> np.ndarray:
    """A sorted random subset of at most ``n_max`` rows (all when n_max <= 0).

    Args:
        rows: ``(n,)`` int positions in the particle table.
        n_max: the most rows to keep (<= 0: all).
        rng: the generator that draws the subset.

    Returns:
        ``(min(n, n_max),)`` int rows; ``rows`` itself when no subset is drawn.
    """
    if n_max > 0 and len(rows) > n_max:
        return np.sort(rng.choice(rows, size=n_max, replace=False))
    return rows


def synthetic_training_pairs(
    opts: DenoiseOptions,
    n_pairs: int,
    images: ParticleImages,
    df: pd.DataFrame,
    train_rows: np.ndarray,
    volume_for_pixel: Callable[[float], torch.Tensor],
    settings: PairSettings,
    train: dict[str, torch.Tensor],
    device: torch.device,
    should_stop: Callable[[], None] | None,
) -> dict[str, torch.Tensor] | None:
    """``n_pairs`` extra pairs (:mod:`cryogan_core.train.synthetic_pairs`), or None.

    The signal's scale is the median of the real training pairs' slopes; the seed is
    ``opts.seed``, so a resumed run trains on the same pairs.

    Args:
        opts: the job options (``seed``).
        n_pairs: how many (``--synthetic_pairs``, or fewer where memory is short:
            :func:`synthetic_pairs_that_fit`).
        images: lazy particle images.
        df: the full particle table (positional ``train_rows`` index it).
        train_rows: ``(m,)`` int positions of the training particles (the only ones used).
        volume_for_pixel: pixel size (Å) -> map ``(box, box, box)`` at that pixel size.
        settings: the pair settings.
        train: the real training pairs (:func:`~cryogan_core.train.pairs.build_pairs`; their
            ``slope`` ``(m,)`` is read).
        device: torch device of the projections.
        should_stop: called between batches (raises to abort).

    Returns:
        None when ``n_pairs`` is 0; else a dict of CPU float32 tensors:
        ``inputs`` and ``targets`` ``(n_pairs, train_box, train_box)`` and, with
        ``settings.ctf_aware``, ``ctf`` ``(n_pairs, train_box, train_box//2+1)``.

    Raises:
        ValueError: ``train_rows`` empty or the median slope not finite
            (:func:`~cryogan_core.train.synthetic_pairs.synthetic_pairs`).
    """
    if n_pairs == 0:
        return None
    t0 = time.time()
    slope = float(train["slope"].median())
    progress = ProgressLog("Making synthetic training pairs:", n_pairs, unit="pairs")
    pairs, _ = synthetic_pairs(images, df, train_rows, volume_for_pixel, settings, n_pairs, slope, opts.seed,
                               device=device, should_stop=should_stop, on_batch=progress.advance)
    logger.info(f"Made {n_pairs} synthetic training pairs in {time.time() - t0:.0f} s: the map at new poses with the CTFs "
                f"and the noise (residuals) of the {len(train_rows)} training particles, signal scale {slope:.3f}")
    return pairs


def with_synthetic(pairs: dict[str, torch.Tensor], synthetic: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The real pairs' ``inputs``, ``targets`` (and ``ctf``) followed by the synthetic ones.

    Args:
        pairs: the real pairs, float32 ``(n, train_box, train_box)`` (``ctf``
            ``(n, train_box, train_box//2+1)``).
        synthetic: the synthetic pairs, the same keys with ``m`` rows, or None.

    Returns:
        ``pairs`` itself when ``synthetic`` is None; else ``inputs``, ``targets`` (and ``ctf``)
        with ``n + m`` rows, real ones first.
    """
    if synthetic is None:
        return pairs
    keys = [k for k in ("inputs", "targets", "ctf") if k in pairs]
    return {k: torch.cat([pairs[k], synthetic[k]]) for k in keys}
