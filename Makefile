# User-facing targets: test, data, train. Each creates .venv if missing and installs what it needs, once.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
ARGS ?=

# Python's compiled modules go to one cache inside the venv, written the first time each module is imported, even
# where the environment sets PYTHONDONTWRITEBYTECODE (this project's machines do: then every process compiled the
# source of jax, flax and torch again, about 5 s of each test subprocess and each run on a 2-vCPU Zen 3, twice that
# under load). The prefix keeps the source tree free of __pycache__; `make clean-venv` removes it with the venv.
export PYTHONDONTWRITEBYTECODE :=
export PYTHONPYCACHEPREFIX := $(abspath $(VENV))/pycache

.PHONY: test data train clean-venv

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "jaxmnist needs Python >= 3.10"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Stamps make the targets quick when nothing changed; pyproject.toml changes trigger a reinstall. Without
# byte-compiling: Python compiles what is imported when it is first imported, instead of pip compiling all of torch's
# CUDA build up front (measured on a 2-vCPU Zen 3: the dev install 128 s with byte-compiling, 73 s without).
# scripts/install.py installs with uv under pip's own settings, else with pip (a fresh .venv with the dev install on
# a 2-vCPU Zen 4: 34 s against pip's 66 s, the same versions).
INSTALL := $(PY) scripts/install.py
$(VENV)/.installed-base: pyproject.toml | $(PY)
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(INSTALL) -e '.[dev]'
	touch $@ $(VENV)/.installed-base

# The suite runs on every core (pytest-xdist; TEST_WORKERS=0 for one process): compiling is mostly single-threaded.
TEST_WORKERS ?= auto
test: $(VENV)/.installed-dev
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

data: $(VENV)/.installed-base
	$(PY) -m jaxmnist.data $(ARGS)

# Runs `python -m jaxmnist.train --preset sprint $(ARGS)` (installed as `jaxmnist-train`): the preset that reaches
# 99.5 % soonest (docs/experiments.md, "The sprint preset"): fast's recipe at batch 32 for 4 epochs on a weight
# average, 99.55 % (mean of 10 seeds) in 117 s on 2 vCPUs of a Zen 4 (AVX-512), where fast takes about 300 s (a Zen 5
# runs both about 1.7x faster). ARGS="--preset fast" for fast,
# ARGS="--preset NAME" (or --model NAME) for the blog's own experiments.
train: $(VENV)/.installed-base
	$(PY) -m jaxmnist.train --preset sprint $(ARGS)

clean-venv:
	rm -rf $(VENV)
