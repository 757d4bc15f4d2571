"""``cryogan-reconstruct`` run exactly as RELION 3.1 and 5.0 run an External job.

The harness (tests/relion_harness.py) writes the project and job.star, builds the command
line byte for byte and reads back the exit files and RELION_OUTPUT_NODES.star; it does not
import relion_external. The data are a tiny synthetic set (16 px, the built-in volume), so
each job takes seconds: these tests check the mechanics (files, nodes, labels, abort,
continue, bad input), tests/test_cryogan_train.py checks the science.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import mrcfile
import pytest
import torch

from conftest import write_micrographs
from cryogan_core.commands.options import options_from_mapping
from cryogan_core.commands.reconstruct import run_reconstruct
from cryogan_core.commands.reconstruct_inputs import auto_training_box, training_boxes
from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.commands.simulate import run_simulate
from cryogan_core.errors import InputError
from cryogan_core.io.cryosparc import write_cryosparc_particles
from cryogan_core.io.star import read_particles
from relion_harness import (
    assert_nodes_valid,
    exit_status,
    make_relion_project,
    read_output_nodes,
    run_like_relion,
    signal_job,
    wait_for,
)

EXE = f"{sys.executable} -m relion_external.reconstruct"
FAST = {"max_minutes": "0.03", "eval_minutes": "0", "log_seconds": "0.5", "box_train": "16"}
FULL_OUTPUTS = {"symmetry": "C1", "positivity": "yes"}
EXPECTED_NODES = {
    "run_class001.mrc": (6, "DensityMap.mrc"),
    "run_half1_class001_unfil.mrc": (10, "DensityMap.mrc.halfmap"),
    "run_half2_class001_unfil.mrc": (10, "DensityMap.mrc.halfmap"),
    "logfile.pdf": (13, "LogFile.pdf.relion"),
}


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    """A 16-px synthetic particle set with its truth (built-in volume, 8 Å/px, 0 dB)."""
    root = tmp_path_factory.mktemp("sim")
    run_simulate(root / "Simulate", n=120, snr_db=0.0, shift_px=1.0, seed=3, box=16, pixel_size_A=8.0, project_dir=root)
    # the same particles as a cryoSPARC dataset (particles.cs + .csg, stacks beside them)
    write_cryosparc_particles(read_particles(root / "Simulate/particles.star"), root / "Simulate/cs", root)
    return root


def _project(tmp_path: Path, sim_dir: Path, version: str, params: dict[str, str] | None = None,
             inputs: dict[str, str] | None = None, is_continue: bool = False):
    if not (tmp_path / "Simulate").exists():
        shutil.copytree(sim_dir / "Simulate", tmp_path / "Simulate")
    return make_relion_project(
        tmp_path, version,
        inputs={"in_part": "Simulate/particles.star"} if inputs is None else inputs,
        params=dict(FAST, **(params or {})), is_continue=is_continue, nr_threads=2, fn_exe=EXE,
    )


def _err_lines(proj) -> list[str]:
    path = proj.job_path / "run.err"
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _assert_succeeded_with_outputs(proj) -> None:
    """The job ended as RELION expects and wrote every output: maps, nodes, FSCs, report, checks."""
    assert exit_status(proj) == "Succeeded"
    assert_nodes_valid(proj)
    got = {name: (code, label) for name, code, label in read_output_nodes(proj)}
    assert got == {f"External/job012/{f}": node for f, node in EXPECTED_NODES.items()}
    for name in ("fsc.star", "fsc.png", "fsc_vs_reference.star", "summary.json", "checkpoint.pt", "logfile.pdf",
                 "particles_real_vs_simulated.png", "spectra_real_vs_simulated.png", "RELION_OUTPUT_NODES.star"):
        assert (proj.job_path / name).is_file(), name
    with mrcfile.open(proj.job_path / "run_class001.mrc") as mrc:
        assert mrc.data.shape == (16, 16, 16)
        assert float(mrc.voxel_size.x) == pytest.approx(8.0)
    assert (proj.job_path / "logfile.pdf").read_bytes()[:5] == b"%PDF-"
    summary = json.loads((proj.job_path / "summary.json").read_text())
    assert summary["resolution_A_fsc_0.143"] >= 16.0  # Nyquist at 8 Å/px
    assert summary["resolution_A_vs_reference_fsc_0.5"] >= 16.0
    assert summary["n_half1"] + summary["n_half2"] == 120
    spectra = summary["spectra"]
    assert set(spectra) == {"half 1", "half 2"}
    assert spectra["half 1"]["n_particles"] == summary["n_half1"] and len(spectra["half 2"]["ratio_simulated_to_real"]) == 9
    assert "Power spectra, half 1: simulated / real particles within" in (proj.job_path / "run.out").read_text() + (proj.job_path / "run.err").read_text()
    critics = summary["critic_check"]  # each half's critic on its own, the other half's and simulated particles
    assert set(critics) == {"half 1", "half 2"}
    n_min = min(summary["n_half1"], summary["n_half2"])
    for c in critics.values():
        assert c["n_particles"] == n_min and c["memory_se"] > 0 and c["held_out_se"] > 0
        assert c["total"] == pytest.approx(c["memory"] + c["held_out"], abs=1e-9)
    assert "Critic, half 2: Wasserstein estimate" in (proj.job_path / "run.out").read_text() + (proj.job_path / "run.err").read_text()
    imports = {d["volume_out_name"]: d for d in summary["cryosparc_import"]}
    assert set(imports) == {"map", "map_half_A", "map_half_B"}
    assert Path(imports["map_half_B"]["volume_blob_path"]) == (proj.job_path / "run_half2_class001_unfil.mrc").absolute()
    assert all(d["volume_psize"] == pytest.approx(8.0) and d["job"] == "Import 3D Volumes" for d in imports.values())
    out = (proj.job_path / "run.out").read_text()
    assert "critic loss" in out and "Wasserstein" in out and "left" in out
    assert "finished successfully (4 output nodes)" in out
    assert not [line for line in _err_lines(proj) if line.startswith("ERROR")]


# A whole job as RELION 3.1 runs it (integer node types, cryoSPARC input) here, and as RELION
# 5.0 runs it in test_job_abort_saves_a_checkpoint_and_continue_resumes (after a Continue!);
# RELION 4.0's node file and version detection are tested with a stand-in job in
# tests/test_job_protocol.py (each whole job here takes about 20 s)
def test_job_succeeds_with_files_nodes_and_labels_as_relion_3_1_runs_it(tmp_path, sim_dir):
    inputs = {"in_part": "Simulate/cs/particles.cs", "in_3dref": "Simulate/ground_truth_map.mrc"}
    proj = _project(tmp_path, sim_dir, "3.1", inputs=inputs, params=FULL_OUTPUTS)
    result = run_like_relion(proj, timeout=240)
    assert result.returncode == 0, (proj.job_path / "run.err").read_text()
    _assert_succeeded_with_outputs(proj)


# RELION 5.0's whole job: aborted, continued, and then every output checked
def test_job_abort_saves_a_checkpoint_and_continue_resumes(tmp_path, sim_dir):
    inputs = {"in_part": "Simulate/particles.star", "in_3dref": "Simulate/ground_truth_map.mrc"}
    proj = _project(tmp_path, sim_dir, "5.0", inputs=inputs, params={**FULL_OUTPUTS, "max_minutes": "10"})
    proc = run_like_relion(proj, background=True)
    try:
        run_out = proj.job_path / "run.out"
        assert wait_for(lambda: run_out.exists() and "critic loss" in run_out.read_text(), timeout=120)
        (proj.job_path / "RELION_JOB_ABORT_NOW").touch()
        assert wait_for(lambda: (proj.job_path / "RELION_JOB_EXIT_ABORTED").exists(), timeout=30)
        assert proc.wait(timeout=30) == 2
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the job misbehaves
            signal_job(proc, signal.SIGKILL)
    assert exit_status(proj) == "Aborted"
    assert not (proj.job_path / "RELION_JOB_ABORT_NOW").exists()
    assert not (proj.job_path / "RELION_OUTPUT_NODES.star").exists()
    ckpt = torch.load(proj.job_path / "checkpoint.pt", weights_only=False)
    steps_before = ckpt["trainers"][0]["step_count"]
    assert steps_before >= 1

    # RELION "Continue!": same job directory, _rlnJobIsContinue 1; a short extra budget
    proj = _project(tmp_path, sim_dir, "5.0", is_continue=True, inputs=inputs,
                    params={**FULL_OUTPUTS, "max_minutes": f"{ckpt['trainers'][0]['elapsed_s'] / 60 + 0.03:.4f}"})
    run_like_relion(proj, timeout=240)
    assert exit_status(proj) == "Succeeded", (proj.job_path / "run.err").read_text()
    assert "Continuing from" in (proj.job_path / "run.out").read_text()
    summary = json.loads((proj.job_path / "summary.json").read_text())
    assert summary["steps"] > steps_before
    _assert_succeeded_with_outputs(proj)


# one case per place bad input is caught: the job's file checks, the options' checks (every
# option's own checks and conversions are unit-tested in test_options.py, test_models.py and
# test_job_protocol.py) and the parsing of RELION's command line
@pytest.mark.parametrize(
    "params, inputs, expected",
    [
        ({}, {"in_part": "Simulate/missing.star"}, "--in_parts Simulate/missing.star: file not found"),
        ({"box_train": "8"}, None, "--box_train 8: must be >= 16"),
        ({"box_trian": "16"}, None, "unknown parameter --box_trian"),
    ],
)
def test_bad_input_is_one_error_line_and_failure(tmp_path, sim_dir, params, inputs, expected):
    proj = _project(tmp_path, sim_dir, "4.0", params=params, inputs=inputs)
    result = run_like_relion(proj, timeout=120)
    assert result.returncode == 1
    assert exit_status(proj) == "Failed"
    errors = [line for line in _err_lines(proj) if line.startswith("ERROR")]
    assert len(errors) == 1 and expected in errors[0], _err_lines(proj)
    assert "Traceback" not in (proj.job_path / "run.err").read_text()
    assert not (proj.job_path / "RELION_OUTPUT_NODES.star").exists()


def test_options_from_mapping_converts_and_checks():
    opts = options_from_mapping(ReconstructOptions, {"box_train": "32", "positivity": "no", "lr": "1e-3", "symmetry": "D2"})
    assert (opts.box_train, opts.positivity, opts.lr, opts.symmetry) == (32, False, 1e-3, "D2")
    assert options_from_mapping(ReconstructOptions, {}) == ReconstructOptions()
    for bad, match in [({"n_critic": "0"}, "--n_critic 0: must be > 0"), ({"critic_width": "0"}, "--critic_width 0: must be > 0"),
                       ({"noise": "pink"}, "--noise pink"),
                       ({"positivity": "maybe"}, "expected yes or no"), ({"lr_gamma": "1.5"}, "--lr_gamma 1.5")]:
        with pytest.raises(InputError, match=match):
            options_from_mapping(ReconstructOptions, bad)


@pytest.mark.parametrize(
    "box, pixel_A, expected",
    [
        (64, 3.54, 32),  # the β-gal tutorial particles: the benchmarks' training box, Nyquist 14.2 Å
        (256, 1.06, 38),  # a usual RELION box: 38.8 rounds to 38 (Nyquist 14.3 Å)
        (400, 0.83, 48),
        (24, 8.0, 24),  # already coarser than 14 Å: the particles' own box, never padded
        (33, 8.0, 33),  # odd boxes too
        (200, 0.5, 16),  # never below the critic's smallest box
    ],
)
def test_box_train_0_aims_at_a_14_A_nyquist(box, pixel_A, expected):
    boxes = training_boxes(options_from_mapping(ReconstructOptions, {}), box, pixel_A, Path("p.star"))
    assert boxes == [expected] == [auto_training_box(box, pixel_A)]
    nyquist = 2 * pixel_A * box / expected
    if 16 < expected < box:
        assert abs(nyquist - 14.0) <= 2 * pixel_A * box * (1 / (expected - 1) - 1 / expected)  # nearest even box
    # an explicit box is kept, and box_final must exceed the automatic one
    assert training_boxes(options_from_mapping(ReconstructOptions, {"box_train": str(box)}), box, pixel_A, Path("p.star")) == [box]
    if expected < box:
        with pytest.raises(InputError, match=rf"--box_final {expected}: must be larger than the first training box \({expected} px\)"):
            training_boxes(options_from_mapping(ReconstructOptions, {"box_final": str(expected)}), box, pixel_A, Path("p.star"))


def test_standalone_run_rejects_box_train_above_the_box(tmp_path, sim_dir):
    with pytest.raises(InputError, match="--box_train 32: larger than the particles' box"):
        run_reconstruct(sim_dir / "Simulate/particles.star", tmp_path / "out", options_from_mapping(ReconstructOptions, {"box_train": "32"}),
                        project_dir=sim_dir)


def test_standalone_run_takes_its_noise_from_micrographs(tmp_path, sim_dir, log_messages):
    shutil.copytree(sim_dir / "Simulate", tmp_path / "Simulate")
    mics, _ = write_micrographs(tmp_path, mic_pixel_A=8.0, side=96, picks_xy=())
    opts = options_from_mapping(ReconstructOptions, dict(FAST, noise="micrographs"))
    summary = run_reconstruct(tmp_path / "Simulate/particles.star", tmp_path / "out", opts, project_dir=tmp_path,
                              mics_path=mics)
    assert any("background windows of 16 px cut from the micrographs" in m for m in log_messages), log_messages
    assert summary["steps"] > 0 and (tmp_path / "out" / "run_class001.mrc").is_file()


def test_noise_micrographs_without_in_mics_is_a_clear_error(tmp_path, sim_dir):
    opts = options_from_mapping(ReconstructOptions, dict(FAST, noise="micrographs"))
    with pytest.raises(InputError, match="--noise micrographs needs --in_mics"):
        run_reconstruct(sim_dir / "Simulate/particles.star", tmp_path / "out", opts, project_dir=sim_dir)
