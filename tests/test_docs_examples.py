"""The examples in README.md and docs/*.md run (issue 23: docs/CLI drift tests that run the examples).

Every ``diffsolve ...`` command the docs show (inline code and shell blocks) is parsed by the real
parser, and run in-process unless it is one of the long sweeps (listed in PARSE_ONLY with the reason);
runs use the stated SUBSTITUTIONS to stay small (fewer samples, a short tune), which change sizes
only, never a flag the example shows. Every ``python`` block runs, in order per page, in a namespace
that supplies what a page says the reader has (``model``, ``unet``, ...: READER); blocks that need
something the test machine cannot provide are listed in NOT_RUN with the reason, and are compiled.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from cli_run import run_cli

import diffsolve as ds
from diffsolve import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# -- shell examples ----------------------------------------------------------------------------------------
def _shell_examples() -> list[tuple[str, str]]:
    found = {}
    for page in PAGES:
        text = page.read_text()
        inline = [m.group(1) for m in re.finditer(r"`(?:python -m )?(diffsolve [^`]*)`", text)]
        blocks = [
            line.split(" #")[0].strip().removeprefix("python -m ")  # a trailing shell comment is prose
            for b in re.finditer(r"```[a-z]*\n(.*?)```", text, re.S)
            for line in b.group(1).splitlines()
            if line.strip().startswith(("diffsolve ", "python -m diffsolve "))
        ]
        for cmd in inline + blocks:
            found.setdefault(" ".join(cmd.split()), page.name)
    return sorted((page, cmd) for cmd, page in found.items())


#: placeholders the prose uses for "your value" -> a value
PLACEHOLDERS = {"S": "ddim", "N": "5", "[...]": ""}
#: long sweeps: parsed (every flag and value must exist), not run here; `make demo` runs the default one
PARSE_ONLY = {
    "diffsolve bench": "the default sweep (about a minute): `make demo` runs it",
    "diffsolve bench [...]": "the default sweep again (docs/api.md's row)",
    "diffsolve bench --problem digits --nfe 3,5,10,20 --grids trailing,karras,logsnr,time-uniform --samples 32": (
        "docs/paper.md's digits sweep (minutes)"
    ),
    "diffsolve bench --peers": "the default sweep with every peer (minutes)",
    "diffsolve bench --problem digits": "the digits sweep (minutes)",
    "diffsolve bench --solvers ddim,dpmpp-2m,ipndm,tuned": "tunes a recipe per problem and NFE (minutes)",
    "diffsolve bench --task inverse --out bench-results": "every restoration cell on 297 digits (an hour of CPU)",
}
#: sizes only: (command prefix, extra args appended, overriding the example's own of the same flag)
SUBSTITUTIONS = [
    ("diffsolve sample --problem digits", ["--samples", "4", "--batch", "4"]),
    ("diffsolve sample --recipe", ["--samples", "8"]),
    ("diffsolve sample", ["--samples", "8"]),
    ("diffsolve tune --statistics", ["--samples", "16", "--solvers", "dpmpp-2m,dpm-solver-v3"]),
    ("diffsolve tune", ["--samples", "16", "--solvers", "ddim,dpmpp-2m"]),
    ("diffsolve demo", ["--samples", "4", "--steps-list", "5"]),
    ("diffsolve bench --problem digits-cond", ["--samples", "20"]),
]
SHELL = _shell_examples()


def _argv(cmd: str, tmp_path: Path) -> list[str]:
    words = [PLACEHOLDERS.get(w, w) for w in shlex.split(cmd)[1:]]
    words = [w for w in words if w]
    for i in range(len(words) - 1):
        if words[i] in ("--out",) and not Path(words[i + 1]).is_absolute():
            words[i + 1] = str(tmp_path / words[i + 1])
    if "--recipe" in words:  # the recipe an earlier example (`diffsolve tune ... --out recipe.json`) wrote
        k = words.index("--recipe") + 1
        words[k] = str(tmp_path / words[k])
    return words


def _substituted(cmd: str, argv: list[str]) -> list[str]:
    for prefix, extra in SUBSTITUTIONS:
        if cmd.startswith(prefix):
            flags = set(extra[::2])
            kept, skip = [], False
            for w in argv:
                if skip:
                    skip = False
                    continue
                if w in flags:
                    skip = True
                    continue
                kept.append(w)
            if "--recipe" in argv:
                extra = [e for e in extra if e != "--batch"]
            return kept + extra
    return argv


def test_the_docs_show_commands_of_every_subcommand():
    shown = {shlex.split(cmd)[1] for _, cmd in SHELL}
    assert {"list", "sample", "tune", "demo", "bench"} <= shown, shown


@pytest.mark.parametrize("page, cmd", SHELL, ids=[c for _, c in SHELL])
def test_a_documented_command_parses(page, cmd, tmp_path):
    argv = _argv(cmd, tmp_path)
    cli._load_subcommands()
    try:
        cli.build_parser().parse_args(argv)
    except SystemExit as exc:  # --help exits 0 after printing
        assert exc.code == 0 and "--help" in argv, f"{page}: `{cmd}` does not parse"


RUN = [
    (p, c)
    for p, c in SHELL
    if c not in PARSE_ONLY and not c.startswith(("diffsolve tune", "diffsolve sample --recipe"))
]


@pytest.mark.parametrize("page, cmd", RUN, ids=[c for _, c in RUN])
def test_a_documented_command_runs(page, cmd, tmp_path, capsys):
    argv = _substituted(cmd, _argv(cmd, tmp_path))
    code, out, err = run_cli(argv, capsys)
    assert code == 0, f"{page}: `{cmd}` (run as {argv}) failed: {err}"


@pytest.mark.slow
def test_the_documented_tune_then_sample_recipe_runs(tmp_path, capsys):
    tunes = [c for _, c in SHELL if c.startswith("diffsolve tune")]
    samples = [c for _, c in SHELL if c.startswith("diffsolve sample --recipe")]
    assert tunes and samples
    for cmd in tunes + samples:  # the recipe the tune example writes is the one the sample example reads
        argv = _substituted(cmd, _argv(cmd, tmp_path))
        code, out, err = run_cli(argv, capsys)
        assert code == 0, f"`{cmd}` (run as {argv}) failed: {err}"


def test_the_parse_only_list_names_only_documented_commands():
    assert set(PARSE_ONLY) <= {c for _, c in SHELL}


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path, monkeypatch):
    """Files a documented example writes (recipe.json, statistics, pictures) land in a scratch folder."""
    monkeypatch.chdir(tmp_path)


# -- python examples -----------------------------------------------------------------------------------------
def _model(x, t, **_):
    """The reader's eps model stand-in: cheap, smooth, depends on x and t."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return 0.1 * x + 1e-5 * t


