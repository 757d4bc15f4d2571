"""Particle sets whose optics groups have different pixel sizes: the commands that need one
pixel size (back-projection, CryoGAN) refuse them with one line naming both sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import starfile

from cryogan_core.commands.backproject import run_backproject
from cryogan_core.commands.reconstruct import run_reconstruct
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.errors import InputError
from cryogan_core.io.particles import single_pixel_size_A


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project folder with 40 simulated particles (7 Å/px) under ``sim/`` and ``two_sizes.star``:
    the same STAR with every other particle in a second optics group at 7.5 Å/px."""
    root = tmp_path_factory.mktemp("pixel_sizes")
    run_simulate(root / "sim", n=40, snr_db=0.0, seed=3, box=16, pixel_size_A=7.0, project_dir=root)
    star = starfile.read(root / "sim/particles.star")
    optics, particles = star["optics"], star["particles"]
    particles.loc[particles.index % 2 == 1, "rlnOpticsGroup"] = 2
    second = optics.assign(rlnOpticsGroup=2, rlnOpticsGroupName="second", rlnImagePixelSize=7.5)
    starfile.write({"optics": pd.concat([optics, second], ignore_index=True), "particles": particles}, root / "two_sizes.star")
    return root


def test_one_pixel_size_is_returned_and_two_are_named() -> None:
    assert single_pixel_size_A("p.star", pd.DataFrame({"rlnImagePixelSize": [1.06, 1.06]}), "backproject") == 1.06
    with pytest.raises(InputError, match=r"^p\.star: particles have several pixel sizes \(1\.06, 1\.1 Å\); backproject needs one$"):
        single_pixel_size_A("p.star", pd.DataFrame({"rlnImagePixelSize": [1.1, 1.06, 1.1]}), "backproject")


@pytest.mark.parametrize(
    "command, name",
    [
        (lambda root, star: run_backproject(star, root / "bp", project_dir=root), "backproject"),
        (lambda root, star: run_reconstruct(star, root / "rec", {"box_train": 16}, project_dir=root), "reconstruct"),
    ],
    ids=["backproject", "reconstruct"],
)
def test_commands_that_need_one_pixel_size_refuse_two(project: Path, command: Callable[[Path, Path], dict], name: str) -> None:
    with pytest.raises(InputError, match=rf"two_sizes\.star: particles have several pixel sizes \(7, 7\.5 Å\); {name} needs one"):
        command(project, project / "two_sizes.star")
    assert not list(project.glob("bp/*.mrc")) and not list(project.glob("rec/*.mrc"))  # nothing written
