"""The pix2pix training loop of the cGAN denoiser (Isola et al. 2017; Su et al. 2018).

The generator G maps a noisy particle x to its clean reference image y (the CTF-modulated
projection of the map at the particle's pose). Losses, as pix2pix (Isola et al. 2017,
eq. 4): ``L_G = BCE(D(x, G(x)), 1) + lambda_L1 * |G(x) - y|_1`` and
``L_D = 0.5 * [BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)]``, with the PatchGAN D giving a grid of
logits; Adam (lr 2e-4, beta1 0.5, beta2 0.999), lambda_L1 = 100. ``recon_loss="l2"`` replaces
the L1 term by the mean squared error (same weight): its minimiser is the posterior mean of
the target given the particle (the minimum-mean-squared-error estimate), where L1's is the
per-pixel posterior median.

CTF-aware mode (``ctf`` given to :func:`train_pix2pix` and :func:`denoise_images`): G sees
the phase-flipped particle and ``G(x)`` is multiplied by the particle's CTF before the
losses (:mod:`cryogan_core.physics.ctf_filters`), so the CTF's rings come from the
particle's known defocus.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from cryogan_core.models.patchgan import PatchGANDiscriminator
from cryogan_core.models.symmetry_average import apply_symmetry, undo_symmetry
from cryogan_core.physics.ctf_filters import ctf_modulate, phase_flip
from cryogan_core.models.unet import UNetGenerator


# the generator's reconstruction term: pix2pix's L1, or the squared error (posterior mean)
RECON_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss,
    "l2": F.mse_loss,
}


def reconstruction_loss(record: Mapping[str, float]) -> float:
    """The reconstruction term (unweighted L1 or L2) of one history record of :class:`Pix2PixTrainer`.

    Args:
        record: one step's losses; ``loss_g_rec``, or ``loss_g_l1`` in older runs' checkpoints.

    Raises:
        KeyError: the record has neither key.
    """
    return float(record["loss_g_rec"] if "loss_g_rec" in record else record["loss_g_l1"])


@dataclass
class Pix2PixConfig:
    """Hyper-parameters of the denoiser training (defaults: pix2pix's, Isola et al. 2017).

    Attributes:
        l1_weight: weight of the reconstruction term (lambda_L1; pix2pix 100), L1 or L2.
        recon_loss: ``"l1"`` (pix2pix: mean absolute error) or ``"l2"`` (mean squared error).
        gan_weight: weight of the adversarial term (1; 0 trains a plain L1 U-Net).
        lr: Adam learning rate of both networks (2e-4).
        beta1: Adam beta1 (0.5).
        beta2: Adam beta2 (0.999).
        batch_size: particles per step.
        n_steps: total optimisation steps.
        lr_decay_start: fraction of n_steps after which the lr decays linearly to 0 (pix2pix).
        seed: seed of initialisation and batch order.
        generator: keyword arguments of :class:`UNetGenerator`.
        discriminator: keyword arguments of :class:`PatchGANDiscriminator`.
    """

    l1_weight: float = 100.0
    recon_loss: str = "l1"
    gan_weight: float = 1.0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 32
    n_steps: int = 3000
    lr_decay_start: float = 0.5
    seed: int = 0
    generator: dict = field(default_factory=dict)
    discriminator: dict = field(default_factory=dict)


class Pix2PixTrainer:
    """Holds the two networks, their optimisers and the step counter; one call = one step.

    Args:
        config: the hyper-parameters.
        device: torch device of the networks and of the batches passed to :meth:`step`.

    Attributes:
        generator: the :class:`UNetGenerator`.
        discriminator: the :class:`PatchGANDiscriminator`.
        step_count: number of steps taken (restored from checkpoints).
        history: list of per-step loss dicts (``step``, ``lr``, ``loss_g_gan``, ``loss_g_rec`` (the
            L1 or L2 term, unweighted), ``loss_d``).

    Raises:
        ValueError: ``config.recon_loss`` is not ``"l1"`` or ``"l2"``.
    """

    def __init__(self, config: Pix2PixConfig, device: torch.device | str = "cpu") -> None:
        if config.recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss {config.recon_loss!r}: expected one of {', '.join(RECON_LOSSES)}")
        self.config = config
        self.device = torch.device(device)
        torch.manual_seed(config.seed)
        self.generator = UNetGenerator(**config.generator).to(self.device)
        self.discriminator = PatchGANDiscriminator(**config.discriminator).to(self.device)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=betas)
        self.step_count = 0
        self.history: list[dict[str, float]] = []

    def learning_rate(self, step: int) -> float:
        """pix2pix's schedule: constant, then linear decay to 0 over the last part of training."""
        start = int(self.config.lr_decay_start * self.config.n_steps)
        if step < start:
            return self.config.lr
        return self.config.lr * max(0.0, 1.0 - (step - start) / max(1, self.config.n_steps - start))

    def step(
        self, x: torch.Tensor, y: torch.Tensor, output_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """One optimisation step of D then G on a batch.

        Args:
            x: ``(n, 1, H, W)`` float32 noisy particles (normalised).
            y: ``(n, 1, H, W)`` float32 reference images (same units as x).
            output_transform: applied to ``G(x)`` before D and the reconstruction loss (differentiable;
                the CTF-aware mode's CTF modulation); None = identity.

        Returns:
            The losses of this step (floats).
        """
        lr = self.learning_rate(self.step_count)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        self.generator.train()
        self.discriminator.train()
        fake = self.generator(x)
        if output_transform is not None:
            fake = output_transform(fake)
        loss_d = torch.zeros((), device=x.device)
        if self.config.gan_weight > 0:
            self.opt_d.zero_grad(set_to_none=True)
            logits_real = self.discriminator(x, y)
            logits_fake = self.discriminator(x, fake.detach())
            loss_d = 0.5 * (
                F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
            )
            loss_d.backward()
            self.opt_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        loss_rec = RECON_LOSSES[self.config.recon_loss](fake, y)
        loss_gan = torch.zeros((), device=x.device)
        if self.config.gan_weight > 0:
            logits = self.discriminator(x, fake)
            loss_gan = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        (self.config.gan_weight * loss_gan + self.config.l1_weight * loss_rec).backward()
        self.opt_g.step()
        self.step_count += 1
        record = {
            "step": float(self.step_count),
            "lr": lr,
            "loss_g_gan": float(loss_gan.detach()),
            "loss_g_rec": float(loss_rec.detach()),
            "loss_d": float(loss_d.detach()),
        }
        self.history.append(record)
        return record

    def state_dict(self) -> dict:
        """Everything needed to resume: networks, optimisers, step, history, config."""
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step_count": self.step_count,
            "history": self.history,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (the config must build the same networks)."""
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step_count = int(state["step_count"])
        self.history = list(state["history"])


def train_pix2pix(
    trainer: Pix2PixTrainer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    n_steps: int,
    on_step: Callable[[dict[str, float]], None] | None = None,
    checkpoint: Callable[[], None] | None = None,
    checkpoint_every: int = 200,
    should_stop: Callable[[], None] | None = None,
    validate: Callable[[int], None] | None = None,
    validate_every: int = 250,
    ctf: torch.Tensor | None = None,
) -> None:
    """Train until ``trainer.step_count == n_steps``, drawing random batches.

    Batches are drawn with a generator seeded by ``(config.seed, step)``, so a resumed run
    draws the same batches as an uninterrupted one. Each batch gets a random one of the 8
    symmetries of the square (flips and 90° rotations) applied to both images: the map's
    projections at other poses are as valid, and it avoids learning a fixed orientation.

    Args:
        trainer: the networks and optimisers (its step counter says where to start).
        inputs: ``(n, H, W)`` float32 noisy particles (CPU or device).
        targets: ``(n, H, W)`` float32 reference images.
        n_steps: the step count to reach.
        on_step: called with each step's losses (progress logging).
        checkpoint: called every ``checkpoint_every`` steps and at the end.
        checkpoint_every: steps between checkpoints.
        should_stop: called before each step; raises to stop (e.g. RELION's abort file).
        validate: called with the step count every ``validate_every`` steps and at the end,
            before that step's checkpoint (model selection, :mod:`cryogan_core.train.selection`).
        validate_every: steps between validations.
        ctf: ``(n, H, W//2+1)`` each particle's CTF (``rfft2`` layout) for the CTF-aware
            mode: the inputs are phase-flipped with it before the symmetry is applied, and
            the generator's output is mapped back to the particle's frame, multiplied by
            the CTF and mapped again (so the CTF's astigmatism stays with its particle).
            None = plain pix2pix.
    """
    n = inputs.shape[0]
    if ctf is not None and (ctf.shape[0] != n or ctf.shape[-2] != inputs.shape[-2]):
        raise ValueError(f"ctf {tuple(ctf.shape)} does not match inputs {tuple(inputs.shape)}")
    bs = min(trainer.config.batch_size, n)
    device = trainer.device
    while trainer.step_count < n_steps:
        if should_stop is not None:
            should_stop()
        g = torch.Generator().manual_seed(trainer.config.seed * 1_000_003 + trainer.step_count)
        idx = torch.randint(0, n, (bs,), generator=g)
        k = int(torch.randint(0, 4, (1,), generator=g))
        flip = bool(torch.randint(0, 2, (1,), generator=g))
        x = inputs[idx].to(device)
        transform = None
        if ctf is not None:
            c = ctf[idx].to(device)
            x = phase_flip(x, c)
            transform = functools.partial(_modulate_in_frame, ctf=c, quarter_turns=k, flip=flip)
        x = apply_symmetry(x.unsqueeze(1), k, flip)
        y = apply_symmetry(targets[idx].to(device).unsqueeze(1), k, flip)
        record = trainer.step(x, y, transform)
        if on_step is not None:
            on_step(record)
        if validate is not None and (trainer.step_count % validate_every == 0 or trainer.step_count == n_steps):
            validate(trainer.step_count)
        if checkpoint is not None and (trainer.step_count % checkpoint_every == 0 or trainer.step_count == n_steps):
            checkpoint()


def _modulate_in_frame(out: torch.Tensor, ctf: torch.Tensor, quarter_turns: int, flip: bool) -> torch.Tensor:
    """CTF-modulate generator outputs made in a rotated/flipped frame.

    Args:
        out: ``(n, 1, H, W)`` outputs for inputs transformed by ``apply_symmetry(·, quarter_turns, flip)``.
        ctf: ``(n, H, W//2+1)`` the particles' CTFs in their own frame.
        quarter_turns, flip: the symmetry of the batch.

    Returns:
        ``(n, 1, H, W)``: ``g(CTF · g⁻¹(out))`` with g the symmetry (differentiable).
    """
    back = undo_symmetry(out, quarter_turns, flip)[:, 0]
    return apply_symmetry(ctf_modulate(back, ctf), quarter_turns, flip).unsqueeze(1)


#: Pixels per forward pass at inference: 64 particles of 64 px on a CPU, 1,024 on a GPU.
INFERENCE_PIXELS = {"cpu": 64 * 64 * 64, "cuda": 1024 * 64 * 64}


def inference_batch_size(box: int, device: torch.device | str) -> int:
    """Particles per forward pass of the denoiser at inference, for a ``box``-px image.

    The activations grow with the pixels of a batch, so the batch shrinks as the box grows:
    on 2 CPU threads the default U-Net ran 123 / 114 / 97 / 96 particles/s at 128 px with
    batches of 16 / 32 / 64 / 256 (smaller batches stay in cache), and a batch of 256 at
    128 px took 2.2 GB. A GPU wants large batches (200,000 particles/s at 64 px with 1,024,
    6,300 with 8; benchmarks/bench_unet_speed.py).

    Args:
        box: the image box (px).
        device: the generator's device (``cuda`` for a GPU, anything else counts as a CPU).

    Returns:
        ``INFERENCE_PIXELS[kind] // box²``, between 1 and 256 on a CPU (1,024 on a GPU):
        64 at 64 px, 16 at 128 px, 4 at 256 px on a CPU.
    """
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return int(min(256 if kind == "cpu" else 1024, max(1, INFERENCE_PIXELS[kind] // (box * box))))


def denoise_images(generator: nn.Module, images: torch.Tensor, batch_size: int | None = None, ctf: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a trained generator to particle images.

    Args:
        generator: the trained U-Net (switched to eval mode here), or a wrapper of it
            (:class:`~cryogan_core.models.symmetry_average.SymmetryAveraged`).
        images: ``(n, H, W)`` float32 normalised particles (any device; batches are moved
            to the generator's device).
        batch_size: particles per forward pass (None: :func:`inference_batch_size`).
        ctf: ``(n, H, W//2+1)`` each particle's CTF (``rfft2`` layout) for a CTF-aware
            model: inputs phase-flipped, outputs CTF-modulated
            (:mod:`cryogan_core.physics.ctf_filters`); None for a plain model.

    Returns:
        ``(n, H, W)`` float32 denoised images on the CPU.

    Raises:
        ValueError: if ``ctf`` does not match the images.
    """
    if ctf is not None and (ctf.shape[0] != images.shape[0] or ctf.shape[-2] != images.shape[-2]):
        raise ValueError(f"ctf {tuple(ctf.shape)} does not match images {tuple(images.shape)}")
    generator.eval()
    device = next(generator.parameters()).device
    batch_size = batch_size or inference_batch_size(images.shape[-1], device)
    out = torch.empty(images.shape, dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            c = None if ctf is None else ctf[start : start + batch_size].to(device)
            if c is not None:
                batch = phase_flip(batch, c)
            y = generator(batch.unsqueeze(1))[:, 0].float()
            if c is not None:
                y = ctf_modulate(y, c)
            out[start : start + batch.shape[0]] = y.cpu()
    return out


__all__ = ["Pix2PixConfig", "Pix2PixTrainer", "train_pix2pix", "denoise_images", "inference_batch_size"]
