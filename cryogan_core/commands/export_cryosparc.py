"""``cryogan export-cryosparc``: any RELION particle STAR → cryoSPARC ``particles.cs`` + ``.csg``.

Writes into ``--o``: ``particles.cs`` (numpy structured array; slots blob, ctf and
alignments3D when the STAR has the data), ``particles.csg`` (the result group that
cryoSPARC's "Import Result Group" job takes), float32 ``.mrcs`` stacks under
``cryosparc_stacks/`` and ``summary.json`` with the import instructions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from loguru import logger

from cryogan_core.errors import InputError
from cryogan_core.io.summary import write_summary

__all__ = ["run_export_cryosparc", "import_instructions", "cli_command"]


def import_instructions(csg_path: Path, folder_name: str) -> list[str]:
    """Step-by-step "Import Result Group" instructions for an exported folder.

    Args:
        csg_path: the ``.csg`` written.
        folder_name: the name the folder should get inside the cryoSPARC project.

    Returns:
        Lines of text, in order.
    """
    out_dir = csg_path.parent.absolute()
    return [
        f"1. Copy the whole folder, resolving symlinks, into your cryoSPARC project directory: "
        f"cp -rL {out_dir} <cryoSPARC project dir>/imports/{folder_name}",
        "2. In cryoSPARC: Job Builder -> Import Result Group.",
        f"3. Result group file path (.csg): <cryoSPARC project dir>/imports/{folder_name}/{csg_path.name} "
        f"(absolute, or relative to the project directory: imports/{folder_name}/{csg_path.name}).",
        "4. Queue the job; its output group 'particles' has the slots listed in the .csg "
        "(blob, ctf, alignments3D when present) and connects to any particle input.",
    ]


def volume_import_settings(maps: dict[str, Path], pixel_size_A: float) -> list[dict]:
    """cryoSPARC "Import 3D Volumes" settings for maps we wrote (one import job per map).

    Field names are cryoSPARC's job parameters (``volume_blob_path``, ``volume_out_name``,
    ``volume_psize``); see ``../shared/docs/cryosparc_interop.md``.

    Args:
        maps: volume type (``"map"``, ``"map_half_A"``, ``"map_half_B"``, ``"mask"``) ->
            path of the MRC file (made absolute here).
        pixel_size_A: voxel size of the maps in Å (as in their headers).

    Returns:
        One dict per map: ``job`` ("Import 3D Volumes"), ``volume_blob_path``,
        ``volume_out_name``, ``volume_psize``.
    """
    return [
        {"job": "Import 3D Volumes", "volume_blob_path": str(Path(path).absolute()), "volume_out_name": kind,
         "volume_psize": float(pixel_size_A)}
        for kind, path in maps.items()
    ]


def run_export_cryosparc(
    star_path: str | Path, output_dir: str | Path, project_dir: str | Path | None = None
) -> dict:
    """Export a RELION particle STAR to cryoSPARC (``particles.cs``, ``particles.csg``, stacks).

    See :func:`cryogan_core.io.cryosparc.write_cryosparc_particles` for the fields and
    conventions. The STAR itself is not copied (its relative image paths would not resolve
    from the new folder); its path is recorded in ``summary.json``.

    Args:
        star_path: particle STAR of any RELION version, with ``rlnImageName``.
        output_dir: folder to write into (created).
        project_dir: directory ``rlnImageName`` is relative to (default: current directory).

    Returns:
        The summary dict also written to ``output_dir/summary.json``: ``n_particles``,
        ``slots``, ``particles_cs``, ``particles_csg``, ``stacks_written``,
        ``stacks_reused``, ``source_star``, ``project_dir`` and ``cryosparc_import``
        (``job``, ``csg``, ``steps``).

    Raises:
        InputError: unreadable STAR, missing images, or values that cannot be exported.
    """
    star_path = Path(star_path)
    output_dir = Path(output_dir)
    proj = Path(project_dir) if project_dir is not None else Path.cwd()
    from cryogan_core.io.cryosparc import write_cryosparc_particles  # torch: imported when the command runs
    from cryogan_core.io.star import read_particles

    star = read_particles(star_path, require_ctf=False, require_images=True)
    export = write_cryosparc_particles(star, output_dir, proj)
    steps = import_instructions(export.csg_path, output_dir.absolute().name)
    summary = {
        "n_particles": export.n_particles,
        "slots": export.slots,
        "particles_cs": str(export.cs_path.absolute()),
        "particles_csg": str(export.csg_path.absolute()),
        "stacks_written": [str(p.absolute()) for p in export.stacks_written],
        "stacks_reused": [str(p.absolute()) for p in export.stacks_reused],
        "source_star": str(star_path.absolute()),
        "project_dir": str(proj.absolute()),
        "cryosparc_import": {"job": "Import Result Group", "csg": str(export.csg_path.absolute()), "steps": steps},
    }
    write_summary(output_dir / "summary.json", summary)
    logger.info(f"For cryoSPARC: run Import Result Group on {export.csg_path} (steps in summary.json)")
    return summary


@click.command("export-cryosparc")
@click.option("--i", "star_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Particle STAR (any RELION version) with rlnImageName.")
@click.option("--o", "output_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder (particles.cs, particles.csg, cryosparc_stacks/, summary.json).")
@click.option(
    "--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Directory that rlnImageName paths are relative to (RELION's project directory). Default: current directory.",
)
def cli_command(star_path: Path, output_dir: Path, project_dir: Path | None) -> None:
    """Write particles.cs + particles.csg (+ float32 stacks) for cryoSPARC's Import Result Group."""
    try:
        summary = run_export_cryosparc(star_path, output_dir, project_dir)
    except InputError as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{summary['n_particles']} particles, slots {', '.join(summary['slots'])}: {summary['particles_csg']}")
    click.echo("To import into cryoSPARC:")
    for line in summary["cryosparc_import"]["steps"]:
        click.echo(f"  {line}")
