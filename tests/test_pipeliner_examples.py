"""examples/: relion_pipeliner.sh and the job.star templates, read and run the way RELION does.

* Every ``--addJobOptions "..."`` string of ``examples/relion_pipeliner.sh`` (the live ones
  and the ones written out in its comments) is expanded by bash with the script's defaults
  and parsed with ``parse_pipeliner_options`` (RELION's ``RelionJob::setOption``): valid
  External joboptions, at most 10 params, every param a known param of its job, values of
  the param's type, and accepted by the job's own argument parser.
* The script is RUN in a RELION 4.0 and 5.0 project against a stand-in ``relion_pipeliner``
  (``fake_relion_pipeliner`` below, run as a program) that does what the real one does
  (protocol §3): ``--addJob`` writes ``External/jobNNN/job.star`` and a Scheduled process
  row in ``default_pipeline.star``; ``--RunJobs`` reads that job.star back, builds the
  command like ``getCommandsExternalJob`` and runs it like ``PipeLine::runJob``
  (``tests/relion_harness.py``). The denoiser then really runs (box 24 and 25, 4 steps);
  its exit file, output nodes and every file a downstream RELION or cryoSPARC job would
  open are checked. RELION 3.1 (``--addJob External``) is checked without running.
* Both job.star templates are read with ``starfile`` and must be byte-identical to what
  RELION 5's ``RelionJob::write`` writes for the same values.

Run as a program, this file IS the stand-in ``relion_pipeliner`` (see ``fake_relion_pipeliner``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import mrcfile
import numpy as np
import pytest
import starfile

from conftest import shared_path
from relion_harness import (  # noqa: I001
    _INPUT_NODE_TYPES,
    EXTERNAL_JOBOPTIONS,
    INPUT_FLAGS,
    RelionProject,
    assert_nodes_valid,
    build_external_command,
    exit_status,
    job_dir_for,
    job_star_text,
    parse_pipeliner_options,
    read_output_nodes,
    run_like_relion,
    star_list_block,
    star_loop_block,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
SCRIPT = EXAMPLES / "relion_pipeliner.sh"
TEMPLATES = EXAMPLES / "job_templates"
SECTION = EXAMPLES.parent / "README.md"

_MDT_VERSION = {"3.1": 30001, "4.0": 30001, "5.0": 50001}
# 3.1 process status ints (pipeline_jobs.h PROC_RUNNING..PROC_ABORTED) and the 4.0/5.0 labels.
_STATUS_31 = {"Running": 0, "Scheduled": 1, "Succeeded": 2, "Failed": 3, "Aborted": 4}
# input joboption -> (3.1 node int, 4.0 label, 5.0 label), protocol §1.1: the harness's table
_INPUT_NODE = _INPUT_NODE_TYPES
_BOOL_WORDS = {"", "yes", "no", "true", "false", "1", "0", "on", "off", "y", "n"}


# =========================================================================== the jobs


@dataclass
class JobSpec:
    """What a test needs to know about one of our External jobs.

    Attributes:
        name: short name ("denoise").
        executables: the fn_exe forms that run it (console script, ``python -m`` module).
        params: name -> Param (``.type`` int/float/str/bool, ``.default``).
        options_from_params: RelionArgs -> typed options, as the job does it.
        required_inputs: joboptions that must be filled (``in_part`` ...).
    """

    name: str
    executables: tuple[str, ...]
    params: dict[str, Any]
    options_from_params: Callable[[Any], dict[str, Any]]
    required_inputs: tuple[str, ...]


def _spec(name: str, module: str, cls: type, required_inputs: tuple[str, ...]) -> JobSpec:
    """A job whose params are the fields of its options dataclass (declared once for the CLI,
    the job and the README); the job turns them into options with ``RelionArgs.options``."""
    from cryogan_core.commands.options import params_of

    return JobSpec(name, (f"cryogan-{name}", module), {p.name: p for p in params_of(cls)},
                   lambda args: dataclasses.asdict(args.options(cls)), required_inputs)


def _denoise_spec() -> JobSpec:
    """The denoiser (``DenoiseOptions``)."""
    from cryogan_core.commands.denoise_options import DenoiseOptions

    return _spec("denoise", "relion_external.denoise", DenoiseOptions, ("in_part", "in_3dref"))


def _reconstruct_spec() -> JobSpec:
    """The CryoGAN job (``ReconstructOptions``)."""
    from cryogan_core.commands.reconstruct_options import ReconstructOptions

    return _spec("reconstruct", "relion_external.reconstruct", ReconstructOptions, ("in_part",))


def _spec_for(fn_exe: str) -> JobSpec | None:
    """The job an "External executable" runs (its last word), None for the reconstruct job while absent."""
    exe = fn_exe.split()[-1]
    if exe in ("cryogan-denoise", "relion_external.denoise"):
        return _denoise_spec()
    if exe in ("cryogan-reconstruct", "relion_external.reconstruct"):
        return _reconstruct_spec()
    raise AssertionError(f"fn_exe {fn_exe!r} is not one of our jobs")


def _params_of(options: dict[str, str], where: str) -> dict[str, str]:
    """Params-tab label -> value in param1..10 order; checks what RELION would silently drop."""
    params: dict[str, str] = {}
    for n in range(1, 11):
        label = options.get(f"param{n}_label", "")
        value = options.get(f"param{n}_value", "")
        assert not (label == "" and value != ""), f"{where}: param{n}_value {value!r} without a label is ignored by RELION"
        if label:
            assert label not in params, f"{where}: param label {label} given twice"
            params[label] = value
    assert len(params) <= 10
    return params


def check_job_options(options: dict[str, str], where: str) -> tuple[JobSpec | None, dict[str, str], dict[str, str]]:
    """Check one External job's joboptions against the job it runs.

    Every key must be an External joboption; the required inputs filled; every param label
    a param of the job; every value of the param's type (checked independently here, and by
    the job's own parser on the command RELION would build from these options).

    Returns:
        (job spec or None if that job is not built yet, inputs, params).
    """
    for key in options:
        assert key in EXTERNAL_JOBOPTIONS, f"{where}: {key} is not an External joboption"
    assert options.get("fn_exe"), f"{where}: fn_exe is empty"
    inputs = {k: v for k, v in options.items() if k in INPUT_FLAGS and v != ""}
    params = _params_of(options, where)
    threads = options.get("nr_threads", "1")
    assert re.fullmatch(r"[1-9][0-9]*", threads), f"{where}: nr_threads {threads!r}"
    spec = _spec_for(options["fn_exe"])
    if spec is None:
        return None, inputs, params
    for key in spec.required_inputs:
        assert inputs.get(key), f"{where}: {spec.name} needs {key}"
    for label, value in params.items():
        assert label in spec.params, f"{where}: {label} is not a param of {spec.name} (known: {sorted(spec.params)})"
        kind = spec.params[label].type
        assert not re.search(r"\s", value), f"{where}: {label} value {value!r} has whitespace (RELION does not quote)"
        if kind is bool:
            assert value.lower() in _BOOL_WORDS, f"{where}: {label} {value!r} is not a flag/yes/no"
        elif kind is int:
            assert re.fullmatch(r"[+-]?[0-9]+", value), f"{where}: {label} {value!r} is not an integer"
        elif kind is float:
            assert math.isfinite(float(value)), f"{where}: {label} {value!r}"
        else:
            assert value != "", f"{where}: {label} is a string param and needs a value"
    # the job's own parser, on the exact command RELION would run
    from relion_external._job import parse_relion_args

    command = build_external_command(options["fn_exe"], "External/job099/", inputs, params, int(threads),
                                     options.get("other_args", ""))
    argv = shlex.split(command)[len(shlex.split(options["fn_exe"])):]
    typed = spec.options_from_params(parse_relion_args(argv))
    for label, value in params.items():
        kind = spec.params[label].type
        expected = (value.lower() in {"", "yes", "true", "1", "on", "y"}) if kind is bool else kind(value)
        assert typed[label] == expected, f"{where}: {label} {value!r} reached the job as {typed[label]!r}"
    return spec, inputs, params


# =========================================================================== the script, statically


def _addjoboptions_strings() -> list[tuple[str | None, str]]:
    """Every ``--addJobOptions "..."`` argument written in the script (comments included), unexpanded,
    with the ``--addJobFromStar`` template it overrides (None for ``--addJob``)."""
    found = re.findall(r'(?:--addJobFromStar\s+(\S+)\s+)?--addJobOptions\s+"([^"]*)"', SCRIPT.read_text())
    return [(template or None, options) for template, options in found]


def _bash_expand(snippets: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Expand each snippet as bash would inside double quotes, after sourcing the script."""
    program = f"source {shlex.quote(str(SCRIPT))}\n" + "".join(f'printf "%s\\0" "{s}"\n' for s in snippets)
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=full_env, check=True)
    values = out.stdout.split("\0")[:-1]
    assert len(values) == len(snippets)
    return values


