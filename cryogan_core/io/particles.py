"""One entry point for particle sets: RELION ``.star`` or cryoSPARC ``.cs``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from loguru import logger

from cryogan_core.errors import InputError
from cryogan_core.io.cryosparc import read_cryosparc_particles
from cryogan_core.io.star import ParticleStar, read_particles

__all__ = ["CTF_MODIFIED_FLAGS", "check_ctf_columns", "check_ctf_values", "load_particles", "reject_ctf_modified_images", "single_pixel_size_A"]


def load_particles(
    path: str | Path,
    require_ctf: bool = True,
    require_images: bool = False,
    require_poses: bool = False,
    passthrough: Iterable[str | Path] = (),
    cs_project_dir: str | Path | None = None,
    project_dir: str | Path | None = None,
) -> ParticleStar:
    """Read a particle set from a RELION STAR or a cryoSPARC ``.cs`` file, by suffix.

    Both give a :class:`ParticleStar` with the same canonical columns and units (Å,
    degrees, kV, mm, Å²; see :mod:`cryogan_core.io.star` and :mod:`cryogan_core.io.cryosparc`).

    Args:
        path: ``*.star`` (:func:`~cryogan_core.io.star.read_particles`) or ``*.cs``
            (:func:`~cryogan_core.io.cryosparc.read_cryosparc_particles`); the suffix is
            matched case-insensitively.
        require_ctf: require per-particle defocus and voltage/Cs.
        require_images: require the image names (and, for ``.cs``, that the stacks exist).
        require_poses: require 3D poses (``rlnAngleRot/Tilt/Psi``; ``alignments3D/pose``).
        passthrough: ``.cs`` only: extra passthrough ``.cs`` files joined on ``uid``.
        cs_project_dir: ``.cs`` only: the cryoSPARC project directory (default: the
            ``.cs`` file's folder and its parents).
        project_dir: ``.cs`` only: the RELION project directory that the ``rlnImageName``
            values are made relative to (default: the current directory).

    Returns:
        The particle set.

    Raises:
        InputError: the suffix is neither ``.star`` nor ``.cs``; passthrough files given
            with a ``.star``; plus every error of the reader used.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    passthrough = [Path(p) for p in passthrough]
    if suffix == ".star":
        if passthrough:
            raise InputError(f"{path}: passthrough .cs files ({passthrough[0]}) go with a cryoSPARC .cs input, not a STAR file")
        return read_particles(path, require_ctf=require_ctf, require_images=require_images, require_poses=require_poses)
    if suffix == ".cs":
        return read_cryosparc_particles(
            path,
            require_ctf=require_ctf,
            require_images=require_images,
            require_poses=require_poses,
            passthrough=passthrough,
            cs_project_dir=cs_project_dir,
            project_dir=project_dir,
        )
    raise InputError(
        f"{path}: unknown particle file type '{path.suffix or '(no suffix)'}' "
        f"(expected a RELION .star or a cryoSPARC .cs file)"
    )


#: RELION's flags for images whose CTF was applied at extraction, and what each means.
CTF_MODIFIED_FLAGS = {
    "rlnCtfDataAreCtfPremultiplied": "premultiplied by their CTF (signal CTF² × projection)",
    "rlnCtfDataArePhaseFlipped": "phase-flipped (signal |CTF| × projection)",
}


def reject_ctf_modified_images(path: str | Path, df: pd.DataFrame) -> None:
    """Refuse particles whose images had their CTF applied at extraction.

    RELION marks such optics groups with ``rlnCtfDataAreCtfPremultiplied 1`` (signal CTF² ×
    projection) or ``rlnCtfDataArePhaseFlipped 1`` (signal |CTF| × projection; RELION's
    ``--ctf_phase_flipped``, also written by some converters). Every command that models the
    particles' CTF (denoise, reconstruct, check-poses, backproject) assumes images that
    carry the CTF itself, as RELION's Extract writes them, so it calls this check first
    rather than train on, or score against, the wrong signal.

    Args:
        path: the particle file (named in the error).
        df: its particle table, optics columns merged (the columns may be absent: RELION
            writes them only when they apply).

    Raises:
        InputError: either flag is 1 on any row; the message names the file, the column
            and the number of such particles.
    """
    for col, meaning in CTF_MODIFIED_FLAGS.items():
        if col not in df:
            continue
        n = int(np.count_nonzero(pd.to_numeric(df[col], errors="coerce").to_numpy() == 1))
        if n:
            raise InputError(
                f"{path}: column {col} is 1 for {n} of {len(df)} particles: images {meaning} are not "
                "supported (re-extract the particles without it)"
            )


#: Plausible ranges of RELION's CTF columns in their units; values outside are another unit.
VOLTAGE_RANGE_KV = (30.0, 1000.0)
CS_RANGE_MM = (-5.0, 20.0)
#: Median defocus (Å) below which the values are taken for µm (1.5 µm = 15,000 Å).
MIN_MEDIAN_DEFOCUS_A = 100.0


def check_ctf_values(path: str | Path, df: pd.DataFrame) -> None:
    """Refuse CTF columns in the wrong unit; warn when most defoci are overfocus.

    RELION's units: ``rlnVoltage`` kV, ``rlnSphericalAberration`` mm, ``rlnAmplitudeContrast``
    a fraction, ``rlnDefocusU/V`` Å with underfocus positive (relion/src/ctf.h). Converters
    that write volts, percent or µm give a CTF with nothing in common with the images, and
    every command would go on without a word; the CTF is then wrong for every particle.

    Args:
        path: the particle file (named in the error).
        df: its particle table, optics columns merged: ``rlnVoltage``,
            ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, ``rlnDefocusU``,
            ``rlnDefocusV`` (float, as :func:`~cryogan_core.io.star.read_particles` gives).

    Raises:
        InputError: the first row (1-based) whose voltage is outside 30–1000 kV, Cs outside
            −5–20 mm or amplitude contrast outside [0, 1); or a median defocus below 100 Å
            (µm written as Å). The message names the file, the row, the column and the value.
    """
    checks = (
        ("rlnVoltage", VOLTAGE_RANGE_KV, "is not in kV (RELION writes e.g. 300)"),
        ("rlnSphericalAberration", CS_RANGE_MM, "is not in mm (RELION writes e.g. 2.7)"),
    )
    for col, (lo, hi), why in checks:
        v = df[col].to_numpy(dtype=float)
        bad = np.flatnonzero(~((v >= lo) & (v <= hi)))
        if len(bad):
            raise InputError(f"{path}: row {bad[0] + 1}: {col} {v[bad[0]]:g} {why}")
    q = df["rlnAmplitudeContrast"].to_numpy(dtype=float)
    bad = np.flatnonzero(~((q >= 0) & (q < 1)))
    if len(bad):
        raise InputError(f"{path}: row {bad[0] + 1}: rlnAmplitudeContrast {q[bad[0]]:g} is not a fraction in [0, 1) (RELION writes e.g. 0.1)")
    mean_defocus = 0.5 * (df["rlnDefocusU"].to_numpy(dtype=float) + df["rlnDefocusV"].to_numpy(dtype=float))
    median = float(np.median(np.abs(mean_defocus)))
    if median < MIN_MEDIAN_DEFOCUS_A:
        raise InputError(
            f"{path}: columns rlnDefocusU/V: median defocus {median:g} Å; RELION's defocus is in Å (1.5 µm = 15000 Å), "
            "these look like µm"
        )
    over = float(np.mean(mean_defocus < 0))
    if over > 0.5:
        logger.warning(
            f"{path}: {100 * over:.0f} % of the particles have a negative defocus (overfocus in RELION's convention, "
            "underfocus positive): check the converter's sign"
        )


def check_ctf_columns(path: str | Path, df: pd.DataFrame) -> None:
    """The checks every command that models the particles' CTF makes first.

    :func:`reject_ctf_modified_images` (CTF applied at extraction), then
    :func:`check_ctf_values` (units of the CTF columns).

    Args:
        path: the particle file (named in errors).
        df: its particle table, optics columns merged, with the CTF columns.

    Raises:
        InputError: from either check.
    """
    reject_ctf_modified_images(path, df)
    check_ctf_values(path, df)


def single_pixel_size_A(path: str | Path, df: pd.DataFrame, command: str) -> float:
    """The particles' one pixel size, for commands that cannot mix optics groups' pixel sizes.

    Args:
        path: the particle file (named in errors).
        df: its particle table with ``rlnImagePixelSize`` (optics merged; Å/px, float64).
        command: the command's name, for the error (``"backproject"``, ``"reconstruct"``).

    Returns:
        The pixel size in Å.

    Raises:
        InputError: the optics groups have several pixel sizes (all named in the message).
    """
    sizes = np.unique(df["rlnImagePixelSize"].to_numpy())
    if len(sizes) != 1:
        raise InputError(f"{path}: particles have several pixel sizes ({', '.join(f'{s:g}' for s in sizes)} Å); {command} needs one")
    return float(sizes[0])
