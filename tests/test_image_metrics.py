"""Image metrics against numpy references, and RELION normalisation on real particles."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from conftest import shared_path
from cryogan_core.errors import InputError
from cryogan_core.metrics.images import (
    background_signal_and_noise_variance,
    circular_mask,
    least_squares_scale,
    masked_pearson,
    normalize_background,
    psnr,
    signal_and_noise_variance,
    snr_db,
)
from cryogan_core.physics.ctf import CtfParams
from cryogan_core.physics.phantom import procedural_volume
from cryogan_core.physics.simulator import simulate_particles


def np_disc(box: int, radius: float) -> np.ndarray:
    """``(box, box)`` bool disc of ``radius`` px about RELION's centre ``box // 2`` (numpy reference)."""
    yy, xx = np.indices((box, box))
    return (yy - box // 2) ** 2 + (xx - box // 2) ** 2 <= radius**2


@pytest.mark.parametrize("box", [24, 25])
def test_circular_mask(box: int) -> None:
    m = circular_mask(box, 7.5)
    assert m.dtype == torch.bool and m.shape == (box, box)
    np.testing.assert_array_equal(m.numpy(), np_disc(box, 7.5))
    assert m[box // 2, box // 2] and m[box // 2, box // 2 + 7] and not m[box // 2, box // 2 + 8]
    assert m[box // 2, box // 2 - 7] and not m[box // 2, box // 2 - 8]  # symmetric about N//2


def test_masked_pearson_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 25, 25))
    b = a + rng.normal(size=(4, 25, 25)) * np.array([0.1, 1, 3, 10])[:, None, None]
    mask = np_disc(25, 9)
    got = masked_pearson(torch.tensor(a), torch.tensor(b), torch.tensor(mask)).numpy()
    ref = [np.corrcoef(a[i][mask], b[i][mask])[0, 1] for i in range(4)]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    ones = masked_pearson(torch.tensor(a), torch.tensor(2 * a + 3), None)
    np.testing.assert_allclose(ones.numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(masked_pearson(torch.tensor(a), torch.tensor(-a)).numpy(), -1.0, atol=1e-5)
    assert float(masked_pearson(torch.tensor(a[:1]), torch.zeros(1, 25, 25))[0]) == 0.0


def test_least_squares_scale_matches_regression() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(3, 24, 24))
    target = np.array([2.5, -0.7, 0.0])[:, None, None] * ref + 4.0 + 0.01 * rng.normal(size=ref.shape)
    mask = np_disc(24, 10)
    got = least_squares_scale(torch.tensor(target), torch.tensor(ref), torch.tensor(mask)).numpy()
    for i in range(3):
        slope = np.polyfit(ref[i][mask], target[i][mask], 1)[0]
        assert got[i] == pytest.approx(slope, abs=1e-4)
    np.testing.assert_allclose(got, [2.5, -0.7, 0.0], atol=0.01)


def test_psnr_matches_formula() -> None:
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(2, 20, 20))
    est = truth + 0.1 * rng.normal(size=truth.shape)
    got = psnr(torch.tensor(est), torch.tensor(truth)).numpy()
    ref = [10 * np.log10((truth[i].max() - truth[i].min()) ** 2 / np.mean((est[i] - truth[i]) ** 2)) for i in range(2)]
    np.testing.assert_allclose(got, ref, atol=1e-3)
    mask = np_disc(20, 6)
    got_m = psnr(torch.tensor(est), torch.tensor(truth), torch.tensor(mask)).numpy()
    ref_m = [10 * np.log10((truth[i][mask].max() - truth[i][mask].min()) ** 2
                           / np.mean((est[i][mask] - truth[i][mask]) ** 2)) for i in range(2)]
    np.testing.assert_allclose(got_m, ref_m, atol=1e-3)
    assert np.isinf(psnr(torch.tensor(truth), torch.tensor(truth)).numpy()).all()


@pytest.mark.parametrize("box", [32, 33])
def test_normalize_background(box: int) -> None:
    rng = np.random.default_rng(box)
    imgs = 5.0 + 3.0 * rng.normal(size=(3, box, box))
    imgs[:, np_disc(box, 10)] += 50.0  # a bright particle must not bias the statistics
    out = normalize_background(torch.tensor(imgs), 10).numpy()
    bg = ~np_disc(box, 10)
    np.testing.assert_allclose(out[:, bg].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, bg].std(axis=1, ddof=0), 1.0, atol=1e-5)
    ref = (imgs - imgs[:, bg].mean(1)[:, None, None]) / imgs[:, bg].std(1)[:, None, None]
    np.testing.assert_allclose(out, ref, atol=1e-4)
    flat = normalize_background(torch.full((1, box, box), 2.0), 10)
    assert float(flat.abs().max()) == 0.0
    with pytest.raises(InputError):
        normalize_background(torch.zeros(1, box, box), box)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError):
        masked_pearson(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ValueError):
        masked_pearson(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), torch.ones(7, 7, dtype=torch.bool))
    with pytest.raises(ValueError):
        least_squares_scale(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="square"):
        normalize_background(torch.zeros(2, 8, 9), 2)


