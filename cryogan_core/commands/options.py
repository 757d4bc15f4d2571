"""Job options declared once, as a dataclass, for the command line, the RELION job and the docs.

A command's options are the fields of one dataclass (``DenoiseOptions``,
``ReconstructOptions``); each field is made with :func:`option`, which stores its help text.
From that one declaration:

* :func:`click_options` adds one click option per field to a ``cryogan`` sub-command
  (``--train_box 48`` and ``--train-box 48`` both work; a bool is a bare flag or takes
  yes/no, so ``--ctf_free`` and ``--positivity no`` both work);
* :func:`options_from_mapping` builds the options from ``name -> value`` (strings from a
  RELION command line, or typed values from Python), converting and checking each value;
* :func:`params_of` lists ``Param(name, type, default, help)`` for the RELION Params tab,
  the README tables and their tests.

Value checks that do not depend on the data go in the dataclass's ``__post_init__`` and
raise :class:`~cryogan_core.errors.InputError`, so every way of building options checks them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

import click

from cryogan_core.errors import InputError

__all__ = [
    "Param",
    "check_values",
    "click_options",
    "convert_value",
    "cs_project_dir_option",
    "device_option",
    "in_parts_passthrough_option",
    "option",
    "option_error",
    "options_from_mapping",
    "params_of",
]

T = TypeVar("T")

_TRUE_WORDS = ("1", "true", "yes", "y", "on")
_FALSE_WORDS = ("0", "false", "no", "n", "off")
_KINDS = (bool, int, float, str)


def option(default: Any, help: str) -> Any:  # noqa: A002 - click's name for it
    """Declare one option field: ``box_train: int = option(0, "Training box (px) ...")``.

    Args:
        default: the default value; its Python type (bool, int, float or str) is the
            option's type.
        help: one or two sentences for ``--help``, the RELION Params tab docs and the README.

    Returns:
        A ``dataclasses.field`` carrying the help text in its metadata.

    Raises:
        TypeError: the default is not a bool, int, float or str.
    """
    if type(default) not in _KINDS:
        raise TypeError(f"option default {default!r}: must be a bool, int, float or str")
    return dataclasses.field(default=default, metadata={"help": help})


# The options every job has, declared once (each job's class lists them where it wants them
# in its --help and RELION Params tab).


def in_parts_passthrough_option() -> Any:
    """``in_parts_passthrough: str``: cryoSPARC passthrough ``.cs`` files (an :func:`option`)."""
    return option("", "cryoSPARC input only: passthrough .cs file(s) for the particles .cs, comma-separated (default: found beside it).")


def cs_project_dir_option() -> Any:
    """``cs_project_dir: str``: the cryoSPARC project directory of blob paths (an :func:`option`)."""
    return option("", "cryoSPARC input only: the cryoSPARC project directory that blob paths are relative to (default: the .cs folder and its parents).")


def device_option() -> Any:
    """``device: str``: the torch device, ``auto`` by default (an :func:`option`;
    :func:`cryogan_core.commands._common.select_device` reads it)."""
    return option("auto", "torch device: auto (CUDA if present), cpu, cuda, cuda:1 ...")


@dataclass(frozen=True)
class Param:
    """One option as the RELION Params tab and the README see it.

    Attributes:
        name: the label, in underscores (``train_box``).
        type: bool, int, float or str (the type of the default).
        default: the default value.
        help: the help text.
    """

    name: str
    type: type
    default: Any
    help: str


def params_of(cls: type) -> tuple[Param, ...]:
    """The options of an options dataclass, in declaration order.

    Args:
        cls: a dataclass whose fields were made with :func:`option`.

    Returns:
        One :class:`Param` per field.

    Raises:
        TypeError: a field was not declared with :func:`option` (no default or no help).
    """
    out = []
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING or "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with option(default, help)")
        out.append(Param(f.name, type(f.default), f.default, f.metadata["help"]))
    return tuple(out)


def option_error(opts: Any, name: str, why: str) -> InputError:
    """The one-line error for option ``name`` of ``opts``: ``--name value: why``."""
    return InputError(f"--{name} {getattr(opts, name)}: {why}")


def check_values(
    opts: Any,
    positive: Iterable[str] = (),
    non_negative: Iterable[str] = (),
    unit_interval: Iterable[str] = (),
    choices: Mapping[str, Iterable[object]] | None = None,
) -> None:
    """Range checks shared by the options dataclasses (call from ``__post_init__``).

    Args:
        opts: the options instance.
        positive: names that must be > 0.
        non_negative: names that must be >= 0.
        unit_interval: names that must be in [0, 1) (Adam betas, fractions).
        choices: name -> the allowed values (words or numbers).

    Raises:
        InputError: :func:`option_error` for the first value out of range, in the order
            positive, non-negative, unit interval, choices.
    """
    for name in positive:
        if not getattr(opts, name) > 0:
            raise option_error(opts, name, "must be > 0")
    for name in non_negative:
        if not getattr(opts, name) >= 0:  # written so that NaN fails too
            raise option_error(opts, name, "must be >= 0")
    for name in unit_interval:
        if not 0 <= getattr(opts, name) < 1:
            raise option_error(opts, name, "must be in [0, 1)")
    for name, allowed in (choices or {}).items():
        allowed = tuple(allowed)
        if getattr(opts, name) not in allowed:
            raise option_error(opts, name, f"must be one of {', '.join(str(a) for a in allowed)}")


def convert_value(name: str, value: Any, kind: type) -> Any:
    """Convert one option value (a string from a command line, or a typed value) to ``kind``.

    Args:
        name: the option's name (for the error message).
        value: the value; ``True`` is how a bare flag arrives from a RELION command line.
        kind: bool, int, float or str. Bools accept yes/no, true/false, 1/0, on/off, y/n.

    Returns:
        The converted value.

    Raises:
        InputError: ``--name value: expected ...`` when it cannot be converted, or when a
            non-bool option was given as a bare flag.
    """
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    if value is True:
        raise InputError(f"--{name} needs a value (in RELION: Params tab, value of '{name}')")
    text = str(value).strip()
    try:
        if kind is bool:
            low = text.lower()
            if low in _TRUE_WORDS:
                return True
            if low in _FALSE_WORDS:
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        what = {bool: "yes or no", int: "an integer", float: "a number"}[kind]
        raise InputError(f"--{name} {text}: expected {what}") from None
    return text


def options_from_mapping(cls: type[T], values: Mapping[str, Any] | None = None) -> T:
    """Build an options dataclass from ``name -> value``, converting and checking each value.

    Args:
        cls: the options dataclass.
        values: option names to values (strings are converted; names may use ``-`` for
            ``_``); names not given take their defaults.

    Returns:
        The options (the dataclass's ``__post_init__`` has checked the values).

    Raises:
        InputError: an unknown name (listing the known ones), a value of the wrong type,
            or a value the dataclass rejects.
    """
    kinds = {p.name: p.type for p in params_of(cls)}
    kwargs: dict[str, Any] = {}
    for raw_name, value in (values or {}).items():
        name = raw_name.replace("-", "_")
        if name not in kinds:
            raise InputError(f"unknown option --{raw_name} (known: {', '.join('--' + k for k in kinds)})")
        kwargs[name] = convert_value(name, value, kinds[name])
    return cls(**kwargs)


def click_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding one click option per field of ``cls`` to a command.

    Each option is spelled ``--name_with_underscores`` (as the RELION param) and
    ``--name-with-hyphens``; bools are bare flags that also take a value (``--positivity
    no``). The command receives them as keyword arguments named after the fields; pass
    them to :func:`options_from_mapping`.

    Args:
        cls: the options dataclass.

    Returns:
        The decorator.
    """
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        """Add the options to ``func``, last field first (click stacks them in reverse)."""
        for p in reversed(params_of(cls)):
            spellings = [f"--{p.name}"] + ([f"--{p.name.replace('_', '-')}"] if "_" in p.name else [])
            extra: dict[str, Any] = {"is_flag": False, "flag_value": True} if p.type is bool else {}
            kind = click.BOOL if p.type is bool else p.type
            func = click.option(*spellings, p.name, type=kind, default=p.default, show_default=True,
                                help=p.help, **extra)(func)
        return func

    return decorate


def defaults_unless_given(values: dict[str, Any], settings: Mapping[str, Any]) -> None:
    """Replace option defaults in ``values`` with ``settings`` where the user gave no value.

    For built-in examples (``--demo``) that need other defaults than real data: an option
    the user typed on the command line keeps the user's value.

    Args:
        values: the running click command's keyword arguments (changed in place).
        settings: option name -> the value to use unless the user gave one.

    Raises:
        RuntimeError: called outside a running click command.
    """
    ctx = click.get_current_context()
    for name, value in settings.items():
        if ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT:
            values[name] = value
