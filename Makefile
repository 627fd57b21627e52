# The two set-up commands of the README. Both create .venv on first use.
.PHONY: demo test test-slow lint typecheck install clean

VENV ?= .venv
BIN := $(VENV)/bin

install:
	@scripts/bootstrap.sh

demo: install
	$(BIN)/gradience demo

test: install
	scripts/test.sh

test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check src tests benchmarks examples

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs
