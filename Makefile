# erc-stream: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export ERC_DATA_DIR ?= $(abspath ../shared/datasets)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-unit test-faults test-gpu sysdeps bench-model bench-stream bench-train bench-gpu bench-turn bench-freeze lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: a plain `torch` requirement with no torch installed pulls a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Real tools the tests drive: Prometheus/promtool (deploy tests), stunnel (TLS tests).
sysdeps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v stunnel4 >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q prometheus stunnel4 >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q prometheus stunnel4 >/dev/null)) \
	      || echo "WARNING: could not install prometheus/stunnel4; the tests that need them will skip and say so"; \
	  else echo "WARNING: not root: install prometheus and stunnel4 with apt for the deploy and TLS tests"; fi; \
	fi

# The shipped store serves MELD from CURRENT and EmoryNLP from CURRENT.emorynlp: `make demo DATASET=emorynlp`.
DATASET ?= meld
demo: $(STAMP)
	$(BIN)/erc-stream demo --store models --dataset $(DATASET)

test: $(STAMP) sysdeps lint
	$(BIN)/python -m pytest -q tests --ignore=tests/faults

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-faults: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -s tests/faults

# The CUDA path: AMP training, worker inference on the GPU vs CPU fp32, a short benchmark.
# Every test skips, saying why, where torch sees no CUDA device.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -rsP tests/gpu

# Style and types: ruff (rules in pyproject.toml), ruff format, mypy over both packages.
# `make lint LINT_PATHS="erc_stream tests benchmarks" MYPY_PACKAGES=erc_stream` checks a part.
LINT_PATHS ?= erc_stream trainer tests benchmarks
MYPY_PACKAGES ?= erc_stream trainer

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy $(MYPY_PACKAGES)

bench-model: $(STAMP)
	$(BIN)/python benchmarks/bench_model.py

bench-stream: $(STAMP)
	$(BIN)/python benchmarks/bench_stream.py

bench-train: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_gpu.py

bench-turn: $(STAMP)
	$(BIN)/python benchmarks/bench_turn.py

# --freeze-layers against all layers trained; FREEZE_ARGS="--encoder mpnet-base --freeze 0,6,9" for the 110M one.
bench-freeze: $(STAMP)
	$(BIN)/python benchmarks/bench_freeze.py $(FREEZE_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache var
