"""CTF-premultiplied particles (``rlnCtfDataAreCtfPremultiplied 1``) are refused by every command that models the CTF."""

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
from cryogan_core.io.particles import reject_ctf_premultiplied

COLUMN = "rlnCtfDataAreCtfPremultiplied"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project folder with 40 simulated particles under ``sim/`` and ``premultiplied.star``: the
    same STAR with a second optics group marked premultiplied, holding every other particle."""
    root = tmp_path_factory.mktemp("premult")
    run_simulate(root / "sim", n=40, snr_db=0.0, seed=3, box=16, pixel_size_A=7.0, project_dir=root)
    star = starfile.read(root / "sim/particles.star")
    optics, particles = star["optics"], star["particles"]
    premult = optics.copy()
    premult["rlnOpticsGroup"] = 2
    premult["rlnOpticsGroupName"] = "premultiplied"
    premult[COLUMN] = 1
    particles.loc[particles.index % 2 == 1, "rlnOpticsGroup"] = 2
    starfile.write({"optics": pd.concat([optics, premult], ignore_index=True), "particles": particles}, root / "premultiplied.star")
    return root


def test_the_check_names_the_file_the_column_and_the_count() -> None:
    reject_ctf_premultiplied("p.star", pd.DataFrame({"rlnDefocusU": [1e4, 2e4]}))  # column absent: not premultiplied
    reject_ctf_premultiplied("p.star", pd.DataFrame({COLUMN: [0, 0]}))
    with pytest.raises(InputError, match=rf"^p\.star: column {COLUMN} is 1 for 1 of 3 particles"):
        reject_ctf_premultiplied("p.star", pd.DataFrame({COLUMN: [0, 1, 0]}))


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
    with pytest.raises(InputError, match=rf"premultiplied\.star: column {COLUMN} is 1 for 20 of 40 particles"):
        command(project, project / "premultiplied.star")


def test_the_unmodified_set_passes_the_check(project: Path) -> None:
    summary = run_check_poses(project / "sim/particles.star", project / "sim/ground_truth_map.mrc", project_dir=project)
    assert summary["cc_true_poses"] > summary["cc_shuffled_poses"] + 0.2
