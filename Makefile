# Cofre: the verbs a newcomer needs. `make run` and `make test` install what is missing
# (Debian packages through apt, a .venv from the hash-pinned lock file) and are idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cofre-installed
# apt needs root; on a developer laptop that is not root, sudo is used for apt only.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
IN_SCOPE := cofre cofre_cli vault hsm api policies audit infra_pci compliance

.PHONY: help run test test-fast lint format bench system-deps test-deps bench-deps venv lock clean

help:
	@echo "make run    - start the dev vault (SoftHSM token, SQLite, dev PKI; created on first run)"
	@echo "make test   - lint, then the whole test suite (real SoftHSM and PostgreSQL)"
	@echo "make test-fast - the unit and property tests: no PostgreSQL, no SoftHSM, nothing slow"
	@echo "make lint   - ruff, mypy --strict, import-linter contracts"
	@echo "make format - ruff format and ruff check --fix"
	@echo "make venv   - only install: .venv with the vault and the evidence verifier (cofre, cofre-verify)"
	@echo "make bench  - run bench/ and write bench/REPORT.md"
	@echo "make lock   - re-pin requirements.lock from requirements.in (needs uv)"

# Debian packages: SoftHSM2 (the dev/test HSM) and the PostgreSQL server (tests start a
# throwaway cluster). Installed only when missing.
system-deps:
	@missing=""; \
	[ -f /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Only the tests need these: headless Chromium renders the evidence report a QSA opens
# and, driven through chromium-driver (WebDriver), types a card into the hosted capture
# fields; gcc and p11-kit's pkcs11.h build the CloudHSM-behaviour PKCS#11 shim
# (tests/support/).
test-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v gcc >/dev/null || missing="$$missing gcc libc6-dev"; \
	[ -f /usr/include/p11-kit-1/p11-kit/pkcs11.h ] || missing="$$missing libp11-kit-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Only `make bench` needs these: wrk (a load generator in C) sends plain HTTP to a loopback
# haproxy that originates the mutual TLS, because wrk cannot present a client certificate.
bench-deps:
	@missing=""; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): requirements.lock pyproject.toml verifier/pyproject.toml | system-deps
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Cofre needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e ./verifier
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: system-deps $(STAMP)

run: venv
	$(BIN)/cofre dev

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: test-deps lint
	$(BIN)/pytest

# No PostgreSQL cluster, no SoftHSM2 token, nothing marked slow: the markers come from
# the fixtures a test uses (tests/conftest.py), so this needs no system package.
test-fast: venv
	$(BIN)/pytest -m "not postgres and not hsm and not slow" --no-cov -q

bench: bench-deps venv
	$(BIN)/python -m bench

lock:
	uv pip compile --python-version 3.11 --generate-hashes -q requirements.in -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
