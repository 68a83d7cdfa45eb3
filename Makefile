# Pulsar Relay — every command a developer or CI needs. `make` alone prints this help.
.DEFAULT_GOAL := help
SHELL := /bin/bash

# uv drives the workspace; a clean machine has only python3 + pip, so `install` bootstraps it:
# `pip install uv` into the current python, or, where that python is externally managed
# (PEP 668, Debian/Ubuntu system python), into a private venv in .tools/.
# Re-evaluated on every use, so the recipes after `bootstrap` see the uv it just installed.
UV = $(shell command -v uv 2>/dev/null || { test -x .tools/bin/uv && echo .tools/bin/uv; } || echo "python3 -m uv")
export UV_PYTHON ?= python3.11

.PHONY: help install run test test-reliability lint typecheck fmt check clean bench loadtest durability

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: bootstrap
bootstrap: ## Install uv with pip if it is missing (into .tools/ when pip may not write)
	@command -v uv >/dev/null 2>&1 || test -x .tools/bin/uv || python3 -m uv --version >/dev/null 2>&1 || { \
		echo "uv not found: installing it with pip"; \
		python3 -m pip install --quiet uv 2>/dev/null || \
		{ python3 -m venv .tools && .tools/bin/python -m pip install --quiet uv; }; \
	}

install: bootstrap ## Create .venv from uv.lock (bootstraps uv with pip when missing)
	@$(UV) sync --frozen --all-packages

run: install ## Start embedded Valkey + ingest (:8080) + gateway (:8081); Ctrl-C stops all
	@$(UV) run --frozen python -m relay_devtools.devrun

test: install ## Run the whole test suite against real Valkey processes (fault tests included)
	@$(UV) run --frozen pytest

test-reliability: install ## Only the fault tests: kill -9 Valkey / a gateway under load (~2 min)
	@$(UV) run --frozen pytest -m reliability

lint: install ## Ruff lint and format check
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen ruff format --check .

typecheck: install ## mypy --strict over every package
	@$(UV) run --frozen mypy

fmt: install ## Format and auto-fix with ruff
	@$(UV) run --frozen ruff format .
	@$(UV) run --frozen ruff check --fix .

check: lint typecheck test ## lint + typecheck + test

bench: install ## Relay vs nchan side by side (installs nginx-light+nchan+wrk if missing); <10 min
	@$(UV) run --frozen python -m loadtests.bench $(BENCH_ARGS)

durability: install ## Publish msgs/s + p99 per appendfsync mode and messages lost to kill -9 (~3 min)
	@$(UV) run --frozen python -m loadtests.durability $(DURABILITY_ARGS)

loadtest: install ## Short headless locust run against a stack it starts; prints locust's summary
	@$(UV) run --frozen python -m loadtests.bench.loadtest $(LOADTEST_ARGS)

clean: ## Remove the virtualenv and caches (keeps .data/)
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
