# Every target makes its own virtualenv, so `make serve` and `make test` work on a fresh checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q
ARGS   ?=

.PHONY: serve test bench system clean help

help:
	@echo "make serve   run the daemon on the bundled model (./run/edgeslm.sock); ARGS='--socket /tmp/e.sock' to pass flags"
	@echo "make test    run the test suite (unit + integration on real runtimes and a real socket)"
	@echo "make bench   benchmark the bare engines against the daemon over the socket"
	@echo "make system  slow system tier (see tests/system)"
	@echo "make bench-metrics  metrics on vs off at 32 clients, and record bytes per hour idle and at 10 req/s"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[tflite]'
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	@touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/edgeslm serve $(ARGS)

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/classify.py $(ARGS)

.PHONY: bench-metrics
bench-metrics: $(VENV)/.dev-installed
	$(BIN)/python bench/metrics.py $(ARGS)

clean:
	rm -rf $(VENV) run .pytest_cache
