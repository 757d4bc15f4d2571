"""Tests of cryogan_core.models: U-Net, PatchGAN, CryoGAN critic, WGAN-GP, blur, volumes.

References are written independently here: closed-form gradient penalties, scipy's
Gaussian filter, integer index maps for 90/180 degree rotations, pix2pix's conv size formula.
"""

from __future__ import annotations

import json
import math

import mrcfile
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation
from torch import nn

from cryogan_core.models.critic import CryoGANCritic, gaussian_blur_images, gradient_penalty
from cryogan_core.models.patchgan import PatchGANDiscriminator
from cryogan_core.models.unet import ConvNormAct, UNetGenerator, pad_to_multiple
from cryogan_core.models.volume import (
    LatentVolumeGenerator,
    VoxelVolume,
    symmetrise_volumes,
    symmetry_matrices,
)

BOXES = [63, 64, 65, 100, 128]


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("box", BOXES)
def test_unet_output_shape_any_box(box):
    model = UNetGenerator()
    out = model(torch.randn(2, 1, box, box))
    assert out.shape == (2, 1, box, box)
    assert out.dtype == torch.float32 and out.is_contiguous()


def test_unet_rectangular_and_multichannel():
    model = UNetGenerator(in_channels=2, out_channels=3, depth=4, n_res_blocks=1, norm="instance", dropout=0.5)
    assert model(torch.randn(2, 2, 37, 70)).shape == (2, 3, 37, 70)


def _pix2pix_logit_size(s: int, n_layers: int) -> int:
    """Conv output size floor((s + 2p - k) / stride) + 1 through pix2pix's NLayerDiscriminator."""
    for stride in [2] * n_layers + [1, 1]:
        s = (s + 2 * 1 - 4) // stride + 1
    return s


@pytest.mark.parametrize("box", BOXES)
def test_patchgan_output_shape(box):
    d = PatchGANDiscriminator()
    out = d(torch.randn(3, 1, box, box), torch.randn(3, 1, box, box))
    s = _pix2pix_logit_size(box, 3)
    assert out.shape == (3, 1, s, s)
    assert d.output_size(box, box) == (s, s)


def test_patchgan_64px_is_6x6_and_receptive_field_70():
    d = PatchGANDiscriminator(norm="none")
    assert d(torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)).shape == (1, 1, 6, 6)
    # receptive field: the gradient of one logit reaches a 70-px wide window (clipped by the image)
    img = torch.zeros(1, 1, 128, 128, requires_grad=True)
    d(torch.zeros(1, 1, 128, 128), img)[0, 0, 7, 7].backward()
    cols = (img.grad[0, 0].abs().sum(0) > 0).nonzero().flatten()
    assert int(cols.max() - cols.min() + 1) == 70


@pytest.mark.parametrize("box", BOXES)
def test_critic_output_shape(box):
    c = CryoGANCritic(box)
    assert c(torch.randn(4, 1, box, box)).shape == (4,)


# --------------------------------------------------------------------------- gradients


