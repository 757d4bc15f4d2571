"""The map's predictions made at the training box: the crop of the full-box predictions,
and training pairs and SNR as the full-box route gives them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryogan_core.commands._common import map_for_particles
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.particles import load_particles
from cryogan_core.metrics.images import circular_mask, signal_and_noise_variance, snr_db
from cryogan_core.physics.resample import fourier_crop_images
from cryogan_core.train.pairs import (
    PairSettings,
    build_pairs,
    full_box_pairs,
    prediction_box,
    predictions,
    project_at_box,
    train_box_pairs,
)
from cryogan_core.train.reference_maps import MapsForPixel


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=[64, 45], ids=["even", "odd"])
def simulated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A simulated set at -5 dB with shifts and CTF, its map and lazy images."""
    box = request.param
    root = tmp_path_factory.mktemp(f"tb{box}")
    run_simulate(root / "sim", n=48, snr_db=-5.0, shift_px=2.0, seed=4, box=box, pixel_size_A=4.0, project_dir=root)
    star = load_particles(root / "sim/particles.star", require_poses=True)
    df = star.particles.reset_index(drop=True)
    volume = map_for_particles(root / "sim/ground_truth_map.mrc", 4.0, box)
    images = ParticleImages(df, root, root / "sim/particles.star")
    return {"df": df, "volume": volume, "images": images, "box": box}


