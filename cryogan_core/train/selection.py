"""Model selection for the denoiser: keep the generator weights that score best on validation particles.

Adversarial training does not improve monotonically. On the 1,211 real β-gal particles the
held-out CC reached 0.63 after 500 steps, stayed near 0.62 up to step 2,000 and then fell to
0.51 by step 2,500 (training CC fell with it: an unstable phase of the GAN, not only
over-fitting). Scoring the generator every few hundred steps on particles of half set 1
that it does not train on, and keeping the best weights, guards against both without
touching half set 2, which stays unseen for the gold-standard report (the usual
validation-set early stopping, e.g. Prechelt 1998, "Early stopping — but when?").
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from cryogan_core.train.evaluate import generator_cc


class BestWeights:
    """The generator weights with the highest mean validation CC seen so far.

    Args:
        inputs: ``(n, H, W)`` float32 validation particles (network-input units).
        targets: ``(n, H, W)`` float32 their training targets (same units).
        mask: ``(H, W)`` bool, the region scored (the scores' circular mask).
        ctf: ``(n, H, W//2+1)`` the particles' CTFs for a CTF-aware model, else None.

    Attributes:
        curve: ``[(step, mean CC), ...]`` of every update, in order; :attr:`best_step`,
            :attr:`best_cc` and :attr:`last_cc` are read from it (the first maximum is best).

    Raises:
        ValueError: if inputs and targets differ in shape or there are no particles.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, ctf: torch.Tensor | None = None) -> None:
        if inputs.shape != targets.shape or inputs.shape[0] == 0:
            raise ValueError(f"validation inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must match and be non-empty")
        self.inputs, self.targets, self.mask, self.ctf = inputs, targets, mask, ctf
        self.curve: list[tuple[int, float]] = []
        self._best_state: dict[str, torch.Tensor] | None = None

    def score(self, generator: nn.Module) -> float:
        """Mean CC inside the mask of the denoised validation particles with their targets."""
        return generator_cc(generator, self.inputs, self.targets, self.mask, ctf=self.ctf)

    def _best(self) -> tuple[int, float]:
        """``(step, cc)`` of the first highest CC of the curve; ``(0, -inf)`` when empty."""
        return max(self.curve, key=lambda point: point[1], default=(0, -math.inf))

    @property
    def best_step(self) -> int:
        """The training step of the best weights (0 before the first update)."""
        return self._best()[0]

    @property
    def best_cc(self) -> float:
        """The best mean validation CC (``-inf`` before the first update)."""
        return self._best()[1]

    def update(self, generator: nn.Module, step: int) -> float:
        """Score ``generator`` at training ``step``; keep a CPU copy of its weights if best.

        Returns:
            The mean validation CC at this step.
        """
        cc = self.score(generator)
        improved = cc > self.best_cc
        self.curve.append((int(step), cc))
        if improved:
            self._best_state = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
        return cc

    def restore(self, generator: nn.Module) -> bool:
        """Load the best weights into ``generator``; False (nothing changed) before any update."""
        if self._best_state is None:
            return False
        generator.load_state_dict(self._best_state)
        return True

    @property
    def last_cc(self) -> float:
        """The mean validation CC of the latest update (nan before the first)."""
        return self.curve[-1][1] if self.curve else math.nan

    def state_dict(self) -> dict:
        """Curve and best weights, for checkpoints (``torch.load(weights_only=True)``)."""
        return {"curve": [list(p) for p in self.curve], "best_state": copy.copy(self._best_state)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (a resumed run continues the same selection)."""
        self.curve = [(int(s), float(c)) for s, c in state["curve"]]
        self._best_state = state["best_state"]


__all__ = ["BestWeights"]
