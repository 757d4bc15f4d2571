"""Projection (Fourier slice), its adjoint, shifts and the particle-image forward model.

Conventions (RELION; protocol doc §4.3, DESIGN.md):

* volumes ``(z, y, x)``, images ``(n, y, x)``, cubic/square, centre at index ``N//2``;
* ``A = euler_to_matrix([rot, tilt, psi])`` maps model to image frame and
  ``P(x, y) = ∫ V(Aᵀ·(x, y, z)) dz`` (RELION ``Projector::project``, ``src/projector.cpp``):
  the 2-D DFT of ``P`` is the 3-D DFT of ``V`` sampled at ``Aᵀ·(kx, ky, 0)``;
* the particle image is the CTF-modulated projection shifted by −origin
  (``relion_project``, ``src/apps/project.cpp``; ``ObservationModel::predictObservation``):
  ``Î(k) = CTF(k)·P̂(k)·exp(+2πi k·o/N)`` with ``o = (rlnOriginXAngst, rlnOriginYAngst)/pixel``.

Library choice: the central-slice sampling is ``torch_fourier_slice`` 0.6
(``extract_central_slices_rfft_3d``, trilinear, with the library's real-space sinc²
pre-correction), called with ``rotation_matrices = Aᵀ`` (xyz). Its ``project_3d_to_2d``
wrapper is NOT used: for an odd padded size it maps frequencies to the wrong array
coordinates (CC ≈ 0.98 and a one-pixel offset against the line integral at 33³; it
assumes an even rfft width) and it adds an "edge value" term that makes maps with a
non-zero border project as if they continued outside the box. Here the volume is always
zero-padded to an EVEN size with its centre kept at index ``P//2``, and projection is a
plain linear operator whose exact adjoint is obtained with autograd.

Accuracy at ``pad_factor=2`` (trilinear Fourier interpolation; RELION has the same
trade-off): CC > 0.999 with the real-space line integral; per-pose sums within about
±3.5 % of the volume sum (mean +1.3 %), larger padding reduces this.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
import torch.nn.functional as F
from torch_fourier_slice import extract_central_slices_rfft_3d
from torch_fourier_slice.volume_utils import separable_sinc2_correction

from cryogan_core.physics.ctf import CtfParams, compute_ctf
from cryogan_core.physics.euler import euler_to_matrix


def padded_size(box: int, pad_factor: float) -> int:
    """Even padded box ``P >= max(box, ceil(pad_factor·box))`` used for Fourier slicing.

    Args:
        box: original side length in pixels.
        pad_factor: >= 1.

    Returns:
        the smallest even integer P with ``P >= pad_factor·box`` (and ``P >= box``).

    Raises:
        ValueError: if ``pad_factor < 1`` or ``box < 2``.
    """
    if pad_factor < 1.0:
        raise ValueError(f"pad_factor must be >= 1, got {pad_factor}")
    if box < 2:
        raise ValueError(f"box must be >= 2, got {box}")
    p = max(box, int(math.ceil(pad_factor * box - 1e-9)))
    return p + (p % 2)


def pad_offsets(box: int, padded: int) -> tuple[int, int]:
    """Zero padding ``(before, after)`` that keeps the centre ``box//2`` at ``padded//2``."""
    before = padded // 2 - box // 2
    return before, padded - box - before


