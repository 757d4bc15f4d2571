"""CTF phase flipping and CTF modulation of particle images (the denoiser's CTF-aware mode).

A particle is ``CTF ⊛ projection + noise``: past the first CTF zero the signal changes sign
from ring to ring, at rings that depend on the particle's defocus. Phase flipping
(multiplying the spectrum by ``sign(CTF)``; Downing & Glaeser 2008, "Restoration of weak
phase-contrast images recorded with a high degree of defocus: the 'twin image' problem
associated with CTF correction", Ultramicroscopy 108:921; RELION ``--only_flip_phases``,
``src/ctf.h`` ``CTF::getCTF(..., do_only_flip_phases)``) makes the signal's phases the same
for every defocus while keeping the noise white. The denoiser's network then sees
phase-flipped particles and its output is multiplied by the particle's own CTF, so the CTF's
rings come from the STAR file's defocus instead of being guessed from a noisy image.

The CTF grids are those of :func:`cryogan_core.physics.ctf.compute_ctf` (``rfft2`` layout,
DC at ``[0, 0]``). Both filters pass the DC term unchanged (factor 1): the mean of an image
(the normalisation offset) is not CTF-modulated signal. In an even box the Nyquist column of
an astigmatic CTF is not Hermitian-symmetric, and ``irfft2`` keeps only its symmetric part
there, so identities such as ``CTF · sign(CTF) = |CTF|`` hold in every other column.
"""

from __future__ import annotations

import torch

from cryogan_core.physics.projection import fourier_filter_images


def _check(images: torch.Tensor, ctf: torch.Tensor) -> None:
    """Raise ValueError unless ``images (n, H, W)`` and ``ctf (n, H, W//2+1)`` match."""
    if images.ndim != 3 or ctf.ndim != 3:
        raise ValueError(f"images must be (n, H, W) and ctf (n, H, W//2+1), got {tuple(images.shape)} and {tuple(ctf.shape)}")
    n, h, w = images.shape
    if tuple(ctf.shape) != (n, h, w // 2 + 1):
        raise ValueError(f"ctf must be ({n}, {h}, {w // 2 + 1}) for images {tuple(images.shape)}, got {tuple(ctf.shape)}")


def phase_flip(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply each image's spectrum by the sign of its CTF (+1 where the CTF is >= 0).

    Args:
        images: ``(n, H, W)`` float images (any H, W; odd or even).
        ctf: ``(n, H, W//2+1)`` real CTF of each image in the ``rfft2`` layout
            (:func:`~cryogan_core.physics.ctf.compute_ctf` with ``rfft=True``), on any device.

    Returns:
        ``(n, H, W)`` float32 phase-flipped images on ``images.device``.

    Raises:
        ValueError: if the shapes do not match.

    Source: phase flipping as RELION's ``do_only_flip_phases`` (``src/ctf.h``); the DC
    term is kept (factor +1).
    """
    _check(images, ctf)
    sign = torch.where(ctf >= 0, 1.0, -1.0).to(torch.float32)
    sign[:, 0, 0] = 1.0
    return fourier_filter_images(images, sign)


def ctf_modulate(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply each image's spectrum by its CTF, passing the DC term unchanged.

    Args:
        images: ``(n, H, W)`` float images, e.g. the network's CTF-free estimates.
        ctf: ``(n, H, W//2+1)`` real CTF of each image in the ``rfft2`` layout.

    Returns:
        ``(n, H, W)`` float32 images ``irfft2(CTF' · rfft2(image))`` with ``CTF'`` the CTF
        whose ``[0, 0]`` entry is set to 1, on ``images.device``.

    Raises:
        ValueError: if the shapes do not match.

    Source: the image model ``image = CTF ⊛ projection`` (RELION ``relion_project --ctf``).
    """
    _check(images, ctf)
    filt = ctf.to(torch.float32).clone()
    filt[:, 0, 0] = 1.0
    return fourier_filter_images(images, filt)


__all__ = ["ctf_modulate", "phase_flip"]
