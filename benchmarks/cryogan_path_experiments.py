"""Diagnostics of CryoGAN's path (run by hand): ``bench_cryogan.py`` with the start or the
volume update changed, to reproduce the stop-22 paragraphs of docs/cryogan_benchmarks.md.

``--start-truth`` is not a feature of the job: it replaces the job's start volume
(:func:`cryogan_core.commands.reconstruct.gaussian_ball`) before the benchmark runs.

* ``--start-truth``: both half volumes start at the true map (the benchmark's β-gal map,
  Fourier-cropped to the training box, scaled to maximum 1; then masked and clamped at 0 as
  the job's Gaussian ball is), optionally low-passed (``--start-lowpass-A``: hard cut at that
  resolution in Å). Uses the truth, so it is a diagnostic, never a method: it tells whether
  a plateau is the objective's optimum or where the path from the ball ends.
* ``--march``: frequency marching of the volume, now the job's ``march`` option (this flag
  adds ``march=yes`` to ``--set``; stop 22 ran the same steps as a replacement of
  ``VoxelVolume.project_``). After every volume update (after the positivity clamp) the
  density is projected onto the Fourier shells ``|k| <= kc`` of the training box,
  ``kc = 0.342 · box / σ`` (the frequency at which the critic's Gaussian blur of σ px,
  response ``exp(−2π² σ² f²)``, passes 0.1), never below 4 shells, and no limit once ``kc``
  exceeds the box's corner (``box/2 · √3``): :func:`cryogan_core.train.wgan.marching_cutoff_shells`.
* ``--fourier-adam`` (stop 26): the volume's Adam moments live on its Fourier coefficients
  (:class:`FourierAdam`), so a weak shell's step is not scaled down by the strong
  low-resolution gradient in every voxel's second moment.
* ``--generator-batch-factor K`` (stop 26): each volume update averages its gradient over
  ``K`` × ``batch`` simulated particles (the critic's batches are unchanged).
* ``--ema-decays B1,B2,... --dump-dir DIR`` (stop 31): exponential moving averages of the
  volume over the training steps (``ema ← β · ema + (1 − β) · V`` after every update,
  started at the first updated volume; iterate averaging of a GAN's generator, Yazıcı et
  al. 2019, ICLR). Training and the job's outputs are unchanged (they use the current
  volume); every time the job reads the volumes (each evaluation and the end) the raw
  volume and each average are saved to ``DIR/<half>_step<N>.pt``, and
  ``benchmarks/score_volume_dumps.py DIR`` scores them all the same way.
* ``--critic-reset-minutes M [--critic-reset-rounds R]`` (stop 32): every M minutes of
  training each half's critic is replaced by a new one, trained for R rounds (default 100,
  the job's ``critic_warmup``) against the fixed volume before training goes on.

* ``--moment-weight W [--moment-batch M] [--moment-white-noise]`` (stop 33): the volume
  update also matches the particles' second moment (Kam 1980; the method of moments of
  Sharon, Kileel, Khoo, Landa & Singer 2020, Inverse Problems 36:044003), a statistic the
  data give directly rather than through a critic. See :func:`use_moment_matching`; with
  ``--start-truth --moment-batch 512`` the first steps print the term at the true map.
* ``--noise-spectrum-cap`` (stop 34): before training, each half's noise is filtered so that
  its power in no Fourier ring exceeds the particles' (:func:`use_noise_spectrum_cap`).

* ``--augment-d4`` (stop 36): every real particle the critic reads, and every simulated one
  (critic and volume updates alike, so the volume's gradient goes through it), is turned by
  one of the square's 8 symmetries drawn at random (:func:`random_d4`). Both image
  distributions are unchanged by them at uniform poses (see :func:`d4_images`), so the
  objective is the same; what changes is that the critic sees each of its few thousand
  real particles in 8 versions and cannot as easily remember them (differentiable
  augmentation, Zhao, Liu, Lin, Zhu & Han 2020, NeurIPS; Karras et al. 2020, NeurIPS,
  "Training generative adversarial networks with limited data").
* ``--overfit-probe [--probe-holdout F] [--probe-every N]`` (stop 36): a fraction ``F``
  (default 0.1) of each half set's particles is held out of training, and every ``N``
  volume updates (default 500) the critic scores, at the current blur, the held-out
  particles, as many training particles and as many simulated ones
  (:func:`use_overfit_probe`): ``D(train) − D(held)`` is the part of the critic's
  Wasserstein estimate that is memory of the training particles, not the map.

* ``--critic-full-res-convs N`` (stop 37): the critic gets ``N`` 3×3 convolutions with
  LeakyReLU at the training box's full resolution before its first 2×2 pooling
  (:func:`use_full_res_critic`). The paper's critic (one convolution, then pooling, per
  block) keeps only what 16 channels of one 3×3 filter take from the finest shells before
  max-pooling halves the sampling; the 14–19 Å band the maps lack sits there.
* ``--critic-pool avg`` (stop 37): the critic's 2×2 poolings average instead of taking the
  maximum (:func:`use_critic_pool`; ``CryoGANCritic``'s ``pool``, not a job option).

Every other argument goes to ``bench_cryogan.py``. Examples (2 CPU cores, one thread each)::

    python benchmarks/cryogan_path_experiments.py --start-truth --n 10000 --snr-db -10 \\
        --minutes 30 --threads 1 --out bench_out/m10d2_truthstart --set symmetry=D2
    python benchmarks/cryogan_path_experiments.py --start-truth --start-lowpass-A 40 --n 5000 \\
        --snr-db -20 --minutes 30 --threads 1 --out bench_out/m20d2_lp40start --set symmetry=D2
    python benchmarks/cryogan_path_experiments.py --march --n 5000 --snr-db -20 --minutes 60 \\
        --threads 1 --out bench_out/m20d2_march --set symmetry=D2
    python benchmarks/cryogan_path_experiments.py --fourier-adam --n 10000 --snr-db -10 \\
        --minutes 60 --threads 1 --out bench_out/m10d2_fadam --set symmetry=D2
    python benchmarks/cryogan_path_experiments.py --generator-batch-factor 4 --n 10000 \\
        --snr-db -10 --minutes 60 --threads 1 --out bench_out/m10d2_gb4 --set symmetry=D2
    python benchmarks/cryogan_path_experiments.py --ema-decays 0.99,0.997,0.999,0.9997 \\
        --dump-dir bench_out/m10d2_ema/dumps --n 10000 --snr-db -10 --minutes 60 --threads 1 \\
        --out bench_out/m10d2_ema --set symmetry=D2
    python benchmarks/cryogan_path_experiments.py --critic-reset-minutes 5 --n 10000 --snr-db -10 \\
        --minutes 60 --threads 1 --out bench_out/m10d2_creset5 --set symmetry=D2 seed=0
    python benchmarks/cryogan_path_experiments.py --moment-weight 0.1 --moment-batch 8 --n 10000 \\
        --snr-db -10 --minutes 60 --threads 1 --out bench_out/m10d2_mom01 --set symmetry=D2 seed=0
    python benchmarks/cryogan_path_experiments.py --noise-spectrum-cap --real --minutes 10 \\
        --threads 2 --out bench_out/real_d2_cap --set symmetry=D2
    python benchmarks/cryogan_path_experiments.py --overfit-probe --augment-d4 --n 10000 \\
        --snr-db -10 --minutes 60 --threads 1 --out bench_out/m10d2_aug --set symmetry=D2 seed=0
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import mrcfile
import torch

import cryogan_core.commands.reconstruct as reconstruct
from cryogan_core.metrics.bias import lowpass_volume
from cryogan_core.physics.resample import fourier_crop_or_pad_map

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from baselines import radial_index, radial_whitening_filter, subtract_background_mean  # noqa: E402
from betagal_data import BETAGAL_MAP, BETAGAL_PIXEL_A  # noqa: E402


class FourierAdam(torch.optim.Optimizer):
    """Adam whose moments live on the Fourier coefficients of each 3-D parameter.

    For a ``(D, D, D)`` real parameter ``p`` with gradient ``g``: ``G = rfftn(g)`` (unitary
    normalisation), ``m ← β1 m + (1 − β1) G``, ``v ← β2 v + (1 − β2) |G|²`` per coefficient,
    and ``p ← p − lr · irfftn(m̂ / (√v̂ + ε))`` with Adam's bias corrections (Kingma & Ba
    2015, Algorithm 1, applied in the Fourier basis). So each Fourier coefficient of the
    volume gets its own step size, where plain Adam's per-voxel normalisation mixes all
    frequencies: a shell whose gradient is weak (past the CTF's first zero) is no longer
    dwarfed by the low-resolution gradient in every voxel's second moment. Parameters
    that are not 3-D (the volume's ``log_scale``) take plain Adam steps.

    Args:
        params: the parameters (float32).
        lr: learning rate.
        betas: ``(β1, β2)``.
        eps: ε of the denominator.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.5, 0.9), eps: float = 1e-8) -> None:  # noqa: ANN001
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        """One update of every parameter with a gradient (``closure`` is not supported)."""
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                fourier = p.dim() == 3
                g = torch.fft.rfftn(p.grad, norm="ortho") if fourier else p.grad
                st = self.state[p]
                if not st:
                    st["t"] = 0
                    st["m"] = torch.zeros_like(g)
                    st["v"] = torch.zeros(g.shape, dtype=p.dtype, device=p.device)
                st["t"] += 1
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).add_((g.abs() ** 2) if fourier else g * g, alpha=1 - b2)
                m_hat = st["m"] / (1 - b1 ** st["t"])
                v_hat = st["v"] / (1 - b2 ** st["t"])
                u = m_hat / (v_hat.sqrt() + group["eps"])
                if fourier:
                    u = torch.fft.irfftn(u, s=p.shape, norm="ortho")
                p.add_(u, alpha=-group["lr"])
        return None


