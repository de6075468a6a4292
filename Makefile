# make setup | demo | test | bench | gpu        (README.md documents demo and test)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.resnet_fast-installed

# nvcc on PATH may be a wrapper script; CUDA_HOME must be the toolkit it really runs.
CUDA_HOME ?= $(shell scripts/cuda_home.sh)
export CUDA_HOME
NVCC := $(if $(CUDA_HOME),$(CUDA_HOME)/bin/nvcc,)

EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu)
CU_SOURCES := $(wildcard csrc/cuda/*.cu)
CU_CHECKS := $(patsubst csrc/cuda/%.cu,build/cuda-check/%.o,$(CU_SOURCES))

.PHONY: setup demo test bench gpu cuda-check clean

setup: $(STAMP)

# A first install writes ~6 GB (torch and its CUDA libraries): say so up front rather than fail halfway.
MIN_FREE_GB ?= 7

$(STAMP): requirements.txt setup.py pyproject.toml $(EXT_SOURCES)
	@if [ ! -x $(VPY) ]; then \
		free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
		if [ -n "$$free" ] && [ "$$free" -lt $(MIN_FREE_GB) ]; then \
			echo "make setup: the virtual environment needs about $(MIN_FREE_GB) GB free on this disk (torch with its CUDA libraries is ~6 GB); $$free GB are free. Free some space, then run make again." >&2; \
			exit 1; \
		fi; \
	fi
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

demo: setup
	$(VPY) -m resnet_fast

# Every .cu compiled for sm_90, compile only: a CUDA build break fails CI on a machine without a GPU.
cuda-check: setup $(CU_CHECKS)

build/cuda-check/%.o: csrc/cuda/%.cu csrc/add_relu.h $(STAMP)
	@mkdir -p $(dir $@)
	@if [ -z "$(NVCC)" ] || [ ! -x "$(NVCC)" ]; then \
		echo "cuda-check: nvcc not found, skipping $<"; touch $@; \
	else \
		TORCH_INC=$$($(VPY) -c 'import torch.utils.cpp_extension as c; print(" ".join("-I"+p for p in c.include_paths()))'); \
		NV_INC=$$($(VPY) -c 'import os, torch; p=os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "include"); print("-I"+os.path.abspath(p) if os.path.isdir(p) else "")'); \
		echo "nvcc -arch=sm_90 -c $<"; \
		$(NVCC) -std=c++20 -O3 -arch=sm_90 -c $< -o $@ $$TORCH_INC $$NV_INC -I$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
			-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
			-DRESNET_FAST_WITH_CUDA=1 --expt-relaxed-constexpr; \
	fi

test: setup cuda-check
	$(VPY) -m pytest -q -ra

bench: setup
	$(VPY) benchmarks/bench_model.py --auto-output --compile

gpu: setup
	bash benchmarks/gpu_suite.sh benchmarks/results/gpu-$$(date +%Y%m%d-%H%M)

clean:
	rm -rf build resnet_fast/*.so *.egg-info $(STAMP)
