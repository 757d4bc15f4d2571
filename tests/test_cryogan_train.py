"""CryoGAN science: background noise, map alignment, the simulator and the WGAN-GP loop.

References are independent of the code under test: brute-force pixel distances, explicit
index formulas for mirrors, closed-form schedules, the foundation's ``forward_model`` for the
simulator, and the known truth of a synthetic volume for the training.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cryogan_core.metrics.align import (
    align_half_maps,
    align_maps,
    apply_alignment,
    mirror_volume,
    rotate_shift_volumes,
    shift_volume,
    super_fibonacci_rotations,
)
from cryogan_core.metrics.images import normalize_background
from cryogan_core.models.volume import VoxelVolume
from cryogan_core.physics.euler import euler_to_matrix, random_euler_deg
from cryogan_core.physics.noise import (
    BackgroundNoise,
    candidate_patch_corners,
    crop_windows,
    default_patch_px,
    extract_background_patches,
    mosaic_window,
)
from cryogan_core.physics.phantom import procedural_volume
from cryogan_core.physics.projection import forward_model
from cryogan_core.physics.simulator import random_ctf_params, simulate_particles, uniform_shifts_px
from cryogan_core.train.cryogan_simulator import (
    SimulationPriors,
    clean_signal_variance,
    estimate_signal_variance,
    simulate_batch,
)
from cryogan_core.train.cryogan_volume import ScaledVolume, gaussian_ball, resize_volume, soft_sphere_mask
from cryogan_core.train.wgan import (
    CryoGanTrainer,
    WganConfig,
    blur_sigma_px,
    learning_rate,
    marching_cutoff_shells,
    train_cryogan,
)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


def _rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle of the rotation a·bᵀ (degrees)."""
    m = a @ b.T
    return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(m) - 1.0) / 2.0))))


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("box, radius", [(32, 12.8), (33, 13.0), (64, 25.6), (24, 9.6)])
def test_patch_corners_are_outside_the_radius_brute_force(box, radius):
    p = default_patch_px(box, radius)
    assert p >= 4 and p % 2 == 0
    corners = candidate_patch_corners(box, radius, p)
    assert corners.shape[0] >= 4  # at least the four corners
    c = box // 2
    for y0, x0 in corners.tolist():
        yy, xx = np.mgrid[y0 : y0 + p, x0 : x0 + p]
        assert np.sqrt((yy - c) ** 2 + (xx - c) ** 2).min() > radius
    # p + 2 would not fit in all four corners (p is the largest)
    if p + 2 <= box // 2:
        near = []
        for a in (0, box - p - 2):
            yy, xx = np.mgrid[a : a + p + 2, a : a + p + 2]
            near.append(np.sqrt((yy - c) ** 2 + (xx - c) ** 2).min())
        assert min(near) <= radius


@pytest.mark.parametrize("box", [32, 33])
def test_patches_come_only_from_outside_the_particle_radius(box):
    radius = 0.4 * box
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(50, box, box, generator=g)
    c = torch.arange(box) - box // 2
    inside = (c[:, None] ** 2 + c[None, :] ** 2) <= radius**2
    imgs[:, inside] = 1000.0  # the "particle": any leak shows
    patches = extract_background_patches(imgs, radius)
    assert patches.shape[0] >= 50 * 4
    assert patches.abs().max() < 10.0
    noise = BackgroundNoise.from_particles(imgs, radius)
    assert noise.mode == "patches"
    assert noise.sample(20, g).abs().max() < 20.0


def test_high_variance_patches_are_dropped():
    g = torch.Generator().manual_seed(2)
    imgs = torch.randn(40, 32, 32, generator=g)
    imgs[:10, :6, :6] *= 5.0  # a neighbour in the top-left corner of 10 images
    patches = extract_background_patches(imgs, 12.8, patch_px=6)
    var = patches.reshape(patches.shape[0], -1).var(dim=1)
    assert var.max() < 3.0
    assert patches.shape[0] < 40 * len(candidate_patch_corners(32, 12.8, 6))


