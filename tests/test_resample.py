"""Fourier resampling keeps the centre at N//2, the physical integral, and is invertible."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch

from conftest import shared_path
from cryogan_core.errors import InputError
from cryogan_core.physics.resample import (
    fourier_crop_images,
    fourier_crop_or_pad_map,
    resample_map,
)


def gaussian_map(d: int, px_A: float, sigma_A: float, centre_A: tuple[float, float, float] = (0, 0, 0)) -> np.ndarray:
    """Analytic Gaussian sampled on a d³ grid with pixel px_A, centre index d//2 (+ offset)."""
    c = (np.arange(d) - d // 2) * px_A
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r2 = (x - centre_A[0]) ** 2 + (y - centre_A[1]) ** 2 + (z - centre_A[2]) ** 2
    return np.exp(-r2 / (2 * sigma_A**2))


def gaussian_images(n: int, h: int, px_A: float, sigma_A: float, shift_A: float = 0.0) -> np.ndarray:
    """``(n, h, h)`` Gaussian spots of width ``sigma_A`` on a ``px_A`` grid, centred at ``h // 2`` plus (shift_A, -shift_A/2)."""
    c = (np.arange(h) - h // 2) * px_A
    y, x = np.meshgrid(c, c, indexing="ij")
    g = np.exp(-((x - shift_A) ** 2 + (y + 0.5 * shift_A) ** 2) / (2 * sigma_A**2))
    return np.repeat(g[None], n, axis=0)


@pytest.mark.parametrize("d_in,d_out", [(32, 24), (33, 24), (32, 33), (33, 32), (24, 48), (25, 40), (32, 17)])
def test_map_resize_matches_analytic_gaussian(d_in: int, d_out: int) -> None:
    px_in = 2.0
    px_out = px_in * d_in / d_out
    sigma = 5.0  # Å: band-limited at both pixel sizes
    offset = (3.0, -4.0, 1.5)
    v = torch.tensor(gaussian_map(d_in, px_in, sigma, offset), dtype=torch.float32)
    out = fourier_crop_or_pad_map(v, d_out).numpy()
    assert out.shape == (d_out,) * 3
    expected = gaussian_map(d_out, px_out, sigma, offset)
    assert np.abs(out - expected).max() < 2e-3
    # physical integral Σ v·pixel³ is kept
    assert out.sum() * px_out**3 == pytest.approx(v.numpy().sum() * px_in**3, rel=1e-3)


@pytest.mark.parametrize("d", [32, 33])
def test_centred_blob_stays_at_centre(d: int) -> None:
    v = torch.tensor(gaussian_map(d, 1.0, 2.5), dtype=torch.float32)
    for d_out in (d - 7, d + 6, d + 1, d - 1):
        out = fourier_crop_or_pad_map(v, d_out)
        assert np.unravel_index(int(out.argmax()), out.shape) == (d_out // 2,) * 3


@pytest.mark.parametrize("d", [16, 17])
def test_pad_then_crop_is_identity(d: int) -> None:
    gen = torch.Generator().manual_seed(d)
    v = torch.randn(d, d, d, generator=gen)
    for big in (2 * d, 2 * d + 1):
        back = fourier_crop_or_pad_map(fourier_crop_or_pad_map(v, big), d)
        np.testing.assert_allclose(back.numpy(), v.numpy(), atol=1e-4)
    imgs = torch.randn(3, d, d, generator=gen)
    np.testing.assert_allclose(fourier_crop_images(fourier_crop_images(imgs, 3 * d), d).numpy(), imgs.numpy(), atol=1e-4)


def test_resample_3p54_to_1p77_and_back_is_identity() -> None:
    v = torch.tensor(gaussian_map(32, 3.54, 8.0, (7.0, -3.0, 5.0)), dtype=torch.float32)
    fine = resample_map(v, 3.54, 1.77, 64)
    assert fine.shape == (64, 64, 64)
    np.testing.assert_allclose(fine.numpy(), gaussian_map(64, 1.77, 8.0, (7.0, -3.0, 5.0)), atol=2e-3)
    back = resample_map(fine, 1.77, 3.54, 32)
    np.testing.assert_allclose(back.numpy(), v.numpy(), atol=1e-4)


@pytest.mark.parametrize("d,box_out", [(32, 40), (33, 30), (32, 31)])
def test_resample_non_integer_ratio_and_box_change(d: int, box_out: int) -> None:
    # 2.0 Å -> 1.5 Å needs a padded box with D'·4/3 integral; the centre must stay N//2
    v = torch.tensor(gaussian_map(d, 2.0, 6.0, (4.0, 2.0, -3.0)), dtype=torch.float32)
    out = resample_map(v, 2.0, 1.5, box_out).numpy()
    assert out.shape == (box_out,) * 3
    np.testing.assert_allclose(out, gaussian_map(box_out, 1.5, 6.0, (4.0, 2.0, -3.0)), atol=3e-3)


@pytest.mark.parametrize("h,box_out", [(32, 16), (33, 16), (32, 21), (31, 24)])
def test_fourier_crop_images(h: int, box_out: int) -> None:
    px = 1.5
    imgs = torch.tensor(gaussian_images(2, h, px, 4.5, shift_A=3.0), dtype=torch.float32)
    out = fourier_crop_images(imgs, box_out).numpy()
    assert out.shape == (2, box_out, box_out)
    np.testing.assert_allclose(out, gaussian_images(2, box_out, px * h / box_out, 4.5, shift_A=3.0), atol=2e-3)


def _centred_resize_reference(x: np.ndarray, n_out: int, axes: tuple[int, ...]) -> np.ndarray:
    """numpy reference of the module's convention on centred spectra (DC at n//2): a crop keeps
    frequencies -n_out//2 .. (n_out-1)//2 and folds +n_out/2 into the output's Nyquist bin
    (even n_out); a pad puts the spectrum in the middle of zeros and shares the one-sided
    -n/2 coefficient half/half with +n/2 (even n); back to a centre at n_out//2, values kept."""
    n = x.shape[axes[0]]
    spec = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes), axes=axes)
    for ax in axes:
        first = [slice(None)] * x.ndim
        first[ax] = slice(0, 1)
        if n_out <= n:
            start = n // 2 - n_out // 2
            out = np.take(spec, np.arange(start, start + n_out), axis=ax)
            if n_out % 2 == 0 and n_out < n:
                out[tuple(first)] += np.take(spec, [n // 2 + n_out // 2], axis=ax)
        else:
            shape = list(spec.shape)
            shape[ax] = n_out
            out = np.zeros(shape, dtype=complex)
            offset = n_out // 2 - n // 2
            where = [slice(None)] * x.ndim
            where[ax] = slice(offset, offset + n)
            out[tuple(where)] = spec
            if n % 2 == 0:
                lo, hi = list(first), list(first)
                lo[ax] = slice(offset, offset + 1)
                hi[ax] = slice(offset + n, offset + n + 1)
                out[tuple(lo)] *= 0.5
                out[tuple(hi)] = out[tuple(lo)]
        spec = out
    back = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(spec, axes=axes), axes=axes), axes=axes).real
    return back * (n_out / n) ** len(axes)


@pytest.mark.parametrize("h,box_out", [(16, 8), (17, 8), (16, 9), (17, 9), (64, 47), (63, 32), (5, 2), (4, 1),
                                       (8, 16), (8, 17), (9, 16), (9, 17), (16, 33), (2, 5)])
def test_resizing_noise_matches_the_centred_spectrum_reference(h: int, box_out: int) -> None:
    """White noise fills every frequency up to Nyquist, so the even-size Nyquist rules and the
    centre's phase (odd and even boxes, cropped and padded) are all checked, images and maps."""
    rng = np.random.default_rng(h * 100 + box_out)
    imgs = rng.standard_normal((3, h, h))
    got = fourier_crop_images(torch.tensor(imgs, dtype=torch.float32), box_out).numpy()
    np.testing.assert_allclose(got, _centred_resize_reference(imgs, box_out, (-2, -1)), atol=2e-5)
    vol = rng.standard_normal((h, h, h))
    got3 = fourier_crop_or_pad_map(torch.tensor(vol, dtype=torch.float32), box_out).numpy()
    np.testing.assert_allclose(got3, _centred_resize_reference(vol, box_out, (-3, -2, -1)), atol=2e-5)


def test_bad_inputs() -> None:
    v = torch.zeros(8, 8, 8)
    with pytest.raises(InputError):
        resample_map(v, 0.0, 1.0, 8)
    with pytest.raises(ValueError):
        fourier_crop_or_pad_map(torch.zeros(8, 8, 9), 4)
    with pytest.raises(ValueError):
        fourier_crop_images(torch.zeros(2, 8, 9), 4)
    with pytest.raises(InputError):
        # an irrational-looking ratio that no box up to 4·D achieves to 1e-9
        resample_map(torch.zeros(4, 4, 4), 1.0, 0.7071, 4, rel_tol=1e-9)


def test_real_map_downsample_keeps_integral_and_centre() -> None:
    path = shared_path("betagal-relion-tutorial", "betagal_5a1a_sim_relionframe_3.54A_box64.mrc")
    with mrcfile.open(path, permissive=True) as m:
        v = torch.tensor(np.asarray(m.data, dtype=np.float32))
    small = fourier_crop_or_pad_map(v, 32)  # 7.08 Å
    assert float(small.sum()) * 7.08**3 == pytest.approx(float(v.sum()) * 3.54**3, rel=1e-3)

    def com(x: torch.Tensor) -> np.ndarray:
        """Centre of mass (voxels from ``d // 2``, in the array's axis order) of the volume's positive part."""
        d = x.shape[0]
        w = x.clamp_min(0)
        return np.array([float((w * (torch.arange(d) - d // 2).reshape(s)).sum() / w.sum())
                         for s in [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]])

    # centre of mass in Å (relative to the N//2 centre) is unchanged
    np.testing.assert_allclose(com(small) * 7.08, com(v) * 3.54, atol=0.5)
