"""Extra training pairs for the denoiser: the map at new poses, with the real particles' noise.

A refined particle set is often small (the β-gal tutorial's half set 1: 529 particles
after validation), and the U-Net fits it within 2,000 steps. The map, however, can be
projected at any pose. A synthetic particle here is

``x' = s·CTF_k(P(R') ) + ρ_j``,  ``ρ_j = x_j − (a_j·CTF_j(P(R_j)) + b_j)``

- ``P(R')``: the map projected at a new pose ``R'``: the viewing direction (rot, tilt) of
  one training particle, a uniformly random in-plane angle psi;
- ``CTF_k``, the origin and the pixel size of another training particle ``k``;
- ``s``: the median of the training particles' least-squares slopes (the signal's scale in
  normalised units, :func:`~cryogan_core.train.pairs.make_targets`);
- ``ρ_j``: the residual of a third training particle ``j`` (normalised particle minus its
  scaled prediction), turned by a random one of the 8 flips/90° rotations: real noise,
  with the detector's and the ice's spectrum, not a model of it. Whatever of particle ``j``
  the map lacks is in ``ρ_j`` too, so it is noise to the network (as it already is in the
  real pairs, whose target is the map's projection).

The synthetic particle then goes through the same normalisation and scale fit as a real
one (:func:`~cryogan_core.train.pairs.train_box_pairs`), so its pair looks like a real pair.
All of it is made at the training box: the predictions at the training box
(:func:`~cryogan_core.train.pairs.predictions` with ``box_out``), the residual of the
Fourier-cropped particle, and RELION's normalisation at the training box
(:meth:`~cryogan_core.train.pairs.PairSettings.at_train_box`), which is how the
Fourier-cropped synthetic particle of the particles' box would come out.
Only training particles (half set 1, less the validation particles) are used: the
validation and held-out particles stay unseen. This is data augmentation by simulation
(noise re-pairing); it shows the network more of the reference, so read the job's
reference-bias controls with it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from cryogan_core.io.images import ParticleImages
from cryogan_core.physics.noise import random_dihedral
from cryogan_core.train.pairs import PairSettings, predictions, train_box_ctf, train_box_pairs


def synthetic_pairs(
    images: ParticleImages,
    df: pd.DataFrame,
    rows: np.ndarray,
    volume_for_pixel: Callable[[float], torch.Tensor],
    settings: PairSettings,
    n: int,
    slope: float,
    seed: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    should_stop: Callable[[], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Make ``n`` training pairs from the map at new poses and the training particles' noise.

    Args:
        images: lazy particle images.
        df: the full particle table (positional ``rows`` index it).
        rows: ``(m,)`` positions of the training particles (the only ones used).
        volume_for_pixel: pixel size (Å) -> map ``(box, box, box)`` at that pixel size.
        settings: the pair settings (normalisation, mask, crop, targets, CTF-aware).
        n: synthetic pairs to make.
        slope: the signal's scale ``s`` in normalised units (e.g. the median of the training
            pairs' ``slope``).
        seed: random seed (poses, donors, symmetries): the same seed gives the same pairs.
        batch_size: synthetic particles made at a time.
        device: torch device of the projections.
        should_stop: called between batches (raises to abort).
        on_batch: called after each batch with its number of pairs (progress lines).

    Returns:
        ``(pairs, table)``: ``pairs`` a dict of CPU float32 tensors, ``inputs`` and
        ``targets`` ``(n, train_box, train_box)`` (as :func:`~cryogan_core.train.pairs.build_pairs`),
        and with ``settings.ctf_aware`` also ``ctf`` ``(n, train_box, train_box//2+1)``;
        ``table`` the ``n`` synthetic particles' rows: the CTF donor's columns with
        ``rlnAngleRot/Tilt/Psi`` (degrees) replaced by the new pose.

    Raises:
        ValueError: ``n`` negative, ``rows`` empty, or ``slope`` not finite.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if len(rows) == 0:
        raise ValueError("no training particles to take the noise and the CTFs from")
    if not np.isfinite(slope):
        raise ValueError(f"slope must be finite, got {slope}")
    rng = np.random.default_rng([seed, 20261206])
    tb = settings.train_box
    out = {k: torch.empty((n, tb, tb), dtype=torch.float32) for k in ("inputs", "targets")}
    rows = np.asarray(rows)
    tables = []
    for start in range(0, n, batch_size):
        if should_stop is not None:
            should_stop()
        b = min(batch_size, n - start)
        donor_ctf = rows[rng.integers(0, len(rows), size=b)]
        donor_view = rows[rng.integers(0, len(rows), size=b)]
        donor_noise = rows[rng.integers(0, len(rows), size=b)]
        psi = rng.uniform(-180.0, 180.0, size=b)

        noise_rows = df.iloc[donor_noise]
        raw = torch.from_numpy(images.read(donor_noise)).to(device)
        donor = train_box_pairs(raw, noise_rows, volume_for_pixel, settings)
        turns = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        # the residual in the units of RELION's normalisation at the box, Fourier-cropped (undo T2's scale)
        residual = random_dihedral((donor.inputs - donor.reference_ctf) * donor.transform.std2[:, None, None], turns).to(device)

        table = df.iloc[donor_ctf].copy().reset_index(drop=True)
        table["rlnAngleRot"] = df["rlnAngleRot"].to_numpy()[donor_view]
        table["rlnAngleTilt"] = df["rlnAngleTilt"].to_numpy()[donor_view]
        table["rlnAnglePsi"] = psi
        synthetic = slope * predictions(table, volume_for_pixel, True, device, box_out=tb) + residual
        made = train_box_pairs(synthetic, table, volume_for_pixel, settings.at_train_box())
        out["inputs"][start : start + b] = made.inputs.cpu()
        out["targets"][start : start + b] = made.targets.cpu()
        tables.append(table)
        if on_batch is not None:
            on_batch(b)
    table = pd.concat(tables, ignore_index=True) if tables else df.iloc[:0].copy()
    if settings.ctf_aware:
        out["ctf"] = train_box_ctf(table, settings) if n else torch.empty((0, tb, tb // 2 + 1), dtype=torch.float32)
    return out, table
