"""FSC/FRC against a brute-force numpy reference, known cases, resolution, STAR output."""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from conftest import shared_path
from cryogan_core.errors import InputError
from cryogan_core.metrics.fsc import fsc, fsc_2d, mean_fsc_in_band, resolution_at, ring_power_spectrum, write_fsc_star


def brute_force_fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full complex FFT, explicit shell masks round(|k|·D), shells 0..D//2."""
    d = a.shape[0]
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    k = np.fft.fftfreq(d)
    grids = np.meshgrid(*([k] * a.ndim), indexing="ij")
    shell = np.rint(np.sqrt(sum(g**2 for g in grids)) * d).astype(int)
    out = []
    for s in range(d // 2 + 1):
        m = shell == s
        num = np.real(np.sum(fa[m] * np.conj(fb[m])))
        out.append(num / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2)))
    return np.array(out)


@pytest.mark.parametrize("d", [24, 25])
def test_fsc_matches_brute_force(d: int) -> None:
    rng = np.random.default_rng(d)
    signal = rng.normal(size=(d, d, d))
    a = signal + rng.normal(size=(d, d, d))
    b = signal + rng.normal(size=(d, d, d))
    f, c = fsc(a, b, 1.5)
    assert f.shape == c.shape == (d // 2 + 1,)
    np.testing.assert_allclose(f, np.arange(d // 2 + 1) / (d * 1.5))
    np.testing.assert_allclose(c, brute_force_fsc(a, b), atol=1e-10)
    # equal signal and noise power: FSC ≈ SNR/(1+SNR) = 0.5 beyond the first shells
    assert abs(c[4:].mean() - 0.5) < 0.05


@pytest.mark.parametrize("d", [32, 33])
def test_fsc_self_is_one_and_independent_noise_is_zero(d: int) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(d, d, d))
    _, same = fsc(a, torch.tensor(a), 1.0)  # numpy and torch inputs
    np.testing.assert_allclose(same, 1.0, atol=1e-10)
    _, scaled = fsc(a, -3.0 * a, 1.0)
    np.testing.assert_allclose(scaled, -1.0, atol=1e-10)
    _, noise = fsc(a, rng.normal(size=(d, d, d)), 1.0)
    assert abs(noise[3:].mean()) < 0.05
    assert np.abs(noise[3:]).max() < 0.3


@pytest.mark.parametrize("h", [24, 25])
def test_frc_matches_brute_force_per_image(h: int) -> None:
    rng = np.random.default_rng(h)
    a = rng.normal(size=(3, h, h))
    b = a + rng.normal(size=(3, h, h)) * np.array([0.1, 1.0, 10.0])[:, None, None]
    f, c = fsc_2d(torch.tensor(a), b, 2.0)
    assert f.shape == (h // 2 + 1,) and c.shape == (3, h // 2 + 1)
    for i in range(3):
        np.testing.assert_allclose(c[i], brute_force_fsc(a[i], b[i]), atol=1e-10)
    assert c[0, 1:].mean() > c[1, 1:].mean() > c[2, 1:].mean()


def test_resolution_at_known_crossing() -> None:
    freq = np.arange(17) / (32 * 2.0)  # box 32, 2 Å: Nyquist 4 Å
    curve = 1.0 - np.arange(17) / 16.0  # crosses 0.143 at shell 16·0.857 = 13.712
    assert resolution_at(freq, curve, 0.143) == pytest.approx(64.0 / 13.712, rel=1e-9)
    assert resolution_at(freq, curve, 0.5) == pytest.approx(64.0 / 8.0, rel=1e-9)
    assert resolution_at(freq, np.ones(17), 0.143) == pytest.approx(4.0)
    below_at_1 = np.array([1.0, 0.1] + [0.9] * 15)
    assert math.isinf(resolution_at(freq, below_at_1, 0.143))
    shell0_ignored = np.array([0.0] + [0.9] * 16)
    assert resolution_at(freq, shell0_ignored, 0.143) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        resolution_at(freq, curve[:-1])


def test_mean_fsc_in_band() -> None:
    freq = np.arange(33) / (64 * 3.0)  # shells every 1/192 Å⁻¹
    curves = np.stack([np.linspace(1, 0, 33), np.full(33, 0.3)])
    got = mean_fsc_in_band(freq, curves, low_A=40.0, high_A=10.0)
    band = (freq >= 1 / 40) & (freq <= 1 / 10)
    np.testing.assert_allclose(got, curves[:, band].mean(axis=1))
    assert band.sum() == 15  # shells 5..19
    with pytest.raises(InputError):
        mean_fsc_in_band(np.arange(5) / (8 * 10.0), np.ones(5), 15.0, 10.0)  # Nyquist 20 Å


def test_write_fsc_star_round_trip(tmp_path: Path) -> None:
    freq = np.arange(5) / 40.0
    curve = np.array([1.0, 0.9, 0.5, 0.2, 0.01])
    out = tmp_path / "fsc.star"
    write_fsc_star(out, freq, curve)
    table = starfile.read(out, always_dict=True)
    assert list(table) == ["fsc"]
    df = table["fsc"]
    assert list(df.columns) == [
        "rlnSpectralIndex", "rlnResolution", "rlnAngstromResolution", "rlnFourierShellCorrelation"
    ]
    np.testing.assert_array_equal(df["rlnSpectralIndex"], np.arange(5))
    np.testing.assert_allclose(df["rlnResolution"], freq, atol=1e-6)
    np.testing.assert_allclose(df["rlnAngstromResolution"][1:], 1 / freq[1:], rtol=1e-6)
    assert df["rlnAngstromResolution"][0] == 999.0
    np.testing.assert_allclose(df["rlnFourierShellCorrelation"], curve, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsc.star"]  # no temp file left


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        fsc(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), 1.0)
    with pytest.raises(ValueError):
        fsc(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), 0.0)
    with pytest.raises(ValueError):
        fsc_2d(np.zeros((2, 8, 8)), np.zeros((3, 8, 8)), 1.0)


def test_real_half_maps() -> None:
    folder = shared_path("betagal-relion-tutorial")
    with mrcfile.open(folder / "recon_naive_half1_3.54A_box64.mrc", permissive=True) as m:
        h1 = np.asarray(m.data, dtype=np.float32)
    with mrcfile.open(folder / "recon_naive_half2_3.54A_box64.mrc", permissive=True) as m:
        h2 = np.asarray(m.data, dtype=np.float32)
    f, c = fsc(h1, h2, 3.54)
    assert f[-1] == pytest.approx(1 / 7.08)
    # SOURCES.md: 0.5 at about 18 Å, 0.143 at about 9 Å
    assert 15.0 < resolution_at(f, c, 0.5) < 22.0
    assert 7.5 < resolution_at(f, c, 0.143) < 11.0


def test_shells_up_to_keeps_a_fourier_padded_map_at_its_training_nyquist():
    # two maps that agree in a 16-px cube, Fourier-padded to 32 px (as CryoGAN writes them):
    # the cube's corners reach past its Nyquist, so the full curve stays at 1 up to shell 14
    # of 16; cut at the 16-px Nyquist, the resolution is that Nyquist and no better
    from cryogan_core.metrics.fsc import shells_up_to
    from cryogan_core.physics.resample import fourier_crop_or_pad_map

    g = torch.Generator().manual_seed(0)
    small = torch.randn(16, 16, 16, generator=g)
    a = fourier_crop_or_pad_map(small, 32)
    b = fourier_crop_or_pad_map(small + 1e-3 * torch.randn(16, 16, 16, generator=g), 32)
    freq, curve = fsc(a, b, pixel_size_A=2.0)  # training pixel 4 Å: Nyquist 8 Å
    assert resolution_at(freq, curve, 0.143) < 7.5  # the partial shells claim too much
    f, c = shells_up_to(freq, curve, 1.0 / 8.0)
    assert len(f) == 9 and f[-1] == pytest.approx(1 / 8.0) and np.array_equal(c, curve[:9])
    assert resolution_at(f, c, 0.143) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="differ in shape"):
        shells_up_to(freq, curve[:-1], 0.1)
    with pytest.raises(ValueError, match="fewer than 2 shells"):
        shells_up_to(freq, curve, 0.001)


# --------------------------------------------------------------------------- ring power spectra


def brute_force_ring_power(images: np.ndarray) -> np.ndarray:
    """Full complex FFT per image, explicit ring masks round(|k|·H): mean |F|²/H² per ring, (n, H//2+1)."""
    h = images.shape[-1]
    f = np.abs(np.fft.fft2(images)) ** 2 / h**2
    k = np.fft.fftfreq(h)
    ring = np.rint(np.hypot(*np.meshgrid(k, k, indexing="ij")) * h).astype(int)
    return np.stack([f[:, ring == r].mean(axis=1) for r in range(h // 2 + 1)], axis=1)


@pytest.mark.parametrize("box", [16, 17])
def test_ring_power_spectrum_matches_brute_force(box: int) -> None:
    x = np.random.default_rng(box).normal(size=(5, box, box)) * np.linspace(0.5, 2.0, box)  # not white
    freq, each = ring_power_spectrum(torch.tensor(x), 4.0, per_image=True)
    ref = brute_force_ring_power(x)
    np.testing.assert_allclose(each, ref, rtol=1e-10)
    np.testing.assert_allclose(ring_power_spectrum(x, 4.0)[1], ref.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(freq, np.arange(box // 2 + 1) / (box * 4.0))


@pytest.mark.parametrize("box", [32, 33])
def test_ring_power_spectrum_of_a_cosine_is_in_its_ring_and_white_noise_reads_its_variance(box: int) -> None:
    # Parseval: a·cos(2π f x / H) has Σ|F|²/H² = H²·a²/2, all of it in ring f
    f, a = 5, 3.0
    img = a * np.cos(2 * np.pi * f * np.arange(box) / box)[None, None, :].repeat(box, axis=1)
    k = np.fft.fftfreq(box)
    count = np.sum(np.rint(np.hypot(*np.meshgrid(k, k, indexing="ij")) * box) == f)
    power = ring_power_spectrum(img, 1.0)[1]
    assert power[f] * count == pytest.approx(box**2 * a**2 / 2, rel=1e-9)
    assert np.abs(np.delete(power, f)).max() < 1e-9 * power[f]
    noise = np.random.default_rng(1).normal(scale=2.0, size=(400, box, box))
    np.testing.assert_allclose(ring_power_spectrum(noise, 1.0)[1][1:], 4.0, rtol=0.1)


def test_ring_power_spectrum_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"non-empty \(n, H, H\)"):
        ring_power_spectrum(np.zeros((0, 8, 8)), 1.0)
    with pytest.raises(ValueError, match=r"non-empty \(n, H, H\)"):
        ring_power_spectrum(np.zeros((2, 8, 9)), 1.0)
    with pytest.raises(ValueError, match="pixel_size_A"):
        ring_power_spectrum(np.zeros((2, 8, 8)), 0.0)
