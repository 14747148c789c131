# helixd — developer and user entry points. `make run` and `make test` are the README's two
# commands: each sets up everything it needs on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
USER_CONFIG := $(or $(HELIXD_CONFIG),$(or $(XDG_CONFIG_HOME),$(HOME)/.config)/helixd/helixd.toml)
# llama.cpp's own llama-server, built from the pinned llama-cpp-python sdist into a cache
# outside the repository (~/.cache/helixd/llama-server-VERSION); the script prints its path.
LLAMA_SERVER_BUILD := tests/tools/build_llama_server.sh
# Debian packages the system tests need (systemd-analyze, debootstrap, systemd-nspawn),
# the live view's browser tests (headless Chromium and its WebDriver) and `helixctl top`'s
# terminal test (tmux).
SYSTEM_TEST_DEBS := systemd debootstrap systemd-container chromium chromium-driver tmux

.PHONY: run test test-fast llama-server lint typecheck bench system-deps deb clean

# Two install levels: `make run` installs helixd and its runtime dependencies only (a
# minute or so); `make test` adds the test extras, which include llama-cpp-python, built
# from source (minutes on 2 cores the first time). Each stamp is redone when
# pyproject.toml changes.
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# compat mode: a plain path entry instead of an import hook, which would cost
	# helixctl ~15 ms of start-up on every call. setuptools calls the mode transitional,
	# so fall back to a default editable install if it ever goes away.
	$(BIN)/pip install --quiet -e . --config-settings editable_mode=compat \
	  || $(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat \
	  || $(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

## Run helixd in the foreground as a user instance (writes a first config if there is none).
run: $(RUN_STAMP)
	@test -f "$(USER_CONFIG)" || $(BIN)/helixctl init --user --output "$(USER_CONFIG)"
	$(BIN)/helixd --user --config "$(USER_CONFIG)"

## The whole test suite: unit, process, e2e and system (boots a Debian root when root).
test: $(TEST_STAMP) system-deps llama-server
	HELIXD_TEST_LLAMA_SERVER="$$($(LLAMA_SERVER_BUILD) --path)" HELIXD_TEST_REAL_PROVIDERS=1 \
	  $(BIN)/pytest

## Everything but the system tests.
test-fast: $(TEST_STAMP)
	$(BIN)/pytest -m "not system"

## llama.cpp's llama-server, CPU only, for the real-server tests: built once (about
## 8 minutes on 2 cores, download included), then reused from the cache at once.
llama-server: $(RUN_STAMP)
	PYTHON=$(BIN)/python $(LLAMA_SERVER_BUILD)

system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(SYSTEM_TEST_DEBS); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing$$missing for the system tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi; \
	fi

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

bench: $(TEST_STAMP)
	$(BIN)/python bench/helixctl_status.py
	$(BIN)/python bench/proxy_overhead.py
	$(BIN)/python bench/access_log_cost.py
	$(BIN)/python bench/live_view_cost.py

deb:
	packaging/build-deb.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
