"""The RELION External-job protocol: command line, exit/abort files, output nodes, version.

Node types, ``RELION_OUTPUT_NODES.star`` and version/continue detection live in
:mod:`relion_external._nodes`, the command line in :mod:`relion_external._args`, and the
log and exit-file names in :mod:`relion_external._reporting`; all are re-exported here.

Everything here follows ``docs/relion_external_protocol.md`` (shared docs; cited below as
"protocol §N"), which was written from the RELION 3.1 / 4.0 / 5.0 sources
(``src/pipeline_jobs.cpp``, ``src/pipeliner.cpp``, ``src/pipeline_control.h``).

Typical use by a job executable::

    args = parse_relion_args_or_exit(sys.argv[1:])
    configure_logging()
    with RelionJob(args.o, project_dir=Path.cwd(), name="cryogan-denoise") as job:
        ...                                   # work; call job.check_abort() between steps
        job.set_output_nodes([Node(job.node_name("particles.star"), "particles")])

On leaving the ``with`` block the job writes ``RELION_OUTPUT_NODES.star`` and then touches
``RELION_JOB_EXIT_SUCCESS`` (last). ``InputError`` → one ``ERROR: ...`` line on stderr,
``RELION_JOB_EXIT_FAILURE``, exit status 1. ``JobAborted`` → ``RELION_JOB_EXIT_ABORTED``,
``RELION_JOB_ABORT_NOW`` removed, exit status 2. Any other exception → traceback on
stderr, ``RELION_JOB_EXIT_FAILURE``, exit status 1. SIGTERM/SIGINT → ``RELION_JOB_EXIT_FAILURE``
at once, exit status 128 + signal number. RELION itself ignores exit statuses and only
polls the exit files (protocol §2.1), so the files are what matters.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType, TracebackType
from typing import Sequence

from loguru import logger

from cryogan_core.errors import InputError
from relion_external._args import RelionArgs, parse_relion_args, parse_relion_args_or_exit
from relion_external._nodes import (
    NODE_KINDS,
    OUTPUT_NODES_FILE,
    RELION_VERSIONS,
    Node,
    check_nodes_in_job,
    detect_relion_version,
    job_dir_name,
    node_type_code,
    node_type_label,
    read_is_continue,
    write_output_nodes,
)
from relion_external._reporting import (
    ABORT_NOW,
    EXIT_ABORTED,
    EXIT_FAILURE,
    EXIT_SUCCESS,
    configure_logging,
    print_error_line,
)

__all__ = [
    "ABORT_NOW",
    "EXIT_ABORTED",
    "EXIT_FAILURE",
    "EXIT_SUCCESS",
    "JobAborted",
    "NODE_KINDS",
    "Node",
    "OUTPUT_NODES_FILE",
    "RELION_VERSIONS",
    "RelionArgs",
    "RelionJob",
    "configure_logging",
    "detect_relion_version",
    "job_dir_name",
    "node_type_code",
    "node_type_label",
    "parse_relion_args",
    "parse_relion_args_or_exit",
    "read_is_continue",
    "write_output_nodes",
]

# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class JobAborted(Exception):
    """The user asked RELION to abort the job (``RELION_JOB_ABORT_NOW`` exists in ``--o``).

    Raised by :meth:`RelionJob.check_abort`. Inside a :class:`RelionJob` block it leads to
    ``RELION_JOB_EXIT_ABORTED``, removal of ``RELION_JOB_ABORT_NOW`` and exit status 2
    (protocol §2.1, RELION docs ``Using-RELION.rst:243-246``).
    """


class _JobTerminated(BaseException):
    """Raised from the SIGTERM/SIGINT handler; not an ``Exception`` so that job code's
    ``except Exception`` blocks do not swallow a queue cancel."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# ---------------------------------------------------------------------------------------
# The job context
# ---------------------------------------------------------------------------------------


