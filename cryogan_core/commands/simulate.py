"""``cryogan simulate``: a particle set with known truth, from a map or the built-in volume.

Writes ``particles.star`` (RELION 3.1+, true poses, origins, CTF, half sets),
``particles.mrcs`` (noisy), ``clean.mrcs`` (noise-free CTF-modulated shifted projections,
the ground truth), ``ground_truth_map.mrc`` (the map at the particles' pixel size and box)
and ``summary.json``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from loguru import logger

from cryogan_core.errors import InputError
from cryogan_core.io.mrc import StackWriter, read_map, write_map
from cryogan_core.io.particles import check_ctf_values
from cryogan_core.io.star import ParticleStar, format_image_name, pose_angles_deg, read_particles
from cryogan_core.io.star_write import write_particles
from cryogan_core.io.summary import write_summary
from cryogan_core.physics.ctf import CtfParams
from cryogan_core.physics.euler import random_euler_deg
from cryogan_core.physics.phantom import DEFAULT_BOX, DEFAULT_PIXEL_SIZE_A, procedural_volume
from cryogan_core.physics.simulator import (
    clean_batches,
    image_variances,
    noise_sigma_from_variances,
    random_ctf_params,
    uniform_shifts_px,
)
from cryogan_core.report.progress import ProgressLog

OPTICS_KEYS = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]


def _sample_rows(n_rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices: a random subset without replacement when possible, else with replacement."""
    return rng.choice(n_rows, size=n, replace=n > n_rows)


def build_particle_star(
    angles_deg: np.ndarray,
    origins_A: np.ndarray,
    ctf: CtfParams | None,
    pixel_size_A: float,
    box: int,
    stack_name: str,
    star_path: Path,
    random_subset: np.ndarray,
) -> ParticleStar:
    """Assemble the RELION 3.1+ particle table of a simulated set.

    Particles with different (voltage, Cs, amplitude contrast) get different optics groups.

    Args:
        angles_deg: ``(n, 3)`` [rot, tilt, psi] in degrees.
        origins_A: ``(n, 2)`` [x, y] origins in Å.
        ctf: per-particle CTF, or None (then DefocusU/V are 0 and the STAR says so).
        pixel_size_A: pixel size in Å.
        box: box in pixels.
        stack_name: the stack path as written in rlnImageName (relative to the project dir).
        star_path: where the STAR will be written (recorded in the table).
        random_subset: ``(n,)`` int half-set labels 1/2.

    Returns:
        A :class:`ParticleStar` ready for :func:`write_particles`.
    """
    n = angles_deg.shape[0]
    df = pd.DataFrame(
        {
            "rlnImageName": [format_image_name(i + 1, stack_name) for i in range(n)],
            "rlnAngleRot": angles_deg[:, 0].astype(np.float64),
            "rlnAngleTilt": angles_deg[:, 1].astype(np.float64),
            "rlnAnglePsi": angles_deg[:, 2].astype(np.float64),
            "rlnOriginXAngst": origins_A[:, 0].astype(np.float64),
            "rlnOriginYAngst": origins_A[:, 1].astype(np.float64),
        }
    )
    if ctf is not None:
        df["rlnDefocusU"] = ctf.defocus_u_A.double().numpy()
        df["rlnDefocusV"] = ctf.defocus_v_A.double().numpy()
        df["rlnDefocusAngle"] = ctf.defocus_angle_deg.double().numpy()
        df["rlnPhaseShift"] = ctf.phase_shift_deg.double().numpy()
        df["rlnCtfBfactor"] = ctf.bfactor_A2.double().numpy()
        df["rlnCtfScalefactor"] = ctf.scale.double().numpy()
        optics_values = np.stack(
            [ctf.voltage_kV.double().numpy(), ctf.cs_mm.double().numpy(), ctf.amplitude_contrast.double().numpy()],
            axis=1,
        )
    else:
        optics_values = np.tile(np.array([[300.0, 2.7, 0.1]]), (n, 1))
    df["rlnRandomSubset"] = random_subset.astype(int)
    df["rlnClassNumber"] = 1
    particle_columns = list(df.columns)

    uniq, group_index = np.unique(np.round(optics_values, 6), axis=0, return_inverse=True)
    df["rlnOpticsGroup"] = group_index.reshape(-1).astype(int) + 1
    particle_columns.insert(1, "rlnOpticsGroup")
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.arange(1, len(uniq) + 1),
            "rlnOpticsGroupName": [f"opticsGroup{i}" for i in range(1, len(uniq) + 1)],
            "rlnVoltage": uniq[:, 0],
            "rlnSphericalAberration": uniq[:, 1],
            "rlnAmplitudeContrast": uniq[:, 2],
            "rlnImagePixelSize": float(pixel_size_A),
            "rlnImageSize": int(box),
            "rlnImageDimensionality": 2,
            "rlnCtfDataAreCtfPremultiplied": 0,
        }
    )
    merged = df.merge(optics.drop(columns=["rlnOpticsGroupName"]), on="rlnOpticsGroup", how="left")
    for col in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor"):
        if col not in merged:
            merged[col] = 0.0
    if "rlnCtfScalefactor" not in merged:
        merged["rlnCtfScalefactor"] = 1.0
    return ParticleStar(
        particles=merged,
        optics=optics,
        source_version="3.1",
        path=star_path,
        particle_columns=particle_columns,
    )


