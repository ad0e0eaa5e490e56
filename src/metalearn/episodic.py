"""The episodes family's evaluation: a model adapted to each saved episode and scored on its query set,
mean, 95% confidence interval, per-episode values.

Every algorithm is scored on the identical episodes (`metalearn split` wrote them), so results can
be compared pairwise, episode by episode. Accuracy is reported in percent, regression as MSE.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from metalearn import benchmarks
from metalearn.config import Benchmark
from metalearn.head_policies import adapted_algorithm, evaluate_tasks, head_policy
from metalearn.stats import mean_ci95
from metalearn.train import load_model


def evaluate_episodes(benchmark: Benchmark, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
                      steps: int | None = None, log=lambda s: print(s, file=sys.stderr, flush=True),
                      head: str | None = None) -> dict:
    """A model adapted to each saved episode of `split` (support set, `steps` inner steps) and scored
    on its query set: mean and 95% CI over the episodes, per-episode values.

    Classification: `head` is where the output layer starts before the steps, metalearn.head_policies'
    policies (`adapted_algorithm`): `trained` the meta-learned head (the evaluation as it always was),
    `zero` one output per class at zero, `proto` set from the episode's support features (heads.py),
    `auto` (default) the trained head at the training's number of classes, else as `metalearn adapt`
    decides. `benchmark`: the model's own, or another benchmark whose saved episodes it is scored on
    (other ways; evaluate.check_model_fits); the record says which head, and on which benchmark the
    model was trained."""
    algo, saved = load_model(model_path, device, saved)
    config = saved["config"]
    bench_name, bench = benchmark.name, benchmark.settings
    policy = None
    if bench.get("ways") is not None:  # classification: the head policy (the default: auto)
        algo, policy = _with_head(algo, saved, bench["ways"], head or "auto", device)
    proto = policy == "proto" and not getattr(algo, "head_from_support", False)  # set here, not by the algorithm
    metric = benchmarks.metric_name(bench)
    steps = algo.test_inner_steps if steps is None else steps
    dev = next(algo.parameters()).device
    score = (lambda m: 100.0 * m["accuracy"]) if metric == "accuracy" else (lambda m: m["loss"])
    # eval_curve: the score after every number of steps from 0 to `steps` (MAML's Figure 2), per episode
    curve = bool(bench.get("eval_curve"))
    values: list[float] = []
    curves: list[list[float]] = []
    examples: dict | None = None
    for batch in benchmarks.eval_batches(benchmark, split, dev):
        if curve:
            results = (evaluate_tasks(algo, batch, steps, head="proto", curve=True) if proto
                       else algo.evaluate_tasks(batch, steps, curve=True))
            for result in results:
                curves.append([score(m) for m in result])
                values.append(curves[-1][-1])
            if examples is None and bench["task"] == "sinusoid":
                examples = fitted_examples(algo, batch, steps)
        else:
            results = evaluate_tasks(algo, batch, steps, head="proto") if proto else algo.evaluate_tasks(batch, steps)
            values.extend(score(result) for result in results)
        if len(values) % 200 < len(batch):  # progress every ~200 episodes
            log(f"[evaluate {bench_name}/{config['algorithm']}/seed{config['seed']}] {len(values)} episodes")
    mean, ci95 = mean_ci95(values)
    extra = {}
    if curve:
        per_step = [list(column) for column in zip(*curves)]
        extra["curve"] = [{"steps": s, "mean": m, "ci95": c}
                          for s, (m, c) in enumerate(mean_ci95(column) for column in per_step)]
        extra["per_episode_curve"] = per_step  # [steps + 1][episodes]
        if examples is not None:
            extra["examples"] = examples
    if policy is not None:
        extra["head"] = policy
    if bench_name != config["benchmark"]:
        extra["model_benchmark"] = config["benchmark"]
        extra["model_ways"] = config["settings"].get("ways")
    return {"benchmark": bench_name, "algorithm": config["algorithm"], "seed": config["seed"],
            "split": split, "ways": bench.get("ways"), "shots": bench["shots"], "metric": metric,
            "mean": mean, "ci95": ci95, "episodes": len(values), "inner_steps": steps,
            "iterations": saved.get("iterations"), **extra,
            "train_seconds": saved["train_seconds"], "per_episode": values}


def _with_head(algo, saved: dict, ways: int, head: str, device: str):
    """(algorithm, head policy) for episodes of `ways` classes: the loaded model itself under the
    `trained` policy (and for algorithms that build their head from the support set, at the training's
    number of classes), else the model rebuilt by head_policies.adapted_algorithm for `ways` classes
    (its head zeroed: `zero`, or set per episode: `proto`, as those algorithms then set it themselves)."""
    policy = head_policy(saved, ways, head)
    same_ways = ways == saved["config"]["settings"].get("ways")
    if policy == "trained" or (getattr(algo, "head_from_support", False) and same_ways):
        return algo, policy  # nothing rebuilt: the evaluation exactly as without --head
    return adapted_algorithm(saved, ways, policy, device)


def fitted_examples(algo, batch, steps: int, count: int = 3, points: int = 200) -> dict:
    """The first `count` tasks of `batch` (sinusoids) on a grid of x: the true function, the support
    points, and the adapted network's prediction after 0, 1 and `steps` steps (MAML's Figure 2, left)."""
    from metalearn.data.episodes import SINUSOID

    x = torch.linspace(*SINUSOID["x"], points, device=batch.support_x.device).unsqueeze(-1)
    tasks = []
    for i in range(min(count, len(batch))):
        task, info = batch[i], batch.info[i]
        frequency = info[2] if len(info) > 2 else 1.0
        truth = info[0] * torch.sin(frequency * x - info[1])
        tasks.append({"support_x": task.support[0].squeeze(-1).tolist(), "support_y": task.support[1].squeeze(-1).tolist(),
                      "truth": truth.squeeze(-1).tolist(),
                      "predictions": {str(s): algo.adapted_predictions(task, x, s).squeeze(-1).tolist()
                                      for s in sorted({0, 1, steps})}})
    return {"x": x.squeeze(-1).tolist(), "tasks": tasks}
