"""Studies: experiments beyond the results table, each measured by the pipeline and drawn as a
figure of the report. Settings: ``studies`` in params.yaml.

mtnet  The two claims of Lee & Choi (2018) about MT-nets, measured on this project's regression tasks:
  degree    MT-net meta-trained on polynomials of rising degree (task complexity; data/episodes.py):
            the expected fraction of each layer's units that adapt, mean sigmoid(zeta) = P(M = 1),
            should rise with the degree. Test MSE beside it.
  inner_lr  MAML and MT-net meta-trained on `benchmark` (sinusoid) with each inner learning rate:
            the test MSE against alpha; MT-net should be the less sensitive.
  Every run uses the benchmark's settings and the algorithm's hyperparameters from params.yaml, with
  the study's `iterations` (and, in the sweep, its alpha). Test MSE is measured twice on the saved
  tasks: after the algorithm's test steps (`mse`) and after its training steps (`mse_train_steps`),
  because with a large alpha the longer test-time adaptation can diverge where the meta-trained one
  does not. Episodes whose adapted loss is not finite are counted (`diverged_episodes`; the mean is
  then nan), and a meta-training that diverges is recorded with status diverged, not dropped.
  Outputs: <out>/mtnet.csv (one row per run and layer) and <out>/mtnet.png; the runs' models and
  episodes stay in <out>/mtnet/, so an interrupted study resumes (train.py) and a finished run with
  unchanged settings and code is reused.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Callable

import torch

from metalearn import benchmarks
from metalearn.config import ConfigError, algorithm_params, validate

Log = Callable[[str], None]
CSV_COLUMNS = ["part", "algorithm", "degree", "inner_lr", "layer", "adapted_fraction", "test_steps", "mse",
               "ci95", "diverged_episodes", "train_steps", "mse_train_steps", "ci95_train_steps",
               "diverged_episodes_train_steps", "episodes", "iterations", "train_seconds", "status"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mtnet_runs(params: dict) -> list[dict]:
    """The study's training runs: {part, algorithm, degree, inner_lr, name, bench, hparams}."""
    study = params["studies"]["mtnet"]
    base = benchmarks_copy(params, study["benchmark"])
    train = {**base["train"], "iterations": study["iterations"]}
    runs = []
    # The polynomials share the sinusoid benchmark's shots, queries, episodes and training settings;
    # sinusoid-only settings (frequency, eval_curve) do not apply to them.
    polynomial = {k: v for k, v in base.items() if k not in ("frequency", "eval_curve")}
    for degree in study["degrees"]:
        bench = {**polynomial, "task": "polynomial", "degree": degree, "train": train}
        hparams = {k: v for k, v in algorithm_params(params, study["benchmark"], "mtnet").items() if k != "iterations"}
        hparams["inner_lr"] = study.get("degree_inner_lr", hparams["inner_lr"])
        runs.append({"part": "degree", "algorithm": "mtnet", "degree": degree, "inner_lr": hparams["inner_lr"],
                     "name": f"polynomial-d{degree}", "bench": bench, "hparams": hparams})
    for algorithm in study["algorithms"]:
        for inner_lr in study["inner_lrs"]:
            hparams = {k: v for k, v in algorithm_params(params, study["benchmark"], algorithm).items()
                       if k != "iterations"}
            runs.append({"part": "inner_lr", "algorithm": algorithm, "degree": None, "inner_lr": inner_lr,
                         "name": f"{study['benchmark']}-lr{inner_lr:g}".replace(".", "p"), "bench": {**base, "train": train},
                         "hparams": {**hparams, "inner_lr": inner_lr}})
    return runs


def benchmarks_copy(params: dict, name: str) -> dict:
    bench = params["benchmarks"].get(name)
    if bench is None or benchmarks.metric_name(bench) != "mse":
        raise ConfigError(f"studies.mtnet.benchmark: {name!r} must be a configured regression benchmark (sinusoid)")
    return {k: v for k, v in bench.items() if k != "algorithms"}


def run_params(params: dict, run: dict, work: Path) -> dict:
    """A params mapping holding just this run's benchmark and algorithm, its files under `work`."""
    bench = {**run["bench"], "algorithms": {run["algorithm"]: run["hparams"]}}
    return validate({"data": {**params["data"], "root": str(work / "data")}, "seeds": [params["studies"]["mtnet"]["seed"]],
                     "benchmarks": {run["name"]: bench}}, where="studies.mtnet")


def adapted_fractions(state_dict: dict) -> list[float]:
    """P(M = 1) per layer of a saved MT-net, mean sigmoid(zeta) (MTNet.adapted_fraction)."""
    layers = sorted((k for k in state_dict if k.startswith("zeta.")), key=lambda k: int(k.split(".")[1]))
    return [torch.sigmoid(state_dict[k].float()).mean().item() for k in layers]


