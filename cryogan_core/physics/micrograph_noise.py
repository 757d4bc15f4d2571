"""Background noise cut from micrographs for the CryoGAN simulator (``--in_mics``).

CryoGAN (Gupta, McCann, Donati & Unser, IEEE TCI 2021, Sec. V-B) takes the noise of its
simulated particles from the micrographs, away from the picked particles. This module
reads a RELION micrograph STAR file and its MRC micrographs, cuts full-box windows at the
particles' sampling and wraps them as a ``"micrographs"`` source of
:class:`cryogan_core.physics.noise.BackgroundNoise`.

Conventions: images ``(n, y, x)``; coordinates ``rlnCoordinateX/Y`` in micrograph pixels;
windows normalised to mean 0 and standard deviation 1 (RELION ``relion_preprocess --norm``).
"""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
import torch

from cryogan_core.errors import InputError
from cryogan_core.io.images import resolve_image_path
from cryogan_core.physics.noise import BackgroundNoise
from cryogan_core.physics.resample import fourier_crop_images

__all__ = ["micrograph_noise_patches", "noise_from_micrograph_windows"]


def _micrograph_table(mics_star: Path) -> tuple[pd.DataFrame, float | None]:
    """(micrographs table, pixel size from the optics table or None) of a micrograph STAR."""
    try:
        blocks = starfile.read(mics_star, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed files
        raise InputError(f"{mics_star}: not a readable STAR file ({type(exc).__name__}: {exc})") from None
    table = None
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame) and "rlnMicrographName" in block.columns and name != "optics":
            table = block
    if table is None or len(table) == 0:
        raise InputError(f"{mics_star}: no micrograph table with a rlnMicrographName column")
    pixel = None
    optics = blocks.get("optics")
    if isinstance(optics, pd.DataFrame):
        for col in ("rlnMicrographPixelSize", "rlnImagePixelSize"):
            if col in optics.columns:
                pixel = float(optics[col].iloc[0])
                break
    for col in ("rlnMicrographPixelSize",):
        if col in table.columns:
            pixel = float(table[col].iloc[0])
    return table, pixel


def micrograph_noise_patches(
    mics_star: str | Path,
    project_dir: str | Path,
    particle_pixel_A: float,
    particle_box: int,
    box_out: int,
    particles: pd.DataFrame | None = None,
    n_windows: int = 2000,
    max_var_ratio: float = 1.5,
    exclusion_px: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Full-box background windows cut from micrographs, at the particles' sampling.

    Windows of ``particle_box · particle_pixel_A / mic_pixel`` micrograph pixels are cut at
    random positions whose centre is at least ``exclusion_px`` (default: one window side)
    from every picked particle of the same micrograph (``rlnCoordinateX/Y`` and
    ``rlnMicrographName`` of ``particles``, when present). Windows with a variance above
    ``max_var_ratio`` × the median are dropped (carbon, ice edges, missed particles).
    Each window is Fourier-resampled to ``box_out`` px, its mean removed and its standard
    deviation set to 1 (the particles are normalised to a background std of 1, RELION
    ``relion_preprocess --norm``).

    Args:
        mics_star: micrograph STAR (``rlnMicrographName``; pixel size from
            ``rlnMicrographPixelSize`` in optics or the table).
        project_dir: directory the micrograph names are relative to.
        particle_pixel_A: the particles' pixel size (Å).
        particle_box: the particles' box (px).
        box_out: side of the returned windows (the training box, px).
        particles: particle table with coordinates, to avoid the particles.
        n_windows: number of windows to try.
        max_var_ratio: variance threshold relative to the median window variance.
        exclusion_px: minimum distance (micrograph px) to a picked particle.
        generator: CPU generator.

    Returns:
        ``(m, box_out, box_out)`` float32 CPU windows (m >= 1).

    Raises:
        InputError: unreadable STAR or micrograph, no pixel size, micrographs smaller than
            a window, or no usable window.
    """
    mics_star = Path(mics_star)
    table, mic_pixel = _micrograph_table(mics_star)
    if mic_pixel is None or not mic_pixel > 0:
        raise InputError(f"{mics_star}: no rlnMicrographPixelSize (Å) in the optics or micrograph table")
    win = int(round(particle_box * particle_pixel_A / mic_pixel))
    excl = float(win if exclusion_px is None else exclusion_px)
    names = table["rlnMicrographName"].astype(str).tolist()
    coords: dict[str, np.ndarray] = {}
    if particles is not None and {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"} <= set(particles.columns):
        for name, grp in particles.groupby(particles["rlnMicrographName"].astype(str)):
            coords[Path(name).name] = grp[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    per_mic = max(1, n_windows // len(names))
    windows: list[np.ndarray] = []
    for row, name in enumerate(names, start=1):
        path = resolve_image_path(name, Path(project_dir))
        if not path.is_file():
            raise InputError(f"{mics_star}: row {row}: rlnMicrographName {name}: file not found (looked in {path})")
        try:
            with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                data = np.asarray(mrc.data, dtype=np.float32)
                if data.ndim == 3:
                    data = data[0]
                h, w = data.shape
                if h < win or w < win:
                    raise InputError(
                        f"{mics_star}: row {row}: micrograph {name} ({w} x {h} px) is smaller than one "
                        f"particle window ({win} px)"
                    )
                picks = coords.get(Path(name).name, np.zeros((0, 2)))
                found = 0
                for _ in range(per_mic * 4):
                    if found >= per_mic:
                        break
                    y0 = int(rng.integers(0, h - win + 1))
                    x0 = int(rng.integers(0, w - win + 1))
                    cx, cy = x0 + win / 2, y0 + win / 2
                    if picks.size and np.min(np.hypot(picks[:, 0] - cx, picks[:, 1] - cy)) < excl:
                        continue
                    windows.append(np.array(data[y0 : y0 + win, x0 : x0 + win]))
                    found += 1
        except (ValueError, OSError) as exc:
            raise InputError(f"{mics_star}: row {row}: micrograph {name}: not a readable MRC file ({exc})") from None
    if not windows:
        raise InputError(f"{mics_star}: no background window found away from the picked particles")
    stack = torch.from_numpy(np.stack(windows)).float()
    stack = fourier_crop_images(stack, box_out) if win != box_out else stack
    var = stack.reshape(stack.shape[0], -1).var(dim=1)
    stack = stack[var <= max_var_ratio * var.median()]
    stack = stack - stack.mean(dim=(-2, -1), keepdim=True)
    std = stack.reshape(stack.shape[0], -1).std(dim=1).clamp_min(1e-12)
    return (stack / std[:, None, None]).contiguous()


def noise_from_micrograph_windows(windows: torch.Tensor, variance: float = 1.0) -> BackgroundNoise:
    """Wrap micrograph windows ``(m, box, box)`` (std 1) as a ``"micrographs"`` noise source.

    Args:
        windows: from :func:`micrograph_noise_patches`.
        variance: background variance of the normalised particles (scales the windows).

    Returns:
        The :class:`BackgroundNoise`.
    """
    return BackgroundNoise("micrographs", int(windows.shape[-1]), variance, windows * math.sqrt(variance))
