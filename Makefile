# Two commands for a newcomer: `make reproduce` (the benchmark) and `make test` (the tests).
# Each creates .venv and installs the project on first use; later calls reuse it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= default
CORES  ?= 2
export METALEARN_DATA_MIRROR ?= $(if $(wildcard ../shared/data/omniglot),$(abspath ../shared/data/omniglot),)

.PHONY: install test reproduce bench clean

install: $(STAMP)

# torch/torchvision are pinned in pyproject.toml; pip takes them from the local wheel cache when present.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install --quiet -e '.[test]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import metalearn, torch, snakemake, dvc, mlflow"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

reproduce: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --keep-going --config profile=$(PROFILE)

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf results models .snakemake
