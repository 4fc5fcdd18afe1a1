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

# import-linter reads the source tree as the package `ingestd`; the install maps
# daemon/, plugins/ and cas/ onto it with package-dir, which it cannot follow,
# so it reads a tree of links with that shape.
LAYERS := $(VENV)/import-layers

imports: $(STAMP)
	mkdir -p $(LAYERS)/ingestd
	for d in daemon plugins cas; do ln -sfn $(CURDIR)/$$d $(LAYERS)/ingestd/$$d; done
	cd $(LAYERS) && PYTHONPATH=$(CURDIR)/$(LAYERS) $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/pyproject.toml

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
