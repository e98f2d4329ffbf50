"""The whole command line, every subcommand x every numeric flag at 0, negative and huge (issue 23):
a clear one-line error (exit code 2, no traceback) or a correct run, never a silent default or a crash.

The flags are discovered from the live parser, so a new numeric flag is covered the moment it exists.
The values the CLI accepts are listed (ACCEPTED); each subcommand then runs once, in-process, at
those edge values together, with the smallest sizes (a few seconds in all).
"""

from __future__ import annotations

import argparse
import math

import pytest
from cli_run import run_cli

from diffsolve import cli

#: (subcommand, flag, value) that are correct runs: zero seeds, eta = 0 (DDIM) or a huge eta (more noise
#: than the marginal, which the solver warns about but is well defined)
ACCEPTED = {
    ("sample", "--seed", "0"),
    ("sample", "--eta", "0"),
    ("sample", "--eta", "1000000000000"),
    ("tune", "--seed", "0"),
    ("tune", "--split-seed", "0"),
    ("demo", "--seed", "0"),
    ("bench", "--seeds", "0"),
}
VALUES = ("0", "-5", "1000000000000")


def _subparsers():
    parser = (cli._load_subcommands(), cli.build_parser())[1]
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def _number_kind(action) -> str | None:
    """ "int" or "float" for a flag whose value is a number or a list of numbers, else None."""
    if not action.option_strings or action.type is None or action.choices:
        return None
    for probe in ("0.5", "2", "1"):
        try:
            value = action.type(probe)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return None
        return "float" if isinstance(values[0], float) else "int"
    return None


def _cases():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            kind = _number_kind(action)
            if kind is not None:
                flag = max(action.option_strings, key=len)
                for value in VALUES + (("nan", "inf") if kind == "float" else ()):
                    yield name, flag, value


CASES = list(_cases())


def test_every_subcommand_has_numeric_flags_under_test():
    assert {c[0] for c in CASES} == {"sample", "tune", "demo", "bench"}
    assert len({c[:2] for c in CASES}) >= 19  # sample 5, tune 6, demo 3, bench 5 (as of issue 23)


@pytest.mark.parametrize("command, flag, value", CASES)
def test_a_numeric_flag_at_zero_negative_or_huge_is_refused_in_one_line_or_accepted(
    command, flag, value, capsys, tmp_path
):
    if (command, flag, value) in ACCEPTED:
        args = (cli._load_subcommands(), cli.build_parser())[1].parse_args([command, flag, value])
        got = getattr(args, flag.lstrip("-").replace("-", "_"))
        assert got in (float(value), [int(value)])
        return
    out_dir = {"tune": ["--out", str(tmp_path / "r.json")], "bench": ["--out", str(tmp_path / "b")]}.get(command, [])
    code, out, err = run_cli([command, flag, value, *out_dir], capsys)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    assert flag in lines[0] or flag.lstrip("-").replace("-", "_") in lines[0], lines[0]


def test_an_accepted_edge_value_runs(capsys):
    # the zero seeds are defaults that the other CLI tests run; a huge eta is not: it runs, with the solver's warning
    argv = ["sample", "--seed", "0", "--eta", "1000000000000", "--samples", "1", "--steps", "1"]
    with pytest.warns(UserWarning, match="more noise than the marginal"):
        code, out, err = run_cli(argv, capsys)
    assert code == 0 and "NFE=1" in out, err


def test_sample_samples_zero_is_an_error_not_the_default_count(capsys):
    # issue 23 item 3: --samples 0 ran the default 256, --samples -5 was a traceback
    for value in ("0", "-5"):
        code, _, err = run_cli(["sample", "--samples", value], capsys)
        assert code == 2 and "argument --samples/--n: must be an integer in [1," in err


