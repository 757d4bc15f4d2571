"""The generator's reconstruction term: pix2pix's L1 (posterior median) or the squared error (posterior mean)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cryogan_core.commands.denoise import DenoiseInputs, run_denoise
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.train.pix2pix import Pix2PixConfig, Pix2PixTrainer, reconstruction_loss

TINY_G = {"base_channels": 4, "depth": 1, "n_res_blocks": 0}


def _trainer(recon_loss: str, **kw: object) -> Pix2PixTrainer:
    return Pix2PixTrainer(Pix2PixConfig(recon_loss=recon_loss, gan_weight=0.0, generator=TINY_G, discriminator={"n_layers": 1}, **kw))


@pytest.mark.parametrize(("name", "reference"), [("l1", F.l1_loss), ("l2", F.mse_loss)])
def test_the_recorded_term_is_the_chosen_loss_of_the_generator_output(name: str, reference) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 12, 12, generator=g), torch.randn(4, 1, 12, 12, generator=g)
    trainer = _trainer(name)
    with torch.no_grad():
        expected = float(reference(trainer.generator.train()(x), y))
    record = trainer.step(x, y)
    assert reconstruction_loss(record) == pytest.approx(expected, rel=1e-5)


def test_l2_learns_the_mean_and_l1_the_median_of_an_unpredictable_target() -> None:
    """Targets independent of the inputs, each pixel 1 with probability 0.2 and 0 otherwise:
    the squared error's optimum is the mean (0.2), L1's the median (0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 1, 8, 8, generator=g)
    y = (torch.rand(512, 1, 8, 8, generator=g) < 0.2).float()
    outputs = {}
    for name in ("l1", "l2"):
        trainer = _trainer(name, lr=3e-3, lr_decay_start=0.5, n_steps=400)
        for step in range(400):
            idx = torch.randint(0, 512, (32,), generator=g)
            trainer.step(x[idx], y[idx])
        with torch.no_grad():
            outputs[name] = float(trainer.generator.eval()(torch.randn(64, 1, 8, 8, generator=g)).mean())
    assert outputs["l2"] == pytest.approx(0.2, abs=0.05)
    assert outputs["l1"] == pytest.approx(0.0, abs=0.05)


def test_the_option_offers_exactly_the_trainer_losses() -> None:
    from cryogan_core.commands.denoise_options import RECON_LOSSES as OPTION_CHOICES
    from cryogan_core.train.pix2pix import RECON_LOSSES

    assert OPTION_CHOICES == tuple(RECON_LOSSES)  # the option's check (torch-free) and the trainer agree


def test_an_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="recon_loss 'huber'"):
        _trainer("huber")


def test_a_checkpoint_made_before_recon_loss_existed_resumes_as_l1(tmp_path: Path, log_messages: list[str]) -> None:
    """Older checkpoints store no ``recon_loss``, no discriminator ``base_channels`` and log
    ``loss_g_l1``: Continue resumes them (L1 and 32 channels are what they trained with) instead
    of starting over, and the report still plots them."""
    run_simulate(tmp_path / "sim", n=120, snr_db=-10.0, shift_px=1.0, seed=3, box=24, pixel_size_A=7.0, project_dir=tmp_path)
    # such runs trained a 32-channel discriminator (the job's and PatchGANDiscriminator's default)
    opts = {"base_channels": 4, "depth": 1, "batch_size": 8, "n_report": 30, "n_steps": 40, "validation_fraction": 0.0,
            "no_bias_controls": True, "no_scores": True, "disc_channels": 32}
    inputs = DenoiseInputs(tmp_path / "sim/particles.star", tmp_path / "run", tmp_path / "sim/ground_truth_map.mrc", project_dir=tmp_path)
    run_denoise(inputs, opts)
    ckpt = tmp_path / "run/checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["recon_loss"] == "l1"
    del state["config"]["recon_loss"]
    assert state["config"]["discriminator"]["base_channels"] == 32
    del state["config"]["discriminator"]["base_channels"]
    state["history"] = [{("loss_g_l1" if k == "loss_g_rec" else k): v for k, v in h.items()} for h in state["history"]]
    torch.save(state, ckpt)
    (tmp_path / "run/logfile.pdf").unlink()
    messages = log_messages
    summary = run_denoise(inputs, opts)
    assert any("Continuing from" in m and "at step 40/40" in m for m in messages), messages
    assert not any("starting training over" in m for m in messages)
    assert summary["train_steps"] == 40
    assert (tmp_path / "run/logfile.pdf").is_file()
    # and the same checkpoint does not resume as an L2 run
    messages.clear()

    class Stop(Exception):
        """Raised at the first training step: what is checked is logged before it."""

    def stop() -> None:
        """Stop the run once training starts."""
        if any("starting training over" in m for m in messages):
            raise Stop

    older = ckpt.read_bytes()
    with pytest.raises(Stop):
        run_denoise(inputs, {**opts, "recon_loss": "l2"}, should_stop=stop)
    assert any("starting training over" in m for m in messages)
    # L2 at the default adversarial weight is warned about (the adversarial term dominates)
    assert any("--recon_loss l2 with --gan_weight 0.1" in m and "--gan_weight 0 is advised" in m for m in messages)
    # nor with a narrower discriminator (16 channels) in place of the 32 it trained
    ckpt.write_bytes(older)
    messages.clear()
    with pytest.raises(Stop):
        run_denoise(inputs, {**opts, "disc_channels": 16}, should_stop=stop)
    assert any("starting training over" in m for m in messages)


def test_stored_config_completes_network_arguments_with_their_defaults() -> None:
    """A checkpoint's network arguments compare by value: a missing one is its default, a changed one is not."""
    from cryogan_core.commands.denoise_model import config_dict, stored_config

    now = config_dict(Pix2PixConfig(discriminator={"n_layers": 3, "base_channels": 32}, generator={"depth": 2}))
    older = {"config": {**now, "discriminator": {"n_layers": 3}, "generator": {"depth": 2}}}
    assert stored_config(older) == now
    assert now["discriminator"]["base_channels"] == 32 and now["generator"]["base_channels"] > 0
    narrower = config_dict(Pix2PixConfig(discriminator={"n_layers": 3, "base_channels": 16}, generator={"depth": 2}))
    assert stored_config(older) != narrower
