# make run  [overrides]   set up .venv if missing, then: python -m lrtrack +model=mnist_cnn [overrides]
#                          e.g. make run optimizer=adamw schedule=cosine   (or ARGS="...")
# make test [ARGS="..."]   set up .venv if missing, then: pytest ARGS   e.g. make test ARGS='-m "not slow"'
#                          (pytest-xdist runs the suite on every core; ARGS=-n0 runs it in one process)
# make bench               the benchmarks quoted in the README

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch and torchvision first: pick the build for your machine (CPU or CUDA) by overriding TORCH.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
MODEL  ?= mnist_cnn
# The extras installed with lrtrack: dev (pytest, the Lightning and Hugging Face integrations) and ray
# (hydra/launcher=ray; its test runs only where it is installed). EXTRAS=dev skips Ray (~200 MB).
EXTRAS ?= dev,ray

.PHONY: run test bench setup clean

$(BIN)/lrtrack-installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

setup: $(BIN)/lrtrack-installed

# Words like optimizer=adamw on make's command line are make variables: pass them on as overrides.
# (make lists them last-first; reverse keeps the command line's order).
reverse = $(if $(1),$(call reverse,$(wordlist 2,$(words $(1)),$(1))) $(firstword $(1)))
OVERRIDES := $(strip $(call reverse,$(filter-out PYTHON=% VENV=% TORCH=% MODEL=% EXTRAS=% ARGS=%,$(MAKEOVERRIDES))))

run: setup
	$(BIN)/python -m lrtrack +model=$(MODEL) $(OVERRIDES) $(ARGS)

test: setup
	$(BIN)/pytest $(ARGS)

bench: setup
	$(BIN)/python scripts/bench_range_test.py --repeats 5 --warmup 1 --steps 100

clean:
	rm -rf $(VENV) build dist *.egg-info