def _fft_grid_cycles_per_px(
    h: int, w: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ky, kx) of a torch.fft.rfft2 grid in cycles per pixel, shapes (h, 1) and (1, w//2+1)."""
    ky = torch.fft.fftfreq(h, device=device, dtype=torch.float32).reshape(h, 1)
    kx = torch.fft.rfftfreq(w, device=device, dtype=torch.float32).reshape(1, -1)
    return ky, kx


def shift_phase(h: int, w: int, shifts_px: torch.Tensor) -> torch.Tensor:
    """Fourier phase ramp that translates images by +shift.

    Args:
        h, w: image height and width in pixels.
        shifts_px: ``(n, 2)`` float tensor ``[x, y]`` in pixels.

    Returns:
        ``(n, h, w//2+1)`` complex64 ``exp(−2πi (kx·sx + ky·sy))`` in the ``rfft2``
        layout (k in cycles per pixel), on the device of ``shifts_px``. Multiplying an
        image's rfft2 by it moves content at r to r + shift (RELION
        ``shiftImageInFourierTransform``, ``src/fftw.cpp``, uses the same sign).
    """
    s = shifts_px.to(torch.float32)
    ky, kx = _fft_grid_cycles_per_px(h, w, s.device)
    arg = -2.0 * math.pi * (kx * s[:, 0, None, None] + ky * s[:, 1, None, None])
    return torch.polar(torch.ones_like(arg), arg)


def _check_volume(volume: torch.Tensor) -> int:
    """Return D for a cubic (D, D, D) volume; raise ValueError otherwise."""
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must be cubic (D, D, D), got {tuple(volume.shape)}")
    return int(volume.shape[-1])


def _check_rotations(rotations: torch.Tensor) -> None:
    """Raise ValueError unless rotations is (n, 3, 3)."""
    if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must be (n, 3, 3), got {tuple(rotations.shape)}")


#: Fewest slice samples per chunk when :meth:`Projector.slices` splits its work over threads
#: (below it a thread costs more than it saves: 16 rotations at 64 px ran 0.75x as fast on
#: 4 chunks, 2 threads).
MIN_SAMPLES_PER_THREAD = 2**17

#: Most Python threads :meth:`Projector.slices` uses. Each chunk's own operators still use all
#: of torch's intra-op threads, so ``k`` chunks oversubscribe the cores up to ``k``-fold; the cap
#: keeps that bounded on a many-core node (measured only on 2 cores, where 2 chunks gain
#: 1.2-1.9x: ``benchmarks/bench_projection_speed.py``).
MAX_PROJECTOR_THREADS = 4


def _chunks_in_threads(
    fn: Callable[[torch.Tensor], torch.Tensor], rotations: torch.Tensor, n_threads: int, samples_per_rotation: int
) -> torch.Tensor:
    """``fn(rotations)``, computed as ``torch.cat`` of ``fn`` on consecutive chunks run on threads.

    For row-wise functions (each output row depends on its own rotation only) without
    autograd: torch's operators release the GIL, so the chunks run at once, one per Python
    thread (each chunk's own operators still use torch's intra-op threads). Speed:
    ``benchmarks/bench_projection_speed.py``.

    Args:
        fn: maps ``(k, 3, 3)`` rotations to a ``(k, ...)`` tensor.
        rotations: ``(n, 3, 3)``.
        n_threads: threads to use at most (and at most ``MAX_PROJECTOR_THREADS``).
        samples_per_rotation: the work of one rotation (slice samples); each chunk gets at
            least ``MIN_SAMPLES_PER_THREAD`` samples, so a small job runs as
            ``fn(rotations)`` on the caller's thread.

    Returns:
        ``(n, ...)``, equal to ``fn(rotations)``.
    """
    n = int(rotations.shape[0])
    workers = min(n_threads, MAX_PROJECTOR_THREADS, n, n * samples_per_rotation // MIN_SAMPLES_PER_THREAD)
    if workers < 2:
        return fn(rotations)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="projector") as pool:
        return torch.cat(list(pool.map(fn, rotations.chunk(workers))))


class Projector:
    """Projections of one map at many rotations, its padded 3-D FFT computed once.

    ``Projector(volume, pad_factor)(rotations)`` equals :func:`project` (which is built on
    it); keep one when projecting the same map in many calls (pose searches, oracles).
    Differentiable w.r.t. ``volume`` when built from a tensor that requires grad.

    Args:
        volume: ``(D, D, D)`` map ``(z, y, x)``, centre at ``D//2``, zero outside the box.
            Cast to float32.
        pad_factor: the volume is zero-padded to an even box >= pad_factor·D before the
            3-D FFT (2 is RELION's default).

    Raises:
        ValueError: on a non-cubic volume or pad_factor < 1.

    Source: Fourier slice theorem as in RELION ``Projector::project``; sampling by
    ``torch_fourier_slice.extract_central_slices_rfft_3d`` with its sinc² pre-correction.
    """

    def __init__(self, volume: torch.Tensor, pad_factor: float = 2.0) -> None:
        self.box = _check_volume(volume)
        self.padded = padded_size(self.box, pad_factor)
        self.before, after = pad_offsets(self.box, self.padded)
        vp = F.pad(volume.to(torch.float32), [self.before, after] * 3)
        # Pre-compensate the trilinear Fourier interpolation (torch-fourier-slice issue #65).
        vp = vp / separable_sinc2_correction((self.padded,) * 3, device=vp.device)
        ft = torch.fft.rfftn(torch.fft.ifftshift(vp, dim=(-3, -2, -1)), dim=(-3, -2, -1))
        self.volume_rfft = torch.fft.fftshift(ft, dim=(-3, -2))

    def slices(self, rotations: torch.Tensor) -> torch.Tensor:
        """Central slices ``(n, P, P//2+1)`` complex64 (rows fftshifted) for ``(n, 3, 3)`` matrices A.

        On a CPU with more than one torch thread and nothing to differentiate, the rotations
        are sampled in chunks on that many Python threads, at most ``MAX_PROJECTOR_THREADS``
        (:func:`_chunks_in_threads`): the
        library's trilinear sampler calls ``torch.nn.functional.grid_sample`` on ONE volume,
        and PyTorch's CPU kernel parallelises over the batch only (``at::parallel_for(0, N,
        ...)`` in ``grid_sampler_3d_cpu_impl``, ``aten/src/ATen/native/GridSampler.cpp``), so
        it runs on one thread whatever ``torch.get_num_threads()`` says. The slices are the
        same to the bit either way.
        """
        _check_rotations(rotations)
        a_t = rotations.to(device=self.volume_rfft.device, dtype=torch.float32).transpose(-1, -2)
        extract = partial(extract_central_slices_rfft_3d, self.volume_rfft)  # rotations A^T -> slices
        differentiable = self.volume_rfft.requires_grad or a_t.requires_grad
        if self.volume_rfft.device.type != "cpu" or differentiable:
            return extract(a_t)
        samples = self.padded * (self.padded // 2 + 1)
        return _chunks_in_threads(extract, a_t, torch.get_num_threads(), samples)

    def __call__(self, rotations: torch.Tensor) -> torch.Tensor:
        """``(n, 3, 3)`` RELION matrices A -> ``(n, D, D)`` float32 projections (see :func:`project`)."""
        p, b, d = self.padded, self.before, self.box
        img = torch.fft.irfftn(torch.fft.ifftshift(self.slices(rotations), dim=(-2,)), s=(p, p), dim=(-2, -1))
        img = torch.fft.fftshift(img, dim=(-2, -1))
        return img[..., b : b + d, b : b + d]


def project(volume: torch.Tensor, rotations: torch.Tensor, pad_factor: float = 2.0) -> torch.Tensor:
    """Real-space projections ``P(x, y) = ∫ V(Aᵀ·(x, y, z)) dz`` by Fourier slicing.

    Args:
        volume: ``(D, D, D)`` map ``(z, y, x)``, centre at ``D//2``, zero outside the box
            (subtract any solvent offset first). Cast to float32.
        rotations: ``(n, 3, 3)`` RELION matrices A (model -> image), e.g. from
            :func:`~cryogan_core.physics.euler.euler_to_matrix`.
        pad_factor: the volume is zero-padded to an even box >= pad_factor·D before the
            3-D FFT (2 is RELION's default).

    Returns:
        ``(n, D, D)`` float32 projections on the volume's device, centre at ``D//2``.
        Scale: line integral in voxel units (sum along z), so each projection's sum is
        ≈ the volume's sum. Linear and differentiable w.r.t. ``volume``.

    Raises:
        ValueError: on a non-cubic volume, rotations not ``(n, 3, 3)`` or pad_factor < 1.

    Source: Fourier slice theorem as in RELION ``Projector::project``; sampling by
    ``torch_fourier_slice.extract_central_slices_rfft_3d``. For many calls on the same
    map, keep a :class:`Projector`.
    """
    _check_rotations(rotations)
    return Projector(volume, pad_factor)(rotations)


def backproject(images: torch.Tensor, rotations: torch.Tensor, pad_factor: float = 2.0) -> torch.Tensor:
    """Exact adjoint of :func:`project`: ``<project(V), I> == <V, backproject(I)>``.

    Computed as the vector-Jacobian product of the (linear) :func:`project`, so it is
    not a reconstruction (no weighting); use
    :func:`~cryogan_core.physics.reconstruct.reconstruct` for that.

    Args:
        images: ``(n, D, D)`` float images ``(y, x)``, centre at ``D//2``.
        rotations: ``(n, 3, 3)`` matrices A, as for :func:`project`.
        pad_factor: as for :func:`project`.

    Returns:
        ``(D, D, D)`` float32 volume on the images' device; differentiable w.r.t.
        ``images`` when they require grad.

    Raises:
        ValueError: if images are not ``(n, D, D)`` or n differs from the rotations'.
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (n, D, D), got {tuple(images.shape)}")
    _check_rotations(rotations)
    if rotations.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {rotations.shape[0]} rotations")
    d = int(images.shape[-1])
    imgs = images.to(torch.float32)
    with torch.enable_grad():
        v0 = torch.zeros((d, d, d), device=imgs.device, dtype=torch.float32, requires_grad=True)
        proj = project(v0, rotations.to(imgs.device), pad_factor)
        (grad,) = torch.autograd.grad(proj, v0, grad_outputs=imgs, create_graph=imgs.requires_grad)
    return grad


def shift_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Translate images by +shift with a Fourier phase ramp (sub-pixel, periodic).

    Args:
        images: ``(n, H, W)`` float images ``(y, x)``.
        shifts_px: ``(n, 2)`` ``[x, y]`` in pixels; content at r moves to r + shift.

    Returns:
        ``(n, H, W)`` float32 images. Integer shifts are exact circular shifts
        (``torch.roll``); for even sizes the Nyquist term of a sub-pixel shift keeps only
        its real part (the usual rfft convention).

    Raises:
        ValueError: on mismatched shapes.
    """
    if images.ndim != 3:
        raise ValueError(f"images must be (n, H, W), got {tuple(images.shape)}")
    if shifts_px.shape != (images.shape[0], 2):
        raise ValueError(f"shifts_px must be ({images.shape[0]}, 2), got {tuple(shifts_px.shape)}")
    h, w = images.shape[-2:]
    ft = torch.fft.rfft2(images.to(torch.float32))
    ft = ft * shift_phase(h, w, shifts_px.to(images.device))
    return torch.fft.irfft2(ft, s=(h, w))


def fourier_filter_images(images: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Multiply the images' ``rfft2`` by a filter and transform back.

    Args:
        images: ``(n, H, W)`` float images.
        filt: ``(n, H, W//2+1)`` or ``(1, H, W//2+1)`` real or complex filter in the
            torch.fft ``rfft2`` layout (DC at [0, 0], not fftshifted), e.g. a CTF from
            :func:`~cryogan_core.physics.ctf.compute_ctf`.

    Returns:
        ``(n, H, W)`` float32 filtered images (``irfft2`` with ``s=(H, W)``).

    Raises:
        ValueError: if the filter shape does not match.
    """
    if images.ndim != 3:
        raise ValueError(f"images must be (n, H, W), got {tuple(images.shape)}")
    n, h, w = images.shape
    if filt.ndim != 3 or filt.shape[0] not in (1, n) or tuple(filt.shape[1:]) != (h, w // 2 + 1):
        raise ValueError(f"filter must be ({n} or 1, {h}, {w // 2 + 1}), got {tuple(filt.shape)}")
    ft = torch.fft.rfft2(images.to(torch.float32))
    return torch.fft.irfft2(ft * filt.to(images.device), s=(h, w))


def _pixel_sizes(pixel_size_A: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """``(n,)`` or ``(1,)`` float32 pixel sizes; ValueError if non-positive or wrong length."""
    px = torch.as_tensor(pixel_size_A, dtype=torch.float32).reshape(-1).to(device)
    if px.numel() not in (1, n):
        raise ValueError(f"pixel_size_A has {px.numel()} values for {n} particles")
    if bool((px <= 0).any()):
        raise ValueError(f"pixel_size_A must be positive, got {px.tolist()}")
    return px


def _check_particle_arrays(n: int, angles_deg: torch.Tensor, origins_A: torch.Tensor, ctf: CtfParams | None) -> None:
    """Check that ``n`` particles have ``(n, 3)`` angles, ``(n, 2)`` origins and ``n`` CTFs (or
    none); ValueError naming the shapes otherwise."""
    if tuple(angles_deg.shape) != (n, 3) or tuple(origins_A.shape) != (n, 2):
        raise ValueError(
            f"angles_deg must be ({n}, 3) and origins_A ({n}, 2), got "
            f"{tuple(angles_deg.shape)} and {tuple(origins_A.shape)}"
        )
    if ctf is not None and len(ctf) != n:
        raise ValueError(f"ctf has {len(ctf)} particles, angles_deg {n}")


def forward_model(
    volume: torch.Tensor | Projector,
    angles_deg: torch.Tensor,
    origins_A: torch.Tensor,
    pixel_size_A: float | torch.Tensor,
    ctf: CtfParams | None = None,
    pad_factor: float = 2.0,
) -> torch.Tensor:
    """Noise-free particle images that RELION would predict for a map and poses.

    ``Î(k) = CTF(k)·P̂(k)·exp(+2πi k·o/N)``: project at ``A(angles)``, then multiply by
    the CTF and the −origin phase ramp in one Fourier-space step (RELION
    ``relion_project --ctf``, ``src/apps/project.cpp``; ``predictObservation``,
    ``src/jaz/single_particle/obs_model.cpp``). The particle centre ends up at
    ``N//2 − o``.

    Args:
        volume: ``(D, D, D)`` map, centre ``D//2``, or a :class:`Projector` of it (keep one
            when predicting the same map batch after batch: its padded FFT is the largest
            single cost at large boxes, 5 s at 256 px on 2 CPU threads).
        angles_deg: ``(n, 3)`` ``[rot, tilt, psi]`` degrees.
        origins_A: ``(n, 2)`` ``[rlnOriginXAngst, rlnOriginYAngst]`` in Å.
        pixel_size_A: Å per pixel, float or ``(n,)``.
        ctf: per-particle CTF (length n), or None for no CTF.
        pad_factor: see :func:`project` (a given :class:`Projector` keeps its own).

    Returns:
        ``(n, D, D)`` float32 images on the volume's device; differentiable w.r.t.
        ``volume``.

    Raises:
        ValueError: on inconsistent shapes or lengths.
    """
    projector = volume if isinstance(volume, Projector) else Projector(volume, pad_factor)
    d = projector.box
    dev = projector.volume_rfft.device
    n = int(angles_deg.shape[0])
    _check_particle_arrays(n, angles_deg, origins_A, ctf)
    px = _pixel_sizes(pixel_size_A, n, dev)
    rot = euler_to_matrix(angles_deg.to(device=dev, dtype=torch.float32))
    proj = projector(rot)
    origins_px = origins_A.to(device=dev, dtype=torch.float32) / px[:, None]
    ft = torch.fft.rfft2(proj) * shift_phase(d, d, -origins_px)
    if ctf is not None:
        ft = ft * compute_ctf(ctf.to(dev), d, px, rfft=True)
    return torch.fft.irfft2(ft, s=(d, d))
