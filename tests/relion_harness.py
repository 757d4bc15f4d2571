"""A test harness that plays RELION for External jobs (not a test module).

It writes a RELION project (``default_pipeline.star`` + ``External/jobNNN/job.star``) the way
RELION 3.1 / 4.0 / 5.0 would, builds the command line byte-for-byte like
``RelionJob::getCommandsExternalJob`` + ``prepareFinalCommand``, runs it like
``PipeLine::runJob`` (``sh -c "<cmd> >> run.out 2>> run.err"`` from the project directory),
and reads back what the job left: the exit file and ``RELION_OUTPUT_NODES.star``.

Everything is written from ``docs/relion_external_protocol.md`` (§1-3) and checked against
real RELION files (../shared/data/star-variety, relion31-tutorial-stars). It deliberately
does NOT import ``relion_external`` so that it is an independent reference for it.

Typical use in a job test::

    proj = make_relion_project(tmp_path, "5.0", inputs={"in_part": "Refine3D/job025/run_data.star"},
                               params={"epochs": "2", "fast": ""},
                               fn_exe=f"{sys.executable} -m relion_external.denoise")
    result = run_like_relion(proj)
    assert exit_status(proj) == "Succeeded"
    assert_nodes_valid(proj)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]

VERSIONS = ("3.1", "4.0", "5.0")

EXIT_FILES = ("RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE", "RELION_JOB_EXIT_ABORTED")
ABORT_NOW = "RELION_JOB_ABORT_NOW"
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"

# joboption name -> command-line flag, in the order getCommandsExternalJob emits them
# (protocol §1.2; R50 pipeline_jobs.cpp:6209-6315).
INPUT_FLAGS: dict[str, str] = {
    "in_mov": "--in_movies",
    "in_mic": "--in_mics",
    "in_part": "--in_parts",
    "in_coords": "--in_coords",
    "in_3dref": "--in_3dref",
    "in_mask": "--in_mask",
}

# Node type of each input joboption (protocol §1.1): (3.1 int, 4.0 label, 5.0 label).
_INPUT_NODE_TYPES: dict[str, tuple[int, str, str]] = {
    "in_mov": (0, "MicrographMoviesData.star.relion", "MicrographMovieGroupMetadata.star.relion"),
    "in_mic": (1, "MicrographsData.star.relion", "MicrographGroupMetadata.star.relion"),
    "in_part": (3, "ParticlesData.star.relion", "ParticleGroupMetadata.star.relion"),
    "in_coords": (2, "MicrographsCoords.star.relion", "MicrographCoordsGroup.star.relion"),
    "in_3dref": (6, "DensityMap.mrc", "DensityMap.mrc"),
    "in_mask": (7, "Mask3D.mrc", "Mask3D.mrc"),
}

# Valid output-node labels per version -> allowed 3.1 ints (protocol §2.3 table).
NODE_LABELS: dict[str, dict[str, set[int]]] = {
    "4.0": {
        "ParticlesData.star.relion": {3},
        "MicrographsData.star.relion": {1},
        "MicrographMoviesData.star.relion": {0},
        "MicrographsCoords.star.relion": {2},
        "ImagesData.star.relion": {5},
        "DensityMap.mrc": {6, 11},
        "DensityMap.mrc.halfmap": {10},
        "Mask3D.mrc": {7},
        "ProcessData.star.relion.optimiser": {9},
        "LogFile.pdf.relion": {13},
        "Image3D.mrc.localresmap": {12},
        "ProcessData.star.relion.postprocess": {14},
    },
    "5.0": {
        "ParticleGroupMetadata.star.relion": {3},
        "MicrographGroupMetadata.star.relion": {1},
        "MicrographMovieGroupMetadata.star.relion": {0},
        "MicrographCoordsGroup.star.relion": {2},
        "Image2DGroupMetadata.star.relion": {5},
        "DensityMap.mrc": {6, 11},
        "DensityMap.mrc.halfmap": {10},
        "Mask3D.mrc": {7},
        "OptimiserData.star.relion": {9},
        "LogFile.pdf.relion": {13},
        "Image3D.mrc.localresmap": {12},
        "ProcessData.star.relion.postprocess": {14},
    },
}

# External joboptions: variable name -> GUI label (protocol §1.1; R50 pipeline_jobs.cpp:6171,
# running-tab labels as in real 3.1 job.star "joboptions_full_definition" tables).
EXTERNAL_JOBOPTIONS: dict[str, str] = {
    "fn_exe": "External executable:",
    "in_mov": "Input movies: ",
    "in_mic": "Input micrographs: ",
    "in_part": "Input particles: ",
    "in_coords": "Input coordinates: ",
    "in_3dref": "Input 3D reference: ",
    "in_mask": "Input 3D mask: ",
    **{f"param{n}_label": f"Param{n} - label:" for n in range(1, 11)},
    **{f"param{n}_value": f"Param{n} - value:" for n in range(1, 11)},
    "nr_threads": "Number of threads:",
    "do_queue": "Submit to queue?",
    "queuename": "Queue name: ",
    "qsub": "Queue submit command:",
    "qsubscript": "Standard submission script:",
    "min_dedicated": "Minimum dedicated cores per node:",
    "other_args": "Additional arguments:",
}

_MDT_VERSION = {"3.1": 30001, "4.0": 30001, "5.0": 50001}


@dataclass
class RelionProject:
    """A RELION project on disk with one External job, as made by :func:`make_relion_project`.

    Attributes:
        root: the project directory (RELION's cwd).
        version: "3.1", "4.0" or "5.0".
        job_dir: project-relative job dir with trailing slash, e.g. ``"External/job012/"``.
        inputs: joboption name (``in_part``, ``in_3dref``, ``in_mask``, ``in_mic``, ``in_mov``,
            ``in_coords``) -> path relative to ``root``.
        params: Params-tab label -> value, in param1..10 order (``""`` value = bare flag).
        nr_threads: the "Number of threads" field (``--j``).
        fn_exe: the "External executable" field, pasted verbatim into the command.
        other_args: the "Additional arguments" field.
        is_continue: whether job.star says ``_rlnJobIsContinue 1``.
    """

    root: Path
    version: str
    job_dir: str
    inputs: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    nr_threads: int = 1
    fn_exe: str = "cryogan-denoise"
    other_args: str = ""
    is_continue: bool = False

    @property
    def job_path(self) -> Path:
        """Absolute path of the job directory."""
        return self.root / self.job_dir

    def command(self) -> str:
        """The command RELION would run for this job (see :func:`build_external_command`)."""
        return build_external_command(
            self.fn_exe, self.job_dir, self.inputs, self.params, self.nr_threads, self.other_args
        )


# ---------------------------------------------------------------------------------------
# STAR writing exactly like RELION's MetaDataTable::write (3.1+): see real files in
# ../shared/data/star-variety/sppractice-relion5 and relion31-tutorial-stars.
# ---------------------------------------------------------------------------------------


def _star_value_list(value: str | int) -> str:
    """List-table value: ints right-aligned in 12 characters, strings as they are ("" → ``""``)."""
    if isinstance(value, int):
        return f"{value:>12}"
    return value if value != "" else '""'


def _star_value_loop(value: str | int) -> str:
    """Loop-table value: ints right-aligned in 12, strings in 10 (``""`` for empty), then a space."""
    if isinstance(value, int):
        return f"{value:>12} "
    text = value if value != "" else '""'
    return f"{text:>10} "


def star_list_block(version_code: int, name: str, items: list[tuple[str, str | int]]) -> str:
    """A RELION key-value block: ``\\n# version V\\n\\ndata_NAME\\n\\n_label<pad>value ... \\n``.

    Padding: ``12 + max(10, longest label) - len(label)`` spaces after ``_label``
    (``std::setw`` in MetaDataTable::write), labels without the leading underscore.
    """
    max_w = max([10] + [len(label) for label, _ in items])
    lines = [f"_{label}{' ' * (12 + max_w - len(label))}{_star_value_list(value)}" for label, value in items]
    return f"\n# version {version_code}\n\ndata_{name}\n\n" + "\n".join(lines) + "\n \n"


def star_loop_block(version_code: int, name: str, labels: list[str], rows: list[list[str | int]]) -> str:
    """A RELION loop block: header ``loop_ `` + ``_label #i `` lines, padded rows, ``" \\n"`` end."""
    head = f"\n# version {version_code}\n\ndata_{name}\n\nloop_ \n"
    head += "".join(f"_{label} #{i + 1} \n" for i, label in enumerate(labels))
    body = "".join("".join(_star_value_loop(v) for v in row) + "\n" for row in rows)
    return head + body + " \n"


def job_dir_for(job_number: int) -> str:
    """``External/job%03d/`` (counter < 1000) else ``External/job<n>/`` (R50 pipeline_jobs.cpp:672-690)."""
    return f"External/job{job_number:03d}/" if job_number < 1000 else f"External/job{job_number}/"


def job_star_text(
    version: str,
    fn_exe: str,
    inputs: Mapping[str, str],
    params: Mapping[str, str],
    nr_threads: int,
    is_continue: bool = False,
    other_args: str = "",
) -> str:
    """``job.star`` of an External job as ``RelionJob::write`` writes it (protocol §3.1).

    Raises:
        ValueError: unknown version or input key, more than 10 params.
    """
    _check_version(version)
    values = _joboption_values(fn_exe, inputs, params, nr_threads, other_args)
    values["qsub"] = "sbatch" if version == "5.0" else "qsub"
    code = _MDT_VERSION[version]
    if version == "3.1":
        head = [("rlnJobType", 99), ("rlnJobIsContinue", int(is_continue))]
    else:
        head = [
            ("rlnJobTypeLabel", "relion.external"),
            ("rlnJobIsContinue", int(is_continue)),
            ("rlnJobIsTomo", 0),
        ]
    rows: list[list[str | int]] = [
        [k, _escape_job_value(values[k], version)] for k in sorted(values)  # std::map = ASCII order
    ]
    return star_list_block(code, "job", head) + star_loop_block(
        code, "joboptions_values", ["rlnJobOptionVariable", "rlnJobOptionValue"], rows
    )


def _escape_job_value(value: str, version: str) -> str:
    """A joboption value as RELION writes it into job.star.

    4.0/5.0: ``escapeStringForSTAR`` (src/strings.cpp) puts a value that contains whitespace
    or starts with a quote in double quotes. 3.1: spaces become ``__`` (as in the real 3.1
    tutorial job.star files, e.g. ``gain_flip No__flipping__(0)``). Empty stays empty here
    (the writer turns it into ``""``).
    """
    if value == "":
        return value
    if version == "3.1":
        return value.replace(" ", "__")
    if value[0] in "\"'" or any(c in value for c in " \t"):
        return '"' + value + '"'
    return value


def _joboption_values(
    fn_exe: str, inputs: Mapping[str, str], params: Mapping[str, str], nr_threads: int, other_args: str
) -> dict[str, str]:
    """All External joboptions with RELION's defaults (qsub filled in by the caller)."""
    for key in inputs:
        if key not in INPUT_FLAGS:
            raise ValueError(f"unknown input joboption {key!r}; use one of {', '.join(INPUT_FLAGS)}")
    if len(params) > 10:
        raise ValueError(f"an External job has at most 10 params, got {len(params)}")
    values = {
        "do_queue": "No",
        "fn_exe": fn_exe,
        "min_dedicated": "1",
        "nr_threads": str(nr_threads),
        "other_args": other_args,
        "qsubscript": "/public/EM/RELION/relion/bin/relion_qsub.csh",
        "queuename": "openmpi",
    }
    for key in INPUT_FLAGS:
        values[key] = inputs.get(key, "")
    labels = list(params.items())
    for n in range(1, 11):
        label, value = labels[n - 1] if n <= len(labels) else ("", "")
        values[f"param{n}_label"] = label
        values[f"param{n}_value"] = value
    return values


def default_pipeline_text(version: str, job_dir: str, job_number: int, inputs: Mapping[str, str]) -> str:
    """``default_pipeline.star`` with the External job Running and its inputs as nodes/edges.

    3.1: int ``_rlnPipeLineProcessType 99``/``_rlnPipeLineProcessStatus 0`` and
    ``_rlnPipeLineNodeType``; 4.0: ``# version 30001`` with type/status labels; 5.0:
    ``# version 50001`` and ``_rlnPipeLineNodeTypeLabelDepth`` (protocol §2.3, §3.1; real
    files in ../shared/data). Empty tables are omitted, as MetaDataTable::write does.
    """
    _check_version(version)
    code = _MDT_VERSION[version]
    text = star_list_block(code, "pipeline_general", [("rlnPipeLineJobCounter", job_number + 1)])
    if version == "3.1":
        proc_labels = ["rlnPipeLineProcessName", "rlnPipeLineProcessAlias", "rlnPipeLineProcessType", "rlnPipeLineProcessStatus"]
        proc_row: list[str | int] = [job_dir, "None", 99, 0]
    else:
        proc_labels = ["rlnPipeLineProcessName", "rlnPipeLineProcessAlias", "rlnPipeLineProcessTypeLabel", "rlnPipeLineProcessStatusLabel"]
        proc_row = [job_dir, "None", "relion.external", "Running"]
    text += star_loop_block(code, "pipeline_processes", proc_labels, [proc_row])
    node_rows: list[list[str | int]] = []
    for key, name in inputs.items():
        code31, label40, label50 = _INPUT_NODE_TYPES[key]
        if version == "3.1":
            node_rows.append([name, code31])
        elif version == "4.0":
            node_rows.append([name, label40])
        else:
            node_rows.append([name, label50, 1])
    if node_rows:
        node_labels = {
            "3.1": ["rlnPipeLineNodeName", "rlnPipeLineNodeType"],
            "4.0": ["rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel"],
            "5.0": ["rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel", "rlnPipeLineNodeTypeLabelDepth"],
        }[version]
        text += star_loop_block(code, "pipeline_nodes", node_labels, node_rows)
        text += star_loop_block(
            code,
            "pipeline_input_edges",
            ["rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess"],
            [[name, job_dir] for name in inputs.values()],
        )
    return text


def _check_version(version: str) -> None:
    """ValueError unless version is one of VERSIONS."""
    if version not in VERSIONS:
        raise ValueError(f"unknown RELION version {version!r}; use one of {VERSIONS}")


def make_relion_project(
    root: Path,
    version: str,
    job_number: int = 12,
    params: dict[str, str] | None = None,
    inputs: dict[str, str] | None = None,
    is_continue: bool = False,
    nr_threads: int = 1,
    fn_exe: str = "cryogan-denoise",
    other_args: str = "",
) -> RelionProject:
    """Create (or refresh) a RELION project in ``root`` with one External job.

    Writes ``root/default_pipeline.star`` (version style) and ``root/External/jobNNN/job.star``
    exactly as RelionJob::write would. Input files are not created (the test does that).

    Args:
        root: project directory (created if needed).
        version: "3.1", "4.0" or "5.0".
        job_number: the job counter of the External job (12 → ``External/job012/``).
        params: Params-tab label -> value, at most 10; ``""`` value = flag.
        inputs: joboption name (``in_part``, ``in_3dref``, ``in_mask``, ``in_mic``, ``in_mov``,
            ``in_coords``) -> project-relative path.
        is_continue: write ``_rlnJobIsContinue 1`` (RELION "Continue!").
        nr_threads: "Number of threads".
        fn_exe: "External executable" (verbatim shell text).
        other_args: "Additional arguments".

    Raises:
        ValueError: unknown version or input joboption, more than 10 params.
    """
    _check_version(version)
    root = Path(root)
    params = dict(params or {})
    inputs = dict(inputs or {})
    job_dir = job_dir_for(job_number)
    (root / job_dir).mkdir(parents=True, exist_ok=True)
    (root / job_dir / "job.star").write_text(
        job_star_text(version, fn_exe, inputs, params, nr_threads, is_continue, other_args)
    )
    (root / "default_pipeline.star").write_text(default_pipeline_text(version, job_dir, job_number, inputs))
    return RelionProject(
        root=root,
        version=version,
        job_dir=job_dir,
        inputs=inputs,
        params=params,
        nr_threads=nr_threads,
        fn_exe=fn_exe,
        other_args=other_args,
        is_continue=is_continue,
    )


# ---------------------------------------------------------------------------------------
# Command line and running
# ---------------------------------------------------------------------------------------


def build_external_command(
    fn_exe: str,
    outputname: str,
    inputs: Mapping[str, str],
    params: Mapping[str, str],
    nr_threads: int,
    other_args: str = "",
) -> str:
    """The command RELION runs for an External job, byte for byte (protocol §1.2-1.3).

    ``fn_exe --o <outputname>`` + non-empty inputs in the order movies, mics, parts, coords,
    3dref, mask + ``--<label> <value>`` for every param with a non-empty label (empty value →
    ``--label `` + the next separator, i.e. a flag) + ``--j N`` + ``" " + other_args`` (so a
    trailing space when empty); then ``" --pipeline_control " + outputname`` only if the text
    contains ``relion_`` (prepareFinalCommand, R50 pipeline_jobs.cpp:693-712).

    Raises:
        ValueError: unknown input joboption.
    """
    command = fn_exe + " --o " + outputname
    for key in inputs:
        if key not in INPUT_FLAGS:
            raise ValueError(f"unknown input joboption {key!r}; use one of {', '.join(INPUT_FLAGS)}")
    for key, flag in INPUT_FLAGS.items():
        value = inputs.get(key, "")
        if value != "":
            command += f" {flag} {value}"
    for label, value in params.items():
        if label != "":
            command += " --" + label + " " + value
    command += " --j " + str(nr_threads)
    command += " " + other_args
    if "relion_" in command:
        command += " --pipeline_control " + outputname
    return command


def run_like_relion(
    project: RelionProject,
    command: str | None = None,
    timeout: float = 600,
    background: bool = False,
    env: dict | None = None,
    clean: bool = True,
) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run the job as RELION's ``PipeLine::runJob`` does for a local run (protocol §1.4).

    Removes stale ``RELION_JOB_ABORT_NOW`` and ``RELION_JOB_EXIT_*`` (unless ``clean=False``),
    appends the command to ``note.txt`` (`` ++++ Executing new job on <ctime>`` block), and
    runs ``sh -c "<command> >> <job>run.out 2>> <job>run.err"`` with cwd = project root (the
    redirection is skipped if the command already contains ``>``). The repository root is
    prepended to ``PYTHONPATH`` so ``relion_external`` imports without installation.

    Args:
        project: from :func:`make_relion_project`.
        command: default ``project.command()``.
        timeout: seconds (foreground only).
        background: return the Popen at once (its own process group, see :func:`signal_job`).
        env: extra environment variables.
        clean: remove stale exit/abort files first, as RELION does.

    Returns:
        CompletedProcess (foreground) or Popen (background); ``sh``'s exit status is the
        job's, but RELION itself never looks at it.
    """
    if command is None:
        command = project.command()
    job = project.root / project.job_dir
    job.mkdir(parents=True, exist_ok=True)
    if clean:
        for name in (ABORT_NOW, *EXIT_FILES):
            (job / name).unlink(missing_ok=True)
    with open(job / "note.txt", "a") as fh:
        fh.write(f"\n ++++ Executing new job on {time.ctime()}\n ++++ with the following command(s): \n{command}\n ++++ \n")
    final = command
    if ">" not in command:
        final = f"{command} >> {project.job_dir}run.out 2>> {project.job_dir}run.err"
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p)
    if background:
        return subprocess.Popen(["sh", "-c", final], cwd=project.root, env=full_env, start_new_session=True)
    return subprocess.run(["sh", "-c", final], cwd=project.root, env=full_env, timeout=timeout)


def signal_job(proc: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    """Send ``signum`` to the whole process group of a background run (like ``scancel``)."""
    os.killpg(proc.pid, signum)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _group_alive(pgid: int) -> bool:
    """True while a non-zombie process of group ``pgid`` exists.

    Uses /proc where available: an orphaned job process that has exited stays a zombie
    until the container's init reaps it, which can take a second. Elsewhere ``killpg(0)``.
    """
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_group_exit(proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    """Wait until every process of a background run's group has exited; True if they did."""
    def gone() -> bool:
        """True once the job's process group has no process left."""
        proc.poll()
        return not _group_alive(proc.pid)

    return wait_for(gone, timeout)


# ---------------------------------------------------------------------------------------
# Reading back
# ---------------------------------------------------------------------------------------


def exit_status(project: RelionProject) -> str:
    """RELION's view of the job: "Succeeded" | "Failed" | "Aborted" | "Running".

    SUCCESS wins over FAILURE over ABORTED (PipeLine::checkProcessCompletion, protocol §2.1).
    """
    job = project.root / project.job_dir
    for fname, status in zip(EXIT_FILES, ("Succeeded", "Failed", "Aborted")):
        if (job / fname).exists():
            return status
    return "Running"


def _read_loop(path: Path, table: str) -> tuple[list[str], list[list[str]]] | None:
    """Minimal STAR loop reader: (labels, rows) of ``data_<table>``, or None if absent."""
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == f"data_{table}")
    except StopIteration:
        return None
    labels: list[str] = []
    rows: list[list[str]] = []
    in_loop = False
    for line in lines[start + 1:]:
        stripped = line.strip()
        if stripped.startswith("data_"):
            break
        if not in_loop:
            if stripped.startswith("loop_"):
                in_loop = True
            continue
        if stripped.startswith("_"):
            labels.append(stripped.split()[0][1:])
            continue
        if stripped.startswith("#"):
            continue
        if not stripped:
            if rows:
                break
            continue
        rows.append(stripped.split())
    return labels, rows


