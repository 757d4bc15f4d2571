"""check-poses: synthetic and real beta-gal agreement, and that wrong conventions drop to chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryogan_core.commands.check_poses import particle_projection_cc, run_check_poses
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.mrc import read_map
from cryogan_core.io.star import read_particles
from cryogan_core.metrics.images import circular_mask
from cryogan_core.physics.ctf import CtfParams
from cryogan_core.physics.euler import euler_to_matrix, matrix_to_euler

BETAGAL_MAP = "betagal_5a1a_sim_relionframe_3.54A_box64.mrc"
BETAGAL_STAR = "betagal_particles_posed.star"


def _cc_variants(star_path: Path, map_path: Path, project_dir: Path, n: int) -> dict[str, float]:
    """Mean CC with the right conventions, with A transposed, and with the origin sign flipped."""
    df = read_particles(star_path, require_poses=True, require_images=True).particles.iloc[:n].reset_index(drop=True)
    imgs = torch.from_numpy(ParticleImages(df, project_dir, star_path).read(np.arange(len(df))))
    vol = torch.from_numpy(read_map(map_path)[0])
    box = imgs.shape[-1]
    pix = float(df["rlnImagePixelSize"].iloc[0])
    angles = torch.tensor(df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), dtype=torch.float32)
    origins = torch.tensor(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), dtype=torch.float32)
    ctf = CtfParams.from_particles(df)
    mask = circular_mask(box, 0.45 * box)
    transposed = matrix_to_euler(euler_to_matrix(angles).transpose(-1, -2))
    return {
        "right": particle_projection_cc(imgs, vol, angles, origins, ctf, pix, mask).mean().item(),
        "transposed": particle_projection_cc(imgs, vol, transposed, origins, ctf, pix, mask).mean().item(),
        "origin_flipped": particle_projection_cc(imgs, vol, angles, -origins, ctf, pix, mask).mean().item(),
    }


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project folder with 120 simulated particles (32 px, 7 Å/px, -5 dB, ±4 px shifts) under ``sim/``."""
    root = tmp_path_factory.mktemp("proj")
    run_simulate(root / "sim", n=120, snr_db=-5.0, shift_px=4.0, seed=5, box=32, pixel_size_A=7.0, project_dir=root)
    return root


def test_synthetic_true_poses_beat_shuffled(synthetic_set: Path) -> None:
    res = run_check_poses(synthetic_set / "sim/particles.star", synthetic_set / "sim/ground_truth_map.mrc", project_dir=synthetic_set)
    assert res["n_particles"] == 120
    assert res["cc_true_poses"] > 0.4
    assert res["cc_shuffled_poses"] < 0.15
    assert res["frac_true_better"] > 0.95


def test_synthetic_wrong_conventions_drop_to_chance(synthetic_set: Path) -> None:
    cc = _cc_variants(synthetic_set / "sim/particles.star", synthetic_set / "sim/ground_truth_map.mrc", synthetic_set, 120)
    assert cc["right"] > 0.4
    assert cc["transposed"] < 0.2
    assert cc["origin_flipped"] < 0.5 * cc["right"]


@pytest.mark.realdata
def test_real_betagal_poses_agree_with_the_map(betagal_dir: Path) -> None:
    res = run_check_poses(betagal_dir / BETAGAL_STAR, betagal_dir / BETAGAL_MAP, project_dir=betagal_dir, n_max=0)
    assert res["n_particles"] == 1211
    assert res["cc_true_poses"] >= 0.29
    assert res["cc_shuffled_poses"] <= 0.10


@pytest.mark.realdata
def test_real_betagal_transposed_rotation_or_flipped_origin_drop_to_shuffled_level(betagal_dir: Path) -> None:
    cc = _cc_variants(betagal_dir / BETAGAL_STAR, betagal_dir / BETAGAL_MAP, betagal_dir, 400)
    assert cc["right"] >= 0.29
    assert cc["transposed"] <= 0.10
    assert cc["origin_flipped"] <= 0.10
