# Two commands for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# A CPU wheel of this version lies on this project's machines; a user who already has
# torch keeps it (the check below skips this install when torch imports).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2

.PHONY: install demo test test-thorough bench-docs

# k-diffusion is a side-by-side peer in the tests and benchmarks. It is installed without its
# dependencies: they are its training stack (torchvision, kornia, clean-fid, wandb, ...), which would
# replace this torch with the one torchvision pins; diffsolve loads only its samplers (see
# diffsolve/bench/peers.py: kdiffusion), whose imports the test extra provides.
KDIFFUSION_SPEC ?= k-diffusion==0.1.1.post1

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test,bench]"
	$(PIP) install -q --no-deps "$(KDIFFUSION_SPEC)"

demo: install
	$(PYTHON) -m diffsolve bench

# lint and format check first (ruff, configured in pyproject.toml), then the suite
test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-thorough: install
	DIFFSOLVE_HYPOTHESIS_PROFILE=thorough $(PYTHON) -m pytest $(PYTEST_ARGS)

# Regenerates docs/benchmarks.md and docs/images/*.png (the full sweep with peers; several minutes).
bench-docs: install
	$(PYTHON) benchmarks/bench_docs.py
