# Two entry points for a fresh clone; each creates or reuses .venv itself.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: repro test bench clean-venv

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

clean-venv:
	rm -rf $(VENV)
