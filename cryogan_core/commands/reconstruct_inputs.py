"""``cryogan reconstruct``'s inputs: particles, noise source, SNR and samplings of each half set.

The pieces :func:`cryogan_core.commands.reconstruct.run_reconstruct` assembles before
training: the particle table's checks (one pixel size, no CTF-premultiplied or phase-flipped data), the
training boxes (``--box_train``, ``--box_final``), the particles read, Fourier-cropped and
normalised as RELION does, their pose-free SNR, and each half set's noise source
(``--noise``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from loguru import logger

from cryogan_core.commands.reconstruct_options import MIN_BOX, ReconstructOptions
from cryogan_core.errors import InputError
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.particles import check_ctf_columns, single_pixel_size_A
from cryogan_core.metrics.images import background_signal_and_noise_variance, normalize_background, snr_db
from cryogan_core.physics.micrograph_noise import noise_from_micrograph_windows
from cryogan_core.physics.noise import BackgroundNoise, CroppedNoise, background_variance
from cryogan_core.physics.resample import fourier_crop_images
from cryogan_core.train.cryogan_simulator import SimulationPriors

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class HalfData:
    """The inputs of one half set at the training sampling.

    Attributes:
        label: 1 or 2.
        rows: ``(n,)`` rows of the particle table in this half.
        images: ``(n, d, d)`` float32 normalised particles (CPU).
        priors: the simulation priors of this half.
        signal_variance: estimated signal variance inside the particle radius.
    """

    label: int
    rows: np.ndarray
    images: torch.Tensor
    priors: SimulationPriors
    signal_variance: float


#: Bytes of particles read at their own box for the SNR estimate and the noise source.
NOISE_SOURCE_BYTES = 200 * 2**20

#: Fraction of the memory the particles held for training (both half sets) may take.
PARTICLE_MEMORY_FRACTION = 0.25


def max_particles_in_memory(box: int, memory_bytes: int | None) -> int | None:
    """The most particles whose float32 images of ``box²`` pixels fit in ``PARTICLE_MEMORY_FRACTION``
    of ``memory_bytes`` (CryoGAN holds every particle it trains on, at the training box).

    Args:
        box: the largest training box of the run (px; ``box_final`` when given).
        memory_bytes: the memory available (:func:`~cryogan_core.commands._common.available_memory_bytes`),
            or None.

    Returns:
        The number of particles (1,000,000 of 38 px take 5.8 GB; of 128 px, 66 GB), or None
        when ``memory_bytes`` is None.
    """
    if memory_bytes is None:
        return None
    return int(PARTICLE_MEMORY_FRACTION * memory_bytes // (4 * box * box))


def load_images(images: ParticleImages, rows: np.ndarray, box_out: int, radius_px: float,
                should_stop: Callable[[], None] | None = None, on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Particles read, Fourier-cropped and normalised as RELION does.

    Args:
        images: the particle stacks.
        rows: ``(n,)`` int rows of the particle table.
        box_out: box to Fourier-crop to (px; the particles' own box reads them as they are).
        radius_px: particle radius at ``box_out`` (px): outside it the background is brought
            to mean 0, std 1 (RELION ``relion_preprocess --norm``).
        should_stop: called before each batch of 512 (raises to abort).
        on_batch: called after each batch with its number of particles (progress lines).

    Returns:
        ``(n, box_out, box_out)`` float32 CPU tensor, read 512 particles at a time.

    Raises:
        InputError: an unreadable stack or image index (from :class:`ParticleImages`).
    """
    out = torch.empty((len(rows), box_out, box_out), dtype=torch.float32)
    for start in range(0, len(rows), 512):
        if should_stop is not None:
            should_stop()
        chunk = rows[start : start + 512]
        imgs = torch.from_numpy(images.read(chunk))
        if imgs.shape[-1] != box_out:
            imgs = fourier_crop_images(imgs, box_out)
        out[start : start + len(chunk)] = normalize_background(imgs, radius_px)
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def check_star(star_path: Path, df: pd.DataFrame) -> float:
    """The particles' one pixel size (Å), after checking the table suits CryoGAN.

    Args:
        star_path: the particle file (named in errors).
        df: its particle table with ``rlnImagePixelSize`` (optics merged).

    Returns:
        The pixel size in Å.

    Raises:
        InputError: several pixel sizes, ``rlnCtfDataAreCtfPremultiplied`` or
            ``rlnCtfDataArePhaseFlipped`` 1 on any row, or CTF columns in another unit
            (:func:`~cryogan_core.io.particles.check_ctf_columns`).
    """
    pixel_A = single_pixel_size_A(star_path, df, "reconstruct")
    check_ctf_columns(star_path, df)
    return pixel_A