# images per batch of noise: a multiple of 16, so batches draw the same numbers as one
# torch.randn call for the whole set (torch fills normals 16 at a time); checked against
# simulate_particles in tests/test_simulator.py
NOISE_BATCH = 256


def write_simulated_stacks(
    output_dir: Path,
    volume: torch.Tensor,
    pixel_size_A: float,
    angles_deg: torch.Tensor,
    origins_A: torch.Tensor,
    ctf: CtfParams | None,
    snr_db: float,
    generator: torch.Generator,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Write ``clean.mrcs`` and ``particles.mrcs`` batch by batch, never holding the set in memory.

    The same images as :func:`~cryogan_core.physics.simulator.simulate_particles` with the
    same generator state (noisy = clean + white Gaussian noise at ``snr_db``, Gupta et al.
    2021, Sec. V): the clean images are projected and written first, with each one's
    variance; then the noise is drawn and added to them, read back from the clean stack's
    memory map. The two stacks are no longer held in memory (2.6 GB for 5,000 particles of
    256 px); what remains is the projector's workspace. Neither file appears under its name
    unless both are complete.

    Args:
        output_dir: folder of the two stacks.
        volume: ``(D, D, D)`` float32 map ``(z, y, x)``, centre ``D // 2``.
        pixel_size_A: pixel size of the map and images in Å (written to the headers).
        angles_deg: ``(n, 3)`` RELION Euler angles [rot, tilt, psi] in degrees.
        origins_A: ``(n, 2)`` RELION origins [x, y] in Å.
        ctf: CTF parameters (length n) or None.
        snr_db: target SNR in dB.
        generator: CPU torch generator the noise is drawn from.
        on_batch: called with the number of particles after each batch is projected.

    Returns:
        The noise standard deviation (image units).

    Raises:
        ValueError: mismatched lengths, or clean images with zero variance.
    """
    n, box = angles_deg.shape[0], volume.shape[-1]
    variances = []
    with StackWriter(output_dir / "clean.mrcs", n, box, pixel_size_A) as clean_out:
        for start, batch in clean_batches(volume, pixel_size_A, angles_deg, origins_A, ctf):
            clean_out.write(start, batch.numpy())
            variances.append(image_variances(batch))
            if on_batch is not None:
                on_batch(batch.shape[0])
        sigma = noise_sigma_from_variances(torch.cat(variances), snr_db)
        with StackWriter(output_dir / "particles.mrcs", n, box, pixel_size_A) as noisy_out:
            for start in range(0, n, NOISE_BATCH):
                clean = torch.from_numpy(clean_out.read(start, min(start + NOISE_BATCH, n)))
                noisy_out.write(start, (clean + sigma * torch.randn(clean.shape, generator=generator)).numpy())
    return sigma


def check_simulate_values(n: int, snr_db: float, shift_px: float, box: int | None, pixel_size_A: float | None) -> None:
    """Refuse values ``cryogan simulate`` cannot make a particle set from, naming the flag.

    Args:
        n: number of particles (>= 1).
        snr_db: SNR in dB (finite).
        shift_px: maximum origin shift in pixels (finite, >= 0).
        box: box of the built-in volume (>= 16), or None with ``--map``.
        pixel_size_A: pixel size of the built-in volume in Å (finite, > 0), or None with ``--map``.

    Raises:
        InputError: one line such as ``--n 0: must be >= 1 (the number of particles)``.
    """
    if n < 1:
        raise InputError(f"--n {n}: must be >= 1 (the number of particles)")
    if not math.isfinite(snr_db):
        raise InputError(f"--snr-db {snr_db}: must be a finite number of dB (e.g. -10)")
    if not (math.isfinite(shift_px) and shift_px >= 0):
        raise InputError(f"--shift-px {shift_px}: must be >= 0 (the largest origin shift, pixels)")
    if box is not None and box < 16:
        raise InputError(f"--box {box}: the built-in volume needs a box of at least 16 px")
    if pixel_size_A is not None and not (math.isfinite(pixel_size_A) and pixel_size_A > 0):
        raise InputError(f"--pixel-size {pixel_size_A}: must be > 0 (Å per pixel)")


def run_simulate(
    output_dir: Path,
    n: int,
    snr_db: float,
    map_path: Path | None = None,
    poses_from: Path | None = None,
    ctf_from: Path | None = None,
    shift_px: float = 0.0,
    seed: int = 0,
    project_dir: Path | None = None,
    box: int = DEFAULT_BOX,
    pixel_size_A: float = DEFAULT_PIXEL_SIZE_A,
    device: torch.device | str = "cpu",
) -> dict:
    """Simulate a particle set and write it (see the module docstring for the files).

    Poses are uniform over SO(3) unless ``poses_from`` gives a STAR whose rows are sampled
    (without replacement when it has enough rows); CTFs come from the rows of ``ctf_from``
    or from :func:`random_ctf_params`. When both name the same file, the same rows give
    both. Origins are uniform in ``[-shift_px, shift_px]`` pixels on each axis. Half sets
    (rlnRandomSubset) split the particles at random into two equal halves.

    Args:
        output_dir: output folder (created).
        n: number of particles.
        snr_db: SNR in dB, Gupta et al. definition (see ``simulator.noise_sigma_for_snr``).
        map_path: MRC map; None uses the built-in procedural volume (box ``box``,
            ``pixel_size_A``).
        poses_from: STAR with rlnAngleRot/Tilt/Psi to draw poses from.
        ctf_from: STAR with CTF columns to draw CTFs from.
        shift_px: maximum origin shift in pixels.
        seed: random seed (everything is reproducible from it).
        project_dir: directory rlnImageName is written relative to (default: cwd).
        box: box of the built-in volume (ignored with ``map_path``).
        pixel_size_A: pixel size of the built-in volume (ignored with ``map_path``).
        device: torch device for the projections.

    Returns:
        The summary dict (also written to ``summary.json``).

    Raises:
        InputError: values :func:`check_simulate_values` refuses; unreadable maps or STAR
            files, missing columns, or ``ctf_from`` CTF columns in another unit
            (:func:`~cryogan_core.io.particles.check_ctf_values`).
    """
    check_simulate_values(n, snr_db, shift_px, None if map_path is not None else box,
                          None if map_path is not None else pixel_size_A)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    project_dir = Path(project_dir) if project_dir is not None else Path.cwd()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    if map_path is not None:
        volume_np, pixel_size_A = read_map(map_path)
        source = str(map_path)
    else:
        volume_np = procedural_volume(box=box, seed=0)
        source = f"built-in procedural volume (box {box}, {pixel_size_A} Å)"
    box = volume_np.shape[0]
    volume = torch.from_numpy(np.ascontiguousarray(volume_np)).float().to(device)
    logger.info(f"Simulating {n} particles of {source} at {snr_db} dB SNR, box {box}, {pixel_size_A:.3f} Å/px")

    pose_rows = ctf_rows = None
    if poses_from is not None:
        pose_star = read_particles(poses_from, require_ctf=False, require_poses=True)
        pose_rows = _sample_rows(len(pose_star.particles), n, rng)
        p = pose_star.particles.iloc[pose_rows]
        angles = torch.tensor(pose_angles_deg(p), dtype=torch.float32)
    else:
        angles = random_euler_deg(n, generator=gen)
    if ctf_from is not None:
        ctf_star = read_particles(ctf_from, require_ctf=True)
        check_ctf_values(ctf_from, ctf_star.particles)
        same = poses_from is not None and Path(ctf_from).resolve() == Path(poses_from).resolve()
        ctf_rows = pose_rows if same else _sample_rows(len(ctf_star.particles), n, rng)
        ctf = CtfParams.from_particles(ctf_star.particles.iloc[ctf_rows].reset_index(drop=True))
    else:
        ctf = random_ctf_params(n, generator=gen)
    origins_A = uniform_shifts_px(n, shift_px, generator=gen) * pixel_size_A

    progress = ProgressLog("Projecting:", n)
    noise_sigma = write_simulated_stacks(output_dir, volume, pixel_size_A, angles, origins_A, ctf, snr_db, gen,
                                         on_batch=progress.advance)

    subset = np.ones(n, dtype=int)
    subset[rng.permutation(n)[: n // 2]] = 2
    stack_path = output_dir / "particles.mrcs"
    stack_name = os.path.relpath(stack_path.resolve(), project_dir.resolve())
    star = build_particle_star(
        angles.float().numpy(), origins_A.float().numpy(), ctf, pixel_size_A, box, stack_name,
        output_dir / "particles.star", subset,
    )
    write_map(output_dir / "ground_truth_map.mrc", volume_np, pixel_size_A)
    write_particles(output_dir / "particles.star", star)
    summary = {
        "command": "simulate",
        "n_particles": n,
        "snr_db": snr_db,
        "noise_sigma": noise_sigma,
        "box": box,
        "pixel_size_A": pixel_size_A,
        "map": source,
        "poses_from": str(poses_from) if poses_from else "uniform SO(3)",
        "ctf_from": str(ctf_from) if ctf_from else "random ranges",
        "shift_px_max": shift_px,
        "seed": seed,
    }
    write_summary(output_dir / "summary.json", summary)
    logger.info(f"Wrote {output_dir / 'particles.star'}, particles.mrcs, clean.mrcs, ground_truth_map.mrc")
    return summary