def use_fourier_adam() -> None:
    """Make every CryoGAN trainer update its volume with :class:`FourierAdam`."""
    from cryogan_core.train import wgan

    init = wgan.CryoGanTrainer.__init__

    def patched(self, *a, **k) -> None:  # noqa: ANN001, ANN002, ANN003
        """``CryoGanTrainer.__init__`` (same arguments), then ``opt_v`` replaced by a
        :class:`FourierAdam` over the same parameters, learning rate and betas."""
        init(self, *a, **k)
        cfg = self.config
        self.opt_v = FourierAdam([p for p in self.volume.parameters() if p.requires_grad], lr=cfg.lr,
                                 betas=(cfg.beta1, cfg.beta2))

    wgan.CryoGanTrainer.__init__ = patched
    print("[path experiment] volume optimiser: Adam on the Fourier coefficients", flush=True)


def use_generator_batch(factor: int) -> None:
    """Average each volume update over ``factor`` × the batch of simulated particles.

    The critic still trains on ``batch`` real and simulated particles per update; only the
    volume's gradient (the one call of the simulator made with autograd on) uses more
    poses, CTFs and noise draws, so it is less noisy.
    """
    from cryogan_core.train import wgan

    simulate = wgan.simulate_batch

    def patched(volume, priors, n, generator, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        """``simulate_batch`` (same arguments and ``(n', D, D)`` float32 images), with
        ``n' = factor · n`` when autograd is on (the volume update) and ``n`` otherwise."""
        return simulate(volume, priors, n * factor if torch.is_grad_enabled() else n, generator, *a, **k)

    wgan.simulate_batch = patched
    print(f"[path experiment] volume updates average {factor} x the batch of simulated particles", flush=True)


def use_volume_averages(decays: list[float], dump_dir: Path) -> None:
    """Keep exponential moving averages of every trainer's volume; dump them when it is read.

    After each :meth:`CryoGanTrainer.train_step`, ``ema_β ← β · ema_β + (1 − β) · V`` for
    every ``β`` in ``decays`` (``V`` the ``(D, D, D)`` float32 volume in image units, after
    the update's constraints; the first update sets ``ema_β = V``). Each call of
    :meth:`CryoGanTrainer.current_volume` (which still returns the current volume, so
    training and outputs are unchanged) saves ``{"step", "box", "raw", "ema": {β: volume}}``
    (CPU float32) to ``dump_dir / f"{name}_step{step:06d}.pt"``.
    """
    from cryogan_core.train import wgan

    dump_dir.mkdir(parents=True, exist_ok=True)
    step = wgan.CryoGanTrainer.train_step
    current = wgan.CryoGanTrainer.current_volume

    def patched_step(self, *a, **k) -> dict:  # noqa: ANN001, ANN002, ANN003
        """``train_step`` (same arguments and record), then the averages updated."""
        record = step(self, *a, **k)
        with torch.no_grad():
            v = self.volume().detach().float()
            emas = getattr(self, "_emas", None)
            if emas is None or next(iter(emas.values())).shape != v.shape:
                self._emas = {b: v.clone() for b in decays}
            else:
                for b, e in emas.items():
                    e.mul_(b).add_(v, alpha=1.0 - b)
        return record

    def patched_current(self) -> torch.Tensor:
        """``current_volume`` (the same ``(D, D, D)`` float32), after saving it and the averages."""
        raw = current(self)
        emas = {b: e.cpu().clone() for b, e in getattr(self, "_emas", {}).items()}
        torch.save({"step": self.step_count, "box": raw.shape[-1], "raw": raw, "ema": emas},
                   dump_dir / f"{self.name}_step{self.step_count:06d}.pt")
        return raw

    wgan.CryoGanTrainer.train_step = patched_step
    wgan.CryoGanTrainer.current_volume = patched_current
    print(f"[path experiment] moving averages of the volume, decays {decays}, saved to {dump_dir}", flush=True)


#: Each trainer's real particles (by ``id``), filled by :func:`remember_real_particles`.
_REALS: dict[int, torch.Tensor] = {}


def remember_real_particles() -> dict[int, torch.Tensor]:
    """Make ``train_cryogan`` record each half's ``(n, D, D)`` real particles by trainer ``id``
    (installed once, whichever patches ask for it) and return that shared dict."""
    if not getattr(reconstruct.train_cryogan, "_remembers_reals", False):
        train = reconstruct.train_cryogan

        def patched_train(trainers, real_sets, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            """``train_cryogan`` (same arguments and result), remembering each half's particles."""
            for t, r in zip(trainers, real_sets):
                _REALS[id(t)] = r
            return train(trainers, real_sets, *a, **k)

        patched_train._remembers_reals = True
        reconstruct.train_cryogan = patched_train
    return _REALS


def use_critic_resets(every_minutes: float, rounds: int) -> None:
    """Replace every trainer's critic by a new one every ``every_minutes`` of its training.

    A critic that has co-evolved with the volume for a long time may keep discriminating by
    features the volume can no longer fix; a new critic (fresh weights and Adam state, the
    same architecture and learning rate) finds the largest remaining differences between
    real and simulated particles again (a fresh critic's estimate ranks maps against the
    truth, ``wasserstein_selection.py``). After each reset the new critic is trained for
    ``rounds`` rounds of ``n_critic`` updates against the fixed volume on the half set's
    real particles (:meth:`CryoGanTrainer.warm_up_critic`, as the job does after a change
    of box), then training goes on. The warm-up's time counts in the training budget.
    """
    from cryogan_core.models.critic import CryoGANCritic
    from cryogan_core.train import wgan

    reals = remember_real_particles()
    step = wgan.CryoGanTrainer.train_step

    def patched_step(self, real, sigma_px, epoch):  # noqa: ANN001, ANN202
        """``train_step`` (same arguments and record), after a critic reset when one is due."""
        last = getattr(self, "_last_reset_s", 0.0)
        if self.elapsed_s - last >= 60.0 * every_minutes and id(self) in reals:
            self._last_reset_s = self.elapsed_s
            cfg = self.config
            torch.manual_seed(cfg.seed * 7919 + self.seed_offset + 1000 * (self.step_count + 1))
            self.critic = CryoGANCritic(box=self.priors.box, **cfg.critic).to(self.device)
            self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=self.lr_critic0, betas=(cfg.beta1, cfg.beta2))
            w = self.warm_up_critic(reals[id(self)], rounds, sigma_px, epoch)
            print(f"[path experiment] {self.name}: new critic at step {self.step_count} "
                  f"({self.elapsed_s / 60:.1f} min), {rounds} warm-up rounds, Wasserstein {w:.3f}", flush=True)
        return step(self, real, sigma_px, epoch)

    wgan.CryoGanTrainer.train_step = patched_step
    print(f"[path experiment] a new critic every {every_minutes:g} min of training, {rounds} warm-up rounds", flush=True)


def d4_images(x: torch.Tensor) -> torch.Tensor:
    """The 8 images of each ``(n, D, D)`` image under the square's symmetries about the
    centre ``(D//2, D//2)`` (RELION's): ``(8n, D, D)``.

    The distribution of particle images at uniform poses is unchanged by in-plane rotations
    by 90° (a pose change) and by mirrors (a mirror image is a projection of the other hand,
    and a volume mirrored along the projection direction projects to the same image, so both
    hands give the same image distribution); on the pixel grid these are exact. The CTF's
    astigmatism is not mirrored with the image, which real and simulated particles share.
    The mirror of axis ``i ↦ D − i (mod D)`` is a flip then a roll by 1.
    (:func:`cryogan_core.models.symmetry_average.apply_symmetry` turns about the array's
    centre ``(D − 1)/2``, which the denoiser undoes; here that would also shift even-box
    images by a pixel.)
    """
    flip_x = torch.roll(torch.flip(x, dims=[-1]), 1, dims=-1)
    four = [x, flip_x, torch.roll(torch.flip(x, dims=[-2]), 1, dims=-2),
            torch.roll(torch.flip(flip_x, dims=[-2]), 1, dims=-2)]
    return torch.cat(four + [f.transpose(-1, -2) for f in four])


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each of ``(n, D, D)`` images turned by one of the square's 8 symmetries (about
    ``(D//2, D//2)``, :func:`d4_images`), drawn at random per image: ``(n, D, D)``, the dtype
    and device of ``x``; differentiable (the symmetries move pixels, they do not interpolate)."""
    n = x.shape[0]
    codes = torch.randint(0, 8, (n,), generator=generator).to(x.device)
    return d4_images(x)[codes * n + torch.arange(n, device=x.device)]


def use_d4_augmentation() -> None:
    """Turn every real particle the critic reads and every simulated particle by a random
    symmetry of the square (:func:`random_d4`): differentiable augmentation of both sides.

    Real particles: the batches drawn by ``wgan._real_batch`` (a generator seeded by the
    trainer's step, so a continued run draws the same). Simulated ones: the output of
    ``wgan.simulate_batch`` (its own generator's next draws), for the critic's and the
    volume's updates alike.
    """
    from cryogan_core.train import wgan

    real_batch, simulate = wgan._real_batch, wgan.simulate_batch

    def patched_real(real, n, trainer):  # noqa: ANN001, ANN202
        """``_real_batch`` (the same ``(n, D, D)`` batch), each image turned at random."""
        g = torch.Generator().manual_seed((trainer.config.seed * 65_537 + trainer.seed_offset * 257
                                           + trainer.step_count) % (2**63 - 1))
        return random_d4(real_batch(real, n, trainer), g)

    def patched_simulate(volume, priors, n, generator, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        """``simulate_batch`` (same arguments, ``(n, D, D)`` float32), each image turned at random."""
        return random_d4(simulate(volume, priors, n, generator, *a, **k), generator)

    wgan._real_batch, wgan.simulate_batch = patched_real, patched_simulate
    print("[path experiment] real and simulated particles turned by a random symmetry of the square", flush=True)


#: Per trainer (by ``id``): ``(train_subset, held_out)`` real particles, filled by :func:`use_overfit_probe`.
_PROBES: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def use_overfit_probe(holdout_frac: float = 0.1, every_steps: int = 500) -> None:
    """Hold out part of each half set from training and measure how much the critic remembers.

    Each ``train_cryogan`` call gets each half's particles without a fixed random
    ``holdout_frac`` of them (seeded by the half, the same for every run on the same data);
    every ``every_steps`` volume updates the critic scores, at the current blur σ and with
    no gradient, the held-out particles, the same number of training particles (a fixed
    subset) and as many particles simulated from the current volume, and prints mean
    ``D(train) − D(held)`` (memory: zero for a critic that only knows the distribution),
    ``D(held) − D(fake)`` (what it tells about the map on particles it never saw) and
    ``D(train) − D(fake)`` (their sum: what the running estimate measures). Each is a
    difference of two means over ``n_held`` particles. (The stop-36 runs in
    docs/cryogan_benchmarks.md scored the same three sets with their own loop, which drew its
    simulated particles from another seed.)
    """
    from cryogan_core.train import wgan
    from cryogan_core.train.critic_check import critic_check

    train = reconstruct.train_cryogan

    def patched_train(trainers, real_sets, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        """``train_cryogan`` (same arguments and result) on each half without its held-out part."""
        kept = []
        for t, real in zip(trainers, real_sets):
            perm = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(4242 + t.seed_offset))
            n_held = max(1, round(holdout_frac * real.shape[0]))
            held, rest = real[perm[:n_held].to(real.device)], real[perm[n_held:].to(real.device)]
            _PROBES[id(t)] = (rest[:n_held], held)
            kept.append(rest)
            print(f"[path experiment] {t.name}: {n_held} of {real.shape[0]} particles held out of training", flush=True)
        return train(trainers, kept, *a, **k)

    reconstruct.train_cryogan = patched_train
    step = wgan.CryoGanTrainer.train_step

    def patched_step(self, real, sigma_px, epoch):  # noqa: ANN001, ANN202
        """``train_step`` (same arguments and record), then the probe when it is due: the job's
        end-of-run check (:func:`critic_check`) with the held-out part as the "other" particles."""
        record = step(self, real, sigma_px, epoch)
        if self.step_count % every_steps == 0 and id(self) in _PROBES:
            tr, held = _PROBES[id(self)]
            c = critic_check(self.critic, self.volume().detach(), self.priors, tr, held, sigma_px,
                             n_max=held.shape[0], seed=99 + self.step_count)
            print(f"[probe] {self.name} step {self.step_count} {self.elapsed_s / 60:.1f} min sigma {sigma_px:.2f}: "
                  f"D(train)-D(held) {c.memory:.3f}  D(held)-D(fake) {c.held_out:.3f}  "
                  f"D(train)-D(fake) {c.total:.3f}  running W {record['wasserstein']:.3f}", flush=True)
        return record

    wgan.CryoGanTrainer.train_step = patched_step
    print(f"[path experiment] overfitting probe: {holdout_frac:g} of each half held out, every {every_steps} steps",
          flush=True)


def symmetrised_second_moment(images: torch.Tensor, filt: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """``S(mean yyᵀ)``: the second moment of the filtered images ``y`` (``filt`` applied to
    their spectra), averaged over the 8 symmetries of :func:`d4_images`.

    ``images``: ``(n, D, D)`` float32 (differentiable); returns ``(D², D²)`` float32.
    """
    d = images.shape[-1]
    total = 0
    for i in range(0, len(images), chunk):
        y = torch.fft.irfft2(torch.fft.rfft2(images[i:i + chunk]) * filt, s=(d, d))
        y = d4_images(y).reshape(-1, d * d)
        total = total + y.T @ y
    return total / (8 * len(images))


def use_moment_matching(weight: float, batch: int, white_noise: bool = False) -> None:
    """Add a second-moment term to every volume update (``--moment-weight``).

    Kam (1980, J. Theor. Biol. 82:15) showed that the second moment of particle images at
    uniform poses determines much of the volume (its spherical-harmonic coefficients up to
    one orthogonal matrix per degree); the method of moments (Sharon et al. 2020, Inverse
    Problems 36:044003) reconstructs from such statistics. The critic has to learn these
    statistics from batches of 8; here they are given. Per half set, once:

    * ``W(k) ∝ P(|k|)^−½`` with ``P`` the real particles' radially averaged power spectrum
      (:func:`baselines.radial_whitening_filter`; its constant factor cancels in the relative
      term below), so each frequency counts by its signal-to-noise ratio, not by its power;
    * ``T = S(mean xxᵀ over the real particles) − S(mean nnᵀ over 8,192 noise images)``, with
      ``x`` the whitened ``(D²,)`` particle, ``n`` the simulator's whitened noise (background
      mean removed as RELION's normalisation does), ``S`` the average over the 8 symmetries
      of :func:`d4_images`: the signal's second moment. With ``white_noise`` (a diagnostic for
      simulated particles only) ``n`` is white Gaussian noise made at the particles' box and
      Fourier-cropped as they are, scaled to the simulator's noise variance: the noise the
      benchmark's ``cryogan simulate`` adds, instead of the job's noise model.

    Each volume update then adds ``weight · ⟨C_A − T, C_B − T⟩ / ‖T‖²`` (Frobenius) to the
    critic's term, with ``C_A``, ``C_B`` the symmetrised second moments of two independent
    batches of ``batch`` clean simulated particles (CTF, shift, background mean removed,
    whitened; no noise): the product of two independent estimates is an unbiased estimate
    of ``‖C − T‖²`` (one batch squared would also reward low-variance projections).
    """
    from cryogan_core.metrics.images import circular_mask
    from cryogan_core.physics.resample import fourier_crop_images
    from cryogan_core.train import wgan
    from cryogan_core.train.cryogan_simulator import simulate_batch

    reals = remember_real_particles()
    step = wgan.CryoGanTrainer.train_step

    def prepare(self) -> dict:  # noqa: ANN001
        """Whitening filter, background mask and target ``T`` of one trainer (CPU float32)."""
        real = reals[id(self)].detach().float().cpu()
        d = real.shape[-1]
        bg = ~circular_mask(d, self.priors.bg_radius_px)
        filt = radial_whitening_filter(real)
        c_real = symmetrised_second_moment(real, filt)
        gen = torch.Generator().manual_seed(12345 + self.seed_offset)
        c_noise = torch.zeros(d * d, d * d)
        for _ in range(16):
            n = self.priors.noise.sample(512, gen).float().cpu()
            if white_noise:  # a diagnostic: the simulation's own noise, white at the particles' box
                box0 = getattr(getattr(self.priors.noise, "source", None), "box", d)
                w = fourier_crop_images(torch.randn(512, box0, box0, generator=gen), d) if box0 != d else torch.randn(n.shape, generator=gen)
                n = w * (n[:, bg].std() / w[:, bg].std())
            n = subtract_background_mean(n, bg)
            c_noise += symmetrised_second_moment(n, filt) / 16
        target = c_real - c_noise
        print(f"[path experiment] {self.name}: second moments from {len(real)} particles; the signal's is "
              f"{float(target.trace() / c_real.trace()):.3f} of the particles' (whitened)", flush=True)
        return {"filt": filt.to(self.device), "bg": bg.to(self.device), "target": target.to(self.device),
                "norm": float((target ** 2).sum())}

    def moment_loss(self, state: dict, gen: torch.Generator) -> torch.Tensor:  # noqa: ANN001
        """``⟨C_A − T, C_B − T⟩ / ‖T‖²`` for two batches of clean simulated particles."""
        vol = self.volume()
        cs = []
        for _ in range(2):
            x = simulate_batch(vol, self.priors, batch, gen, add_noise=False, normalise=False)
            x = subtract_background_mean(x, state["bg"])
            cs.append(symmetrised_second_moment(x, state["filt"]) - state["target"])
        return (cs[0] * cs[1]).sum() / state["norm"]

    def patched_step(self, real, sigma_px, epoch):  # noqa: ANN001, ANN202
        """``train_step`` (same arguments and record), its volume update with the moment term."""
        if id(self) not in reals:
            return step(self, real, sigma_px, epoch)
        state = getattr(self, "_moments", None)
        if state is None or state["target"].shape[0] != self.priors.box ** 2:
            state = self._moments = prepare(self)
        opt = self.opt_v
        plain = opt.step
        gen = torch.Generator().manual_seed((self._step_seed() * 7 + 3) % (2**63 - 1))
        box: dict[str, float] = {}

        def step_with_moments(*a, **k):  # noqa: ANN002, ANN003, ANN202
            """``opt_v.step`` (same arguments), after adding ``weight`` × the moment term's
            gradient to the critic term's already in the volume's ``.grad``; records the term
            and both gradient norms (Frobenius, over the volume's parameters) in ``box``."""
            critic_grad = sum(float((p.grad ** 2).sum()) for p in opt.param_groups[0]["params"] if p.grad is not None)
            loss = moment_loss(self, state, gen)
            (weight * loss).backward()
            total = sum(float((p.grad ** 2).sum()) for p in opt.param_groups[0]["params"] if p.grad is not None)
            box.update(moment_loss=float(loss.detach()), critic_grad=critic_grad ** 0.5, total_grad=total ** 0.5)
            return plain(*a, **k)

        opt.step = step_with_moments
        try:
            record = step(self, real, sigma_px, epoch)
        finally:
            del opt.step
        record.update(box)
        if self.step_count % 200 == 1 or self.step_count <= 5:
            print(f"[path experiment] {self.name} step {self.step_count}: moment loss {box['moment_loss']:.4f}, "
                  f"gradient norm critic {box['critic_grad']:.3g}, with moments {box['total_grad']:.3g}", flush=True)
        return record

    wgan.CryoGanTrainer.train_step = patched_step
    print(f"[path experiment] second-moment matching, weight {weight:g}, 2 x {batch} clean particles per update",
          flush=True)


def truth_start(lowpass_A: float):
    """A replacement for ``gaussian_ball(box, sigma_px, device)``: the true map at ``box``."""

    def start(box: int, sigma_px: float, device: torch.device | str | None = None) -> torch.Tensor:
        """``(box, box, box)`` float32 true map, maximum 1 (``sigma_px`` is ignored)."""
        v = fourier_crop_or_pad_map(torch.from_numpy(mrcfile.read(BETAGAL_MAP).astype("float32")), box)
        if lowpass_A > 0:
            box_A = mrcfile.open(BETAGAL_MAP, header_only=True).header.nx * BETAGAL_PIXEL_A
            v = lowpass_volume(v, box_A / box, lowpass_A)
        v = v / v.abs().max()
        print(f"[path experiment] start = the true map at box {box}, low-pass {lowpass_A or 'none'} Å", flush=True)
        return v.to(device) if device is not None else v

    return start


class CappedNoise:
    """The simulator's noise, filtered by a fixed radial gain (see :func:`use_noise_spectrum_cap`).

    Attributes:
        inner: the job's noise source (``sample(n, generator) -> (n, D, D)``).
        gain: ``(D, D//2 + 1)`` float32 rfft2 gain on the inner source's device.
    """

    def __init__(self, inner, gain: torch.Tensor) -> None:  # noqa: ANN001
        """Wrap ``inner`` with the rfft2 ``gain``."""
        self.inner, self.gain = inner, gain
        self.box, self.mode = inner.box, getattr(inner, "mode", "patches")

    @property
    def device(self) -> torch.device:
        """The inner source's device."""
        return self.inner.device

    def describe(self) -> str:
        """One line for the log."""
        return f"{self.inner.describe()}, its power capped ring by ring at the particles'"

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, D, D)`` float32 noise images: the inner source's, filtered by the gain."""
        x = self.inner.sample(n, generator)
        return torch.fft.irfft2(torch.fft.rfft2(x) * self.gain, s=x.shape[-2:])


def use_noise_spectrum_cap(n_images: int = 2000) -> None:
    """Before training, cap the simulator's noise power ring by ring at the particles' power.

    The particles' power in a Fourier ring is their noise's plus their signal's (the cross
    term averages out), so it can never be below their noise's, up to the few per cent by
    which normalising over a background that holds some signal lowers it (the noise alone
    is normalised without that signal): where the simulator's noise alone has more power than
    the particles, it is too strong there by about that factor. Each half's noise is filtered by the radial gain
    ``sqrt(min(1, P_particles(r) / P_noise(r)))`` (ring 0 left at 1), measured once on
    ``n_images`` particles and as many noise images
    (:func:`cryogan_core.metrics.fsc.ring_power_spectrum`). Where the particles have more
    power than the noise (signal, or noise the patches lack) nothing changes. On the real
    β-gal particles the job's patch mosaic has 10–22 % more power than the particles at
    15–17 Å (stop 34's spectra check). Applied at the start of every training stage (each
    ``train_cryogan`` call).
    """
    import numpy as np

    from cryogan_core.metrics.fsc import ring_power_spectrum
    from cryogan_core.metrics.images import normalize_background

    train = reconstruct.train_cryogan

    def patched_train(trainers, real_sets, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        """``train_cryogan`` (same arguments and result) with each half's noise capped first."""
        for t, real in zip(trainers, real_sets):
            pri = t.priors
            m = min(n_images, len(real))
            noise = normalize_background(pri.noise.sample(m, torch.Generator().manual_seed(777)), pri.bg_radius_px)
            _, p_real = ring_power_spectrum(real[:m], pri.pixel_size_A)
            _, p_noise = ring_power_spectrum(noise, pri.pixel_size_A)
            cap = np.minimum(1.0, p_real / p_noise)
            cap[0] = 1.0
            rings = radial_index(pri.box).clamp_max(len(cap))  # the corners beyond the Nyquist keep gain 1
            gain = torch.tensor(np.sqrt(np.append(cap, 1.0)), dtype=torch.float32)[rings]
            pri.noise = CappedNoise(pri.noise, gain.to(pri.noise.device))
            print(f"[path experiment] {t.name}: noise power capped at the particles' (gain² per ring "
                  f"{np.round(cap, 3).tolist()})", flush=True)
        return train(trainers, real_sets, *a, **k)

    reconstruct.train_cryogan = patched_train


def use_full_res_critic(n_convs: int) -> None:
    """Give every new critic ``n_convs`` full-resolution 3×3 convolutions before its blocks.

    The job's :class:`CryoGANCritic` is replaced (in ``wgan``, where trainers build it) by a
    module ``images (n, 1, D, D) -> scores (n,)`` that first applies ``n_convs`` stride-1
    3×3 convolutions (``width`` = the first block's channels, circular padding, LeakyReLU
    0.2) and then the usual critic built with that many input channels. Its ``config``
    holds the inner critic's, plus ``full_res_convs``.
    """
    from torch import nn

    from cryogan_core.models.critic import CryoGANCritic
    from cryogan_core.train import wgan

    class FullResCritic(nn.Module):
        """Full-resolution convolutions, then the job's critic (see the function's docstring)."""

        def __init__(self, box: int, **kw) -> None:  # noqa: ANN003
            super().__init__()
            width = tuple(kw.get("channels", (16, 32, 64, 128)))[0]
            layers: list[nn.Module] = []
            c_prev = 1
            for _ in range(n_convs):
                layers += [nn.Conv2d(c_prev, width, 3, 1, 1, padding_mode="circular"), nn.LeakyReLU(0.2)]
                c_prev = width
            self.pre = nn.Sequential(*layers)
            self.inner = CryoGANCritic(box=box, **{**kw, "in_channels": c_prev})
            self.config = {**self.inner.config, "full_res_convs": n_convs}

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            """``(n, 1, D, D)`` float32 -> ``(n,)`` scores."""
            return self.inner(self.pre(images))

    wgan.CryoGANCritic = FullResCritic
    print(f"[path experiment] critic with {n_convs} full-resolution convolutions before its first pooling",
          flush=True)


def use_critic_pool(pool: str) -> None:
    """Build every new critic with ``pool`` (``"max"``, the paper's, or ``"avg"``) poolings,
    whatever critic class ``wgan`` builds at the time (so it composes with
    :func:`use_full_res_critic` installed before it)."""
    from cryogan_core.train import wgan

    make = wgan.CryoGANCritic

    def with_pool(box: int, **kw):  # noqa: ANN003, ANN202
        """The critic ``make`` builds, with ``pool`` set."""
        return make(box=box, **{**kw, "pool": pool})

    wgan.CryoGANCritic = with_pool
    print(f"[path experiment] critic with {pool} pooling", flush=True)


def with_reconstruct_option(argv: list[str], item: str) -> list[str]:
    """``bench_cryogan.py``'s arguments with ``item`` (``OPTION=VALUE``) added to ``--set``
    (a second ``--set`` would replace the first, so it goes into the existing one)."""
    if "--set" in argv:
        i = argv.index("--set") + 1
        return [*argv[:i], item, *argv[i:]]
    return [*argv, "--set", item]


def main() -> None:
    """Parse our options, install the replacements, run ``bench_cryogan.py`` with the rest."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False, allow_abbrev=False)
    p.add_argument("--start-truth", action="store_true")
    p.add_argument("--start-lowpass-A", type=float, default=0.0)
    p.add_argument("--march", action="store_true")
    p.add_argument("--fourier-adam", action="store_true")
    p.add_argument("--generator-batch-factor", type=int, default=1)
    p.add_argument("--ema-decays", default="")
    p.add_argument("--dump-dir", type=Path, default=None)
    p.add_argument("--critic-reset-minutes", type=float, default=0.0)
    p.add_argument("--critic-reset-rounds", type=int, default=100)
    p.add_argument("--moment-weight", type=float, default=0.0)
    p.add_argument("--moment-batch", type=int, default=8)
    p.add_argument("--moment-white-noise", action="store_true")
    p.add_argument("--noise-spectrum-cap", action="store_true")
    p.add_argument("--augment-d4", action="store_true")
    p.add_argument("--overfit-probe", action="store_true")
    p.add_argument("--probe-holdout", type=float, default=0.1)
    p.add_argument("--probe-every", type=int, default=500)
    p.add_argument("--critic-full-res-convs", type=int, default=0)
    p.add_argument("--critic-pool", choices=("max", "avg"), default="max")
    ours, rest = p.parse_known_args()
    if ours.ema_decays:
        if ours.dump_dir is None:
            sys.exit("--ema-decays needs --dump-dir")
        use_volume_averages([float(x) for x in ours.ema_decays.split(",")], ours.dump_dir)
    if ours.start_truth:
        reconstruct.gaussian_ball = truth_start(ours.start_lowpass_A)
    if ours.fourier_adam:
        use_fourier_adam()
    if ours.generator_batch_factor > 1:
        use_generator_batch(ours.generator_batch_factor)
    if ours.critic_reset_minutes > 0:
        use_critic_resets(ours.critic_reset_minutes, ours.critic_reset_rounds)
    if ours.moment_weight > 0:
        use_moment_matching(ours.moment_weight, ours.moment_batch, ours.moment_white_noise)
    if ours.noise_spectrum_cap:
        use_noise_spectrum_cap()
    if ours.augment_d4:
        use_d4_augmentation()
    if ours.overfit_probe:
        use_overfit_probe(ours.probe_holdout, ours.probe_every)
    if ours.critic_full_res_convs > 0:
        use_full_res_critic(ours.critic_full_res_convs)
    if ours.critic_pool != "max":
        use_critic_pool(ours.critic_pool)
    if ours.march:
        rest = with_reconstruct_option(rest, "march=yes")
    sys.argv = [str(HERE / "bench_cryogan.py"), *rest]
    runpy.run_path(str(HERE / "bench_cryogan.py"), run_name="__main__")


if __name__ == "__main__":
    main()
