# Two entry points for a fresh clone; each creates or reuses .venv itself.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
LINT_STAMP := $(VENV)/.installed-lint
LINT_PATHS := stages tests bench docs/layout.py

.PHONY: repro test lint docs bench clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

## Run the pipeline on the embedded demo (offline).
repro: $(STAMP)
	HF_HUB_OFFLINE=1 PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

## Run the whole test suite, slow end-to-end tests included (offline).
test: $(STAMP)
	HF_HUB_OFFLINE=1 PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q

$(LINT_STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[lint]'
	touch $(LINT_STAMP)

## Lint and type-check: ruff (lint + format check) and mypy (strict on contracts and method).
lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

$(DOCS_STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

## Build the documentation site into site/ (offline, mkdocs-material); open site/index.html.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

clean-venv:
	rm -rf $(VENV)
