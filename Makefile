# kpatch.livepatch — the two commands of the README, and their parts.
#   make demo   set up everything and run the main job against a local VM
#   make test   unit, sanity and integration tests (what CI runs)
SHELL := /bin/bash
PY_SYS ?= python3
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-full test-quick corpus corpus-newest deps venv unit sanity integration bench changelog clean

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
# The patch corpus (tests/integration/test_corpus.py) runs for CORPUS_RELEASES: the 6.1 set in
# `make test`, every corpus kernel in `make test-full` (see README, "Patch corpus").
# `make test` (CI) runs everything on the 6.1 corpus; `make test-full` adds the corpus of both 6.12s
# (Debian 12's, Debian 13's gcc-14 one) and of sid's 7.2 (gcc-16): the three add well over an hour
# cold on 2 cores, too much for CI's 90 minutes beside its ~42; `make corpus-newest` runs only
# Debian 13's 6.12 and 7.2;
# `make test-quick` leaves out the scenarios marked slow (listed in tests/integration/conftest.py:
# reboots, the 3-VM fleet, cold tree preparation) for a fast developer loop.
CORPUS_RELEASES ?= 6.1.0-50-cloud-amd64
SELECT ?= slow or not slow
test: deps venv
	KPATCH_CORPUS_RELEASES=$(CORPUS_RELEASES) $(PY) -m pytest tests/unit tests/integration -m "$(SELECT)" --durations=15 $(PYTEST_ARGS)
	VENV=$(VENV) scripts/sanity

NEWEST_RELEASES = 6.12.117+deb13-cloud-amd64,7.2.13+deb14-cloud-amd64
test-full: CORPUS_RELEASES = 6.1.0-50-cloud-amd64,6.12.107+deb12-cloud-amd64,$(NEWEST_RELEASES)
test-full: test

test-quick: SELECT = not slow
test-quick: test

# Only the patch corpus, for the given releases.
corpus: deps venv
	KPATCH_CORPUS_RELEASES=$(CORPUS_RELEASES) $(PY) -m pytest tests/integration/test_corpus.py $(PYTEST_ARGS)

# Only the corpus of the newest kernels (Debian 13's 6.12, sid's 7.2).
corpus-newest: CORPUS_RELEASES = $(NEWEST_RELEASES)
corpus-newest: corpus

demo: deps venv
	$(PY) -m tests.testbed.demo

bench: deps venv
	$(PY) -m bench

# Fold changelogs/fragments into changelogs/changelog.yaml under galaxy.yml's version and
# regenerate CHANGELOG.rst; fragments stay (keep_fragments), edited ones are re-read.
changelog: venv
	PATH=$(VENV)/bin:$$PATH antsibull-changelog release --update-existing --refresh-fragments

clean:
	rm -rf .collection .pytest_cache tests/output
