"""Docs that describe the code stay true to it (issue 13, doc drift)."""

import re
from pathlib import Path

import torch

import diffsolve as ds
from diffsolve.cli import default_stochastic, solvers_markdown
from diffsolve.plugins import get_registry

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_quickstart_callback_is_one_dict_with_the_drivers_keys():
    text = " ".join((DOCS / "quickstart.md").read_text().split())
    m = re.search(r"`callback=fn` called after each step with one dict, `fn\(info\)`, whose keys are (.*?);", text)
    assert m, "the quickstart describes the callback as one dict"
    documented = set(re.findall(r"`(\w+)`", m.group(1)))
    seen = []
    mix = ds.analytic.GaussianMixture(torch.tensor([[1.0, -0.5], [-0.8, 0.4]]), [0.3, 0.5])
    ds.sample(mix.ode(ds.DiscreteSchedule.linear()), torch.zeros(2, 2), "ddim", steps=2, callback=seen.append)
    assert len(seen) == 2 and all(isinstance(info, dict) for info in seen)
    assert documented == set(seen[0]), (documented, set(seen[0]))


def test_solver_table_kind_is_what_the_default_instance_does():
    # euler-ancestral's class attribute says deterministic, its default instance (eta = 1) draws noise
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[4].strip()
        for line in solvers_markdown().splitlines()
        if line.startswith("| `")
    }
    assert rows["euler-ancestral"] == "stochastic" and rows["ddim"] == "deterministic"
    for name, (cls, _) in get_registry().solvers.items():
        assert rows[name] == ("stochastic" if ds.make_solver(name).stochastic else "deterministic"), name
        assert default_stochastic(cls) == ds.make_solver(name).stochastic
    assert "| `euler-ancestral` | 1 | 1 | stochastic |" in (DOCS / "solvers.md").read_text()
