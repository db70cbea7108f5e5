# moe.cpp — thin wrapper over CMake. `make run` and `make test` work on a fresh Debian 12 machine.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# `make run` uses the bundled default model (models/, see models/README.md) unless MODEL is given.
MODEL ?=
PROMPT ?= And it came to pass, when the king
N ?= 64
RUN_FLAGS ?= --seed 7
# The default-model recipe (recipes/default_model.sh): where it works, and the file name it installs
# into models/ (must match kDefaultModelFile in tools/moe/cli_util.h; a test checks they agree).
RECIPE_DIR ?= $(BUILD_DIR)/recipe
DEFAULT_MODEL_FILE ?= tiny-qwen3moe-8x2-kjv-py-fortunes-F16.gguf
THREADS ?= 2

.PHONY: deps configure build run test bench fuzz clean default-model compare-routing routing-lab

deps:
	@bash scripts/deps.sh

configure: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) > $(BUILD_DIR).configure.log 2>&1 || \
		(cat $(BUILD_DIR).configure.log; exit 1)

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS) --target moe

run: build
	$(BUILD_DIR)/bin/moe run $(if $(MODEL),-m $(MODEL)) -p "$(PROMPT)" -n $(N) $(RUN_FLAGS)

# Retrains the bundled default model from Debian packages (about 45 minutes on 2 cores) and installs it.
default-model: build
	@bash scripts/deps.sh corpus
	MOE=$(BUILD_DIR)/bin/moe OUT=$(RECIPE_DIR) THREADS=$(THREADS) bash recipes/default_model.sh
	cp $(RECIPE_DIR)/model.gguf models/$(DEFAULT_MODEL_FILE).tmp && mv models/$(DEFAULT_MODEL_FILE).tmp models/$(DEFAULT_MODEL_FILE)

# Dense vs MoE vs aux-loss-free MoE on the same tokens (recipes/compare_routing.sh).
compare-routing: build
	@bash scripts/deps.sh corpus
	MOE=$(BUILD_DIR)/bin/moe THREADS=$(THREADS) bash recipes/compare_routing.sh

# The routing lab's fidelity table (docs/routing-lab.md) and plots (docs/routing-lab.html) on the bundled model
# (scripts/routing_lab.sh, about 10 minutes on 2 cores).
routing-lab: build
	@bash scripts/deps.sh corpus
	MOE=$(BUILD_DIR)/bin/moe THREADS=$(THREADS) bash scripts/routing_lab.sh $(BUILD_DIR)/routing-lab

test: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS) --target moe moe_tests
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 900

bench: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS) --target moe moe_microbench
	$(BUILD_DIR)/bin/moe_microbench --benchmark_min_time=0.2s

fuzz:
	@bash scripts/fuzz.sh 600

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR).configure.log
