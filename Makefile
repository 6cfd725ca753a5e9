# cdc-reconciler developer commands. `make demo` and `make test` are the README's quickstart.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STACK_ENV = eval "$$(scripts/stack env)"

.PHONY: deps venv lint typecheck test test-unit bench bench-quick stack-up stack-down stack-status demo clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## OS packages of the native stack (PostgreSQL, Redis, Maven, JDK, curl, promtool), if missing.
deps:
	scripts/install-deps

## All code: the package, tests/, bench/, scripts/*.py and alembic/ (migrations included).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## mypy strict on the package, tests/, bench/ and scripts/*.py, with the package laid out as
## installed (scripts/typecheck says why).
typecheck: venv
	VENV=$(VENV) scripts/typecheck

## Starts the real services if they are not up (idempotent), then runs every test against them.
test: deps venv
	scripts/stack up
	$(STACK_ENV) && $(VENV)/bin/pytest -q

## Only the tests that need no services (decoding, diff logic, status rules).
test-unit: venv
	$(VENV)/bin/pytest -q -m "not services"

$(VENV)/.bench-installed: $(VENV)/.installed
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev,bench]'
	touch $@

bench: venv $(VENV)/.bench-installed
	scripts/stack up
	$(STACK_ENV) && $(PY) -m bench.run

bench-quick: venv $(VENV)/.bench-installed
	scripts/stack up
	$(STACK_ENV) && $(PY) -m bench.run --quick

stack-up:
	scripts/stack up

stack-down:
	scripts/stack down

stack-status:
	scripts/stack status

## The whole story on screen: starts the stack, creates a demo schema with a trickle of writes,
## registers Debezium, runs the consumer, shows lag, plants a difference that `cdcr reconcile`
## finds and repairs, shows status; Ctrl-C stops the demo (the stack keeps running: make stack-down).
demo: deps venv
	scripts/demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