@pytest.mark.parametrize("p", [4, 6, 14])
def test_mosaic_window_is_power_complementary(p):
    w2 = mosaic_window(p) ** 2
    m = 6
    tiles = w2.reshape(1, p * p, 1).expand(1, p * p, m * m)
    total = (m + 1) * (p // 2)
    canvas = F.fold(tiles, (total, total), kernel_size=p, stride=p // 2)[0, 0]
    interior = canvas[p // 2 : m * (p // 2), p // 2 : m * (p // 2)]
    torch.testing.assert_close(interior, torch.ones_like(interior), atol=1e-5, rtol=0)


@pytest.mark.parametrize("box", [24, 33])
def test_mosaic_noise_keeps_the_background_statistics(box):
    g = torch.Generator().manual_seed(3)
    imgs = 1.7 * torch.randn(800, box, box, generator=g) + 0.0
    noise = BackgroundNoise.from_particles(imgs, 0.4 * box)
    s = noise.sample(400, g)
    assert s.shape == (400, box, box)
    assert float(s.var()) == pytest.approx(1.7**2, rel=0.05)
    assert abs(float(s.mean())) < 0.05
    # white input -> nearly uncorrelated neighbours (no seams that correlate pixels)
    assert abs(float((s[:, :, 1:] * s[:, :, :-1]).mean())) < 0.05 * 1.7**2


@pytest.mark.parametrize("size", [7, 8])
def test_crop_windows_equals_slicing_each_image(size):
    """The one-gather crop of the mosaic sampler cuts exactly what per-image slicing cuts,
    for odd and even windows, at corners that touch every edge of the image."""
    g = torch.Generator().manual_seed(5)
    imgs = torch.randn(6, 13, 15, generator=g)
    corners = torch.tensor([[0, 0], [13 - size, 15 - size], [0, 15 - size], [13 - size, 0], [2, 3], [5, 1]])
    out = crop_windows(imgs, corners, size)
    assert out.shape == (6, size, size)
    for i, (y, x) in enumerate(corners.tolist()):
        assert torch.equal(out[i], imgs[i, y : y + size, x : x + size])
    with pytest.raises(ValueError, match="corners_px"):
        crop_windows(imgs, corners[:5], size)
    with pytest.raises(ValueError, match="size_px"):
        crop_windows(imgs, corners, 0)


def test_white_noise_fallback_when_no_patch_fits():
    g = torch.Generator().manual_seed(4)
    imgs = 0.5 * torch.randn(100, 20, 20, generator=g)
    noise = BackgroundNoise.from_particles(imgs, radius_px=13.0)  # corners too small for 4 px
    assert noise.mode == "white" and noise.patch_px == 0
    assert noise.variance == pytest.approx(0.25, rel=0.1)
    assert float(noise.sample(200, g).var()) == pytest.approx(noise.variance, rel=0.05)


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("box", [24, 33])
def test_mirror_volume_index_formula(box):
    v = torch.randn(box, box, box)
    m = mirror_volume(v)
    c = box // 2
    for x in range(box):
        src = 2 * c - x
        expected = v[..., src] if 0 <= src < box else torch.zeros_like(v[..., 0])
        torch.testing.assert_close(m[..., x], expected)


def test_super_fibonacci_rotations_are_rotations_and_cover_so3():
    r = super_fibonacci_rotations(500)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye.expand(500, 3, 3), atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(500, dtype=torch.float64), atol=1e-10, rtol=0)
    # every random rotation has a grid neighbour within 30 degrees (coverage)
    probes = euler_to_matrix(random_euler_deg(50, generator=torch.Generator().manual_seed(0)).double())
    tr = torch.einsum("pij,gij->pg", probes, r)  # trace(P Gᵀ)
    nearest = torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1, 1))).min(dim=1).values
    assert float(nearest.max()) < 30.0


