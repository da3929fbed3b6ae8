# batch_ops: two commands do all the set-up on a fresh machine.
#   make demo   run the main job against the embedded local server (no API key, no network)
#   make test   lint, type-check and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install lint typecheck docs pytest test demo demo-core demo-clean bench drill compat clean

# pip is pinned too: 26.3 resolves the known-good set in ~25 s where the venv's bundled 23.2 takes
# ~100 s (`make install` resolves it; tests/test_constraints.py, every extra, in `make drill`).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "pip==26.3"

# Reinstall when the package metadata or the pinned set changes.
# The distribution was called batch-ops before 0.2 (a name taken on PyPI): a venv made then holds it
# too, with the same entry points, and its egg-info in the checkout is on sys.path when Python runs
# here (Airflow then finds two providers); both go first.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) uninstall -q -y batch-ops 2>/dev/null || true
	rm -rf batch_ops.egg-info
	$(PIP) install -q -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check batch_ops tests scripts benchmarks dags flows drills

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir .site

typecheck: install
	$(BIN)/mypy

# Three workers, one test file each at a time (loadfile keeps a module's fixtures in one process):
# the suite waits on servers far more than it computes (1.1 of 2 cores busy with two workers), so on
# 2 cores three workers took pytest from 8:01 to 6:31 (measured, 801 tests).
# Long scenarios (``-m scenario``: two deployments, outages of seconds, lost subflows, ...) run in `make drill`.
pytest: install
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --durations=12 -m "not scenario"

# Lint, type-check and docs run beside the tests (mypy alone is ~27 s cold); --output-sync keeps each
# one's output together.
test: install
	$(MAKE) --no-print-directory -j4 --output-sync=target lint typecheck docs pytest

demo: install
	$(BIN)/python scripts/demo.py

demo-core: install
	$(BIN)/python scripts/core_demo.py

demo-clean:
	rm -rf .demo

bench: install
	$(PIP) install -q -c constraints.txt -e ".[all,dev,bench]"
	$(BIN)/python benchmarks/run_all.py

# The adapter tests on the oldest and the newest Airflow and Prefect we declare, each in a clean uv venv
# (scripts/compat.py; its table goes to docs/compat.md). ~15 min; not part of `make test`.
compat: install
	$(BIN)/python scripts/compat.py

# Reliability drills (issue 8): faults, kills, bad input, secrets, and the long test scenarios (pytest -m scenario);
# slow (~14 min), not part of `make test`.
drill: install
	$(BIN)/python drills/run.py

# The cluster drill: Airflow on Celery (PostgreSQL 15, Redis), two workers without a shared disk, two
# triggerers, S3 on moto; kills a triggerer and a worker. ~8 min on 2 cores; needs root (initdb as the
# postgres user, tmpfs mounts in mount namespaces) and installs redis-server with apt-get when missing.
.PHONY: drill-cluster
drill-cluster: install
	$(PIP) install -q -c constraints.txt -e ".[all,dev,cluster]"
	$(BIN)/python -m drills.cluster

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .site
