"""Task families: which module splits, trains, evaluates and hashes a benchmark of a given `task`.

Most benchmarks are *episodes*: a task is a support and a query set (sinusoid, polynomial, Omniglot,
mini-/tiered-ImageNet), meta-trained by metalearn.train with an algorithm of metalearn.algorithms.
Three families have their own protocol and loop, each in one module:
  continual   WarpGrad's continual learning (metalearn.continual): sequences of sub-tasks
  alphabets   the Leap/WarpGrad multi-shot protocol (metalearn.alphabets): one alphabet per task
  rl          MAML's meta-reinforcement learning (metalearn.rl): tasks are MDPs, losses from rollouts

The command line (`metalearn split/train/evaluate`), MLflow tracking and the workflow dispatch through
`step(settings, name)` instead of testing the task themselves. Every family's functions share one
signature per step:

  episode_settings(bench) -> dict                     what its saved episodes depend on
  make_episodes(params, bench_name) -> Path           `metalearn split`
  train(params, bench_name, algorithm, seed, out_dir, device, tracker=None) -> Path   model.pt
  evaluate(params, model_path, saved, split, device, steps, log) -> dict              one result
  source_files(algorithm) -> list[Path]               the files whose edits change its results
  config_hash(run_config) -> str                      the settings-and-sources digest in model.pt

Functions are named "module:function" and imported when used: the workflow's parse imports only what
its rules need.
"""
from __future__ import annotations

import importlib
from typing import Callable

from metalearn.rl import RL_TASKS

STEPS = ("episode_settings", "make_episodes", "train", "evaluate", "source_files", "config_hash")

FAMILIES: dict[str, dict[str, str]] = {
    "episodes": {"episode_settings": "metalearn.benchmarks:episode_settings",
                 "make_episodes": "metalearn.benchmarks:make_episodes",
                 "train": "metalearn.train:train",
                 "evaluate": "metalearn.evaluate:evaluate_episodes",
                 "source_files": "metalearn.algorithms:source_files",
                 "config_hash": "metalearn.train:config_hash"},
    "continual": {step: f"metalearn.continual:{step}" for step in STEPS},
    "alphabets": {step: f"metalearn.alphabets:{step}" for step in STEPS},
    "rl": {"episode_settings": "metalearn.benchmarks:episode_settings",
           "make_episodes": "metalearn.rl.tasks:make_test_tasks",
           "train": "metalearn.rl.train:train",
           "evaluate": "metalearn.rl.evaluate:evaluate",
           "source_files": "metalearn.rl.train:source_files",
           "config_hash": "metalearn.rl.train:config_hash"},
}


def family(bench: dict) -> str:
    """The family of a benchmark's settings (its `task`)."""
    task = bench.get("task")
    if task in ("continual", "alphabets"):
        return task
    return "rl" if task in RL_TASKS else "episodes"


def step(bench: dict, name: str) -> Callable:
    """The function that does step `name` for this benchmark's family, e.g.
    `step(settings, "make_episodes")(params, bench_name)`."""
    module, function = FAMILIES[family(bench)][name].split(":")
    return getattr(importlib.import_module(module), function)
