"""The RELION External-job protocol: command line, exit/abort files, output nodes, version.

Node types, ``RELION_OUTPUT_NODES.star`` and version/continue detection live in
:mod:`relion_external._nodes` and are re-exported here.

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
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Iterable, Sequence, TypeVar

from loguru import logger

from cryogan_core.commands.options import convert_value, options_from_mapping, params_of
from cryogan_core.errors import InputError
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

T = TypeVar("T")

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

# File names: RELION src/pipeline_control.h:31-34 (identical in 3.1/4.0/5.0), protocol §2.1.
EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"

# Arguments that RELION's getCommandsExternalJob emits itself (protocol §1.2).
_INPUT_KEYS = ("in_movies", "in_mics", "in_parts", "in_coords", "in_3dref", "in_mask")
_RESERVED_KEYS = ("o", "j", "pipeline_control", *_INPUT_KEYS)

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
# Command line
# ---------------------------------------------------------------------------------------


@dataclass
class RelionArgs:
    """The parsed External-job command line (protocol §1.2).

    Attributes:
        o: the output (job) directory exactly as given, e.g. ``Path("External/job012")``
            (RELION passes ``External/job012/``, relative to the project directory = cwd).
        in_parts, in_3dref, in_mask, in_mics, in_movies, in_coords: input file names as
            given (relative to the project directory), or None when RELION did not pass them.
        j: number of threads (``--j``, always passed by RELION; default 1).
        params: every other ``--key``; values are strings, bare flags are ``True``; ``-`` in
            keys is replaced by ``_`` (``--n-epochs 3`` → ``{"n_epochs": "3"}``).
        pipeline_control: value of ``--pipeline_control``/``--pipeline-control`` (RELION
            appends it when the command contains ``relion_``, protocol §1.3); ignored.
        argv: the raw argument list.
    """

    o: Path
    in_parts: str | None = None
    in_3dref: str | None = None
    in_mask: str | None = None
    in_mics: str | None = None
    in_movies: str | None = None
    in_coords: str | None = None
    j: int = 1
    params: dict[str, str | bool] = field(default_factory=dict)
    pipeline_control: str | None = None
    argv: list[str] = field(default_factory=list)

    def param(self, key: str, kind: type, default: Any) -> Any:
        """Return ``--key`` converted to ``kind`` (bool, int, float or str), or ``default``
        when absent; a bare flag is True for a bool (conversion: :func:`convert_value`).

        Raises:
            InputError: ``command line: --key ...`` for a value that does not convert, or a
                bare flag for a non-bool.
        """
        if key not in self.params:
            return default
        try:
            return convert_value(key, self.params[key], kind)
        except InputError as exc:
            raise InputError(f"command line: {exc}") from None

    def param_str(self, key: str, default: str | None = None) -> str | None:
        """``--key`` as a string, or ``default`` (see :meth:`param`)."""
        return self.param(key, str, default)

    def param_int(self, key: str, default: int) -> int:
        """``--key`` as an int, or ``default`` (see :meth:`param`)."""
        return self.param(key, int, default)

    def param_float(self, key: str, default: float) -> float:
        """``--key`` as a float, or ``default`` (see :meth:`param`)."""
        return self.param(key, float, default)

    def param_bool(self, key: str, default: bool = False) -> bool:
        """``--key`` as a bool (bare flag, yes/no, true/false, 1/0, on/off), or ``default``."""
        return self.param(key, bool, default)

    def options(self, cls: type[T]) -> T:
        """Build a command's options dataclass from the params (Params tab, Additional arguments).

        Args:
            cls: an options dataclass declared with :func:`cryogan_core.commands.options.option`
                (``DenoiseOptions``, ``ReconstructOptions``).

        Returns:
            The options; params not given take their defaults. A bare flag is ``yes`` for a
            bool option.

        Raises:
            InputError: an unknown param (listing the known ones), a non-bool param given
                without a value, or a value of the wrong type or out of range.
        """
        self.reject_unknown_params(p.name for p in params_of(cls))
        try:
            return options_from_mapping(cls, self.params)
        except InputError as exc:
            raise InputError(f"command line: {exc}") from None

    def reject_unknown_params(self, known: Iterable[str]) -> None:
        """Raise if a parameter outside ``known`` was given (catches typos in Params labels).

        Raises:
            InputError: naming the first unknown ``--key`` and listing the known ones.
        """
        known_set = set(known)
        for key in self.params:
            if key not in known_set:
                listed = ", ".join("--" + k for k in sorted(known_set)) or "none"
                raise InputError(f"command line: unknown parameter --{key} (known parameters: {listed})")


def parse_relion_args(argv: Sequence[str]) -> RelionArgs:
    """Parse an External-job command line as built by RELION's ``getCommandsExternalJob``.

    Accepts (protocol §1.2-1.3): ``--key value``; bare flags ``--key`` (next token starts
    with ``--`` or none is left; RELION emits ``--label `` for params with an empty value) →
    ``True``; negative numbers as values (``--shift -1.5``); ``--key=value``;
    ``--pipeline_control DIR`` and ``--pipeline-control DIR``; unknown keys (kept in
    ``params``). Tokens that follow a value without their own ``--key`` belong to that value
    (RELION does not quote values, so a value with spaces reaches us split by the shell);
    they are joined back with single spaces. ``-`` in keys becomes ``_``.

    Args:
        argv: the arguments without the program name (``sys.argv[1:]``).

    Returns:
        RelionArgs with ``o`` as a Path and ``j`` as an int.

    Raises:
        InputError: ``--o`` missing or without a value; ``--j`` not a positive integer; an
            ``--in_*`` given without a file; a bare ``--``; a token before the first
            ``--key``; the same key given twice with different values.
    """
    values: dict[str, str | bool] = {}
    current: str | None = None  # key whose value may absorb further stray tokens
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            body = tok[2:]
            inline_value: str | None = None
            if "=" in body:
                body, inline_value = body.split("=", 1)
            key = body.replace("-", "_")
            if not key:
                raise InputError(f"command line: argument {i + 1} '{tok}' is not an option name")
            if inline_value is not None:
                value: str | bool = inline_value
                i += 1
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value = tokens[i + 1]
                i += 2
            else:
                value = True
                i += 1
            if key in values and values[key] != value:
                raise InputError(
                    f"command line: --{key} given twice ({values[key]!r} and {value!r}); "
                    f"check the Params labels of the job"
                )
            values[key] = value
            current = key if value is not True else None
        else:
            if current is None:
                raise InputError(
                    f"command line: unexpected argument '{tok}' (every argument must follow a --key)"
                )
            values[current] = f"{values[current]} {tok}"
            i += 1

    if "o" not in values or values["o"] is True or values["o"] == "":
        raise InputError("command line: --o <output directory> is required (RELION passes --o External/jobNNN/)")
    for key in _INPUT_KEYS:
        if values.get(key) is True:
            raise InputError(f"command line: --{key} needs a file name")
    j = _parse_threads(values.get("j", "1"))
    pipeline_control = values.get("pipeline_control")
    return RelionArgs(
        o=Path(str(values["o"])),
        in_parts=_opt_str(values.get("in_parts")),
        in_3dref=_opt_str(values.get("in_3dref")),
        in_mask=_opt_str(values.get("in_mask")),
        in_mics=_opt_str(values.get("in_mics")),
        in_movies=_opt_str(values.get("in_movies")),
        in_coords=_opt_str(values.get("in_coords")),
        j=j,
        params={k: v for k, v in values.items() if k not in _RESERVED_KEYS},
        pipeline_control=None if pipeline_control is None else ("" if pipeline_control is True else str(pipeline_control)),
        argv=list(argv),
    )


def _parse_threads(raw: str | bool) -> int:
    """``--j`` as an int >= 1; InputError otherwise (a bare ``--j`` included)."""
    text = "" if raw is True else str(raw)
    try:
        j = int(text)
    except ValueError:
        j = 0
    if j < 1:
        raise InputError(f"command line: --j {text}: the number of threads must be an integer >= 1")
    return j


def _opt_str(value: str | bool | None) -> str | None:
    """None stays None; a string is returned unchanged."""
    return None if value is None else str(value)


def _find_output_dir(argv: Sequence[str]) -> str | None:
    """Best-effort ``--o`` value from a command line that failed to parse, else None."""
    for i, tok in enumerate(argv):
        if tok.startswith("--o="):
            return tok[4:] or None
        if tok == "--o" and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            return argv[i + 1]
    return None


def parse_relion_args_or_exit(argv: Sequence[str]) -> RelionArgs:
    """:func:`parse_relion_args`, but a bad command line ends the program the RELION way.

    On ``InputError`` it prints ``ERROR: <message>`` (one line) on stderr, touches
    ``RELION_JOB_EXIT_FAILURE`` in ``--o`` when ``--o`` can be found (so the job does not stay
    "Running" forever, protocol §6.1) and exits with status 1.

    Raises:
        SystemExit: with code 1 on a bad command line.
    """
    try:
        return parse_relion_args(argv)
    except InputError as exc:
        _print_error_line(str(exc))
        out = _find_output_dir(argv)
        if out:
            try:
                Path(out).mkdir(parents=True, exist_ok=True)
                (Path(out) / EXIT_FAILURE).touch()
            except OSError:
                pass
        raise SystemExit(1) from None



# ---------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------

_LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss} | {level: <7} | {message}"


def configure_logging(verbose: bool = False) -> None:
    """Send loguru INFO (DEBUG if ``verbose``) lines to stdout and WARNING+ to stderr.

    RELION redirects stdout/stderr of a local run to ``run.out``/``run.err`` (protocol §1.4)
    and shows them in the GUI's two log panes, so warnings appear in the red pane. Colours
    are off (the sinks are files). Replaces any earlier loguru handlers.
    """
    warning_no = logger.level("WARNING").no
    logger.remove()
    logger.add(
        sys.stdout,
        level="DEBUG" if verbose else "INFO",
        format=_LOG_FORMAT,
        colorize=False,
        filter=lambda record: record["level"].no < warning_no,
    )
    logger.add(sys.stderr, level="WARNING", format=_LOG_FORMAT, colorize=False)


def _print_error_line(message: str) -> None:
    """Write ``ERROR: <message>`` as exactly one line on stderr (newlines become spaces)."""
    one_line = " ".join(str(message).split())
    sys.stderr.write(f"ERROR: {one_line}\n")
    sys.stderr.flush()


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
            _print_error_line(str(exc))
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
        _print_error_line(f"{self.name}: received {signal.Signals(signum).name}; job marked as failed")
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
                _print_error_line(
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
            _print_error_line(str(exc))
            self._write_exit(EXIT_FAILURE)
            return 1
        if isinstance(exc, SystemExit):
            self._write_exit(EXIT_FAILURE)
            return exc.code if isinstance(exc.code, int) else 1
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        sys.stderr.flush()
        self._write_exit(EXIT_FAILURE)
        return 1
