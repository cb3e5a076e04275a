# kpatch.livepatch — the two commands of the README, and their parts.
#   make demo   set up everything and run the main job against a local VM
#   make test   unit, sanity and integration tests (what CI runs)
SHELL := /bin/bash
PY_SYS ?= python3
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test deps venv unit sanity integration bench clean

deps:
	@scripts/check-env
	@scripts/install-deps

$(VENV)/.stamp: requirements.txt requirements-test.txt
	@scripts/check-env
	$(PY_SYS) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-test.txt
	@touch $@

venv: $(VENV)/.stamp

unit: deps venv
	$(PY) -m pytest tests/unit -m "not integration" $(PYTEST_ARGS)

sanity: deps venv
	VENV=$(VENV) scripts/sanity

integration: deps venv
	$(PY) -m pytest tests/integration -m integration $(PYTEST_ARGS)

# One pytest run for unit and integration (one summary line), then ansible-test sanity.
# pytest exits 5 when it collected nothing, which fails make like any other failure.
test: deps venv
	$(PY) -m pytest tests/unit tests/integration $(PYTEST_ARGS)
	VENV=$(VENV) scripts/sanity

demo: deps venv
	$(PY) -m tests.testbed.demo

bench: deps venv
	$(PY) -m bench

clean:
	rm -rf .collection .pytest_cache tests/output
