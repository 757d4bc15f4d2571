"""The simulator: SNR definition, truth files, and that a set re-projected from its STAR reproduces clean.mrcs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cryogan_core.commands.simulate import NOISE_BATCH, run_simulate, write_simulated_stacks
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.mrc import open_stack, read_map
from cryogan_core.io.star import read_particles
from cryogan_core.physics.ctf import CtfParams
from cryogan_core.physics.phantom import procedural_volume, splat_gaussians
from cryogan_core.physics.projection import forward_model
from cryogan_core.physics.euler import random_euler_deg
from cryogan_core.physics.simulator import (
    noise_sigma_for_snr,
    random_ctf_params,
    simulate_particles,
    uniform_shifts_px,
)


def test_noise_sigma_matches_the_snr_definition() -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(50, 16, 16, generator=g) * torch.linspace(0.5, 2.0, 50)[:, None, None]
    sigma = noise_sigma_for_snr(clean, -10.0)
    mean_var = float(np.mean([c.var().item() for c in clean]))
    assert sigma**2 == pytest.approx(10.0 * mean_var, rel=1e-5)  # -10 dB: noise variance = 10 x signal
    assert noise_sigma_for_snr(clean, 0.0) ** 2 == pytest.approx(mean_var, rel=1e-5)


@pytest.mark.parametrize("box", [16, 17])
def test_streamed_stacks_equal_the_in_memory_simulation(tmp_path: Path, box: int) -> None:
    """cryogan simulate writes its stacks batch by batch: the same numbers, bit for bit, as
    simulate_particles with the same generator (more particles than one batch of
    projections and of noise, a last partial batch, odd and even boxes)."""
    n = NOISE_BATCH + 45
    vol = torch.from_numpy(procedural_volume(box, seed=1))
    g = torch.Generator().manual_seed(11)
    angles, shifts, ctf = random_euler_deg(n, generator=g), uniform_shifts_px(n, 1.5, generator=g) * 4.0, random_ctf_params(n, generator=g)
    state = g.get_state()
    ref = simulate_particles(vol, 4.0, angles, shifts, ctf, -10.0, generator=g)
    g.set_state(state)
    sigma = write_simulated_stacks(tmp_path, vol, 4.0, angles, shifts, ctf, -10.0, g)
    assert sigma == ref.noise_sigma
    for name, images in (("particles.mrcs", ref.noisy), ("clean.mrcs", ref.clean)):
        stack = open_stack(tmp_path / name)
        assert stack.shape == (n, box, box)
        np.testing.assert_array_equal(stack, images.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.mrcs", "particles.mrcs"]


def test_streamed_stacks_of_an_empty_map_fail_and_leave_no_file(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="zero variance"):
        write_simulated_stacks(tmp_path, torch.zeros(12, 12, 12), 4.0, random_euler_deg(5, generator=g),
                               torch.zeros(5, 2), None, -10.0, g)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("box", [32, 33])
def test_procedural_volume_is_deterministic_asymmetric_and_positive(box: int) -> None:
    a = procedural_volume(box, seed=0)
    assert a.shape == (box, box, box) and a.dtype == np.float32
    np.testing.assert_array_equal(a, procedural_volume(box, seed=0))
    assert a.min() >= 0 and a.max() == pytest.approx(1.0)
    # not symmetric under the point inversion or a mirror: both hands differ
    for flipped in (a[::-1, ::-1, ::-1], a[:, :, ::-1]):
        cc = np.corrcoef(a.ravel(), flipped.ravel())[0, 1]
        assert cc < 0.8


@pytest.mark.parametrize("box", [16, 23, 40])
def test_slab_splatting_equals_the_dense_sum_of_gaussians(box: int) -> None:
    """The slab-by-slab splat skips atoms far from each slab; the dense sum over every atom and
    voxel (float64 here) is the reference, with atoms inside, at the edge of and outside the box."""
    rng = np.random.default_rng(box)
    xyz = rng.uniform(-0.6 * box, 0.6 * box, size=(300, 3))
    w = rng.uniform(0.5, 1.5, size=300).astype(np.float32)
    sigma = 1.3
    grid = np.arange(box, dtype=np.float64) - box // 2
    g = [np.exp(-((grid[None, :] - xyz[:, i:i + 1]) ** 2) / (2 * sigma**2)) for i in range(3)]
    dense = np.einsum("a,az,ay,ax->zyx", w.astype(np.float64), g[2], g[1], g[0])
    got = splat_gaussians(xyz, w, box, sigma)
    assert got.shape == (box, box, box) and got.dtype == np.float32
    np.testing.assert_allclose(got, dense, rtol=0, atol=1e-5 * dense.max())
    # one atom at the centre: its peak at index box // 2 in each axis
    one = splat_gaussians(np.zeros((1, 3)), np.ones(1, np.float32), box, sigma)
    assert np.unravel_index(one.argmax(), one.shape) == (box // 2,) * 3 and one.max() == pytest.approx(1.0)


def test_splatting_rejects_bad_atoms() -> None:
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        splat_gaussians(np.zeros((4, 2)), np.ones(4, np.float32), 16, 1.0)
    with pytest.raises(ValueError, match="weights|\\(n,\\)"):
        splat_gaussians(np.zeros((4, 3)), np.ones(3, np.float32), 16, 1.0)
    with pytest.raises(ValueError, match="sigma_vox"):
        splat_gaussians(np.zeros((4, 3)), np.ones(4, np.float32), 16, 0.0)


@pytest.mark.parametrize("box", [24, 25])
def test_simulated_set_reprojects_to_its_clean_stack(tmp_path: Path, box: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    summary = run_simulate(Path("sim"), n=40, snr_db=-10.0, shift_px=3.0, seed=3, box=box, pixel_size_A=4.0)
    star = read_particles("sim/particles.star", require_poses=True, require_images=True)
    df = star.particles
    assert len(df) == 40 and set(df["rlnRandomSubset"]) == {1, 2}
    assert (df["rlnRandomSubset"] == 1).sum() == 20
    assert np.allclose(df["rlnImagePixelSize"], 4.0) and (df["rlnImageSize"] == box).all()
    assert np.abs(df["rlnOriginXAngst"]).max() <= 3.0 * 4.0 + 1e-4
    assert np.abs(df["rlnOriginXAngst"]).max() > 4.0  # shifts were actually applied
    vol, voxel = read_map("sim/ground_truth_map.mrc")
    assert voxel == pytest.approx(4.0)
    pred = forward_model(
        torch.from_numpy(vol),
        torch.tensor(df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), dtype=torch.float32),
        torch.tensor(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), dtype=torch.float32),
        4.0,
        ctf=CtfParams.from_particles(df),
    ).numpy()
    clean = np.asarray(open_stack("sim/clean.mrcs"), dtype=np.float32)
    assert np.abs(pred - clean).max() < 1e-3 * np.abs(clean).max()
    # the noisy stack has the requested SNR, and the noise is what was added
    noisy = ParticleImages(df, tmp_path, "sim/particles.star").read(np.arange(40))
    noise = noisy - clean
    assert noise.std() == pytest.approx(summary["noise_sigma"], rel=0.05)
    snr = 10 * np.log10(np.mean([c.var() for c in clean]) / noise.var())
    assert snr == pytest.approx(-10.0, abs=0.3)
    written = json.loads(Path("sim/summary.json").read_text())
    assert written["n_particles"] == 40 and written["snr_db"] == -10.0


def test_poses_and_ctf_taken_from_a_star(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_simulate(Path("a"), n=30, snr_db=0.0, seed=1, box=24, pixel_size_A=4.0)
    run_simulate(Path("b"), n=20, snr_db=0.0, seed=2, box=24, pixel_size_A=4.0,
                 poses_from=Path("a/particles.star"), ctf_from=Path("a/particles.star"))
    a = read_particles("a/particles.star", require_poses=True).particles
    b = read_particles("b/particles.star", require_poses=True).particles
    keys = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
    rows_a = {tuple(np.round(r, 3)) for r in a[keys].to_numpy()}
    # same file for poses and CTF: each simulated particle is one row of the source, jointly
    assert all(tuple(np.round(r, 3)) in rows_a for r in b[keys].to_numpy())
    assert len({tuple(np.round(r, 3)) for r in b[keys].to_numpy()}) == 20  # no repeats when enough rows
