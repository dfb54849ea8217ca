# gradflow: the two README commands (`make reproduce`, `make test`) and the rest.
# Every target creates or refreshes the project's own virtual environment (.venv) from
# pyproject.toml, constrained to the pinned versions of requirements.lock.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
EXTRAS ?= test
export MPLBACKEND := Agg
# One BLAS thread per process: the test runner uses both cores with two workers, and JAX's QR
# (orthogonal init) slows down ~100x when OpenBLAS threads oversubscribe the cores.
OPENBLAS_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS

.PHONY: venv test reproduce reproduce-quick paper bench docs lint lock clean help

help:
	@echo "make reproduce   run every experiment (full configs), figures, paper tables"
	@echo "make test        run the test suite"
	@echo "make docs        build the documentation into docs/_build/html (open index.html)"
	@echo "make reproduce-quick | paper | bench | lint | lock | clean"

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e ".[$(EXTRAS)]"
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

reproduce: $(STAMP)
	$(VENV)/bin/gradflow reproduce

reproduce-quick: $(STAMP)
	$(VENV)/bin/gradflow reproduce --quick

paper: $(STAMP)
	$(VENV)/bin/gradflow paper

bench: $(STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[test,bench]"
	$(PY) -m benchmarks.run

# The documentation site, docs/_build/html/index.html: the `docs` extra (Sphinx), then one build
# with warnings as errors; the examples on its pages run while it builds (see docs/_ext).
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[$(EXTRAS),docs]"
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

lint: $(STAMP)
	$(VENV)/bin/ruff check gradflow experiments tests benchmarks docs
	$(VENV)/bin/ruff format --check gradflow experiments tests benchmarks docs

# Regenerate the pinned lock from a fresh resolve of pyproject.toml's ranges.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet -e ".[test,docs]"
	.venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
	rm -rf docs/_build docs/_generated docs/api docs/gallery docs/performance.md