#: Fraction of particles off-centre beyond the shift prior above which the job warns.
ORIGINS_OUTSIDE_PRIOR_WARN = 0.2


def origins_outside_prior(df: pd.DataFrame, pixel_A: float, shift_prior: str, shift_px: float) -> tuple[float, float] | None:
    """How far the input's own origins spread beyond the simulator's shift prior.

    RELION's Class2D, Refine3D and re-extraction leave each particle's offset from the box
    centre in ``rlnOriginXAngst/YAngst``. CryoGAN ignores them but draws the simulated
    particles' shifts from its prior: when the particles sit further off-centre than that,
    the critic can tell them apart by position. On the 1,211 real β-gal particles (origins
    σ 3.4 px, 79 % beyond ±2 px on an axis) the map reached 46 Å against the known map with
    ``shift_prior star`` and 52 Å with the default ±2 px (docs/cryogan_benchmarks.md, stop 35).

    Args:
        df: particle table; without both origin columns nothing is checked.
        pixel_A: the particles' pixel size (Å).
        shift_prior: ``uniform`` (±``shift_px`` per axis), ``gaussian`` (σ ``shift_px``;
            counted outside ±2σ), ``star`` or ``none`` (±0.5 px).
        shift_px: the prior's half-width or σ in the particles' pixels.

    Returns:
        ``(fraction, sigma_px)``: the fraction of particles with an origin component outside
        the prior's range and the origins' standard deviation (px, both axes pooled), or
        None when there are no origins, they are all zero, or ``shift_prior`` is ``star``.

    Raises:
        ValueError: ``pixel_A`` not positive.
    """
    if pixel_A <= 0:
        raise ValueError(f"pixel size must be positive, got {pixel_A}")
    cols = ["rlnOriginXAngst", "rlnOriginYAngst"]
    if shift_prior == "star" or not all(c in df for c in cols):
        return None
    origins_px = df[cols].to_numpy(dtype=float) / pixel_A
    if not np.any(origins_px):
        return None
    limit = {"uniform": shift_px, "gaussian": 2.0 * shift_px}.get(shift_prior, 0.5)
    outside = float(np.mean(np.any(np.abs(origins_px) > limit + 1e-6, axis=1)))
    return outside, float(origins_px.std())


#: Particle SNR (dB) below which the README measured maps that move by 10 Å with the seed (the job warns).
LOW_SNR_DB = -15.0


