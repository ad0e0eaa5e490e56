"""`metalearn evaluate`: a model file checked against params.yaml, then scored by its benchmark's task
family (metalearn.families; the episodes family's evaluation: metalearn.episodic), and the result file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from metalearn import families
from metalearn.errors import BadInput, ConfigError

# The settings a model is tied to: its network's shape and what it learned from. Evaluation-only
# settings (eval_queries, test_tasks, episode_seed, ...) may differ; queries only shape training batches.
MODEL_SETTINGS = ("task", "model", "dataset", "split", "split_seed", "ways", "shots", "degree", "frequency")


def evaluate(params: dict, model_path: Path, split: str = "test", device: str = "auto",
             steps: int | None = None, log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """`metalearn evaluate`: the model file is checked against params.yaml, then scored by its
    benchmark's task family (metalearn.families)."""
    saved = check_inputs(params, model_path, steps)
    family = families.family(params["benchmarks"][saved["config"]["benchmark"]])
    return family.evaluate(params, model_path, saved, split, device, steps, log)


def check_model_fits(params: dict, saved: dict, model_path: Path) -> None:
    """The model's settings against the benchmark it is evaluated on (params.yaml's, by name): a
    model of other ways, shots, task, ... would fail, or be scored and labelled wrongly."""
    config = saved["config"]
    name, settings = config["benchmark"], config["settings"]
    where = f"params.yaml (profile {params.get('profile', 'default')})"
    if name not in params["benchmarks"]:
        raise ConfigError(f"benchmarks.{name}: {model_path} was trained on {name}, which {where} does not "
                          f"configure (it has {sorted(params['benchmarks'])}); pass the profile it was trained with")
    bench = params["benchmarks"][name]
    differ = [f"benchmarks.{name}.{key}: the model {model_path} was trained with {key} {settings.get(key)!r}, "
              f"{where} has {bench.get(key)!r}"
              for key in MODEL_SETTINGS if settings.get(key) != bench.get(key)]
    if differ:
        raise BadInput("\n  ".join(differ) + "\n  evaluate the model with the settings it was trained with "
                       "(--profile), or train it again with these")


def check_inputs(params: dict, model_path: Path, steps: int | None) -> dict:
    """Before any work: the steps, the model file and its fit to the benchmark; returns the model's
    record (the episode file is checked where it is read, benchmarks.read_episodes)."""
    from metalearn.train import read_model_file

    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise BadInput(f"--steps: {steps!r} adaptation steps; give 0 or more")
    saved = read_model_file(Path(model_path))
    check_model_fits(params, saved, Path(model_path))
    return saved


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