def _assert_all_params_get_gradients(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_unet_gradients_reach_all_parameters(norm):
    model = UNetGenerator(norm=norm, dropout=0.1)
    model(torch.randn(4, 1, 33, 33)).square().mean().backward()
    _assert_all_params_get_gradients(model)


def test_patchgan_and_critic_gradients_reach_all_parameters():
    d = PatchGANDiscriminator()
    d(torch.randn(2, 1, 65, 65), torch.randn(2, 1, 65, 65)).mean().backward()
    _assert_all_params_get_gradients(d)
    c = CryoGANCritic(64, norm="layer")
    c(torch.randn(3, 1, 64, 64)).sum().backward()
    _assert_all_params_get_gradients(c)


def test_volume_generators_gradients():
    v = VoxelVolume(12, init=torch.rand(12, 12, 12), symmetry="D3")
    v().sum().backward()
    _assert_all_params_get_gradients(v)
    g = LatentVolumeGenerator(20, latent_dim=4, base_channels=8)
    (g(torch.randn(3, 4)) - 1.0).square().sum().backward()
    _assert_all_params_get_gradients(g)


# --------------------------------------------------------------------------- checkerboard


class _TransposedConvNet(nn.Module):
    """The deliberately bad decoder: ConvTranspose2d stride 2, kernel 3 (uneven overlap)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(16, 32, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(16, 16, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.Conv2d(16, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped network's output."""
        return self.net(x)


def _nyquist_peak_ratio(images: np.ndarray, radius: int = 2) -> float:
    """Mean power at (ky, kx) = (Nyquist, Nyquist) / median power of its (2r+1)² neighbours.

    ``images`` (n, N, N), N even; the interior 8-px border is cut (zero-padding edge effects).
    """
    x = images[:, 8:-8, 8:-8]
    x = x - x.mean(axis=(1, 2), keepdims=True)
    p = np.mean(np.abs(np.fft.fft2(x)) ** 2, axis=0)
    n = p.shape[0]
    c = n // 2
    neigh = [p[(c + dy) % n, (c + dx) % n] for dy in range(-radius, radius + 1)
             for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]
    return float(p[c, c] / max(np.median(neigh), 1e-30))


def _outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x)[:, 0].numpy().astype(np.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unet_has_no_checkerboard_but_transposed_conv_does(seed):
    const = torch.ones(1, 1, 64, 64)
    noise = torch.randn(32, 1, 64, 64, generator=torch.Generator().manual_seed(1234))
    torch.manual_seed(seed)
    unet = UNetGenerator()
    assert _nyquist_peak_ratio(_outputs(unet, const)) < 3.0
    assert _nyquist_peak_ratio(_outputs(unet, noise)) < 3.0
    torch.manual_seed(seed + 1)  # seeds 1-3: weight draws where the artefact is clear for noise too
    bad = _TransposedConvNet()
    assert _nyquist_peak_ratio(_outputs(bad, const)) > 100.0
    assert _nyquist_peak_ratio(_outputs(bad, noise)) > 5.0


# --------------------------------------------------------------------------- config / checkpoints


def _models_and_inputs():
    return [
        (UNetGenerator(base_channels=8, depth=2, n_res_blocks=1, norm="instance"), (torch.randn(2, 1, 31, 31),)),
        (UNetGenerator(), (torch.randn(2, 1, 64, 64),)),
        (PatchGANDiscriminator(base_channels=8, n_layers=2), (torch.randn(2, 1, 40, 40), torch.randn(2, 1, 40, 40))),
        (CryoGANCritic(33, channels=(4, 8), n_fc=3, pool="avg", norm="layer"), (torch.randn(2, 1, 33, 33),)),
        (VoxelVolume(9, init=torch.randn(9, 9, 9), mask=torch.rand(9, 9, 9) > 0.3, symmetry="C2"), ()),
        (LatentVolumeGenerator(17, latent_dim=3, base_channels=8), (torch.randn(2, 3),)),
    ]


def _randomise_buffers(model: nn.Module) -> None:
    """Give BatchNorm non-trivial running statistics so a round trip must restore them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def test_config_round_trip_gives_identical_outputs():
    for model, inputs in _models_and_inputs():
        _randomise_buffers(model)
        cfg = json.loads(json.dumps(model.config))  # configs must survive a JSON checkpoint
        clone = type(model).from_config(cfg)
        clone.load_state_dict(model.state_dict())
        model.eval()
        clone.eval()
        with torch.no_grad():
            assert torch.equal(model(*inputs), clone(*inputs)), type(model).__name__


def test_state_dict_loads_with_weights_only(tmp_path):
    for i, (model, inputs) in enumerate(_models_and_inputs()):
        path = tmp_path / f"m{i}.pt"
        torch.save({"config": model.config, "state_dict": model.state_dict()}, path)
        ckpt = torch.load(path, weights_only=True)
        clone = type(model).from_config(ckpt["config"])
        clone.load_state_dict(ckpt["state_dict"])
        with torch.no_grad():
            assert torch.equal(model.eval()(*inputs), clone.eval()(*inputs))


# --------------------------------------------------------------------------- U-Net details


def test_batchnorm_folding_equals_conv_then_batchnorm():
    block = ConvNormAct(5, 7, 3, stride=2, norm="batch", act="lrelu")
    bn = block.norm
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 3)
    nn.init.uniform_(bn.weight, 0.5, 2)
    nn.init.uniform_(bn.bias, -1, 1)
    x = torch.randn(3, 5, 17, 16)
    block.eval()
    ref = F.conv2d(x, block.conv.weight, None, 2, 1)
    ref = (ref - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    ref = F.leaky_relu(ref * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1), 0.2)
    with torch.no_grad():
        assert torch.allclose(block(x), ref, atol=1e-5)


@pytest.mark.parametrize("h,w", [(63, 64), (65, 100), (5, 9), (64, 64)])
def test_pad_to_multiple_keeps_image_centred(h, w):
    x = torch.randn(1, 1, h, w)
    y, (left, right, top, bottom) = pad_to_multiple(x, 8)
    assert y.shape[-2] % 8 == 0 and y.shape[-1] % 8 == 0
    assert y.shape[-2] == h + top + bottom and y.shape[-1] == w + left + right
    assert abs(left - right) <= 1 and abs(top - bottom) <= 1
    assert torch.equal(y[..., top : top + h, left : left + w], x)


def test_unet_output_is_linear_and_unbounded():
    model = UNetGenerator(norm="none").eval()
    with torch.no_grad():
        out = model(50.0 * torch.randn(2, 1, 32, 32))
    assert out.abs().max() > 1.0  # no tanh squashing
    assert (out < 0).any() and (out > 0).any()


def test_unet_can_fit_a_denoising_map_quickly():
    """Capacity smoke test: 20 Adam steps reduce the L1 loss to a smooth target by > 2x."""
    x = torch.randn(4, 1, 24, 24)
    target = gaussian_blur_images(x, 1.5)
    model = UNetGenerator()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(20):
        loss = F.l1_loss(model(x), target)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError):
        UNetGenerator(norm="group")
    with pytest.raises(ValueError):
        UNetGenerator(depth=0)
    with pytest.raises(ValueError):
        UNetGenerator(dropout=1.0)
    with pytest.raises(ValueError):
        UNetGenerator()(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError):
        PatchGANDiscriminator(norm="layer")
    with pytest.raises(ValueError, match="smaller than the minimum"):
        PatchGANDiscriminator()(torch.randn(1, 1, 20, 20), torch.randn(1, 1, 20, 20))
    with pytest.raises(ValueError):
        PatchGANDiscriminator()(torch.randn(1, 1, 64, 64), torch.randn(1, 1, 63, 63))
    with pytest.raises(ValueError, match="too small"):
        CryoGANCritic(15)
    with pytest.raises(ValueError):
        CryoGANCritic(64, norm="batch")
    with pytest.raises(ValueError, match="critic built for"):
        CryoGANCritic(64)(torch.randn(2, 1, 65, 65))
    with pytest.raises(ValueError):
        VoxelVolume(8, mask=torch.ones(8, 8, 9))
    with pytest.raises(ValueError):
        LatentVolumeGenerator(16, latent_dim=4)(torch.randn(2, 5))


# --------------------------------------------------------------------------- WGAN-GP


class _LinearCritic(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The linear score ``<w, x>`` of each image, ``(n,)``."""
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_zero_for_unit_norm_linear_critic_and_exact_otherwise():
    w = torch.randn(1, 1, 16, 16)
    real, fake = torch.randn(5, 1, 16, 16), torch.randn(5, 1, 16, 16)
    unit = _LinearCritic(w / w.norm())
    assert float(gradient_penalty(unit, real, fake).detach()) < 1e-10
    # ‖∇D‖ = 3 everywhere -> λ (3 − 1)² = 40, independent of the interpolation
    triple = _LinearCritic(3 * w / w.norm())
    assert math.isclose(float(gradient_penalty(triple, real, fake, lam=10.0).detach()), 40.0, rel_tol=1e-5)


def test_gradient_penalty_interpolates_per_sample():
    """Quadratic critic D(x) = ½‖x‖²: ∇D(x̂) = x̂, so the penalty has a closed form in ε."""
    real, fake = torch.randn(6, 1, 8, 8), 0.3 * torch.randn(6, 1, 8, 8)
    critic = lambda x: 0.5 * x.flatten(1).square().sum(1)  # noqa: E731
    pen = gradient_penalty(critic, real, fake, lam=2.0, generator=torch.Generator().manual_seed(7))
    eps = torch.rand((6, 1, 1, 1), generator=torch.Generator().manual_seed(7))
    x_hat = eps * real + (1 - eps) * fake
    ref = 2.0 * ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert torch.allclose(pen, ref, rtol=1e-5)
    assert len(set(eps.flatten().tolist())) == 6  # one ε per sample


def test_gradient_penalty_is_positive_and_differentiable_for_the_critic():
    critic = CryoGANCritic(32, channels=(8, 16))
    pen = gradient_penalty(critic, torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32))
    assert float(pen.detach()) > 0
    pen.backward()
    # biases of a piecewise-linear critic do not change ∇ₓD (zero derivative); weights must
    for name, prm in critic.named_parameters():
        if name.endswith("weight"):
            assert prm.grad is not None and prm.grad.abs().sum() > 0, name
    with pytest.raises(ValueError):
        gradient_penalty(critic, torch.randn(4, 1, 32, 32), torch.randn(3, 1, 32, 32))


