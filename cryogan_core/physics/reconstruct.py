"""Direct Fourier inversion with known poses (CTF-Wiener, padded, streamed in batches).

For each particle (RELION ``BackProjector::backproject2Dto3D`` / ``reconstruct``,
``src/backprojector.cpp``, in its simplest form):

1. undo the origin: translate the image by +o (o = origin_A / pixel), which puts the
   particle centre back at ``N//2``;
2. multiply its 2-D DFT by the CTF (the same grid as the forward model), transform back,
   zero-pad to the even padded box ``P`` and take the padded 2-D DFT;
3. insert ``CTF·Î`` and ``CTF²`` (the CTF evaluated on the padded grid) as central slices
   at ``Aᵀ·(kx, ky, 0)`` into a 3-D half-spectrum (trilinear splatting,
   ``torch_fourier_slice.insert_central_slices_rfft_3d_multichannel``).

Then ``F = Σ CTF·Î / (Σ CTF² + ε)`` with ``ε = wiener_constant · mean(Σ CTF²)`` (the
mean over the voxels inside the Nyquist sphere), frequencies beyond Nyquist set to zero,
inverse 3-D FFT, sinc² gridding correction, crop to ``D``. Memory is O(P³) whatever
the number of images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch_fourier_slice import insert_central_slices_rfft_3d_multichannel
from torch_fourier_slice.volume_utils import separable_sinc2_correction

from cryogan_core.physics.ctf import CtfParams, compute_ctf
from cryogan_core.physics.euler import euler_to_matrix
from cryogan_core.physics.projection import (
    _check_particle_arrays,
    _pixel_sizes,
    pad_offsets,
    padded_size,
    shift_phase,
)


def _nyquist_mask_rfft3(p: int, device: torch.device) -> torch.Tensor:
    """Bool ``(P, P, P//2+1)`` mask of |f| <= 0.5 cycles/px in the (z, y)-fftshifted rfft layout."""
    fz = torch.fft.fftshift(torch.fft.fftfreq(p, device=device)).reshape(p, 1, 1)
    fy = fz.reshape(1, p, 1)
    fx = torch.fft.rfftfreq(p, device=device).reshape(1, 1, -1)
    return fz * fz + fy * fy + fx * fx <= 0.25 + 1e-9


class FourierAccumulator:
    """Streaming CTF-weighted Fourier insertion: ``add`` batches, then ``finish``.

    Holds ``Σ CTF·Î`` (complex64) and ``Σ CTF²`` (float32) on an even padded half grid
    ``(P, P, P//2+1)``, memory O(P³). Images are moved to ``device`` batch by batch, so a
    lazy CPU stack can be streamed into a CUDA accumulator. :func:`reconstruct` is
    ``FourierAccumulator(D, device).add(...)`` + ``finish(...)``.

    Args:
        box: particle box D in pixels.
        device: where the sums live and the work runs (CPU when None).
        pad_factor: the 3-D grid is an even box >= pad_factor·D.

    Raises:
        ValueError: if ``pad_factor < 1`` or ``box < 2``.
    """

    def __init__(self, box: int, device: torch.device | str | None = None, pad_factor: float = 2.0) -> None:
        self.box = int(box)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.padded = padded_size(self.box, pad_factor)
        self.before, self.after = pad_offsets(self.box, self.padded)
        shape = (self.padded, self.padded, self.padded // 2 + 1)
        self.data = torch.zeros(shape, dtype=torch.complex64, device=self.device)
        self.weight = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.count = 0

    def add(
        self,
        images: torch.Tensor,
        angles_deg: torch.Tensor,
        origins_A: torch.Tensor,
        pixel_size_A: float | torch.Tensor,
        ctf: CtfParams | None = None,
    ) -> None:
        """Insert one batch of particle images.

        Args:
            images: ``(b, D, D)`` particle images ``(y, x)``, centre ``D//2``, RELION
                white-protein convention (``image ≈ CTF ⊛ projection`` shifted by −origin).
            angles_deg: ``(b, 3)`` ``[rot, tilt, psi]`` degrees.
            origins_A: ``(b, 2)`` ``[rlnOriginXAngst, rlnOriginYAngst]`` Å.
            pixel_size_A: Å per pixel, float or ``(b,)``.
            ctf: CtfParams of length b, or None (CTF ≡ 1).

        Raises:
            ValueError: on inconsistent shapes or a box other than D.
        """
        d, p, dev = self.box, self.padded, self.device
        if images.ndim != 3 or tuple(images.shape[-2:]) != (d, d):
            raise ValueError(f"images must be (n, {d}, {d}), got {tuple(images.shape)}")
        n = int(images.shape[0])
        _check_particle_arrays(n, angles_deg, origins_A, ctf)
        if n == 0:
            return
        px = _pixel_sizes(pixel_size_A, n, dev)
        img = images.to(device=dev, dtype=torch.float32)
        origins_px = origins_A.to(device=dev, dtype=torch.float32) / px[:, None]
        # undo the origin (translate by +o), then weight by the CTF, on the D grid
        ft = torch.fft.rfft2(img) * shift_phase(d, d, origins_px)
        ctf_dev = ctf.to(dev) if ctf is not None else None
        if ctf_dev is not None:
            ft = ft * compute_ctf(ctf_dev, d, px, rfft=True)
        img = F.pad(torch.fft.irfft2(ft, s=(d, d)), [self.before, self.after] * 2)
        ft_p = torch.fft.rfft2(torch.fft.ifftshift(img, dim=(-2, -1)))
        if ctf_dev is not None:
            w2 = compute_ctf(ctf_dev, p, px, rfft=True) ** 2
        else:
            w2 = torch.ones((n, p, p // 2 + 1), device=dev)
        stacked = torch.stack([ft_p, w2.to(torch.complex64)], dim=-3)  # (b, 2, P, P//2+1)
        stacked = torch.fft.fftshift(stacked, dim=(-2,))
        a_t = euler_to_matrix(angles_deg.to(device=dev, dtype=torch.float32)).transpose(-1, -2)
        dft, _ = insert_central_slices_rfft_3d_multichannel(
            image_rfft=stacked, volume_shape=(p, p, p), rotation_matrices=a_t, fftfreq_max=0.5
        )
        self.data += dft[0]
        self.weight += dft[1].real
        self.count += n

    def finish(self, wiener_constant: float = 0.1) -> torch.Tensor:
        """Divide, inverse-transform, grid-correct and crop.

        ``F = Σ CTF·Î / (Σ CTF² + ε)`` with ``ε = wiener_constant · mean(Σ CTF²)`` over
        the voxels inside the Nyquist sphere (|f| <= 0.5 cycles/px); voxels outside it
        are zeroed. Then inverse 3-D FFT, division by the sinc² of trilinear insertion
        (``torch_fourier_slice.volume_utils.separable_sinc2_correction``), crop to D.

        Args:
            wiener_constant: >= 0; 0 gives plain division (zero-weight voxels stay 0).

        Returns:
            ``(D, D, D)`` float32 map ``(z, y, x)``, centre ``D//2``, on ``device``.

        Raises:
            ValueError: if ``wiener_constant < 0``.
        """
        if wiener_constant < 0:
            raise ValueError(f"wiener_constant must be >= 0, got {wiener_constant}")
        p, d, b = self.padded, self.box, self.before
        inside = _nyquist_mask_rfft3(p, self.device)
        eps = wiener_constant * self.weight[inside].mean() if wiener_constant > 0 else 0.0
        denom = self.weight + eps
        vol_ft = torch.where(
            inside & (denom > 0), self.data / denom.clamp_min(1e-30), torch.zeros_like(self.data)
        )
        vol = torch.fft.irfftn(torch.fft.ifftshift(vol_ft, dim=(-3, -2)), s=(p, p, p), dim=(-3, -2, -1))
        vol = torch.fft.fftshift(vol, dim=(-3, -2, -1))
        vol = vol / separable_sinc2_correction((p, p, p), device=self.device)
        return vol[b : b + d, b : b + d, b : b + d].contiguous()


def reconstruct(
    images: torch.Tensor,
    angles_deg: torch.Tensor,
    origins_A: torch.Tensor,
    pixel_size_A: float,
    ctf: CtfParams | None = None,
    wiener_constant: float = 0.1,
    batch_size: int = 256,
    pad_factor: float = 2.0,
) -> torch.Tensor:
    """Reconstruct a map from particle images with known poses, origins and CTFs.

    Args:
        images: ``(n, D, D)`` particle images ``(y, x)``, centre at ``D//2``, the
            RELION white-protein convention (``image ≈ CTF ⊛ projection`` shifted by
            −origin). The work runs on ``images.device`` (use
            :class:`FourierAccumulator` to stream a CPU stack onto a GPU).
        angles_deg: ``(n, 3)`` ``[rot, tilt, psi]`` in degrees.
        origins_A: ``(n, 2)`` ``[rlnOriginXAngst, rlnOriginYAngst]`` in Å.
        pixel_size_A: Å per pixel (float or per-particle ``(n,)``).
        ctf: per-particle CTF (length n) or None (then CTF ≡ 1).
        wiener_constant: ε relative to the mean accumulated CTF² weight inside the
            Nyquist sphere; ``F = Σ CTF·Î / (Σ CTF² + ε)``. 0 gives plain division
            (voxels with zero weight stay zero).
        batch_size: images inserted per step (memory O(P³ + batch·P²)).
        pad_factor: the 3-D grid is an even box >= pad_factor·D.

    Returns:
        ``(D, D, D)`` float32 map ``(z, y, x)``, centre ``D//2``, scaled like the input
        of :func:`~cryogan_core.physics.projection.project` (projections of the result
        reproduce the images up to the CTF, Wiener attenuation aside).

    Raises:
        ValueError: on inconsistent shapes, a non-positive pixel size, ``batch_size < 1``
            or ``wiener_constant < 0``.
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (n, D, D), got {tuple(images.shape)}")
    n, d = int(images.shape[0]), int(images.shape[-1])
    _check_particle_arrays(n, angles_deg, origins_A, ctf)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if wiener_constant < 0:
        raise ValueError(f"wiener_constant must be >= 0, got {wiener_constant}")
    px_all = _pixel_sizes(pixel_size_A, n, images.device)
    acc = FourierAccumulator(d, images.device, pad_factor)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        px = px_all if px_all.numel() == 1 else px_all[sl]
        acc.add(images[sl], angles_deg[sl], origins_A[sl], px, ctf[sl] if ctf is not None else None)
    return acc.finish(wiener_constant)
