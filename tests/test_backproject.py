"""backproject: half maps, FSC files and resolution, on synthetic data and on the real beta-gal set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cryogan_core.commands.backproject as backproject_command
from cryogan_core.commands.backproject import half_set_labels, run_backproject
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.errors import InputError
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.mrc import read_map


def test_half_set_labels_from_column_random_split_and_errors() -> None:
    np.testing.assert_array_equal(half_set_labels(pd.DataFrame({"rlnRandomSubset": [1, 2, 2, 1]})), [1, 2, 2, 1])
    split = half_set_labels(pd.DataFrame({"x": np.zeros(11)}), seed=1)
    assert sorted(np.bincount(split)[1:]) == [5, 6]
    with pytest.raises(InputError, match="rlnRandomSubset: row 2: value 3"):
        half_set_labels(pd.DataFrame({"rlnRandomSubset": [1, 3]}))
    with pytest.raises(InputError, match=r"^half set 2 \(rlnRandomSubset == 2\) has no particles \(2 in all"):
        half_set_labels(pd.DataFrame({"rlnRandomSubset": [1, 1]}))
    with pytest.raises(InputError, match=r"^Refine3D/run_data\.star: half set 1 "):
        half_set_labels(pd.DataFrame({"rlnRandomSubset": [2]}), source="Refine3D/run_data.star")
    with pytest.raises(InputError, match=r"^p\.star: column rlnRandomSubset: row 2"):
        half_set_labels(pd.DataFrame({"rlnRandomSubset": [1, 0]}), source="p.star")


def test_synthetic_backprojection_recovers_the_map(tmp_path: Path) -> None:
    run_simulate(tmp_path / "sim", n=600, snr_db=0.0, shift_px=2.0, seed=2, box=32, pixel_size_A=6.0, project_dir=tmp_path)
    s = run_backproject(tmp_path / "sim/particles.star", tmp_path / "bp", project_dir=tmp_path)
    for name in ("run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc", "run_class001.mrc", "fsc.star", "fsc.png"):
        assert (tmp_path / "bp" / name).is_file(), name
    half1, voxel = read_map(tmp_path / "bp/run_half1_class001_unfil.mrc")
    truth, _ = read_map(tmp_path / "sim/ground_truth_map.mrc")
    assert voxel == pytest.approx(6.0)
    assert np.corrcoef(half1.ravel(), truth.ravel())[0, 1] > 0.8
    assert s["resolution_A_fsc_0.143"] < 20.0  # Nyquist 12 Å
    assert json.loads((tmp_path / "bp/summary.json").read_text())["resolution_A_fsc_0.143"] == pytest.approx(s["resolution_A_fsc_0.143"])



def test_particles_are_streamed_in_batches_with_the_same_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large set never sits in memory whole: the stacks are read BATCH_SIZE particles at a
    time, and the maps are those of one batch per half set (the insertion is a sum)."""
    run_simulate(tmp_path / "sim", n=60, snr_db=0.0, shift_px=1.0, seed=3, box=24, pixel_size_A=8.0, project_dir=tmp_path)
    run_backproject(tmp_path / "sim/particles.star", tmp_path / "one", project_dir=tmp_path)
    reads: list[int] = []
    read = ParticleImages.read
    monkeypatch.setattr(ParticleImages, "read", lambda self, rows: (reads.append(len(rows)), read(self, rows))[1])
    monkeypatch.setattr(backproject_command, "BATCH_SIZE", 7)
    run_backproject(tmp_path / "sim/particles.star", tmp_path / "batched", project_dir=tmp_path)
    assert max(reads) == 7 and sum(reads) == 60
    for name in ("run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc"):
        one, batched = read_map(tmp_path / "one" / name)[0], read_map(tmp_path / "batched" / name)[0]
        np.testing.assert_allclose(batched, one, atol=1e-5 * float(np.abs(one).max()))


@pytest.mark.realdata
def test_real_betagal_half_maps_reach_10A(betagal_dir: Path, tmp_path: Path) -> None:
    s = run_backproject(betagal_dir / "betagal_particles_posed.star", tmp_path / "bp", project_dir=betagal_dir)
    assert s["n_half1"] == 588 and s["n_half2"] == 623
    assert s["resolution_A_fsc_0.143"] <= 10.0
