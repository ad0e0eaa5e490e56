"""Evaluation of a continual model on the saved test sequences: forgetting curves, the final MSE."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from metalearn.continual.learner import Learner, learn_sequence
from metalearn.continual.tasks import Sequences, eval_sequences
from metalearn.continual.train import load_learner
from metalearn.config import Benchmark
from metalearn.errors import BadInput
from metalearn.tasks import Params

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def forgetting_curve(learner: Learner, seqs: Sequences, i: int, steps: int) -> Tensor:
    """[T * steps + 1, T]: the query MSE on every sub-task before each step and after the last."""
    rows: list[Tensor] = []

    x, y = seqs.query_x[i], seqs.query_y[i]  # [T, points, 1]

    def record(t: int, k: int, theta: Params) -> None:
        with torch.no_grad():  # every sub-task's points in one forward pass, then each one's MSE
            errors = (learner.predict(theta, x.flatten(0, 1)).view_as(y) - y) ** 2
            rows.append(errors.mean(dim=(1, 2)))

    learn_sequence(learner, seqs, i, steps, record)
    return torch.stack(rows)


def evaluate(benchmark: Benchmark, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
             steps: int | None = None, log: Log = _stderr) -> dict:
    """The evaluation record of metalearn.evaluate for a continual model: `per_episode` is each test
    sequence's final MSE averaged over its sub-tasks; `continual` holds the forgetting curves (mean
    and 95% CI over sequences of the MSE on each sub-task before each step and after the last), each
    sub-task's MSE right after it was learned and at the end, per sequence."""
    from metalearn.stats import mean_ci95
    from metalearn.train import pick_device

    if steps is not None:
        raise BadInput("--steps: a continual benchmark learns each sub-task for its steps_per_subtask "
                       "(params.yaml); leave --steps out")
    config = saved["config"]
    bench_name, bench = benchmark.name, benchmark.settings
    dev = pick_device(device)
    learner = load_learner(saved, model_path, dev)
    seqs = eval_sequences(benchmark, split, dev)
    per_step = bench["steps_per_subtask"]
    T = seqs.subtasks
    curves = []
    for i in range(len(seqs)):
        curves.append(forgetting_curve(learner, seqs, i, per_step))
        if (i + 1) % 50 == 0:
            log(f"[evaluate {bench_name}/{config['algorithm']}/seed{config['seed']}] {i + 1} sequences")
    curves = torch.stack(curves).double().cpu()  # [sequences, T * steps + 1, T]
    final = curves[:, -1, :]  # [sequences, T]
    learned = torch.stack([curves[:, (t + 1) * per_step, t] for t in range(T)], dim=1)  # right after sub-task t
    values = final.mean(1).tolist()
    mean, ci95 = mean_ci95(values)
    stats = [[mean_ci95(curves[:, k, s].tolist()) for s in range(T)] for k in range(curves.shape[1])]
    return {"benchmark": bench_name, "algorithm": config["algorithm"], "seed": config["seed"], "split": split,
            "ways": None, "shots": bench["shots"], "metric": "mse", "mean": mean, "ci95": ci95,
            "episodes": len(values), "inner_steps": T * per_step, "iterations": saved.get("iterations"),
            "train_seconds": saved["train_seconds"], "per_episode": values,
            "continual": {"subtasks": T, "steps_per_subtask": per_step,
                          "curve_mean": [[m for m, _ in row] for row in stats],
                          "curve_ci95": [[c for _, c in row] for row in stats],
                          "per_episode_learned": learned.tolist(), "per_episode_final": final.tolist()}}
