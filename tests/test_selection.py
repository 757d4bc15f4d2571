"""Model selection of the denoiser: the best validation weights are kept, restored and checkpointed."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cryogan_core.commands.denoise_pairs import MAX_VALIDATION, split_validation
from cryogan_core.metrics.images import circular_mask
from cryogan_core.train.pix2pix import Pix2PixConfig, Pix2PixTrainer, train_pix2pix
from cryogan_core.train.selection import BestWeights


def _scaler(w: float) -> torch.nn.Conv2d:
    """A 1x1 convolution that multiplies by ``w``: CC +1 with its input for w > 0, -1 for w < 0."""
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(w)
        conv.bias.zero_()
    return conv


@pytest.fixture()
def validation() -> BestWeights:
    """A validation set of 12 random 20-px images whose targets are 2 x + 1."""
    x = torch.randn(12, 20, 20, generator=torch.Generator().manual_seed(0))
    return BestWeights(x, 2.0 * x + 1.0, circular_mask(20, 8.0))


def test_the_best_scoring_weights_are_kept_and_restored(validation: BestWeights) -> None:
    net = _scaler(-1.0)
    assert validation.restore(net) is False and float(net.weight.detach()) == -1.0  # nothing kept yet
    assert validation.update(net, 250) == pytest.approx(-1.0, abs=1e-5)
    with torch.no_grad():
        net.weight.fill_(2.0)
    assert validation.update(net, 500) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        net.weight.fill_(-3.0)
    validation.update(net, 750)
    assert validation.best_step == 500 and validation.best_cc == pytest.approx(1.0, abs=1e-5)
    assert validation.last_cc == pytest.approx(-1.0, abs=1e-5)
    assert [s for s, _ in validation.curve] == [250, 500, 750]
    assert validation.restore(net) and float(net.weight.detach()) == 2.0


def test_selection_survives_a_checkpoint(validation: BestWeights) -> None:
    net = _scaler(0.5)
    validation.update(net, 100)
    with torch.no_grad():
        net.weight.fill_(-0.5)
    validation.update(net, 200)
    buf = io.BytesIO()
    torch.save(validation.state_dict(), buf)
    buf.seek(0)
    again = BestWeights(validation.inputs, validation.targets, validation.mask)
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert again.best_step == 100 and again.curve == validation.curve
    other = _scaler(-7.0)
    assert again.restore(other) and float(other.weight.detach()) == 0.5


def test_mismatched_or_empty_validation_sets_are_refused() -> None:
    m = circular_mask(8, 3.0)
    with pytest.raises(ValueError, match="must match"):
        BestWeights(torch.zeros(3, 8, 8), torch.zeros(2, 8, 8), m)
    with pytest.raises(ValueError, match="non-empty"):
        BestWeights(torch.zeros(0, 8, 8), torch.zeros(0, 8, 8), m)


def test_training_validates_every_n_steps_and_at_the_end() -> None:
    trainer = Pix2PixTrainer(Pix2PixConfig(batch_size=2, n_steps=7, generator={"base_channels": 4, "depth": 1, "n_res_blocks": 0},
                                           discriminator={"n_layers": 1}))
    x = torch.randn(6, 16, 16)
    seen: list[int] = []
    train_pix2pix(trainer, x, x, 7, validate=seen.append, validate_every=3)
    assert seen == [3, 6, 7]


def test_validation_split_is_disjoint_and_bounded() -> None:
    rows = np.arange(0, 1000, 2)
    train, val = split_validation(rows, 0.1, seed=0)
    assert len(val) == 50 and len(train) == 450
    assert not set(train) & set(val) and set(train) | set(val) == set(rows)
    assert np.all(np.diff(val) > 0)
    again = split_validation(rows, 0.1, seed=0)[1]
    np.testing.assert_array_equal(val, again)  # seeded
    assert len(split_validation(rows, 0.0, seed=0)[1]) == 0  # switched off
    assert len(split_validation(rows[:100], 0.1, seed=0)[1]) == 0  # 10 particles: too few to choose by
    assert len(split_validation(np.arange(50_000), 0.5, seed=0)[1]) == MAX_VALIDATION
