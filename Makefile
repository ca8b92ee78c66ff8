# bluegreen: `make demo` runs the whole job locally, `make test` runs the suite. Both install what
# they need first (Debian's PostgreSQL 15 and PgBouncer through apt when missing, then a venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps install test test-unit lint demo schema clean

deps:  ## system packages: PostgreSQL 15 (blue), PgBouncer; pgbench ships with PostgreSQL
	@pkgs=""; \
	[ -x /usr/lib/postgresql/15/bin/initdb ] || pkgs="$$pkgs postgresql-15 postgresql-client-15"; \
	[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || pkgs="$$pkgs pgbouncer"; \
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

lint: install
	$(BIN)/ruff check orchestrator tests
	$(BIN)/mypy orchestrator

demo: install  ## local blue + green + PgBouncer + pgbench traffic, plans/demo.yaml end to end, the report
	$(BIN)/bluegreen demo

schema: install
	$(BIN)/bluegreen schema --out plan.schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