def test_every_addjoboptions_string_parses_like_relion_and_fits_its_job() -> None:
    found = _addjoboptions_strings()
    assert len(found) >= 5, found  # 2 live (denoise, reconstruct) + 3 written out in the comments
    queue_env = {"QUEUE_SCRIPT": "/opt/relion/sbatch.sh", "DENOISE_EXTRA_ARGS": "--lr 1e-4 --l1_weight 50",
                 "RECONSTRUCT_EXTRA_ARGS": "--lr_critic 1e-3 --n_critic 5",
                 "DENOISE_FLAG": "ctf_free", "MASK": "MaskCreate/job020/mask.mrc"}
    jobs_seen = set()
    for env in ({}, queue_env):
        expanded = _bash_expand([options for _, options in found], env)
        for (template, raw), text in zip(found, expanded):
            where = f"relion_pipeliner.sh --addJobOptions \"{raw}\" {env}"
            # the exact whitespace rules of RelionJob::setOption
            assert "; " not in text, f"{where}: a space after ';' becomes part of the next key"
            for piece in filter(None, text.split(";")):
                assert re.fullmatch(r"[^ =][^=]* == .*", piece), f"{where}: {piece!r} is not 'key == value'"
            options = parse_pipeliner_options(text)
            if template is not None:  # --addJobFromStar: the template's values, overridden
                options = {**_read_job_star(EXAMPLES / template, "5.0"), **options}
            check_job_options(options, where)
            jobs_seen.add(options["fn_exe"])
            if env and template is None and "$(" in raw:
                assert options["do_queue"] == "Yes" and options["qsubscript"] == "/opt/relion/sbatch.sh"
                assert options["other_args"] in ("--lr 1e-4 --l1_weight 50", "--lr_critic 1e-3 --n_critic 5")
                assert options["in_mask"] == "MaskCreate/job020/mask.mrc"
    assert {"cryogan-denoise", "cryogan-reconstruct"} <= jobs_seen