# --------------------------------------------------------------------------- Gaussian blur


@pytest.mark.parametrize("shape,sigma", [((2, 1, 33, 33), 1.3), ((1, 2, 32, 40), 2.0), ((1, 1, 9, 10), 5.0)])
def test_gaussian_blur_matches_scipy_wrap_and_keeps_mean(shape, sigma):
    x = torch.randn(*shape, dtype=torch.float64)
    y = gaussian_blur_images(x, sigma)
    ref = np.stack([[ndimage.gaussian_filter(im, sigma, mode="wrap", truncate=4.0) for im in imgs]
                    for imgs in x.numpy()])
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(y.mean(dim=(2, 3)).numpy(), x.mean(dim=(2, 3)).numpy(), atol=1e-12)
    assert y.std() < x.std()


def test_gaussian_blur_sigma_zero_is_identity_and_errors():
    x = torch.randn(3, 1, 16, 15)
    assert torch.equal(gaussian_blur_images(x, 0.0), x)
    assert torch.equal(gaussian_blur_images(x, 0.05), x)  # radius int(4σ + 0.5) = 0
    with pytest.raises(ValueError):
        gaussian_blur_images(x, -1.0)
    with pytest.raises(ValueError):
        gaussian_blur_images(x[0], 1.0)


def test_gaussian_blur_is_differentiable():
    x = torch.randn(1, 1, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gaussian_blur_images(t, 1.1), (x,))


