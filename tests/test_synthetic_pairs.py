"""Synthetic training pairs: the map at new poses, with the training particles' own noise."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from cryogan_core.commands._common import map_for_particles
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.io.particles import load_particles
from cryogan_core.metrics.images import circular_mask, masked_pearson
from cryogan_core.train.pairs import PairSettings, build_pairs, default_bg_radius_px, predictions, train_box_ctf
from cryogan_core.physics.noise import random_dihedral
from cryogan_core.physics.resample import fourier_crop_images
from cryogan_core.train.synthetic_pairs import synthetic_pairs


class ArrayImages:
    """Particle images held in memory (what ``synthetic_pairs`` reads: ``read(rows)``)."""

    def __init__(self, stack: np.ndarray) -> None:
        self.stack = stack.astype(np.float32)
        self.box = stack.shape[-1]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The images at ``rows`` of the in-memory stack."""
        return self.stack[np.asarray(rows)]


def checkerboard(box: int) -> torch.Tensor:
    """``(-1)^(x+y)``: a pattern no projection of a smooth map has."""
    y, x = np.indices((box, box))
    return torch.from_numpy(((-1.0) ** (x + y)).astype(np.float32))


@pytest.fixture(scope="module", params=[32, 33], ids=["even", "odd"])
def particles(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Particles of a simulated set whose images are made here: the map's CTF'd prediction
    plus white noise for the training rows; the other rows also carry a strong checkerboard."""
    box = request.param
    root = tmp_path_factory.mktemp(f"syn{box}")
    run_simulate(root / "sim", n=80, snr_db=0.0, shift_px=1.0, seed=3, box=box, pixel_size_A=7.0, project_dir=root)
    df = load_particles(root / "sim/particles.star", require_poses=True).particles.reset_index(drop=True)
    volume = map_for_particles(root / "sim/ground_truth_map.mrc", 7.0, box)

    def volume_for_pixel(p: float) -> torch.Tensor:
        """The test volume whatever the pixel size."""
        return volume

    clean = predictions(df, volume_for_pixel)
    clean = clean / clean.std()
    g = torch.Generator().manual_seed(5)
    noisy = clean + 0.7 * torch.randn(clean.shape, generator=g)
    train_rows = np.arange(0, 80, 2)
    other = np.setdiff1d(np.arange(80), train_rows)
    noisy[other] += 3.0 * checkerboard(box)
    settings = PairSettings(box, box, default_bg_radius_px(box), 0.45 * box)
    return {"df": df, "images": ArrayImages(noisy.numpy()), "volume_for_pixel": volume_for_pixel, "settings": settings,
            "train_rows": train_rows, "other_rows": other, "box": box}


def _make(p: dict, n: int = 96, seed: int = 0, rows: np.ndarray | None = None, settings: PairSettings | None = None):
    return synthetic_pairs(p["images"], p["df"], p["train_rows"] if rows is None else rows, p["volume_for_pixel"],
                           settings or p["settings"], n, slope=1.0, seed=seed, batch_size=40)


def test_targets_are_the_map_at_the_new_poses_from_the_training_particles(particles: dict) -> None:
    p = particles
    pairs, table = _make(p)
    assert pairs["inputs"].shape == pairs["targets"].shape == (96, p["box"], p["box"]) and len(table) == 96
    train = p["df"].iloc[p["train_rows"]]
    # viewing directions and CTFs are the training particles'; psi is new and spread over the circle
    views = set(zip(train["rlnAngleRot"].round(4), train["rlnAngleTilt"].round(4)))
    assert set(zip(table["rlnAngleRot"].round(4), table["rlnAngleTilt"].round(4))) <= views
    assert set(table["rlnDefocusU"].round(3)) <= set(train["rlnDefocusU"].round(3))
    assert table["rlnAnglePsi"].between(-180, 180).all() and table["rlnAnglePsi"].std() > 80
    # the target of each synthetic particle is the map's CTF'd prediction at the pose in its row
    mask = circular_mask(p["box"], 0.4 * p["box"])
    cc = masked_pearson(pairs["targets"], predictions(table, p["volume_for_pixel"]), mask)
    assert cc.min() > 0.999
    # and not copies of the training particles' targets: new poses
    real = build_pairs(p["images"], p["df"], p["train_rows"], p["volume_for_pixel"], p["settings"])
    flat = lambda t: (t - t.mean((-2, -1), keepdim=True)).flatten(1) / t.flatten(1).std(1, keepdim=True)  # noqa: E731
    best = (flat(pairs["targets"]) @ flat(real["targets"]).T / p["box"] ** 2).max(1).values
    assert float(best.median()) < 0.6  # 0.28 measured; a copy would give 1.0


def test_inputs_carry_the_training_particles_noise_and_only_theirs(particles: dict) -> None:
    p = particles
    pairs, _ = _make(p)
    real = build_pairs(p["images"], p["df"], p["train_rows"], p["volume_for_pixel"], p["settings"])
    noise_syn = (pairs["inputs"] - pairs["targets"]).flatten(1)
    noise_real = (real["inputs"] - real["targets"]).flatten(1)
    ratio = float(noise_syn.var(1).mean() / noise_real.var(1).mean())
    assert 0.8 < ratio < 1.25
    # the checkerboard of the rows outside the training set never reaches a synthetic particle
    board = checkerboard(p["box"]).flatten()
    coef = lambda noise: (noise @ board).abs() / board.numel()  # noqa: E731
    assert float(coef(noise_syn).max()) < 0.25  # white noise alone: ~0.03 per image, 0.07-0.09 at most
    # positive control: let the other rows donate, and it does
    leaked, _ = _make(p, rows=p["other_rows"])
    assert float(coef((leaked["inputs"] - leaked["targets"]).flatten(1)).median()) > 0.5


def test_the_same_seed_gives_the_same_pairs_another_seed_others(particles: dict) -> None:
    a, ta = _make(particles, n=30, seed=4)
    b, tb = _make(particles, n=30, seed=4)
    c, _ = _make(particles, n=30, seed=5)
    assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["targets"], b["targets"])
    pd.testing.assert_frame_equal(ta, tb)
    assert not torch.allclose(a["inputs"], c["inputs"])


def test_ctf_aware_pairs_carry_their_own_ctf_at_the_training_box(particles: dict) -> None:
    p = particles
    settings = PairSettings(p["box"], 24, default_bg_radius_px(p["box"]), 0.45 * p["box"], ctf_aware=True)
    pairs, table = _make(p, n=20, settings=settings)
    assert pairs["inputs"].shape == (20, 24, 24)
    assert torch.equal(pairs["ctf"], train_box_ctf(table, settings))
    assert _make(p, n=0, settings=settings)[0]["ctf"].shape == (0, 24, 13)


def test_bad_arguments_are_refused(particles: dict) -> None:
    p = particles
    with pytest.raises(ValueError, match="n must be"):
        _make(p, n=-1)
    with pytest.raises(ValueError, match="no training particles"):
        _make(p, rows=np.array([], dtype=int))
    with pytest.raises(ValueError, match="slope"):
        synthetic_pairs(p["images"], p["df"], p["train_rows"], p["volume_for_pixel"], p["settings"], 4, slope=float("nan"), seed=0)


def test_the_residuals_symmetries_are_per_image_rotations_and_flips() -> None:
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5).repeat(20, 1, 1)
    y = random_dihedral(x, torch.Generator().manual_seed(0))
    group = lambda im: [torch.rot90(f, k, dims=(-2, -1)) for f in (im, torch.flip(im, dims=(-1,))) for k in range(4)]  # noqa: E731
    seen = set()
    for i in range(x.shape[0]):
        matches = [j for j, g in enumerate(group(x[i])) if torch.equal(g, y[i])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) >= 6  # not one symmetry for the whole batch


def test_at_a_smaller_training_box_the_pairs_are_made_there_and_look_like_real_ones(particles: dict) -> None:
    p = particles
    box = p["box"]
    settings = PairSettings(box, 24, default_bg_radius_px(box), 0.45 * box)
    pairs, table = _make(p, n=60, settings=settings)
    assert pairs["inputs"].shape == pairs["targets"].shape == (60, 24, 24)
    # the targets are the crop of the map's CTF'd prediction at each new pose
    reference = fourier_crop_images(predictions(table, p["volume_for_pixel"]), 24)
    assert masked_pearson(pairs["targets"], reference, circular_mask(24, 0.4 * 24)).min() > 0.999
    # normalised as the real inputs at the training box, with their noise level
    real = build_pairs(p["images"], p["df"], p["train_rows"], p["volume_for_pixel"], settings)
    bg = ~circular_mask(24, default_bg_radius_px(box) * 24 / box)
    assert torch.allclose(pairs["inputs"][:, bg].std(1, unbiased=False), torch.ones(60), atol=1e-4)
    ratio = float((pairs["inputs"] - pairs["targets"]).flatten(1).var(1).mean() / (real["inputs"] - real["targets"]).flatten(1).var(1).mean())
    assert 0.8 < ratio < 1.25
