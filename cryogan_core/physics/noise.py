"""Background noise for the CryoGAN simulator, drawn from the real data.

CryoGAN (Gupta, McCann, Donati & Unser, IEEE TCI 2021, Sec. III-B and V-B) adds to every
simulated particle a noise image taken from the real background, so that the simulated
and real particles share their noise statistics (coloured, non-Gaussian, with ice and
detector features) without any noise model. Three sources, in order of preference:

* ``micrographs``: full-box windows cut from the micrographs away from the picked
  particles (``--in_mics``), resampled to the particles' pixel size — the paper's source
  (cut by :mod:`cryogan_core.physics.micrograph_noise`);
* ``patches`` (default without micrographs): square patches of the particles' own
  background, i.e. fully outside the particle radius, where the particle box leaves room
  (its corners). A full-size noise image is a mosaic of randomly drawn patches (random
  flips / 90° turns), overlap-added with 50 % overlap and the power-complementary window
  ``w(t) = sin(π (t + ½) / p)`` on each axis: ``w²(t) + w²(t + p/2) = 1``, so the sum of
  independent zero-mean patches keeps their variance exactly and has no visible seams
  (weighted overlap-add; e.g. Crochiere, IEEE TASSP 1980);
* ``white``: white Gaussian noise with the variance measured in the background pixels
  (the fallback when no patch fits outside the radius).

When the particles are Fourier-cropped to a smaller training box, the noise is made at
the particles' own box and cropped the same way (:class:`CroppedNoise`), so that it keeps
the cropped particles' noise spectrum up to the Nyquist.

Patches with an outlying variance (neighbouring particles, ice edges, carbon) are
dropped: a patch is kept when its variance is at most ``max_var_ratio`` times the median
patch variance ("low-variance regions").

Conventions: images ``(n, y, x)``, centre at ``N//2``; a pixel belongs to the background
when its distance to the centre is > ``radius_px`` (RELION ``--bg_radius``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryogan_core.device import to_device
from cryogan_core.errors import InputError
from cryogan_core.metrics.images import circular_mask
from cryogan_core.physics.resample import fourier_crop_images

NOISE_MODES = ("patches", "white", "micrographs")

__all__ = [
    "NOISE_MODES",
    "BackgroundNoise",
    "CroppedNoise",
    "background_variance",
    "candidate_patch_corners",
    "crop_windows",
    "default_patch_px",
    "extract_background_patches",
    "mosaic_window",
    "random_dihedral",
]


def default_patch_px(box: int, radius_px: float) -> int:
    """Largest even patch side ``p >= 4`` whose corner square lies fully outside the radius.

    The corner square ``[0, p) x [0, p)`` has its pixel nearest to the centre ``box//2`` at
    ``(p−1, p−1)``, at distance ``√2 · (box//2 − p + 1)``; the opposite corner square
    ``[box−p, box)²`` at ``√2 · (box − p − box//2)`` (one pixel less for even boxes). Both
    must exceed ``radius_px``, so that all four corners are usable. Patches are capped at
    ``box // 2``.

    Args:
        box: image side in pixels.
        radius_px: particle radius in pixels.

    Returns:
        The patch side in pixels, or 0 when not even a 4-px square fits.
    """
    c = box // 2
    for p in range(box // 2 - box // 2 % 2, 3, -2):
        if math.sqrt(2.0) * min(c - p + 1, box - p - c) > radius_px:
            return p
    return 0


def candidate_patch_corners(box: int, radius_px: float, patch_px: int, stride_px: int | None = None) -> torch.Tensor:
    """Top-left corners of the ``patch_px`` squares that lie entirely outside the radius.

    Squares sit on a grid of step ``stride_px`` (default ``patch_px // 2``) inside the box,
    plus the last row and column (start ``box − patch_px``) so the far corners are included;
    a square is kept when every one of its pixels is farther than ``radius_px`` from the
    centre ``(box//2, box//2)``.

    Args:
        box: image side in pixels.
        radius_px: particle radius in pixels.
        patch_px: patch side in pixels (>= 1).
        stride_px: grid step in pixels (>= 1).

    Returns:
        ``(k, 2)`` int64 tensor of ``(y, x)`` corners (k may be 0).

    Raises:
        ValueError: ``patch_px`` outside ``1..box`` or ``stride_px < 1``.
    """
    if not 1 <= patch_px <= box:
        raise ValueError(f"patch_px must be in 1..{box}, got {patch_px}")
    stride = max(1, patch_px // 2) if stride_px is None else int(stride_px)
    if stride < 1:
        raise ValueError(f"stride_px must be >= 1, got {stride_px}")
    c = box // 2
    starts = torch.unique(torch.cat([torch.arange(0, box - patch_px + 1, stride), torch.tensor([box - patch_px])]))
    y0, x0 = torch.meshgrid(starts, starts, indexing="ij")
    y0, x0 = y0.reshape(-1), x0.reshape(-1)
    def nearest(a: torch.Tensor) -> torch.Tensor:
        """Per patch start ``a`` (px, int64), the pixel of ``[a, a + patch_px - 1]`` nearest the centre ``c``."""
        return torch.clamp(torch.full_like(a, c), a, a + patch_px - 1)

    dy = (nearest(y0) - c).float()
    dx = (nearest(x0) - c).float()
    keep = dy * dy + dx * dx > float(radius_px) ** 2
    return torch.stack([y0[keep], x0[keep]], dim=1)


def background_variance(images: torch.Tensor, radius_px: float) -> float:
    """Mean over images of the variance of the pixels outside ``radius_px``.

    The background is RELION's: farther than ``radius_px`` from the centre ``(D//2, D//2)``
    (:func:`~cryogan_core.metrics.images.circular_mask`); sample variances (ddof 1).

    Args:
        images: ``(n, D, D)`` float images.
        radius_px: particle radius in pixels (>= 0).

    Returns:
        The mean background variance (image units²).

    Raises:
        InputError: no pixel lies outside the radius.
        ValueError: ``radius_px`` is negative.
    """
    box = images.shape[-1]
    bg = ~circular_mask(box, radius_px, device=images.device)
    if not bool(bg.any()):
        raise InputError(f"background radius {radius_px:.1f} px leaves no background pixels in a {box} px box")
    return float(images[:, bg].float().var(dim=1).mean())


def extract_background_patches(
    images: torch.Tensor,
    radius_px: float,
    patch_px: int | None = None,
    max_var_ratio: float = 2.0,
    max_patches: int = 20000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Square background patches of particle images, fully outside the particle radius.

    Every image contributes the squares of :func:`candidate_patch_corners`; patches whose
    variance exceeds ``max_var_ratio`` × the median patch variance are dropped
    (neighbouring particles, contamination), then at most ``max_patches`` are kept at
    random.

    Args:
        images: ``(n, box, box)`` float images (normalised particles).
        radius_px: particle radius in pixels (background = farther than this).
        patch_px: patch side; default :func:`default_patch_px`.
        max_var_ratio: variance threshold relative to the median patch variance (> 0).
        max_patches: cap on the number of patches returned.
        generator: CPU generator for the random subset.

    Returns:
        ``(m, p, p)`` float32 patches on the images' device (``m = 0`` when no square fits
        outside the radius).

    Raises:
        ValueError: images not ``(n, box, box)`` or ``max_var_ratio <= 0``.
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (n, box, box), got {tuple(images.shape)}")
    if max_var_ratio <= 0:
        raise ValueError(f"max_var_ratio must be > 0, got {max_var_ratio}")
    box = int(images.shape[-1])
    p = default_patch_px(box, radius_px) if patch_px is None else int(patch_px)
    if p < 1:
        return images.new_zeros((0, 0, 0))
    corners = candidate_patch_corners(box, radius_px, p)
    if corners.shape[0] == 0:
        return images.new_zeros((0, p, p))
    ar = torch.arange(p)
    rows = (corners[:, 0, None] + ar[None, :]).to(images.device)  # (k, p)
    cols = (corners[:, 1, None] + ar[None, :]).to(images.device)
    patches = images[:, rows[:, :, None], cols[:, None, :]].reshape(-1, p, p).float()
    var = patches.reshape(patches.shape[0], -1).var(dim=1)
    keep = var <= max_var_ratio * var.median()
    patches = patches[keep]
    if patches.shape[0] > max_patches:
        sel = torch.randperm(patches.shape[0], generator=generator)[:max_patches].to(patches.device)
        patches = patches[sel]
    return patches.contiguous()


def mosaic_window(patch_px: int, device: torch.device | str | None = None) -> torch.Tensor:
    """2-D power-complementary window ``w(y)·w(x)``, ``w(t) = sin(π (t + ½) / p)``.

    For 50 % overlap (hop ``p/2``) the squared windows of overlapping patches sum to 1 at
    every pixel, so a weighted overlap-add of independent zero-mean patches keeps their
    variance.

    Args:
        patch_px: even patch side ``p`` (>= 2).
        device: torch device.

    Returns:
        ``(p, p)`` float32 window.

    Raises:
        ValueError: odd or too small ``patch_px``.
    """
    if patch_px < 2 or patch_px % 2:
        raise ValueError(f"patch_px must be even and >= 2, got {patch_px}")
    t = torch.arange(patch_px, dtype=torch.float32, device=device)
    w = torch.sin(math.pi * (t + 0.5) / patch_px)
    return w[:, None] * w[None, :]


def crop_windows(images: torch.Tensor, corners_px: torch.Tensor, size_px: int) -> torch.Tensor:
    """Cut one ``size_px`` square window out of each image, at its own corner, in one gather.

    ``out[i] = images[i, y_i : y_i + size_px, x_i : x_i + size_px]`` for every i, done as a
    single indexing operation instead of a Python loop over images (one kernel on a GPU
    instead of n, and no per-image host round trip).

    Args:
        images: ``(n, H, W)`` tensor (any dtype and device).
        corners_px: ``(n, 2)`` integer ``(y, x)`` top-left corners, on any device; every
            window must lie inside its image.
        size_px: window side (px, >= 1).

    Returns:
        ``(n, size_px, size_px)`` tensor on the images' device and of their dtype.

    Raises:
        ValueError: ``corners_px`` is not ``(n, 2)``, or ``size_px`` < 1.
        IndexError: a window leaves its image (on a GPU, a device-side assertion instead).
    """
    n = images.shape[0]
    if corners_px.shape != (n, 2):
        raise ValueError(f"corners_px must be ({n}, 2), got {tuple(corners_px.shape)}")
    if size_px < 1:
        raise ValueError(f"size_px must be >= 1, got {size_px}")
    dev = images.device
    ar = torch.arange(size_px, device=dev)
    c = to_device(corners_px, dev).long()
    rows = (c[:, 0, None] + ar)[:, :, None]  # (n, s, 1)
    cols = (c[:, 1, None] + ar)[:, None, :]  # (n, 1, s)
    return images[torch.arange(n, device=dev)[:, None, None], rows, cols]


def random_dihedral(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply a random one of the 8 symmetries of the square to each image.

    Args:
        images: ``(n, p, p)`` tensor.
        generator: CPU generator.

    Returns:
        ``(n, p, p)`` tensor (a new tensor; the images are transposed and/or flipped).
    """
    n = images.shape[0]
    codes = to_device(torch.randint(0, 8, (n,), generator=generator), images.device)
    out = torch.where((codes & 1).bool()[:, None, None], images.transpose(-1, -2), images)
    out = torch.where((codes & 2).bool()[:, None, None], out.flip(-1), out)
    out = torch.where((codes & 4).bool()[:, None, None], out.flip(-2), out)
    return out


@dataclass
class BackgroundNoise:
    """A source of noise images for the simulator (see the module docstring).

    Attributes:
        mode: ``"patches"`` (mosaic of background patches), ``"micrographs"`` (full-box
            windows), or ``"white"`` (Gaussian).
        box: side of the noise images in pixels.
        variance: background variance of the real data (image units²); the std of
            ``"white"`` noise is its square root.
        patches: ``(m, p, p)`` float32 bank for ``"patches"`` (p even) or ``(m, box, box)``
            for ``"micrographs"``; None for ``"white"``.
    """

    mode: str
    box: int
    variance: float
    patches: torch.Tensor | None = None

    def __post_init__(self) -> None:
        """Check the mode and the patch bank.

        Raises:
            ValueError: unknown mode, missing/empty bank, odd patch side, wrong window size.
        """
        if self.mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {self.mode!r}")
        if self.mode == "white":
            return
        if self.patches is None or self.patches.ndim != 3 or self.patches.shape[0] == 0:
            raise ValueError(f"noise mode {self.mode!r} needs a non-empty (m, p, p) patch bank")
        p = int(self.patches.shape[-1])
        if self.mode == "patches" and (p % 2 or p < 2):
            raise ValueError(f"mosaic patches must have an even side >= 2, got {p}")
        if self.mode == "micrographs" and p != self.box:
            raise ValueError(f"micrograph windows must be {self.box} px, got {p}")

    @classmethod
    def from_particles(
        cls,
        images: torch.Tensor,
        radius_px: float,
        patch_px: int | None = None,
        max_var_ratio: float = 2.0,
        min_patches: int = 64,
        generator: torch.Generator | None = None,
    ) -> "BackgroundNoise":
        """Noise from the particles' own background, white noise when no patch fits.

        Args:
            images: ``(n, box, box)`` normalised particle images.
            radius_px: particle radius in pixels.
            patch_px: patch side (even); default :func:`default_patch_px`.
            max_var_ratio: see :func:`extract_background_patches`.
            min_patches: fewer usable patches than this → white noise.
            generator: CPU generator.

        Returns:
            A ``"patches"`` or (fallback) ``"white"`` :class:`BackgroundNoise` on the images'
            device.

        Raises:
            InputError: no background pixel at all (radius too large for the box).
        """
        box = int(images.shape[-1])
        variance = background_variance(images, radius_px)
        p = default_patch_px(box, radius_px) if patch_px is None else int(patch_px)
        if p >= 4 and p % 2 == 0:
            patches = extract_background_patches(images, radius_px, p, max_var_ratio, generator=generator)
            if patches.shape[0] >= min_patches:
                return cls("patches", box, variance, patches)
        return cls("white", box, variance, None)

    @property
    def patch_px(self) -> int:
        """Side of the patches in the bank (0 for white noise)."""
        return 0 if self.patches is None else int(self.patches.shape[-1])

    @property
    def device(self) -> torch.device:
        """Device of the bank (CPU for white noise)."""
        return torch.device("cpu") if self.patches is None else self.patches.device

    def to(self, device: torch.device | str) -> "BackgroundNoise":
        """A copy whose patch bank lives on ``device``."""
        bank = None if self.patches is None else self.patches.to(device)
        return BackgroundNoise(self.mode, self.box, self.variance, bank)

    def describe(self) -> str:
        """One line for the log: the source and its statistics."""
        if self.mode == "white":
            return f"white Gaussian noise, variance {self.variance:.3f} (background pixels)"
        what = "background patches" if self.mode == "patches" else "micrograph windows"
        return (
            f"{self.patches.shape[0]} {what} of {self.patch_px} px (background variance {self.variance:.3f})"
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` noise images.

        Args:
            n: number of images (>= 0).
            generator: CPU generator (all random choices are drawn from it).

        Returns:
            ``(n, box, box)`` float32 on :attr:`device`.
        """
        dev = self.device
        d = self.box
        if n == 0:
            return torch.zeros((0, d, d), device=dev)
        if self.mode == "white":
            return to_device(torch.randn((n, d, d), generator=generator), dev) * math.sqrt(self.variance)
        bank = self.patches
        if self.mode == "micrographs":
            idx = to_device(torch.randint(0, bank.shape[0], (n,), generator=generator), dev)
            return random_dihedral(bank[idx], generator)
        p = self.patch_px
        hop = p // 2
        m = -(-d // hop) + 2  # patches per axis: covers d plus a random offset
        total = hop * (m + 1)
        idx = to_device(torch.randint(0, bank.shape[0], (n * m * m,), generator=generator), dev)
        tiles = random_dihedral(bank[idx], generator) * mosaic_window(p, dev)
        cols = tiles.reshape(n, m * m, p * p).transpose(1, 2)  # (n, p*p, L) for fold
        canvas = F.fold(cols, output_size=(total, total), kernel_size=p, stride=hop)[:, 0]
        # the fully weighted interior is [hop, m*hop); crop d px at a random offset in it
        span = m * hop - hop - d
        offs = torch.randint(0, span + 1, (n, 2), generator=generator)
        return crop_windows(canvas, hop + offs, d)


@dataclass
class CroppedNoise:
    """Noise synthesised at the particles' box, then Fourier-cropped to the training box.

    The particles reach a smaller training box through :func:`fourier_crop_images`, which
    folds the two coefficients at ±N/2 into the new Nyquist bin (see
    :mod:`cryogan_core.physics.resample`): for white noise the Nyquist row and column of
    the cropped particles carry twice the power of the other frequencies (four times in the
    corner bin). A mosaic of small background patches cut at the training box smears that
    line over the top shells: at box 32 from 64 (β-gal benchmark, 6-px patches) its power
    was 2.5 / 4.3 / 7 / 10 % above the particles' noise at 18.9 / 17.4 / 16.2 / 15.1 Å,
    where the signal holds only 2–10 % of the noise power, so the critic could tell the
    simulated particles from the real ones by their noise alone. Synthesising the noise at
    the particles' own box (larger patches, a finer spectrum) and cropping it exactly as
    the particles are gives the same spectrum to within 1 % in every shell
    (``tests/test_noise_crop.py``) but the lowest few: there the mosaic has 2–6 % less
    power, because the normalisation removed each image's background mean, which correlates
    the pixels of a patch negatively; at those shells the signal is 1–8× the noise.

    Attributes:
        source: noise at the particles' box (``source.box`` px).
        box: training box (px) of the returned images (< ``source.box``).
        scale: factor applied after cropping, so that the cropped noise has the variance
            ``variance`` (set by :meth:`from_source`).
        variance: background variance of the particles at the training box (image units²).
    """

    source: BackgroundNoise
    box: int
    scale: float
    variance: float

    def __post_init__(self) -> None:
        """Check the boxes.

        Raises:
            ValueError: ``box`` not smaller than the source's box, or not >= 1.
        """
        if not 1 <= self.box < self.source.box:
            raise ValueError(f"training box must be in 1..{self.source.box - 1} px, got {self.box}")

    @classmethod
    def from_source(cls, source: BackgroundNoise, box: int, variance: float, n_calibrate: int = 256,
                    seed: int = 0) -> "CroppedNoise":
        """Wrap ``source`` and set ``scale`` from ``n_calibrate`` cropped samples.

        Args:
            source: noise at the particles' box.
            box: training box (px).
            variance: wanted variance of the cropped noise (the particles' background
                variance at the training box, :func:`background_variance`).
            n_calibrate: samples drawn to measure the cropped variance (>= 1).
            seed: seed of those samples.

        Returns:
            The :class:`CroppedNoise` on the source's device.

        Raises:
            ValueError: bad box (see the class) or ``n_calibrate < 1``.
        """
        if n_calibrate < 1:
            raise ValueError(f"n_calibrate must be >= 1, got {n_calibrate}")
        probe = cls(source, int(box), 1.0, float(variance))
        got = float(probe.sample(n_calibrate, torch.Generator().manual_seed(seed)).var())
        return cls(source, int(box), math.sqrt(max(float(variance), 0.0) / max(got, 1e-12)), float(variance))

    @property
    def mode(self) -> str:
        """The source's mode."""
        return self.source.mode

    @property
    def patch_px(self) -> int:
        """Side of the source's patches (px at the particles' box; 0 for white noise)."""
        return self.source.patch_px

    @property
    def device(self) -> torch.device:
        """Device of the source's bank."""
        return self.source.device

    def to(self, device: torch.device | str) -> "CroppedNoise":
        """A copy whose source lives on ``device``."""
        return CroppedNoise(self.source.to(device), self.box, self.scale, self.variance)

    def describe(self) -> str:
        """One line for the log."""
        return f"{self.source.describe()} at {self.source.box} px, Fourier-cropped to {self.box} px as the particles"

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` noise images at the training box.

        Args:
            n: number of images (>= 0).
            generator: CPU generator (all random choices are drawn from it).

        Returns:
            ``(n, box, box)`` float32 on :attr:`device`.
        """
        if n == 0:
            return torch.zeros((0, self.box, self.box), device=self.device)
        return fourier_crop_images(self.source.sample(n, generator), self.box) * self.scale
