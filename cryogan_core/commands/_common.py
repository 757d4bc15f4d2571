"""Helpers shared by the ``cryogan`` sub-commands: devices, threads, memory, maps matched to particles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from cryogan_core.errors import InputError
from cryogan_core.io.mrc import read_map
from cryogan_core.physics.resample import resample_map


def select_device(name: str = "auto") -> torch.device:
    """Pick the torch device: ``auto`` = CUDA when available, else CPU.

    Raises:
        InputError: if ``cuda`` is asked for and no GPU is visible, or the name is unknown.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is visible on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device {name}: not a torch device ({exc})") from None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def available_memory_bytes() -> int | None:
    """Memory this process may use (bytes): the machine's physical memory, or a smaller
    cgroup limit (containers, cluster jobs) where one is set; None where neither is known."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            sizes.append(int(text))
    return min(sizes) if sizes else None


def set_threads(n_threads: int) -> int:
    """Use ``n_threads`` CPU threads for torch (RELION's ``--j``), at most the CPUs available.

    More threads than cores make torch's OpenMP threads wait on each other: denoiser training
    at 64 px ran 28 particles/s with ``--j 8`` on 2 cores against 55 with ``--j 2``. RELION
    users often give ``--j`` for a whole node or for hyper-threads, so the excess is dropped
    with a log line.

    Args:
        n_threads: threads asked for; values < 1 mean 1.

    Returns:
        The number of threads torch now uses.
    """
    asked = max(1, int(n_threads))
    cpus = available_cpus()
    used = min(asked, cpus)
    if used < asked:
        logger.info(f"--j {asked}: {cpus} CPU(s) available to this job; using {used} thread(s) (more threads than cores slow torch down)")
    torch.set_num_threads(used)
    return used


def map_for_particles(
    map_path: str | Path, pixel_size_A: float, box: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Read a map and match it to the particles' pixel size and box.

    A map with another voxel size or box is resampled in Fourier space
    (:func:`cryogan_core.physics.resample.resample_map`) and a log line says so; it is
    never used silently at the wrong scale.

    Args:
        map_path: MRC map.
        pixel_size_A: the particles' pixel size in Å.
        box: the particles' box in pixels.
        device: where the returned volume lives.

    Returns:
        ``(box, box, box)`` float32 tensor ``(z, y, x)``.

    Raises:
        InputError: if the map has no voxel size in its header (and it cannot be assumed).
    """
    volume, voxel_A = read_map(map_path)
    d = volume.shape[0]
    if voxel_A <= 0:
        raise InputError(f"{map_path}: the header has no voxel size")
    vol = torch.from_numpy(np.ascontiguousarray(volume)).float()
    if abs(voxel_A - pixel_size_A) > 1e-3 * pixel_size_A or d != box:
        logger.info(
            f"Resampling {map_path} from {d} px at {voxel_A:.4f} Å to {box} px at {pixel_size_A:.4f} Å "
            "(Fourier resampling) to match the particles"
        )
        vol = resample_map(vol, voxel_A, pixel_size_A, box)
    return vol.to(device)
