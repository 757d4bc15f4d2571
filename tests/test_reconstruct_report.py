"""CryoGAN's report figures and PDF summary page (``cryogan_core.report.reconstruct_report``)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cryogan_core.report.reconstruct_report import (
    format_duration,
    loss_figures,
    resolution_vs_time_figure,
    slices_figure,
    summary_lines,
)


@pytest.mark.parametrize("seconds, text", [(3723, "1h02m03s"), (245.4, "4m05s"), (12.4, "12s"), (-3, "0s"),
                                           (math.nan, "?"), (math.inf, "?")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("box", [15, 16])
def test_slices_are_the_central_z_y_x_planes(box: int) -> None:
    """Odd and even boxes: the planes through index box // 2 (RELION's centre), in (z, y, x) order."""
    vol = np.random.default_rng(0).random((box, box, box)).astype(np.float32)
    fig = slices_figure({"a": vol, "b": 2 * vol}, "t")
    try:
        axes = np.array(fig.axes).reshape(2, 3)
        c = box // 2
        for row, v in zip(axes, (vol, 2 * vol)):
            shown = [np.asarray(ax.images[0].get_array()) for ax in row]
            for got, want in zip(shown, (v[c], v[:, c], v[:, :, c])):
                np.testing.assert_array_equal(got, want)
        assert [ax.get_title() for ax in axes[0]] == ["central z slice", "central y slice", "central x slice"]
    finally:
        plt.close(fig)


def _history(n: int, w: float) -> list[dict[str, float]]:
    return [{"wasserstein": w, "loss_critic": -w, "loss_gen": 2 * w} for _ in range(n)]


def test_loss_figures_cut_to_the_shortest_half_and_keep_constant_curves() -> None:
    assert loss_figures([[], _history(5, 1.0)]) == []
    figs = loss_figures([_history(300, 1.5), _history(250, 0.5)])
    try:
        assert len(figs) == 2
        critic, generator = figs
        lines = {ln.get_label(): ln.get_ydata() for ln in critic.axes[0].get_lines()}
        assert set(lines) == {"Wasserstein estimate, half 1", "critic loss, half 1",
                              "Wasserstein estimate, half 2", "critic loss, half 2"}
        w1 = np.asarray(lines["Wasserstein estimate, half 1"])
        assert len(w1) == 250
        # a running mean of a constant is that constant away from the ends (window 2 at 250 steps)
        np.testing.assert_allclose(w1[5:-5], 1.5)
        g = {ln.get_label(): np.asarray(ln.get_ydata()) for ln in generator.axes[0].get_lines()}
        np.testing.assert_allclose(g["generator loss, half 2"][5:-5], 1.0)
    finally:
        for f in figs:
            plt.close(f)


def test_resolution_vs_time_draws_the_reference_curve_only_with_a_reference() -> None:
    evals = [{"elapsed_s": 60.0, "resolution_A_fsc_0.143": 20.0, "resolution_A_fsc_0.5": 40.0},
             {"elapsed_s": 120.0, "resolution_A_fsc_0.143": 15.0, "resolution_A_fsc_0.5": 30.0,
              "resolution_A_vs_reference_fsc_0.5": 35.0}]
    for with_ref, n_lines in ((False, 2), (True, 3)):
        fig = resolution_vs_time_figure(evals, with_reference=with_ref)
        try:
            lines = {ln.get_label(): (np.asarray(ln.get_xdata()), np.asarray(ln.get_ydata())) for ln in fig.axes[0].get_lines()}
            assert len(lines) == n_lines
            x, y = lines["half-map FSC 0.5"]
            np.testing.assert_allclose(x, [1.0, 2.0])  # minutes
            np.testing.assert_allclose(y, [40.0, 30.0])
            if with_ref:
                _, r = lines["average vs reference, FSC 0.5"]
                assert math.isnan(r[0]) and r[1] == 35.0
        finally:
            plt.close(fig)


SUMMARY = {"options": {"symmetry": "D2", "seed": 3}, "n_particles": 10, "n_half1": 4, "n_half2": 6,
           "estimated_snr_db": -12.04, "box": 64, "pixel_size_A": 3.54, "box_train": 32, "nyquist_train_A": 14.16,
           "steps": 100, "epochs": 2.5, "training_time_s": 65.0, "stopped_by": "time budget",
           "resolution_A_fsc_0.143": 18.26}


def test_summary_page_lines() -> None:
    page = "\n".join(summary_lines(SUMMARY, low_snr_db=-15.0))
    assert "10 (4 / 6)" in page and "-12.0" in page and "D2; 3" in page and "1m05s" in page and "18.3 Å" in page
    assert "with the reference" not in page and "run another seed" not in page
    page = "\n".join(summary_lines({**SUMMARY, "resolution_A_vs_reference_fsc_0.5": 21.04}, low_snr_db=-10.0))
    assert "FSC 0.5 with the reference (aligned)" in page and "21.0 Å" in page
    assert "Below -10 dB" in page and "run another seed" in page


def test_summary_page_names_a_missing_entry() -> None:
    bad = {k: v for k, v in SUMMARY.items() if k != "steps"}
    with pytest.raises(KeyError, match="steps"):
        summary_lines(bad, low_snr_db=-15.0)


def test_montage_tiles_each_row_and_scales_each_particle_alone() -> None:
    from cryogan_core.report.plots import montage_figure
    rng = np.random.default_rng(0)
    faint = rng.normal(size=(10, 12, 12))
    bright = 1000.0 * faint + 5.0  # the same particles at another scale and offset
    fig = montage_figure({"faint": faint, "bright": bright}, n_columns=4, title="t")
    try:
        assert len(fig.axes) == 2 and [a.get_ylabel() for a in fig.axes] == ["faint", "bright"]
        tiled = [np.ma.filled(a.get_images()[0].get_array(), np.nan) for a in fig.axes]
        gap = 12 // 16 or 1
        assert tiled[0].shape == (12, 4 * 12 + 3 * gap)
        np.testing.assert_allclose(tiled[0], tiled[1], atol=1e-6, equal_nan=True)  # own 1st-99th percentile each
        assert np.isnan(tiled[0][:, 12]).all() and np.nanmin(tiled[0]) == 0.0 and np.nanmax(tiled[0]) == 1.0
    finally:
        plt.close(fig)
