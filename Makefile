# Two commands for a newcomer: `make reproduce` (the benchmark) and `make test` (the tests).
# Each creates .venv and installs the project on first use; later calls reuse it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?=# empty: the profile named in params.yaml (default); e.g. make reproduce PROFILE=quick
CORES  ?= 2
TIME_LIMIT ?=# e.g. 2h: every training stops by then with a checkpoint (exit 75); the same command resumes
SMK_CONFIG := $(if $(PROFILE),--config profile=$(PROFILE),)
PROFILE_FLAG := $(if $(PROFILE),--profile $(PROFILE),)
export METALEARN_DATA_MIRROR ?= $(if $(wildcard ../shared/data/omniglot),$(abspath ../shared/data/omniglot),)
# The pipeline's commands (metalearn, dvc) run from the virtual environment.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install test reproduce report record pages verify push pull mlflow-ui bench gpu-check clean

install: $(STAMP)

# torch/torchvision are pinned in pyproject.toml; uv (pip where uv fails) installs with pip's configuration,
# so the local wheel cache is used when present (workflow/install.py).
$(STAMP): pyproject.toml workflow/install.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python workflow/install.py $(BIN)/python '.[test]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import metalearn, torch, snakemake, dvc, mlflow"
	touch $(STAMP)

# On every core (pytest-xdist; tests/conftest.py keeps the quick-profile run's tests on one worker);
# the slowest tests listed, so CI logs show where its time goes. One test alone: .venv/bin/pytest tests/FILE.py
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadgroup --durations=10

# The whole benchmark (failed jobs do not stop the others), the HTML report, then each job's runtime.
# TIME_LIMIT=2h: one deadline for every training of this run (METALEARN_STOP_AT); a sliced training
# leaves its checkpoint and no output, and the same command later resumes it (docs/cluster.md).
reproduce: $(STAMP)
	$(if $(TIME_LIMIT),METALEARN_STOP_AT=$$($(BIN)/python -c "import time; from metalearn.cli import duration; print(time.time() + duration('$(TIME_LIMIT)'))") ,)$(BIN)/snakemake --cores $(CORES) --keep-going $(SMK_CONFIG) \
	  || { status=$$?; $(if $(TIME_LIMIT),echo "make reproduce: stopped at TIME_LIMIT=$(TIME_LIMIT) or a failed job (above); run the same command again to resume";,) exit $$status; }
	$(BIN)/snakemake --report results/report.html $(SMK_CONFIG)
	test ! -d results/runtimes || $(BIN)/metalearn runtimes  # none after a `make pull` that left nothing to run

report: $(STAMP)
	$(BIN)/snakemake --report results/report.html $(SMK_CONFIG)

# The evidence: records of the finished run (results/recorded/<profile>/, with models and provenance),
# the results pages generated from them, and their re-derivation (docs/results/README.md).
record: $(STAMP)
	$(BIN)/metalearn record $(PROFILE_FLAG)
	$(BIN)/metalearn pages

pages: $(STAMP)
	$(BIN)/metalearn pages

verify: $(STAMP)
	$(BIN)/metalearn verify

# DVC: dvc.yaml is generated from params.yaml (the same jobs as the Snakefile).
dvc.yaml: params.yaml workflow/pipeline.py
	$(BIN)/python workflow/pipeline.py dvc-yaml

# Share the current outputs through the DVC remote / restore them in a fresh clone without retraining.
push: $(STAMP)
	$(BIN)/python workflow/pipeline.py push

pull: $(STAMP)
	$(BIN)/python workflow/pipeline.py restore

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port 5000

# The peers (higher, TorchOpt) are installed for the benchmark only: they are not project dependencies.
bench: $(STAMP)
	$(BIN)/pip install --quiet -r bench/requirements.txt 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m bench

# GPU readiness (docs/gpu.md): the device tests on CUDA, the benchmarks, 1000 meta-iterations of the
# paper profile's omniglot-5w1s MAML; one table. `make gpu-check DEVICE=cpu` runs the same on the CPU.
gpu-check: $(STAMP)
	bash bench/gpu_check.sh --device $(or $(DEVICE),cuda)

clean:
	rm -rf results models .snakemake