@pytest.mark.parametrize("box, mirror", [(24, False), (33, True)])
def test_align_recovers_a_known_rotation_shift_and_hand(box, mirror):
    truth = torch.from_numpy(procedural_volume(box))
    rot = euler_to_matrix(torch.tensor([[40.0, 70.0, -120.0]], dtype=torch.float64))[0]
    t = torch.tensor([1.5, -1.0, 2.0], dtype=torch.float64)
    src = mirror_volume(truth) if mirror else truth
    moved = shift_volume(rotate_shift_volumes(src, rot[None])[0], t)
    al = align_maps(moved, truth, pixel_size_A=6.0)
    assert al.mirror is mirror
    assert al.cc > 0.9
    if not mirror:
        # moved(r) = truth(Rᵀ(r − t)), so the alignment must be Rᵀ (and t' = −R t... in its frame)
        assert _rotation_angle_deg(al.rotation, rot.numpy().T) < 4.0
        np.testing.assert_allclose(al.shift_vox, -(rot.numpy().T @ t.numpy()), atol=0.6)
    # applying the transform reproduces the aligned map, which matches the truth to Nyquist/2
    again = apply_alignment(moved, al.rotation, al.shift_vox, al.mirror)
    torch.testing.assert_close(again, al.aligned, atol=1e-4, rtol=0)
    assert al.resolution_A(0.5) < 4 * 6.0


def test_align_half_maps_averages_in_half1_frame_and_scores_against_the_reference():
    # half 2 is the other hand, rotated and shifted: without aligning it first the average
    # would blur the map; aligned, the average is the map itself
    box = 24
    truth = torch.from_numpy(procedural_volume(box))
    rot = euler_to_matrix(torch.tensor([[-30.0, 50.0, 100.0]], dtype=torch.float64))[0]
    g = torch.Generator().manual_seed(0)
    half1 = truth + 0.02 * truth.std() * torch.randn(truth.shape, generator=g)
    half2 = shift_volume(rotate_shift_volumes(mirror_volume(truth), rot[None])[0], torch.tensor([1.0, 0.0, -1.5], dtype=torch.float64))
    hm = align_half_maps(half1, half2, pixel_size_A=6.0, reference=truth)
    assert hm.halves.mirror is True and hm.halves.cc > 0.9
    torch.testing.assert_close(hm.average, 0.5 * (half1 + hm.halves.aligned))
    naive = 0.5 * (half1 + half2)
    def cc(a, b):
        """Pearson correlation of two tensors of any shape (flattened)."""
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
    assert cc(hm.average, truth) > 0.95 and cc(naive, truth) < 0.85
    assert hm.to_reference is not None and hm.to_reference.cc > 0.9
    assert hm.to_reference.resolution_A(0.5) < 4 * 6.0
    assert align_half_maps(half1, half2, 6.0).to_reference is None


def test_align_rejects_mismatched_maps():
    with pytest.raises(ValueError, match="equal in shape"):
        align_maps(torch.zeros(16, 16, 16), torch.zeros(17, 17, 17), 1.0)


# --------------------------------------------------------------------------- simulator


def _priors(box: int, n_ctf: int = 50, **kw) -> SimulationPriors:
    g = torch.Generator().manual_seed(5)
    real = torch.randn(200, box, box, generator=g)
    args = dict(ctf=random_ctf_params(n_ctf, generator=g), pixel_size_A=6.0, box=box,
                noise=BackgroundNoise.from_particles(real, 0.4 * box), bg_radius_px=0.4 * box)
    args.update(kw)
    return SimulationPriors(**args)


@pytest.mark.parametrize("box", [24, 25])
def test_simulator_matches_forward_model_relion_conventions(box):
    """One fixed pose, origin and CTF: the clean simulated image is the foundation's
    ``forward_model`` (projection, −origin shift, CTF) of the volume."""
    vol = torch.from_numpy(procedural_volume(box))
    angles = torch.tensor([[30.0, 60.0, 100.0]])
    origin_px = torch.tensor([[1.5, -2.0]])
    pri = _priors(box, n_ctf=1, angles_deg=angles, shift_prior="star", origins_px=origin_px, pad_factor=2.0)
    sim = simulate_batch(vol, pri, 3, torch.Generator().manual_seed(0), add_noise=False, normalise=False)
    ref = forward_model(vol, angles, origin_px * 6.0, 6.0, ctf=pri.ctf, pad_factor=2.0)
    for i in range(3):
        torch.testing.assert_close(sim[i], ref[0], atol=1e-4 * float(ref.abs().max()), rtol=0)


