"""Options declared once (``cryogan_core.commands.options``): conversion, checks, click, RELION."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from cryogan_core.commands.denoise_options import DenoiseOptions
from cryogan_core.commands.options import Param, click_options, convert_value, option, options_from_mapping, params_of
from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.errors import InputError
from relion_external._job import parse_relion_args


@dataclass(frozen=True)
class Toy:
    """Options of a toy command."""

    box_px: int = option(0, "Box.")
    sigma_A: float = option(2.5, "Sigma.")
    name: str = option("x", "Name.")
    flag: bool = option(False, "Off by default.")
    keep: bool = option(True, "On by default.")

    def __post_init__(self) -> None:
        if self.box_px < 0:
            raise InputError(f"--box_px {self.box_px}: must be >= 0")


@pytest.mark.parametrize(("value", "kind", "expected"), [
    ("32", int, 32), (" 7 ", int, 7), ("1e-3", float, 1e-3), (3, float, 3.0), ("C1", str, "C1"),
    ("yes", bool, True), ("No", bool, False), ("1", bool, True), ("off", bool, False), (True, bool, True),
])
def test_convert_value(value, kind, expected):
    out = convert_value("x", value, kind)
    assert out == expected and type(out) is kind


@pytest.mark.parametrize(("value", "kind", "match"), [
    ("3.5", int, "--x 3.5: expected an integer"), ("abc", float, "--x abc: expected a number"),
    ("maybe", bool, "--x maybe: expected yes or no"), (True, int, "--x needs a value"),
    (True, str, "--x needs a value"), (False, float, "expected a number"),
])
def test_convert_value_rejects(value, kind, match):
    with pytest.raises(InputError, match=match):
        convert_value("x", value, kind)


def test_params_in_declaration_order_with_types_and_help():
    assert params_of(Toy) == (
        Param("box_px", int, 0, "Box."), Param("sigma_A", float, 2.5, "Sigma."), Param("name", str, "x", "Name."),
        Param("flag", bool, False, "Off by default."), Param("keep", bool, True, "On by default."),
    )


def test_every_option_of_both_jobs_has_help_and_a_valid_default():
    for cls in (DenoiseOptions, ReconstructOptions):
        params = params_of(cls)
        assert len(params) == len(dataclasses.fields(cls)) > 10
        assert all(p.help.strip().endswith((".", ")")) for p in params), cls
        assert cls() == options_from_mapping(cls, {})  # defaults pass the checks


def test_declaration_without_help_or_of_another_type_is_refused():
    @dataclass
    class NoHelp:
        """An options class whose field has no help text (must be refused)."""
        n: int = 3

    with pytest.raises(TypeError, match="NoHelp.n: declare it with option"):
        params_of(NoHelp)
    with pytest.raises(TypeError, match="must be a bool, int, float or str"):
        option([1, 2], "A list.")


def test_from_mapping_converts_accepts_hyphens_and_keeps_defaults():
    opts = options_from_mapping(Toy, {"box-px": "64", "flag": True, "keep": "no"})
    assert opts == Toy(box_px=64, sigma_A=2.5, name="x", flag=True, keep=False)


def test_from_mapping_rejects_unknown_names_and_bad_values():
    with pytest.raises(InputError, match=r"unknown option --boxx \(known: --box_px, --sigma_A"):
        options_from_mapping(Toy, {"boxx": "3"})
    with pytest.raises(InputError, match="--box_px -1: must be >= 0"):
        options_from_mapping(Toy, {"box_px": "-1"})


@pytest.mark.parametrize(("cls", "values", "match"), [
    (DenoiseOptions, {"n_steps": "0"}, "--n_steps 0: must be > 0"),
    (DenoiseOptions, {"scale_mode": "median"}, "--scale_mode median: must be one of particle, pooled"),
    (DenoiseOptions, {"beta1": "1"}, r"--beta1 1.0: must be in \[0, 1\)"),
    (DenoiseOptions, {"l1_weight": "0", "gan_weight": "0"}, "nothing to train on"),
    (DenoiseOptions, {"device": "tpu"}, "tpu"),
    (DenoiseOptions, {"average_symmetries": "3"}, "--average_symmetries 3: must be one of 1, 2, 4, 8"),
    (DenoiseOptions, {"recon_loss": "huber"}, "--recon_loss huber: must be one of l1, l2"),
    # seeds: numpy refuses negative ones with a traceback; NaN must fail a ">= 0" check too
    (DenoiseOptions, {"seed": "-1"}, "--seed -1: must be >= 0"),
    (ReconstructOptions, {"seed": "-1"}, "--seed -1: must be >= 0"),
    (DenoiseOptions, {"gan_weight": "nan"}, "--gan_weight nan: must be >= 0"),
    (ReconstructOptions, {"gp_lambda": "nan"}, "--gp_lambda nan: must be >= 0"),
    (ReconstructOptions, {"symmetry": "X3"}, "--symmetry X3"),
    (ReconstructOptions, {"box_train": "8"}, "--box_train 8: must be >= 16"),
])
def test_job_options_are_checked_on_construction(cls, values, match):
    with pytest.raises(InputError, match=match):
        options_from_mapping(cls, values)


def _toy_command() -> click.Command:
    @click.command()
    @click_options(Toy)
    def cmd(**kwargs: object) -> None:
        """Echo the options built from the command line's keyword arguments."""
        click.echo(repr(options_from_mapping(Toy, kwargs)))

    return cmd


@pytest.mark.parametrize(("argv", "expected"), [
    ([], Toy()),
    (["--box_px", "48", "--sigma-A", "1"], Toy(box_px=48, sigma_A=1.0)),
    (["--box-px", "48"], Toy(box_px=48)),
    (["--flag", "--box_px", "8"], Toy(box_px=8, flag=True)),
    (["--flag", "no", "--keep", "no"], Toy(flag=False, keep=False)),
    (["--keep"], Toy(keep=True)),
])
def test_click_spellings_and_bool_forms(argv, expected):
    result = CliRunner().invoke(_toy_command(), argv)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(expected)


def test_click_rejects_a_bad_value_naming_the_option():
    result = CliRunner().invoke(_toy_command(), ["--box_px", "big"])
    assert result.exit_code == 2 and "--box_px" in result.output and "big" in result.output


def test_relion_params_become_options_like_the_cli():
    args = parse_relion_args(["--o", "External/job001/", "--train_box", "48", "--ctf_free", "--float16", "no", "--j", "4"])
    assert args.options(DenoiseOptions) == DenoiseOptions(train_box=48, ctf_free=True, float16=False)
    args = parse_relion_args(["--o", "External/job002/", "--positivity", "no", "--symmetry", "D2"])
    assert args.options(ReconstructOptions) == ReconstructOptions(positivity=False, symmetry="D2")


@pytest.mark.parametrize(("argv", "match"), [
    (["--n_stepz", "3"], r"unknown parameter --n_stepz \(known parameters: "),
    (["--n_steps"], "--n_steps needs a value"),
    (["--n_steps", "many"], "--n_steps many: expected an integer"),
])
def test_relion_params_rejected_with_one_clear_line(argv, match):
    args = parse_relion_args(["--o", "External/job001/", *argv])
    with pytest.raises(InputError, match=match):
        args.options(DenoiseOptions)