def test_script_options_follow_the_settings() -> None:
    """A flag is a param with an empty value; an unset flag and an empty mask are not passed."""
    flagged_text, plain_text = _bash_expand(["$(denoise_options)"], {"DENOISE_FLAG": "no_bias_controls", "DENOISE_N_STEPS": "123"}) \
        + _bash_expand(["$(denoise_options)"])
    flagged = parse_pipeliner_options(flagged_text)
    assert flagged["param10_label"] == "no_bias_controls" and flagged["param10_value"] == ""
    assert flagged["param1_value"] == "123" and flagged["nr_threads"] == "8"
    plain = parse_pipeliner_options(plain_text)
    assert plain["param10_label"] == "" and plain["in_mask"] == "" and "do_queue" not in plain
    command = build_external_command(flagged["fn_exe"], "External/job026/",
                                     {k: v for k, v in flagged.items() if k in INPUT_FLAGS},
                                     _params_of(flagged, "flagged"), 8)
    assert command.endswith(" --device auto --no_bias_controls  --j 8 ") and "--in_mask" not in command
    assert "no_bias_controls" not in build_external_command(
        "cryogan-denoise", "External/job026/", {}, _params_of(plain, "plain"), 8)


def test_parse_rejects_what_relion_rejects() -> None:
    """The strict syntax the script must follow really is strict (a sanity check of the reference)."""
    with pytest.raises(ValueError, match="does not contain label"):
        parse_pipeliner_options("fn_exe == cryogan-denoise; in_part == a.star;")
    with pytest.raises(ValueError, match="does not contain label"):
        parse_pipeliner_options("fn_exe==cryogan-denoise;")
    with pytest.raises(AssertionError, match="n_stepz is not a param of denoise"):
        check_job_options(parse_pipeliner_options("fn_exe == cryogan-denoise;in_part == a.star;in_3dref == b.mrc;"
                                                  "param1_label == n_stepz;param1_value == 3;"), "typo")
    with pytest.raises(AssertionError, match="not an integer"):
        check_job_options(parse_pipeliner_options("fn_exe == cryogan-denoise;in_part == a.star;in_3dref == b.mrc;"
                                                  "param1_label == n_steps;param1_value == 3.5;"), "type")


# --------------------------------------------------------------------------- pipeline helpers of the script