def read_output_nodes(project: RelionProject) -> list[tuple[str, int | None, str | None]]:
    """Rows of ``<job>/RELION_OUTPUT_NODES.star``: (name, 3.1 int or None, label or None).

    Parsed independently of relion_external (table ``data_output_nodes``, columns
    ``rlnPipeLineNodeName``/``rlnPipeLineNodeType``/``rlnPipeLineNodeTypeLabel``). A missing
    file gives ``[]`` (RELION then adds no nodes).
    """
    path = project.root / project.job_dir / OUTPUT_NODES
    if not path.exists():
        return []
    table = _read_loop(path, "output_nodes")
    if table is None:
        return []
    labels, rows = table
    idx = {label: i for i, label in enumerate(labels)}
    out: list[tuple[str, int | None, str | None]] = []
    for row in rows:
        name = row[idx["rlnPipeLineNodeName"]]
        code = int(row[idx["rlnPipeLineNodeType"]]) if "rlnPipeLineNodeType" in idx else None
        label = row[idx["rlnPipeLineNodeTypeLabel"]] if "rlnPipeLineNodeTypeLabel" in idx else None
        out.append((name, code, label))
    return out


def _label_base(label: str, table: Mapping[str, set[int]]) -> str | None:
    """The longest known label that ``label`` equals or extends with ``.keyword``s."""
    matches = [base for base in table if label == base or label.startswith(base + ".")]
    return max(matches, key=len) if matches else None


