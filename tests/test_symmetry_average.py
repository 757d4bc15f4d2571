"""Test-time symmetry averaging: exact for equivariant networks, kernel averaging for convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cryogan_core.commands.denoise_options import SYMMETRY_COUNTS
from cryogan_core.models.symmetry_average import ALLOWED_COUNTS, SymmetryAveraged, apply_symmetry, symmetry_averaged, undo_symmetry


def _conv(kernel: np.ndarray) -> nn.Conv2d:
    """A 3 x 3 'same' convolution (zero padding, no bias) with the given (3, 3) kernel."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel.astype(np.float32))[None, None])
    return conv


def _numpy_symmetries(k: np.ndarray) -> list[np.ndarray]:
    """The 8 images of a kernel under the square's symmetries, in numpy (independent of torch.rot90)."""
    rots = [np.rot90(k, q) for q in range(4)]
    return rots + [np.fliplr(r) for r in rots]


@pytest.mark.parametrize("box", [15, 16])
def test_undo_inverts_apply_for_every_symmetry(box: int) -> None:
    x = torch.randn(2, 1, box, box)
    for q in range(4):
        for flip in (False, True):
            y = apply_symmetry(x, q, flip)
            assert not torch.equal(y, x) or (q == 0 and not flip)
            assert torch.equal(undo_symmetry(y, q, flip), x)


@pytest.mark.parametrize("box", [15, 16])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_an_equivariant_network_is_unchanged(box: int, n: int) -> None:
    iso = _conv(np.array([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)
    x = torch.randn(3, 1, box, box)
    torch.testing.assert_close(SymmetryAveraged(iso, n)(x), iso(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("box", [15, 16])
def test_eight_symmetries_average_a_convolution_kernel_over_the_square_group(box: int) -> None:
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(3, 3))
    x = torch.randn(2, 1, box, box)
    expected = _conv(np.mean(_numpy_symmetries(kernel), axis=0))(x)
    torch.testing.assert_close(SymmetryAveraged(_conv(kernel), 8)(x), expected, atol=1e-5, rtol=0)
    # two = the identity and the half turn
    half_turn = _conv((kernel + np.rot90(kernel, 2)) / 2)(x)
    torch.testing.assert_close(SymmetryAveraged(_conv(kernel), 2)(x), half_turn, atol=1e-5, rtol=0)
    # and a one-sided kernel is not left as it was
    assert not torch.allclose(SymmetryAveraged(_conv(kernel), 8)(x), _conv(kernel)(x), atol=1e-3)


def test_counts_are_checked_and_one_is_the_network_itself() -> None:
    net = _conv(np.eye(3))
    assert symmetry_averaged(net, 1) is net
    with pytest.raises(ValueError, match="n_symmetries 3"):
        SymmetryAveraged(net, 3)
    assert SymmetryAveraged(net, 4).state_dict()["n_symmetries"] == 4
    assert SYMMETRY_COUNTS == ALLOWED_COUNTS  # the option's check (torch-free) and the module agree