@pytest.mark.parametrize("with_ctf", [True, False])
def test_predictions_at_a_smaller_box_are_the_crop_of_the_full_box_predictions(simulated: dict, with_ctf: bool) -> None:
    s = simulated
    full = predictions(s["df"], lambda p: s["volume"], with_ctf)
    for box_out in (s["box"] // 2, s["box"] // 2 + 1):
        small = predictions(s["df"], lambda p: s["volume"], with_ctf, box_out=box_out)
        assert small.shape == (len(s["df"]), box_out, box_out)
        # same scale (no fitted factor) and the same image within interpolation error
        assert _relative_difference(small, fourier_crop_images(full, box_out)) < 0.03
    # box_out equal to the map's box is the ordinary prediction
    assert torch.equal(predictions(s["df"], lambda p: s["volume"], with_ctf, box_out=s["box"]), full)


def test_a_box_out_above_the_map_s_box_is_refused(simulated: dict) -> None:
    with pytest.raises(ValueError, match="box_out"):
        predictions(simulated["df"].iloc[:2], lambda p: simulated["volume"], box_out=simulated["box"] + 2)


def test_maps_for_pixel_makes_each_map_and_crop_once(simulated: dict) -> None:
    made: list[float] = []

    def make(p: float) -> torch.Tensor:
        made.append(p)
        return simulated["volume"] * p

    maps = MapsForPixel(make)
    a, b = maps(4.0), maps(4.0)
    assert a is b and made == [4.0]
    c1, c2 = maps.cropped(4.0, 24), maps.cropped(4.0, 24)
    assert c1 is c2 and c1.shape == (24, 24, 24) and made == [4.0]
    assert maps.cropped(4.0, simulated["box"]) is a
    maps(2.0)
    assert made == [4.0, 2.0]
    # one Projector per map and box, made once
    p1 = maps.projector(4.0, 24)
    assert maps.projector(4.0, 24) is p1 and p1.box == 24 and maps.projector(4.0, simulated["box"]).box == simulated["box"]
    # the cached crops and projectors give the same predictions, bit for bit, as making them on each call
    df = simulated["df"].iloc[:6]
    for box_out in (24, None):
        assert torch.equal(predictions(df, maps, box_out=box_out), predictions(df, lambda p: make(p), box_out=box_out))


def test_a_projector_of_another_box_is_refused(simulated: dict) -> None:
    s = simulated
    angles, origins = torch.zeros(2, 3), torch.zeros(2, 2)
    maps = MapsForPixel(lambda p: s["volume"])
    with pytest.raises(ValueError, match=f"the projector's map is 24 px; this prediction projects a {s['box']}-px map"):
        project_at_box(s["volume"], angles, origins, 4.0, projector=maps.projector(4.0, 24))
    m = prediction_box(s["box"], 20)
    with pytest.raises(ValueError, match=f"this prediction projects a {m}-px map"):
        project_at_box(s["volume"], angles, origins, 4.0, box_out=20, projector=maps.projector(4.0, s["box"]))


def test_pairs_at_the_particles_box_are_the_full_box_pairs(simulated: dict) -> None:
    s = simulated
    box = s["box"]
    settings = PairSettings(box, box, 0.375 * box, 0.45 * box)
    raw = torch.from_numpy(s["images"].read(np.arange(16)))
    batch = train_box_pairs(raw, s["df"].iloc[:16], lambda p: s["volume"], settings)
    _, x_full, ref_ctf, target, slope = full_box_pairs(raw, s["df"].iloc[:16], lambda p: s["volume"], settings,
                                                       circular_mask(box, settings.mask_radius_px))
    assert torch.allclose(batch.inputs, x_full) and torch.allclose(batch.targets, target, atol=1e-6)
    assert torch.allclose(batch.slope, slope)
    sv, nv = signal_and_noise_variance(x_full, ref_ctf)
    assert torch.allclose(batch.signal_var, sv) and torch.allclose(batch.noise_var, nv)


@pytest.mark.parametrize("ctf_targets", [True, False])
def test_pairs_at_a_smaller_training_box_match_the_cropped_full_box_pairs(simulated: dict, ctf_targets: bool) -> None:
    s = simulated
    box = s["box"]
    tb = box // 2 + 1
    settings = PairSettings(box, tb, 0.375 * box, 0.45 * box, ctf_targets=ctf_targets)
    rows = np.arange(len(s["df"]))
    pairs = build_pairs(s["images"], s["df"], rows, MapsForPixel(lambda p: s["volume"]), settings, batch_size=20)
    assert pairs["targets"].shape == (len(rows), tb, tb)
    # the independent route: everything at the particles' box, then the crop
    raw = torch.from_numpy(s["images"].read(rows))
    transform, x_full, ref_ctf, target, slope = full_box_pairs(raw, s["df"], lambda p: s["volume"], settings,
                                                               circular_mask(box, settings.mask_radius_px))
    assert torch.equal(pairs["inputs"], transform.crop(x_full))
    assert _relative_difference(pairs["targets"], transform.crop(target)) < 0.03
    assert _relative_difference(pairs["reference_ctf"], transform.crop(ref_ctf)) < 0.03
    # the slope stays in the full-box normalisation's units (synthetic pairs use it there)
    assert float(pairs["slope"].median()) == pytest.approx(float(slope.median()), rel=0.03)
    # the SNR keeps its whole-box definition with the prediction up to the training box's
    # Nyquist: the signal beyond it counts as noise, so it reads a little lower (-5 dB simulated)
    snr = snr_db(pairs["signal_var"], pairs["noise_var"])
    low_passed = fourier_crop_images(fourier_crop_images(ref_ctf, tb), box)
    assert snr == pytest.approx(snr_db(*signal_and_noise_variance(x_full, low_passed)), abs=0.1)
    assert snr_db(*signal_and_noise_variance(x_full, ref_ctf)) - 0.5 < snr < snr_db(*signal_and_noise_variance(x_full, ref_ctf)) + 0.05
    assert snr == pytest.approx(-5.0, abs=0.5)


def test_each_optics_group_is_predicted_from_its_own_map_at_the_smaller_box(simulated: dict) -> None:
    s = simulated
    df = s["df"].iloc[:12].copy()
    df.loc[df.index[6:], "rlnImagePixelSize"] = 4.4  # a second optics group, its map resampled for it
    maps = {4.0: s["volume"], 4.4: 0.5 * s["volume"]}
    made: list[float] = []
    cache = MapsForPixel(lambda p: made.append(round(p, 3)) or maps[round(p, 3)])
    tb = s["box"] // 2
    both = predictions(df, cache, box_out=tb)
    for rows in (slice(0, 6), slice(6, 12)):
        part = df.iloc[rows]
        alone = fourier_crop_images(predictions(part, lambda p: maps[round(p, 3)]), tb)
        assert _relative_difference(both[rows], alone) < 0.03
    predictions(df, cache, box_out=tb)
    assert sorted(made) == [4.0, 4.4]  # each group's map made once, however often it is cropped and projected