def test_real_particles_are_relion_normalised() -> None:
    folder = shared_path("betagal-relion-tutorial")
    df = starfile.read(folder / "betagal_particles_posed.star")["particles"].iloc[:30]
    images = []
    for name in df["rlnImageName"]:
        index, path = name.split("@")
        with mrcfile.mmap(folder / path, permissive=True) as m:
            images.append(np.asarray(m.data[int(index) - 1], dtype=np.float32))
    x = torch.tensor(np.stack(images))
    # SOURCES.md: extracted with relion --norm --bg_radius 24 (ddof-0 std, background r > 24)
    np.testing.assert_allclose(normalize_background(x, 24).numpy(), x.numpy(), atol=2e-3)


def _simulated(box: int, target_db: float, n: int):
    """``n`` particles of a procedural volume (4 Å/px, defocus 1.1-1.2 µm, 300 kV) at
    ``target_db`` (Gupta et al. SNR), seeded by ``box``; returns ``(simulation, generator)``."""
    g = torch.Generator().manual_seed(box)
    vol = torch.from_numpy(procedural_volume(box, seed=box))
    angles = torch.rand(n, 3, generator=g) * torch.tensor([360.0, 180.0, 360.0])
    f = lambda v: torch.full((n,), float(v))  # noqa: E731
    ctf = CtfParams(f(12000), f(11000), f(20), f(300), f(2.7), f(0.1), f(0), f(0), f(1))
    return simulate_particles(vol, 4.0, angles, torch.zeros(n, 2), ctf, target_db, generator=g), g


@pytest.mark.parametrize("box, target_db", [(24, -10.0), (25, -20.0), (25, 0.0)])
def test_snr_of_simulated_particles_is_the_simulators(box: int, target_db: float) -> None:
    # the simulator sets its noise from the SNR (Gupta et al. definition); given the clean
    # images back, the estimate must read the same SNR, with an independent numpy reference
    n = 300
    sim, g = _simulated(box, target_db, n)
    sig, noise = signal_and_noise_variance(sim.noisy, sim.clean)
    clean, noisy = sim.clean.numpy().reshape(n, -1), sim.noisy.numpy().reshape(n, -1)
    np.testing.assert_allclose(sig.numpy(), clean.var(axis=1), rtol=1e-4)
    np.testing.assert_allclose(noise.numpy(), (noisy - clean).var(axis=1), rtol=1e-4)
    reference = 10 * np.log10(clean.var(axis=1).mean() / (noisy - clean).var(axis=1).mean())
    assert snr_db(sig, noise) == pytest.approx(reference, abs=1e-4)
    # 300 images of 576+ pixels: the noise variance is known to ~0.3 %
    assert snr_db(sig, noise) == pytest.approx(target_db, abs=0.1)
    # a prediction that misses part of the signal counts it as noise: the SNR reads lower
    assert snr_db(*signal_and_noise_variance(sim.noisy, 0.5 * sim.clean)) < snr_db(sig, noise) - 1.0


@pytest.mark.parametrize("box, target_db", [(24, -10.0), (25, -10.0), (25, 0.0)])
def test_pose_free_snr_reads_the_simulators_from_the_background(box: int, target_db: float) -> None:
    # no prediction: the noise is the variance outside the radius, the signal what the whole
    # box has more; the signal the CTF spreads past the radius counts as noise (reads low)
    n = 300
    sim, g = _simulated(box, target_db, n)
    radius = 0.4 * box
    sig, noise = background_signal_and_noise_variance(sim.noisy, radius)
    noisy = sim.noisy.numpy().reshape(n, -1)
    outside = ~np_disc(box, radius).reshape(-1)
    np.testing.assert_allclose(noise.numpy(), noisy[:, outside].var(axis=1), rtol=1e-4)
    np.testing.assert_allclose(sig.numpy(), noisy.var(axis=1) - noisy[:, outside].var(axis=1), rtol=1e-3, atol=1e-5)
    got = snr_db(sig, noise)
    # measured: 0.25-0.9 dB low here (5-11 % of the clean variance lies outside 0.4 x box)
    assert target_db - 1.2 < got < target_db + 0.1
    # a smaller radius leaves more signal outside it, so it reads lower still
    assert snr_db(*background_signal_and_noise_variance(sim.noisy, 0.3 * box)) < got - 0.2
    # pure noise has no signal
    pure = torch.randn(n, box, box, generator=g)
    assert abs(float(background_signal_and_noise_variance(pure, radius)[0].mean())) < 0.01


def test_pose_free_snr_bad_input() -> None:
    with pytest.raises(ValueError, match="radius_px"):
        background_signal_and_noise_variance(torch.zeros(2, 8, 8), 0.0)
    with pytest.raises(ValueError, match="square"):
        background_signal_and_noise_variance(torch.zeros(8, 8), 3.0)
    with pytest.raises(ValueError, match="square"):
        background_signal_and_noise_variance(torch.zeros(2, 8, 9), 3.0)
    with pytest.raises(InputError, match="no background pixels"):
        background_signal_and_noise_variance(torch.zeros(2, 8, 8), 6.0)


def test_snr_bad_input() -> None:
    x = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError, match="must both be"):
        signal_and_noise_variance(x, torch.zeros(3, 8, 9))
    with pytest.raises(ValueError, match="noise variance is zero"):
        snr_db(*signal_and_noise_variance(x + 1.0, x + 1.0))
    with pytest.raises(ValueError, match="no particles"):
        snr_db(torch.zeros(0), torch.zeros(0))
    assert snr_db(torch.zeros(4), torch.ones(4)) == float("-inf")
