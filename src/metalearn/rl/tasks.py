"""The saved test tasks of an RL benchmark (`metalearn split`): goals drawn once from `episode_seed`,
stored with the settings that made them in <data root>/episodes/<benchmark>.pt (the file the
supervised benchmarks' episodes use), so every algorithm and every rerun meets the same tasks.
Also stored: the seed of the evaluation's action noise, so evaluations are reproducible too."""
from __future__ import annotations

from pathlib import Path

import torch

from metalearn import benchmarks
from metalearn.config import Benchmark
from metalearn.data import episodes as ep
from metalearn.rl.envs import sample_tasks


def make_test_tasks(benchmark: Benchmark) -> Path:
    bench = benchmark.settings
    generator = torch.Generator().manual_seed(bench["episode_seed"])
    test = sample_tasks(bench, bench["test_tasks"], generator)
    val = sample_tasks(bench, bench.get("val_tasks", 0), generator)
    eval_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    ep.save_episodes({"settings": benchmarks.episode_settings(bench), "test": {"tasks": test},
                      "val": {"tasks": val}, "eval_seed": eval_seed}, benchmark.episodes_path)
    return benchmark.episodes_path


def read_test_tasks(benchmark: Benchmark, split: str = "test") -> tuple[torch.Tensor, int]:
    """(tasks [n, ...], evaluation noise seed) of a benchmark; stale files are refused as for the
    supervised episodes (benchmarks.StaleEpisodes)."""
    saved = benchmarks.read_current_episodes(benchmark, benchmarks.episode_settings(benchmark.settings))
    return saved[split]["tasks"], int(saved["eval_seed"])
