"""The ``cryogan`` command line: commands run end to end, and bad input gives one ERROR line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cryogan_core.cli import main


def _cryogan(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryogan_core.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_simulate_then_check_poses_json(tmp_path: Path) -> None:
    r = _cryogan("simulate", "--o", "sim", "--n", "60", "--box", "24", "--pixel-size", "8", "--snr-db", "0", "--shift-px", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sim/particles.star").is_file() and (tmp_path / "sim/clean.mrcs").is_file()
    r = _cryogan("check-poses", "--i", "sim/particles.star", "--map", "sim/ground_truth_map.mrc", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_particles"] == 60 and out["cc_true_poses"] > out["cc_shuffled_poses"] + 0.3


@pytest.mark.parametrize(
    "args, expected",
    [
        (["check-poses", "--i", "missing.star", "--map", "m.mrc"], "missing.star"),
        (["backproject", "--i", "bad.star", "--o", "out"], "bad.star"),
        (["simulate", "--map", "notamap.mrc", "--o", "out", "--n", "4"], "notamap.mrc"),
        (["reconstruct", "--o", "out"], "--in_parts"),
    ],
)
def test_bad_input_gives_one_error_line_and_exit_1(tmp_path: Path, args: list[str], expected: str) -> None:
    (tmp_path / "bad.star").write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n000001@x.mrcs 1 2 3\n")
    (tmp_path / "notamap.mrc").write_text("this is not an MRC file")
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as cwd:
        for name in ("bad.star", "notamap.mrc"):
            (Path(cwd) / name).write_bytes((tmp_path / name).read_bytes())
        result = runner.invoke(main, args)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()] if hasattr(result, "stderr") else []
    errors = [line for line in lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and expected in errors[0], result.output
    assert "Traceback" not in result.output


# values no particle set can be made from or measured with: each is named in one line before
# any file is read or any folder made (they raised tracebacks, or ran on with NaN, before)
BAD_VALUES = [
    (["simulate", "--n", "0"], "--n 0: must be >= 1"),
    (["simulate", "--snr-db", "nan"], "--snr-db nan: must be a finite number of dB"),
    (["simulate", "--shift-px", "-1"], "--shift-px -1.0: must be >= 0"),
    (["simulate", "--box", "8"], "--box 8: the built-in volume needs a box of at least 16 px"),
    (["simulate", "--pixel-size", "0"], "--pixel-size 0.0: must be > 0"),
    (["check-poses", "--i", "p.star", "--map", "m.mrc", "--n", "-3"], "--n -3: must be >= 0"),
    (["check-poses", "--i", "p.star", "--map", "m.mrc", "--mask-radius-px", "nan"], "--mask-radius-px nan: must be > 0"),
    (["backproject", "--i", "p.star", "--wiener-constant", "-1"], "--wiener-constant -1.0: must be >= 0"),
    (["backproject", "--i", "p.star", "--wiener-constant", "inf"], "--wiener-constant inf: must be >= 0"),
]


@pytest.mark.parametrize("args, expected", BAD_VALUES)
def test_a_bad_value_is_one_error_line_naming_the_flag(tmp_path: Path, args: list[str], expected: str) -> None:
    if args[0] != "check-poses":
        args = [*args, "--o", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: {expected}") and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["simulate", "--o", "out"], ["check-poses", "--i", "p.star", "--map", "m.mrc"],
                                  ["backproject", "--i", "p.star", "--o", "out"]])
def test_a_negative_seed_is_refused_by_the_command_line(args: list[str]) -> None:
    """numpy's generators refuse negative seeds with a traceback; click names the option."""
    result = CliRunner().invoke(main, [*args, "--seed", "-1"])
    assert result.exit_code == 2 and "Invalid value for '--seed': -1 is not in the range x>=0" in result.output


@pytest.mark.parametrize("command", ["denoise", "reconstruct"])
def test_both_jobs_take_the_relion_and_the_short_names_of_their_files(command: str) -> None:
    """A command line copied from an External job's note.txt (``--in_parts`` ...) runs
    standalone, and the short names work for both commands."""
    cmd = main.commands[command]
    relion = ["--in_parts", "p.star", "--in_mask", "m.mrc", "--project_dir", "proj", "--o", "out"]
    short = ["--i", "p.star", "--mask", "m.mrc", "--project-dir", "proj", "--o", "out"]
    if command == "denoise":
        relion += ["--in_3dref", "ref.mrc"]
        short += ["--map", "ref.mrc"]
    keys = ("star_path", "mask_path", "project_dir") + (("map_path",) if command == "denoise" else ())
    for args in (relion, short):
        params = cmd.make_context(command, list(args)).params
        assert [params[k] for k in keys] == [Path("p.star"), Path("m.mrc"), Path("proj")] + [Path("ref.mrc")] * (command == "denoise")


