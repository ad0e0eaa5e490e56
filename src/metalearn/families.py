"""Task families: the object that splits, trains, evaluates and hashes a benchmark of a given `task`.

Most benchmarks are *episodes*: a task is a support and a query set (sinusoid, polynomial, Omniglot,
mini-/tiered-ImageNet), meta-trained by metalearn.train with an algorithm of metalearn.algorithms.
Three families have their own protocol and step in the same loop (metalearn.train.run_loop):
  continual   WarpGrad's continual learning (metalearn.continual/): sequences of sub-tasks
  alphabets   the Leap/WarpGrad multi-shot protocol (metalearn.alphabets/): one alphabet per task
  rl          MAML's meta-reinforcement learning (metalearn.rl): tasks are MDPs, losses from rollouts

The command line (`metalearn split/train/evaluate`), MLflow tracking, records and the workflow ask
`family(settings)` for the benchmark's family instead of testing the task themselves; every family is
a `Family`. Each imports its modules inside its methods, when used: the workflow's parse imports
only what its rules need, and this module sits below none of them. What the workflow plans with, the
episode settings and source files, comes from metalearn.dependencies, which imports no torch.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from metalearn import dependencies
from metalearn.config import Benchmark
from metalearn.rl import RL_TASKS

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@runtime_checkable
class Family(Protocol):
    """What every task family does, one method per pipeline step."""

    name: str

    def episode_settings(self, bench: dict) -> dict:
        """What a benchmark's saved episodes depend on (stored with them, checked on use), from its settings."""

    def make_episodes(self, bench: Benchmark) -> Path:
        """`metalearn split`: the saved validation and test episodes (or sequences, alphabets, tasks)."""

    def train(self, bench: Benchmark, algorithm: str, seed: int, out_dir: Path,
              device: str = "auto", tracker: Any = None, log: Log = _stderr) -> Path:
        """`metalearn train`: out_dir/model.pt (and history.json), resumable."""

    def evaluate(self, bench: Benchmark, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
                 steps: int | None = None, log: Log = _stderr) -> dict:
        """`metalearn evaluate` of a checked model file (`saved`, its record) on `bench` (the benchmark
        whose saved episodes score it): one evaluation record."""

    def source_files(self, algorithm: str) -> list[Path]:
        """The files whose edits change a run's results."""

    def config_hash(self, config: dict) -> str:
        """The settings-and-sources digest stored in model.pt and checkpoints (train.run_config's config)."""


class Episodes:
    """Support and query sets: metalearn.benchmarks (settings, episodes), metalearn.train (the loop),
    metalearn.episodic (evaluation), the algorithm's files (metalearn.algorithms)."""

    name = "episodes"

    def episode_settings(self, bench: dict) -> dict:
        return dependencies.episode_settings(bench)

    def make_episodes(self, bench: Benchmark) -> Path:
        from metalearn import benchmarks

        return benchmarks.make_episodes(bench)

    def train(self, bench: Benchmark, algorithm: str, seed: int, out_dir: Path,
              device: str = "auto", tracker: Any = None, log: Log = _stderr) -> Path:
        from metalearn import train

        return train.train(bench, algorithm, seed, out_dir, device, tracker, log)

    def evaluate(self, bench: Benchmark, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
                 steps: int | None = None, log: Log = _stderr) -> dict:
        from metalearn import episodic

        return episodic.evaluate_episodes(bench, model_path, saved, split, device, steps, log)

    def source_files(self, algorithm: str) -> list[Path]:
        return dependencies.algorithm_files(algorithm)

    def config_hash(self, config: dict) -> str:
        from metalearn import train

        return train.config_hash(config)


class Continual:
    """WarpGrad's continual learning (metalearn.continual): its task sequences (continual.tasks), its
    loop (continual.train) and forgetting curves (continual.evaluate)."""

    name = "continual"

    def episode_settings(self, bench: dict) -> dict:
        return dependencies.continual_episode_settings(bench)

    def make_episodes(self, bench: Benchmark) -> Path:
        from metalearn.continual import tasks

        return tasks.make_episodes(bench)

    def train(self, bench: Benchmark, algorithm: str, seed: int, out_dir: Path,
              device: str = "auto", tracker: Any = None, log: Log = _stderr) -> Path:
        from metalearn.continual import train

        return train.train(bench, algorithm, seed, out_dir, device, tracker, log)

    def evaluate(self, bench: Benchmark, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
                 steps: int | None = None, log: Log = _stderr) -> dict:
        from metalearn.continual import evaluate

        return evaluate.evaluate(bench, model_path, saved, split, device, steps, log)

    def source_files(self, algorithm: str) -> list[Path]:
        return dependencies.continual_files(algorithm)

    def config_hash(self, config: dict) -> str:
        from metalearn.continual import train

        return train.config_hash(config)


class Alphabets:
    """The Leap/WarpGrad multi-shot Omniglot protocol (metalearn.alphabets): its alphabet split
    (alphabets.tasks), its loop (alphabets.train) and evaluation (alphabets.evaluate)."""

    name = "alphabets"

    def episode_settings(self, bench: dict) -> dict:
        return dependencies.alphabets_episode_settings(bench)

    def make_episodes(self, bench: Benchmark) -> Path:
        from metalearn.alphabets import tasks

        return tasks.make_episodes(bench)

    def train(self, bench: Benchmark, algorithm: str, seed: int, out_dir: Path,
              device: str = "auto", tracker: Any = None, log: Log = _stderr) -> Path:
        from metalearn.alphabets import train

        return train.train(bench, algorithm, seed, out_dir, device, tracker, log)

    def evaluate(self, bench: Benchmark, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
                 steps: int | None = None, log: Log = _stderr) -> dict:
        from metalearn.alphabets import evaluate

        return evaluate.evaluate(bench, model_path, saved, split, device, steps, log)

    def source_files(self, algorithm: str) -> list[Path]:
        return dependencies.alphabets_files(algorithm)

    def config_hash(self, config: dict) -> str:
        from metalearn.alphabets import train

        return train.config_hash(config)


class RL:
    """Meta-reinforcement learning (metalearn.rl): its test tasks (rl.tasks), its loop (rl.train, TRPO)
    and evaluation (rl.evaluate); the episode settings are the episodes family's keys that it has."""

    name = "rl"

    def episode_settings(self, bench: dict) -> dict:
        return dependencies.episode_settings(bench)

    def make_episodes(self, bench: Benchmark) -> Path:
        from metalearn.rl import tasks

        return tasks.make_test_tasks(bench)

    def train(self, bench: Benchmark, algorithm: str, seed: int, out_dir: Path,
              device: str = "auto", tracker: Any = None, log: Log = _stderr) -> Path:
        from metalearn.rl import train

        return train.train(bench, algorithm, seed, out_dir, device, tracker, log)

    def evaluate(self, bench: Benchmark, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
                 steps: int | None = None, log: Log = _stderr) -> dict:
        from metalearn.rl import evaluate

        return evaluate.evaluate(bench, model_path, saved, split, device, steps, log)

    def source_files(self, algorithm: str) -> list[Path]:
        return dependencies.rl_files(algorithm)

    def config_hash(self, config: dict) -> str:
        from metalearn.rl import train

        return train.config_hash(config)


FAMILIES: dict[str, Family] = {family.name: family for family in (Episodes(), Continual(), Alphabets(), RL())}


def family(bench: dict) -> Family:
    """The family of a benchmark's settings (by its `task`)."""
    task = bench.get("task")
    if task in ("continual", "alphabets"):
        return FAMILIES[task]
    return FAMILIES["rl" if task in RL_TASKS else "episodes"]
