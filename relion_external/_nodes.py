"""RELION's pipeline side of an External job: node types, ``RELION_OUTPUT_NODES.star``, version and continue detection.

Follows ``docs/relion_external_protocol.md`` (shared docs; "protocol §N"), written from the
RELION 3.1 / 4.0 / 5.0 sources (``src/pipeline_jobs.h``, ``src/pipeliner.cpp``). Re-exported
by :mod:`relion_external._job`.
"""


from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryogan_core.errors import InputError

__all__ = [
    "NODE_KINDS",
    "Node",
    "OUTPUT_NODES_FILE",
    "RELION_VERSIONS",
    "check_nodes_in_job",
    "detect_relion_version",
    "job_dir_name",
    "node_type_code",
    "node_type_label",
    "read_is_continue",
    "write_output_nodes",
]

# File name: RELION src/pipeline_control.h (identical in 3.1/4.0/5.0), protocol §2.1.
OUTPUT_NODES_FILE = "RELION_OUTPUT_NODES.star"

RELION_VERSIONS = ("3.1", "4.0", "5.0")

# kind -> (3.1 int, 4.0 label, 5.0 label). Protocol §2.3: R31 pipeline_jobs.h:145-160,
# R40 pipeline_jobs.h:341-353, R50 pipeline_jobs.h:179-199.
NODE_KINDS: dict[str, tuple[int, str, str]] = {
    "movies": (0, "MicrographMoviesData.star.relion", "MicrographMovieGroupMetadata.star.relion"),
    "micrographs": (1, "MicrographsData.star.relion", "MicrographGroupMetadata.star.relion"),
    "coords": (2, "MicrographsCoords.star.relion", "MicrographCoordsGroup.star.relion"),
    "particles": (3, "ParticlesData.star.relion", "ParticleGroupMetadata.star.relion"),
    "images2d": (5, "ImagesData.star.relion", "Image2DGroupMetadata.star.relion"),
    "map": (6, "DensityMap.mrc", "DensityMap.mrc"),
    "mask": (7, "Mask3D.mrc", "Mask3D.mrc"),
    "halfmap": (10, "DensityMap.mrc.halfmap", "DensityMap.mrc.halfmap"),
    "logfile": (13, "LogFile.pdf.relion", "LogFile.pdf.relion"),
}


# ---------------------------------------------------------------------------------------
# Node types and version detection
# ---------------------------------------------------------------------------------------


def _check_kind(kind: str) -> tuple[int, str, str]:
    """Return the NODE_KINDS row of ``kind``; ValueError for an unknown kind."""
    try:
        return NODE_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown node kind {kind!r}; known: {', '.join(NODE_KINDS)}") from None


def _check_version(version: str) -> str:
    """Return ``version`` if it is one of RELION_VERSIONS; ValueError otherwise."""
    if version not in RELION_VERSIONS:
        raise ValueError(f"unknown RELION version {version!r}; known: {', '.join(RELION_VERSIONS)}")
    return version


def node_type_code(kind: str) -> int:
    """RELION 3.1 integer node type of ``kind`` (R31 ``src/pipeline_jobs.h:145-160``).

    particles 3, micrographs 1, movies 0, coords 2, images2d 5, map 6, mask 7, halfmap 10,
    logfile 13.

    Raises:
        ValueError: unknown kind.
    """
    return _check_kind(kind)[0]


def node_type_label(kind: str, version: str) -> str:
    """RELION 4.0/5.0 node type label of ``kind`` (protocol §2.3).

    4.0 labels (R40 ``pipeline_jobs.h:341-353``) and 5.0 labels (R50 ``pipeline_jobs.h:179-199``)
    differ for the STAR kinds (``ParticlesData.star.relion`` vs
    ``ParticleGroupMetadata.star.relion`` …) and agree for maps, masks and PDFs. For
    "3.1" the 4.0 label is returned: 3.1 reads only the int column and ignores the label
    column with a warning (protocol §2.2), and a 3.1/4.0 project cannot be told apart when
    its pipeline is still empty, so both get the same file.

    Raises:
        ValueError: unknown kind or version.
    """
    _, label40, label50 = _check_kind(kind)
    return label50 if _check_version(version) == "5.0" else label40


_VERSION_RE = re.compile(r"^#\s*version\s+(\d+)", re.MULTILINE)


