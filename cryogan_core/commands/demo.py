"""The built-in example that ``cryogan denoise --demo`` and ``cryogan reconstruct --demo`` run on.

Torch-free at import: the click help texts read these settings, and ``cryogan --help``
should not wait for torch (about 3 s).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_SHIFT_PX", "DEMO_SNR_DB", "simulate_demo"]

DEMO_SNR_DB = -10.0
DEMO_SHIFT_PX = 2.0


def simulate_demo(output_dir: Path, n: int, seed: int, project_dir: Path | None) -> tuple[Path, Path]:
    """Simulate the built-in example that ``--demo`` runs a job on.

    ``n`` particles of the built-in procedural volume (asymmetric, 64 px, 3.54 Å/px) at uniform
    poses, ``DEMO_SNR_DB`` dB, shifts up to ``DEMO_SHIFT_PX`` px and random CTFs, written by
    :func:`~cryogan_core.commands.simulate.run_simulate` to ``output_dir/demo_data``.

    Args:
        output_dir: the job's output folder.
        n: number of particles.
        seed: simulation seed.
        project_dir: directory the simulated ``rlnImageName`` paths are relative to
            (default: the current directory).

    Returns:
        ``(particles.star, ground_truth_map.mrc)``: the particles, and the map they were
        simulated from (the denoiser's reference; CryoGAN's truth to score against).
    """
    from cryogan_core.commands.simulate import run_simulate  # torch

    sim_dir = Path(output_dir) / "demo_data"
    run_simulate(sim_dir, n, DEMO_SNR_DB, shift_px=DEMO_SHIFT_PX, seed=seed, project_dir=project_dir)
    return sim_dir / "particles.star", sim_dir / "ground_truth_map.mrc"