def _reader():
    """What the pages say the reader already has."""
    return {
        "torch": torch,
        "ds": ds,
        "model": _model,
        "unet": _model,
        "schedule": ds.DiscreteSchedule.linear(),
        "c": torch.zeros(16, 4),
        "cond": torch.zeros(16, 4),
        "uncond": torch.zeros(16, 4),
        # the reader's ODE and states (docs/dpm-solver-v3.md, modifiers.md, restoration.md)
        "ode": ds.wrap(_model, ds.DiscreteSchedule.linear()),
        "x_T": torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
        "x_T_fit": torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)),
        "x0": torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)).clamp(-1, 1),
        "labels": torch.tensor([3, 7]),  # docs/guidance.md: the reader's class labels and the null label
        "null_labels": torch.tensor([10, 10]),
    }


#: (page, block index) -> why the block is not run (it is compiled)
NOT_RUN = {
    ("quickstart.md", 2): "a fragment on the reader's own unconditional model output u",
    ("guidance.md", 3): "needs a diffusers text-to-image pipeline (weights, a download)",
    ("tuning.md", 0): "a fragment on the reader's sample shape",
    (
        "tuning.md",
        1,
    ): "tunes a guided recipe on the digits model (minutes; the shipped ones are replayed in test_counting)",
    ("diffusers.md", 0): "needs the reader's diffusers scheduler object",
    ("diffusers.md", 1): "needs a flow-matching transformer (SD3/Flux weights, a download)",
    ("diffusers.md", 2): "needs a diffusers pipeline (weights, a download)",
    ("k-diffusion.md", 0): "the sampler signature itself, not code to run",
    ("k-diffusion.md", 1): "needs the reader's denoiser and sigmas",
    ("k-diffusion.md", 3): "ComfyUI (not installed)",
    ("inversion.md", 2): "a fragment on the reader's x_T and ode",
    ("plugins.md", 3): "needs examples/diffsolve-example-plugin installed (pip install ./examples/...)",
    ("serving.md", 0): "method bodies of a server class (indented fragments)",
    ("serving.md", 1): "method bodies of a server class (indented fragments)",
    ("interpolation.md", 0): "a fragment on the reader's latents z0, z1",
    ("interpolation.md", 1): "a fragment on the reader's ode and latents",
    ("interpolation.md", 2): "about 160 s on a CPU: the paper's interpolation figure (docs/paper.md)",
}
#: blocks that run, slowly: ds.tune (about 10 s on a loaded 2-core machine)
SLOW = {("README.md", 0)}


def _python_blocks():
    for page in PAGES:
        for i, m in enumerate(re.finditer(r"```python\n(.*?)```", page.read_text(), re.S)):
            yield page.name, i, m.group(1)


BLOCKS = list(_python_blocks())


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, marks=pytest.mark.slow) if any((p, i) in SLOW for i in range(99)) else p
        for p in sorted({b[0] for b in BLOCKS})
    ],
)
def test_the_python_examples_of_a_page_run_in_order(page):
    ns = _reader()
    for name, i, code in BLOCKS:
        if name != page:
            continue
        compiled = None
        try:
            compiled = compile(code, f"{page} python block {i}", "exec")
        except SyntaxError:
            assert (page, i) in NOT_RUN, f"{page} python block {i} does not compile"
        if (page, i) in NOT_RUN or compiled is None:
            continue
        with torch.no_grad():
            exec(compiled, ns)


def test_the_not_run_list_is_current():
    assert set(NOT_RUN) | SLOW <= {(p, i) for p, i, _ in BLOCKS}


def _plain_signature(sig) -> str:
    """``a, b=1, *, c="x", **kw`` from a signature, without annotations."""
    parts, star = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
            continue
        if p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        default = "" if p.default is p.empty else "=" + repr(p.default).replace("'", '"')
        parts.append(p.name + default)
    return ", ".join(parts)


# -- docs/api.md's signatures --------------------------------------------------------------------------------
def test_api_md_signature_column_is_the_code_signature():
    # the "Sampling" table gives full signatures: each must list the function's parameters, in order, with
    # their defaults (issue 23: sample's lacked recipe=)
    import inspect

    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## Sampling", 1)[1].split("\n## ", 1)[0]
    checked = 0
    for m in re.finditer(r"^\| `[^|]*\| `(\w+)\((.*?)\)`", section, re.M):
        name, documented = m.group(1), m.group(2)
        real = _plain_signature(inspect.signature(getattr(ds, name)))
        assert documented.replace(" ", "") == real.replace(" ", ""), (name, documented, real)
        checked += 1
    assert checked >= 6
