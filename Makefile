# spine-gateway: the two commands a user needs are `make run` and `make test`.
# Every set-up step lives here (or in scripts/), so a fresh Debian machine needs nothing else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/gateway.yaml
PREFIX ?= $(HOME)/.local

.PHONY: run install test test-fast test-hooks-off lint system-deps venv viewer bench bench-ingest clean

$(STAMP): requirements.txt setup.cfg pyproject.toml
	scripts/install-system-deps.sh --runtime
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "from gateway.privacy import vocabulary; vocabulary.warm_up()"  # the scrubber's word sets, built once
	touch $(STAMP)

venv: $(STAMP)

## The portal's DICOM viewer (dwv and what it imports), from the npm registry at pinned versions, each checked
## against its SHA-512 integrity, into gateway/web/static/vendor/ (git-ignored); nothing is fetched at run time.
viewer:
	$(PYTHON) scripts/install-viewer.py

## Tools the tests and benchmarks talk to (DCMTK, Orthanc, PostgreSQL), installed when missing.
system-deps:
	scripts/install-system-deps.sh

## Start the gateway on its embedded default: SQLite and a spool under var/, config/gateway.yaml.
run: $(STAMP) viewer
	@echo "spine-gateway: the CLI is $(abspath $(BIN))/spine-gateway; 'make install' puts it on PATH ($(PREFIX)/bin),"
	@echo "  or: export PATH=$(abspath $(BIN)):\$$PATH. It finds config/gateway.yaml from any directory."
	$(BIN)/spine-gateway --config $(CONFIG) serve

## Put `spine-gateway` on PATH: a link in $(PREFIX)/bin (default ~/.local/bin) to the venv's command.
install: $(STAMP) viewer
	mkdir -p $(PREFIX)/bin
	ln -sf $(abspath $(BIN))/spine-gateway $(PREFIX)/bin/spine-gateway
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "spine-gateway: add $(PREFIX)/bin to PATH";; esac

## Install everything, lint (failing fast), then run the whole suite in a private network namespace (loopback only),
## then the DICOM end-to-end tests a second time with the pynetdicom hooks off (test-hooks-off).
test: lint system-deps viewer
	scripts/run-tests.sh $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-hooks-off

## The DICOM end-to-end tests (marked dicom_e2e: C-STORE receipt, delivery to storescp and Orthanc, report intake
## and return) on stock pynetdicom, as after an upgrade the hooks do not know (gateway/dicom/net.py): on SQLite only
## (the database plays no part in the hooks), a few minutes.
test-hooks-off: $(STAMP) system-deps viewer
	SPINE_GATEWAY_PYNETDICOM_HOOKS=off scripts/run-tests.sh -m dicom_e2e -k "not postgresql"

## The fast tier for daily work (a few minutes): the suite without the tests marked slow, i.e. those that start a
## real peer (a node, DCMTK, Orthanc, PostgreSQL, chromium; marked in tests/conftest.py) or take seconds each.
test-fast: $(STAMP) system-deps viewer
	scripts/run-tests.sh -m "not slow" $(PYTEST_ARGS)

## ruff over the tree and mypy over gateway/ (both configured in pyproject.toml), pinned in requirements.txt.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: bench-ingest

bench-ingest: $(STAMP) system-deps
	scripts/in-private-net.sh $(BIN)/python bench/ingest.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