# --------------------------------------------------------------------------- symmetry


@pytest.mark.parametrize(
    "symbol,order", [("C1", 1), ("C4", 4), ("c7", 7), ("C12", 12), ("D1", 2), ("D2", 4), ("D7", 14),
                     ("T", 12), ("O", 24), ("I", 60), ("I1", 60), ("I2", 60), ("I3", 60), ("I4", 60)],
)
def test_symmetry_groups_are_closed_rotation_groups(symbol, order):
    m = symmetry_matrices(symbol).double()
    assert m.shape == (order, 3, 3)
    assert torch.allclose(m[0], torch.eye(3, dtype=torch.float64))
    assert torch.allclose(m @ m.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(m), atol=1e-6)
    assert torch.allclose(torch.linalg.det(m), torch.ones(order, dtype=torch.float64), atol=1e-6)
    flat = m.reshape(order, 9)
    products = (m[:, None] @ m[None]).reshape(-1, 9)
    dist = torch.cdist(products, flat)  # every product is a member of the group
    assert dist.min(dim=1).values.max() < 1e-5
    assert torch.cdist(flat, flat).add(torch.eye(order, dtype=torch.float64) * 10).min() > 1e-3  # distinct


def _has(m: torch.Tensor, r: np.ndarray) -> bool:
    return bool((m.double() - torch.as_tensor(r)).abs().amax(dim=(1, 2)).min() < 1e-5)


def _rot(axis, deg) -> torch.Tensor:
    """Right-handed rotation by ``deg`` about ``axis`` (x, y, z), from scipy (independent)."""
    rotvec = np.radians(deg) * np.asarray(axis, float) / np.linalg.norm(axis)
    return torch.as_tensor(Rotation.from_rotvec(rotvec).as_matrix())


