# fl_dp_asr — every target works on a fresh clone with no prior state.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
APT_PACKAGES := espeak-ng sox
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps lint test demo bench clean

install: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): setup.cfg pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
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

clean:
	rm -rf $(VENV) build *.egg-info .ruff_cache .mypy_cache
