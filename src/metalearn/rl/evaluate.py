"""Evaluation of an RL model on its benchmark's saved test tasks: the average return after 0, 1, ...,
`test_inner_steps` policy-gradient steps (fresh rollouts after each), mean and 95% CI over the tasks.

The result has the supervised evaluation's fields (metalearn.evaluate), metric `return` (higher is
better): `per_episode` holds each task's return after all test steps, `curve` / `per_episode_curve`
the return after every number of steps (the paper's Figure 4 plots these).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from metalearn.config import Benchmark
from metalearn.rl.tasks import read_test_tasks
from metalearn.rl.train import load_model


def evaluate(benchmark: Benchmark, model_path: Path, saved: dict, split: str = "test", device: str = "cpu",
             steps: int | None = None, log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Return after 0..steps policy-gradient steps on the saved test tasks; on the CPU whatever `device`
    says (accepted for the families' signature: environments and small policies, see rl/train.py)."""
    from metalearn.stats import mean_ci95

    config = saved["config"]
    bench_name = benchmark.name
    learner = load_model(saved)
    # rollouts per test step: an evaluation setting (config.NOT_TRAINING_SETTINGS), read from the current
    # params, not from the model's record, so changing it re-evaluates without retraining
    learner.test_rollouts = int(benchmark.settings.get("test_rollouts", learner.rollouts))
    learner.test_samples = benchmark.settings.get("test_samples")
    steps = learner.test_inner_steps if steps is None else steps
    tasks, eval_seed = read_test_tasks(benchmark, split)
    generator = torch.Generator().manual_seed(eval_seed)  # the same action noise seed for every model
    returns = learner.evaluate(tasks, steps, generator)  # [tasks, steps + 1]
    per_step = [column.tolist() for column in returns.T]
    curve = [{"steps": s, "mean": m, "ci95": c} for s, (m, c) in enumerate(mean_ci95(col) for col in per_step)]
    log(f"[evaluate {bench_name}/{config['algorithm']}/seed{config['seed']}] return after 0..{steps} steps: "
        + ", ".join(f"{p['mean']:.2f}±{p['ci95']:.2f}" for p in curve))
    mean, ci95 = mean_ci95(per_step[-1])
    return {"benchmark": bench_name, "algorithm": config["algorithm"], "seed": config["seed"], "split": split,
            "ways": None, "shots": learner.test_rollouts, "metric": "return", "mean": mean, "ci95": ci95,
            "episodes": len(tasks), "inner_steps": steps, "iterations": saved.get("iterations"),
            "curve": curve, "per_episode_curve": per_step, "train_seconds": saved["train_seconds"],
            "per_episode": per_step[-1]}
