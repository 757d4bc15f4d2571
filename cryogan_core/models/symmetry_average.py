"""Test-time augmentation: a denoiser's output averaged over symmetries of the square.

The denoiser trains on every particle under a random one of the 8 symmetries of the square
(90° rotations and flips, :func:`cryogan_core.train.pix2pix.train_pix2pix`), so each of them
gives an equally valid estimate of the same particle. Averaging the estimates made through
``n`` of them, each mapped back, removes part of the network's own error (its output is not
exactly equivariant), at ``n`` times the cost. This is the standard test-time augmentation of
image-to-image networks (e.g. Krizhevsky et al. 2012 averaged over flips; Timofte, Rothe &
Van Gool, "Seven ways to improve example-based single image super resolution", CVPR 2016,
Sec. 2.1, the ×8 "geometric self-ensemble").
"""

from __future__ import annotations

import torch
from torch import nn

# (quarter turns, flip of the last axis); the first n of them are used, so that 2 = a half
# turn, 4 = the four rotations, 8 = every symmetry
SQUARE_SYMMETRIES: tuple[tuple[int, bool], ...] = ((0, False), (2, False), (1, False), (3, False), (0, True), (2, True), (1, True), (3, True))
ALLOWED_COUNTS = (1, 2, 4, 8)


def apply_symmetry(images: torch.Tensor, quarter_turns: int, flip: bool) -> torch.Tensor:
    """Rotate by ``quarter_turns`` × 90° in the image plane, then flip the last axis if asked.

    Args:
        images: ``(..., H, W)`` tensor, ``H == W``.
        quarter_turns: 0-3 (counter-clockwise in ``(row, column)`` order, :func:`torch.rot90`).
        flip: mirror the last axis (x) after the rotation.

    Returns:
        Tensor of the same shape and dtype.
    """
    out = torch.rot90(images, quarter_turns, dims=(-2, -1))
    return out.flip(-1) if flip else out


def undo_symmetry(images: torch.Tensor, quarter_turns: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`apply_symmetry` with the same arguments."""
    out = images.flip(-1) if flip else images
    return torch.rot90(out, -quarter_turns, dims=(-2, -1))


class SymmetryAveraged(nn.Module):
    """A wrapped image-to-image network whose output is the mean over ``n`` square symmetries.

    ``forward(x) = 1/n Σ_g g⁻¹(net(g(x)))`` over the first ``n`` of :data:`SQUARE_SYMMETRIES`.
    ``n`` is a buffer, so it is part of ``state_dict()`` (and of fingerprints made from it).

    Args:
        net: maps ``(B, C, H, W)`` to ``(B, C', H, W)`` (square images).
        n_symmetries: 1, 2, 4 or 8.

    Raises:
        ValueError: for another ``n_symmetries``.
    """

    def __init__(self, net: nn.Module, n_symmetries: int) -> None:
        super().__init__()
        if n_symmetries not in ALLOWED_COUNTS:
            raise ValueError(f"n_symmetries {n_symmetries}: must be one of {ALLOWED_COUNTS}")
        self.net = net
        self.register_buffer("n_symmetries", torch.tensor(n_symmetries))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` float32 in, ``(B, C', H, W)`` float32 out (the averaged estimate)."""
        n = int(self.n_symmetries)
        acc = None
        for k, flip in SQUARE_SYMMETRIES[:n]:
            y = undo_symmetry(self.net(apply_symmetry(x, k, flip)), k, flip)
            acc = y if acc is None else acc + y
        return acc / n


def symmetry_averaged(net: nn.Module, n_symmetries: int) -> nn.Module:
    """``net`` itself for ``n_symmetries == 1``, else :class:`SymmetryAveraged` around it."""
    return net if n_symmetries == 1 else SymmetryAveraged(net, n_symmetries)


__all__ = ["ALLOWED_COUNTS", "SQUARE_SYMMETRIES", "SymmetryAveraged", "apply_symmetry", "symmetry_averaged", "undo_symmetry"]
