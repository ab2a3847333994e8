# Every target makes its own virtualenv, so `make serve` and `make test` work on a fresh checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q
ARGS   ?=

.PHONY: serve test bench bench-voice system clean help

help:
	@echo "make serve   run the daemon on the bundled model (./run/edgeslm.sock); ARGS='--socket /tmp/e.sock' to pass flags"
	@echo "make test    run the test suite (unit + integration on real runtimes and a real socket)"
	@echo "make bench   benchmark the bare engines against the daemon over the socket"
	@echo "make bench-voice  voice command accuracy over espeak-ng voices and press-to-action latency by stage"
	@echo "make system  system tier, as root: units under a real systemd in nspawn, install.sh, Ansible, arm64 (qemu)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[tflite,gpio,audio]'
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

bench-voice: $(VENV)/.dev-installed
	$(BIN)/python bench/voice.py $(ARGS)

# Root only. Needs systemd-container, debootstrap, qemu-user-static (.ci/run installs them); the first run
# debootstraps Debian into .cache/system (a few minutes), later runs reuse the tarballs.
system: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m system tests/system -p no:cacheprovider -rs $(ARGS)

clean:
	rm -rf $(VENV) run .pytest_cache
