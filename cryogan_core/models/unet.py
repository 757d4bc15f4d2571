"""U-Net generator of the cGAN denoiser (noisy particle -> clean CTF-modulated projection).

Architecture (pix2pix's U-Net/ResNet hybrid, Isola et al. 2017, CVPR, "Image-to-image
translation with conditional adversarial networks"; used for cryo-EM by Su et al. 2018,
"Generative adversarial networks as a tool to recover structural information from cryo-EM
data", bioRxiv 10.1101/258699), for ``depth = L`` and ``base_channels = b``::

    x (n, C_in, H, W)   -- reflect-pad to a multiple of 2**L (centred), channels-last layout
    stem      3x3 conv  C_in -> b                                  (full resolution)
    down_i    3x3 conv stride 2  c_{i-1} -> c_i, c_i = b * 2**i      (i = 1..L)
    res       n_res_blocks x [x + N(conv(act(N(conv(x)))))] at c_L   (bottleneck)
    up_i      1x1 conv c_i -> c_{i-1}, nearest x2 upsample, ADD skip c_{i-1},
              3x3 conv c_{i-1} -> c_{i-1}                           (i = L..1)
    head      1x1 conv b -> C_out, linear (no tanh)                 -- crop back to (H, W)

(every conv but the head: -> norm N -> activation). Default (b=16, L=3, 2 blocks): 0.75 M
parameters, 165 MFLOP per 64 px particle, receptive field covers the whole 64 px box.

Choices (and why):

* Upsampling is resize-convolution: nearest-neighbour x2 followed by a 3x3 convolution
  (Odena, Dumoulin & Olah 2016, Distill, "Deconvolution and checkerboard artifacts"), never a
  transposed convolution, so a constant input gives an output without a (Nyquist, Nyquist)
  checkerboard. The 1x1 channel reduction is applied before the upsampling because a 1x1
  convolution commutes exactly with nearest-neighbour upsampling (same output, 4x cheaper).
* The output is linear: particles are RELION-normalised floats (background mean 0, std 1),
  not images in [-1, 1]. There is NO global identity shortcut (output = input + f(input)):
  at cryo-EM SNRs (~0.01-0.1) the target projection is far from the noisy input, and an
  identity path would force the network to reproduce minus the noise.
* Skips are added, not concatenated (LinkNet-style): half the cost of the full-resolution
  convolutions, which is what lets the default meet the CPU speed target.
* Normalisation: ``"batch"`` (default) is folded into the preceding convolution in eval
  mode, so it costs nothing at inference; ``"instance"`` (pix2pix with batch size 1) is
  per-image, cannot be folded, and is ~2.5x slower at inference on CPU (PyTorch's
  channels-last InstanceNorm); ``"none"``. Note: pix2pix runs the generator in train mode
  at test time (batch statistics); here inference uses eval mode (running statistics).
* Activations: LeakyReLU(0.2) in the encoder and bottleneck, ReLU in the decoder (pix2pix).
* Dropout (pix2pix uses 0.5 as the generator's noise source) acts in the bottleneck blocks
  and the two deepest decoder levels when ``dropout > 0``.

Speed (``benchmarks/bench_unet_speed.py``; eval + ``torch.inference_mode()``, batch 64,
AMD EPYC Zen3 AVX2, torch 2.13): default config 620-675 particles/s at 64 px and ~165-200
at 128 px with 2 threads (target >= 500 at 64 px); 355 / 82 per CPU-second with 1 thread.
Use batches of 32-128 for inference. See that script's docstring for other configs.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "none")


def check_norm(norm: str) -> str:
    """Validate a normalisation name.

    Args:
        norm: ``"batch"``, ``"instance"`` or ``"none"``.

    Returns:
        The same name.

    Raises:
        ValueError: for any other name.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def make_norm_2d(norm: str, channels: int) -> nn.Module | None:
    """Build a 2D normalisation layer.

    Args:
        norm: ``"batch"`` (BatchNorm2d), ``"instance"`` (InstanceNorm2d with a learnable
            affine, like pix2pix's ``get_norm_layer``) or ``"none"``.
        channels: number of feature channels.

    Returns:
        The layer, or ``None`` for ``"none"``.

    Raises:
        ValueError: for an unknown ``norm``.
    """
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    return None


