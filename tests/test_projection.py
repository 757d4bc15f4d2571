"""Projection convention (RELION), scale, shifts, adjointness, gradients, real particles."""

from __future__ import annotations

import threading

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation
from torch_fourier_slice import extract_central_slices_rfft_3d

from conftest import shared_path
from cryogan_core.physics import projection
from cryogan_core.physics.ctf import CtfParams, compute_ctf
from cryogan_core.physics.euler import euler_to_matrix
from cryogan_core.physics.projection import (
    Projector,
    backproject,
    forward_model,
    fourier_filter_images,
    project,
    shift_images,
)


def blobs_volume(
    d: int, seed: int = 0, n_blobs: int = 5, sigma: tuple[float, float] = (1.5, 3.0), spread: float = 0.2
) -> np.ndarray:
    """Smooth asymmetric test map: a few Gaussians around the centre d//2, float64."""
    rng = np.random.default_rng(seed)
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    v = np.zeros((d, d, d))
    for _ in range(n_blobs):
        p = rng.uniform(-d * spread, d * spread, 3)
        s = rng.uniform(*sigma)
        v += rng.uniform(0.5, 1.5) * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    return v


def line_integral_np(v: np.ndarray, a: np.ndarray, order: int = 1) -> np.ndarray:
    """P(x, y) = Σ_z V(Aᵀ·(x, y, z)) about the centre d//2 (scipy interpolation)."""
    d = v.shape[0]
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    model = a.T @ np.stack([x.ravel(), y.ravel(), z.ravel()])  # xyz in the map frame
    coords = np.stack([model[2], model[1], model[0]]) + d // 2  # (z, y, x) array indices
    vals = ndimage.map_coordinates(v, coords, order=order, mode="constant", cval=0.0)
    return vals.reshape(d, d, d).sum(axis=0)


def random_angles(n: int, seed: int) -> np.ndarray:
    """``(n, 3)`` Euler angles (ZYZ, degrees) of uniform random rotations."""
    return Rotation.random(n, random_state=seed).as_euler("ZYZ", degrees=True)


def cc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays of any shape."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("d", [32, 33])
def test_matches_real_space_line_integral(d: int) -> None:
    v = blobs_volume(d)
    angles = random_angles(6, seed=d)
    mats = np.stack([euler_to_matrix(torch.tensor(a)).numpy() for a in angles])
    got = project(torch.tensor(v, dtype=torch.float32), torch.tensor(mats, dtype=torch.float32)).numpy()
    assert got.shape == (6, d, d) and got.dtype == np.float32
    for i in range(6):
        ref = line_integral_np(v, mats[i], order=1)
        assert cc(got[i], ref) >= 0.99
        # scale: least-squares factor against a cubic-spline (less blurred) reference
        ref3 = line_integral_np(v, mats[i], order=3)
        assert (got[i] * ref3).sum() / (ref3 * ref3).sum() == pytest.approx(1.0, abs=0.02)
        # the peak lies where the reference puts it (centre N//2 convention)
        assert np.unravel_index(got[i].argmax(), got[i].shape) == np.unravel_index(ref.argmax(), ref.shape)


@pytest.mark.parametrize("d", [32, 33])
def test_transposed_rotation_fails_the_convention_check(d: int) -> None:
    v = blobs_volume(d, seed=1, n_blobs=10, sigma=(1.0, 1.5), spread=0.25)
    mats = euler_to_matrix(torch.tensor(random_angles(4, seed=5), dtype=torch.float32))
    vt = torch.tensor(v, dtype=torch.float32)
    right = project(vt, mats).numpy()
    wrong = project(vt, mats.transpose(-1, -2)).numpy()
    refs = [line_integral_np(v, mats[i].numpy()) for i in range(4)]
    assert min(cc(right[i], refs[i]) for i in range(4)) >= 0.99
    assert max(cc(wrong[i], refs[i]) for i in range(4)) < 0.8


@pytest.mark.parametrize("d", [24, 25])
def test_projection_sum_equals_volume_sum(d: int) -> None:
    v = blobs_volume(d, seed=2)
    mats = euler_to_matrix(torch.tensor(random_angles(20, seed=2), dtype=torch.float32))
    sums = project(torch.tensor(v, dtype=torch.float32), mats).sum(dim=(-2, -1)).numpy() / v.sum()
    assert abs(sums.mean() - 1.0) < 0.02
    assert np.abs(sums - 1.0).max() < 0.05


