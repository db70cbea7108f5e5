# Makefile fragment for the default-model recipe: `make -f recipes/default_model.mk default-model`, or
# `include recipes/default_model.mk` from the top-level Makefile. See recipes/default_model.sh.
BUILD_DIR ?= build
RECIPE_DIR ?= $(BUILD_DIR)/recipe
THREADS ?= 2
STEPS ?= 4000

.PHONY: default-model
default-model:
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release > /dev/null
	@cmake --build $(BUILD_DIR) -j $(THREADS) --target moe
	MOE=$(BUILD_DIR)/bin/moe OUT=$(RECIPE_DIR) THREADS=$(THREADS) STEPS=$(STEPS) bash recipes/default_model.sh
