# biomed-serve: the two commands of the README are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 3000
export BENTOML_DO_NOT_TRACK ?= True

.PHONY: serve test test-fast demo-models install install-test tools vision bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/; s/\$$(PORT)/$(PORT)/g'

$(VENV)/.stamp-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e ".[train]"
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-train
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.stamp-train  ## the project with training (torch CPU) in .venv

install-test: $(VENV)/.stamp-test

tools:  ## checkov in its own venv (.venv-tools)
	PYTHON=$(PYTHON) scripts/tools-venv.sh

demo-models: install  ## demo data, train and export demo-image, demo-dna and demo-volume (skipped when the store has them)
	$(VENV)/bin/biomed demo-models --workdir demo

serve: demo-models  ## serve on http://127.0.0.1:$(PORT) (builds the demo models on first run); DICOM_PORT=11112 adds C-STORE
	PORT=$(PORT) $(VENV)/bin/biomed serve --port $(PORT)$(if $(DICOM_PORT), --dicom-port $(DICOM_PORT))

vision:  ## torch + torchvision in their own venv (.venv-vision): the test's model made elsewhere (tests/test_import.py)
	PYTHON=$(PYTHON) scripts/vision-venv.sh

test: install-test tools vision  ## the whole suite, slow tests included (as CI runs it)
	$(PY) -m pytest -q --durations=15

test-fast: install-test  ## the suite without the slow tests
	$(PY) -m pytest -q -m "not slow"

bench: demo-models  ## benchmarks into bench-results/ (see README)
	$(VENV)/bin/biomed bench --out bench-results

clean:  ## remove the venvs and generated demo data (the model store is left alone)
	rm -rf $(VENV) .venv-tools .venv-vision demo runs bench-results
