# make help lists every target. CONFIG picks the experiment (default: the offline demo).
CONFIG ?= configs/demo.toml
# uv from PATH, else the one pip installs into this Python (see setup).
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PIPELINE = $(UV) run --frozen pipeline
.DEFAULT_GOAL := help

.PHONY: help setup demo test lint data extract train eval all clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: ## Install uv if needed, then create .venv exactly from uv.lock (idempotent)
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --quiet

demo: setup ## Run the whole pipeline offline on tiny random models and synthetic data
	$(PIPELINE) run --stage all --config configs/demo.toml --force

test: setup lint ## Lint, then run the test suite
	$(UV) run --frozen pytest -q

lint: setup ## ruff check
	$(UV) run --frozen ruff check dinov2clip tests bench

data: setup ## Stage 1: download / generate shards and eval sets (CONFIG=...)
	$(PIPELINE) data --config $(CONFIG)

extract: setup ## Stage 2: DINOv2 + CLIP embeddings to sharded npy/Parquet (CONFIG=...)
	$(PIPELINE) extract --config $(CONFIG)

train: setup ## Stage 3: fit the projector over cached embeddings (CONFIG=...)
	$(PIPELINE) train --config $(CONFIG)

eval: setup ## Stage 4: retrieval, % of CLIP, reports and plots (CONFIG=...)
	$(PIPELINE) eval --config $(CONFIG)

all: setup ## All four stages in one process (CONFIG=...)
	$(PIPELINE) run --stage all --config $(CONFIG)

clean: ## Remove the demo's artifacts
	rm -rf artifacts/demo