def test_reconstruct_demo_simulates_the_builtin_volume_and_scores_against_its_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cryogan reconstruct --demo`` needs no files: it simulates the built-in volume, trains
    at the demo's box, keeps a budget the user gives, and aligns and scores the maps against
    the simulation's truth (which training never sees)."""
    from cryogan_core.commands import reconstruct_cli

    monkeypatch.setattr(reconstruct_cli, "DEMO_N_PARTICLES", 200)
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as cwd:
        result = runner.invoke(main, ["reconstruct", "--demo", "--o", "demo", "--max_minutes", "0.05", "--eval_minutes", "0", "--j", "2"])
        assert result.exit_code == 0, result.output
        out = Path(cwd) / "demo"
        summary = json.loads((out / "summary.json").read_text())
        assert (out / "demo_data/particles.star").is_file() and (out / "run_class001.mrc").is_file()
    assert summary["n_particles"] == 200
    assert summary["box_train"] == reconstruct_cli.DEMO_SETTINGS["box_train"]
    assert summary["options"]["max_minutes"] == 0.05  # given on the command line, not the demo's 5
    assert summary["reference"].endswith("demo_data/ground_truth_map.mrc")
    assert summary["resolution_A_vs_reference_fsc_0.5"] > 0


MISSING_INPUTS = [
    (["--in_parts", "Refine3D/missing.star"], "denoise",
     "ERROR: --in_parts Refine3D/missing.star: file not found (the particles; paths are relative to the project directory)"),
    (["--in_parts", "Refine3D/missing.star"], "reconstruct",
     "ERROR: --in_parts Refine3D/missing.star: file not found (the particles; paths are relative to the project directory)"),
    ([], "denoise",
     "ERROR: --in_parts: no file given (the particles; fill 'Input particles' in the GUI, e.g. Refine3D/job025/run_data.star)"),
    ([], "reconstruct",
     "ERROR: --in_parts: no file given (the particles; fill 'Input particles' in the GUI, e.g. Extract/job009/particles.star)"),
]


@pytest.mark.parametrize(("args", "module", "expected"), MISSING_INPUTS)
def test_a_missing_input_file_fails_before_torch_is_imported(tmp_path: Path, args: list[str], module: str, expected: str) -> None:
    """A mistyped path, or none, in the GUI fails at once: the job checks its files before its
    options (whose checks import torch, ~4 s), writes one error line (the same wording in both
    jobs) and RELION_JOB_EXIT_FAILURE."""
    code = (
        "import sys\n"
        f"from relion_external.{module} import main\n"
        "try:\n"
        f"    main(['--o', 'External/job005/'] + {args!r})\n"
        "except SystemExit as exc:\n"
        "    print('EXIT', exc.code)\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "EXIT 1" in r.stdout and "TORCH False" in r.stdout, r.stdout + r.stderr
    assert (tmp_path / "External/job005/RELION_JOB_EXIT_FAILURE").exists()
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]  # RELION sends stderr to run.err
    assert errors == [expected]


def test_help_and_the_job_entry_points_do_not_import_torch(tmp_path: Path) -> None:
    """``cryogan --help``, a mistyped option and the RELION entry points' argument checks
    come before torch (~3 s) is imported: a fresh interpreter loads the command line and both
    job modules, then asks for the group's help, and torch, matplotlib and the science modules
    stay unloaded."""
    code = (
        "import sys\n"
        "import cryogan_core.cli, relion_external.denoise, relion_external.reconstruct\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(cryogan_core.cli.main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output)\n"
        "print('LOADED', sorted(m for m in ('torch', 'matplotlib', 'scipy', 'cryogan_core.commands.reconstruct',"
        " 'cryogan_core.commands.denoise') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout
    for command in ("simulate", "check-poses", "backproject", "denoise", "reconstruct", "export-cryosparc"):
        assert f"  {command} " in r.stdout