def estimate_snr(images: ParticleImages, rows: np.ndarray, box: int, radius_px: float, seed: int) -> tuple[float, int]:
    """Pose-free SNR of the particles (dB) at their own box, and how many were read.

    Up to ``NOISE_SOURCE_BYTES`` of particles drawn at random from ``rows`` are normalised
    as RELION does and go through
    :func:`~cryogan_core.metrics.images.background_signal_and_noise_variance` (whole-box
    variance against the variance outside ``radius_px``) and
    :func:`~cryogan_core.metrics.images.snr_db` (Gupta et al. 2021, Sec. V).

    Args:
        images: the particle stacks.
        rows: ``(n,)`` int rows of the particle table to draw from.
        box: the particles' box (px).
        radius_px: particle radius at that box (px).
        seed: seed of the draw.

    Returns:
        ``(snr_db, n_read)``; ``-inf`` dB when no signal is found.

    Raises:
        InputError: an unreadable stack or no background pixel.
    """
    n = min(len(rows), max(200, NOISE_SOURCE_BYTES // (4 * box * box)))
    pick = np.sort(np.random.default_rng(seed).permutation(len(rows))[:n])
    signal_var, noise_var = background_signal_and_noise_variance(load_images(images, rows[pick], box, radius_px), radius_px)
    return snr_db(signal_var, noise_var), n


def build_noise(opts: ReconstructOptions, imgs: torch.Tensor, radius_t: float, mics_windows: torch.Tensor | None,
                 gen: torch.Generator, full: tuple[torch.Tensor, float] | None = None) -> BackgroundNoise | CroppedNoise:
    """The noise source of one half set (see ``--noise``).

    Args:
        opts: the job's options.
        imgs: ``(n, b, b)`` normalised particles at the training box b.
        radius_t: particle radius (training px).
        mics_windows: micrograph windows at the training box, or None.
        gen: CPU generator of the patch selection.
        full: ``(images, radius_px)`` at the particles' own box when it is larger than the
            training box: patch and white noise are then made there and Fourier-cropped
            like the particles (:class:`~cryogan_core.physics.noise.CroppedNoise`), which
            keeps the noise spectrum of the cropped particles, Nyquist included.

    Returns:
        The noise source at the training box.

    Raises:
        InputError: ``--noise micrographs`` without micrographs.
    """
    mode = opts.noise
    if mode == "auto":
        mode = "micrographs" if mics_windows is not None else "patches"
    if mode == "micrographs":
        if mics_windows is None:
            raise InputError("--noise micrographs needs --in_mics (a micrograph STAR)")
        noise = BackgroundNoise.from_particles(imgs, radius_t)  # for the variance
        return noise_from_micrograph_windows(mics_windows, noise.variance)
    variance = background_variance(imgs, radius_t)
    src_imgs, src_radius = full if full is not None else (imgs, radius_t)
    if mode == "white":
        source = BackgroundNoise("white", src_imgs.shape[-1], background_variance(src_imgs, src_radius))
    else:
        source = BackgroundNoise.from_particles(src_imgs, src_radius, generator=gen)
        if source.mode == "white":
            logger.warning(
                f"No background patch fits outside the particle radius ({src_radius:.1f} px in a {src_imgs.shape[-1]} px box): "
                "using white Gaussian noise of the background variance"
            )
    if full is None:
        return source
    return CroppedNoise.from_source(source, int(imgs.shape[-1]), variance, seed=opts.seed)


@dataclass(frozen=True)
class Sampling:
    """One training sampling: box (px), pixel size (Å) and particle radius (training px)."""

    box: int
    pixel_A: float
    radius_px: float


#: Training Nyquist (Å) that ``box_train 0`` (auto) aims for: the benchmarks' choice (box 32 of
#: the 3.54-Å β-gal particles, 14.2 Å; larger training boxes gained nothing in a CPU hour,
#: docs/cryogan_benchmarks.md, "Coarse to fine"), as cryoSPARC's ab initio caps its resolution.
AUTO_TRAIN_NYQUIST_A = 14.0


def auto_training_box(box: int, pixel_A: float, nyquist_A: float = AUTO_TRAIN_NYQUIST_A) -> int:
    """The training box of ``box_train 0``: the even box whose Nyquist is nearest ``nyquist_A``.

    Fourier cropping a ``box``-px particle of ``pixel_A`` Å/px to ``b`` px gives pixels of
    ``pixel_A * box / b`` Å and a Nyquist of twice that, so ``b = 2 * box * pixel_A / nyquist_A``,
    rounded to the nearest even box, at least ``MIN_BOX`` and never above ``box`` (no padding:
    particles already coarser than ``nyquist_A`` train at their own box).

    Args:
        box: the particles' box (px).
        pixel_A: their pixel size (Å/px).
        nyquist_A: the training Nyquist aimed for (Å).

    Returns:
        The training box (px); e.g. 32 for 64-px particles of 3.54 Å (Nyquist 14.2 Å), 38 for
        256 px of 1.06 Å, 24 for 24 px of 8 Å.
    """
    b = 2 * round(box * pixel_A / nyquist_A)
    return int(min(box, max(MIN_BOX, b)))


def training_boxes(opts: ReconstructOptions, box: int, pixel_A: float, star_path: Path) -> list[int]:
    """The training boxes, first to last: ``[box_train]`` or ``[box_train, box_final]``.

    ``box_train 0`` is :func:`auto_training_box`.

    Args:
        opts: the job options (``box_train``, ``box_final``).
        box: the particles' box (px).
        pixel_A: their pixel size (Å/px).
        star_path: the particle file (named in errors).

    Raises:
        InputError: a box larger than the particles' box, below ``MIN_BOX``, or a
            ``box_final`` not larger than ``box_train``.
    """
    d = auto_training_box(box, pixel_A) if opts.box_train == 0 else opts.box_train
    if d > box:
        raise InputError(f"--box_train {d}: larger than the particles' box ({box} px); it can only crop")
    if d < MIN_BOX:
        raise InputError(f"{star_path}: the particles' box ({box} px) is below {MIN_BOX} px; the critic needs at least {MIN_BOX}")
    if opts.box_final == 0:
        return [d]
    if opts.box_final > box:
        raise InputError(f"--box_final {opts.box_final}: larger than the particles' box ({box} px); it can only crop")
    if opts.box_final <= d:
        raise InputError(f"--box_final {opts.box_final}: must be larger than the first training box ({d} px), or 0")
    return [d, opts.box_final]