def _version_from_star_text(text: str, int_label: str, str_label: str) -> str | None:
    """Classify a RELION STAR text as '3.1'/'4.0'/'5.0', or None if it cannot tell.

    Rules (protocol §2.3 "Detecting the running version"): ``# version 50001`` → 5.0;
    ``# version 30001`` with a ``...TypeLabel`` column → 4.0; an int ``...Type`` column and no
    label column → 3.1; ``# version 30001`` alone → 4.0 (3.1 and 4.0 get identical output).
    """
    versions = {int(v) for v in _VERSION_RE.findall(text)}
    has_label = re.search(rf"^{re.escape(str_label)}\b", text, re.MULTILINE) is not None
    has_int = re.search(rf"^{re.escape(int_label)}\s", text, re.MULTILINE) is not None
    if any(v >= 50001 for v in versions):
        return "5.0"
    if has_label:
        return "4.0" if versions else None
    if has_int:
        return "3.1"
    if 30001 in versions:
        return "4.0"
    return None


def detect_relion_version(job_dir: Path, project_dir: Path) -> str:
    """Detect the RELION version that launched the job: "3.1", "4.0" or "5.0".

    Reads ``job_dir/job.star`` (written by RELION before launch: 3.1 ``_rlnJobType 99``
    without ``_rlnJobTypeLabel``; 4.0 ``# version 30001`` + ``_rlnJobTypeLabel``; 5.0
    ``# version 50001``), else ``project_dir/default_pipeline.star`` (3.1 int
    ``_rlnPipeLineProcessType``/``_rlnPipeLineNodeType``; 4.0 labels + ``# version 30001``;
    5.0 ``# version 50001``), else returns "5.0" (protocol §2.3).

    Args:
        job_dir: the job directory; relative paths are taken relative to ``project_dir``.
        project_dir: the RELION project directory.

    Returns:
        "3.1", "4.0" or "5.0". Unreadable files are skipped, never an error.
    """
    job_dir = Path(job_dir)
    if not job_dir.is_absolute():
        job_dir = Path(project_dir) / job_dir
    job_star = _read_text(job_dir / "job.star")
    if job_star is not None:
        found = _version_from_star_text(job_star, "_rlnJobType", "_rlnJobTypeLabel")
        if found is not None:
            return found
    pipeline = _read_text(Path(project_dir) / "default_pipeline.star")
    if pipeline is not None:
        found = _version_from_star_text(pipeline, "_rlnPipeLineProcessType", "_rlnPipeLineProcessTypeLabel")
        if found is None:
            found = _version_from_star_text(pipeline, "_rlnPipeLineNodeType", "_rlnPipeLineNodeTypeLabel")
        if found is not None:
            return found
    return "5.0"