def _bash_function(call: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``source script; <call>`` in ``cwd``."""
    return subprocess.run(["bash", "-c", f"source {shlex.quote(str(SCRIPT))}\n{call}"], cwd=cwd,
                          capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


@pytest.mark.parametrize("version", ["3.1", "4.0", "5.0"])
def test_last_process_name_and_version_from_synthetic_pipelines(tmp_path: Path, version: str) -> None:
    pipe = Pipeline(version, 31, [["Refine3D/job025/", "Refine3D/first/", _proc_type(version, "refine"), _status(version, "Succeeded")],
                                  ["External/job030/", "None", _proc_type(version, "external"), _status(version, "Scheduled")]])
    pipe.write(tmp_path / "default_pipeline.star")
    assert _bash_function("last_process_name", tmp_path).stdout.strip() == "External/job030/"
    assert _bash_function("detect_relion_version", tmp_path).stdout.strip() == version
    assert _bash_function("external_job_type " + version, tmp_path).stdout.strip() == (
        "External" if version == "3.1" else "relion.external")
    # no process yet: last_process_name fails (add_job then reports that nothing was added)
    Pipeline(version, 1, []).write(tmp_path / "default_pipeline.star")
    res = _bash_function("last_process_name", tmp_path)
    assert res.returncode != 0 and res.stdout == ""


@pytest.mark.realdata
@pytest.mark.parametrize(
    "rel, version",
    [("star-variety/sppractice-relion5/default_pipeline.star", "5.0"),
     ("star-variety/himena-relion/default_pipelines/full.star", "5.0"),
     ("relion31-tutorial-stars/extracted/default_pipeline.star", "3.1"),
     ("star-variety/teamtomo-starfile/default_pipeline.star", "3.1")],
)
def test_last_process_name_on_real_pipelines(tmp_path: Path, rel: str, version: str) -> None:
    src = shared_path(*rel.split("/"))
    shutil.copy(src, tmp_path / "default_pipeline.star")
    expected = starfile.read(src, always_dict=True)["pipeline_processes"]["rlnPipeLineProcessName"].iloc[-1]
    assert _bash_function("last_process_name", tmp_path).stdout.strip() == expected
    assert _bash_function("detect_relion_version", tmp_path).stdout.strip() == version


# =========================================================================== a stand-in relion_pipeliner


def _proc_type(version: str, kind: str) -> str | int:
    """Process type: 3.1 int (External 99, Refine3D 10) or the 4.0/5.0 label."""
    if version == "3.1":
        return {"external": 99, "refine": 10}[kind]
    return {"external": "relion.external", "refine": "relion.refine3d"}[kind]


def _status(version: str, status: str) -> str | int:
    """Process status as written: 3.1 int, 4.0/5.0 label."""
    return _STATUS_31[status] if version == "3.1" else status


def _star_cell(value: Any) -> str | int:
    """A pipeline table value for the STAR writer: ints as ints (right-aligned), the rest as text."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return str(value)


@dataclass
class Pipeline:
    """``default_pipeline.star`` as RELION keeps it: counter, processes, nodes, edges."""

    version: str
    counter: int
    processes: list[list[Any]] = field(default_factory=list)  # name, alias, type, status
    nodes: list[list[Any]] = field(default_factory=list)  # name, type (+ depth on 5.0)
    input_edges: list[list[Any]] = field(default_factory=list)  # node, process
    output_edges: list[list[Any]] = field(default_factory=list)  # process, node

    @classmethod
    def read(cls, path: Path, version: str) -> Pipeline:
        """Read with starfile (ints kept as ints so that a rewrite is identical)."""
        blocks = starfile.read(path, always_dict=True)
        rows = lambda key: [] if key not in blocks else [list(r) for r in blocks[key].itertuples(index=False)]  # noqa: E731
        return cls(version, int(blocks["pipeline_general"]["rlnPipeLineJobCounter"]), rows("pipeline_processes"),
                   rows("pipeline_nodes"), rows("pipeline_input_edges"), rows("pipeline_output_edges"))

    def write(self, path: Path) -> None:
        """Write in the version's layout (empty tables left out, as MetaDataTable::write does)."""
        code = _MDT_VERSION[self.version]
        v31 = self.version == "3.1"
        text = star_list_block(code, "pipeline_general", [("rlnPipeLineJobCounter", self.counter)])
        tables = [
            ("pipeline_processes", ["rlnPipeLineProcessName", "rlnPipeLineProcessAlias",
                                    "rlnPipeLineProcessType" if v31 else "rlnPipeLineProcessTypeLabel",
                                    "rlnPipeLineProcessStatus" if v31 else "rlnPipeLineProcessStatusLabel"], self.processes),
            ("pipeline_nodes", ["rlnPipeLineNodeName", "rlnPipeLineNodeType" if v31 else "rlnPipeLineNodeTypeLabel"]
             + (["rlnPipeLineNodeTypeLabelDepth"] if self.version == "5.0" else []), self.nodes),
            ("pipeline_input_edges", ["rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess"], self.input_edges),
            ("pipeline_output_edges", ["rlnPipeLineEdgeProcess", "rlnPipeLineEdgeToNode"], self.output_edges),
        ]
        for name, labels, rows in tables:
            if rows:
                text += star_loop_block(code, name, labels, [[_star_cell(v) for v in row] for row in rows])
        path.write_text(text)

    def add_node(self, name: str, code: int, label: str) -> None:
        """Add a node unless one of that name exists (PipeLine::addNode)."""
        if any(row[0] == name for row in self.nodes):
            return
        if self.version == "3.1":
            self.nodes.append([name, code])
        else:
            self.nodes.append([name, label] + ([1] if self.version == "5.0" else []))


def _read_job_star(path: Path, version: str) -> dict[str, str]:
    """joboption -> value of a job.star (3.1 stores spaces as ``__``)."""
    blocks = starfile.read(path, always_dict=True)
    head = blocks["job"]
    if version == "3.1":
        assert int(head["rlnJobType"]) == 99, f"{path}: not an External job"
    else:
        assert head["rlnJobTypeLabel"] == "relion.external", f"{path}: not an External job"
    table = blocks["joboptions_values"]
    out: dict[str, str] = {}
    for key, value in zip(table["rlnJobOptionVariable"], table["rlnJobOptionValue"]):
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        out[str(key)] = text.replace("__", " ") if version == "3.1" else text
    return out


def _flag_args(argv: list[str]) -> dict[str, str]:
    """``--key value`` pairs of a relion_pipeliner command line."""
    out, i = {}, 0
    while i < len(argv):
        key = argv[i]
        if not key.startswith("--"):
            raise SystemExit(f"ERROR: unexpected argument {key}")
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        out[key[2:]] = value
        i += 2 if value != "" else 1
    return out


def fake_relion_pipeliner(argv: list[str]) -> int:
    """A stand-in ``relion_pipeliner`` for External jobs (protocol §3), run from the project dir.

    The version comes from ``$FAKE_RELION_VERSION``; every call is appended as JSON to
    ``$FAKE_PIPELINER_LOG``. ``--addJob TYPE --addJobOptions OPTS``: TYPE must be ``External``
    (3.1) or ``relion.external``/``External`` (4.0/5.0); OPTS parsed exactly like RELION;
    writes ``External/jobNNN/job.star`` (RelionJob::write) and a Scheduled process, its
    input nodes and edges. ``--RunJobs "NAMES"``: per job, reads job.star back, checks the
    input files exist, builds the command (getCommandsExternalJob) and runs it like
    PipeLine::runJob, then sets the status from the exit file and adds the output nodes.

    Returns:
        0, or 1 with an ``ERROR:`` line where RELION would stop with an error.
    """
    with open(os.environ["FAKE_PIPELINER_LOG"], "a") as fh:
        fh.write(json.dumps(argv) + "\n")
    version = os.environ["FAKE_RELION_VERSION"]
    root = Path.cwd()
    pipe_path = root / "default_pipeline.star"
    if not pipe_path.exists():
        print(f"ERROR: PipeLine::read: cannot find {pipe_path}", file=sys.stderr)
        return 1
    args = _flag_args(argv)
    pipe = Pipeline.read(pipe_path, version)
    if "addJob" in args:
        allowed = ("External",) if version == "3.1" else ("relion.external", "External")
        if args["addJob"] not in allowed:
            print(f"ERROR: RELION {version} has no job type {args['addJob']!r}", file=sys.stderr)
            return 1
        try:
            options = parse_pipeliner_options(args.get("addJobOptions", ""))
        except ValueError as err:
            print(err, file=sys.stderr)
            return 1
        inputs = {k: v for k, v in options.items() if k in INPUT_FLAGS and v != ""}
        params = _params_of(options, "--addJobOptions")
        name = job_dir_for(pipe.counter)
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "job.star").write_text(job_star_text(
            version, options.get("fn_exe", ""), inputs, params, int(options.get("nr_threads", "1")),
            other_args=options.get("other_args", "")))
        pipe.processes.append([name, "None", _proc_type(version, "external"), _status(version, "Scheduled")])
        for key, node in inputs.items():
            code, label40, label50 = _INPUT_NODE[key]
            pipe.add_node(node, code, label40 if version == "4.0" else label50)
            pipe.input_edges.append([node, name])
        pipe.counter += 1
        pipe.write(pipe_path)
        print(f" + Added job {name}")
        return 0
    if "RunJobs" in args:
        for name in args["RunJobs"].split():
            rows = [r for r in pipe.processes if r[0] == name or r[1] == name]
            if not rows:
                print(f"ERROR: cannot find process with name: {name}", file=sys.stderr)
                return 1
            row = rows[0]
            values = _read_job_star(root / row[0] / "job.star", version)
            inputs = {k: values[k] for k in INPUT_FLAGS if values.get(k)}
            for node in inputs.values():
                if not (root / node).exists():
                    print(f"ERROR: input {node} of {name} does not exist (RELION would wait for it)", file=sys.stderr)
                    return 1
            params = {values[f"param{n}_label"]: values[f"param{n}_value"] for n in range(1, 11) if values[f"param{n}_label"]}
            project = RelionProject(root=root, version=version, job_dir=row[0], inputs=inputs, params=params,
                                    nr_threads=int(values["nr_threads"]), fn_exe=values["fn_exe"], other_args=values["other_args"])
            row[3] = _status(version, "Running")
            pipe.write(pipe_path)
            print(f" + Executing {row[0]}")
            run_like_relion(project, command=project.command(), timeout=600)
            status = exit_status(project)
            if status == "Running":
                print(f"ERROR: {row[0]} left no RELION_JOB_EXIT_* file: RELION would wait for ever", file=sys.stderr)
                return 1
            row[3] = _status(version, status)
            if status == "Succeeded":
                for node, code, label in read_output_nodes(project):
                    pipe.add_node(node, code if code is not None else -1, label or "")
                    pipe.output_edges.append([row[0], node])
            pipe.write(pipe_path)
            print(f" + {row[0]}: {status}")
            if status != "Succeeded":
                break
        return 0
    print(f"ERROR: unsupported relion_pipeliner call {argv}", file=sys.stderr)
    return 1


