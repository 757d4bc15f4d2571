"""The ``cryogan`` command line (a click group): simulate, check-poses, backproject, ...

Every command logs progress to stderr, writes its numbers to ``summary.json`` in its output
folder (or prints JSON with ``--json``), and turns bad input into one ``ERROR:`` line and
exit status 1.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click
from loguru import logger

from cryogan_core import __version__
from cryogan_core.commands.demo import DEMO_SNR_DB
from cryogan_core.commands.denoise_options import DenoiseOptions
from cryogan_core.commands.options import click_options
from cryogan_core.errors import InputError


def configure_logging(verbose: bool = False) -> None:
    """Send loguru's log lines to stderr (INFO, or DEBUG with ``verbose``)."""
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO", format="{time:HH:mm:ss} | {level: <7} | {message}")


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: an :class:`InputError` becomes ``ERROR: <message>`` on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        """Call ``func``; turn an :class:`InputError` into one line and exit status 1."""
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            click.echo(f"ERROR: {exc}", err=True)
            sys.exit(1)

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="cryogan")
@click.option("--verbose", is_flag=True, help="Debug-level logging.")
def main(verbose: bool) -> None:
    """cryogan: reference-guided cGAN denoising and CryoGAN reconstruction for RELION/cryoSPARC."""
    configure_logging(verbose)


_device = click.option("--device", default="auto", show_default=True, help="torch device: auto (CUDA if present), cpu, cuda, cuda:1 ...")
_threads = click.option("--j", "threads", default=2, show_default=True, help="CPU threads (as RELION's --j).")
_project = click.option(
    "--project-dir", "--project_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Directory that rlnImageName paths are relative to (RELION's project directory). Default: current directory.",
)


@main.command()
@click.option("--map", "map_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Map to simulate from (MRC). Default: the built-in procedural test volume.")
@click.option("--o", "output_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--n", "n", default=1000, show_default=True, help="Number of particles.")
@click.option("--snr-db", default=-10.0, show_default=True, help="SNR in dB: 10 log10(var(clean)/var(noise)) (Gupta et al. 2021).")
@click.option("--poses-from", type=click.Path(dir_okay=False, path_type=Path), default=None, help="STAR whose rlnAngleRot/Tilt/Psi rows give the poses (default: uniform over SO(3)).")
@click.option("--ctf-from", type=click.Path(dir_okay=False, path_type=Path), default=None, help="STAR whose CTF rows give the CTFs (default: random defocus 1.0-2.5 µm, 300 kV, Cs 2.7 mm, Q0 0.1).")
@click.option("--shift-px", default=0.0, show_default=True, help="Maximum origin shift (pixels), uniform on each axis.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed.")
@click.option("--box", default=64, show_default=True, help="Box of the built-in volume (without --map).")
@click.option("--pixel-size", "pixel_size_A", default=3.54, show_default=True, help="Pixel size (Å) of the built-in volume (without --map).")
@_project
@_device
@_threads
@user_errors
def simulate(map_path: Path | None, output_dir: Path, n: int, snr_db: float, poses_from: Path | None, ctf_from: Path | None,
             shift_px: float, seed: int, box: int, pixel_size_A: float, project_dir: Path | None, device: str, threads: int) -> None:
    """Simulate a particle set with known truth (particles.star, particles.mrcs, clean.mrcs)."""
    from cryogan_core.commands._common import select_device, set_threads
    from cryogan_core.commands.simulate import run_simulate

    set_threads(threads)
    run_simulate(
        output_dir, n, snr_db, map_path=map_path, poses_from=poses_from, ctf_from=ctf_from, shift_px=shift_px,
        seed=seed, project_dir=project_dir, box=box, pixel_size_A=pixel_size_A, device=select_device(device),
    )


