# The two commands a newcomer needs are `make run` and `make test`; both install what
# they need from the project's own files into virtualenvs (.venv, and .venv-sam for SAM CLI).
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: run test lint typecheck unit chromium bench load clean keys

$(VENV)/.installed: requirements.txt constraints.txt functions/chat/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -r requirements.txt
	touch $@

$(SAM_VENV)/.installed: tests/requirements-sam.txt tests/constraints-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install $(PIP_FLAGS) -r tests/requirements-sam.txt
	touch $@

## Serve the API on http://127.0.0.1:8080 (offline demo model when no key is configured).
run: $(VENV)/.installed
	$(VENV)/bin/python -m tools.serve

## API keys on the store CHAT_STORE_URL names: make keys ARGS="create alice --tokens-per-day 20000"
keys: $(VENV)/.installed
	$(VENV)/bin/python -m tools.keys $(ARGS)

## Everything CI runs: lint, types, the whole test suite.
test: lint typecheck unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: $(VENV)/.installed $(SAM_VENV)/.installed chromium
	$(VENV)/bin/pytest

## A headless Chromium for the browser tests: found, else installed (Playwright's download where it
## can be reached, else Debian's package when root); if none can be had, those tests fail saying how to get one.
chromium: $(VENV)/.installed
	$(VENV)/bin/python -m tests.harness.browser ensure

## Performance figures (issue: benchmark command): one table, several runs each.
bench: $(VENV)/.installed
	$(VENV)/bin/python -m tools.perf bench

## Full-size load and fault run: prints the load table and the fault table.
load: $(VENV)/.installed
	$(VENV)/bin/python -m tools.perf load

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .mypy_cache .ruff_cache .pytest_cache .artifacts
