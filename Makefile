# make help lists every target. CONFIG picks the experiment (default: the offline demo);
# ARGS passes flags on to the stage, e.g. make train CONFIG=configs/cc12m-seed.toml ARGS="--resume".
CONFIG ?= configs/demo.toml
ARGS ?=
# uv from PATH, else the one pip installs into this Python (see setup).
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PIPELINE = $(UV) run --frozen pipeline
.DEFAULT_GOAL := help

.PHONY: help setup demo test test-fast test-deps lint data extract train eval all clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

setup: ## Install uv if needed, then create .venv exactly from uv.lock, bytecode compiled
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --compile-bytecode --quiet

demo: setup clean ## Run the whole pipeline offline on tiny random models and synthetic data
	@# From a clean artifacts/demo: a set left by an older version would be refused as mixed.
	$(PIPELINE) run --stage all --config configs/demo.toml --force

test: setup test-deps lint ## Lint, then run the whole test suite (what CI runs)
	$(UV) run --frozen pytest -q

test-fast: setup test-deps lint ## Lint, then all but the slow tests (img2dataset, torchrun, kills): ~3 min
	$(UV) run --frozen pytest -q -m "not slow"

# Java only for the whole suite: pyspark's test is a slow one. A prerequisite sees the variable
# of the target that asked for it.
TEST_TOOLS ?= chromium java
test-fast: TEST_TOOLS = chromium
test-deps: ## Install Debian's chromium and a Java runtime for the tests when missing (root or sudo)
	@bash scripts/test-deps.sh $(TEST_TOOLS)

lint: setup ## ruff check, and uv.lock in step with pyproject.toml
	$(UV) run --frozen ruff check dinov2clip tests bench
	@$(UV) lock --check --offline --quiet || { echo "error: uv.lock is out of step with" \
		"pyproject.toml: run 'uv lock' and commit uv.lock"; exit 1; }

data: setup ## Stage 1: download / generate shards and eval sets (CONFIG=...)
	$(PIPELINE) data --config $(CONFIG) $(ARGS)

extract: setup ## Stage 2: DINOv2 + CLIP embeddings to sharded npy/Parquet (CONFIG=...)
	$(PIPELINE) extract --config $(CONFIG) $(ARGS)

train: setup ## Stage 3: fit the projector over cached embeddings (CONFIG=...)
	$(PIPELINE) train --config $(CONFIG) $(ARGS)

eval: setup ## Stage 4: retrieval, % of CLIP, reports and plots (CONFIG=...)
	$(PIPELINE) eval --config $(CONFIG) $(ARGS)

all: setup ## All four stages in one process (CONFIG=...)
	$(PIPELINE) run --stage all --config $(CONFIG) $(ARGS)

clean: ## Remove the demo's artifacts
	rm -rf artifacts/demo
