"""CTF preconditioning of the CryoGAN volume's gradient (an option of ``cryogan reconstruct``).

Every simulated particle is the projection of the volume multiplied by a CTF, so the
gradient that reaches a Fourier coefficient of the volume at spatial frequency ``|k|`` is
scaled by the CTF there: where the particles' CTFs pass through zero (for the RELION
tutorial's β-gal, defoci 0.80–1.17 µm at 200 kV: first zeros at 14.4–17.4 Å) the volume
learns several times more slowly than at the CTF maxima. The preconditioner divides the
gradient, shell by shell in Fourier space, by the particles' mean CTF², as cryoSPARC's
ab-initio SGD does with its CTF-based diagonal preconditioner (Punjani, Rubinstein, Fleet &
Brubaker, Nature Methods 14:290 (2017), Online Methods, "Stochastic gradient descent"):

    g ← F⁻¹[ w(|k|) · F[g] ],   w(k) = clip( c̄(k_peak) / c̄(k), 1, max_boost ) for k > k_peak, 1 below

with ``c̄(k)`` the mean of ``CTF²`` over the particles and over the 2-D frequency shell
``|k|`` (by the central-slice theorem, a 3-D shell of radius ``|k|`` is seen in the images
at the same ``|k|``) and ``k_peak`` the shell of its first maximum. Below the peak the low
frequencies (the overall shape, weak CTF only because of the small amplitude contrast) keep
their gradient; Adam (scale-invariant) then sets the overall step size.
"""

from __future__ import annotations

import math

import torch

from cryogan_core.physics.ctf import CtfParams, compute_ctf

__all__ = ["ctf_preconditioner", "mean_ctf2_profile", "precondition_gradient_"]


def _radius_px(shape: tuple[int, ...], rfft_last: bool = True) -> torch.Tensor:
    """``|k| · box`` (in shells of 1/box) on the (r)FFT grid of a cube or square of side ``shape[0]``."""
    box = shape[0]
    axes = [torch.fft.fftfreq(box, dtype=torch.float64) * box for _ in shape[:-1]]
    last = (torch.fft.rfftfreq(box, dtype=torch.float64) if rfft_last else torch.fft.fftfreq(box, dtype=torch.float64)) * box
    grids = torch.meshgrid(*axes, last, indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def mean_ctf2_profile(ctf: CtfParams, box: int, pixel_size_A: float, max_particles: int = 4096, seed: int = 0) -> torch.Tensor:
    """Mean ``CTF²`` over particles and over 2-D frequency shells.

    Args:
        ctf: the particles' CTFs (length n >= 1).
        box: image side (px), odd or even.
        pixel_size_A: pixel size (Å).
        max_particles: average over at most this many particles (a seeded random subset).
        seed: seed of that subset.

    Returns:
        ``(ceil(√3 · box / 2) + 2,)`` float64: entry ``i`` is the mean over the shell
        ``round(|k| · box) = i`` (``|k|`` in 1/px, so shell ``i`` is ``box · pixel_size_A / i`` Å).
        Shells beyond the image's corners (only 3-D corners reach them) repeat the last
        filled shell.

    Raises:
        ValueError: empty CTF table, ``box < 2`` or a non-positive pixel size.
    """
    if len(ctf) == 0:
        raise ValueError("the CTF table is empty")
    if box < 2 or pixel_size_A <= 0:
        raise ValueError(f"box must be >= 2 and the pixel size positive, got {box} px, {pixel_size_A} Å")
    if len(ctf) > max_particles:
        idx = torch.randperm(len(ctf), generator=torch.Generator().manual_seed(seed))[:max_particles]
        ctf = ctf[idx]
    c2 = (compute_ctf(ctf.to("cpu"), box, pixel_size_A, rfft=True).double() ** 2).mean(0)
    shell = _radius_px((box, box)).round().long().flatten()
    n_shells = int(math.ceil(math.sqrt(3.0) * box / 2.0)) + 2
    sums = torch.zeros(n_shells, dtype=torch.float64).index_add_(0, shell, c2.flatten())
    counts = torch.bincount(shell, minlength=n_shells).double()
    prof = sums / counts.clamp(min=1)
    last = int(shell.max())
    prof[last + 1 :] = prof[last]
    return prof


def ctf_preconditioner(ctf: CtfParams, box: int, pixel_size_A: float, max_boost: float) -> torch.Tensor:
    """Fourier weights ``w`` of the gradient preconditioner (module docstring) on the volume's rFFT grid.

    Args:
        ctf: the particles' CTFs.
        box: volume side D (px).
        pixel_size_A: voxel size (Å).
        max_boost: largest weight (> 1 boosts the shells past the first CTF maximum where the
            mean CTF² is low; 1 gives all ones).

    Returns:
        ``(D, D, D // 2 + 1)`` float32 weights, >= 1, matching ``torch.fft.rfftn`` of a
        ``(D, D, D)`` volume (DC at ``[0, 0, 0]``); the weight at ``|k|`` is interpolated
        linearly between shells.

    Raises:
        ValueError: ``max_boost < 1``, or what :func:`mean_ctf2_profile` raises.
    """
    if max_boost < 1:
        raise ValueError(f"max_boost must be >= 1, got {max_boost}")
    prof = mean_ctf2_profile(ctf, box, pixel_size_A)
    k_peak = 1 + int(torch.argmax(_first_rise(prof[1:])))
    peak = float(prof[k_peak])
    w = torch.ones_like(prof)
    tail = torch.arange(len(prof)) > k_peak
    w[tail] = (peak / prof[tail].clamp(min=peak / max_boost)).clamp(1.0, max_boost)
    r = _radius_px((box, box, box))
    lo = r.floor().long().clamp(max=len(prof) - 2)
    frac = r - lo
    return ((1 - frac) * w[lo] + frac * w[lo + 1]).float()


def _first_rise(prof: torch.Tensor) -> torch.Tensor:
    """``prof`` with everything after its first local maximum set to −inf (so argmax finds it)."""
    out = prof.clone()
    for i in range(1, len(prof)):
        if prof[i] < prof[i - 1]:
            out[i:] = -math.inf
            break
    return out


@torch.no_grad()
def precondition_gradient_(param: torch.Tensor, weights: torch.Tensor) -> None:
    """Filter ``param.grad`` in place: ``g ← irfftn(w · rfftn(g))`` (no-op without a gradient).

    Args:
        param: a ``(D, D, D)`` float32 leaf tensor (the voxel density).
        weights: ``(D, D, D // 2 + 1)`` weights from :func:`ctf_preconditioner`.

    Raises:
        ValueError: the weights do not match the parameter's rFFT grid.
    """
    g = param.grad
    if g is None:
        return
    expected = (*g.shape[:-1], g.shape[-1] // 2 + 1)
    if tuple(weights.shape) != expected:
        raise ValueError(f"preconditioner weights are {tuple(weights.shape)}, the gradient's rFFT grid is {expected}")
    g.copy_(torch.fft.irfftn(torch.fft.rfftn(g) * weights.to(g.device), s=g.shape))