class ConvNormAct(nn.Module):
    """Conv2d -> optional norm -> optional activation (-> optional dropout).

    In eval mode a BatchNorm2d is folded into the convolution's weight and bias
    (``w' = w * g / sqrt(v + eps)``, ``b' = beta + (b - m) * g / sqrt(v + eps)``, Ioffe &
    Szegedy 2015 eq. in Alg. 2), so inference costs one convolution. The folded output equals
    conv -> BatchNorm2d(eval) up to float32 rounding.

    Shapes: ``(n, c_in, H, W) -> (n, c_out, H', W')`` float32, with
    ``H' = floor((H + 2 p - k) / stride) + 1``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        norm: str = "none",
        act: str | None = "relu",
        dropout: float = 0.0,
    ) -> None:
        """Build the block.

        Args:
            c_in, c_out: channels.
            kernel_size, stride: of the convolution.
            padding: zero padding in pixels (default ``kernel_size // 2``).
            norm: ``"batch"``, ``"instance"`` or ``"none"``; the conv has a bias only for ``"none"``.
            act: ``"relu"``, ``"lrelu"`` (slope 0.2) or ``None`` (linear).
            dropout: element dropout probability after the activation (0 = none).

        Raises:
            ValueError: unknown ``norm`` or ``act``.
        """
        super().__init__()
        check_norm(norm)
        if act not in ("relu", "lrelu", None):
            raise ValueError(f"act must be 'relu', 'lrelu' or None, got {act!r}")
        pad = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, pad, bias=(norm == "none"))
        self.norm = make_norm_2d(norm, c_out)
        self.act = act
        self.drop = nn.Dropout(dropout) if dropout > 0 else None

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution, with a BatchNorm folded in when in eval mode."""
        bn = self.norm
        if isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_var is not None:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            w = self.conv.weight * scale.view(-1, 1, 1, 1)
            b = bn.bias - bn.running_mean * scale
            if self.conv.bias is not None:
                b = b + self.conv.bias * scale
            return F.conv2d(x, w, b, self.conv.stride, self.conv.padding)
        y = self.conv(x)
        return y if bn is None else bn(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv (+ norm) (+ activation) (+ dropout); see the class docstring for shapes."""
        y = self._conv(x)
        if self.act == "relu":
            y = F.relu(y, inplace=True)
        elif self.act == "lrelu":
            y = F.leaky_relu(y, 0.2, inplace=True)
        if self.drop is not None:
            y = self.drop(y)
        return y


class ResidualBlock(nn.Module):
    """pix2pix/ResNet block ``x + N(conv3x3(act(N(conv3x3(x)))))`` (He et al. 2016).

    Shapes: ``(n, c, H, W) -> (n, c, H, W)`` float32.
    """

    def __init__(self, channels: int, norm: str, dropout: float = 0.0) -> None:
        """Args: channels; norm (``"batch"``/``"instance"``/``"none"``); dropout between the convs.

        Raises:
            ValueError: unknown ``norm``.
        """
        super().__init__()
        self.a = ConvNormAct(channels, channels, 3, norm=norm, act="lrelu", dropout=dropout)
        self.b = ConvNormAct(channels, channels, 3, norm=norm, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + F(x)``, same shape as ``x``."""
        return self.b(self.a(x)).add_(x)  # in place: no backward needs the conv/norm output


class UpBlock(nn.Module):
    """Decoder level: 1x1 conv, nearest x2 upsample, add skip, 3x3 conv (resize-convolution).

    ``out = act(N(conv3x3(up2(conv1x1(low)) + skip)))``. The skip is ADDED (LinkNet-style,
    Chaurasia & Culurciello 2017) rather than concatenated: for the same channel widths the
    full-resolution convolution is half as expensive, which is what makes the default model
    meet the >= 500 particles/s CPU target (see ``benchmarks/bench_unet_speed.py``).

    Shapes: ``low (n, c_low, h, w)``, ``skip (n, c_skip, 2h, 2w)`` ->
    ``(n, c_skip, 2h, 2w)`` float32.
    """

    def __init__(self, c_low: int, c_skip: int, norm: str, dropout: float = 0.0) -> None:
        """Args: c_low (input channels), c_skip (skip and output channels), norm, dropout.

        Raises:
            ValueError: unknown ``norm``.
        """
        super().__init__()
        self.reduce = nn.Conv2d(c_low, c_skip, 1, bias=False)
        self.fuse = ConvNormAct(c_skip, c_skip, 3, norm=norm, act="relu", dropout=dropout)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``low`` by 2 (nearest), add ``skip`` and convolve."""
        up = F.interpolate(self.reduce(low), scale_factor=2.0, mode="nearest")
        return self.fuse(up.add_(skip))  # in place: upsample's backward does not need its output


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad the last two axes of ``x`` reflectively up to a multiple of ``multiple``.

    The padding is split as evenly as possible (extra pixel at the end), so the image stays
    centred. Reflection needs ``pad < size``; for tiny images the edge is replicated instead.

    Args:
        x: ``(n, C, H, W)`` tensor.
        multiple: target multiple (e.g. ``2**depth``).

    Returns:
        The padded tensor ``(n, C, H', W')`` and ``(left, right, top, bottom)`` in pixels.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph == 0 and pw == 0:
        return x, pads
    mode = "reflect" if max(pads[0], pads[1]) < w and max(pads[2], pads[3]) < h else "replicate"
    return F.pad(x, pads, mode=mode), pads


class UNetGenerator(nn.Module):
    """U-Net generator with residual bottleneck and resize-convolution decoder.

    See the module docstring for the layer list and the choices. ``forward`` accepts any
    image size (odd or even): the input is reflect-padded to a multiple of ``2**depth`` and
    the output is cropped back, so ``(n, in_channels, H, W) -> (n, out_channels, H, W)``.

    Attributes:
        config: the constructor's keyword arguments; ``UNetGenerator.from_config(config)``
            rebuilds an identical architecture (then ``load_state_dict``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 16,
        depth: int = 3,
        n_res_blocks: int = 2,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            in_channels: input image channels (1 for a particle).
            out_channels: output channels (1 for the clean projection).
            base_channels: channels at full resolution; level ``i`` has ``base * 2**i``.
            depth: number of stride-2 downsamplings (>= 1); inputs are padded to a multiple
                of ``2**depth``.
            n_res_blocks: residual blocks at the bottleneck (>= 0).
            norm: ``"batch"`` (default; folded into the convs in eval mode), ``"instance"``
                or ``"none"``.
            dropout: dropout probability in the bottleneck and the two deepest decoder levels.

        Raises:
            ValueError: non-positive channels/depth, negative blocks, dropout outside [0, 1),
                unknown norm.
        """
        super().__init__()
        if min(in_channels, out_channels, base_channels, depth) < 1:
            raise ValueError("in_channels, out_channels, base_channels and depth must be >= 1")
        if n_res_blocks < 0:
            raise ValueError(f"n_res_blocks must be >= 0, got {n_res_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_norm(norm)
        self.config: dict[str, Any] = dict(
            in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            depth=depth, n_res_blocks=n_res_blocks, norm=norm, dropout=dropout,
        )
        ch = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = ConvNormAct(in_channels, ch[0], 3, norm=norm, act="lrelu")
        self.down = nn.ModuleList(
            ConvNormAct(ch[i], ch[i + 1], 3, stride=2, padding=1, norm=norm, act="lrelu")
            for i in range(depth)
        )
        self.res = nn.Sequential(*(ResidualBlock(ch[-1], norm, dropout) for _ in range(n_res_blocks)))
        self.up = nn.ModuleList(
            UpBlock(ch[i + 1], ch[i], norm, dropout if i >= depth - 2 else 0.0)
            for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(ch[0], out_channels, 1)
        # Channels-last conv weights make every activation channels-last (NHWC), the layout
        # oneDNN and cuDNN run fastest (3-4x on CPU for 16-32 channels); state dicts stay
        # interchangeable (load_state_dict copies values, not strides).
        self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "UNetGenerator":
        """Rebuild the architecture from ``model.config`` (weights are not included).

        Raises:
            TypeError: unknown keys in ``cfg``; ValueError: bad values (see ``__init__``).
        """
        return cls(**cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise a batch of images.

        Args:
            x: ``(n, in_channels, H, W)`` float32 (RELION-normalised particles), any H, W.

        Returns:
            ``(n, out_channels, H, W)`` float32 on the device of ``x``, contiguous.

        Raises:
            ValueError: ``x`` is not 4-D with ``in_channels`` channels.
        """
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(
                f"expected (n, {self.config['in_channels']}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        xp, (left, _, top, _) = pad_to_multiple(x, 2 ** self.config["depth"])
        y = self.stem(xp)
        skips = [y]
        for block in self.down:
            y = block(y)
            skips.append(y)
        y = self.res(y)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            y = block(y, skip)
        y = self.head(y)[..., top : top + h, left : left + w]
        return y.contiguous()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def conv_flops_per_image(model: nn.Module, height: int, width: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of all Conv2d layers for one ``(1, C, height, width)`` input.

    Measured by forward hooks on a train-mode copy; norms, activations and resampling are not
    counted. Used by the speed benchmark to report GFLOP/s.

    Args:
        model: any module taking one ``(1, C, H, W)`` image tensor.
        height, width: image size in pixels.

    Returns:
        FLOPs as a float.
    """
    total = 0.0

    def hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        """Add this convolution's multiply-adds (2 FLOP each) for its output to ``total``."""
        nonlocal total
        k = math.prod(mod.kernel_size) * mod.in_channels // mod.groups
        total += 2.0 * out.numel() * k

    probe = copy.deepcopy(model).train()  # train mode: BatchNorm is not folded, hooks fire
    for m in probe.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    p = next(probe.parameters())
    with torch.no_grad():
        probe(torch.zeros(1, probe.config["in_channels"], height, width, device=p.device))
    return total
