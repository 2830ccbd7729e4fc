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

KUBE_SRC := $(wildcard tools/kube/*.go) tools/kube/go.mod tools/kube/go.sum scripts/build-kube.sh
PROMETHEUS := /usr/bin/prometheus

.PHONY: help venv tools kube cluster prometheus s3proxy contracts-deps contracts contracts-check test test-unit test-integration test-e2e chart-check crds crds-check demo bench clean

help:
	@echo "make demo   - run the hub and site agents on the built-in sandbox (emulated Kubernetes)"
	@echo "make test   - unit, emulator and real-control-plane tiers, CRD freshness and chart checks"
	@echo "make kube   - build the real Kubernetes control plane (tools/kube) into .tools/bin/fedcare-kube"
	@echo "make cluster - start a real control plane in .cluster/ (kubeconfig .cluster/kubeconfig; Ctrl-C stops it)"
	@echo "make contracts - recompile contracts/ModelRegistry.sol into the committed ABI + bytecode"
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

$(TOOLS)/fedcare-kube: $(KUBE_SRC)
	scripts/build-kube.sh $(TOOLS)

kube: $(TOOLS)/fedcare-kube

cluster: $(STAMP) kube
	$(BIN)/fedcare sandbox cluster --dir .cluster

# A real Prometheus for tests/integration/test_metrics.py (Debian package; idempotent).
prometheus: $(PROMETHEUS)
	@echo "prometheus: $$($(PROMETHEUS) --version 2>&1 | head -1)"

$(PROMETHEUS):
	@echo "Installing Prometheus (Debian package prometheus) for the metrics tests"
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q --no-install-recommends prometheus
	@# the package may start a system service where an init system runs; the tests start their own
	-$(if $(filter 0,$(shell id -u)),,sudo) service prometheus stop >/dev/null 2>&1

# S3Proxy (a real S3 API server, jclouds filesystem backend) for the artifact store's S3 tests:
# the jar from Maven Central (mvn, the ordinary client) copied to .tools/; Java 17+ runs it.
S3PROXY_VERSION := 2.7.0
S3PROXY_JAR := .tools/s3proxy-$(S3PROXY_VERSION).jar
M2_S3PROXY := $(HOME)/.m2/repository/org/gaul/s3proxy/$(S3PROXY_VERSION)/s3proxy-$(S3PROXY_VERSION)-jar-with-dependencies.jar

s3proxy: $(S3PROXY_JAR)
	@command -v java >/dev/null || { echo "Installing Java 17 (runs S3Proxy)"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q --no-install-recommends openjdk-17-jre-headless; }
	@echo "s3proxy: $(S3PROXY_JAR) ($$(java -version 2>&1 | head -1))"

$(S3PROXY_JAR):
	@echo "Installing S3Proxy $(S3PROXY_VERSION) (a real S3 server for the artifact store tests) from Maven Central"
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q --no-install-recommends openjdk-17-jre-headless maven; }
	test -f $(M2_S3PROXY) || mvn -q dependency:get -Dartifact=org.gaul:s3proxy:$(S3PROXY_VERSION):jar:jar-with-dependencies -Dtransitive=false
	mkdir -p $(dir $@)
	cp $(M2_S3PROXY) $@.tmp && mv $@.tmp $@

crds: $(STAMP)
	$(BIN)/fedcare crds generate

crds-check: $(STAMP)
	$(BIN)/fedcare crds check

# The contract toolchain (pinned solcjs and anvil, contracts/package-lock.json) in contracts/node_modules.
CONTRACTS_STAMP := contracts/node_modules/.fedcare-stamp
$(CONTRACTS_STAMP): contracts/package.json contracts/package-lock.json
	@echo "Installing the contract toolchain (solc, anvil): npm ci --prefix contracts"
	npm ci --prefix contracts --no-audit --no-fund
	touch $@

contracts-deps: $(CONTRACTS_STAMP)

contracts: contracts-deps
	node contracts/compile.js

contracts-check: contracts-deps
	node contracts/compile.js --check

chart-check: $(STAMP) tools
	$(BIN)/python -m pytest $(PYTEST_FLAGS) tests/unit/test_chart.py

test: $(STAMP) tools kube prometheus s3proxy crds-check contracts-check
	FEDCARE_REQUIRE_ANVIL=1 FEDCARE_REQUIRE_S3PROXY=1 $(BIN)/python -m pytest $(PYTEST_FLAGS) tests workloads/tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_FLAGS) tests/unit

test-integration: $(STAMP) prometheus s3proxy
	$(BIN)/python -m pytest $(PYTEST_FLAGS) tests/integration

test-e2e: $(STAMP) tools
	$(BIN)/python -m pytest $(PYTEST_FLAGS) -m e2e tests/e2e

demo: $(STAMP)
	$(BIN)/fedcare sandbox demo

bench: $(STAMP) s3proxy
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .tools .cluster
