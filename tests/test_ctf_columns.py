"""The CTF columns every command that models the CTF checks first: particles with their CTF
applied at extraction (``rlnCtfDataAreCtfPremultiplied`` or ``rlnCtfDataArePhaseFlipped`` 1)
and CTF values in another unit than RELION's are refused with one line."""

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
from cryogan_core.io.particles import CTF_MODIFIED_FLAGS, check_ctf_values, reject_ctf_modified_images
from cryogan_core.io.star import read_particles

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


def _table(**changes: list[float]) -> pd.DataFrame:
    """Three particles with RELION-unit CTF columns (300 kV, 2.7 mm, 0.1, 1.2-1.6 µm underfocus), then ``changes``."""
    df = pd.DataFrame({"rlnVoltage": [300.0] * 3, "rlnSphericalAberration": [2.7] * 3, "rlnAmplitudeContrast": [0.1] * 3,
                       "rlnDefocusU": [12000.0, 15000.0, 16000.0], "rlnDefocusV": [11500.0, 14000.0, 15500.0]})
    for col, values in changes.items():
        df[col] = values
    return df


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rlnVoltage": [300.0, 300000.0, 300.0]}, r"row 2: rlnVoltage 300000 is not in kV"),
        ({"rlnSphericalAberration": [2700.0] * 3}, r"row 1: rlnSphericalAberration 2700 is not in mm"),
        ({"rlnAmplitudeContrast": [0.1, 0.1, 10.0]}, r"row 3: rlnAmplitudeContrast 10 is not a fraction in \[0, 1\)"),
        ({"rlnDefocusU": [1.2, 1.5, 1.6], "rlnDefocusV": [1.15, 1.4, 1.55]}, r"columns rlnDefocusU/V: median defocus 1\.45 Å.*these look like µm"),
        ({"rlnVoltage": [float("nan")] * 3}, r"row 1: rlnVoltage nan is not in kV"),
    ],
    ids=["volts", "cs-in-um", "percent", "defocus-in-um", "nan"],
)
def test_ctf_values_in_another_unit_are_refused_naming_row_column_and_value(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=rf"^p\.star: {message}"):
        check_ctf_values("p.star", _table(**changes))


def test_relion_units_pass_and_mostly_overfocus_is_a_warning(log_messages: list[str]) -> None:
    check_ctf_values("p.star", _table())
    check_ctf_values("p.star", _table(rlnSphericalAberration=[0.01] * 3, rlnAmplitudeContrast=[0.0] * 3, rlnVoltage=[60.0] * 3))
    assert not any("negative defocus" in m for m in log_messages)
    check_ctf_values("p.star", _table(rlnDefocusU=[-12000.0, -15000.0, 16000.0], rlnDefocusV=[-11500.0, -14000.0, 15500.0]))
    assert any("p.star: 67 % of the particles have a negative defocus" in m for m in log_messages)


def test_the_real_betagal_ctf_passes(betagal_dir: Path) -> None:
    star = betagal_dir / "betagal_particles_posed.star"
    check_ctf_values(star, read_particles(star, require_ctf=True).particles)


def test_a_job_refuses_defocus_in_um(project: Path) -> None:
    star = starfile.read(project / "sim/particles.star")
    star["particles"]["rlnDefocusU"] /= 1e4
    star["particles"]["rlnDefocusV"] /= 1e4
    starfile.write(star, project / "defocus_um.star")
    with pytest.raises(InputError, match=r"defocus_um\.star: columns rlnDefocusU/V: median defocus .* these look like µm"):
        run_check_poses(project / "defocus_um.star", project / "sim/ground_truth_map.mrc", project_dir=project)
    # simulate takes only the CTF parameters of --ctf-from, and checks their units too
    with pytest.raises(InputError, match=r"defocus_um\.star: columns rlnDefocusU/V: median defocus"):
        run_simulate(project / "sim_um", n=4, snr_db=0.0, seed=1, box=16, pixel_size_A=7.0, ctf_from=project / "defocus_um.star")
