"""cryogan-denoise as RELION runs it: 3.1 and 5.0 projects, exact command, exit files, nodes, abort, continue."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryogan_core.commands.simulate import run_simulate
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.star import read_particles
from relion_harness import (
    ABORT_NOW,
    assert_nodes_valid,
    exit_status,
    make_relion_project,
    read_output_nodes,
    run_like_relion,
    signal_job,
    wait_for,
)

FN_EXE = f"{sys.executable} -m relion_external.denoise"
FAST = {"n_steps": "4", "batch_size": "4", "base_channels": "8", "depth": "2", "disc_channels": "8", "n_report": "16", "stack_size": "50", "no_bias_controls": ""}


@pytest.fixture(scope="module")
def refine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny refined particle set (as Refine3D/job025 of a project), made once."""
    root = tmp_path_factory.mktemp("refine")
    run_simulate(root / "Refine3D/job025", n=80, snr_db=-5.0, shift_px=1.0, seed=4, box=24, pixel_size_A=8.0, project_dir=root)
    return root


def _project(tmp_path: Path, refine_dir: Path, version: str, params: dict[str, str]):
    import shutil

    shutil.copytree(refine_dir / "Refine3D", tmp_path / "Refine3D")
    return make_relion_project(
        tmp_path, version, job_number=12, params=params, nr_threads=2, fn_exe=FN_EXE,
        inputs={"in_part": "Refine3D/job025/particles.star", "in_3dref": "Refine3D/job025/ground_truth_map.mrc"},
    )


def _assert_succeeded_with_outputs(proj, tmp_path: Path, refine_dir: Path) -> None:
    """The job ended as RELION expects and wrote every output: nodes, particles, stacks, model."""
    assert exit_status(proj) == "Succeeded", (proj.job_path / "run.err").read_text()[-2000:]
    assert_nodes_valid(proj)
    names = [n[0] for n in read_output_nodes(proj)]
    assert names == ["External/job012/particles.star", "External/job012/logfile.pdf"]
    star = read_particles(tmp_path / "External/job012/particles.star", require_poses=True, require_images=True)
    df = star.particles
    assert len(df) == 80
    assert df["rlnImageName"].str.contains("@External/job012/Denoised/particles_").all()
    assert df["rlnImageOriginalName"].str.contains("@Refine3D/job025/particles.mrcs").all()
    assert {"rlnCryoganCCRaw", "rlnCryoganCCDenoised"} <= set(df.columns)
    assert np.isfinite(df["rlnCryoganCCDenoised"]).all()
    # every input column is kept
    original = read_particles(refine_dir / "Refine3D/job025/particles.star").particle_columns
    assert set(original) <= set(star.particle_columns) | {"rlnImageName"}
    # the denoised images are readable from the project directory, as RELION would
    imgs = ParticleImages(df, tmp_path, "particles.star").read(np.arange(80))
    assert imgs.shape == (80, 24, 24) and np.isfinite(imgs).all()
    # inputs are never modified; no temporary files are left behind
    assert not list((tmp_path / "External/job012").rglob("*.partial*"))
    # cryoSPARC can import the same particles (Import Result Group)
    assert (tmp_path / "External/job012/particles.cs").is_file() and (tmp_path / "External/job012/particles.csg").is_file()
    blob = torch.load(tmp_path / "External/job012/model.pt", weights_only=True)
    assert blob["format"] == "cryogan-denoiser-v1"
    err = (proj.job_path / "run.err").read_text()
    assert "Traceback" not in err


# A whole job as RELION 3.1 runs it (integer node types) here, and as RELION 5.0 runs it in
# test_abort_then_continue_resumes_from_checkpoint (5.0 labels, after a Continue!); a real
# 4.0 run is the pipeliner test's (tests/test_pipeliner_examples.py), and every version's node
# file and detection are tested end to end with a stand-in job in tests/test_job_protocol.py
def test_job_succeeds_with_nodes_as_relion_3_1_runs_it(tmp_path: Path, refine_dir: Path) -> None:
    proj = _project(tmp_path, refine_dir, "3.1", FAST)
    run_like_relion(proj, timeout=300)
    _assert_succeeded_with_outputs(proj, tmp_path, refine_dir)


def test_bad_input_fails_with_one_error_line(tmp_path: Path, refine_dir: Path) -> None:
    proj = _project(tmp_path, refine_dir, "5.0", FAST)
    proj.inputs["in_3dref"] = "Refine3D/job025/missing_map.mrc"
    run_like_relion(proj, timeout=120)
    assert exit_status(proj) == "Failed"
    err = (proj.job_path / "run.err").read_text()
    errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "missing_map.mrc" in errors[0]
    assert "Traceback" not in err


def test_unknown_param_fails_clearly(tmp_path: Path, refine_dir: Path) -> None:
    proj = _project(tmp_path, refine_dir, "4.0", {**FAST, "n_stepz": "3"})
    run_like_relion(proj, timeout=120)
    assert exit_status(proj) == "Failed"
    assert "n_stepz" in (proj.job_path / "run.err").read_text()


# RELION 5.0's whole job: aborted, continued, and then every output checked
def test_abort_then_continue_resumes_from_checkpoint(tmp_path: Path, refine_dir: Path) -> None:
    # Checkpoints come every 20 steps. The job is paused (SIGSTOP) as soon as the first one
    # appears and resumed once the abort file is there, so it sees the file at its next step
    # however loaded the machine is; the 80 steps after the checkpoint (~2 s) are margin only
    # for the test's own polling (20 ms) before the pause. The waits below are generous.
    n_steps = 100
    params = {**FAST, "n_steps": str(n_steps), "checkpoint_every": "20"}
    proj = _project(tmp_path, refine_dir, "5.0", params)
    proc = run_like_relion(proj, background=True)
    ckpt = proj.job_path / "checkpoint.pt"
    assert wait_for(ckpt.exists, timeout=600), (proj.job_path / "run.err").read_text()[-2000:]
    signal_job(proc, signal.SIGSTOP)
    (proj.job_path / ABORT_NOW).touch()
    signal_job(proc, signal.SIGCONT)
    assert wait_for(lambda: exit_status(proj) == "Aborted", timeout=300), (proj.job_path / "run.err").read_text()[-2000:]
    proc.wait(timeout=120)
    assert not (proj.job_path / ABORT_NOW).exists()
    step_at_abort = torch.load(ckpt, weights_only=True)["step_count"]
    assert 0 < step_at_abort < n_steps
    # "Continue!": the same command again on the same --o
    run_like_relion(proj, timeout=600)
    _assert_succeeded_with_outputs(proj, tmp_path, refine_dir)
    out = (proj.job_path / "run.out").read_text()
    assert "Continuing from" in out and f"at step {step_at_abort}/{n_steps}" in out
    assert torch.load(ckpt, weights_only=True)["step_count"] == n_steps
