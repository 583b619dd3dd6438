# fl_dp_asr — every target works on a fresh clone with no prior state.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
APT_PACKAGES := espeak-ng sox
TPU_COMPILER := .tpu-compiler
# The libtpu that the installed jax pins for jax[tpu] (0.0.42.* for jax 0.10.2): a newer libtpu's
# compiler emits HLO that this jaxlib cannot read back (libtpu 0.0.52 failed on v5p and v6e with
# "RET_CHECK ... async-update instruction should have 1 operands but sees 3").
LIBTPU = $(shell $(PY) -c 'import importlib.metadata as m; print(next(r.split(";")[0].replace(" ", "") for r in m.requires("jax") if r.startswith("libtpu")))')
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps lint test demo bench docs clean

install: system-deps $(STAMP) $(TPU_COMPILER)/.stamp

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# libtpu, the TPU compiler of `fl-dp-asr-plan` (no TPU needed), outside the venv: JAX programs
# here then never try to start a TPU backend. Where it cannot be installed, the TPU plan
# tests skip and say why; nothing else needs it.
$(TPU_COMPILER)/.stamp: $(STAMP)
	@rm -rf $(TPU_COMPILER) && $(PY) -m pip install -q --target $(TPU_COMPILER) '$(LIBTPU)' && touch $@ \
	  || echo "note: $(LIBTPU) could not be installed; the TPU plan tests will skip"

$(STAMP): setup.cfg pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,docs]'
	touch $(STAMP)

# Lint and types, in seconds: ruff's rules (pyproject.toml [tool.ruff]), the format and import
# order (`ruff format`; `ruff check --select I --fix`), mypy over fl_dp_asr/ ([tool.mypy]).
# Every check runs and reports; the target fails if any failed.
lint: install
	@status=0; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/ruff format --check . || status=1; \
	$(VENV)/bin/ruff check --select I . || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

# Lint first (fails fast), then two workers, one test file each at a time (a file's module
# fixtures are built once).
test: install lint
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: install
	$(PY) -m experiments.demo

bench: install
	$(PY) -m benchmarks.run

# The documentation site (Sphinx + MyST, API reference from the docstrings), offline;
# any warning fails the build.
docs: install
	$(PY) -m sphinx -b html -W --keep-going docs docs/_build/html

clean:
	rm -rf $(VENV) $(TPU_COMPILER) build *.egg-info docs/_build docs/reference/generated .ruff_cache .mypy_cache