def assert_nodes_valid(project: RelionProject) -> None:
    """Assert that ``RELION_OUTPUT_NODES.star`` is what this project's RELION version needs.

    Checks: the file and table exist with BOTH columns (``_rlnPipeLineNodeType`` and
    ``_rlnPipeLineNodeTypeLabel``); at least one node; every name starts with the job dir
    (no ``./``) and exists relative to the project root; the label belongs to the version's
    label set (4.0 ``ParticlesData.star.relion``, 5.0 ``ParticleGroupMetadata.star.relion``;
    for 3.1 either set, as 3.1 ignores labels) and agrees with the int (particles 3, …);
    the label's file type matches the file's extension; PDFs carry ``LogFile.pdf.relion``/13.

    Raises:
        AssertionError: naming the first offending node.
    """
    path = project.root / project.job_dir / OUTPUT_NODES
    assert path.exists(), f"{path} is missing"
    table = _read_loop(path, "output_nodes")
    assert table is not None, f"{path}: no data_output_nodes table"
    labels, _ = table
    for column in ("rlnPipeLineNodeName", "rlnPipeLineNodeType", "rlnPipeLineNodeTypeLabel"):
        assert column in labels, f"{path}: column _{column} is missing (has {labels})"
    nodes = read_output_nodes(project)
    assert nodes, f"{path}: no output nodes"
    if project.version == "3.1":
        known = {**NODE_LABELS["4.0"], **NODE_LABELS["5.0"]}
    else:
        known = NODE_LABELS[project.version]
    for name, code, label in nodes:
        assert name.startswith(project.job_dir) and not name.startswith("./"), (
            f"{path}: node {name} does not start with {project.job_dir}"
        )
        assert (project.root / name).exists(), f"{path}: node {name} does not exist in {project.root}"
        assert label is not None and code is not None, f"{path}: node {name} lacks a type"
        base = _label_base(label, known)
        assert base is not None, f"{path}: node {name}: label {label} is not a RELION {project.version} label"
        assert code in known[base], f"{path}: node {name}: int type {code} does not match label {label}"
        ext = base.split(".")[1]
        assert name.endswith("." + ext), f"{path}: node {name}: label {label} is for .{ext} files"
        if name.endswith(".pdf"):
            assert "LogFile.pdf.relion" in label and code == 13, f"{path}: PDF node {name} has {label}/{code}"


