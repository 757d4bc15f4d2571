"""Coarse-to-fine CryoGAN (``--box_final``): the run moves from box_train to box_final at
``box_final_at`` of its epochs, writes maps from the final box, and "Continue!" after the
change resumes at the final box where an uninterrupted run would be."""

from __future__ import annotations

import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from loguru import logger

import cryogan_core.commands.reconstruct as reconstruct_module
import cryogan_core.commands.reconstruct_outputs as reconstruct_outputs
from cryogan_core.commands.options import options_from_mapping
from cryogan_core.commands.reconstruct import run_reconstruct
from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.errors import InputError
from cryogan_core.metrics.align import align_half_maps

# 60 particles per half, batch 8 x 4 critic updates: an epoch is 60/32 steps, so 8 epochs
# are 15 steps and the change of box comes after step 8 (progress >= 0.5).
STAGED = {"box_train": "16", "box_final": "24", "box_final_at": "0.5", "critic_warmup": "2", "max_minutes": "0",
          "n_epochs": "8", "eval_minutes": "0", "log_seconds": "1000", "symmetry": "C1"}


@pytest.fixture(scope="module")
def sim24(tmp_path_factory) -> Path:
    """A 24-px synthetic particle set (built-in volume, 8 Å/px, 0 dB, 120 particles)."""
    root = tmp_path_factory.mktemp("sim24")
    run_simulate(root / "Simulate", n=120, snr_db=0.0, shift_px=1.0, seed=5, box=24, pixel_size_A=8.0, project_dir=root)
    return root


def _run(sim: Path, out: Path, stop_after_calls: int | None = None, with_reference: bool = False, **extra: str) -> dict:
    """run_reconstruct with STAGED (+ extra) options (and the simulation's truth as
    ``--in_3dref`` when ``with_reference``); a RELION abort after ``stop_after_calls``
    calls of should_stop (one per training iteration, one more per end of a stage; the calls
    between batches of particles being read, by ``load_images``, are not counted): ``{}``."""
    opts = options_from_mapping(ReconstructOptions, {**STAGED, **extra})
    calls = {"n": 0}

    class Stop(Exception):
        """Raised by the stop hook to interrupt a stage like a killed job."""
        pass

    def should_stop() -> None:
        """Count the calls and raise :class:`Stop` after ``stop_after_calls`` of them."""
        if sys._getframe(1).f_code.co_name == "load_images":
            return
        calls["n"] += 1
        if stop_after_calls is not None and calls["n"] > stop_after_calls:
            raise Stop

    try:
        return run_reconstruct(sim / "Simulate/particles.star", out, opts, project_dir=sim, should_stop=should_stop,
                               ref_path=sim / "Simulate/ground_truth_map.mrc" if with_reference else None)
    except Stop:
        return {}


def _record_alignments(mp: pytest.MonkeyPatch) -> list[int]:
    """Make the job's half-map alignments record their box (all are made by the training
    loop's evaluations; the outputs reuse the last); returns the list they append to, in
    call order."""
    aligned_at: list[int] = []

    def counted(half1, *args, **kwargs):  # noqa: ANN001, ANN202
        aligned_at.append(int(half1.shape[-1]))
        return align_half_maps(half1, *args, **kwargs)

    mp.setattr(reconstruct_module, "align_half_maps", counted)
    assert not hasattr(reconstruct_outputs, "align_half_maps")  # the outputs align nothing themselves
    return aligned_at


@pytest.fixture(scope="module")
def staged(sim24, tmp_path_factory) -> tuple[Path, dict, str, list[int]]:
    """One uninterrupted STAGED run, shared by the tests that read it: its output folder,
    summary, log, and the box of every half-map alignment it made. ``eval_minutes`` is far
    longer than the run, so no timed evaluation fires and the history holds the one made at
    the end of the box-16 stage (step 8) and the final one (step 15); evaluations draw from
    their own generator, so the run's maps are those of a run without them."""
    out = tmp_path_factory.mktemp("staged") / "out"
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), format="{message}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            aligned_at = _record_alignments(mp)
            summary = _run(sim24, out, eval_minutes="100")
    finally:
        logger.remove(sink)
    return out, summary, "".join(messages), aligned_at


