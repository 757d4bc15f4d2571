"""RELION's contrast transfer function, batched in torch.

Formula (RELION ``CTF::initialise`` ``src/ctf.cpp``, ``CTF::getCTF`` ``src/ctf.h``; protocol
doc §4.3)::

    λ  = 12.2643247 / sqrt(V·(1 + V·0.978466e-6))   [Å], V in volts
    Δf(k) = ΔfU·cos²(θk − φa) + ΔfV·sin²(θk − φa)   θk = angle of k from the x axis
    γ  = −π·λ·Δf(k)·u² + (π/2)·Cs·λ³·u⁴ − phase_shift_rad − atan(Q0/√(1−Q0²))
    CTF = −sin(γ) · exp(−B·u²/4) · scale              (CTF(0) = +Q0·scale)

with u = |k| in 1/Å and Cs in Å. Images after RELION extraction are white-protein, so
``image ≈ CTF ⊛ projection``.

Library choice: ``torch-ctf`` 0.6 ``calculate_ctf_2d`` was evaluated and NOT adopted: it
computes λ from CODATA constants (6e-6 relative difference from RELION's 12.2643247
constant, i.e. ~1e-3 absolute CTF error at high defocus and resolution), needs the
ΔfV > ΔfU case swapped and rotated by 90° (NaN otherwise) and has no B-factor term. The
closed form below is RELION's, exactly, in a dozen lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch

from cryogan_core.device import to_device
from cryogan_core.errors import InputError

_CTF_COLUMNS = {
    "defocus_u_A": "rlnDefocusU",
    "defocus_v_A": "rlnDefocusV",
    "defocus_angle_deg": "rlnDefocusAngle",
    "voltage_kV": "rlnVoltage",
    "cs_mm": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
    "phase_shift_deg": "rlnPhaseShift",
    "bfactor_A2": "rlnCtfBfactor",
    "scale": "rlnCtfScalefactor",
}


@dataclass
class CtfParams:
    """Per-particle CTF parameters; every field is a 1-D float32 tensor of length n.

    Fields (RELION column, unit):
        defocus_u_A (rlnDefocusU, Å, positive = underfocus),
        defocus_v_A (rlnDefocusV, Å), defocus_angle_deg (rlnDefocusAngle, degrees from
        the x axis), voltage_kV (rlnVoltage, kV), cs_mm (rlnSphericalAberration, mm),
        amplitude_contrast (rlnAmplitudeContrast, Q0 in [0, 1)), phase_shift_deg
        (rlnPhaseShift, degrees), bfactor_A2 (rlnCtfBfactor, Å²), scale
        (rlnCtfScalefactor, dimensionless).

    All fields must have the same length and live on the same device.
    """

    defocus_u_A: torch.Tensor
    defocus_v_A: torch.Tensor
    defocus_angle_deg: torch.Tensor
    voltage_kV: torch.Tensor
    cs_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift_deg: torch.Tensor
    bfactor_A2: torch.Tensor
    scale: torch.Tensor

    def __post_init__(self) -> None:
        """Coerce every field to a 1-D float32 tensor and check that lengths agree.

        Raises:
            ValueError: if the fields do not all have the same length n.
        """
        n = None
        for f in fields(self):
            t = torch.as_tensor(getattr(self, f.name), dtype=torch.float32).reshape(-1)
            setattr(self, f.name, t)
            if n is None:
                n = t.shape[0]
            elif t.shape[0] != n:
                raise ValueError(f"CtfParams.{f.name} has length {t.shape[0]}, expected {n}")

    @classmethod
    def from_particles(cls, df: pd.DataFrame, device: torch.device | str | None = None) -> "CtfParams":
        """Build from a merged RELION particle table (optics columns already joined).

        Args:
            df: frame with rlnDefocusU, rlnDefocusV, rlnDefocusAngle, rlnVoltage,
                rlnSphericalAberration, rlnAmplitudeContrast, rlnPhaseShift,
                rlnCtfBfactor, rlnCtfScalefactor (the io layer guarantees them).
            device: torch device of the returned tensors (CPU when None).

        Returns:
            CtfParams of length ``len(df)``, float32.

        Raises:
            InputError: if a column is missing (the io layer normally fills defaults).
        """
        missing = [col for col in _CTF_COLUMNS.values() if col not in df.columns]
        if missing:
            raise InputError(f"particle table: CTF column {missing[0]} is missing")
        values = {
            name: torch.as_tensor(np.asarray(df[col], dtype=np.float32), device=device)
            for name, col in _CTF_COLUMNS.items()
        }
        return cls(**values)

    def __len__(self) -> int:
        """Number of particles n."""
        return int(self.defocus_u_A.shape[0])

    def __getitem__(self, idx: int | slice | torch.Tensor | np.ndarray | list) -> "CtfParams":
        """Subset of particles (an int gives a length-1 CtfParams)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        if isinstance(idx, (np.ndarray, list)):
            idx = torch.as_tensor(np.asarray(idx))
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            i = idx.to(t.device) if isinstance(idx, torch.Tensor) else idx
            out[f.name] = t[i]
        return CtfParams(**out)

    def to(self, device: torch.device | str) -> "CtfParams":
        """Copy of these parameters on ``device``."""
        return CtfParams(**{f.name: to_device(getattr(self, f.name), device) for f in fields(self)})

    @property
    def device(self) -> torch.device:
        """Device of the parameter tensors."""
        return self.defocus_u_A.device