def test_symmetry_axes_follow_relion():
    c5 = symmetry_matrices("C5")
    assert torch.allclose(c5 @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0]).expand(5, 3), atol=1e-6)
    assert _has(c5, _rot([0, 0, 1], 72))
    d3 = symmetry_matrices("D3")
    assert _has(d3, np.diag([1.0, -1.0, -1.0]))  # 2-fold along x
    assert not _has(d3, np.diag([-1.0, 1.0, -1.0]))  # ... not along y
    for sym in ("I", "I1", "I2"):  # 222 settings: 2-folds on x, y and z
        for d in ([1, -1, -1], [-1, 1, -1], [-1, -1, 1]):
            assert _has(symmetry_matrices(sym), np.diag(np.array(d, float))), sym
    assert _has(symmetry_matrices("I3"), _rot([0, 0, 1], 72))  # I3: 5-fold on z
    assert not _has(symmetry_matrices("I2"), _rot([0, 0, 1], 72))
    assert _has(symmetry_matrices("O"), _rot([0, 0, 1], 90)) and _has(symmetry_matrices("O"), _rot([1, 1, 1], 120))
    assert _has(symmetry_matrices("T"), _rot([0, 0, 1], 120))
    assert _has(symmetry_matrices("T"), _rot([0, 0.816496, 0.577350], 180))


@pytest.mark.parametrize("bad", ["", "X", "C0", "Cs", "D2h", "C4v", "Oh", "I5", "C-3", "helix"])
def test_unknown_symmetry_raises(bad):
    with pytest.raises(ValueError):
        symmetry_matrices(bad)


def _sphere(box: int, radius: float) -> torch.Tensor:
    r = torch.arange(box) - box // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    return (x**2 + y**2 + z**2) <= radius**2


def _index_map(vol: np.ndarray, fn) -> np.ndarray:
    """out[z, y, x] = vol[fn(z, y, x)] on the integer grid (zeros outside), centre D // 2."""
    d = vol.shape[0]
    c = d // 2
    out = np.zeros_like(vol)
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(d), np.arange(d), indexing="ij")
    sz, sy, sx = fn(zz - c, yy - c, xx - c)
    sz, sy, sx = sz + c, sy + c, sx + c
    ok = (sz >= 0) & (sz < d) & (sy >= 0) & (sy < d) & (sx >= 0) & (sx < d)
    out[ok] = vol[sz[ok], sy[ok], sx[ok]]
    return out