@pytest.mark.parametrize("d", [24, 25])
def test_centred_blob_projects_to_centre(d: int) -> None:
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    v = torch.tensor(np.exp(-(x**2 + y**2 + z**2) / 8.0), dtype=torch.float32)
    p = project(v, euler_to_matrix(torch.tensor(random_angles(3, 0), dtype=torch.float32)))
    for img in p:
        assert np.unravel_index(int(img.argmax()), img.shape) == (d // 2, d // 2)


def centre_of_mass_xy(img: np.ndarray) -> tuple[float, float]:
    """Centre of mass (x, y) in pixels of a non-negative 2D image."""
    yy, xx = np.indices(img.shape)
    return float((img * xx).sum() / img.sum()), float((img * yy).sum() / img.sum())


@pytest.mark.parametrize("d", [32, 33])
def test_origin_shift_sign(d: int) -> None:
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    v = torch.tensor(np.exp(-(x**2 + y**2 + z**2) / (2 * 2.0**2)), dtype=torch.float32)
    px = 2.0
    origins_a = torch.tensor([[6.0, -4.0], [-3.0, 5.0]])  # Å -> (3, -2) and (-1.5, 2.5) px
    angles = torch.tensor([[10.0, 40.0, 70.0], [0.0, 90.0, 0.0]])
    imgs = forward_model(v, angles, origins_a, px).numpy()
    for img, o in zip(imgs, origins_a.numpy() / px):
        cx, cy = centre_of_mass_xy(img)
        # particle centre = box centre − origin
        assert cx == pytest.approx(d // 2 - o[0], abs=0.05)
        assert cy == pytest.approx(d // 2 - o[1], abs=0.05)


@pytest.mark.parametrize("shape", [(32, 32), (33, 33), (24, 31)])
def test_shift_images_moves_content_by_plus_shift(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    imgs = torch.tensor(rng.normal(size=(2, *shape)), dtype=torch.float32)
    shifts = torch.tensor([[3.0, -2.0], [-5.0, 4.0]])
    got = shift_images(imgs, shifts)
    for i in range(2):
        ref = torch.roll(imgs[i], shifts=(int(shifts[i, 1]), int(shifts[i, 0])), dims=(0, 1))
        np.testing.assert_allclose(got[i].numpy(), ref.numpy(), atol=1e-4)
    # sub-pixel: a centred Gaussian's centre of mass moves by the shift
    h, w = shape
    yy, xx = np.indices(shape)
    g = np.exp(-((xx - w // 2) ** 2 + (yy - h // 2) ** 2) / (2 * 2.0**2))
    moved = shift_images(torch.tensor(g[None], dtype=torch.float32), torch.tensor([[0.3, -1.7]]))[0].numpy()
    cx, cy = centre_of_mass_xy(moved)
    assert cx == pytest.approx(w // 2 + 0.3, abs=0.01) and cy == pytest.approx(h // 2 - 1.7, abs=0.01)


@pytest.mark.parametrize("d", [24, 25])
def test_backproject_is_exact_adjoint(d: int) -> None:
    gen = torch.Generator().manual_seed(d)
    vol = torch.randn(d, d, d, generator=gen)
    imgs = torch.randn(5, d, d, generator=gen)
    mats = euler_to_matrix(torch.tensor(random_angles(5, seed=d), dtype=torch.float32))
    lhs = float((project(vol, mats) * imgs).double().sum())
    rhs = float((vol * backproject(imgs, mats)).double().sum())
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


def test_gradient_matches_finite_difference() -> None:
    d = 24
    gen = torch.Generator().manual_seed(0)
    v0 = torch.tensor(blobs_volume(d), dtype=torch.float64)
    direction = torch.randn(d, d, d, generator=gen, dtype=torch.float64)
    target = torch.randn(3, d, d, generator=gen)
    mats = euler_to_matrix(torch.tensor(random_angles(3, seed=4), dtype=torch.float32))

    def loss(v: torch.Tensor) -> torch.Tensor:
        """Squared error between the projections of ``v`` and the target images (float64)."""
        return ((project(v, mats) - target) ** 2).double().sum()

    v = v0.float().clone().requires_grad_(True)
    loss(v).backward()
    assert v.grad is not None and float(v.grad.abs().sum()) > 0
    h = 1e-2
    fd = (loss((v0 + h * direction).float()) - loss((v0 - h * direction).float())) / (2 * h)
    analytic = float((v.grad.double() * direction).sum())
    assert analytic == pytest.approx(float(fd), rel=2e-3)


def _spy_on_slice_extraction(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record (thread name, rotations) of every call the projector makes to the library's sampler."""
    calls: list[tuple[str, int]] = []
    library = projection.extract_central_slices_rfft_3d

    def spy(volume_rfft: torch.Tensor, rotation_matrices: torch.Tensor) -> torch.Tensor:
        calls.append((threading.current_thread().name, int(rotation_matrices.shape[0])))
        return library(volume_rfft=volume_rfft, rotation_matrices=rotation_matrices)

    monkeypatch.setattr(projection, "extract_central_slices_rfft_3d", spy)
    return calls


@pytest.mark.parametrize("d", [24, 25])
def test_slices_on_threads_equal_one_library_call(d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(d)
    pr = Projector(torch.randn(d, d, d, generator=gen))
    mats = euler_to_matrix(torch.tensor(random_angles(37, seed=d), dtype=torch.float32))
    whole = extract_central_slices_rfft_3d(volume_rfft=pr.volume_rfft, rotation_matrices=mats.transpose(-1, -2))
    calls = _spy_on_slice_extraction(monkeypatch)
    torch.set_num_threads(2)
    assert torch.equal(pr.slices(mats), whole)  # 37 slices of ~1,200 samples: too little to split
    assert calls == [(threading.current_thread().name, 37)]
    calls.clear()
    monkeypatch.setattr(projection, "MIN_SAMPLES_PER_THREAD", 1000)
    assert torch.equal(pr.slices(mats), whole)
    assert sorted(n for _, n in calls) == [18, 19]
    assert all(name.startswith("projector") for name, _ in calls)
    calls.clear()
    torch.set_num_threads(1)
    assert torch.equal(pr.slices(mats), whole)
    assert calls == [(threading.current_thread().name, 37)]


@pytest.mark.parametrize(("n", "threads", "samples", "chunks"), [(100, 16, 10**6, 4), (100, 2, 10**6, 2), (3, 16, 10**6, 3), (100, 16, 2**17 // 50 + 1, 2), (100, 16, 2**17 // 200, 1)])
def test_chunks_in_threads_splits_by_threads_cap_and_work(n: int, threads: int, samples: int, chunks: int) -> None:
    rows: list[int] = []

    def fn(r: torch.Tensor) -> torch.Tensor:
        rows.append(int(r.shape[0]))
        return r.sum(dim=(-2, -1))

    rotations = torch.arange(9.0 * n).reshape(n, 3, 3)
    out = projection._chunks_in_threads(fn, rotations, threads, samples)
    assert torch.equal(out, rotations.sum(dim=(-2, -1)))
    assert len(rows) == chunks and sum(rows) == n


def test_differentiable_projection_is_one_library_call(monkeypatch: pytest.MonkeyPatch) -> None:
    d = 24
    vol = torch.tensor(blobs_volume(d), dtype=torch.float32, requires_grad=True)
    mats = euler_to_matrix(torch.tensor(random_angles(40, seed=1), dtype=torch.float32))
    calls = _spy_on_slice_extraction(monkeypatch)
    monkeypatch.setattr(projection, "MIN_SAMPLES_PER_THREAD", 1000)
    torch.set_num_threads(2)
    proj = project(vol, mats)
    assert calls == [(threading.current_thread().name, 40)]
    proj.sum().backward()
    assert vol.grad is not None and float(vol.grad.abs().sum()) > 0


def relion_ctf_np(box: int, px: float, du: float, dv: float, ang: float, kv: float, cs: float, q0: float) -> np.ndarray:
    """Full-grid RELION CTF (no phase shift, B or scale) for the independent check."""
    v = kv * 1e3
    lam = 12.2643247 / np.sqrt(v * (1 + v * 0.978466e-6))
    ky = np.fft.fftfreq(box, d=px)[:, None]
    kx = np.fft.fftfreq(box, d=px)[None, :]
    u2 = kx**2 + ky**2
    dphi = np.arctan2(ky, kx) - np.deg2rad(ang)
    df = du * np.cos(dphi) ** 2 + dv * np.sin(dphi) ** 2
    gamma = -np.pi * lam * df * u2 + np.pi / 2 * cs * 1e7 * lam**3 * u2**2 - np.arctan(q0 / np.sqrt(1 - q0**2))
    return -np.sin(gamma)


@pytest.mark.parametrize("d", [32, 33])
def test_forward_model_equals_ctf_times_shifted_projection(d: int) -> None:
    v = torch.tensor(blobs_volume(d, seed=3), dtype=torch.float32)
    angles = torch.tensor(random_angles(2, seed=9), dtype=torch.float32)
    origins = torch.tensor([[2.6, -7.0], [-4.4, 1.0]])
    px = torch.tensor([1.3, 2.0])
    ctf = CtfParams(*[torch.tensor(x, dtype=torch.float32) for x in [
        [14000.0, 9000.0], [11000.0, 9500.0], [25.0, -80.0], [300.0, 200.0], [2.7, 1.4],
        [0.1, 0.07], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]])
    got = forward_model(v, angles, origins, px, ctf).numpy()
    # a Projector made once gives the same images (its own pad factor, not the argument's)
    np.testing.assert_array_equal(forward_model(Projector(v), angles, origins, px, ctf).numpy(), got)
    np.testing.assert_array_equal(forward_model(Projector(v, 3.0), angles, origins, px, ctf, pad_factor=2.0).numpy(),
                                  forward_model(v, angles, origins, px, ctf, pad_factor=3.0).numpy())
    proj = project(v, euler_to_matrix(angles)).numpy().astype(np.float64)
    k = np.fft.fftfreq(d)
    for i in range(2):
        o = origins[i].numpy() / px[i].item()
        ramp = np.exp(2j * np.pi * (k[None, :] * o[0] + k[:, None] * o[1]))  # exp(+2πi k·o)
        c = relion_ctf_np(d, px[i].item(), *[float(getattr(ctf, f)[i]) for f in (
            "defocus_u_A", "defocus_v_A", "defocus_angle_deg", "voltage_kV", "cs_mm", "amplitude_contrast")])
        ref = np.fft.ifft2(np.fft.fft2(proj[i]) * c * ramp).real
        assert np.abs(got[i] - ref).max() < 1e-3 * np.abs(ref).max()
    # DC: the image sums to Q0 × the projection sum
    np.testing.assert_allclose(got.sum(axis=(1, 2)), [0.1 * proj[0].sum(), 0.07 * proj[1].sum()], rtol=1e-3)


def test_fourier_filter_images_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(3, 20, 21)).astype(np.float32)
    filt = rng.normal(size=(1, 20, 11)).astype(np.float32)
    got = fourier_filter_images(torch.tensor(imgs), torch.tensor(filt)).numpy()
    ref = np.fft.irfft2(np.fft.rfft2(imgs) * filt, s=(20, 21))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    with pytest.raises(ValueError):
        fourier_filter_images(torch.tensor(imgs), torch.ones(2, 20, 11))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        project(torch.zeros(8, 8, 9), torch.eye(3)[None])
    with pytest.raises(ValueError):
        project(torch.zeros(8, 8, 8), torch.eye(3))
    with pytest.raises(ValueError):
        project(torch.zeros(8, 8, 8), torch.eye(3)[None], pad_factor=0.5)
    with pytest.raises(ValueError):
        backproject(torch.zeros(2, 8, 8), torch.eye(3)[None])
    with pytest.raises(ValueError):
        forward_model(torch.zeros(8, 8, 8), torch.zeros(2, 3), torch.zeros(3, 2), 1.0)
    with pytest.raises(ValueError):
        shift_images(torch.zeros(2, 8, 8), torch.zeros(3, 2))


def _load_real_particles(n: int) -> tuple[torch.Tensor, torch.Tensor, object, float]:
    folder = shared_path("betagal-relion-tutorial")
    blocks = starfile.read(folder / "betagal_particles_posed.star")
    df = blocks["particles"].merge(blocks["optics"], on="rlnOpticsGroup").iloc[:n]
    images = []
    for name in df["rlnImageName"]:
        index, path = name.split("@")
        with mrcfile.mmap(folder / path, permissive=True) as m:
            images.append(np.asarray(m.data[int(index) - 1], dtype=np.float32))
    with mrcfile.open(folder / "betagal_5a1a_sim_relionframe_3.54A_box64.mrc", permissive=True) as m:
        vol = torch.tensor(np.asarray(m.data, dtype=np.float32))
    return torch.tensor(np.stack(images)), vol, df, float(df["rlnImagePixelSize"].iloc[0])


def test_real_particles_agree_with_predictions_at_their_poses() -> None:
    images, vol, df, px = _load_real_particles(48)
    angles = torch.tensor(df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), dtype=torch.float32)
    origins = torch.tensor(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), dtype=torch.float32)
    ctf = CtfParams.from_particles(df)
    yy, xx = np.indices((64, 64))
    mask = torch.tensor((xx - 32) ** 2 + (yy - 32) ** 2 <= 28**2)

    def mean_cc(pred: torch.Tensor) -> float:
        """Mean per-image CC inside the mask between ``pred`` and the images."""
        a, b = images[:, mask], pred[:, mask]
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())

    own = mean_cc(forward_model(vol, angles, origins, px, ctf))
    flipped_origin = mean_cc(forward_model(vol, angles, -origins, px, ctf))
    transposed = torch.tensor(
        Rotation.from_euler("ZYZ", angles.numpy(), degrees=True).inv().as_euler("ZYZ", degrees=True),
        dtype=torch.float32,
    )
    wrong_euler = mean_cc(forward_model(vol, transposed, origins, px, ctf))
    assert own > 0.25  # SOURCES.md: 0.31 with own poses, 0.05 with wrong ones
    assert flipped_origin < 0.15 and wrong_euler < 0.15
    # compute_ctf is what forward_model applied: the premise of the CTF sign (white protein)
    assert float(compute_ctf(ctf[0], 64, px)[0, 0, 0]) > 0
