# Every target bootstraps .venv itself, so a fresh clone needs only `make demo` / `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test faults lint fmt bench clean venv smoke-aws

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ec2backup_lab.demo

# Test files run on TEST_WORKERS processes, each with its own lab and Temporal dev server (a file
# stays on one: its module fixtures start an orchestrator); most of a test waits on polls and
# timers, so two share the 2 cores of CI well.
TEST_WORKERS ?= 2

test: lint
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -x -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "not fault"

# The long fault runs (marker `fault`); `make test` runs a short form of each.
faults: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q --durations=15 -m fault

# One backup and one restore against a real AWS account and Temporal (docs/deploy.md); never in CI.
smoke-aws: $(STAMP)
	$(BIN)/python tests/smoke_aws.py

# lint-imports enforces the dependency direction (docs/architecture.md, [tool.importlinter]).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy ec2backup ec2backup_lab workflows activities worker_agent
	$(BIN)/lint-imports --no-cache

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .lab .pytest_cache .mypy_cache .ruff_cache