@pytest.mark.parametrize("box", [20, 21])
def test_voxel_volume_c4_is_invariant_under_90_degrees_about_z(box):
    vol = VoxelVolume(box, init=torch.rand(box, box, box), symmetry="C4", mask=_sphere(box, box // 2 - 1))
    with torch.no_grad():
        v = vol().numpy()
    rotated = _index_map(v, lambda z, y, x: (z, x, -y))  # (x, y) -> (-y, x): 90° about z
    assert np.abs(v).max() > 0.1
    np.testing.assert_allclose(rotated, v, atol=1e-5)
    # the unsymmetrised random volume is NOT invariant (the check can fail)
    raw = (vol.density * vol.mask).detach().numpy()
    assert np.abs(_index_map(raw, lambda z, y, x: (z, x, -y)) - raw).max() > 0.1


@pytest.mark.parametrize("box", [20, 21])
def test_voxel_volume_d2_is_invariant_under_180_degrees_about_x(box):
    vol = VoxelVolume(box, init=torch.rand(box, box, box), symmetry="D2", mask=_sphere(box, box // 2 - 1))
    with torch.no_grad():
        v = vol().numpy()
    np.testing.assert_allclose(_index_map(v, lambda z, y, x: (-z, -y, x)), v, atol=1e-5)  # 2-fold about x
    np.testing.assert_allclose(_index_map(v, lambda z, y, x: (z, -y, -x)), v, atol=1e-5)  # 2-fold about z


def test_symmetrise_c5_gaussian_blob_matches_closed_form():
    """Off-lattice group: C5 average of a Gaussian blob at p = mean of blobs at Rz(72 k) p."""
    box, sigma, p = 32, 3.0, np.array([6.0, 2.0, 1.0])
    r = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = (t.numpy() for t in torch.meshgrid(r, r, r, indexing="ij"))

    def blob(c):
        """Gaussian blob of width ``sigma`` voxels centred at ``c`` (x, y, z) on the grid."""
        return np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma**2))

    ref = np.mean([blob(_rot([0, 0, 1], 72 * k).numpy() @ p) for k in range(5)], axis=0)
    v = symmetrise_volumes(torch.as_tensor(blob(p), dtype=torch.float32), symmetry_matrices("C5")).numpy()
    assert np.abs(v - ref).max() < 0.03 * ref.max()  # trilinear interpolation error only
    assert np.abs(blob(p) - ref).max() > 0.5 * ref.max()  # the input is far from symmetric
    batch = symmetrise_volumes(torch.as_tensor(np.stack([blob(p), 2 * blob(p)]), dtype=torch.float32),
                               symmetry_matrices("C5"), max_points=3 * box**3)  # chunked path
    np.testing.assert_allclose(batch[1].numpy(), 2 * v, rtol=1e-5, atol=1e-6)


def test_voxel_volume_positivity_projection_and_mask():
    box = 15
    init = torch.randn(box, box, box)
    mask = _sphere(box, 5)
    vol = VoxelVolume(box, init=init, mask=mask, symmetry="C2")
    with torch.no_grad():
        vol.density.copy_(init)  # negative values present in the parameter
        v = vol()
    assert (v >= 0).all()
    assert (v[~mask] == 0).all() and (v[mask] > 0).any()
    vol.project_()
    assert (vol.density >= 0).all()
    free = VoxelVolume(box, init=init, positivity=False)
    assert torch.equal(free(), init) and (free() < 0).any()


def test_positivity_keeps_gradients_for_voxels_below_zero():
    """Straight-through clamp: an all-negative start must still learn (a plain clamp would not)."""
    vol = VoxelVolume(6, init=torch.zeros(6, 6, 6))
    with torch.no_grad():
        vol.density.fill_(-1.0)
    target = torch.rand(6, 6, 6)
    assert torch.equal(vol(), torch.zeros(6, 6, 6))
    F.mse_loss(vol(), target).backward()
    assert torch.allclose(vol.density.grad, -2 * target / target.numel())
    g = LatentVolumeGenerator(8, latent_dim=2, base_channels=4)
    with torch.no_grad():
        g.out.bias.fill_(-100.0)  # every output voxel clamped
    out = g(torch.randn(2, 2))
    assert torch.equal(out, torch.zeros_like(out))
    F.mse_loss(out, torch.ones_like(out)).backward()
    assert g.out.bias.grad.abs().sum() > 0 and g.mlp[0].weight.grad.abs().sum() > 0


def test_voxel_volume_default_init_and_device_follow_module():
    vol = VoxelVolume(8)
    assert vol().shape == (8, 8, 8) and torch.equal(vol(), torch.zeros(8, 8, 8))
    assert vol.symmetry_ops.shape == (1, 3, 3) and vol.mask.dtype == torch.float32


@pytest.mark.realdata
def test_betagal_map_is_d2_symmetric_in_relion_axes(betagal_dir):
    """Real map (5A1A in the RELION tutorial frame; D2 axes on x, y, z per SOURCES.md)."""
    with mrcfile.open(betagal_dir / "betagal_5a1a_sim_relionframe_3.54A_box64.mrc", permissive=True) as f:
        v = torch.from_numpy(np.asarray(f.data, dtype=np.float32).copy())

    def cc(a: torch.Tensor, b: torch.Tensor) -> float:
        """Pearson correlation of two tensors of any shape."""
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))

    d2 = symmetry_matrices("D2")
    assert cc(v, VoxelVolume(64, init=v, positivity=False, symmetry="D2")().detach()) > 0.999
    r45 = _rot([0, 0, 1], 45).float()  # the same group with its 2-folds on the xy diagonals
    assert cc(v, symmetrise_volumes(v, r45 @ d2 @ r45.T)) < 0.9
    assert cc(v, symmetrise_volumes(v, symmetry_matrices("C4"))) < 0.9