# =========================================================================== running the script

FAST_ENV = {
    "DENOISE_N_STEPS": "4", "DENOISE_BATCH_SIZE": "4", "DENOISE_BASE_CHANNELS": "8", "DENOISE_DEPTH": "2",
    "DENOISE_N_REPORT": "16", "DENOISE_STACK_SIZE": "16", "DENOISE_FLAG": "no_bias_controls", "DENOISE_DEVICE": "cpu",
    "THREADS": "2",
}
PIXEL_A = 8.0


@pytest.fixture(scope="module")
def refine_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny refined particle sets as ``Refine3D/job025/run_data.star`` + ``run_class001.mrc``, keyed by box (25)."""
    from cryogan_core.commands.simulate import run_simulate

    out = {}
    for box in (25,):
        root = tmp_path_factory.mktemp(f"refine{box}")
        job = root / "Refine3D/job025"
        run_simulate(job, n=40, snr_db=-5.0, shift_px=1.0, seed=box, box=box, pixel_size_A=PIXEL_A, project_dir=root)
        (job / "particles.star").rename(job / "run_data.star")
        (job / "ground_truth_map.mrc").rename(job / "run_class001.mrc")
        out[box] = root
    return out


def _make_project(tmp_path: Path, source: Path | None, version: str) -> Path:
    """A RELION project with a finished Refine3D/job025 (counter 26) in ``tmp_path/project``.

    Its files are copied from ``source``, or are empty placeholders when ``source`` is None
    (enough for the script, which only checks that the inputs exist).
    """
    root = tmp_path / "project"
    root.mkdir()
    if source is not None:
        shutil.copytree(source / "Refine3D", root / "Refine3D")
    else:
        (root / "Refine3D/job025").mkdir(parents=True)
        for name in ("run_data.star", "run_class001.mrc"):
            (root / "Refine3D/job025" / name).write_text("")
    pipe = Pipeline(version, 26, [["Refine3D/job025/", "None", _proc_type(version, "refine"), _status(version, "Succeeded")]])
    pipe.add_node("Refine3D/job025/run_data.star", 3, "ParticlesData.star.relion" if version == "4.0" else "ParticleGroupMetadata.star.relion")
    pipe.add_node("Refine3D/job025/run_class001.mrc", 6, "DensityMap.mrc")
    pipe.output_edges = [["Refine3D/job025/", row[0]] for row in pipe.nodes]
    pipe.write(root / "default_pipeline.star")
    return root


def _run_script(root: Path, version: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run examples/relion_pipeliner.sh in ``root`` with the stand-in relion_pipeliner on the PATH."""
    bin_dir = root.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "relion_pipeliner"
    fake.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} "$@"\n')
    fake.chmod(0o755)
    log = root.parent / "pipeliner_calls.jsonl"
    full_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", str(root)),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)]),
        "FAKE_RELION_VERSION": version,
        "FAKE_PIPELINER_LOG": str(log),
        "DENOISE_EXE": f"{sys.executable} -m relion_external.denoise",
        "RECONSTRUCT_EXE": f"{sys.executable} -m relion_external.reconstruct",
        **env,
    }
    res = subprocess.run(["bash", str(SCRIPT)], cwd=root, env=full_env, capture_output=True, text=True, timeout=600)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return res, calls


