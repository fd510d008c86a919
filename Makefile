# slmbench: `make run` benchmarks the paper's 330M pair on this CPU; `make test` runs the tests.
# Both create the virtualenv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
RESULTS ?= results/results.jsonl

.PHONY: install run test test-all lint clean help

help:  ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install slmbench with its pinned working set

run: install  ## CPU benchmark of the paper's pair (mu-330m vs deconly-330m), exports included
	$(BIN)/slmbench run --device cpu --model mu-330m --model deconly-330m --input-len 512 --output-len 128 \
		--results $(RESULTS)

test: install  ## the test suite (CPU, tiny models, a few minutes)
	$(BIN)/python -m pytest -q

lint: install  ## ruff
	$(BIN)/ruff check bench models exporters tests

clean:  ## remove the virtualenv and caches (not results, not the artifact cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