@pytest.mark.realdata
def test_blur_real_particles_matches_scipy(betagal_dir):
    stack = sorted((betagal_dir / "particles" / "Movies").glob("*.mrcs"))[0]
    with mrcfile.open(stack, permissive=True) as f:
        imgs = np.asarray(f.data[:4], dtype=np.float64)
    y = gaussian_blur_images(torch.from_numpy(imgs)[:, None], 2.0)[:, 0].numpy()
    ref = np.stack([ndimage.gaussian_filter(im, 2.0, mode="wrap") for im in imgs])
    np.testing.assert_allclose(y, ref, atol=1e-10)
    critic = CryoGANCritic(imgs.shape[-1])
    assert torch.isfinite(critic(torch.from_numpy(imgs).float()[:, None])).all()


# --------------------------------------------------------------------------- latent generator


@pytest.mark.parametrize("box", [16, 21, 33, 64])
def test_latent_volume_generator_shapes_and_positivity(box):
    g = LatentVolumeGenerator(box)
    v = g(torch.randn(2, 8))
    assert v.shape == (2, box, box, box) and v.dtype == torch.float32
    assert (v >= 0).all()


def test_latent_volume_generator_base_volume_and_latent_dependence():
    base = torch.rand(12, 12, 12)
    g = LatentVolumeGenerator(12, latent_dim=2, base_channels=8, base_init=base, positivity=False)
    with torch.no_grad():
        g.out.weight.zero_()
        g.out.bias.zero_()
        assert torch.allclose(g(torch.randn(3, 2)), base.expand(3, 12, 12, 12))
    g2 = LatentVolumeGenerator(12, latent_dim=2, base_channels=8, use_base=False, positivity=False)
    v = g2(torch.tensor([[0.0, 0.0], [3.0, -3.0]]))
    assert not torch.allclose(v[0], v[1])
    assert g2.base is None
    with pytest.raises(ValueError):
        LatentVolumeGenerator(12, use_base=False, base_init=base)


# --------------------------------------------------------------------------- device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_models_run_on_cuda():
    dev = torch.device("cuda")
    assert UNetGenerator().to(dev)(torch.randn(2, 1, 63, 63, device=dev)).device.type == "cuda"
    img = torch.randn(2, 1, 64, 64, device=dev)
    assert PatchGANDiscriminator().to(dev)(img, img).is_cuda
    c = CryoGANCritic(32).to(dev)
    assert gradient_penalty(c, torch.randn(2, 1, 32, 32, device=dev), torch.randn(2, 1, 32, 32, device=dev)).is_cuda
    assert gaussian_blur_images(torch.randn(1, 1, 16, 16, device=dev), 1.0).is_cuda
    assert VoxelVolume(10, symmetry="O").to(dev)().is_cuda
    assert LatentVolumeGenerator(16).to(dev)(torch.randn(2, 8, device=dev)).is_cuda


@pytest.mark.parametrize("box, device, expected", [(64, "cpu", 64), (128, "cpu", 16), (256, "cpu", 4), (400, "cpu", 1),
                                                   (32, "cpu", 256), (16, "cpu", 256), (256, "cuda", 64), (32, "cuda", 1024)])
def test_inference_batches_hold_a_fixed_number_of_pixels(box, device, expected):
    from cryogan_core.train.pix2pix import inference_batch_size
    assert inference_batch_size(box, device) == expected


def test_denoised_images_do_not_depend_on_the_batch_size():
    from cryogan_core.physics.ctf import CtfParams, compute_ctf
    from cryogan_core.train.pix2pix import denoise_images
    torch.manual_seed(0)
    model = UNetGenerator(base_channels=4, depth=2)
    model.train()
    model(torch.randn(8, 1, 40, 40))  # running statistics away from their start, so the folded BatchNorm matters
    x = torch.randn(37, 40, 40)
    ctf = compute_ctf(CtfParams(torch.full((37,), 15000.0), torch.full((37,), 14000.0), torch.zeros(37), torch.full((37,), 300.0),
                                torch.full((37,), 2.7), torch.full((37,), 0.1), torch.zeros(37), torch.zeros(37), torch.ones(37)),
                      40, 3.0, rfft=True)
    auto = denoise_images(model, x, ctf=ctf)  # 64 * 64² // 40² = 163 per pass: one batch
    for bs in (1, 5, 37):
        torch.testing.assert_close(denoise_images(model, x, batch_size=bs, ctf=ctf), auto, rtol=1e-4, atol=1e-5)