def test_training_moves_to_the_final_box_and_writes_maps_from_it(staged):
    out, summary, err, _ = staged
    assert summary["box_train"] == 24 and summary["nyquist_train_A"] == pytest.approx(16.0)
    assert summary["steps"] == 15 and summary["stopped_by"] == "epochs"
    with mrcfile.open(out / "run_class001.mrc") as mrc:
        assert mrc.data.shape == (24, 24, 24)
        assert float(mrc.voxel_size.x) == pytest.approx(8.0)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["stage_box"] == 24 and ckpt["meta"]["box_final"] == 24
    assert ckpt["trainers"][0]["volume"]["voxels.density"].shape == (24, 24, 24)
    assert "then at 24 px" in err and "Step 8: training box 16 -> 24 px" in err
    # the blur's physical width (sigma in training px x pixel size, i.e. sigma / box) runs on
    # across the change and falls monotonically to 0 at blur_end (0.8 of the run)
    hist = ckpt["trainers"][0]["history"]
    width = [r["sigma_px"] / (16 if i < 8 else 24) for i, r in enumerate(hist)]
    assert width[0] == pytest.approx(2.0 / 16) and width[-1] == 0.0
    assert all(a >= b - 1e-9 for a, b in zip(width, width[1:]))


def test_the_map_is_evaluated_just_before_the_change_of_box(staged):
    _, summary, err, aligned_at = staged
    hist = summary["history"]
    assert [(e["step"], e["box_train"]) for e in hist] == [(8, 16), (15, 24)]
    # the final evaluation, at the particles' box, is the alignment the maps are written from
    assert aligned_at == [16, 24]
    assert summary["resolution_A_fsc_0.143"] == pytest.approx(hist[-1]["resolution_A_fsc_0.143"])
    assert err.index("(training Nyquist 24.0 Å)") < err.index("Step 8: training box 16 -> 24 px")


def test_without_box_final_the_final_evaluation_is_made_at_the_particles_box_and_written(sim24, tmp_path, monkeypatch):
    """Trained at 16 px, written at 24: the last evaluation aligns the maps Fourier-padded to
    24 px (FSC cut at the training Nyquist) and replaces a timed one made at the same step at
    16 px, and the written maps and summary come from that one alignment, so the
    resolution-vs-time curve ends at the reported resolution."""
    aligned_at = _record_alignments(monkeypatch)
    # a timed evaluation after every step; the reference makes each alignment a real search,
    # whose result depends on the box it is made at
    summary = _run(sim24, tmp_path / "out", with_reference=True, box_final="0", n_epochs="0.5", eval_minutes="1e-5")
    n = summary["steps"]
    assert n >= 1 and aligned_at == [16] * n + [24]
    assert summary["box_train"] == 16 and summary["nyquist_train_A"] == pytest.approx(24.0)
    history = summary["history"]
    assert [e["step"] for e in history] == list(range(1, n + 1)) and {e["box_train"] for e in history} == {16}
    assert history[-1]["elapsed_s"] < summary["training_time_s"]  # the replaced evaluation's time, not the end's
    for key in ("resolution_A_fsc_0.143", "resolution_A_fsc_0.5", "resolution_A_vs_reference_fsc_0.5"):
        assert history[-1][key] == pytest.approx(summary[key], rel=1e-9) and summary[key] >= 24.0 - 1e-6


