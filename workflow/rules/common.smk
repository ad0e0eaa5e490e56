# Configuration: params.yaml, the selected profile merged in, validated before any job is planned.
# workflow/pipeline.py defines the jobs' files, params slices and commands (shared with dvc.yaml).
# Parsing and planning import no torch (the modules used are torch-free; tests/test_planning_without_torch.py):
# every Snakemake start, two per cluster job, would pay seconds for it.
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
import pipeline  # noqa: E402
from metalearn.config import read_yaml  # noqa: E402
from metalearn.data.imagenet_files import MissingData  # noqa: E402
from metalearn.gpus import cuda_available  # noqa: E402



def _effective_config(config):
    """params.yaml is the single configuration: the command line may only pick the profile, since
    the jobs' commands read params.yaml themselves. `config` holds only what --config/--configfile
    gave: params.yaml is read here, strictly (a duplicate key is an error, as in `metalearn`), not by
    a `configfile:` directive, whose second, non-strict YAML reading of it cost each Snakemake start
    (every cluster job starts two) as much as the rest of the workflow's parse."""
    on_disk = read_yaml(pipeline.PARAMS_FILE) or {}
    pipeline.load_config(on_disk, config.get("profile"))  # a bad value named by its key first
    changed = sorted(k for k in config if k != "profile" and config[k] != on_disk.get(k))
    if changed:
        raise pipeline.ConfigError(
            f"{', '.join(changed)}: set in --config/--configfile; edit {pipeline.PARAMS_FILE} instead "
            "(only `profile` may be given on the command line)")
    merged = {**on_disk, **config}
    config.update(merged)  # Snakemake's `config` as the directive left it (the report shows it)
    return pipeline.load_config(merged, config.get("profile"))


try:
    PARAMS = _effective_config(config)  # ConfigError (key named) before any job starts
except pipeline.ConfigError as _error:  # a message naming the key, without Snakemake's stack of files
    print(f"ConfigError: {_error}", file=sys.stderr, flush=True)
    sys.exit(2)  # the bad-input code, as `metalearn`
# The same schema again through Snakemake's validator; set_default=False because defaults live in
# params.yaml, and Snakemake's default-setting extension cannot read the schema's `false` subschemas.
validate(PARAMS, "../schemas/params.schema.yaml", set_default=False)
PROFILE = PARAMS["profile"]
# The default target's jobs: every benchmark whose data are present or downloadable. Those whose
# user-supplied files (mini-/tiered-ImageNet) are missing are skipped, one line each on stderr saying
# what to set; a job of theirs named as a target still fails with the files expected (rule prepare).
try:
    PLANNED = pipeline.planned(PARAMS)
except MissingData as _error:  # every benchmark lacks its data: nothing could run
    print(f"MissingData: {_error}", file=sys.stderr, flush=True)
    sys.exit(1)  # as `metalearn prepare` on the same files
RUNS = pipeline.runs(PLANNED)

# Accelerator: one GPU per training/evaluation job where CUDA is available, else one CPU thread each:
# Snakemake sets OMP_NUM_THREADS to the job's threads, which also caps the tasks a training runs
# concurrently (algorithms/base.py), so `--cores N` runs N single-threaded jobs side by side. To give
# fewer, wider jobs instead: `--set-threads train=2 evaluate=2`.
ON_CUDA = cuda_available()  # the CUDA driver's answer, as torch's (metalearn.gpus), without importing torch
JOB_THREADS = 1
JOB_RESOURCES = {"gpu": 1} if ON_CUDA else {}

wildcard_constraints:
    benchmark=r"[A-Za-z0-9-]+",
    algorithm=r"[A-Za-z0-9_-]+",
    seed=r"\d+",
    dataset="|".join(pipeline.DATASETS),


def cmd(step, **fields):
    """A command of pipeline.COMMANDS with Snakemake placeholders (PROFILE is resolved when the job
    runs, so the rule's code, a rerun trigger, does not change with the profile)."""
    return pipeline.COMMANDS[step].format(profile="{PROFILE}", **fields)
