# moe.cpp — thin wrapper over CMake. `make run` and `make test` work on a fresh Debian 12 machine.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
FIXTURES ?= ../shared/fixtures
DEFAULT_MODEL ?= $(FIXTURES)/models/tiny-qwen3moe.gguf
PROMPT ?= The history of the
N ?= 32

.PHONY: deps configure build run test bench fuzz clean

deps:
	@bash scripts/deps.sh

configure: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) > $(BUILD_DIR).configure.log 2>&1 || \
		(cat $(BUILD_DIR).configure.log; exit 1)

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS) --target moe

run: build
	$(BUILD_DIR)/bin/moe run -m $(DEFAULT_MODEL) -p "$(PROMPT)" -n $(N)

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
