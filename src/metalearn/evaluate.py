"""Evaluation on the saved episodes: mean, 95% confidence interval, per-episode values.

Every algorithm is scored on the identical episodes (`metalearn split` wrote them), so results can
be compared pairwise, episode by episode. Accuracy is reported in percent, regression as MSE.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from metalearn import benchmarks
from metalearn.train import load_model


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n), as in the papers."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, 1.96 * std / math.sqrt(n)


def evaluate(params: dict, model_path: Path, split: str = "test", device: str = "auto",
             steps: int | None = None, log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    algo, saved = load_model(model_path, device)
    config = saved["config"]
    bench_name = config["benchmark"]
    bench = params["benchmarks"][bench_name]
    metric = benchmarks.metric_name(bench)
    steps = algo.test_inner_steps if steps is None else steps
    dev = next(algo.parameters()).device
    values: list[float] = []
    for batch in benchmarks.eval_batches(params, bench_name, split, dev):
        for result in algo.map_tasks(lambda task: algo.evaluate_task(task, steps), batch):
            values.append(100.0 * result["accuracy"] if metric == "accuracy" else result["loss"])
        if len(values) % 200 < len(batch):  # progress every ~200 episodes
            log(f"[evaluate {bench_name}/{config['algorithm']}/seed{config['seed']}] {len(values)} episodes")
    mean, ci95 = mean_ci95(values)
    return {"benchmark": bench_name, "algorithm": config["algorithm"], "seed": config["seed"],
            "split": split, "ways": bench.get("ways"), "shots": bench["shots"], "metric": metric,
            "mean": mean, "ci95": ci95, "episodes": len(values), "inner_steps": steps,
            "train_seconds": saved["train_seconds"], "per_episode": values}


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
