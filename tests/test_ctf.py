"""CTF against RELION's closed form written independently in numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryogan_core.errors import InputError
from cryogan_core.physics.ctf import CtfParams, compute_ctf
from conftest import shared_path


def relion_ctf_np(
    box: int, px: float, du: float, dv: float, ang: float, kv: float, cs: float,
    q0: float, ps: float, bf: float, scale: float, rfft: bool = True,
) -> np.ndarray:
    """RELION CTF::getCTF (protocol doc §4.3) on the numpy FFT grid, float64."""
    v = kv * 1e3
    lam = 12.2643247 / np.sqrt(v * (1 + v * 0.978466e-6))
    cs_a = cs * 1e7
    ky = np.fft.fftfreq(box, d=px)[:, None]
    kx = (np.fft.rfftfreq(box, d=px) if rfft else np.fft.fftfreq(box, d=px))[None, :]
    u2 = kx**2 + ky**2
    theta = np.arctan2(ky, kx)
    dphi = theta - np.deg2rad(ang)
    df = du * np.cos(dphi) ** 2 + dv * np.sin(dphi) ** 2
    gamma = (
        -np.pi * lam * df * u2
        + np.pi / 2 * cs_a * lam**3 * u2**2
        - np.deg2rad(ps)
        - np.arctan(q0 / np.sqrt(1 - q0**2))
    )
    return -np.sin(gamma) * np.exp(-bf * u2 / 4) * scale


CASES = [
    # du, dv, angle, kV, cs, Q0, phase, B, scale
    (15000.0, 12000.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0),
    (12000.0, 16000.0, -65.0, 300.0, 2.7, 0.07, 0.0, 0.0, 1.0),  # V > U
    (21000.0, 20500.0, 120.0, 200.0, 1.4, 0.1, 35.0, 80.0, 0.7),  # phase, B, scale
    (8000.0, 9000.0, 0.0, 100.0, 0.01, 0.2, 90.0, -20.0, 1.3),
]


def params_from_cases(cases: list[tuple]) -> CtfParams:
    """CtfParams from rows of (defocus_u_A, defocus_v_A, angle_deg, kV, Cs_mm, amplitude contrast, phase shift_deg, B-factor_A2, scale) as in ``CASES``."""
    arr = np.array(cases, dtype=np.float32)
    return CtfParams(*[torch.tensor(arr[:, i]) for i in range(9)])


@pytest.mark.parametrize("box", [32, 33])
@pytest.mark.parametrize("rfft", [True, False])
def test_matches_relion_closed_form(box: int, rfft: bool) -> None:
    px = 1.1
    got = compute_ctf(params_from_cases(CASES), box, px, rfft=rfft)
    width = box // 2 + 1 if rfft else box
    assert got.shape == (len(CASES), box, width) and got.dtype == torch.float32
    for i, c in enumerate(CASES):
        ref = relion_ctf_np(box, px, *c, rfft=rfft)
        assert np.abs(got[i].numpy() - ref).max() < 1e-3
    # the check can fail: swapping U and V moves the astigmatism
    swapped = relion_ctf_np(box, px, CASES[0][1], CASES[0][0], *CASES[0][2:], rfft=rfft)
    assert np.abs(got[0].numpy() - swapped).max() > 0.1


def test_per_particle_pixel_sizes() -> None:
    px = torch.tensor([0.9, 1.3, 2.0, 3.54])
    got = compute_ctf(params_from_cases(CASES), 24, px)
    for i, c in enumerate(CASES):
        assert np.abs(got[i].numpy() - relion_ctf_np(24, float(px[i]), *c)).max() < 1e-3


def test_dc_is_amplitude_contrast_times_scale() -> None:
    got = compute_ctf(params_from_cases(CASES), 16, 1.0)
    expected = np.array([c[5] * c[8] for c in CASES]) * np.array(
        [np.cos(np.deg2rad(c[6])) for c in CASES]
    ) + np.array([np.sqrt(1 - c[5] ** 2) * np.sin(np.deg2rad(c[6])) * c[8] for c in CASES])
    np.testing.assert_allclose(got[:, 0, 0].numpy(), expected, atol=1e-6)
    assert got[0, 0, 0].item() == pytest.approx(0.1, abs=1e-6)  # CTF(0) = +Q0 > 0


def test_params_container_behaviour() -> None:
    p = params_from_cases(CASES)
    assert len(p) == 4
    sub = p[torch.tensor([0, 2])]
    assert len(sub) == 2 and sub.defocus_u_A[1].item() == pytest.approx(21000.0)
    assert len(p[1]) == 1 and len(p[1:3]) == 2 and len(p[-1]) == 1
    assert p.to("cpu").voltage_kV.device.type == "cpu"
    with pytest.raises(ValueError):
        CtfParams(*[torch.zeros(3)] * 8, torch.zeros(2))


def test_bad_pixel_size_raises() -> None:
    p = params_from_cases(CASES)
    with pytest.raises(ValueError):
        compute_ctf(p, 16, 0.0)
    with pytest.raises(ValueError):
        compute_ctf(p, 16, torch.tensor([1.0, 2.0]))


def test_from_particles_missing_column_is_input_error() -> None:
    df = pd.DataFrame({"rlnDefocusU": [1.0]})
    with pytest.raises(InputError, match="rlnDefocusV"):
        CtfParams.from_particles(df)


def test_real_star_file_matches_reference() -> None:
    star = shared_path("betagal-relion-tutorial", "betagal_particles_posed.star")
    blocks = starfile.read(star)
    df = blocks["particles"].merge(blocks["optics"], on="rlnOpticsGroup").iloc[:20]
    params = CtfParams.from_particles(df)
    px = float(df["rlnImagePixelSize"].iloc[0])
    box = int(df["rlnImageSize"].iloc[0])
    got = compute_ctf(params, box, px)
    for i, row in enumerate(df.itertuples()):
        ref = relion_ctf_np(
            box, px, row.rlnDefocusU, row.rlnDefocusV, row.rlnDefocusAngle, row.rlnVoltage,
            row.rlnSphericalAberration, row.rlnAmplitudeContrast, row.rlnPhaseShift,
            row.rlnCtfBfactor, row.rlnCtfScalefactor,
        )
        assert np.abs(got[i].numpy() - ref).max() < 1e-3