def _image_name(entry: str, star: str, row: int) -> tuple[int, str]:
    """(1-based index, path) of ``NNNNNN@path``."""
    m = re.fullmatch(r"0*([0-9]+)@(\S+)", entry)
    assert m, f"{star}: row {row}: rlnImageName {entry!r} is not NNNNNN@path"
    return int(m.group(1)), m.group(2)


def _check_relative(name: str, where: str) -> None:
    """A path RELION resolves from the project directory: relative, no '..'."""
    assert not name.startswith("/") and ".." not in Path(name).parts, f"{where}: {name} is not relative to the project dir"


def check_downstream_openable(project: RelionProject, pixel_size_A: float) -> None:
    """Every output node can be opened by a downstream RELION (and cryoSPARC) job.

    Particle STARs: optics + particles tables; every rlnImageName ``N@stack`` resolves from the
    project dir, 1 <= N <= images in the stack, the stack's voxel size is the optics pixel
    size and its box ``rlnImageSize``; a ``particles.cs``/``.csg`` next to it resolves its
    ``>`` blob paths from the ``.csg`` folder with 0-based indices in range. Maps: cubic, voxel
    size = ``pixel_size_A``. PDFs: a PDF header.
    """
    nodes = read_output_nodes(project)
    assert nodes
    for name, _code, _label in nodes:
        _check_relative(name, "RELION_OUTPUT_NODES.star")
        path = project.root / name
        assert path.is_file(), name
        if name.endswith(".star"):
            blocks = starfile.read(path, always_dict=True)
            optics, parts = blocks["optics"], blocks["particles"]
            px = dict(zip(optics["rlnOpticsGroup"], optics["rlnImagePixelSize"]))
            size = dict(zip(optics["rlnOpticsGroup"], optics["rlnImageSize"]))
            headers: dict[str, tuple[int, int, float]] = {}
            for row, (entry, group) in enumerate(zip(parts["rlnImageName"], parts["rlnOpticsGroup"]), start=1):
                index, stack = _image_name(str(entry), name, row)
                _check_relative(stack, f"{name}: row {row}")
                if stack not in headers:
                    with mrcfile.open(project.root / stack, header_only=True, permissive=False) as mrc:
                        headers[stack] = (int(mrc.header.nz), int(mrc.header.nx), float(mrc.voxel_size.x))
                nz, nx, voxel = headers[stack]
                assert 1 <= index <= nz, f"{name}: row {row}: index {index} out of range ({nz} images in {stack})"
                assert nx == int(size[group]), f"{stack}: box {nx} != rlnImageSize {size[group]}"
                assert abs(voxel - float(px[group])) < 1e-3, f"{stack}: voxel size {voxel} != rlnImagePixelSize {px[group]}"
            cs_path = path.with_suffix(".cs")
            if cs_path.exists():
                cs = np.load(cs_path, allow_pickle=False)
                assert len(cs) == len(parts)
                for blob, idx in zip(cs["blob/path"], cs["blob/idx"]):
                    rel = blob.decode()
                    assert rel.startswith(">"), rel
                    with mrcfile.open(path.parent / rel[1:], header_only=True) as mrc:
                        assert 0 <= int(idx) < int(mrc.header.nz)
        elif name.endswith(".mrc"):
            with mrcfile.open(path, header_only=True) as mrc:
                assert int(mrc.header.nx) == int(mrc.header.ny) == int(mrc.header.nz), f"{name} is not cubic"
                assert abs(float(mrc.voxel_size.x) - pixel_size_A) < 1e-3, f"{name}: voxel size {mrc.voxel_size.x}"
        elif name.endswith(".pdf"):
            assert path.read_bytes()[:5] == b"%PDF-", name


