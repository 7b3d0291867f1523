# Quick start: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo lint test test-all bench clean

$(BIN)/sparsega: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/sparsega

demo: install
	$(BIN)/sparsega demo -o demo_out --overwrite

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''

bench: install
	$(BIN)/python benchmarks/bench_align.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