def _read_text(path: Path) -> str | None:
    """The text of ``path``, or None if it is missing or unreadable."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


_CONTINUE_RE = re.compile(r"^_rlnJobIsContinue\s+(\S+)", re.MULTILINE)


def read_is_continue(job_dir: Path) -> bool:
    """True if ``job_dir/job.star`` says ``_rlnJobIsContinue 1`` (RELION "Continue!").

    RELION rewrites job.star on every run (protocol §2.4-2.5); there is no ``--continue``
    flag. A missing or unreadable job.star means False.
    """
    text = _read_text(Path(job_dir) / "job.star")
    if text is None:
        return False
    match = _CONTINUE_RE.search(text)
    return match is not None and match.group(1).strip('"') in ("1", "true", "True")


# ---------------------------------------------------------------------------------------
# Output nodes
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """An output node: a file of the job, as RELION should list it (protocol §2.2).

    Attributes:
        name: path relative to the project directory, starting with the job directory,
            e.g. ``"External/job012/particles.star"`` (no ``./``, no spaces).
        kind: one of NODE_KINDS: "particles", "micrographs", "movies", "coords", "images2d",
            "map", "halfmap", "mask", "logfile".

    Raises:
        ValueError: unknown kind; name empty, absolute, starting with ``./``, containing
            ``..``, whitespace or quotes, or without a directory part.
    """

    name: str
    kind: str

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        name = self.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"node name must be a non-empty string, got {name!r}")
        if name.startswith("/"):
            raise ValueError(f"node name {name!r} must be relative to the project directory, not absolute")
        if name.startswith("./"):
            raise ValueError(f"node name {name!r} must not start with './' (RELION wants e.g. External/job012/x.star)")
        if any(c.isspace() for c in name) or '"' in name or "'" in name:
            raise ValueError(f"node name {name!r} must not contain spaces or quotes")
        parts = name.split("/")
        if ".." in parts or "." in parts or "" in parts[:-1] or len(parts) < 2 or not parts[-1]:
            raise ValueError(f"node name {name!r} must be a file inside a job directory, e.g. External/job012/x.star")


def job_dir_name(job_dir: Path | str, project_dir: Path | str) -> str:
    """The project-relative name of a job directory as RELION writes it: ``"External/job012/"``.

    Args:
        job_dir: ``--o`` as given (``External/job012/``, ``./External/job012`` or an absolute
            path inside the project directory).
        project_dir: the RELION project directory.

    Returns:
        POSIX path relative to ``project_dir`` with exactly one trailing ``/``.

    Raises:
        InputError: ``job_dir`` is the project directory itself or lies outside it.
    """
    project_abs = Path(os.path.abspath(project_dir))
    job = Path(job_dir)
    job_abs = Path(os.path.abspath(job if job.is_absolute() else project_abs / job))
    rel: Path | None = None
    for base, target in ((project_abs, job_abs), (project_abs.resolve(), job_abs.resolve())):
        try:
            rel = target.relative_to(base)
            break
        except ValueError:
            continue
    if rel is None or str(rel) in ("", "."):
        raise InputError(
            f"--o {job_dir}: the output directory must be inside the project directory {project_abs} "
            f"(RELION passes e.g. --o External/job012/)"
        )
    return rel.as_posix().rstrip("/") + "/"


def write_output_nodes(
    job_dir: Path, nodes: Sequence[Node], version: str, project_dir: Path | None = None
) -> Path:
    """Write ``job_dir/RELION_OUTPUT_NODES.star`` atomically (temp file + ``os.replace``).

    Format (protocol §2.2 and §7, "version-agnostic variant"): table ``data_output_nodes``
    with BOTH columns ``_rlnPipeLineNodeType`` (3.1 int, read by 3.1) and
    ``_rlnPipeLineNodeTypeLabel`` (label of ``version``, read by 4.0/5.0)::

        data_output_nodes

        loop_
        _rlnPipeLineNodeName #1
        _rlnPipeLineNodeType #2
        _rlnPipeLineNodeTypeLabel #3
        External/job012/particles.star 3 ParticleGroupMetadata.star.relion

    Args:
        job_dir: the job directory (relative to ``project_dir`` or absolute).
        nodes: the output nodes; every name must start with the job directory's
            project-relative name (e.g. ``External/job012/``).
        version: "3.1", "4.0" or "5.0" (chooses the label set).
        project_dir: the project directory; default the current directory.

    Returns:
        The path written.

    Raises:
        ValueError: unknown version, a node outside the job directory, duplicate names.
        InputError: ``job_dir`` outside ``project_dir``.
    """
    _check_version(version)
    project = Path(project_dir) if project_dir is not None else Path.cwd()
    prefix = job_dir_name(job_dir, project)
    check_nodes_in_job(nodes, prefix)
    lines = [
        "data_output_nodes",
        "",
        "loop_",
        "_rlnPipeLineNodeName #1",
        "_rlnPipeLineNodeType #2",
        "_rlnPipeLineNodeTypeLabel #3",
    ]
    for node in nodes:
        lines.append(f"{node.name} {node_type_code(node.kind)} {node_type_label(node.kind, version)}")
    text = "\n".join(lines) + "\n\n"
    out_dir = Path(job_dir) if Path(job_dir).is_absolute() else project / job_dir
    target = out_dir / OUTPUT_NODES_FILE
    tmp = out_dir / f".{OUTPUT_NODES_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def check_nodes_in_job(nodes: Sequence[Node], prefix: str) -> None:
    """Check output nodes before they are listed in ``RELION_OUTPUT_NODES.star`` (protocol §2.2).

    Args:
        nodes: the job's output nodes.
        prefix: the job directory relative to the project, with its trailing slash
            (``External/job012/``); every node name must start with it and name a file in it.

    Raises:
        ValueError: a node is not a :class:`Node`, is not inside ``prefix``, or is listed twice.
    """
    seen: set[str] = set()
    for node in nodes:
        if not isinstance(node, Node):
            raise ValueError(f"output nodes must be Node objects, got {node!r}")
        if not node.name.startswith(prefix) or len(node.name) <= len(prefix):
            raise ValueError(
                f"output node {node.name!r} is not inside the job directory {prefix!r} "
                f"(use job.node_name('file'))"
            )
        if node.name in seen:
            raise ValueError(f"output node {node.name!r} is listed twice")
        seen.add(node.name)