# one real run, in a RELION 4.0 project with an odd box: the denoiser runs in 3.1 and 5.0
# projects (even box) in tests/test_denoise_job.py, and the script's 5.0 add-and-run path is
# tested with a stand-in job below (each real run here takes about 14 s)
@pytest.mark.parametrize("version, box", [("4.0", 25)])
def test_script_adds_and_runs_the_denoiser(tmp_path: Path, refine_runs: dict[int, Path], version: str, box: int) -> None:
    root = _make_project(tmp_path, refine_runs[box], version)
    res, calls = _run_script(root, version, {**FAST_ENV, "JOBS": "denoise"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"RELION {version} project" in res.stdout and "denoise: added External/job026/" in res.stdout
    assert "External/job026/: finished successfully" in res.stdout
    # what the script asked RELION to do
    assert [c[:2] for c in calls] == [["--addJob", "relion.external"], ["--RunJobs", "External/job026/"]]
    options = parse_pipeliner_options(calls[0][3])
    spec, inputs, params = check_job_options(options, "--addJobOptions")
    assert inputs == {"in_part": "Refine3D/job025/run_data.star", "in_3dref": "Refine3D/job025/run_class001.mrc"}
    assert params["n_steps"] == "4" and params["no_bias_controls"] == "" and len(params) == 10
    # what RELION ran: the command built from those options, recorded in note.txt
    project = RelionProject(root, version, "External/job026/")
    command = build_external_command(options["fn_exe"], project.job_dir, inputs, params, int(options["nr_threads"]))
    assert command in (project.job_path / "note.txt").read_text()
    assert exit_status(project) == "Succeeded", (project.job_path / "run.err").read_text()[-2000:]
    assert_nodes_valid(project)
    assert [n[0] for n in read_output_nodes(project)] == ["External/job026/particles.star", "External/job026/logfile.pdf"]
    check_downstream_openable(project, PIXEL_A)
    parts = starfile.read(project.job_path / "particles.star", always_dict=True)["particles"]
    assert len(parts) == 40 and parts["rlnImageName"].str.contains("@External/job026/Denoised/").all()
    pipe = Pipeline.read(root / "default_pipeline.star", version)
    assert pipe.processes[-1] == ["External/job026/", "None", "relion.external", "Succeeded"]
    assert pipe.counter == 27


def test_script_on_relion31_adds_external_jobs(tmp_path: Path) -> None:
    root = _make_project(tmp_path, None, "3.1")
    res, calls = _run_script(root, "3.1", {"RUN": "no"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "RELION 3.1 project" in res.stdout
    assert "denoise: added External/job026/" in res.stdout and "reconstruct: added External/job027/" in res.stdout
    assert [c[:2] for c in calls] == [["--addJob", "External"], ["--addJob", "External"]]
    for call in calls:
        check_job_options(parse_pipeliner_options(call[3]), "3.1 --addJobOptions")
    job = (root / "External/job026/job.star").read_text()
    assert "_rlnJobType                            99" in job and "_rlnJobTypeLabel" not in job
    assert _read_job_star(root / "External/job026/job.star", "3.1")["fn_exe"] == f"{sys.executable} -m relion_external.denoise"
    pipe = Pipeline.read(root / "default_pipeline.star", "3.1")
    assert [p[0] for p in pipe.processes[-2:]] == ["External/job026/", "External/job027/"]
    assert all(p[2] == 99 and p[3] == _STATUS_31["Scheduled"] for p in pipe.processes[-2:])


def test_script_stops_with_the_job_error(tmp_path: Path) -> None:
    """A job that fails stops the script with a pointer to run.err; later jobs are not added.

    The failing job is tests/fake_external_job.py (``--fail_with_input_error`` via "Additional
    arguments"): the script's behaviour does not depend on which job fails, and the
    denoiser's own bad-input failures are tested in tests/test_denoise_job.py.
    """
    root = _make_project(tmp_path, None, "5.0")
    fake_job = f"{sys.executable} {Path(__file__).resolve().parent / 'fake_external_job.py'}"
    res, calls = _run_script(root, "5.0", {"JOBS": "denoise reconstruct", "DENOISE_EXE": fake_job,
                                           "DENOISE_EXTRA_ARGS": "--fail_with_input_error"})
    assert res.returncode != 0
    assert "ERROR: External/job026/ did not succeed; see External/job026/run.err" in res.stderr
    assert [c[:2] for c in calls] == [["--addJob", "relion.external"], ["--RunJobs", "External/job026/"]]
    assert exit_status(RelionProject(root, "5.0", "External/job026/")) == "Failed"
    assert "--fail_with_input_error" in (root / "External/job026/note.txt").read_text()
    assert [line for line in (root / "External/job026/run.err").read_text().splitlines() if line.startswith("ERROR:")]
    pipe = Pipeline.read(root / "default_pipeline.star", "5.0")
    assert pipe.processes[-1][0] == "External/job026/" and pipe.processes[-1][3] == "Failed"


def test_script_needs_a_relion_project(tmp_path: Path) -> None:
    empty = tmp_path / "project"
    empty.mkdir()
    res, calls = _run_script(empty, "5.0", {})
    assert res.returncode == 1 and calls == []
    assert "ERROR: no default_pipeline.star" in res.stderr and "project directory" in res.stderr


# =========================================================================== job.star templates


@pytest.mark.parametrize("fname", ["cryogan_denoise_job.star", "cryogan_reconstruct_job.star"])
def test_job_star_template_is_what_relion5_writes(fname: str) -> None:
    path = TEMPLATES / fname
    text = path.read_text()
    blocks = starfile.read(path, always_dict=True)
    assert list(blocks) == ["job", "joboptions_values"]
    assert blocks["job"] == {"rlnJobTypeLabel": "relion.external", "rlnJobIsContinue": 0, "rlnJobIsTomo": 0}
    values = _read_job_star(path, "5.0")
    assert set(values) == set(EXTERNAL_JOBOPTIONS), set(values) ^ set(EXTERNAL_JOBOPTIONS)
    assert values["do_queue"] == "No" and values["qsub"] == "sbatch"
    spec, inputs, params = check_job_options({k: v for k, v in values.items()}, fname)
    assert values["fn_exe"] == ("cryogan-denoise" if "denoise" in fname else "cryogan-reconstruct")
    for key, value in inputs.items():
        _check_relative(value, fname)
    # byte for byte what RelionJob::write (RELION 5) writes for these values
    assert text == job_star_text("5.0", values["fn_exe"], inputs, params, int(values["nr_threads"]), other_args=values["other_args"])
    if spec is not None:  # the defaults the template shows are the job's defaults
        for label, value in params.items():
            default = spec.params[label].default
            if spec.params[label].type is not bool:
                assert spec.params[label].type(value) == default, f"{fname}: {label} {value} != default {default}"


# =========================================================================== README section


def _shown_default(default: Any) -> str:
    """A default as the README tables show it: yes/no, numbers in %g, ``(none)`` for an empty text."""
    if isinstance(default, bool):
        return "yes" if default else "no"
    if isinstance(default, float):
        return f"{default:g}"
    return "(none)" if default == "" else str(default)


def test_readme_section_lists_every_param_with_its_default() -> None:
    text = SECTION.read_text()
    assert "## Use it from RELION" in text and "## Use it from cryoSPARC" in text
    specs = [s for s in (_denoise_spec(), _reconstruct_spec()) if s is not None]
    assert len(specs) == 2, "both jobs exist"
    tables = text.split("| param | default | type | what it does |")
    assert len(tables) == 3, "one param table per job"
    for spec, table in zip(specs, tables[1:]):
        rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", table, flags=re.M)
        listed = dict(rows)
        assert set(spec.params) <= set(listed), f"{spec.name}: missing {set(spec.params) - set(listed)}"
        for name, param in spec.params.items():
            assert listed[name].strip() == _shown_default(param.default), (
                f"{SECTION.name}: {spec.name} param {name}: table says {listed[name].strip()}, "
                f"the job's default is {_shown_default(param.default)}")


if __name__ == "__main__":
    sys.exit(fake_relion_pipeliner(sys.argv[1:]))
