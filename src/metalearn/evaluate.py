"""Evaluation on the saved episodes: mean, 95% confidence interval, per-episode values.

Every algorithm is scored on the identical episodes (`metalearn split` wrote them), so results can
be compared pairwise, episode by episode. Accuracy is reported in percent, regression as MSE.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from metalearn import benchmarks, families
from metalearn.errors import BadInput, ConfigError
from metalearn.stats import mean_ci95
from metalearn.train import load_model

# The settings a model is tied to: its network's shape and what it learned from. Evaluation-only
# settings (eval_queries, test_tasks, episode_seed, ...) may differ; queries only shape training batches.
MODEL_SETTINGS = ("task", "model", "dataset", "split", "split_seed", "ways", "shots", "degree", "frequency")


def evaluate(params: dict, model_path: Path, split: str = "test", device: str = "auto",
             steps: int | None = None, log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """`metalearn evaluate`: the model file is checked against params.yaml, then scored by its
    benchmark's task family (metalearn.families; for episodes: evaluate_episodes)."""
    saved = check_inputs(params, model_path, steps)
    family_evaluate = families.step(params["benchmarks"][saved["config"]["benchmark"]], "evaluate")
    return family_evaluate(params, model_path, saved, split, device, steps, log)


def evaluate_episodes(params: dict, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
                      steps: int | None = None, log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """A model adapted to each saved episode of `split` (support set, `steps` inner steps) and scored
    on its query set: mean and 95% CI over the episodes, per-episode values."""
    algo, saved = load_model(model_path, device, saved)
    config = saved["config"]
    bench_name = config["benchmark"]
    bench = params["benchmarks"][bench_name]
    metric = benchmarks.metric_name(bench)
    steps = algo.test_inner_steps if steps is None else steps
    dev = next(algo.parameters()).device
    score = (lambda m: 100.0 * m["accuracy"]) if metric == "accuracy" else (lambda m: m["loss"])
    # eval_curve: the score after every number of steps from 0 to `steps` (MAML's Figure 2), per episode
    curve = bool(bench.get("eval_curve"))
    values: list[float] = []
    curves: list[list[float]] = []
    examples: dict | None = None
    for batch in benchmarks.eval_batches(params, bench_name, split, dev):
        if curve:
            for result in algo.evaluate_tasks(batch, steps, curve=True):
                curves.append([score(m) for m in result])
                values.append(curves[-1][-1])
            if examples is None and bench["task"] == "sinusoid":
                examples = fitted_examples(algo, batch, steps)
        else:
            values.extend(score(result) for result in algo.evaluate_tasks(batch, steps))
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
    return {"benchmark": bench_name, "algorithm": config["algorithm"], "seed": config["seed"],
            "split": split, "ways": bench.get("ways"), "shots": bench["shots"], "metric": metric,
            "mean": mean, "ci95": ci95, "episodes": len(values), "inner_steps": steps,
            "iterations": saved.get("iterations"), **extra,
            "train_seconds": saved["train_seconds"], "per_episode": values}


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
