"""What a half set's final critic knows: the particles it trained on, or their distribution?

The critic's running Wasserstein estimate, ``mean D(real) − mean D(simulated)`` over its own
training batches, is what the progress lines show. A critic trained for many epochs on a
few thousand noisy particles also learns those particular images (Arora, Ge, Liang, Ma &
Zhang, "Generalization and equilibrium in generative adversarial nets", ICML 2017; Karras
et al., "Training generative adversarial networks with limited data", NeurIPS 2020), and
then its estimate mostly measures that memory. The gold standard gives each critic a test
set for free: the other half set's particles, drawn from the same distribution and never
seen by it. So at the end of training each half's critic scores, with no gradient and at
its last blur, ``n`` particles of its own half set, ``n`` of the other half set and ``n``
simulated from its final volume:

* ``memory = mean D(own) − mean D(other)``: what it knows about its own particles only
  (0 for a critic that knows only their distribution);
* ``held_out = mean D(other) − mean D(simulated)``: its Wasserstein estimate on particles
  it never saw, the part that is about the map and the simulator;
* ``total = mean D(own) − mean D(simulated)``: their sum, what the running estimate reads.

On the simulated β-gal benchmark (10,000 particles at −10 dB, D2, an hour) the final
critics read memory 1.43 ± 0.03 and held-out 0.07 ± 0.03 (docs/cryogan_benchmarks.md,
stop 36): the late rise of the logged estimate is memory, not a map getting worse. Taking
the memory away (random square symmetries of both sides' particles) left the held-out
estimate as small and the map 3 Å worse, so this is a diagnostic of the estimate, not of
the map. On the real β-gal particles the held-out estimate is 6–8 (about 1 for as many
simulated particles): the simulator can be told from them, which there did not change the map.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from cryogan_core.models.critic import gaussian_blur_images
from cryogan_core.train.cryogan_simulator import SimulationPriors, simulate_batch

__all__ = ["CriticCheck", "critic_check"]


@dataclass
class CriticCheck:
    """Mean critic differences for one half set, each with its standard error.

    Attributes:
        n_particles: particles scored on each side (own, other, simulated).
        sigma_px: blur σ of the critic inputs (training px).
        memory: ``mean D(own) − mean D(other)``.
        memory_se: its standard error.
        held_out: ``mean D(other) − mean D(simulated)``.
        held_out_se: its standard error.
        total: ``mean D(own) − mean D(simulated)`` (= memory + held_out).
        total_se: its standard error.
    """

    n_particles: int
    sigma_px: float
    memory: float
    memory_se: float
    held_out: float
    held_out_se: float
    total: float
    total_se: float

    def to_dict(self) -> dict:
        """JSON-able dict of the attributes."""
        return asdict(self)


@torch.no_grad()
def _scores(critic: torch.nn.Module, images: torch.Tensor, sigma_px: float, device: torch.device,
            chunk: int) -> torch.Tensor:
    """``(n,)`` float64 CPU critic outputs for ``(n, D, D)`` images blurred by ``sigma_px``."""
    out = [critic(gaussian_blur_images(images[i:i + chunk].to(device).unsqueeze(1), sigma_px)).flatten()
           for i in range(0, images.shape[0], chunk)]
    return torch.cat(out).double().cpu()


def _difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``mean(a) − mean(b)`` and its standard error, for independent ``(n,)`` samples."""
    se = math.sqrt(float(a.var()) / a.numel() + float(b.var()) / b.numel()) if min(a.numel(), b.numel()) > 1 else math.nan
    return float(a.mean() - b.mean()), se


def critic_check(
    critic: torch.nn.Module,
    volume: torch.Tensor,
    priors: SimulationPriors,
    own_images: torch.Tensor,
    other_images: torch.Tensor,
    sigma_px: float = 0.0,
    n_max: int = 2000,
    seed: int = 0,
    chunk: int = 256,
) -> CriticCheck:
    """Score a half set's critic on its own, the other half set's and simulated particles.

    Args:
        critic: the half set's critic (``(n, 1, D, D)`` → ``(n, 1)`` or ``(n,)``); its
            training mode is left as it is (the job's critic has no batch-dependent layers).
        volume: ``(D, D, D)`` float32, the half set's (final) volume, D = ``priors.box``.
        priors: the half set's simulation priors.
        own_images: ``(n1, D, D)`` normalised real particles the critic trained on.
        other_images: ``(n2, D, D)`` normalised real particles of the other half set.
        sigma_px: blur σ of the critic inputs (training px): the last one of training.
        n_max: particles scored on each side (the first ``n_max`` of each half; as many
            simulated).
        seed: seed of the simulated draws.
        chunk: images scored at a time (memory).

    Returns:
        The :class:`CriticCheck`.

    Raises:
        ValueError: an empty stack, or images that are not ``(n, D, D)`` at the priors' box.
    """
    d = priors.box
    for name, x in (("own", own_images), ("other", other_images)):
        if x.ndim != 3 or x.shape[1:] != (d, d) or len(x) == 0:
            raise ValueError(f"{name} particles must be a non-empty (n, {d}, {d}) stack, got {tuple(x.shape)}")
    n = min(int(n_max), len(own_images), len(other_images))
    device = next(critic.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        fake = torch.cat([simulate_batch(volume, priors, min(chunk, n - i), gen) for i in range(0, n, chunk)])
    s_own, s_other, s_fake = (_scores(critic, x, sigma_px, device, chunk)
                              for x in (own_images[:n], other_images[:n], fake))
    mem, held, tot = _difference(s_own, s_other), _difference(s_other, s_fake), _difference(s_own, s_fake)
    return CriticCheck(n, float(sigma_px), mem[0], mem[1], held[0], held[1], tot[0], tot[1])