@main.command("check-poses")
@click.option("--i", "star_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Particle STAR with poses and CTF.")
@click.option("--map", "map_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The map the poses refer to.")
@click.option("--n", "n_max", default=2000, show_default=True, help="Use at most this many particles (random subset; 0 = all).")
@click.option("--mask-radius-px", default=None, type=float, help="Radius of the circular mask (default 0.45 × box).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the subset and of the shuffle.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the text report.")
@_project
@_device
@_threads
@user_errors
def check_poses(star_path: Path, map_path: Path, n_max: int, mask_radius_px: float | None, seed: int, as_json: bool,
                project_dir: Path | None, device: str, threads: int) -> None:
    """Mean CC between particles and the map's projections at their poses, vs shuffled poses."""
    from cryogan_core.commands._common import select_device, set_threads
    from cryogan_core.commands.check_poses import run_check_poses

    set_threads(threads)
    result = run_check_poses(star_path, map_path, project_dir, n_max, mask_radius_px, seed, device=select_device(device))
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"particles:                 {result['n_particles']}")
        click.echo(f"mean CC, own poses:        {result['cc_true_poses']:.3f}")
        click.echo(f"mean CC, shuffled poses:   {result['cc_shuffled_poses']:.3f}")
        click.echo(f"own pose beats shuffled:   {100 * result['frac_true_better']:.1f}% of particles")


@main.command()
@click.option("--i", "star_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Particle STAR with poses and CTF.")
@click.option("--o", "output_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--wiener-constant", default=0.1, show_default=True, help="CTF-correction regularisation, relative to the mean CTF² weight.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the half-set split when rlnRandomSubset is absent.")
@_project
@_device
@_threads
@user_errors
def backproject(star_path: Path, output_dir: Path, wiener_constant: float, seed: int, project_dir: Path | None, device: str,
                threads: int) -> None:
    """Reconstruct both half maps with known poses; FSC and resolution at 0.143."""
    from cryogan_core.commands._common import select_device, set_threads
    from cryogan_core.commands.backproject import run_backproject

    set_threads(threads)
    run_backproject(star_path, output_dir, project_dir, wiener_constant, seed, device=select_device(device))


DEMO_N_PARTICLES = 2000
DEMO_N_STEPS = 400


@main.command()
@click.option("--i", "--in_parts", "star_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Refined particles (STAR: RELION 3.0-5.0).")
@click.option("--map", "--in_3dref", "map_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="The refined map the poses refer to.")
@click.option("--mask", "--in_mask", "mask_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Optional 3D mask (sets the 2D mask radius).")
@click.option("--o", "output_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--demo", is_flag=True, help=f"Simulate {DEMO_N_PARTICLES} particles of the built-in volume at {DEMO_SNR_DB:g} dB into <o>/demo_data and denoise them ({DEMO_N_STEPS} steps unless --n-steps is given).")
@_project
@_threads
@click_options(DenoiseOptions)
@user_errors
def denoise(star_path: Path | None, map_path: Path | None, mask_path: Path | None, output_dir: Path, demo: bool,
            project_dir: Path | None, threads: int, **options: Any) -> None:
    """Train the cGAN denoiser on refined particles (half set 1), report on half set 2, denoise all."""
    from cryogan_core.commands._common import set_threads
    from cryogan_core.commands.denoise import DenoiseInputs, run_denoise
    from cryogan_core.commands.options import defaults_unless_given
    from cryogan_core.commands.demo import simulate_demo

    set_threads(threads)
    project_dir = project_dir or Path.cwd()
    if demo:
        star_path, map_path = simulate_demo(output_dir, DEMO_N_PARTICLES, int(options["seed"]), project_dir)
        defaults_unless_given(options, {"n_steps": DEMO_N_STEPS})
    elif star_path is None:
        raise InputError("give the particles with --i (or run the built-in example with --demo)")
    run_denoise(DenoiseInputs(star_path, output_dir, map_path, mask_path, project_dir), options)


def _register_commands() -> None:
    """Add the sub-commands that live in their own modules (one module per command)."""
    from cryogan_core.commands.export_cryosparc import cli_command as export_cryosparc
    from cryogan_core.commands.reconstruct_cli import cli_command as reconstruct

    main.add_command(export_cryosparc)
    main.add_command(reconstruct)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