@pytest.mark.parametrize("flag", [["--solver", "heun"], ["--steps", "5"], ["--grid", "karras"], ["--eta", "0.5"]])
def test_sample_with_a_recipe_refuses_a_solver_steps_grid_or_option(flag, capsys, tmp_path):
    # issue 23 item 3: --recipe with --solver/--steps ran the recipe and ignored them
    code, _, err = run_cli(["sample", "--recipe", str(tmp_path / "r.json"), *flag], capsys)
    assert code == 2 and f"--recipe fixes the solver, its options and its grid: drop {flag[0]}" in err


def test_sample_with_a_recipe_writes_the_picture_it_is_asked_for(capsys, tmp_path):
    # issue 23 item 3: with --out x.png it wrote nothing; the shipped digits recipe writes it, another problem refuses
    from diffsolve.bench.recipes import __path__ as recipes_dir  # the shipped recipes

    shipped = sorted(p for d in recipes_dir for p in __import__("pathlib").Path(d).glob("digits*nfe3*.json"))
    assert shipped, "a shipped digits recipe"
    png = tmp_path / "x.png"
    code, out, err = run_cli(["sample", "--recipe", str(shipped[0]), "--samples", "1", "--out", str(png)], capsys)
    assert code == 0 and png.stat().st_size > 0 and f"wrote {png}" in out, err
    code, _, err = run_cli(["sample", "--recipe", str(shipped[0]), "--problem", "gmm2d", "--out", str(png)], capsys)
    assert code == 2 and "--out writes samples of the digits model" in err


def test_sample_with_a_recipe_refuses_a_problem_it_was_not_tuned_on(capsys):
    # a digits recipe with --problem gmm2d ran on gmm2d and printed an error as if the recipe fitted it
    from diffsolve.bench.recipes import __path__ as recipes_dir  # the shipped recipes

    shipped = sorted(p for d in recipes_dir for p in __import__("pathlib").Path(d).glob("digits-nfe3.json"))
    assert shipped, "the shipped digits NFE 3 recipe"
    code, out, err = run_cli(["sample", "--recipe", str(shipped[0]), "--problem", "gmm2d"], capsys)
    assert code == 2 and "--problem gmm2d: this recipe was tuned on 'digits'" in err, (out, err)


def test_sample_passes_grid_options_that_the_ddim_quad_error_asks_for(capsys):
    # the ddim-quad error tells the user to pass grid_options={'duplicates': 'drop'}; the CLI had no way to
    code, _, err = run_cli(["sample", "--grid", "ddim-quad", "--steps", "50", "--samples", "2"], capsys)
    assert code == 2 and "duplicates" in err
    code, out, err = run_cli(["sample", "--grid", "ddim-quad", "--grid-option", "duplicates=drop", "--steps", "50",
                              "--samples", "2"], capsys)  # fmt: skip
    assert code == 0 and "NFE=49" in out, err
    code, _, err = run_cli(["sample", "--grid", "karras", "--grid-option", "rh=3", "--samples", "2"], capsys)
    assert code == 2 and "grid 'karras': bad option in ['rh']" in err


def test_batch_outside_digits_is_an_error_not_ignored(capsys):
    code, _, err = run_cli(["sample", "--batch", "4", "--samples", "4"], capsys)
    assert code == 2 and "--batch is for --problem digits" in err


def test_the_help_describes_every_subcommand(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for name in _subparsers():
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert len(line.split()) > 1, f"{name} has no description in --help"


def test_float_flags_refuse_nan_and_inf():
    assert math.isnan(float("nan"))  # the values below are what argparse receives
    from diffsolve.cli_args import float_open

    for text in ("nan", "inf", "-inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            float_open(0.0, 1.0)(text)


def test_diffsolve_list_describes_every_grid_and_solver_in_full(capsys):
    # issue 23 item 11: ddim-uniform had an empty description and ddim-quad's stopped mid-sentence
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    rows = [line.split("]", 1) for line in out.splitlines() if line.startswith("  ") and "]" in line]
    assert len(rows) >= 14
    for head, description in rows:
        text = description.strip()
        assert text and text[-1] in ".)", f"{head.split()[0]}: {text!r} is empty or cut"