class RelionJob:
    """Context manager that runs one External job and speaks RELION's file protocol.

    ``__enter__`` creates ``--o``, removes stale ``RELION_JOB_EXIT_*`` files and installs
    SIGTERM/SIGINT handlers (main thread only). ``__exit__`` ends the job:

    * normal exit: checks every declared output node exists, writes
      ``RELION_OUTPUT_NODES.star`` (atomic), then touches ``RELION_JOB_EXIT_SUCCESS`` last;
    * ``InputError``: ``ERROR: <message>`` (one line) on stderr, ``RELION_JOB_EXIT_FAILURE``,
      ``SystemExit(1)``;
    * ``JobAborted``: ``RELION_JOB_EXIT_ABORTED``, ``RELION_JOB_ABORT_NOW`` removed, log line
      "Aborted by user", ``SystemExit(2)``;
    * SIGTERM/SIGINT (scancel, Ctrl-C): ``RELION_JOB_EXIT_FAILURE`` touched in the handler,
      ``SystemExit(128 + signum)``;
    * any other exception: traceback on stderr, ``RELION_JOB_EXIT_FAILURE``, ``SystemExit(1)``.

    Args:
        o: ``--o`` as given (relative to ``project_dir``, or absolute inside it).
        project_dir: the RELION project directory (default: the current directory).
        name: program name used in log lines, e.g. "cryogan-denoise".

    Attributes:
        project_dir: absolute project directory.
        job_dir: absolute job directory.
        job_dir_name: project-relative name, e.g. ``"External/job012/"``.
    """

    def __init__(self, o: Path | str, project_dir: Path | None = None, name: str = "cryogan") -> None:
        self.project_dir = Path(os.path.abspath(project_dir if project_dir is not None else Path.cwd()))
        self.o = Path(o)
        self.name = name
        self.job_dir = Path(os.path.abspath(self.o if self.o.is_absolute() else self.project_dir / self.o))
        self._job_dir_name: str | None = None
        self._version: str | None = None
        self._is_continue: bool | None = None
        self._nodes: list[Node] = []
        self._exit_written = False
        self._in_exit = False
        self._old_handlers: dict[int, object] = {}

    # ----------------------------------------------------------------- properties
    @property
    def job_dir_name(self) -> str:
        """Project-relative job directory name with a trailing slash (``External/job012/``).

        Raises:
            InputError: ``--o`` is outside the project directory.
        """
        if self._job_dir_name is None:
            self._job_dir_name = job_dir_name(self.o, self.project_dir)
        return self._job_dir_name

    @property
    def version(self) -> str:
        """RELION version "3.1" | "4.0" | "5.0" (see :func:`detect_relion_version`)."""
        if self._version is None:
            self._version = detect_relion_version(self.job_dir, self.project_dir)
        return self._version

    @property
    def is_continue(self) -> bool:
        """True when RELION ran the job with "Continue!" (``_rlnJobIsContinue 1`` in job.star)."""
        if self._is_continue is None:
            self._is_continue = read_is_continue(self.job_dir)
        return self._is_continue

    # ----------------------------------------------------------------- helpers
    def path(self, rel: str) -> Path:
        """Absolute path of ``rel`` inside the job directory.

        Raises:
            ValueError: ``rel`` is absolute or climbs out with ``..``.
        """
        return self.job_dir / self._check_rel(rel)

    def node_name(self, rel: str) -> str:
        """Project-relative node name of a file in the job directory, e.g.
        ``node_name("particles.star") == "External/job012/particles.star"``.

        Raises:
            ValueError: ``rel`` is absolute or climbs out with ``..``.
        """
        return self.job_dir_name + self._check_rel(rel)

    @staticmethod
    def _check_rel(rel: str) -> str:
        """Return ``rel`` as a clean POSIX relative path; ValueError if absolute or with '..'."""
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts or not rel_path.parts:
            raise ValueError(f"{rel!r} must be a relative path inside the job directory")
        return rel_path.as_posix()

    def check_abort(self) -> None:
        """Raise :class:`JobAborted` if ``RELION_JOB_ABORT_NOW`` exists in the job directory.

        Call between work units (training steps, batches); it costs one ``stat``.
        """
        if (self.job_dir / ABORT_NOW).exists():
            raise JobAborted(f"{self.job_dir_name}{ABORT_NOW} found")

    def set_output_nodes(self, nodes: Sequence[Node]) -> None:
        """Declare the output nodes written to ``RELION_OUTPUT_NODES.star`` on success.

        Replaces earlier declarations. The files must exist when the ``with`` block ends.

        Raises:
            ValueError: a node is not inside this job directory, or a name is repeated.
        """
        nodes = list(nodes)
        check_nodes_in_job(nodes, self.job_dir_name)
        self._nodes = nodes

    # ----------------------------------------------------------------- protocol
    def _touch(self, fname: str) -> None:
        """Create the empty protocol file ``fname`` in the job directory (never raises)."""
        try:
            (self.job_dir / fname).touch()
        except OSError as exc:  # pragma: no cover - only on a broken filesystem
            sys.stderr.write(f"WARNING: could not create {self.job_dir / fname}: {exc}\n")

    def _write_exit(self, fname: str) -> None:
        """Touch exit file ``fname`` once; later calls are ignored."""
        if not self._exit_written:
            self._exit_written = True
            self._touch(fname)

    def __enter__(self) -> RelionJob:
        """Create ``--o``, remove stale exit files, install signal handlers.

        Raises:
            SystemExit: code 1 (after an ``ERROR:`` line) if ``--o`` is outside the project
                directory or cannot be created.
        """
        try:
            _ = self.job_dir_name  # validates --o against the project dir
            try:
                self.job_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"--o {self.o}: cannot create the output directory: {exc.strerror}") from None
        except InputError as exc:
            print_error_line(str(exc))
            if self.job_dir.is_dir():
                self._touch(EXIT_FAILURE)
            raise SystemExit(1) from None
        for fname in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
            try:
                (self.job_dir / fname).unlink()
            except FileNotFoundError:
                pass
        self._install_signal_handlers()
        logger.info(
            f"{self.name}: job {self.job_dir_name} (RELION {self.version}"
            f"{', continue' if self.is_continue else ''}), project {self.project_dir}"
        )
        return self

    def _install_signal_handlers(self) -> None:
        """Install SIGTERM/SIGINT handlers (main thread only; elsewhere Python forbids it)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        """Put back the handlers that were active before ``__enter__``."""
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._old_handlers = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: touch FAILURE immediately (RELION must not wait forever), then stop."""
        if self._exit_written:
            return  # already finishing; let the exit path complete
        self._write_exit(EXIT_FAILURE)
        print_error_line(f"{self.name}: received {signal.Signals(signum).name}; job marked as failed")
        if self._in_exit:
            os._exit(128 + signum)
        raise _JobTerminated(signum)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Finish the job: exit file (and nodes on success) per the class docstring.

        Returns:
            False on success (nothing is suppressed).

        Raises:
            SystemExit: 1 (input error, bug, missing output), 2 (aborted), 128+signum (signal).
        """
        self._in_exit = True
        try:
            code = self._finish(exc)
        finally:
            self._restore_signal_handlers()
        if code is None:
            return False
        raise SystemExit(code) from None

    def _finish(self, exc: BaseException | None) -> int | None:
        """Write the exit file for the outcome ``exc``; return the exit code (None = success)."""
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            exc = None
        if exc is None:
            missing = [n.name for n in self._nodes if not (self.project_dir / n.name).exists()]
            if missing:
                print_error_line(
                    f"{self.name}: output node {missing[0]} was declared but not written "
                    f"({len(missing)} missing)"
                )
                self._write_exit(EXIT_FAILURE)
                return 1
            try:
                if self._nodes:
                    write_output_nodes(self.job_dir, self._nodes, self.version, self.project_dir)
            except Exception:
                traceback.print_exc()
                self._write_exit(EXIT_FAILURE)
                return 1
            self._write_exit(EXIT_SUCCESS)
            logger.info(f"{self.name}: finished successfully ({len(self._nodes)} output nodes)")
            return None
        if isinstance(exc, _JobTerminated):
            self._write_exit(EXIT_FAILURE)
            return 128 + exc.signum
        if isinstance(exc, JobAborted):
            try:
                (self.job_dir / ABORT_NOW).unlink()
            except FileNotFoundError:
                pass
            self._write_exit(EXIT_ABORTED)
            logger.info("Aborted by user")
            return 2
        if isinstance(exc, InputError):
            print_error_line(str(exc))
            self._write_exit(EXIT_FAILURE)
            return 1
        if isinstance(exc, SystemExit):
            self._write_exit(EXIT_FAILURE)
            return exc.code if isinstance(exc.code, int) else 1
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        sys.stderr.flush()
        self._write_exit(EXIT_FAILURE)
        return 1