def test_simulator_is_differentiable_normalised_and_noisy():
    box = 24
    pri = _priors(box)
    vol = torch.from_numpy(procedural_volume(box)).requires_grad_(True)
    img = simulate_batch(vol, pri, 6, torch.Generator().manual_seed(1))
    c = torch.arange(box) - box // 2
    bg = (c[:, None] ** 2 + c[None, :] ** 2) > pri.bg_radius_px**2
    torch.testing.assert_close(img[:, bg].mean(dim=1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(img[:, bg].std(dim=1, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)
    img.sum().backward()
    assert vol.grad is not None and float(vol.grad.abs().sum()) > 0


def test_signal_variance_estimate_matches_the_simulation():
    box, radius = 24, 9.6
    vol = torch.from_numpy(procedural_volume(box))
    g = torch.Generator().manual_seed(6)
    n = 400
    ctf = random_ctf_params(n, generator=g)
    sim = simulate_particles(vol, 6.0, random_euler_deg(n, generator=g), torch.zeros(n, 2), ctf, 0.0, generator=g)
    c = torch.arange(box) - box // 2
    inside = (c[:, None] ** 2 + c[None, :] ** 2) <= radius**2
    true_var = float(sim.clean[:, inside].var(dim=1).mean()) / sim.noise_sigma**2
    est = estimate_signal_variance(sim.noisy / sim.noise_sigma, radius)
    assert est == pytest.approx(true_var, rel=0.25)


def test_schedules_closed_form():
    assert learning_rate(1e-3, 0.9, 0.0) == pytest.approx(1e-3)
    assert learning_rate(1e-3, 0.9, 2.5) == pytest.approx(1e-3 * 0.9**2.5)
    assert blur_sigma_px(2.0, 0.0, 0.8) == 2.0
    assert blur_sigma_px(2.0, 0.4, 0.8) == pytest.approx(1.0)
    assert blur_sigma_px(2.0, 0.9, 0.8) == 0.0
    assert blur_sigma_px(2.0, 0.1, 0.0) == 0.0


def test_marching_cutoff_is_where_the_blur_passes_a_tenth():
    """kc / box (cycles/px) is where exp(-2 pi^2 sigma^2 f^2) = 0.1; at least 4 shells; no
    limit at sigma 0 or once kc passes the box's corner."""
    for box, sigma in [(32, 2.0), (33, 1.3), (64, 3.0)]:
        kc = marching_cutoff_shells(box, sigma)
        assert math.exp(-2 * math.pi**2 * sigma**2 * (kc / box) ** 2) == pytest.approx(0.1)
    assert marching_cutoff_shells(32, 4.0) == 4.0  # 0.342 * 32 / 4 = 2.7 shells -> the minimum
    assert marching_cutoff_shells(32, 8.0, min_shells=2.0) == 2.0
    assert marching_cutoff_shells(32, 0.0) is None
    assert marching_cutoff_shells(32, 0.39) is None  # 28.0 shells > 16 sqrt(3) = 27.7
    assert marching_cutoff_shells(32, 0.41) == pytest.approx(0.34155 * 32 / 0.41, rel=1e-4)
    with pytest.raises(ValueError, match="sigma_px"):
        marching_cutoff_shells(32, -1.0)


def _shell_radius(box: int) -> np.ndarray:
    """``(box, box, box)`` radius |k| (shells) of every numpy fftn coefficient."""
    k = np.fft.fftfreq(box) * box
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)


@pytest.mark.parametrize("box, kc", [(24, 5.5), (25, 7.1), (24, 4.3)])  # no |k| on a cutoff
def test_band_limit_keeps_exactly_the_shells_inside_kc(box, kc):
    """Against numpy's full FFT: coefficients at |k| <= kc unchanged, all others zero."""
    g = torch.Generator().manual_seed(box)
    vol = ScaledVolume(VoxelVolume(box, init=torch.rand(box, box, box, generator=g), positivity=False))
    before = np.fft.fftn(vol.voxels.density.detach().numpy().astype(np.float64))
    vol.band_limit_(kc)
    after = np.fft.fftn(vol.voxels.density.detach().numpy().astype(np.float64))
    inside = _shell_radius(box) <= kc
    scale = np.abs(before).max()
    assert np.abs(after[~inside]).max() < 1e-5 * scale
    assert np.abs(after[inside] - before[inside]).max() < 1e-5 * scale
    assert np.abs(before[~inside]).max() > 0.01 * scale  # the test volume had power there
    with pytest.raises(ValueError, match="kc_shells"):
        vol.band_limit_(0.0)


def test_march_band_limits_the_volume_after_each_update_only_when_asked():
    """With march, a volume update at blur 2 px leaves no power beyond 0.342 * 24 / 2 = 4.1
    shells; without, the same update puts power there (the test can fail)."""
    box = 24
    _, ctf, real = _dataset(box, 64, 0.0, seed=3)
    power = {}
    for march in (False, True):
        tr = _trainer(box, real, ctf, 1, march=march)
        for _ in range(3):
            tr.train_step(real[:32], 2.0, 0.0)
        spec = np.abs(np.fft.fftn(tr.volume.voxels.density.detach().numpy().astype(np.float64))) ** 2
        outside = _shell_radius(box) > marching_cutoff_shells(box, 2.0)
        power[march] = spec[outside].sum() / spec.sum()
    assert power[True] < 1e-10, power
    assert power[False] > 1e-4, power


# --------------------------------------------------------------------------- training


def _dataset(box: int, n: int, snr_db: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    truth = torch.from_numpy(procedural_volume(box))
    ctf = random_ctf_params(n, generator=g)
    sim = simulate_particles(truth, 6.0, random_euler_deg(n, generator=g), uniform_shifts_px(n, 1.0, generator=g) * 6.0,
                             ctf, snr_db, generator=g)
    return truth, ctf, normalize_background(sim.noisy, 0.4 * box)


def _trainer(box: int, real: torch.Tensor, ctf, seed_offset: int, **cfg) -> CryoGanTrainer:
    radius = 0.4 * box
    pri = SimulationPriors(ctf=ctf, pixel_size_A=6.0, box=box, noise=BackgroundNoise.from_particles(real, radius),
                           bg_radius_px=radius, shift_px=1.0)
    mask = soft_sphere_mask(box, radius, 2.0)
    vox = VoxelVolume(box, init=gaussian_ball(box, radius / 2) * mask, mask=mask)
    amp = math.sqrt(estimate_signal_variance(real, radius) / clean_signal_variance(vox(), pri))
    config = WganConfig(**{"lr": 5e-3, "n_epochs": 1e9, **cfg})
    return CryoGanTrainer(ScaledVolume(vox, amp), pri, config, name=f"half{seed_offset}", seed_offset=seed_offset)


def test_training_gets_closer_to_the_truth():
    """A tiny volume (16 px, 0 dB): after 160 volume updates the map, aligned to the truth
    over both hands, correlates better with it than the starting ball does (here CC 0.42 ->
    0.57, FSC 0.5 at 56 -> 27 Å)."""
    box = 16
    truth, ctf, real = _dataset(box, 600, 0.0, seed=7)
    tr = _trainer(box, real, ctf, 1)
    before = align_maps(tr.current_volume(), truth, 6.0)
    with torch.no_grad():
        start = tr.current_volume()
    tr.config.n_epochs = 160 * tr.config.batch_size * tr.config.n_critic / real.shape[0]
    assert train_cryogan([tr], [real]) == "epochs"
    assert tr.step_count == 160
    after = align_maps(tr.current_volume(), truth, 6.0)
    assert not torch.equal(start, tr.current_volume())
    assert after.cc > before.cc + 0.1, (before.cc, after.cc)
    assert after.resolution_A(0.5) < before.resolution_A(0.5)
    rec = tr.history[-1]
    assert set(rec) >= {"loss_critic", "wasserstein", "loss_gen", "gp", "sigma_px", "lr"}
    assert rec["sigma_px"] == 0.0 and tr.history[0]["sigma_px"] == pytest.approx(2.0)


def test_half_sets_are_independent_and_resume_is_exact():
    """Half 1 does not depend on half 2's particles; a run stopped and resumed from a
    checkpoint ends exactly where an uninterrupted run ends; should_stop checkpoints first."""
    box = 16
    _, ctf, real = _dataset(box, 160, 0.0, seed=8)
    r1, r2 = real[:80], real[80:]

    class Stop(Exception):
        """Raised by the stop hook to interrupt training like a killed job."""
        pass

    def run(half2_images: torch.Tensor, steps: int, state=None, stop_at: int | None = None) -> list[CryoGanTrainer]:
        """Train both half sets for ``steps`` volume updates (resuming from ``state``, stopping at ``stop_at``)."""
        ts = [_trainer(box, r1, ctf[:80], 1), _trainer(box, half2_images, ctf[80:], 2)]
        if state is not None:
            for t, s in zip(ts, state):
                t.load_state_dict(s)
        for t in ts:
            t.config.n_epochs = steps * t.config.batch_size * t.config.n_critic / 80

        def stop() -> None:
            """Raise :class:`Stop` once half 1 has made ``stop_at`` volume updates."""
            if stop_at is not None and ts[0].step_count >= stop_at:
                raise Stop

        try:
            train_cryogan(ts, [r1, half2_images], parallel=False, should_stop=stop)
        except Stop:
            pass
        return ts

    a = run(r2, 6)
    b = run(torch.randn_like(r2), 6)
    torch.testing.assert_close(a[0].current_volume(), b[0].current_volume(), atol=0, rtol=0)
    assert not torch.equal(a[1].current_volume(), b[1].current_volume())

    # the same 6-step run, stopped after 3 steps (the blur schedule depends on the run length)
    first = run(r2, 6, stop_at=3)
    assert [t.step_count for t in first] == [3, 3]
    resumed = run(r2, 6, state=[t.state_dict() for t in first])
    for x, y in zip(a, resumed):
        assert y.step_count == 6
        torch.testing.assert_close(x.current_volume(), y.current_volume(), atol=1e-6, rtol=1e-5)

    saved = []

    def should_stop():
        """Interrupt training after the second volume update."""
        if ts[0].step_count >= 2:
            raise Stop

    ts = [_trainer(box, r1, ctf[:80], 1)]
    with pytest.raises(Stop):
        train_cryogan(ts, [r1], should_stop=should_stop, checkpoint=lambda: saved.append(ts[0].step_count))
    assert saved == [2]


def test_train_rejects_a_half_smaller_than_a_batch():
    box = 16
    _, ctf, real = _dataset(box, 20, 0.0, seed=9)
    tr = _trainer(box, real, ctf, 1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_cryogan([tr], [real[:4]])


# --------------------------------------------------------------------------- coarse to fine


@pytest.mark.parametrize("old_box, new_box", [(16, 24), (16, 25)])
def test_resize_volume_pads_the_map_and_keeps_its_brightness_relative_to_the_data(old_box, new_box):
    """The resized volume is the old one Fourier-padded (an independent FFT zero-pad here),
    times a scalar, and its clean particles' variance over the data's signal variance is
    the same at both boxes."""
    _, ctf, real = _dataset(old_box, 200, 0.0, seed=11)
    tr = _trainer(old_box, real, ctf, 1)
    with torch.no_grad():
        tr.volume.log_scale.fill_(0.3)  # a learned brightness that must be kept
    old = tr.current_volume()
    new_pri = SimulationPriors(ctf=ctf, pixel_size_A=6.0 * old_box / new_box, box=new_box,
                               noise=BackgroundNoise("white", new_box, 1.0), bg_radius_px=0.4 * new_box, shift_px=1.5)
    mask = torch.ones(new_box, new_box, new_box)
    sv_old, sv_new = 0.8, 0.3
    out = resize_volume(tr.volume, new_box, mask, tr.priors, new_pri, sv_old, sv_new, seed=4)
    vol = out().detach()
    assert vol.shape == (new_box,) * 3
    # independent reference: scipy's Fourier resampling along each axis (centre N//2 kept by
    # rolling it to index 0 first: resample keeps index 0 fixed)
    from scipy.signal import resample

    ref = np.roll(old.double().numpy(), [-(old_box // 2)] * 3, axis=(0, 1, 2))
    for axis in range(3):
        ref = resample(ref, new_box, axis=axis)
    ref = torch.from_numpy(np.roll(ref, [new_box // 2] * 3, axis=(0, 1, 2))).float()
    cc = float(torch.corrcoef(torch.stack([vol.flatten(), ref.clamp(min=0).flatten()]))[0, 1])
    assert cc > 0.995, cc
    ratio_old = clean_signal_variance(old, tr.priors, seed=4) / sv_old
    ratio_new = clean_signal_variance(vol, new_pri, seed=4) / sv_new
    assert ratio_new == pytest.approx(ratio_old, rel=1e-4)
    assert float(out.log_scale.detach()) == 0.0 and out.log_scale.requires_grad
    assert out.voxels.config["positivity"] and float(vol.min()) >= 0.0


def test_critic_warm_up_trains_only_the_critic_and_is_repeatable():
    box = 16
    _, ctf, real = _dataset(box, 120, 0.0, seed=12)
    a, b = _trainer(box, real, ctf, 1), _trainer(box, real, ctf, 1)
    vol0 = a.current_volume()
    critic0 = {k: v.clone() for k, v in a.critic.state_dict().items()}
    wa = a.warm_up_critic(real, 3, 1.0, 0.0)
    wb = b.warm_up_critic(real, 3, 1.0, 0.0)
    assert wa == wb and math.isfinite(wa)
    for k, v in a.critic.state_dict().items():
        torch.testing.assert_close(v, b.critic.state_dict()[k], atol=0, rtol=0)
    assert any(not torch.equal(v, critic0[k]) for k, v in a.critic.state_dict().items())
    torch.testing.assert_close(a.current_volume(), vol0, atol=0, rtol=0)
    assert a.step_count == 0 and a.history == []
    assert a.warm_up_critic(real, 0, 1.0, 0.0) == 0.0


def test_training_stops_at_the_end_of_a_stage():
    """With end_progress 0.5 the run stops halfway through its epochs ("stage"); a trainer
    that continues from it has its counters and ends the run ("epochs")."""
    box = 16
    _, ctf, real = _dataset(box, 64, 0.0, seed=13)
    tr = _trainer(box, real, ctf, 1)
    tr.config.n_epochs = 10 * tr.config.batch_size * tr.config.n_critic / real.shape[0]  # 10 steps
    assert train_cryogan([tr], [real], end_progress=0.5) == "stage"
    assert tr.step_count == 5
    nxt = _trainer(box, real, ctf, 1)
    nxt.config.n_epochs = tr.config.n_epochs
    nxt.continue_from(tr)
    assert train_cryogan([nxt], [real], end_progress=1.0) == "epochs"
    assert nxt.step_count == 10 and len(nxt.history) == 10
    # the blur schedule runs on across the stages: it decreases from step 1 to step 10
    sig = [r["sigma_px"] for r in nxt.history]
    assert sig == sorted(sig, reverse=True) and sig[0] == pytest.approx(2.0)
