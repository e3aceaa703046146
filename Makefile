# Two commands on a fresh machine: `make reproduce` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two install levels: what the experiments need (torch and the package), and the
# dev tools on top (pytest, hypothesis, ruff, Triton for the interpreter tests).
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# torch is pinned to the CPU wheel on purpose: an unpinned torch pulls a CUDA build.
TORCH := torch==2.13.0

.PHONY: setup test test-fast reproduce lint bench clean mutation

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

setup: $(DEV_STAMP)

test: $(DEV_STAMP)
	$(VENV)/bin/ruff check
	$(PY) -m pytest -q

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow"

reproduce: $(STAMP)
	$(VENV)/bin/batchnorm reproduce figure1

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml; docs/mutation.md).
# About 15 minutes on 2 cores; not part of `make test`. MUTMUT_ARGS narrows it,
# e.g. MUTMUT_ARGS='"batchnorm.statistics*"'.
MUTMUT_ARGS ?=
mutation: $(DEV_STAMP)
	$(PY) -m pip install --quiet -e '.[mutation]'
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HYPOTHESIS_PROFILE=mutation HYPOTHESIS_MAX_EXAMPLES=5 \
		$(VENV)/bin/mutmut run $(MUTMUT_ARGS)
	$(VENV)/bin/mutmut results

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check

bench: $(STAMP)
	$(VENV)/bin/batchnorm bench

clean:
	rm -rf $(VENV) runs
