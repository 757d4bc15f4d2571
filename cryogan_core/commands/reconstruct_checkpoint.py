"""``cryogan reconstruct``'s checkpoint: what it must agree with to be resumed, and reading it.

The file (``checkpoint.pt`` in the output folder) holds ``meta`` (:func:`checkpoint_meta`),
``stage_box``, both half sets' ``trainers`` states, the ``evals`` so far and the
``options``; :func:`cryogan_core.commands.reconstruct.run_reconstruct` writes it
atomically and resumes from it (RELION's "Continue!").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.errors import InputError

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def checkpoint_meta(opts: ReconstructOptions, boxes: list[int], use: np.ndarray, labels: np.ndarray, star_path: Path) -> dict:
    """What a checkpoint must agree with to be resumed (its ``meta``).

    Args:
        opts: the job's options (symmetry, positivity, batch size, critic settings).
        boxes: the training boxes, first to last (px).
        use: ``(n,)`` int rows of the particle table in use.
        labels: ``(N,)`` int half-set label (1 or 2) of every row.
        star_path: the particle file (recorded, not compared).

    Returns:
        A JSON-able dict: ``format``, ``box_train``, ``box_final``, ``n_half``, ``symmetry``,
        ``positivity``, ``batch_size``, ``n_critic``, ``critic_width``, ``star``.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "box_train": boxes[0],
        "box_final": boxes[-1],
        "n_half": [int((labels[use] == h).sum()) for h in (1, 2)],
        "symmetry": opts.symmetry,
        "positivity": opts.positivity,
        "batch_size": opts.batch_size,
        "n_critic": opts.n_critic,
        "critic_width": opts.critic_width,
        "star": str(star_path),
    }


def read_checkpoint(path: Path, meta: dict) -> dict:
    """The checkpoint's contents (``meta``, ``stage_box``, ``trainers``, ``evals``), checked against ``meta``.

    Raises:
        InputError: unreadable file, or made with other settings (named).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types on a corrupt file
        raise InputError(f"{path}: cannot read the checkpoint ({type(exc).__name__}); delete it to start again") from None
    saved = dict(state.get("meta", {}))
    saved.setdefault("box_final", saved.get("box_train"))  # checkpoints from before --box_final
    saved.setdefault("critic_width", 16)  # checkpoints from before --critic_width
    for key, value in meta.items():
        if key == "star":
            continue
        if saved.get(key) != value:
            raise InputError(
                f"{path}: made with {key} = {saved.get(key)}, this run has {value}; "
                "use the same settings to continue, or delete the checkpoint to start again"
            )
    return state