def test_continue_after_the_change_resumes_at_the_final_box(sim24, staged, tmp_path, log_messages):
    full_dir, full, _, _ = staged
    part = _run(sim24, tmp_path / "part", stop_after_calls=12, eval_minutes="100")  # aborted after the change (step 8)
    assert part == {}
    ckpt = torch.load(tmp_path / "part/checkpoint.pt", weights_only=False)
    steps = ckpt["trainers"][0]["step_count"]
    assert ckpt["stage_box"] == 24 and 8 < steps < 15
    resumed = _run(sim24, tmp_path / "part", eval_minutes="100")
    assert "Continuing from" in "".join(log_messages) and f"step {steps} at 24 px" in "".join(log_messages)
    assert resumed["steps"] == full["steps"] == 15
    with mrcfile.open(full_dir / "run_half1_class001_unfil.mrc") as a, \
            mrcfile.open(tmp_path / "part/run_half1_class001_unfil.mrc") as b:
        np.testing.assert_allclose(b.data, a.data, atol=1e-4 * float(np.abs(a.data).max()))


def test_a_checkpoint_of_another_schedule_is_refused(sim24, tmp_path):
    _run(sim24, tmp_path / "out", stop_after_calls=3)
    with pytest.raises(InputError, match="made with box_final = 24, this run has 20"):
        _run(sim24, tmp_path / "out", box_final="20")


def test_critic_width_sets_the_critics_channels_and_must_match_to_continue(sim24, tmp_path):
    _run(sim24, tmp_path / "out", stop_after_calls=3, critic_width="8")
    ckpt = torch.load(tmp_path / "out/checkpoint.pt", weights_only=False)
    assert tuple(ckpt["trainers"][0]["critic_config"]["channels"]) == (8, 16, 32, 64)
    assert ckpt["trainers"][0]["critic"]["features.0.weight"].shape[0] == 8
    with pytest.raises(InputError, match="made with critic_width = 8, this run has 16"):
        _run(sim24, tmp_path / "out")


@pytest.mark.parametrize(
    "values, match",
    [
        ({"box_final": "16"}, "--box_final 16: must be larger than the first training box"),
        ({"box_final": "32"}, "--box_final 32: larger than the particles' box"),
    ],
)
def test_bad_box_final_is_refused_before_training(sim24, tmp_path, values, match):
    with pytest.raises(InputError, match=match):
        _run(sim24, tmp_path / "out", **values)


@pytest.mark.parametrize("value, shown", [("0", "0.0"), ("1", "1.0"), ("1.5", "1.5")])
def test_box_final_at_must_be_a_fraction(value, shown):
    with pytest.raises(InputError, match=f"--box_final_at {shown}: must be in \\(0, 1\\)"):
        options_from_mapping(ReconstructOptions, {"box_final_at": value})


@pytest.mark.parametrize("march", ["no", "yes"])
def test_march_option_band_limits_the_job_volume_to_the_blur(sim24, tmp_path, march):
    """``--march yes`` reaches the trainer at both boxes: with the blur still on at the end
    (blur_end 2: σ stays above 2 · 24/16 · 0.5 = 1.5 px at box 24), the voxels at box 24
    (the run stopped at step 11 of 15) hold no power beyond 0.342 · 24 / 1.5 = 5.5 shells; without marching they do."""
    _run(sim24, tmp_path / "out", stop_after_calls=12, blur_end="2", march=march)  # stopped at box 24, before the outputs
    ckpt = torch.load(tmp_path / "out/checkpoint.pt", weights_only=False)
    assert ckpt["stage_box"] == 24 and ckpt["trainers"][0]["step_count"] > 8
    assert ckpt["trainers"][0]["config"]["march"] is (march == "yes")
    density = ckpt["trainers"][0]["volume"]["voxels.density"].double().numpy()
    k = np.fft.fftfreq(24) * 24
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    spec = np.abs(np.fft.fftn(density)) ** 2
    outside = spec[radius > 0.3416 * 24 / 1.5].sum() / spec.sum()
    if march == "yes":
        assert outside < 1e-10
    else:
        assert outside > 1e-5
