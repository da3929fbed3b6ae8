# batch_ops: two commands do all the set-up on a fresh machine.
#   make demo   run the main job against the embedded local server (no API key, no network)
#   make test   lint, type-check and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install lint typecheck docs pytest test demo demo-core demo-clean bench drill clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the package metadata or the pinned set changes.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check batch_ops tests scripts benchmarks dags flows drills

docs: install
	$(BIN)/mkdocs build --strict --quiet --site-dir .site

typecheck: install
	$(BIN)/mypy

# Two workers, one test file each at a time (loadfile keeps a module's fixtures in one process):
# the suite waits on servers far more than it computes, so this halves it on 2 cores (measured).
pytest: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test: lint typecheck docs pytest

demo: install
	$(BIN)/python scripts/demo.py

demo-core: install
	$(BIN)/python scripts/core_demo.py

demo-clean:
	rm -rf .demo

bench: install
	$(PIP) install -q -c constraints.txt -e ".[all,dev,bench]"
	$(BIN)/python benchmarks/run_all.py

# Reliability drills (issue 8): faults, kills, bad input, secrets; slow (~8 min), not part of `make test`.
drill: install
	$(BIN)/python drills/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .site