# ---------------------------------------------------------------------------------------
# relion_pipeliner
# ---------------------------------------------------------------------------------------


def parse_pipeliner_options(s: str) -> dict[str, str]:
    """Parse an ``--addJobOptions`` string exactly like RELION (protocol §3).

    Split on ``;`` (empty pieces, e.g. after a trailing ``;``, are skipped); in each piece
    find ``==``: key = text before it minus ONE character, value = text from 3 characters
    after it (``RelionJob::setOption``, R50 pipeline_jobs.cpp:337-359) — no trimming. The key
    must be an External joboption variable (``fn_exe``) or its exact GUI label
    (``External executable:``); GUI labels are returned as variable names.

    Returns:
        joboption variable -> value, in input order.

    Raises:
        ValueError: a piece without ``==`` (``ERROR: no '==' entry on the setOptionLine: ...``),
            a piece too short for ``== `` (std::out_of_range in RELION), or an unknown key
            (``ERROR: Job does not contain label: <key>``; a space after ``;`` ends up here).
    """
    by_label = {label: var for var, label in EXTERNAL_JOBOPTIONS.items()}
    out: dict[str, str] = {}
    for piece in s.split(";"):
        if piece == "":
            continue
        pos = piece.find("==")
        if pos < 0:
            raise ValueError(f"ERROR: no '==' entry on the setOptionLine: {piece}")
        key = piece if pos == 0 else piece[: pos - 1]  # substr(0, pos-1); pos-1 underflows at 0
        if pos + 3 > len(piece):
            raise ValueError(f"ERROR: option {piece!r} has no value part after '== ' (std::out_of_range)")
        value = piece[pos + 3:]
        if key in EXTERNAL_JOBOPTIONS:
            out[key] = value
        elif key in by_label:
            out[by_label[key]] = value
        else:
            raise ValueError(f"ERROR: Job does not contain label: {key}")
    return out