def electron_wavelength_A(voltage_kV: torch.Tensor | float) -> torch.Tensor:
    """Relativistic electron wavelength in Å, RELION's constants.

    ``λ = 12.2643247 / sqrt(V·(1 + V·0.978466e-6))`` with V in volts
    (RELION ``CTF::initialise``, ``src/ctf.cpp``).

    Args:
        voltage_kV: acceleration voltage(s) in kV, any shape.

    Returns:
        tensor of the same shape, Å (float64 when given a float).
    """
    v = torch.as_tensor(voltage_kV).to(torch.float64) * 1e3
    return 12.2643247 / torch.sqrt(v * (1.0 + v * 0.978466e-6))


def _frequency_grid(
    box: int, rfft: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ky, kx) grids in cycles per pixel, torch.fft layout, shapes (box, W)."""
    ky = torch.fft.fftfreq(box, device=device, dtype=torch.float64)
    kx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(box, device=device, dtype=torch.float64)
    return torch.meshgrid(ky, kx, indexing="ij")


def compute_ctf(
    params: CtfParams,
    box: int,
    pixel_size_A: float | torch.Tensor,
    rfft: bool = True,
) -> torch.Tensor:
    """RELION CTF of n particles on the 2-D DFT grid of a ``box``-px square image.

    Args:
        params: CtfParams of length n.
        box: image side length in pixels (odd or even).
        pixel_size_A: pixel size in Å, a float or a per-particle ``(n,)`` tensor.
        rfft: if True return the half grid matching ``torch.fft.rfft2`` ``(box, box//2+1)``,
            else the full grid matching ``torch.fft.fft2`` ``(box, box)``.

    Returns:
        float32 tensor ``(n, box, box//2+1)`` or ``(n, box, box)`` on ``params.device``,
        NOT fftshifted (DC at [0, 0]); frequencies are
        ``torch.fft.fftfreq(box, d=pixel_size_A)`` along y (rows) and
        ``rfftfreq``/``fftfreq`` along x (columns), in 1/Å. The phase is evaluated in
        float64 (γ reaches hundreds of radians), then cast.

    Raises:
        ValueError: if ``box < 1``, a pixel size is not positive, or the per-particle
            pixel size length differs from n.

    Source: RELION ``CTF::getCTF`` (``src/ctf.h``) and ``CTF::initialise`` (``src/ctf.cpp``).
    """
    if box < 1:
        raise ValueError(f"box must be >= 1, got {box}")
    device = params.device
    n = len(params)
    # checked where it was given (a Python number: on the CPU, so no wait for a GPU queue)
    px = torch.as_tensor(pixel_size_A, dtype=torch.float64).reshape(-1)
    if px.numel() not in (1, n):
        raise ValueError(f"pixel_size_A has {px.numel()} values for {n} particles")
    if bool((px <= 0).any()):
        raise ValueError(f"pixel_size_A must be positive, got {px.tolist()}")
    px = to_device(px, device).reshape(-1, 1, 1)

    def col(t: torch.Tensor) -> torch.Tensor:
        """A per-particle ``(n,)`` parameter as an ``(n, 1, 1)`` float64 column on ``device``."""
        return t.to(device=device, dtype=torch.float64).reshape(-1, 1, 1)

    ky, kx = _frequency_grid(box, rfft, device)
    ky = ky.unsqueeze(0) / px
    kx = kx.unsqueeze(0) / px
    u2 = kx * kx + ky * ky
    theta = torch.atan2(ky, kx)

    lam = electron_wavelength_A(col(params.voltage_kV))
    cs_A = col(params.cs_mm) * 1e7
    phi = torch.deg2rad(col(params.defocus_angle_deg))
    dfu, dfv = col(params.defocus_u_A), col(params.defocus_v_A)
    dphi = theta - phi
    defocus = dfu * torch.cos(dphi) ** 2 + dfv * torch.sin(dphi) ** 2
    q0 = col(params.amplitude_contrast)
    gamma = (
        -math.pi * lam * defocus * u2
        + (math.pi / 2) * cs_A * lam**3 * u2 * u2
        - torch.deg2rad(col(params.phase_shift_deg))
        - torch.atan(q0 / torch.sqrt(1 - q0 * q0))
    )
    ctf = -torch.sin(gamma) * torch.exp(-col(params.bfactor_A2) * u2 / 4) * col(params.scale)
    return ctf.to(torch.float32)
