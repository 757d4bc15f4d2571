"""PatchGAN discriminator of the cGAN denoiser (pix2pix, Isola et al. 2017, CVPR, Sec. 3.2.2).

The discriminator sees the CONDITION (the noisy particle) and an IMAGE (either the clean
reference projection or the generator's output), concatenated along channels, and returns a
map of real/fake logits, one per overlapping patch. Layers (``b = base_channels``,
``L = n_layers``), as pix2pix's ``NLayerDiscriminator``::

    conv 4x4 stride 2 pad 1   in -> b                        LeakyReLU(0.2)   (no norm)
    conv 4x4 stride 2 pad 1   b*2**(i-1) -> b*2**i (capped at 8 b), norm, LeakyReLU  i = 1..L-1
    conv 4x4 stride 1 pad 1   -> b*2**L (capped at 8 b), norm, LeakyReLU
    conv 4x4 stride 1 pad 1   -> 1 logit map (no sigmoid: use BCEWithLogits or LSGAN outside)

Output size per axis: ``s_0 = H``, ``s_i = floor(s_{i-1} / 2)`` for the ``L`` stride-2 convs,
then ``- 1`` for each of the two stride-1 convs. With ``L = 3`` every logit sees a 70 x 70 px
receptive field (pix2pix's "70 x 70 PatchGAN"); for 64 px particles that gives a ``6 x 6``
logit map (63 -> 5 x 5, 65/100/128 -> 6/10/14). Adaptation to small particle boxes: the
minimum size is checked (``H, W >= 2**L * 4``, so the logit map is at least 2 x 2 and
InstanceNorm has more than one value per channel) instead of failing deep inside torch; use
``n_layers = 2`` (34 px receptive field) to judge finer patches of 64 px particles.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cryogan_core.models.unet import check_norm, make_norm_2d


class PatchGANDiscriminator(nn.Module):
    """Conditional PatchGAN: ``(condition, image) -> logits (n, 1, h', w')``.

    Attributes:
        config: the constructor's keyword arguments, for ``from_config``.
    """

    def __init__(
        self,
        in_channels: int = 2,
        base_channels: int = 32,
        n_layers: int = 3,
        norm: str = "instance",
    ) -> None:
        """Build the discriminator.

        Args:
            in_channels: channels of ``cat([condition, image], dim=1)`` (2 for 1-channel images).
            base_channels: channels of the first layer (pix2pix uses 64).
            n_layers: number of stride-2 convolutions (3 = the 70 x 70 PatchGAN).
            norm: ``"instance"`` (default, pix2pix with batch 1), ``"batch"`` or ``"none"``.

        Raises:
            ValueError: non-positive sizes or an unknown norm.
        """
        super().__init__()
        if min(in_channels, base_channels, n_layers) < 1:
            raise ValueError("in_channels, base_channels and n_layers must be >= 1")
        check_norm(norm)
        self.config: dict[str, Any] = dict(
            in_channels=in_channels, base_channels=base_channels, n_layers=n_layers, norm=norm
        )
        bias = norm != "batch"  # pix2pix: no bias before BatchNorm
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        c_prev = base_channels
        for i in range(1, n_layers + 1):
            c = base_channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers.append(nn.Conv2d(c_prev, c, 4, stride, 1, bias=bias))
            nrm = make_norm_2d(norm, c)
            if nrm is not None:
                layers.append(nrm)
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_prev = c
        layers.append(nn.Conv2d(c_prev, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "PatchGANDiscriminator":
        """Rebuild the architecture from ``model.config`` (weights not included)."""
        return cls(**cfg)

    def min_size(self) -> int:
        """Smallest image side in pixels accepted by ``forward`` (``4 * 2**n_layers``)."""
        return 4 * 2 ** self.config["n_layers"]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Logit-map size ``(h', w')`` for an ``(height, width)`` input (see module docstring)."""

        def one(s: int) -> int:
            """Logit-map size along one axis of ``s`` px: halved per layer, minus the two 4x4 stride-1 convolutions."""
            for _ in range(self.config["n_layers"]):
                s = s // 2
            return s - 2

        return one(height), one(width)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Score every patch of ``image`` given ``condition``.

        Args:
            condition: ``(n, c1, H, W)`` float32, the noisy particle.
            image: ``(n, c2, H, W)`` float32, a reference projection or a generator output;
                ``c1 + c2 == in_channels``.

        Returns:
            Logits ``(n, 1, h', w')`` float32 (``output_size(H, W)``); positive = "real".

        Raises:
            ValueError: shapes differ, channels do not add up, or the image is smaller than
                ``min_size()``.
        """
        if condition.ndim != 4 or image.ndim != 4 or condition.shape[0] != image.shape[0] \
                or condition.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"condition {tuple(condition.shape)} and image {tuple(image.shape)} must both be "
                "(n, c, H, W) with the same n, H, W"
            )
        if condition.shape[1] + image.shape[1] != self.config["in_channels"]:
            raise ValueError(
                f"condition + image channels = {condition.shape[1] + image.shape[1]}, "
                f"expected in_channels = {self.config['in_channels']}"
            )
        if min(image.shape[-2:]) < self.min_size():
            raise ValueError(
                f"image {tuple(image.shape[-2:])} px is smaller than the minimum "
                f"{self.min_size()} px for n_layers = {self.config['n_layers']}"
            )
        return self.net(torch.cat([condition, image], dim=1))
