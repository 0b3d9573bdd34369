# The project's commands. Everything runs from the virtualenv that `make setup` creates.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
BUF := node_modules/.bin/buf
PROTOS := $(wildcard protos/chatagent/v1/*.proto)
GEN_STAMP := chatagent/v1/.generated

.PHONY: setup proto run test lint bench chat clean

setup: $(VENV)/.installed $(GEN_STAMP)

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Generated code lives in one place, chatagent/v1, imported as `chatagent.v1`. It is never
# committed: it is made here from protos/, so it cannot go stale. descriptors.binpb keeps the
# proto comments, which become the LLM's tool descriptions.
proto: $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) $(VENV)/.installed
	rm -rf chatagent
	mkdir -p chatagent/v1
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=. --grpc_python_out=. --mypy_out=quiet:. --mypy_grpc_out=quiet:. \
		--include_source_info --descriptor_set_out=chatagent/v1/descriptors.binpb $(PROTOS)
	touch chatagent/__init__.py chatagent/v1/__init__.py chatagent/py.typed
	touch $@

run: setup
	$(PY) -m scripts.run_suite

# One process: the tests that bound a stall or a CPU cost (health checks during long analyses,
# the planner on hostile text) keep their margins only when nothing else runs beside them.
# `$(PY) -m pytest -n 2 --dist loadfile` (pytest-xdist) takes about 5.5 min instead of 10, and
# those few can then miss their bounds.
test: setup
	$(PY) -m pytest

$(BUF): package.json
	npm install --no-audit --no-fund --silent
	touch $@

lint: setup $(BUF)
	cd protos && ../$(BUF) lint
	cd protos && ../$(BUF) format --diff --exit-code
	@if git rev-parse --verify --quiet main:protos >/dev/null; then \
		cd protos && ../$(BUF) breaking --against '../.git#branch=main,subdir=protos'; \
	else echo "buf breaking: no protos on main yet, nothing to compare"; fi
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The bench extra (peers, matplotlib) is installed here only: `make test` never needs it.
bench: setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(PY) -m bench

chat: setup
	$(PY) -m services.orchestrator.cli

# requirements.lock: the runtime dependencies (not the dev extra) pinned with their hashes, for the
# image (Linux x86_64, CPython 3.11; markers kept, so pip skips what 3.11.x does not need). It is
# resolved against PyPI alone, with this machine's pip configuration (local indexes, constraints)
# shut out, so every hash in it is one of PyPI's. uv runs from a scratch venv, not from .venv.
LOCK_VENV := build/lock-venv
UV_VERSION := 0.13.9

.PHONY: lock
lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_VENV) && \
		env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip install --quiet \
		--index-url https://pypi.org/simple uv==$(UV_VERSION); }
	env -u PIP_FIND_LINKS -u UV_INDEX -u UV_INDEX_URL -u UV_EXTRA_INDEX_URL -u UV_FIND_LINKS \
		-u UV_CONSTRAINT -u UV_OVERRIDE PIP_CONFIG_FILE=/dev/null UV_NO_CONFIG=1 \
		$(LOCK_VENV)/bin/uv pip compile pyproject.toml --quiet --no-config \
		--index-url https://pypi.org/simple --generate-hashes --no-strip-markers \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--custom-compile-command 'make lock' --output-file requirements.lock

clean:
	rm -rf $(VENV) chatagent node_modules .pytest_cache .mypy_cache .ruff_cache