def pipeliner_addjob_command(
    version: str,
    fn_exe: str,
    inputs: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    nr_threads: int = 1,
    other_args: str = "",
    alias: str | None = None,
) -> str:
    """``relion_pipeliner --addJob <type> --addJobOptions "..."`` for an External job (protocol §3).

    Type ``External`` on 3.1, ``relion.external`` on 4.0/5.0. Options are
    ``key == value;`` with no space after ``;``, in the order fn_exe, inputs (as given),
    param1..N label/value, nr_threads, other_args (only if non-empty); ``--setJobAlias`` last.

    Raises:
        ValueError: unknown version/input, more than 10 params, or a value containing ``;``
            or ``"`` (cannot be expressed in --addJobOptions).
    """
    _check_version(version)
    options: list[tuple[str, str]] = [("fn_exe", fn_exe)]
    for key, value in (inputs or {}).items():
        if key not in INPUT_FLAGS:
            raise ValueError(f"unknown input joboption {key!r}")
        options.append((key, value))
    params = dict(params or {})
    if len(params) > 10:
        raise ValueError(f"an External job has at most 10 params, got {len(params)}")
    for n, (label, value) in enumerate(params.items(), start=1):
        options += [(f"param{n}_label", label), (f"param{n}_value", value)]
    options.append(("nr_threads", str(nr_threads)))
    if other_args:
        options.append(("other_args", other_args))
    for key, value in options:
        if ";" in value or '"' in value:
            raise ValueError(f"--addJobOptions cannot hold {key} = {value!r} (';' or '\"')")
    job_type = "External" if version == "3.1" else "relion.external"
    text = "".join(f"{key} == {value};" for key, value in options)
    command = f'relion_pipeliner --addJob {job_type} --addJobOptions "{text}"'
    if alias:
        command += f" --setJobAlias {alias}"
    return command