def mtnet_study(params: dict, out: Path, device: str = "auto", log: Log = _stderr) -> list[dict]:
    """Train and evaluate every run of the study (reusing finished ones); write the CSV and figure."""
    from metalearn.evaluate import evaluate
    from metalearn.train import TrainingDiverged, config_hash, run_config, train

    out = Path(out)
    seed = params["studies"]["mtnet"]["seed"]
    rows = []
    runs = mtnet_runs(params)
    for number, run in enumerate(runs, 1):
        work = out / "mtnet" / run["name"] / run["algorithm"]
        rp = run_params(params, run, work)
        label = f"[study mtnet {number}/{len(runs)}] {run['algorithm']} on {run['name']}"
        benchmarks.make_episodes(rp, run["name"])
        model = work / "model.pt"
        digest = config_hash(run_config(rp, run["name"], run["algorithm"], seed))
        base = {k: run[k] for k in ("part", "algorithm", "degree", "inner_lr")}
        if not (model.exists() and torch.load(model, weights_only=True).get("config_hash") == digest):
            log(f"{label}: training")
            try:
                train(rp, run["name"], run["algorithm"], seed, work, device=device, log=log)
            except TrainingDiverged as exc:
                log(f"{label}: diverged ({exc})")
                rows.append({**{k: "" for k in CSV_COLUMNS}, **base, "episodes": 0, "status": "diverged"})
                continue
            (work / "checkpoint.pt").unlink(missing_ok=True)
        result = evaluate(rp, model, device=device, log=log)
        short = evaluate(rp, model, device=device, steps=run["hparams"]["inner_steps"], log=log)
        saved = torch.load(model, weights_only=True)
        log(f"{label}: test mse {result['mean']:.4f} ± {result['ci95']:.4f} after {result['inner_steps']} steps, "
            f"{short['mean']:.4f} ± {short['ci95']:.4f} after {short['inner_steps']}")
        fractions = adapted_fractions(saved["state_dict"]) if run["algorithm"] == "mtnet" else [None]
        for layer, fraction in enumerate(fractions):
            rows.append({**base, "layer": layer if fraction is not None else "",
                         "adapted_fraction": "" if fraction is None else round(fraction, 6),
                         "test_steps": result["inner_steps"], "mse": result["mean"], "ci95": result["ci95"],
                         "diverged_episodes": _not_finite(result), "train_steps": short["inner_steps"],
                         "mse_train_steps": short["mean"], "ci95_train_steps": short["ci95"],
                         "diverged_episodes_train_steps": _not_finite(short), "episodes": result["episodes"],
                         "iterations": saved["iterations"], "train_seconds": round(saved["train_seconds"], 2),
                         "status": "ok"})
    out.mkdir(parents=True, exist_ok=True)
    with (out / "mtnet.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_mtnet(rows, out / "mtnet.png")
    return rows


def _not_finite(result: dict) -> int:
    return sum(not math.isfinite(v) for v in result["per_episode"])


def plot_mtnet(rows: list[dict], path: Path) -> Path:
    """Left: MT-net's adapted fraction per layer against the polynomial degree. Right: test MSE
    against the inner learning rate, MAML vs MT-net (95% CIs; diverged runs marked on the axis)."""
    from metalearn.report import _save, plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    degree_rows = [r for r in rows if r["part"] == "degree" and r["status"] == "ok"]
    for layer in sorted({r["layer"] for r in degree_rows}):
        points = sorted((r["degree"], r["adapted_fraction"]) for r in degree_rows if r["layer"] == layer)
        left.plot(*zip(*points), marker="o", label=f"layer {layer + 1}")
    left.set(xlabel="polynomial degree (task complexity)", ylabel="adapted units, mean P(M = 1)",
             title="MT-net: fraction of units adapted", ylim=(0, 1))
    if degree_rows:
        left.set_xticks(sorted({r["degree"] for r in degree_rows}))
        left.legend()
    lr_rows = [r for r in rows if r["part"] == "inner_lr" and r["layer"] in ("", 0)]
    for number, algorithm in enumerate(sorted({r["algorithm"] for r in lr_rows})):
        mine = [r for r in lr_rows if r["algorithm"] == algorithm]
        for key, style in (("", "-"), ("_train_steps", "--")):
            points = sorted((r["inner_lr"], r["mse" + key], r["ci95" + key]) for r in mine
                            if r["status"] == "ok" and math.isfinite(r["mse" + key]))
            steps = next((r[("test" if not key else "train") + "_steps"] for r in mine if r["status"] == "ok"), "?")
            if points:
                x, y, ci = zip(*points)
                ci = [0.0 if math.isnan(c) else c for c in ci]
                below = [min(c, 0.9 * v) for c, v in zip(ci, y)]  # a log axis cannot show an interval through 0
                right.errorbar(x, y, yerr=[below, ci], marker="o", ls=style, capsize=3, color=f"C{number}",
                               label=f"{algorithm}, {steps} step(s)")
            for r in mine:  # alphas at which the adaptation diverged in some test episodes
                if r["status"] != "ok" or not math.isfinite(r["mse" + key]):
                    right.plot([r["inner_lr"]], [1.0], marker="x", ls="", color=f"C{number}", ms=9,
                               transform=right.get_xaxis_transform())
    right.set(xscale="log", yscale="log", xlabel="inner learning rate alpha", ylabel="test MSE",
              title="Sensitivity to the inner learning rate (x: diverged)")
    if lr_rows:
        right.legend()
    return _save(fig, path)
