"""Does the CryoGAN simulator make particles like the real ones? Their power spectra, ring by ring.

The critic can tell simulated particles from real ones by anything the simulator gets
wrong, and the volume may then bend to hide it: a noise model with a few per cent too much
power where the signal is a few per cent of the noise (past the CTF's first zero) is such a
difference (docs/cryogan_benchmarks.md: on the simulated β-gal benchmark neither stop 19's
fix of one nor the exact noise model moved the map; on real β-gal particles the check finds
the background patches 10–22 % too strong at 15–17 Å). So the job compares, at the end of
training, the rotationally averaged power spectrum of the real particles of each half set
with that of particles simulated from its final volume, normalised the same way, and
reports the ratio per Fourier ring with its sampling error; the spectra of the simulated
signal and of the simulator's noise alone show where the signal is.

Rings and normalisation: :func:`~cryogan_core.metrics.fsc.ring_power_spectrum` (white noise
of variance σ² reads σ²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryogan_core.metrics.fsc import ring_power_spectrum
from cryogan_core.metrics.images import normalize_background
from cryogan_core.train.cryogan_simulator import SimulationPriors, simulate_batch

__all__ = ["SpectraCheck", "spectra_check"]


@dataclass
class SpectraCheck:
    """Ring power spectra of real and simulated particles of one half set (training box).

    All arrays are ``(R,)`` float64, R = box // 2 + 1 rings from DC to Nyquist.

    Attributes:
        freq_inv_A: ring frequencies (Å⁻¹, training pixel size).
        real: mean power of the real particles (normalised: background mean 0, std 1).
        simulated: mean power of simulated particles (signal + noise, normalised the same way).
        signal: mean power of the simulated signal alone (not normalised; the same units,
            since the noise has the particles' background variance).
        noise: mean power of the simulator's noise alone (normalised).
        ratio_se: standard error of :attr:`ratio` from the sampling of both sets of particles
            (first-order propagation of the two means' standard errors).
        n_particles: particles on each side.
    """

    freq_inv_A: np.ndarray
    real: np.ndarray
    simulated: np.ndarray
    signal: np.ndarray
    noise: np.ndarray
    ratio_se: np.ndarray
    n_particles: int

    @property
    def ratio(self) -> np.ndarray:
        """``(R,)`` ``simulated / real`` (1 = the simulator matches the data in that ring; 0 where
        the real particles have no power)."""
        return _safe_divide(self.simulated, self.real)

    def worst_ring(self) -> int:
        """The ring (index >= 1; DC excluded: every image's background mean is removed) whose
        ratio is farthest from 1."""
        return 1 + int(np.argmax(np.abs(self.ratio[1:] - 1.0)))

    def to_dict(self) -> dict:
        """JSON-ready dict of lists (``summary.json``), with the worst ring's numbers."""
        r = self.worst_ring()
        return {
            "n_particles": self.n_particles,
            "freq_inv_A": self.freq_inv_A.tolist(),
            "real": self.real.tolist(),
            "simulated": self.simulated.tolist(),
            "signal": self.signal.tolist(),
            "noise": self.noise.tolist(),
            "ratio_simulated_to_real": self.ratio.tolist(),
            "ratio_se": self.ratio_se.tolist(),
            "worst_ring_A": float(1.0 / self.freq_inv_A[r]),
            "worst_ratio": float(self.ratio[r]),
            "worst_ratio_se": float(self.ratio_se[r]),
        }


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, 0 where ``den <= 0``."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def _mean_and_se(per_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over images ``(n, R) -> (R,)`` and its standard error (0 for a single image)."""
    n = per_image.shape[0]
    se = per_image.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(per_image.shape[1])
    return per_image.mean(axis=0), se


@torch.no_grad()
def spectra_check(
    volume: torch.Tensor,
    priors: SimulationPriors,
    real_images: torch.Tensor,
    n_max: int = 2000,
    seed: int = 0,
    chunk: int = 256,
) -> SpectraCheck:
    """Compare the power spectra of real particles and of particles simulated from ``volume``.

    Args:
        volume: ``(D, D, D)`` float32, the (final) volume of this half set, D = ``priors.box``.
        priors: the half set's simulation priors (poses, shifts, CTFs, noise).
        real_images: ``(n, D, D)`` normalised real particles of the half set.
        n_max: particles on each side (the first ``n_max`` real ones; as many simulated).
        seed: seed of the simulated draws.
        chunk: images simulated and transformed at a time (memory).

    Returns:
        The :class:`SpectraCheck`.

    Raises:
        ValueError: no real particle, or the images are not ``(n, D, D)`` at the priors' box.
    """
    d = priors.box
    if real_images.ndim != 3 or real_images.shape[1:] != (d, d) or len(real_images) == 0:
        raise ValueError(f"real particles must be a non-empty (n, {d}, {d}) stack, got {tuple(real_images.shape)}")
    n = min(int(n_max), len(real_images))
    px = priors.pixel_size_A
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[np.ndarray]] = {"real": [], "sim": [], "sig": [], "noise": []}
    for start in range(0, n, chunk):  # per-image ring spectra, a chunk at a time (memory)
        m = min(chunk, n - start)
        images = {
            "real": real_images[start:start + m],
            "sim": simulate_batch(volume, priors, m, gen),
            "sig": simulate_batch(volume, priors, m, gen, add_noise=False, normalise=False),
            "noise": normalize_background(priors.noise.sample(m, gen), priors.bg_radius_px),
        }
        for key, x in images.items():
            freq, rings = ring_power_spectrum(x, px, per_image=True)
            parts[key].append(rings)
    p_real, p_sim = np.concatenate(parts["real"]), np.concatenate(parts["sim"])
    real, se_real = _mean_and_se(p_real)
    simulated, se_sim = _mean_and_se(p_sim)
    rel = np.sqrt(_safe_divide(se_sim, simulated) ** 2 + _safe_divide(se_real, real) ** 2)
    return SpectraCheck(
        freq_inv_A=freq,
        real=real,
        simulated=simulated,
        signal=np.concatenate(parts["sig"]).mean(axis=0),
        noise=np.concatenate(parts["noise"]).mean(axis=0),
        ratio_se=_safe_divide(simulated, real) * rel,
        n_particles=n,
    )
