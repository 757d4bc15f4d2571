"""The RELION External-job protocol (relion_external/_job.py) and the RELION-playing harness.

References are independent of the code under test: literal strings copied from
docs/relion_external_protocol.md (§1.2 command, §3.1 job.star, §7 nodes), the harness's
own label table, and real RELION files under ../shared/data (skipped when absent).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import starfile

from conftest import shared_path
from cryogan_core.errors import InputError
from relion_external._job import (
    ABORT_NOW,
    EXIT_ABORTED,
    EXIT_FAILURE,
    EXIT_SUCCESS,
    OUTPUT_NODES_FILE,
    JobAborted,
    Node,
    RelionJob,
    detect_relion_version,
    job_dir_name,
    node_type_code,
    node_type_label,
    parse_relion_args,
    parse_relion_args_or_exit,
    read_is_continue,
    write_output_nodes,
)
from relion_external._reporting import print_error_line
from relion_harness import (
    VERSIONS,
    RelionProject,
    assert_nodes_valid,
    build_external_command,
    exit_status,
    job_star_text,
    make_relion_project,
    parse_pipeliner_options,
    pipeliner_addjob_command,
    read_output_nodes,
    run_like_relion,
    signal_job,
    star_list_block,
    star_loop_block,
    wait_for,
    wait_group_exit,
)

FAKE_JOB = Path(__file__).resolve().parent / "fake_external_job.py"
FAKE_EXE = f"{sys.executable} {FAKE_JOB}"

# --- literal references from docs/relion_external_protocol.md -------------------------

# §7 worked example, the command as note.txt records it (trailing space after --j 8).
DOC_COMMAND = (
    "/opt/myproj/bin/myrefine --o External/job031/ --in_parts Refine3D/job025/run_data.star "
    "--in_3dref Refine3D/job025/run_class001.mrc --in_mask MaskCreate/job020/mask.mrc "
    "--sym C1 --gpu 0 --fast  --j 8 "
)

# §3.1 "Complete RELION-5 example" of job.star (param3 'fast' absent there).
DOC_JOB_STAR_50 = (
    "# version 50001\n\ndata_job\n\n"
    "_rlnJobTypeLabel             relion.external\n"
    "_rlnJobIsContinue                       0\n"
    "_rlnJobIsTomo                           0\n \n\n"
    "# version 50001\n\ndata_joboptions_values\n\nloop_ \n"
    "_rlnJobOptionVariable #1 \n_rlnJobOptionValue #2 \n"
    "  do_queue         No \n"
    "    fn_exe /opt/myproj/bin/myrefine \n"
    "  in_3dref Refine3D/job025/run_class001.mrc \n"
    ' in_coords         "" \n'
    "   in_mask MaskCreate/job020/mask.mrc \n"
    '    in_mic         "" \n'
    '    in_mov         "" \n'
    "   in_part Refine3D/job025/run_data.star \n"
    "min_dedicated          1 \n"
    "nr_threads          8 \n"
    'other_args         "" \n'
    'param10_label         "" \n'
    'param10_value         "" \n'
    "param1_label        sym \n"
    "param1_value         C1 \n"
    "param2_label        gpu \n"
    "param2_value          0 \n"
    + "".join(f'param{n}_label         "" \nparam{n}_value         "" \n' for n in range(3, 10))
    + "      qsub     sbatch \n"
    "qsubscript /public/EM/RELION/relion/bin/relion_qsub.csh \n"
    " queuename    openmpi \n \n"
)

# §3 relion_pipeliner example (5.0).
DOC_ADDJOB_OPTIONS = (
    "fn_exe == /opt/myproj/bin/myrefine;in_part == Refine3D/job025/run_data.star;"
    "in_3dref == Refine3D/job025/run_class001.mrc;in_mask == MaskCreate/job020/mask.mrc;"
    "param1_label == sym;param1_value == C1;param2_label == gpu;param2_value == 0;nr_threads == 8;"
)
DOC_ADDJOB_COMMAND = (
    f'relion_pipeliner --addJob relion.external --addJobOptions "{DOC_ADDJOB_OPTIONS}" --setJobAlias myrefine'
)

# Protocol §2.3 table, written out independently: kind -> (3.1 int, 4.0 label, 5.0 label).
EXPECTED_TYPES = {
    "particles": (3, "ParticlesData.star.relion", "ParticleGroupMetadata.star.relion"),
    "micrographs": (1, "MicrographsData.star.relion", "MicrographGroupMetadata.star.relion"),
    "movies": (0, "MicrographMoviesData.star.relion", "MicrographMovieGroupMetadata.star.relion"),
    "coords": (2, "MicrographsCoords.star.relion", "MicrographCoordsGroup.star.relion"),
    "images2d": (5, "ImagesData.star.relion", "Image2DGroupMetadata.star.relion"),
    "map": (6, "DensityMap.mrc", "DensityMap.mrc"),
    "halfmap": (10, "DensityMap.mrc.halfmap", "DensityMap.mrc.halfmap"),
    "mask": (7, "Mask3D.mrc", "Mask3D.mrc"),
    "logfile": (13, "LogFile.pdf.relion", "LogFile.pdf.relion"),
}

PARTICLES_STAR = (
    "\n# version 30001\n\ndata_optics\n\nloop_ \n_rlnOpticsGroup #1 \n_rlnImagePixelSize #2 \n"
    "           1     1.244000 \n \n\n# version 30001\n\ndata_particles\n\nloop_ \n"
    "_rlnImageName #1 \n_rlnOpticsGroup #2 \n000001@Extract/job007/a.mrcs            1 \n \n"
)


def _project_with_inputs(root: Path, version: str, **kwargs) -> RelionProject:
    """A project whose External job has particles, a reference map and a mask as inputs."""
    (root / "Refine3D/job025").mkdir(parents=True, exist_ok=True)
    (root / "MaskCreate/job020").mkdir(parents=True, exist_ok=True)
    (root / "Refine3D/job025/run_data.star").write_text(PARTICLES_STAR)
    (root / "Refine3D/job025/run_class001.mrc").write_bytes(b"\x00" * 1024)
    (root / "MaskCreate/job020/mask.mrc").write_bytes(b"\x01" * 1024)
    inputs = {
        "in_part": "Refine3D/job025/run_data.star",
        "in_3dref": "Refine3D/job025/run_class001.mrc",
        "in_mask": "MaskCreate/job020/mask.mrc",
    }
    kwargs.setdefault("fn_exe", FAKE_EXE)
    return make_relion_project(root, version, inputs=inputs, **kwargs)


def _args_json(project: RelionProject) -> dict:
    """What the fake job recorded about its parsed command line."""
    return json.loads((project.job_path / "args.json").read_text())


def _err_lines(project: RelionProject) -> list[str]:
    """Non-empty lines of run.err."""
    path = project.job_path / "run.err"
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# =======================================================================================
# Command-line parsing
# =======================================================================================


def test_parse_brief_example_with_double_spaces_and_bare_flag():
    argv = shlex.split("--o External/job012/ --in_parts a.star --in_3dref b.mrc --sym C1 --fast  --j 8 ")
    args = parse_relion_args(argv)
    assert args.o == Path("External/job012")
    assert args.in_parts == "a.star" and args.in_3dref == "b.mrc"
    assert args.in_mask is None and args.in_mics is None and args.in_movies is None and args.in_coords is None
    assert args.j == 8
    assert args.params == {"sym": "C1", "fast": True}
    assert args.pipeline_control is None


def test_parse_doc_command_all_inputs_and_defaults():
    args = parse_relion_args(shlex.split(DOC_COMMAND)[1:])
    assert (args.in_parts, args.in_3dref, args.in_mask) == (
        "Refine3D/job025/run_data.star",
        "Refine3D/job025/run_class001.mrc",
        "MaskCreate/job020/mask.mrc",
    )
    assert args.params == {"sym": "C1", "gpu": "0", "fast": True}
    args = parse_relion_args(["--o", "External/job001/", "--in_mics", "m.star", "--in_movies", "v.star", "--in_coords", "c.star"])
    assert (args.in_mics, args.in_movies, args.in_coords, args.j) == ("m.star", "v.star", "c.star", 1)


@pytest.mark.parametrize("flag", ["--pipeline_control", "--pipeline-control"])
def test_parse_pipeline_control_is_accepted_and_not_a_param(flag):
    args = parse_relion_args(["--o", "External/job012/", "--j", "2", flag, "External/job012/"])
    assert args.pipeline_control == "External/job012/"
    assert args.params == {}


def test_parse_negative_numbers_dashes_equals_and_split_values():
    args = parse_relion_args(
        ["--o", "E/job1/", "--shift", "-1.5", "--n-epochs", "3", "--lr=0.001", "--title", "my", "job", "--last"]
    )
    assert args.params == {"shift": "-1.5", "n_epochs": "3", "lr": "0.001", "title": "my job", "last": True}
    assert args.param_float("shift", 0.0) == -1.5
    assert args.param_int("n_epochs", 1) == 3
    assert args.param_bool("last") is True and args.param_bool("absent") is False
    assert args.param_str("absent", "dflt") == "dflt"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--in_parts", "a.star", "--j", "2"], "--o <output directory> is required"),
        (["--o"], "--o <output directory> is required"),
        (["--o", "E/job1/", "--j", "abc"], "--j abc"),
        (["--o", "E/job1/", "--j", "0"], "--j 0"),
        (["--o", "E/job1/", "--in_parts", "--j", "2"], "--in_parts needs a file name"),
        (["stray", "--o", "E/job1/"], "unexpected argument 'stray'"),
        (["--o", "E/job1/", "--", "x"], "'--' is not an option name"),
        (["--o", "E/job1/", "--sym", "C1", "--sym", "D2"], "--sym given twice"),
    ],
)
def test_parse_bad_command_lines_raise_one_line_input_error(argv, fragment):
    with pytest.raises(InputError) as info:
        parse_relion_args(argv)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_param_helpers_reject_bad_values():
    args = parse_relion_args(["--o", "E/job1/", "--epochs", "ten", "--lr", "x", "--flag", "maybe", "--name"])
    with pytest.raises(InputError, match="command line: --epochs ten: expected an integer"):
        args.param_int("epochs", 1)
    with pytest.raises(InputError, match="command line: --lr x: expected a number"):
        args.param_float("lr", 1.0)
    with pytest.raises(InputError, match="--flag maybe"):
        args.param_bool("flag")
    with pytest.raises(InputError, match="--name needs a value"):
        args.param_str("name")
    with pytest.raises(InputError, match="unknown parameter --epochs"):
        args.reject_unknown_params(["lr", "flag", "name"])
    args.reject_unknown_params(["epochs", "lr", "flag", "name"])


def test_parse_or_exit_marks_failure_when_o_is_known(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        parse_relion_args_or_exit(["--o", "External/job003/", "--j", "many"])
    assert info.value.code == 1
    assert (tmp_path / "External/job003" / EXIT_FAILURE).exists()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: command line: --j many")


# =======================================================================================
# Node types, node validation, RELION_OUTPUT_NODES.star
# =======================================================================================


@pytest.mark.parametrize("kind", sorted(EXPECTED_TYPES))
def test_node_types_match_protocol_table(kind):
    code, label40, label50 = EXPECTED_TYPES[kind]
    assert node_type_code(kind) == code
    assert node_type_label(kind, "4.0") == label40
    assert node_type_label(kind, "5.0") == label50
    assert node_type_label(kind, "3.1") == label40


def test_node_types_reject_unknown_kind_and_version():
    with pytest.raises(ValueError, match="unknown node kind"):
        node_type_code("volume")
    with pytest.raises(ValueError, match="unknown RELION version"):
        node_type_label("map", "3.0")


@pytest.mark.parametrize(
    "name, kind",
    [
        ("./External/job012/particles.star", "particles"),
        ("/abs/External/job012/particles.star", "particles"),
        ("External/job012/my particles.star", "particles"),
        ("particles.star", "particles"),
        ("External/job012/../job011/x.star", "particles"),
        ("External/job012/", "map"),
        ("External/job012/x.mrc", "volume"),
    ],
)
def test_node_rejects_bad_names_and_kinds(name, kind):
    with pytest.raises(ValueError):
        Node(name, kind)


def _expected_nodes_file(rows: list[tuple[str, int, str]]) -> str:
    """RELION_OUTPUT_NODES.star as protocol §7 'version-agnostic variant' describes it."""
    head = (
        "data_output_nodes\n\nloop_\n_rlnPipeLineNodeName #1\n"
        "_rlnPipeLineNodeType #2\n_rlnPipeLineNodeTypeLabel #3\n"
    )
    return head + "".join(f"{n} {c} {lab}\n" for n, c, lab in rows) + "\n"


@pytest.mark.parametrize("version", VERSIONS)
def test_write_output_nodes_exact_text_both_columns(tmp_path, version):
    job = tmp_path / "External/job031"
    job.mkdir(parents=True)
    kinds = [("particles.star", "particles"), ("run_class001.mrc", "map"),
             ("run_half1_class001_unfil.mrc", "halfmap"), ("mask.mrc", "mask"), ("logfile.pdf", "logfile")]
    nodes = [Node(f"External/job031/{f}", k) for f, k in kinds]
    path = write_output_nodes(Path("External/job031/"), nodes, version, project_dir=tmp_path)
    col = 2 if version == "5.0" else 1
    expected = _expected_nodes_file(
        [(f"External/job031/{f}", EXPECTED_TYPES[k][0], EXPECTED_TYPES[k][col]) for f, k in kinds]
    )
    assert path == job / OUTPUT_NODES_FILE
    assert path.read_text() == expected
    assert [p.name for p in job.iterdir()] == [OUTPUT_NODES_FILE]  # no temp file left
    table = starfile.read(path)  # an independent STAR reader agrees
    assert list(table.columns) == ["rlnPipeLineNodeName", "rlnPipeLineNodeType", "rlnPipeLineNodeTypeLabel"]
    assert table["rlnPipeLineNodeType"].tolist() == [3, 6, 10, 7, 13]


def test_write_output_nodes_rejects_nodes_outside_job_and_duplicates(tmp_path):
    (tmp_path / "External/job012").mkdir(parents=True)
    with pytest.raises(ValueError, match="not inside the job directory"):
        write_output_nodes(Path("External/job012"), [Node("External/job013/x.star", "particles")], "5.0", tmp_path)
    with pytest.raises(ValueError, match="listed twice"):
        write_output_nodes(Path("External/job012"), [Node("External/job012/x.star", "particles")] * 2, "5.0", tmp_path)
    assert not (tmp_path / "External/job012" / OUTPUT_NODES_FILE).exists()


def test_job_dir_name_variants(tmp_path):
    assert job_dir_name("External/job012/", tmp_path) == "External/job012/"
    assert job_dir_name("./External/job012", tmp_path) == "External/job012/"
    assert job_dir_name(tmp_path / "External" / "job1234", tmp_path) == "External/job1234/"
    with pytest.raises(InputError, match="must be inside the project directory"):
        job_dir_name(tmp_path.parent / "elsewhere", tmp_path)
    with pytest.raises(InputError):
        job_dir_name("../x/", tmp_path)


# =======================================================================================
# Version detection and continue
# =======================================================================================


@pytest.mark.parametrize("version", VERSIONS)
def test_detect_version_from_harness_job_star_and_pipeline(tmp_path, version):
    proj = make_relion_project(tmp_path, version, inputs={"in_part": "Refine3D/job025/run_data.star"})
    assert detect_relion_version(Path(proj.job_dir), tmp_path) == version
    (proj.job_path / "job.star").unlink()  # fall back to default_pipeline.star
    assert detect_relion_version(Path(proj.job_dir), tmp_path) == version


def test_detect_version_defaults_to_50_and_handles_empty_pipeline(tmp_path):
    assert detect_relion_version(Path("External/job001"), tmp_path) == "5.0"
    # a fresh 5.0 pipeline has only pipeline_general (empty tables are not written)
    (tmp_path / "default_pipeline.star").write_text(star_list_block(50001, "pipeline_general", [("rlnPipeLineJobCounter", 1)]))
    assert detect_relion_version(Path("External/job001"), tmp_path) == "5.0"
    (tmp_path / "default_pipeline.star").write_text("garbage")
    assert detect_relion_version(Path("External/job001"), tmp_path) == "5.0"


@pytest.mark.realdata
@pytest.mark.parametrize(
    "job_star, pipeline, expected",
    [
        (("star-variety", "sppractice-relion5", "Extract", "job009", "job.star"), None, "5.0"),
        (("relion31-tutorial-stars", "extracted", "PostProcess", "job030", "job.star"), None, "3.1"),
        (None, ("star-variety", "sppractice-relion5", "default_pipeline.star"), "5.0"),
        (None, ("relion31-tutorial-stars", "extracted", "default_pipeline.star"), "3.1"),
        (None, ("star-variety", "himena-relion", "default_pipelines", "full.star"), "5.0"),
    ],
)
def test_detect_version_on_real_relion_files(tmp_path, job_star, pipeline, expected):
    job = tmp_path / "External/job012"
    job.mkdir(parents=True)
    if job_star:
        (job / "job.star").write_bytes(shared_path(*job_star).read_bytes())
    if pipeline:
        (tmp_path / "default_pipeline.star").write_bytes(shared_path(*pipeline).read_bytes())
    assert detect_relion_version(job, tmp_path) == expected


@pytest.mark.realdata
def test_read_is_continue_on_real_job_stars(tmp_path):
    cont = shared_path("star-variety", "himena-relion", "jobs_spa", "AutoPick", "job001", "job.star")
    fresh = shared_path("star-variety", "sppractice-relion5", "Extract", "job009", "job.star")
    for src, expected in ((cont, True), (fresh, False)):
        (tmp_path / "job.star").write_bytes(src.read_bytes())
        assert read_is_continue(tmp_path) is expected


@pytest.mark.parametrize("version", VERSIONS)
def test_read_is_continue_from_harness(tmp_path, version):
    proj = make_relion_project(tmp_path, version, is_continue=True)
    assert read_is_continue(proj.job_path) is True
    make_relion_project(tmp_path, version, is_continue=False)
    assert read_is_continue(proj.job_path) is False
    assert read_is_continue(tmp_path / "nowhere") is False


# =======================================================================================
# RelionJob in-process
# =======================================================================================


def test_relion_job_paths_and_node_names(tmp_path):
    for o in ("External/job012/", "./External/job012", tmp_path / "External/job012"):
        job = RelionJob(o, project_dir=tmp_path, name="t")
        assert job.job_dir_name == "External/job012/"
        assert job.node_name("particles.star") == "External/job012/particles.star"
        assert job.path("sub/x.mrc") == tmp_path / "External/job012/sub/x.mrc"
    with pytest.raises(ValueError):
        job.path("../escape")
    with pytest.raises(ValueError):
        job.node_name("/abs")


def test_relion_job_success_writes_nodes_then_success(tmp_path):
    make_relion_project(tmp_path, "4.0")
    stale = tmp_path / "External/job012"
    for f in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
        (stale / f).touch()
    before = signal.getsignal(signal.SIGTERM)
    with RelionJob("External/job012/", project_dir=tmp_path, name="t") as job:
        assert not any((stale / f).exists() for f in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED))
        assert job.version == "4.0" and job.is_continue is False
        job.path("particles.star").write_text(PARTICLES_STAR)
        job.set_output_nodes([Node(job.node_name("particles.star"), "particles")])
        assert signal.getsignal(signal.SIGTERM) != before
    assert signal.getsignal(signal.SIGTERM) == before
    assert (stale / EXIT_SUCCESS).exists() and not (stale / EXIT_FAILURE).exists()
    assert (stale / EXIT_SUCCESS).stat().st_mtime_ns >= (stale / OUTPUT_NODES_FILE).stat().st_mtime_ns
    assert (stale / OUTPUT_NODES_FILE).read_text() == _expected_nodes_file(
        [("External/job012/particles.star", 3, "ParticlesData.star.relion")]
    )


def test_relion_job_set_output_nodes_rejects_foreign_node(tmp_path):
    with RelionJob("External/job012/", project_dir=tmp_path) as job:
        with pytest.raises(ValueError, match="not inside the job directory"):
            job.set_output_nodes([Node("External/job011/particles.star", "particles")])
    assert (tmp_path / "External/job012" / EXIT_SUCCESS).exists()


def test_relion_job_input_error_one_line_failure(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        with RelionJob("External/job012/", project_dir=tmp_path):
            raise InputError("particles.star: column rlnDefocusU is missing")
    assert info.value.code == 1
    job = tmp_path / "External/job012"
    assert (job / EXIT_FAILURE).exists() and not (job / EXIT_SUCCESS).exists()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert err == ["ERROR: particles.star: column rlnDefocusU is missing"]


def test_error_line_folds_a_multiline_message_into_one_line(capsys):
    # RELION's red pane shows stderr; an error that spans lines would be read as several
    print_error_line("particles.star:\n  column rlnDefocusU\tis missing  ")
    assert capsys.readouterr().err == "ERROR: particles.star: column rlnDefocusU is missing\n"


def test_relion_job_abort_in_process(tmp_path):
    with pytest.raises(SystemExit) as info:
        with RelionJob("External/job012/", project_dir=tmp_path) as job:
            job.check_abort()  # nothing yet
            (job.job_dir / ABORT_NOW).touch()
            job.check_abort()
            raise AssertionError("check_abort did not raise")  # pragma: no cover
    assert info.value.code == 2
    job_dir = tmp_path / "External/job012"
    assert (job_dir / EXIT_ABORTED).exists()
    assert not (job_dir / ABORT_NOW).exists()
    assert not (job_dir / EXIT_FAILURE).exists() and not (job_dir / EXIT_SUCCESS).exists()
    assert issubclass(JobAborted, Exception)


def test_relion_job_sigterm_in_process(tmp_path):
    with pytest.raises(SystemExit) as info:
        with RelionJob("External/job012/", project_dir=tmp_path):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this  # pragma: no cover
    assert info.value.code == 128 + signal.SIGTERM
    assert (tmp_path / "External/job012" / EXIT_FAILURE).exists()


def test_relion_job_missing_output_file_fails(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        with RelionJob("External/job012/", project_dir=tmp_path) as job:
            job.set_output_nodes([Node(job.node_name("never_written.mrc"), "map")])
    assert info.value.code == 1
    assert (tmp_path / "External/job012" / EXIT_FAILURE).exists()
    assert not (tmp_path / "External/job012" / OUTPUT_NODES_FILE).exists()
    assert "External/job012/never_written.mrc was declared but not written" in capsys.readouterr().err


def test_relion_job_outside_project_fails_cleanly(tmp_path, capsys):
    (tmp_path / "proj").mkdir()
    with pytest.raises(SystemExit) as info:
        with RelionJob(tmp_path / "other" / "job1", project_dir=tmp_path / "proj"):
            pass  # pragma: no cover
    assert info.value.code == 1
    assert "must be inside the project directory" in capsys.readouterr().err


def test_relion_job_other_exception_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        with RelionJob("External/job012/", project_dir=tmp_path):
            raise ZeroDivisionError("boom")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: boom" in err
    assert (tmp_path / "External/job012" / EXIT_FAILURE).exists()


# =======================================================================================
# The harness itself: faithful files and commands
# =======================================================================================


def test_harness_job_star_equals_doc_example(tmp_path):
    proj = make_relion_project(
        tmp_path, "5.0", job_number=31, params={"sym": "C1", "gpu": "0"}, nr_threads=8,
        fn_exe="/opt/myproj/bin/myrefine",
        inputs={"in_part": "Refine3D/job025/run_data.star", "in_3dref": "Refine3D/job025/run_class001.mrc",
                "in_mask": "MaskCreate/job020/mask.mrc"},
    )
    assert proj.job_dir == "External/job031/"
    assert (tmp_path / "External/job031/job.star").read_text() == "\n" + DOC_JOB_STAR_50
    # 4.0: identical body but '# version 30001' and qsub qsub (protocol §3.1)
    text40 = job_star_text("4.0", "/opt/myproj/bin/myrefine", proj.inputs, proj.params, 8)
    assert text40 == "\n" + DOC_JOB_STAR_50.replace("50001", "30001").replace("      qsub     sbatch", "      qsub       qsub")
    text31 = job_star_text("3.1", "/opt/myproj/bin/myrefine", proj.inputs, proj.params, 8)
    assert "_rlnJobType                            99\n" in text31 and "_rlnJobTypeLabel" not in text31
    assert "_rlnJobIsTomo" not in text31


@pytest.mark.parametrize("version", VERSIONS)
def test_harness_files_parse_with_starfile(tmp_path, version):
    proj = make_relion_project(
        tmp_path, version, params={"sym": "C1", "fast": ""}, fn_exe=f"{sys.executable} /x y/prog.py",
        inputs={"in_part": "Refine3D/job025/run_data.star", "in_mask": "MaskCreate/job020/mask.mrc"},
    )
    job = starfile.read(proj.job_path / "job.star")
    values = dict(zip(job["joboptions_values"]["rlnJobOptionVariable"], job["joboptions_values"]["rlnJobOptionValue"]))
    expected_exe = f"{sys.executable} /x y/prog.py" if version != "3.1" else f"{sys.executable}__/x__y/prog.py"
    assert values["fn_exe"] == expected_exe
    assert values["param2_label"] == "fast" and str(values["nr_threads"]) == "1"
    pipe = starfile.read(tmp_path / "default_pipeline.star")
    assert pipe["pipeline_general"]["rlnPipeLineJobCounter"] == 13
    procs = pipe["pipeline_processes"]
    assert procs["rlnPipeLineProcessName"].tolist() == ["External/job012/"]
    nodes = pipe["pipeline_nodes"]
    if version == "3.1":
        assert procs["rlnPipeLineProcessType"].tolist() == [99]
        assert nodes["rlnPipeLineNodeType"].tolist() == [3, 7]
    else:
        assert procs["rlnPipeLineProcessStatusLabel"].tolist() == ["Running"]
        first = "ParticleGroupMetadata.star.relion" if version == "5.0" else "ParticlesData.star.relion"
        assert nodes["rlnPipeLineNodeTypeLabel"].tolist() == [first, "Mask3D.mrc"]
        assert ("rlnPipeLineNodeTypeLabelDepth" in nodes.columns) == (version == "5.0")
    assert pipe["pipeline_input_edges"]["rlnPipeLineEdgeProcess"].tolist() == ["External/job012/"] * 2


def _rewrite_like_relion(path: Path, version_code: int, int_columns: set[str]) -> str:
    """Re-serialise a real RELION STAR file with the harness writer (for a byte comparison)."""
    text = ""
    for name, block in starfile.read(path, always_dict=True).items():
        if isinstance(block, pd.DataFrame):
            rows = [[int(v) if c in int_columns else str(v) for c, v in zip(block.columns, r)]
                    for r in block.itertuples(index=False)]
            text += star_loop_block(version_code, name, list(block.columns), rows)
        else:
            text += star_list_block(version_code, name, [(k, int(v) if k in int_columns else str(v)) for k, v in block.items()])
    return text


@pytest.mark.realdata
@pytest.mark.parametrize(
    "parts, code",
    [
        (("star-variety", "sppractice-relion5", "default_pipeline.star"), 50001),
        (("relion31-tutorial-stars", "extracted", "default_pipeline.star"), 30001),
        (("relion31-tutorial-stars", "extracted", "Refine3D", "job029", "job_pipeline.star"), 30001),
    ],
)
def test_harness_star_writer_reproduces_real_relion_files_byte_for_byte(parts, code):
    path = shared_path(*parts)
    ints = {"rlnPipeLineJobCounter", "rlnPipeLineNodeTypeLabelDepth", "rlnPipeLineProcessType",
            "rlnPipeLineProcessStatus", "rlnPipeLineNodeType"}
    assert _rewrite_like_relion(path, code, ints) == path.read_text()


@pytest.mark.realdata
def test_harness_job_block_matches_real_job_star_headers():
    real50 = shared_path("star-variety", "sppractice-relion5", "Extract", "job009", "job.star").read_text()
    block50 = star_list_block(50001, "job", [("rlnJobTypeLabel", "relion.extract"), ("rlnJobIsContinue", 0), ("rlnJobIsTomo", 0)])
    assert real50.startswith(block50)
    real31 = shared_path("relion31-tutorial-stars", "extracted", "PostProcess", "job030", "job.star").read_text()
    assert real31.startswith(star_list_block(30001, "job", [("rlnJobType", 15), ("rlnJobIsContinue", 0)]))


def test_build_external_command_matches_doc_and_pipeline_control_rule():
    inputs = {"in_part": "Refine3D/job025/run_data.star", "in_3dref": "Refine3D/job025/run_class001.mrc",
              "in_mask": "MaskCreate/job020/mask.mrc"}
    params = {"sym": "C1", "gpu": "0", "fast": ""}
    assert build_external_command("/opt/myproj/bin/myrefine", "External/job031/", inputs, params, 8) == DOC_COMMAND
    # empty label skipped even with a value; inputs emitted in RELION's order regardless of dict order
    cmd = build_external_command("prog", "External/job001/", {"in_mask": "m.mrc", "in_mov": "v.star"}, {"": "x"}, 1, "--extra 1")
    assert cmd == "prog --o External/job001/ --in_movies v.star --in_mask m.mrc --j 1 --extra 1"
    cmd = build_external_command("/opt/relion_scripts/prog", "External/job001/", {}, {}, 2)
    assert cmd == "/opt/relion_scripts/prog --o External/job001/ --j 2  --pipeline_control External/job001/"
    cmd = build_external_command("prog", "External/job001/", {}, {"tag": "relion_x"}, 2)
    assert cmd.endswith("--tag relion_x --j 2  --pipeline_control External/job001/")


def test_parse_pipeliner_options_round_trips_doc_example():
    opts = parse_pipeliner_options(DOC_ADDJOB_OPTIONS)
    assert opts == {
        "fn_exe": "/opt/myproj/bin/myrefine", "in_part": "Refine3D/job025/run_data.star",
        "in_3dref": "Refine3D/job025/run_class001.mrc", "in_mask": "MaskCreate/job020/mask.mrc",
        "param1_label": "sym", "param1_value": "C1", "param2_label": "gpu", "param2_value": "0", "nr_threads": "8",
    }
    cmd = pipeliner_addjob_command(
        "5.0", opts["fn_exe"],
        inputs={k: opts[k] for k in ("in_part", "in_3dref", "in_mask")},
        params={"sym": "C1", "gpu": "0"}, nr_threads=8, alias="myrefine",
    )
    assert cmd == DOC_ADDJOB_COMMAND
    assert shlex.split(cmd)[4] == DOC_ADDJOB_OPTIONS
    assert pipeliner_addjob_command("3.1", "prog").startswith('relion_pipeliner --addJob External --addJobOptions "')
    assert "--addJob relion.external " in pipeliner_addjob_command("4.0", "prog")


def test_parse_pipeliner_options_relion_quirks():
    with pytest.raises(ValueError) as info:
        parse_pipeliner_options("fn_exe == prog; in_part == p.star")
    assert str(info.value) == "ERROR: Job does not contain label:  in_part"
    with pytest.raises(ValueError, match="Job does not contain label: fn_ex"):
        parse_pipeliner_options("fn_exe==prog")
    with pytest.raises(ValueError, match="no '==' entry"):
        parse_pipeliner_options("fn_exe = prog")
    assert parse_pipeliner_options("External executable: == my prog;param1_value == ;") == {
        "fn_exe": "my prog", "param1_value": ""}
    assert parse_pipeliner_options("param1_value ==  x") == {"param1_value": " x"}  # no trimming
    with pytest.raises(ValueError, match="';'"):
        pipeliner_addjob_command("5.0", "prog", params={"a": "x;y"})


def test_exit_status_precedence(tmp_path):
    proj = make_relion_project(tmp_path, "5.0")
    assert exit_status(proj) == "Running"
    (proj.job_path / EXIT_ABORTED).touch()
    assert exit_status(proj) == "Aborted"
    (proj.job_path / EXIT_FAILURE).touch()
    assert exit_status(proj) == "Failed"
    (proj.job_path / EXIT_SUCCESS).touch()
    assert exit_status(proj) == "Succeeded"


def test_assert_nodes_valid_catches_wrong_files(tmp_path):
    proj = make_relion_project(tmp_path, "5.0")
    with pytest.raises(AssertionError, match="is missing"):
        assert_nodes_valid(proj)
    (proj.job_path / "particles.star").write_text(PARTICLES_STAR)
    (proj.job_path / "logfile.pdf").write_bytes(b"%PDF")
    nodes_file = proj.job_path / OUTPUT_NODES_FILE

    def write(rows: list[tuple[str, int, str]]) -> None:
        """Write a RELION_OUTPUT_NODES.star listing ``rows`` (name, type, label)."""
        nodes_file.write_text(_expected_nodes_file(rows))

    write([("External/job012/particles.star", 3, "ParticleGroupMetadata.star.relion")])
    assert_nodes_valid(proj)
    assert read_output_nodes(proj) == [("External/job012/particles.star", 3, "ParticleGroupMetadata.star.relion")]
    write([("External/job012/particles.star", 3, "ParticlesData.star.relion")])  # 4.0 label on 5.0
    with pytest.raises(AssertionError, match="not a RELION 5.0 label"):
        assert_nodes_valid(proj)
    write([("External/job012/particles.star", 6, "ParticleGroupMetadata.star.relion")])
    with pytest.raises(AssertionError, match="int type 6"):
        assert_nodes_valid(proj)
    write([("External/job012/logfile.pdf", 13, "LogFile.pdf")])
    with pytest.raises(AssertionError):
        assert_nodes_valid(proj)
    write([("External/job012/missing.star", 3, "ParticleGroupMetadata.star.relion")])
    with pytest.raises(AssertionError, match="does not exist"):
        assert_nodes_valid(proj)
    nodes_file.write_text("data_output_nodes\n\nloop_\n_rlnPipeLineNodeName #1\n_rlnPipeLineNodeType #2\n"
                          "External/job012/particles.star 3\n\n")  # 3.1-only file
    with pytest.raises(AssertionError, match="rlnPipeLineNodeTypeLabel is missing"):
        assert_nodes_valid(proj)


# =======================================================================================
# End to end: the fake job run exactly like RELION runs it
# =======================================================================================


@pytest.mark.parametrize("version", VERSIONS)
def test_e2e_success_labels_params_and_logs(tmp_path, version):
    proj = _project_with_inputs(tmp_path, version, params={"sym": "C1", "fast": "", "shift": "-1.5"}, nr_threads=3)
    result = run_like_relion(proj, timeout=60)
    assert result.returncode == 0, (proj.job_path / "run.err").read_text()
    assert exit_status(proj) == "Succeeded"
    assert_nodes_valid(proj)
    col = 2 if version == "5.0" else 1
    expected = [(f"External/job012/{f}", EXPECTED_TYPES[k][0], EXPECTED_TYPES[k][col]) for f, k in [
        ("particles.star", "particles"), ("run_class001.mrc", "map"),
        ("run_half1_class001_unfil.mrc", "halfmap"), ("mask.mrc", "mask"), ("logfile.pdf", "logfile")]]
    assert read_output_nodes(proj) == expected
    assert (proj.job_path / "particles.star").read_text() == PARTICLES_STAR
    rec = _args_json(proj)
    assert rec["version"] == version and rec["is_continue"] is False
    assert rec["params"] == {"sym": "C1", "fast": True, "shift": "-1.5"}
    assert rec["j"] == 3 and rec["pipeline_control"] is None and rec["job_dir_name"] == "External/job012/"
    assert _err_lines(proj) == []
    out = (proj.job_path / "run.out").read_text()
    assert "INFO" in out and "finished successfully (5 output nodes)" in out
    note = (proj.job_path / "note.txt").read_text()
    assert f" ++++ with the following command(s): \n{proj.command()}\n ++++ \n" in note


@pytest.mark.parametrize("version", VERSIONS)
def test_e2e_relion_in_path_adds_pipeline_control(tmp_path, version):
    scripts = tmp_path / "relion_scripts"
    scripts.symlink_to(FAKE_JOB.parent, target_is_directory=True)
    proj = _project_with_inputs(tmp_path, version, fn_exe=f"{sys.executable} {scripts / FAKE_JOB.name}")
    assert proj.command().endswith(" --pipeline_control External/job012/")
    run_like_relion(proj, timeout=60)
    assert exit_status(proj) == "Succeeded", (proj.job_path / "run.err").read_text()
    assert _args_json(proj)["pipeline_control"] == "External/job012/"
    assert _args_json(proj)["params"] == {}
    assert_nodes_valid(proj)


@pytest.mark.parametrize("version", VERSIONS)
def test_e2e_input_error_is_one_line_failure(tmp_path, version):
    proj = _project_with_inputs(tmp_path, version, params={"fail_with_input_error": ""})
    result = run_like_relion(proj, timeout=60)
    assert result.returncode == 1
    assert exit_status(proj) == "Failed"
    assert not (proj.job_path / OUTPUT_NODES_FILE).exists()
    err = _err_lines(proj)
    assert err == [
        "ERROR: Refine3D/job025/run_data.star: row 12: rlnImageName 000099@Movies/a.mrcs: "
        "index 99 is out of range (stack has 40 images)"
    ]


def test_e2e_bad_command_line_and_bug_fail(tmp_path):
    proj = _project_with_inputs(tmp_path, "5.0", params={"fail_with_bug": ""})
    run_like_relion(proj, timeout=60)
    assert exit_status(proj) == "Failed"
    err = (proj.job_path / "run.err").read_text()
    assert "Traceback" in err and "RuntimeError: deliberate bug" in err
    # a bad --j is caught before RelionJob exists and still ends as Failed
    run_like_relion(proj, command=f"{FAKE_EXE} --o {proj.job_dir} --j none ", timeout=60)
    assert exit_status(proj) == "Failed"
    assert _err_lines(proj)[-1] == "ERROR: command line: --j none: the number of threads must be an integer >= 1"


def test_e2e_declared_but_missing_output_fails(tmp_path):
    proj = _project_with_inputs(tmp_path, "4.0", params={"forget_output": ""})
    run_like_relion(proj, timeout=60)
    assert exit_status(proj) == "Failed"
    assert "External/job012/logfile.pdf was declared but not written" in _err_lines(proj)[-1]


@pytest.mark.parametrize("version", VERSIONS)
def test_e2e_abort_during_run(tmp_path, version):
    proj = _project_with_inputs(tmp_path, version, params={"sleep_steps": "100"})
    proc = run_like_relion(proj, background=True)
    try:
        run_out = proj.job_path / "run.out"
        assert wait_for(lambda: run_out.exists() and "step 1" in run_out.read_text(), timeout=20)
        t0 = time.monotonic()
        (proj.job_path / ABORT_NOW).touch()
        assert wait_for(lambda: (proj.job_path / EXIT_ABORTED).exists(), timeout=5)
        assert time.monotonic() - t0 < 1.5
        assert proc.wait(timeout=10) == 2
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the job misbehaves
            signal_job(proc, signal.SIGKILL)
    assert exit_status(proj) == "Aborted"
    assert not (proj.job_path / ABORT_NOW).exists()
    assert not (proj.job_path / OUTPUT_NODES_FILE).exists()
    assert "Aborted by user" in (proj.job_path / "run.out").read_text()


@pytest.mark.parametrize("version", VERSIONS)
def test_e2e_sigterm_marks_failure(tmp_path, version):
    proj = _project_with_inputs(tmp_path, version, params={"sleep_steps": "100"})
    proc = run_like_relion(proj, background=True)
    try:
        run_out = proj.job_path / "run.out"
        assert wait_for(lambda: run_out.exists() and "step 0" in run_out.read_text(), timeout=20)
        signal_job(proc, signal.SIGTERM)
        assert wait_for(lambda: (proj.job_path / EXIT_FAILURE).exists(), timeout=5)
        assert wait_group_exit(proc, timeout=10)
    finally:
        if proc.poll() is None:  # pragma: no cover
            signal_job(proc, signal.SIGKILL)
    assert exit_status(proj) == "Failed"
    assert any("received SIGTERM" in line for line in _err_lines(proj))


@pytest.mark.parametrize("version", VERSIONS)
def test_e2e_continue_is_read_from_job_star(tmp_path, version):
    proj = _project_with_inputs(tmp_path, version, is_continue=True)
    run_like_relion(proj, timeout=60)
    assert exit_status(proj) == "Succeeded"
    assert _args_json(proj)["is_continue"] is True
    assert (proj.job_path / "note.txt").read_text().count("Executing new job") == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_e2e_stale_exit_files_removed_by_the_job(tmp_path, version):
    proj = _project_with_inputs(tmp_path, version, params={"fail_with_input_error": ""})
    for name in (EXIT_SUCCESS, EXIT_ABORTED):
        (proj.job_path / name).touch()
    run_like_relion(proj, timeout=60, clean=False)  # the job itself must clean up
    assert exit_status(proj) == "Failed"
    assert not (proj.job_path / EXIT_SUCCESS).exists() and not (proj.job_path / EXIT_ABORTED).exists()
    proj = _project_with_inputs(tmp_path, version)  # second run, same job: stale FAILURE now
    run_like_relion(proj, timeout=60, clean=False)
    assert exit_status(proj) == "Succeeded"
    assert not (proj.job_path / EXIT_FAILURE).exists()
    assert (proj.job_path / "note.txt").read_text().count("Executing new job") == 2
