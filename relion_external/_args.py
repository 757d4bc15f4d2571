"""The External-job command line as RELION builds it (protocol §1.2-1.3), parsed.

RELION's ``getCommandsExternalJob`` (``src/pipeline_jobs.cpp``, 3.1 / 4.0 / 5.0) writes
``--o``, the ``--in_*`` inputs, every Params-tab ``--label value`` and ``--j``; this module
turns that into :class:`RelionArgs` and, for a bad command line, ends the program the RELION
way (:func:`parse_relion_args_or_exit`). Re-exported by :mod:`relion_external._job`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

from cryogan_core.commands.options import convert_value, options_from_mapping, params_of
from cryogan_core.errors import InputError
from relion_external._reporting import EXIT_FAILURE, print_error_line

T = TypeVar("T")

__all__ = ["RelionArgs", "input_file", "parse_relion_args", "parse_relion_args_or_exit"]

# Arguments that RELION's getCommandsExternalJob emits itself (protocol §1.2).
_INPUT_KEYS = ("in_movies", "in_mics", "in_parts", "in_coords", "in_3dref", "in_mask")
_RESERVED_KEYS = ("o", "j", "pipeline_control", *_INPUT_KEYS)


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
        print_error_line(str(exc))
        out = _find_output_dir(argv)
        if out:
            try:
                Path(out).mkdir(parents=True, exist_ok=True)
                (Path(out) / EXIT_FAILURE).touch()
            except OSError:
                pass
        raise SystemExit(1) from None


def input_file(value: str | None, flag: str, what: str, required: str | None = None) -> str | None:
    """Return ``value`` if it names an existing file (relative to the project directory).

    The jobs check their input files first, before their options (whose checks import
    torch, ~4 s), so a mistyped path in the GUI fails at once.

    Args:
        value: the path given with ``--flag``, or None when the flag was not given.
        flag: the RELION flag's name without dashes (``in_parts``), for the message.
        what: what the file is (``the particles``), for the message.
        required: for a required file, where to give it (``fill 'Input particles' in the GUI,
            e.g. Refine3D/job025/run_data.star``): then a missing ``--flag`` is an error;
            None: the file is optional.

    Returns:
        ``value`` unchanged (None stays None for an optional file).

    Raises:
        InputError: ``--flag value: file not found (what; paths are relative to the project
            directory)``, or ``--flag: no file given (what; required)`` for a required file.
    """
    if not value:
        if required is not None:
            raise InputError(f"--{flag}: no file given ({what}; {required})")
        return None
    if not Path(value).is_file():
        raise InputError(f"--{flag} {value}: file not found ({what}; paths are relative to the project directory)")
    return value
