"""The CryoGAN training loop: a voxel volume learned against a WGAN-GP critic, no poses.

Gupta, McCann, Donati & Unser, "CryoGAN: a new reconstruction paradigm for single-particle
cryo-EM via deep adversarial learning", IEEE TCI 7:759 (2021), Algorithm 1; reference code
``harshit-gupta-cor/CryoGAN`` (``CryoGAN_Clean.py``, ``Generators_Clean.py``, configs
``train_Betagal.cfg``). The generator is the volume ``V``; a differentiable simulator turns
it into particle images (Sec. III):

    y = normalise( S_t( H_φ( P_θ(V) ) ) + n )

with a pose θ drawn from the prior (uniform over SO(3) by default), the CTF ``H_φ`` of a
randomly drawn real particle, a shift ``t`` from the shift prior (particle centre at
``box//2 − t``, RELION's origin convention), a noise image ``n`` from the real background
(:mod:`cryogan_core.physics.noise`), and RELION's background normalisation (mean 0, std 1
outside the particle radius) applied to simulated and real particles alike. The critic
``D`` is trained with the Wasserstein loss and the gradient penalty (Gulrajani et al. 2017,
Algorithm 1)::

    L_D = mean D(fake) − mean D(real) + λ · mean (‖∇D(x̂)‖₂ − 1)²,      n_critic steps
    L_V = − mean D(fake)                                                 1 step

Defaults are the paper's (``train_Betagal.cfg``): n_critic 4, Adam(β = 0.5, 0.9), learning
rate 1e-3 for volume and critic, batch 8, critic inputs blurred by a Gaussian of σ = 2 px
(the paper anneals it by 0.98 per epoch; here it shrinks linearly to 0 over the first
``blur_end`` of the run so that the last part of training sees full resolution, whatever
the run length). λ defaults to 1 (the β-gal configuration; Gulrajani et al. use 10). The
learning rate decays by ``lr_gamma`` per epoch (the paper's StepLR, applied smoothly).

The volume's overall scale is ``amplitude · exp(log_scale)``: ``amplitude`` is set once
from the data (the signal variance of the real particles), ``log_scale`` is learned
(the paper's learned ``scalar[0]``), so that the voxel values stay of order 1 and the
learning rate of 1e-3 means the same thing on every dataset.

The volume and its start are in :mod:`cryogan_core.train.cryogan_volume`, the simulator in
:mod:`cryogan_core.train.cryogan_simulator`.

An epoch is one pass of the critic over the real particles of the half set:
``n_real / (batch · n_critic)`` volume updates.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from cryogan_core.device import to_device
from cryogan_core.models.critic import (
    CryoGANCritic,
    gaussian_blur_images,
    gradient_penalty,
)
from cryogan_core.train.cryogan_simulator import SimulationPriors, simulate_batch
from cryogan_core.train.cryogan_volume import ScaledVolume

__all__ = [
    "BLUR_PASSES_10PCT",
    "CryoGanTrainer",
    "WganConfig",
    "blur_sigma_px",
    "learning_rate",
    "marching_cutoff_shells",
    "train_cryogan",
]


# ----------------------------------------------------------------------------- training


@dataclass
class WganConfig:
    """Hyper-parameters of CryoGAN training (defaults: the paper's ``train_Betagal.cfg``).

    Attributes:
        n_critic: critic updates per volume update (4).
        gp_lambda: gradient-penalty weight λ (1; Gulrajani et al. use 10).
        lr: Adam learning rate of the volume and of the critic (1e-3).
        lr_critic: critic learning rate if different (None: ``lr``).
        lr_gamma: learning-rate decay per epoch (lr · γ^epoch; 1 = none).
        beta1, beta2: Adam betas (0.5, 0.9).
        batch_size: images per critic/volume step (8).
        blur_sigma_px: σ of the Gaussian blur of critic inputs at the start (2 px).
        blur_end: fraction of the run after which σ = 0 (linear decrease until then).
        n_epochs: epochs to train (an epoch = each real particle seen once by the critic).
        learn_scale: learn the volume's overall scale.
        march: frequency marching: after every volume update, band-limit the voxels to the
            Fourier shells the critic's current blur passes (:func:`marching_cutoff_shells`).
        seed: seed of initialisation and of every random draw.
        critic: keyword arguments of :class:`CryoGANCritic` (besides ``box``).
    """

    n_critic: int = 4
    gp_lambda: float = 1.0
    lr: float = 1e-3
    lr_critic: float | None = None
    lr_gamma: float = 0.99
    beta1: float = 0.5
    beta2: float = 0.9
    batch_size: int = 8
    blur_sigma_px: float = 2.0
    blur_end: float = 0.8
    n_epochs: float = 100.0
    learn_scale: bool = True
    march: bool = False
    seed: int = 0
    critic: dict = field(default_factory=dict)


def learning_rate(base_lr: float, gamma: float, epoch: float) -> float:
    """``base_lr · gamma^epoch`` (the paper's per-epoch StepLR decay, continuous in epoch)."""
    return float(base_lr) * float(gamma) ** float(epoch)


def blur_sigma_px(sigma0_px: float, progress: float, blur_end: float) -> float:
    """Blur σ of the critic inputs: ``σ0 · max(0, 1 − progress / blur_end)`` (px).

    Args:
        sigma0_px: σ at the start (px).
        progress: fraction of the run done, in [0, 1].
        blur_end: fraction at which σ reaches 0 (<= 0: no blur at all).
    """
    if blur_end <= 0:
        return 0.0
    return float(sigma0_px) * max(0.0, 1.0 - float(progress) / float(blur_end))


#: ``σ · f`` (px · cycles/px) at which a Gaussian blur of σ px passes 0.1 of an amplitude:
#: ``exp(−2π² σ² f²) = 0.1`` gives ``σ f = sqrt(ln 10 / 2π²) = 0.3416``
BLUR_PASSES_10PCT = math.sqrt(math.log(10.0) / (2.0 * math.pi**2))


def marching_cutoff_shells(box: int, sigma_px: float, min_shells: float = 4.0) -> float | None:
    """Band limit of frequency marching: the Fourier shell where the critic's blur passes 0.1.

    The critic sees images blurred by a Gaussian of σ px (Fourier response
    ``exp(−2π² σ² f²)``, f in cycles/px), so it cannot tell real from simulated beyond about
    ``f = 0.3416 / σ``; frequency marching keeps the volume inside the band the critic sees
    (cf. the frequency marching of Barnett et al. 2017, SIAM J. Imaging Sci. 10(3):1170, used
    there to steer ab initio refinement from low to high resolution). Here the cutoff is
    ``kc = 0.3416 · box / σ`` shells, never below ``min_shells``.

    Args:
        box: training box ``D`` (px).
        sigma_px: the critic's current blur σ (training px, >= 0).
        min_shells: the smallest cutoff (shells).

    Returns:
        ``kc`` in shells of ``box``, or None where no limit applies: σ = 0, or ``kc`` beyond
        the box's corner (``box/2 · √3``), which every coefficient passes.

    Raises:
        ValueError: ``box`` < 1 or ``sigma_px`` < 0.
    """
    if box < 1 or sigma_px < 0:
        raise ValueError(f"need box >= 1 and sigma_px >= 0, got {box} and {sigma_px}")
    if sigma_px == 0:
        return None
    kc = max(float(min_shells), BLUR_PASSES_10PCT * box / float(sigma_px))
    return None if kc >= box / 2 * math.sqrt(3.0) else kc


class CryoGanTrainer:
    """One CryoGAN reconstruction (one half set): volume, critic, optimisers, counters.

    Args:
        volume: the generator (:class:`ScaledVolume`).
        priors: the simulator's priors for this half set.
        config: the hyper-parameters.
        device: torch device of the networks (the real images must be there too).
        name: label used in records (e.g. ``"half1"``).
        seed_offset: added to ``config.seed`` for this trainer's random draws (halves draw
            independent poses, CTFs and noise).

    Attributes:
        critic: the :class:`CryoGANCritic`.
        step_count: volume updates done.
        elapsed_s: training wall time so far (restored from checkpoints).
        history: one record per volume update (see :meth:`train_step`).
    """

    def __init__(
        self,
        volume: ScaledVolume,
        priors: SimulationPriors,
        config: WganConfig,
        device: torch.device | str = "cpu",
        name: str = "half1",
        seed_offset: int = 0,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.priors = priors
        self.name = name
        self.seed_offset = int(seed_offset)
        self.volume = volume.to(self.device)
        torch.manual_seed(config.seed * 7919 + self.seed_offset)
        self.critic = CryoGANCritic(box=priors.box, **config.critic).to(self.device)
        betas = (config.beta1, config.beta2)
        self.opt_v = torch.optim.Adam([p for p in self.volume.parameters() if p.requires_grad], lr=config.lr, betas=betas)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=self.lr_critic0, betas=betas)
        self.step_count = 0
        self.elapsed_s = 0.0
        self.history: list[dict[str, float]] = []

    @property
    def lr_critic0(self) -> float:
        """Initial critic learning rate."""
        return self.config.lr if self.config.lr_critic is None else self.config.lr_critic

    def epoch(self, n_real: int) -> float:
        """Epochs done (float) for a half set of ``n_real`` particles."""
        return self.step_count * self.config.batch_size * self.config.n_critic / max(1, n_real)

    def _step_seed(self) -> int:
        """The seed of the current step, from (seed, trainer, step), before reduction mod 2**63 - 1."""
        return self.config.seed * 1_000_003 + self.seed_offset * 7_777_777 + self.step_count

    def step_generator(self) -> torch.Generator:
        """CPU generator of the current step, seeded by (seed, trainer, step): resumable."""
        return torch.Generator().manual_seed(self._step_seed() % (2**63 - 1))

    def _critic_updates(self, real: torch.Tensor, sigma_px: float, gen: torch.Generator) -> torch.Tensor:
        """``n_critic`` critic updates against fakes of the current (fixed) volume.

        Args:
            real: ``(n_critic · batch, D, D)`` normalised real particles on the device.
            sigma_px: blur σ of the critic inputs (px).
            gen: CPU generator of the simulator's draws and of the penalty's mixing weights.

        Returns:
            ``(3,)`` float32 tensor on the device: the sums over the updates of the critic
            loss, the Wasserstein estimate and the penalty. It stays on the device so that
            the updates queue on a GPU without waiting for each loss to be read back; the
            caller reads it once per step.
        """
        cfg = self.config
        b, k = cfg.batch_size, cfg.n_critic
        gp_gen = gen if self.device.type == "cpu" else None
        with torch.no_grad():
            fakes = simulate_batch(self.volume(), self.priors, b * k, gen)
        real_b = gaussian_blur_images(real.unsqueeze(1), sigma_px)
        fake_b = gaussian_blur_images(fakes.unsqueeze(1), sigma_px)
        self.critic.requires_grad_(True)
        sums = torch.zeros(3, device=self.device)
        for i in range(k):
            r = real_b[i * b : (i + 1) * b]
            f = fake_b[i * b : (i + 1) * b]
            d_real = self.critic(r).mean()
            d_fake = self.critic(f).mean()
            gp = gradient_penalty(self.critic, r, f, cfg.gp_lambda, generator=gp_gen)
            loss_c = d_fake - d_real + gp
            self.opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            self.opt_c.step()
            sums += torch.stack([loss_c.detach(), (d_real - d_fake).detach(), gp.detach()]).float()
        return sums

    def warm_up_critic(self, real: torch.Tensor, n_iterations: int, sigma_px: float, epoch: float) -> float:
        """Train a new critic against the current, fixed volume (after a change of box).

        ``n_iterations`` rounds of ``n_critic`` critic updates, with the learning rate of
        ``epoch``; the volume, ``step_count`` and ``history`` are untouched. The draws are
        seeded by (seed, trainer, step, round), so a resumed run repeats them.

        Args:
            real: all ``(n, D, D)`` normalised real particles of this half set (any device).
            n_iterations: rounds (>= 0).
            sigma_px: blur σ of the critic inputs (px).
            epoch: current epoch, for the learning rate.

        Returns:
            The mean Wasserstein estimate of the last round (0 when ``n_iterations`` is 0).
        """
        cfg = self.config
        lr_c = learning_rate(self.lr_critic0, cfg.lr_gamma, epoch)
        for group in self.opt_c.param_groups:
            group["lr"] = lr_c
        sums = None
        base = self._step_seed() * 4099
        for i in range(n_iterations):
            gen = torch.Generator().manual_seed((base + 17 + i) % (2**63 - 1))
            idx = torch.randint(0, real.shape[0], (cfg.batch_size * cfg.n_critic,), generator=gen)
            sums = self._critic_updates(to_device(real[to_device(idx, real.device)], self.device), sigma_px, gen)
        return 0.0 if sums is None else float(sums[1]) / cfg.n_critic

    def continue_from(self, other: "CryoGanTrainer") -> None:
        """Take over another trainer's counters (steps, training time, history): the same
        reconstruction continued at another box by this trainer."""
        self.step_count = other.step_count
        self.elapsed_s = other.elapsed_s
        self.history = other.history

    def train_step(self, real: torch.Tensor, sigma_px: float, epoch: float) -> dict[str, float]:
        """One CryoGAN iteration: ``n_critic`` critic updates, then one volume update.

        Args:
            real: ``(n_critic · batch, D, D)`` normalised real particles on the device.
            sigma_px: blur σ of the critic inputs (px).
            epoch: current epoch (float), for the learning-rate schedule.

        Returns:
            Record with ``step``, ``epoch``, ``lr``, ``sigma_px``, ``loss_critic`` (mean of the
            critic losses, penalty included), ``wasserstein`` (mean D(real) − mean D(fake),
            the critic's estimate of the Wasserstein distance), ``gp``, ``loss_gen``,
            ``scale`` (exp(log_scale)).

        Raises:
            ValueError: ``real`` does not hold ``n_critic · batch`` images.
        """
        cfg = self.config
        b, k = cfg.batch_size, cfg.n_critic
        if real.shape[0] != b * k:
            raise ValueError(f"train_step needs {b * k} real images, got {real.shape[0]}")
        gen = self.step_generator()
        lr_v = learning_rate(cfg.lr, cfg.lr_gamma, epoch)
        lr_c = learning_rate(self.lr_critic0, cfg.lr_gamma, epoch)
        for group in self.opt_v.param_groups:
            group["lr"] = lr_v
        for group in self.opt_c.param_groups:
            group["lr"] = lr_c
        sums = self._critic_updates(real, sigma_px, gen)

        # ---- volume: one update through the differentiable simulator
        self.critic.requires_grad_(False)
        fake = simulate_batch(self.volume(), self.priors, b, gen)
        loss_g = -self.critic(gaussian_blur_images(fake.unsqueeze(1), sigma_px)).mean()
        self.opt_v.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_v.step()
        self.volume.project_()
        if cfg.march:
            kc = marching_cutoff_shells(self.priors.box, sigma_px)
            if kc is not None:
                self.volume.band_limit_(kc)
        self.critic.requires_grad_(True)

        self.step_count += 1
        # one read-back per step (on a GPU, each float() of a device scalar waits for the queue)
        loss_c_sum, w_sum, gp_sum, loss_gen, scale = torch.cat(
            [sums, torch.stack([loss_g.detach(), torch.exp(self.volume.log_scale.detach())]).float()]).tolist()
        record = {
            "step": float(self.step_count),
            "epoch": float(epoch),
            "lr": lr_v,
            "sigma_px": float(sigma_px),
            "loss_critic": loss_c_sum / k,
            "wasserstein": w_sum / k,
            "gp": gp_sum / k,
            "loss_gen": loss_gen,
            "scale": scale,
        }
        self.history.append(record)
        return record

    @torch.no_grad()
    def current_volume(self) -> torch.Tensor:
        """The current volume ``(D, D, D)`` float32 on the CPU (image units)."""
        return self.volume().detach().float().cpu()

    def state_dict(self) -> dict:
        """Everything needed to resume: volume, critic, optimisers, counters, history, config."""
        return {
            "name": self.name,
            "volume": self.volume.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_config": dict(self.critic.config),
            "opt_v": self.opt_v.state_dict(),
            "opt_c": self.opt_c.state_dict(),
            "step_count": self.step_count,
            "elapsed_s": self.elapsed_s,
            "history": self.history,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (the same architecture and box).

        Raises:
            RuntimeError: the saved tensors do not fit this trainer (torch's message).
        """
        self.volume.load_state_dict(state["volume"])
        self.critic.load_state_dict(state["critic"])
        self.opt_v.load_state_dict(state["opt_v"])
        self.opt_c.load_state_dict(state["opt_c"])
        self.step_count = int(state["step_count"])
        self.elapsed_s = float(state["elapsed_s"])
        self.history = list(state["history"])


def _real_batch(real: torch.Tensor, n: int, trainer: CryoGanTrainer) -> torch.Tensor:
    """``n`` real images drawn at random (seeded by the trainer's step), on its device."""
    g = torch.Generator().manual_seed(
        (trainer.config.seed * 999_983 + trainer.seed_offset * 31_337 + trainer.step_count) % (2**63 - 1)
    )
    idx = to_device(torch.randint(0, real.shape[0], (n,), generator=g), real.device)
    return to_device(real[idx], trainer.device)


def train_cryogan(
    trainers: Sequence[CryoGanTrainer],
    reals: Sequence[torch.Tensor],
    max_seconds: float | None = None,
    should_stop: Callable[[], None] | None = None,
    on_step: Callable[[list[dict[str, float]], float, float], None] | None = None,
    on_eval: Callable[[float], None] | None = None,
    eval_every_s: float | None = None,
    checkpoint: Callable[[], None] | None = None,
    checkpoint_every_s: float = 120.0,
    parallel: bool = True,
    end_progress: float = 1.0,
) -> str:
    """Train several independent reconstructions (the half sets) in lockstep.

    Every loop iteration gives each trainer that has not reached ``config.n_epochs`` one
    :meth:`CryoGanTrainer.train_step`. The run ends when every trainer has done its epochs,
    or when the training time (``elapsed_s``, which includes earlier runs restored from a
    checkpoint) reaches ``max_seconds``. The blur schedule follows the progress
    ``max(epoch / n_epochs, elapsed / max_seconds)``.

    Args:
        trainers: one trainer per half set (same config).
        reals: the real normalised particles of each half set, ``(n_h, D, D)`` (any device).
        max_seconds: training-time budget (None: only epochs count).
        should_stop: called before every iteration; it raises to stop (RELION abort). A
            checkpoint is written before the exception propagates.
        on_step: ``on_step(records, elapsed_s, progress)`` after every iteration.
        on_eval: ``on_eval(elapsed_s)`` every ``eval_every_s`` seconds of training.
        eval_every_s: interval of ``on_eval`` (None: never during training).
        checkpoint: called every ``checkpoint_every_s`` seconds and at the end.
        checkpoint_every_s: interval of checkpoints.
        parallel: run the trainers' steps in concurrent Python threads (one per trainer)
            with ``torch.get_num_threads() // len(trainers)`` torch threads each (at least
            1). The networks are small, so intra-op parallelism gains little and spins badly
            on a busy machine; one thread per half set was 1.4x faster on 2 cores (box 32).
        end_progress: stop when the progress reaches this fraction of the run (< 1: one
            stage of a coarse-to-fine run, which continues later at another box with the
            same ``n_epochs`` and ``max_seconds``, so that the schedules run on).

    Returns:
        ``"epochs"``, ``"time"`` or ``"stage"`` (``end_progress`` reached): what ended the run.

    Raises:
        ValueError: ``trainers`` and ``reals`` differ in length, or a half set is smaller
            than one batch.
        Exception: whatever ``should_stop`` raises.
    """
    if len(trainers) != len(reals) or not trainers:
        raise ValueError("need one real-particle tensor per trainer")
    cfg = trainers[0].config
    need = cfg.batch_size * cfg.n_critic
    for t, r in zip(trainers, reals):
        if r.shape[0] < cfg.batch_size:
            raise ValueError(f"{t.name}: {r.shape[0]} particles, fewer than one batch ({cfg.batch_size})")
    n_threads = torch.get_num_threads()
    use_pool = parallel and len(trainers) > 1 and n_threads > 1
    pool = ThreadPoolExecutor(len(trainers)) if use_pool else None
    if use_pool:
        torch.set_num_threads(max(1, n_threads // len(trainers)))
    try:
        return _train_loop(trainers, reals, cfg, need, max_seconds, should_stop, on_step, on_eval, eval_every_s,
                           checkpoint, checkpoint_every_s, pool, end_progress)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
            torch.set_num_threads(n_threads)


def _train_loop(trainers, reals, cfg, need, max_seconds, should_stop, on_step, on_eval, eval_every_s,  # noqa: ANN001
                checkpoint, checkpoint_every_s, pool, end_progress) -> str:  # noqa: ANN001
    """The body of :func:`train_cryogan` (same arguments; ``pool`` runs trainers concurrently)."""
    start_elapsed = min(t.elapsed_s for t in trainers)
    t0 = time.monotonic()
    last_ckpt = last_eval = start_elapsed

    def elapsed() -> float:
        """Training seconds, earlier runs of a resumed job included."""
        return start_elapsed + (time.monotonic() - t0)

    def progress_of(t: CryoGanTrainer, n_real: int, now: float) -> float:
        """Fraction of the run done, in [0, 1]: the larger of epochs and time used."""
        p = t.epoch(n_real) / cfg.n_epochs if cfg.n_epochs > 0 else 1.0
        if max_seconds:
            p = max(p, now / max_seconds)
        return min(1.0, p)

    reason = "epochs"
    while True:
        now = elapsed()
        active = [(t, r) for t, r in zip(trainers, reals) if t.epoch(r.shape[0]) < cfg.n_epochs]
        if not active:
            reason = "epochs"
            break
        if max_seconds is not None and now >= max_seconds:
            reason = "time"
            break
        if should_stop is not None:
            try:
                should_stop()
            except BaseException:
                for t in trainers:
                    t.elapsed_s = elapsed()
                if checkpoint is not None:
                    checkpoint()
                raise
        progress = max(progress_of(t, r.shape[0], now) for t, r in active)
        if end_progress < 1.0 and progress >= end_progress:
            reason = "stage"
            break
        sigma = blur_sigma_px(cfg.blur_sigma_px, progress, cfg.blur_end)

        def one(tr: tuple[CryoGanTrainer, torch.Tensor]) -> dict[str, float]:
            """One training step of one half (trainer, its real particles) -> its losses."""
            t, r = tr
            return t.train_step(_real_batch(r, need, t), sigma, t.epoch(r.shape[0]))

        records = list(pool.map(one, active)) if pool is not None and len(active) > 1 else [one(a) for a in active]
        now = elapsed()
        for t in trainers:
            t.elapsed_s = now
        if on_step is not None:
            on_step(records, now, progress)
        if on_eval is not None and eval_every_s and now - last_eval >= eval_every_s:
            last_eval = now
            on_eval(now)
        if checkpoint is not None and now - last_ckpt >= checkpoint_every_s:
            last_ckpt = now
            checkpoint()
    for t in trainers:
        t.elapsed_s = elapsed()
    if checkpoint is not None:
        checkpoint()
    return reason
