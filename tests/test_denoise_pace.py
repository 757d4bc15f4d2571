"""The denoiser's advice when training, or the agreement scores of denoising every particle, would
take hours, and the callback that gives the training advice once (the scores' pace is judged in
tests/test_progress.py's job)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import cryogan_core.commands.denoise as denoise_command
from cryogan_core.commands.denoise_pace import ADVISE_ABOVE_S, pace_advice, scores_advice, train_box_for_time


@pytest.mark.parametrize(
    "train_box, eta_h, expected",
    [
        (256, 4.0, 128),  # 4x the time: half the box
        (256, 16.0, 64),  # 16x: a quarter
        (360, 2.0, 254),  # 360 / sqrt(2) = 254.6, rounded down to even
        (256, 100.0, 64),  # never below the smallest suggested box
        (256, 0.5, 256),  # already fits
        (64, 10.0, 64),  # nothing smaller to suggest
        (48, 10.0, 48),
    ],
)
def test_the_suggested_box_fits_the_time_as_the_square_of_the_box(train_box: int, eta_h: float, expected: int) -> None:
    box = train_box_for_time(train_box, eta_h * 3600.0)
    assert box == expected and box % 2 == 0
    if 64 < box < train_box:
        assert eta_h * 3600.0 * (box / train_box) ** 2 <= ADVISE_ABOVE_S


def test_bad_times_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        train_box_for_time(256, 0.0)


def test_the_advice_names_the_box_its_pixel_size_nyquist_and_time() -> None:
    assert pace_advice(256, 1.0, ADVISE_ABOVE_S, "cpu") is None
    line = pace_advice(256, 1.0, 4 * 3600.0, "cpu")
    assert line is not None
    assert "about 4.0 h more at train box 256 px on cpu" in line
    assert "--train_box 128 (2.00 Å/px, Nyquist 4.0 Å) would take about 60 min" in line
    assert "--device" in line
    gpu = pace_advice(64, 3.54, 3 * 3600.0, "cuda:0")
    assert gpu is not None and "--train_box" not in gpu and "Fewer --n_steps" in gpu and "--device" not in gpu


def test_progress_advises_once_from_the_measured_pace(monkeypatch: pytest.MonkeyPatch, log_messages: list[str]) -> None:
    clock = iter([0.0] + [10.0 * i for i in range(1, 100)])
    monkeypatch.setattr(denoise_command, "time", SimpleNamespace(time=lambda: next(clock)))  # this module's clock only
    seen: list[float] = []

    def advise(eta_s: float) -> str:
        seen.append(eta_s)
        return "ADVICE"

    on_step = denoise_command._progress(1000, 16, every_s=20.0, advise=advise)
    for step in range(1, 8):
        on_step({"step": step, "loss_g_rec": 0.1, "loss_g_gan": 1.0, "loss_d": 0.5})
    # step 1 is logged (warm-up, not used); at t = 30 s step 3 is the first measured pace: 10 s per step
    assert seen == [pytest.approx(10.0 * (1000 - 3))]
    assert sum("ADVICE" in m for m in log_messages) == 1


def test_the_scores_advice_gives_the_time_with_and_without_them() -> None:
    # 100,000 particles at 10 particles/s: 2.8 h, three quarters of it for the scores
    line = scores_advice(100_000, 10.0, 0.75)
    assert line is not None
    assert "about 2.8 h, 75 % of it for the agreement scores" in line and "without them, about 0.7 h" in line
    assert "--no_scores" in line
    assert scores_advice(30_000, 10.0, 0.75) is None  # under an hour
    assert scores_advice(100_000, 10.0, 0.2) is None  # the scores are not what makes it long
    with pytest.raises(ValueError, match="must be positive"):
        scores_advice(10, 0.0, 0.5)
