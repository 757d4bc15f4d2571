"""``cryogan backproject``: gold-standard reconstruction with known poses and CTF.

Both half sets (rlnRandomSubset) are reconstructed independently by direct Fourier
inversion with a Wiener-style CTF correction
(:func:`cryogan_core.physics.reconstruct.reconstruct`), then compared by FSC. Output names
follow RELION's Refine3D: ``run_half1_class001_unfil.mrc``, ``run_half2_class001_unfil.mrc``,
``run_class001.mrc`` (their average), ``fsc.star``, ``fsc.png``, ``summary.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from loguru import logger

from cryogan_core.commands.export_cryosparc import volume_import_settings
from cryogan_core.errors import InputError
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.mrc import write_map
from cryogan_core.io.particles import check_ctf_columns, single_pixel_size_A
from cryogan_core.io.star import read_particles
from cryogan_core.io.summary import write_summary
from cryogan_core.metrics.fsc import fsc, resolution_at, write_fsc_star
from cryogan_core.physics.reconstruct import FourierAccumulator
from cryogan_core.report.plots import fsc_figure, save_figure
from cryogan_core.report.progress import ProgressLog
from cryogan_core.train.pairs import particle_arrays

if TYPE_CHECKING:
    import pandas as pd

#: Particles read from disk and inserted per step (memory: the padded 3-D grid plus one batch).
BATCH_SIZE = 256


def half_set_labels(df: pd.DataFrame, seed: int = 0, source: str | Path | None = None) -> np.ndarray:
    """Half-set label (1/2) of every particle: rlnRandomSubset, or a seeded random split.

    Args:
        df: the particle table.
        seed: seed of the random split used when rlnRandomSubset is absent.
        source: the file the table came from, named in the errors.

    Returns:
        ``(n,)`` int array of 1 and 2.

    Raises:
        InputError: if rlnRandomSubset has values other than 1 and 2, or a half is empty.
    """
    where = f"{source}: " if source is not None else ""
    if "rlnRandomSubset" in df:
        labels = df["rlnRandomSubset"].to_numpy().astype(int)
        bad = ~np.isin(labels, (1, 2))
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 1
            raise InputError(f"{where}column rlnRandomSubset: row {row}: value {labels[row - 1]} is not 1 or 2")
    else:
        logger.warning("No rlnRandomSubset column: splitting the particles into two random halves")
        labels = np.ones(len(df), dtype=int)
        labels[np.random.default_rng(seed).permutation(len(df))[: len(df) // 2]] = 2
    for h in (1, 2):
        if not (labels == h).any():
            raise InputError(f"{where}half set {h} (rlnRandomSubset == {h}) has no particles ({len(df)} in all; "
                             "gold-standard work needs both halves)")
    return labels


def run_backproject(
    star_path: Path,
    output_dir: Path,
    project_dir: Path | None = None,
    wiener_constant: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Reconstruct both half maps and their FSC; write maps, FSC table/plot and summary.

    Args:
        star_path: particle STAR with poses, origins, CTF, rlnImageName (one pixel size).
        output_dir: output folder (created).
        project_dir: directory rlnImageName is relative to (default: cwd).
        wiener_constant: regularisation of the CTF correction, relative to the mean CTF²
            weight (see ``reconstruct``).
        seed: seed for the half-set split when rlnRandomSubset is absent.
        device: torch device.

    Returns:
        The summary dict, with ``resolution_A_fsc_0.143`` (unmasked half-map FSC).

    Raises:
        InputError: for unusable inputs, particles with several pixel sizes, or particles
            premultiplied by their CTF or phase-flipped, or CTF columns in another unit (:func:`~cryogan_core.io.particles.check_ctf_columns`);
            a negative or non-finite ``wiener_constant``.
    """
    if not (math.isfinite(wiener_constant) and wiener_constant >= 0):
        raise InputError(f"--wiener-constant {wiener_constant}: must be >= 0 (0: no regularisation)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    project_dir = Path(project_dir) if project_dir is not None else Path.cwd()
    star = read_particles(star_path, require_ctf=True, require_images=True, require_poses=True)
    df = star.particles
    check_ctf_columns(star_path, df)
    pixel_size_A = single_pixel_size_A(star_path, df, "backproject")
    images = ParticleImages(df, project_dir, star_path)
    labels = half_set_labels(df, seed, star_path)

    halves = []
    for h in (1, 2):
        rows = np.flatnonzero(labels == h)
        logger.info(f"Reconstructing half set {h} from {len(rows)} particles")
        # streamed from disk: memory is the padded 3-D grid and one batch, whatever the set's size
        acc = FourierAccumulator(images.box, device)
        progress = ProgressLog(f"Back-projecting half set {h}:", len(rows))
        for start in range(0, len(rows), BATCH_SIZE):
            chunk = rows[start : start + BATCH_SIZE]
            angles, origins, ctf, _ = particle_arrays(df.iloc[chunk], device)
            acc.add(torch.from_numpy(images.read(chunk)).to(device), angles, origins, pixel_size_A, ctf)
            progress.advance(len(chunk))
        halves.append(acc.finish(wiener_constant).cpu().numpy().astype(np.float32))
        write_map(output_dir / f"run_half{h}_class001_unfil.mrc", halves[-1], pixel_size_A)
    write_map(output_dir / "run_class001.mrc", 0.5 * (halves[0] + halves[1]), pixel_size_A)

    freq, curve = fsc(halves[0], halves[1], pixel_size_A)
    res = resolution_at(freq, curve, 0.143)
    write_fsc_star(output_dir / "fsc.star", freq, curve)
    save_figure(fsc_figure(freq, {"half 1 vs half 2 (unmasked)": curve}, (0.143,), title=f"Half-map FSC: {res:.2f} Å at 0.143"), output_dir / "fsc.png")
    summary = {
        "command": "backproject",
        "n_particles": int(len(df)),
        "n_half1": int((labels == 1).sum()),
        "n_half2": int((labels == 2).sum()),
        "pixel_size_A": pixel_size_A,
        "box": images.box,
        "nyquist_A": 2.0 * pixel_size_A,
        "resolution_A_fsc_0.143": res,
        "resolution_A_fsc_0.5": resolution_at(freq, curve, 0.5),
        "fsc_freq_inv_A": freq,
        "fsc": curve,
        "wiener_constant": wiener_constant,
        "star": str(star_path),
        "cryosparc_import": volume_import_settings(
            {"map": output_dir / "run_class001.mrc", "map_half_A": output_dir / "run_half1_class001_unfil.mrc",
             "map_half_B": output_dir / "run_half2_class001_unfil.mrc"}, pixel_size_A),
    }
    write_summary(output_dir / "summary.json", summary)
    logger.info(f"Half-map FSC = 0.143 at {res:.2f} Å (Nyquist {2 * pixel_size_A:.2f} Å); wrote {output_dir}")
    return summary
