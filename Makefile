PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` needs the runtime dependencies only; the test tools
# (pytest, playwright, schemathesis, ...) come with `make test`, `make lint`...
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test imports bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata changes.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/ingestd serve --config config.toml

# The layering contracts in pyproject.toml (import-linter).
imports: $(DEV_STAMP)
	$(BIN)/lint-imports

test: imports
	$(BIN)/python -m pytest
	# The store, in-process API and plugin suites again: chunks in a real S3
	# server (SeaweedFS), the index in a real PostgreSQL.
	INGESTD_TEST_STORAGE=s3 INGESTD_TEST_INDEX=postgres $(BIN)/python -m pytest -q tests/cas tests/http tests/plugins

bench: $(DEV_STAMP)
	$(BIN)/python bench/seed_upload.py
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/processing.py
	$(BIN)/python bench/tus.py

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info tests/e2e/tus_js/node_modules
