"""Particles with their CTF applied at extraction (``rlnCtfDataAreCtfPremultiplied`` or
``rlnCtfDataArePhaseFlipped`` 1) are refused by every command that models the CTF."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import starfile

from cryogan_core.commands.backproject import run_backproject
from cryogan_core.commands.check_poses import run_check_poses
from cryogan_core.commands.denoise import DenoiseInputs, run_denoise
from cryogan_core.commands.reconstruct import run_reconstruct
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.errors import InputError
from cryogan_core.io.particles import CTF_MODIFIED_FLAGS, reject_ctf_modified_images

PREMULTIPLIED = "rlnCtfDataAreCtfPremultiplied"
PHASE_FLIPPED = "rlnCtfDataArePhaseFlipped"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project folder with 40 simulated particles under ``sim/`` and, for each flag, ``<flag>.star``:
    the same STAR with a second optics group carrying the flag, holding every other particle."""
    root = tmp_path_factory.mktemp("ctfmod")
    run_simulate(root / "sim", n=40, snr_db=0.0, seed=3, box=16, pixel_size_A=7.0, project_dir=root)
    star = starfile.read(root / "sim/particles.star")
    optics, particles = star["optics"], star["particles"]
    particles.loc[particles.index % 2 == 1, "rlnOpticsGroup"] = 2
    for flag in (PREMULTIPLIED, PHASE_FLIPPED):
        flagged = optics.copy()
        flagged["rlnOpticsGroup"], flagged["rlnOpticsGroupName"], flagged[flag] = 2, "flagged", 1
        both = pd.concat([optics.assign(**{flag: 0}), flagged], ignore_index=True)
        starfile.write({"optics": both, "particles": particles}, root / f"{flag}.star")
    return root


@pytest.mark.parametrize("flag", [PREMULTIPLIED, PHASE_FLIPPED])
def test_the_check_names_the_file_the_column_and_the_count(flag: str) -> None:
    reject_ctf_modified_images("p.star", pd.DataFrame({"rlnDefocusU": [1e4, 2e4]}))  # flags absent: plain images
    reject_ctf_modified_images("p.star", pd.DataFrame({flag: [0, 0]}))
    with pytest.raises(InputError, match=rf"^p\.star: column {flag} is 1 for 1 of 3 particles: images {CTF_MODIFIED_FLAGS[flag][:12]}"):
        reject_ctf_modified_images("p.star", pd.DataFrame({flag: [0, 1, 0]}))


@pytest.mark.parametrize(
    "command",
    [
        lambda root, star: run_check_poses(star, root / "sim/ground_truth_map.mrc", project_dir=root),
        lambda root, star: run_backproject(star, root / "bp", project_dir=root),
        lambda root, star: run_denoise(DenoiseInputs(star, root / "den", root / "sim/ground_truth_map.mrc", project_dir=root), {}),
        lambda root, star: run_reconstruct(star, root / "rec", {"box_train": 16}, project_dir=root),
    ],
    ids=["check-poses", "backproject", "denoise", "reconstruct"],
)
def test_every_ctf_command_refuses_premultiplied_particles(project: Path, command: Callable[[Path, Path], dict]) -> None:
    with pytest.raises(InputError, match=rf"{PREMULTIPLIED}\.star: column {PREMULTIPLIED} is 1 for 20 of 40 particles"):
        command(project, project / f"{PREMULTIPLIED}.star")


def test_phase_flipped_optics_groups_are_read_and_refused(project: Path) -> None:
    with pytest.raises(InputError, match=rf"column {PHASE_FLIPPED} is 1 for 20 of 40 particles: images phase-flipped"):
        run_check_poses(project / f"{PHASE_FLIPPED}.star", project / "sim/ground_truth_map.mrc", project_dir=project)


def test_the_unflagged_set_passes(project: Path) -> None:
    summary = run_check_poses(project / "sim/particles.star", project / "sim/ground_truth_map.mrc", project_dir=project)
    assert summary["cc_true_poses"] > summary["cc_shuffled_poses"] + 0.2
