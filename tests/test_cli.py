"""The command line (issue 13): one-line errors with exit code 2, defaults in --help, solver options."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffsolve import cli

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors and --help
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--solver", "dpmpp_2m", "--samples", "4"], "unknown solver 'dpmpp_2m' (did you mean 'dpmpp-2m'?)"),
        (["sample", "--grid", "karas", "--samples", "4"], "unknown grid 'karas' (did you mean 'karras'?)"),
        (["sample", "--steps", "0", "--samples", "4"], "argument --steps: must be an integer in [1, 100000], got 0"),
        (["sample", "--option", "etaa=0.5", "--samples", "4"], "unknown option(s) ['etaa'] (did you mean 'eta'?)"),
        (["sample", "--option", "eta=-1", "--samples", "4"], "eta must be a finite number in [0.0, inf], got -1"),
        (["sample", "--eta", "0.5", "--option", "eta=0.5", "--samples", "4"], "eta given twice"),
        (["sample", "--option", "noequals"], "expected KEY=VALUE"),
        (["sample", "--steps", "ten"], "argument --steps: expected an integer, got 'ten'"),
        (["demo", "--steps-list", "5,x"], "expected integers like 5,10,20"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    code, out, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and message in lines[0], err
    assert "Traceback" not in err


def test_cli_error_from_the_shell_has_no_traceback():
    env = dict(os.environ, DIFFSOLVE_DISABLE_PLUGINS="all")
    proc = subprocess.run(
        [sys.executable, "-m", "diffsolve", "sample", "--solver", "nope", "--samples", "4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("diffsolve sample: error: unknown solver 'nope'")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "command, defaults",
    [
        (
            "sample",
            [
                "(default: gmm2d)",
                "(default: ddim)",
                "(default: trailing)",
                "(default: 10)",
                "(default: 256)",
                "(default: 0)",
                "default: the solver's own",
                "default: none",
            ],
        ),
        ("demo", ["(default: gmm2d)", "(default: trailing)", "(default: 5,10,20,40,80,160)", "(default: 256)"]),
    ],
)
def test_help_gives_the_defaults(command, defaults, capsys):
    code, out, _ = _run([command, "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0
    for d in defaults:
        assert d in text, (d, text)


def test_option_passes_solver_options_parsed_as_literals(capsys, monkeypatch):
    seen = {}
    import diffsolve

    real = diffsolve.sample

    def spy(ode, x_T, solver, **kwargs):
        seen.update(kwargs)
        return real(ode, x_T, solver, **kwargs)

    monkeypatch.setattr(diffsolve, "sample", spy)
    code, out, err = _run(
        [
            "sample",
            "--solver",
            "ddim",
            "--steps",
            "4",
            "--samples",
            "8",
            "--option",
            "eta=0.5",
            "--option",
            "variance=eta",
        ],
        capsys,
    )
    assert code == 0, err
    assert seen["eta"] == 0.5 and isinstance(seen["eta"], float) and seen["variance"] == "eta"
    assert "solver=ddim" in out


def test_parse_option_reads_python_literals_or_keeps_the_string():
    assert cli.parse_option("solver_order=2") == ("solver_order", 2)
    assert cli.parse_option("eta=0.25") == ("eta", 0.25)
    assert cli.parse_option("lower_order_final=False") == ("lower_order_final", False)
    assert cli.parse_option("variance=large") == ("variance", "large")
    assert cli.parse_option("pair=(1, 2)") == ("pair", (1, 2))
