"""``cryogan reconstruct``: the click command of the CryoGAN reconstruction (standalone use).

The science is :func:`cryogan_core.commands.reconstruct.run_reconstruct`; the RELION job is
:mod:`relion_external.reconstruct`. This module imports no torch until the command runs, so
``cryogan --help`` and option errors come at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cryogan_core.commands.demo import DEMO_SNR_DB, simulate_demo
from cryogan_core.commands.options import click_options, defaults_unless_given, options_from_mapping
from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.errors import InputError

__all__ = ["DEMO_N_PARTICLES", "DEMO_SETTINGS", "cli_command"]

DEMO_N_PARTICLES = 4000
DEMO_SETTINGS = {"box_train": 32, "max_minutes": 5.0}


@click.command("reconstruct")
@click.option("--in_parts", "--i", "star_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Particle STAR with CTF, or a cryoSPARC particle .cs (poses are ignored).")
@click.option("--o", "output_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--in_3dref", "ref_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Reference map for alignment and FSC after training (never used in training).")
@click.option("--in_mask", "--mask", "mask_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Mask multiplied into the volume (default: a sphere of the particle diameter).")
@click.option("--in_mics", "mics_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Micrograph STAR: noise windows are cut from the micrographs.")
@click.option("--project_dir", "--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Directory rlnImageName paths are relative to (default: current directory).")
@click.option("--restart", is_flag=True, help="Ignore an existing checkpoint.pt in --o and start again.")
@click.option("--demo", is_flag=True, help=(
    f"Simulate {DEMO_N_PARTICLES} particles of the built-in volume at {DEMO_SNR_DB:g} dB into <o>/demo_data and "
    f"reconstruct them, scored against the built-in truth (box_train {DEMO_SETTINGS['box_train']} and "
    f"max_minutes {DEMO_SETTINGS['max_minutes']:g} unless given)."))
@click.option("--j", "threads", default=2, show_default=True, help="CPU threads.")
@click_options(ReconstructOptions)
def cli_command(star_path: Path | None, output_dir: Path, ref_path: Path | None, mask_path: Path | None, mics_path: Path | None,
                project_dir: Path | None, restart: bool, demo: bool, threads: int, **kwargs: Any) -> None:
    """CryoGAN reconstruction without pose estimation: half maps, average, half-map FSC."""
    try:
        from cryogan_core.commands._common import set_threads  # torch: imported when the command runs
        from cryogan_core.commands.reconstruct import run_reconstruct

        set_threads(threads)
        if demo:
            defaults_unless_given(kwargs, DEMO_SETTINGS)
            star_path, truth = simulate_demo(output_dir, DEMO_N_PARTICLES, int(kwargs["seed"]), project_dir)
            ref_path = ref_path or truth
        elif star_path is None:
            raise InputError("give the particles with --in_parts (or run the built-in example with --demo)")
        opts = options_from_mapping(ReconstructOptions, kwargs)
        run_reconstruct(star_path, output_dir, opts, ref_path=ref_path, mask_path=mask_path, mics_path=mics_path,
                        project_dir=project_dir, resume=not restart)
    except InputError as exc:
        click.echo(f"ERROR: {' '.join(str(exc).split())}", err=True)
        raise SystemExit(1) from None
