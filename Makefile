# bluegreen: `make demo` runs the whole job locally, `make test` runs the suite. Both install what
# they need first (Debian's PostgreSQL 15 and PgBouncer through apt when missing, then a venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps install test test-unit lint demo schema clean hydra-data hydra-e2e report-png

deps:  ## system packages: PostgreSQL 15 (blue), PgBouncer, chromium and a font (the report page tests)
	@pkgs=""; \
	[ -x /usr/lib/postgresql/15/bin/initdb ] || pkgs="$$pkgs postgresql-15 postgresql-client-15"; \
	[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || pkgs="$$pkgs pgbouncer"; \
	[ -x /usr/bin/chromium ] || pkgs="$$pkgs chromium"; \
	[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || pkgs="$$pkgs fonts-dejavu-core"; \
	if [ -n "$$pkgs" ]; then \
	  echo "installing with apt-get:$$pkgs"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null; \
	fi

install: deps $(VENV)/.installed  ## the venv with bluegreen (editable) and its test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: install  ## the whole suite: unit tests, then real clusters (PG 15 blue, PG 18 green, PgBouncer)
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

.PHONY: faults
faults: install  ## issue #7: kill -9 at every action boundary, green restart mid-migrate, blue drop mid-copy
	BLUEGREEN_FAULTS=all $(BIN)/python -m pytest tests/faults -q -s

lint: install
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/mypy orchestrator bench

demo: install  ## local blue + green + PgBouncer + pgbench traffic, plans/demo.yaml end to end, the report and its page
	$(BIN)/bluegreen demo --html bluegreen-demo.html

report-png: install  ## docs/report.png: the demo's page as the browser test sees it
	BLUEGREEN_REPORT_PNG=docs/report.png $(BIN)/python -m pytest tests/func/test_demo.py -k whole_story -q

# Hydra v1.11.10 -> v2.3.0 end to end (plans/hydra.yaml). SCALE = access (and refresh) tokens generated.
# `make hydra-e2e` (CI's small default also runs inside `make test`); `make hydra-e2e SCALE=1000000` writes
# docs/hydra-report.md. `make hydra-data DSN=... SCALE=n` loads Hydra v1.11.10 and the population into a database.
SCALE ?= 10000
hydra-data: install
	$(BIN)/bluegreen hydra-data --dsn "$(DSN)" --scale $(SCALE)

hydra-e2e: install
	HYDRA_E2E_SCALE=$(SCALE) $(if $(filter-out 10000,$(SCALE)),HYDRA_E2E_MARKDOWN=docs/hydra-report.md HYDRA_E2E_LOG=/tmp/hydra-e2e.log) \
	  $(BIN)/python -m pytest tests/func/test_hydra_e2e.py -x -q

schema: install
	$(BIN)/bluegreen schema --out plan.schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
