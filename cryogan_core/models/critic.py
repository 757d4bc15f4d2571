"""CryoGAN critic (Wasserstein discriminator), WGAN-GP penalty, and Gaussian smoothing.

Critic (Gupta, McCann, Donati & Unser 2021, IEEE TCI 7:759, "CryoGAN: a new reconstruction
paradigm for single-particle cryo-EM via deep adversarial learning"; reference code
``harshit-gupta-cor/CryoGAN``, ``Networks.py::DownsamplingCNN``): blocks of
``conv 3x3 (stride 1) -> pool 2x2 -> LeakyReLU``, channels doubling each block, then fully
connected layers to one scalar. The paper's β-galactosidase run used 7 blocks with
``K = 48`` (channels 96, 192, 384, ..., 6144), leak 0.1 and 10 penultimate features on
180 px images on a GPU. For the 32-64 px boxes this project trains on CPU the defaults are
scaled down to ``channels = (16, 32, 64, 128)`` (4 pools: 64 px -> 4 x 4 x 128 features,
about 30 MFLOP per image), ``fc_features = 64`` and leak 0.2 (as the issue asks); every
value is a constructor argument. No batch norm (WGAN-GP penalises per-sample gradients,
Gulrajani et al. 2017 Sec. 4); ``norm="layer"`` adds a per-sample LayerNorm over
``(C, H, W)`` (GroupNorm with one group) after each convolution.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cryogan_core.device import to_device


class CryoGANCritic(nn.Module):
    """CNN critic ``images (n, 1, box, box) -> scores (n,)`` (unbounded, higher = "real").

    Attributes:
        config: the constructor's keyword arguments, for ``from_config``.
    """

    def __init__(
        self,
        box: int,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        n_fc: int = 2,
        fc_features: int = 64,
        pool: str = "max",
        leak: float = 0.2,
        norm: str = "none",
        in_channels: int = 1,
    ) -> None:
        """Build the critic for square images of side ``box``.

        Args:
            box: image side in pixels; ``forward`` accepts only this size (the first fully
                connected layer has ``channels[-1] * (box // 2**len(channels))**2`` inputs).
            channels: output channels of each conv + pool block (one 2x2 pooling per entry).
            n_fc: number of fully connected layers (>= 1); all but the last have
                ``fc_features`` outputs and a LeakyReLU; the last has one output.
            fc_features: width of the hidden fully connected layers.
            pool: ``"max"`` (paper) or ``"avg"``.
            leak: LeakyReLU negative slope.
            norm: ``"none"`` or ``"layer"`` (never batch norm: it breaks the GP).
            in_channels: image channels.

        Raises:
            ValueError: ``box < 2**len(channels)`` (nothing left after pooling), empty or
                non-positive channels, ``n_fc < 1``, unknown ``pool`` or ``norm``.
        """
        super().__init__()
        if len(channels) == 0 or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {channels}")
        if box < 2 ** len(channels):
            raise ValueError(
                f"box {box} px is too small for {len(channels)} 2x2 poolings (needs >= {2 ** len(channels)})"
            )
        if n_fc < 1:
            raise ValueError(f"n_fc must be >= 1, got {n_fc}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        if norm not in ("none", "layer"):
            raise ValueError(f"norm must be 'none' or 'layer' (no batch norm in a WGAN-GP critic), got {norm!r}")
        self.config: dict[str, Any] = dict(
            box=box, channels=tuple(channels), n_fc=n_fc, fc_features=fc_features, pool=pool,
            leak=leak, norm=norm, in_channels=in_channels,
        )
        blocks: list[nn.Module] = []
        c_prev = in_channels
        for c in channels:
            blocks.append(nn.Conv2d(c_prev, c, 3, 1, 1))
            if norm == "layer":
                blocks.append(nn.GroupNorm(1, c))
            blocks.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
            blocks.append(nn.LeakyReLU(leak))
            c_prev = c
        self.features = nn.Sequential(*blocks)
        side = box // 2 ** len(channels)
        n_in = c_prev * side * side
        fcs: list[nn.Module] = []
        for _ in range(n_fc - 1):
            fcs += [nn.Linear(n_in, fc_features), nn.LeakyReLU(leak)]
            n_in = fc_features
        fcs.append(nn.Linear(n_in, 1))
        self.head = nn.Sequential(*fcs)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "CryoGANCritic":
        """Rebuild the architecture from ``model.config`` (weights not included)."""
        cfg = dict(cfg)
        cfg["channels"] = tuple(cfg["channels"])
        return cls(**cfg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Score a batch of images.

        Args:
            images: ``(n, in_channels, box, box)`` float32.

        Returns:
            ``(n,)`` float32 scores.

        Raises:
            ValueError: the images are not ``(n, in_channels, box, box)``.
        """
        box, c = self.config["box"], self.config["in_channels"]
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, box, box):
            raise ValueError(f"critic built for (n, {c}, {box}, {box}) images, got {tuple(images.shape)}")
        return self.head(self.features(images).flatten(1)).squeeze(1)


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    lam: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP gradient penalty (Gulrajani et al. 2017, "Improved training of Wasserstein
    GANs", Eq. 3 and Algorithm 1).

    ``x̂ = ε x_real + (1 − ε) x_fake`` with one ``ε ~ U[0, 1]`` per sample, and
    ``penalty = λ · mean_i (‖∇_x̂ D(x̂_i)‖₂ − 1)²``, the norm taken over all pixels and
    channels of sample ``i``. The graph is kept (``create_graph=True``) so the penalty can be
    back-propagated into the critic's parameters. ``real`` and ``fake`` are detached.

    Args:
        critic: maps ``(n, ...)`` to ``(n,)`` or ``(n, 1)`` scores.
        real, fake: ``(n, C, H, W)`` float32, same shape and device.
        lam: λ (10 in the paper).
        generator: optional torch.Generator (on the inputs' device) for ε.

    Returns:
        Scalar float32 tensor (differentiable w.r.t. the critic's parameters).

    Raises:
        ValueError: ``real`` and ``fake`` shapes differ.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    n = real.shape[0]
    eps = torch.rand((n,) + (1,) * (real.ndim - 1), device=real.device, dtype=real.dtype, generator=generator)
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    grad_norm = grad.flatten(1).norm(2, dim=1)
    return lam * ((grad_norm - 1.0) ** 2).mean()


def gaussian_kernel_1d(sigma_px: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised sampled Gaussian ``exp(−t² / 2σ²)``, ``t = −r..r``, ``r = int(truncate σ + 0.5)``.

    Same radius rule as ``scipy.ndimage.gaussian_filter``.

    Args:
        sigma_px: standard deviation in pixels (> 0).
        truncate: radius in standard deviations.

    Returns:
        ``(2 r + 1,)`` float64 tensor summing to 1.
    """
    r = int(truncate * sigma_px + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    return k / k.sum()


def _circular_pad_1d(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Periodically extend ``x`` by ``r`` samples on both ends of ``dim`` (any ``r >= 0``)."""
    n = x.shape[dim]
    reps = math.ceil(r / n) if r > 0 else 0
    tiled = torch.cat([x] * (2 * reps + 1), dim=dim) if reps else x
    start = reps * n - r
    return tiled.narrow(dim, start, n + 2 * r)


def gaussian_blur_images(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur with periodic boundaries, differentiable.

    Used to smooth the critic's inputs (real and fake alike) with a σ annealed towards 0
    during CryoGAN training (Gupta et al. 2021; reference code config ``train_Betagal.cfg``:
    ``gaussiansigma = 2``, multiplied by 0.98 per epoch). Periodic ("wrap") boundaries keep
    the image mean exactly; the kernel is the sampled, normalised Gaussian truncated at 4σ,
    i.e. the same as ``scipy.ndimage.gaussian_filter(img, sigma, mode="wrap")``.

    Args:
        images: ``(n, C, H, W)`` float32 (any H, W; the kernel may be longer than the image).
        sigma_px: standard deviation in pixels; 0 returns ``images`` unchanged.

    Returns:
        ``(n, C, H, W)`` blurred images, same dtype and device.

    Raises:
        ValueError: ``sigma_px < 0`` or ``images`` not 4-D.
    """
    if sigma_px < 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px}")
    if images.ndim != 4:
        raise ValueError(f"images must be (n, C, H, W), got {tuple(images.shape)}")
    if sigma_px == 0:
        return images
    k = to_device(gaussian_kernel_1d(sigma_px).to(images.dtype), images.device)
    r = (k.numel() - 1) // 2
    if r == 0:
        return images
    n, c, h, w = images.shape
    x = images.reshape(n * c, 1, h, w)
    x = F.conv2d(_circular_pad_1d(x, r, 3), k.view(1, 1, 1, -1))
    x = F.conv2d(_circular_pad_1d(x, r, 2), k.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)
