"""Evaluation in the multi-shot protocol: adapt to each test alphabet's training drawings, score its
held-out ones (wrapper.run_task)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch

from metalearn.alphabets.tasks import DRAWINGS, HOLD_OUT, alphabet_task, episode_settings, load_split, on_device
from metalearn.alphabets.train import load_learner
from metalearn.config import Benchmark
from metalearn.tasks import Task

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def evaluate_alphabet(algo, task: Task, steps: int) -> float:
    """Accuracy on the held-out drawings after `steps` SGD steps on the training drawings (not
    transformed), from freshly reset running statistics; eval mode (running statistics) at test."""
    model = algo.objective.model
    algo.objective.augment = False
    model.reset_running_stats()
    model.train()
    with torch.enable_grad():
        adapted = algo.adapt(task.support, steps)
    model.eval()
    try:
        with torch.no_grad():
            return algo.objective.metrics(algo.predict(adapted, task.query[0]), task.query[1])["accuracy"]
    finally:
        model.train()


def evaluate(benchmark: Benchmark, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
             steps: int | None = None, log: Log = _stderr) -> dict:
    """The evaluation record of metalearn.evaluate for a multi-shot model: one episode per alphabet of
    the saved split (`metalearn split`), its accuracy (%) on the held-out drawings after `steps`
    (default: the benchmark's) SGD steps on its training drawings (`evaluate_alphabet`); mini-batches
    drawn from torch's generator seeded with the run's seed, so a rerun gives the same numbers."""
    from metalearn.benchmarks import read_current_episodes
    from metalearn.stats import mean_ci95
    from metalearn.train import pick_device

    config = saved["config"]
    bench_name, bench = benchmark.name, benchmark.settings
    dev = pick_device(device)
    algo = load_learner(saved, model_path, dev)
    chosen = read_current_episodes(benchmark, episode_settings(bench))[split]
    images, _ = load_split(benchmark)
    steps = bench["steps"] if steps is None else steps
    torch.manual_seed(config["seed"])
    values = []
    for alphabet, characters in zip(chosen["alphabets"], chosen["characters"]):
        task = alphabet_task(images, characters, bench.get("background", 0))
        values.append(100.0 * evaluate_alphabet(algo, on_device(task, dev), steps))
        log(f"[evaluate {bench_name}/{config['algorithm']}/seed{config['seed']}] {alphabet}: {values[-1]:.1f}%")
    mean, ci95 = mean_ci95(values)
    return {"benchmark": bench_name, "algorithm": config["algorithm"], "seed": config["seed"], "split": split,
            "ways": bench["ways"], "shots": DRAWINGS - HOLD_OUT, "metric": "accuracy", "mean": mean, "ci95": ci95,
            "episodes": len(values), "inner_steps": steps, "iterations": saved.get("iterations"),
            "train_seconds": saved["train_seconds"], "per_episode": values, "alphabets": list(chosen["alphabets"])}
