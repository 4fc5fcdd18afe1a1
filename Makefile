PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test imports bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ingestd serve --config config.toml

# The layering contracts in pyproject.toml (import-linter).
imports: $(STAMP)
	$(BIN)/lint-imports

test: imports
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/seed_upload.py
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/processing.py
	$(BIN)/python bench/tus.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info tests/tus_js/node_modules
