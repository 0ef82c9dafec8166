# Every target that runs code first makes sure .venv holds the package and its dev tools.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo run test test-fast lint bench openapi clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "uploadcare-bridge needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: install
	$(BIN)/bridge demo $(DEMO_ARGS)

run: install
	$(BIN)/bridge serve

# The PostgreSQL tests run against BRIDGE_TEST_POSTGRES_URL; where it is unset, against this
# machine's server when one answers on 127.0.0.1:5432 (they skip otherwise; CI refuses to).
PG_TEST_URL := postgresql://postgres@127.0.0.1:5432/test
test test-fast: export BRIDGE_TEST_POSTGRES_URL ?= $(shell pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && echo $(PG_TEST_URL))

# Compiled modules, and pytest's assertion-rewritten test modules, are kept between runs even
# where PYTHONDONTWRITEBYTECODE is set, under .venv so the tree stays clean: compiling them
# again was 3-4 s of every run's start, paid once per process (and per xdist worker).
PYCACHE := env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache

# Every tier: unit, contract, service, e2e (processes, wall clock) and ops (deploy, docs, bench).
test: install
	$(PYCACHE) $(BIN)/python -m pytest $(PYTEST_ARGS)

# What needs no subprocess and no wall-clock waiting: pure rules, the store contract on both
# engines, and in-process services on a virtual clock. Under 30 s on 2 cores. Their SQLite
# files go on tmpfs where there is one: they test behaviour, not the disk (the e2e tier's
# kill -9 tests do), and fsync waits on a VM disk were a third of their time. They run in
# FAST_JOBS pytest-xdist workers (each its own tmp dirs, ports and PostgreSQL schema; a
# PostgreSQL test waits on the server, so two workers keep both cores busy); FAST_JOBS=0 runs
# them in one process.
FAST_TMP := $(shell test -d /dev/shm -a -w /dev/shm && echo /dev/shm)
FAST_JOBS ?= 2
test-fast: install
	$(if $(FAST_TMP),TMPDIR=$(FAST_TMP)) $(PYCACHE) $(BIN)/python -m pytest -n $(FAST_JOBS) \
		tests/unit tests/contract tests/service $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/mypy --strict bridge bench

# Figures, not a test: one JSON object on stdout (python -m bench --help for BENCH_ARGS).
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# The committed OpenAPI document (the API and the event catalog), from the code that serves
# it; tests/service/test_catalog.py fails when the two differ.
openapi: install
	$(BIN)/bridge openapi > docs/openapi.json

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
