# fedcare — the two commands a newcomer needs: `make demo` and `make test`.
# Each creates its own virtualenv and installs everything from this repository's files.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TOOLS := .tools/bin
export PATH := $(CURDIR)/$(TOOLS):$(CURDIR)/$(BIN):$(PATH)
PYTEST_FLAGS ?=

.PHONY: help venv tools test test-unit test-integration test-e2e chart-check crds crds-check demo bench clean

help:
	@echo "make demo   - run the hub and site agents on the built-in sandbox (emulated Kubernetes)"
	@echo "make test   - unit + emulator tiers, CRD freshness and chart checks"
	@echo "make crds   - regenerate crds/ and the chart's CRD templates from the pydantic models"
	@echo "make bench  - run the benchmarks (see docs/performance.md)"

$(STAMP): pyproject.toml constraints.txt workloads/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,train,plot]' -e './workloads[test]'
	touch $(STAMP)

venv: $(STAMP)

$(TOOLS)/helm: scripts/fetch-tools.sh | $(STAMP)
	PYTHON=$(BIN)/python scripts/fetch-tools.sh $(TOOLS)

tools: $(TOOLS)/helm

crds: $(STAMP)
	$(BIN)/fedcare crds generate

crds-check: $(STAMP)
	$(BIN)/fedcare crds check

chart-check: $(STAMP) tools
	$(BIN)/python -m pytest $(PYTEST_FLAGS) tests/unit/test_chart.py

test: $(STAMP) tools crds-check
	$(BIN)/python -m pytest $(PYTEST_FLAGS) tests workloads/tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_FLAGS) tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_FLAGS) tests/integration

test-e2e: $(STAMP) tools
	$(BIN)/python -m pytest $(PYTEST_FLAGS) -m e2e tests/e2e

demo: $(STAMP)
	$(BIN)/fedcare sandbox demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .tools
