# Every target makes its own virtualenv, so `make serve` and `make test` work on a fresh checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q
ARGS   ?=

.PHONY: serve test test-models bench bench-voice system clean help

help:
	@echo "make serve   run the daemon on the bundled model (./run/edgeslm.sock); ARGS='--socket /tmp/e.sock' to pass flags"
	@echo "make test    run the test suite (unit + integration on real runtimes and a real socket)"
	@echo "make test-models  slow tier: pull minilm-l6 and silero-vad for real into .cache/store, serve and check them"
	@echo "make bench   benchmark the bare engines against the daemon over the socket"
	@echo "make bench-voice  voice command accuracy over espeak-ng voices and press-to-action latency by stage"
	@echo "make system  slow system tier (see tests/system)"
	@echo "make bench-metrics  metrics on vs off at 32 clients, and record bytes per hour idle and at 10 req/s"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[tflite,gpio,audio]'
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	@touch $@ $(VENV)/.serve-installed

# The convert extra (torch==2.13.0 CPU, transformers, litert-torch) builds models in `edgeslm pull`.
$(VENV)/.convert-installed: pyproject.toml $(VENV)/.dev-installed
	$(PIP) install -e '.[dev,convert]'
	@touch $@

serve: $(VENV)/.serve-installed
	$(BIN)/edgeslm serve $(ARGS)

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

# Pulls into .cache/store (kept between runs; a cold pull on a fresh checkout) and prints what each test proved.
test-models: $(VENV)/.convert-installed
	$(BIN)/python -m pytest -m slow tests/store -s --timeout 3600 $(ARGS)

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/classify.py $(ARGS)

bench-voice: $(VENV)/.dev-installed
	$(BIN)/python bench/voice.py $(ARGS)
.PHONY: bench-metrics
bench-metrics: $(VENV)/.dev-installed
	$(BIN)/python bench/metrics.py $(ARGS)

clean:
	rm -rf $(VENV) run .pytest_cache
