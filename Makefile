# Every target sets itself up on a fresh machine: the venv is created and filled when absent.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch 2.14.1 + torchvision 0.29.1: torch-fidelity imports torchvision when loaded, and no PyPI torchvision
# imports with the CPU-only torch 2.13.0 wheel ("operator torchvision::nms does not exist"); this pair does.
# torch goes in first: installing torch-fidelity without a torchvision present pulls one in and may replace torch.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
# cache-dit (DBCache baselines of the harness) without its dependencies: they would replace our torch /
# diffusers; 1.5.3 runs with the versions above (tested in tests/test_eval.py).
CACHEDIT ?= cache-dit==1.5.3

.PHONY: demo demo-flux test install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[train,eval,test,triton]"
	$(BIN)/python -m pip install -q --no-deps $(CACHEDIT)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m harmonica_bench.demo

demo-flux: $(STAMP)
	$(BIN)/python -m harmonica_bench.demo --model flux --out outputs/demo-flux

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV)
