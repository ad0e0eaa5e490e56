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

protocols  Which protocol learns faster on a CPU, per meta-iteration and per CPU-second (issue #14): one
  algorithm (MAML) meta-trained on one Omniglot benchmark under each of `variants` -- overlays of the
  benchmark's settings (e.g. the MAML code's pixels, BatchNorm, head, rotations; query images per class)
  and the algorithm's (its inner-loss scale, how test queries are normalised) -- for the same
  `iterations`. Every `eval_every` iterations the model is scored on the variant's 100 saved validation
  episodes; the meta-training time up to there is recorded as wall-clock seconds and as the process's CPU
  seconds (all threads; validation excluded). At the end: the 600 saved test episodes. Each variant scores
  on its own protocol's episodes (same characters, drawings and episode seed; its own pixels, rotations
  and query normalisation). Outputs: <out>/protocols.csv (one row per validation point and one test row
  per variant) and <out>/protocols.png (validation accuracy against meta-iterations and against CPU
  seconds). Runs resume and are reused as the MT-net study's; the validations already made are kept in
  each run's progress.json.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from metalearn import benchmarks
from metalearn.config import Benchmark, Run, validate
from metalearn.study_plans import mtnet_runs, protocols_runs, run_params

Log = Callable[[str], None]
CSV_COLUMNS = ["part", "algorithm", "degree", "inner_lr", "layer", "adapted_fraction", "test_steps", "mse",
               "ci95", "diverged_episodes", "train_steps", "mse_train_steps", "ci95_train_steps",
               "diverged_episodes_train_steps", "episodes", "iterations", "train_seconds", "status"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _current_model(path: Path, digest: str) -> bool:
    """Whether `path` holds a finished model of exactly this run's settings and code (its config hash):
    such a run is reused, not trained again."""
    return path.exists() and torch.load(path, weights_only=True).get("config_hash") == digest


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def adapted_fractions(state_dict: dict) -> list[float]:
    """P(M = 1) per layer of a saved MT-net, mean sigmoid(zeta) (MTNet.adapted_fraction)."""
    layers = sorted((k for k in state_dict if k.startswith("zeta.")), key=lambda k: int(k.split(".")[1]))
    return [torch.sigmoid(state_dict[k].float()).mean().item() for k in layers]


def mtnet_study(params: dict, out: Path, device: str = "auto", log: Log = _stderr) -> list[dict]:
    """Train and evaluate every run of the study (reusing finished ones); write the CSV and figure."""
    from metalearn.evaluate import evaluate
    from metalearn.train import TrainingDiverged, config_hash, train

    out = Path(out)
    seed = params["studies"]["mtnet"]["seed"]
    rows = []
    runs = mtnet_runs(params)
    for number, run in enumerate(runs, 1):
        work = out / "mtnet" / run["name"] / run["algorithm"]
        rp = run_params(params, run, work)
        bench = Benchmark.of(rp, run["name"])
        label = f"[study mtnet {number}/{len(runs)}] {run['algorithm']} on {run['name']}"
        benchmarks.make_episodes(bench)
        model = work / "model.pt"
        digest = config_hash(Run.of(bench, run["algorithm"], seed).config())
        base = {k: run[k] for k in ("part", "algorithm", "degree", "inner_lr")}
        if not _current_model(model, digest):
            log(f"{label}: training")
            try:
                train(bench, run["algorithm"], seed, work, device=device, log=log)
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
    _write_csv(out / "mtnet.csv", CSV_COLUMNS, rows)
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


# ----------------------------------------------------------------------------- protocols
PROTOCOL_COLUMNS = ["variant", "split", "iteration", "train_seconds", "cpu_seconds", "accuracy", "ci95", "episodes",
                    "queries", "dataset", "status"]


def _protocol_params(params: dict, run: dict, data: Path) -> dict:
    """A params mapping holding just this variant: its episodes under `data`, whose `prepared` folder is a
    link to the pipeline's prepared images (shared, not copied)."""
    prepared = data / "prepared"
    if not prepared.exists():
        data.mkdir(parents=True, exist_ok=True)
        prepared.symlink_to((Path(params["data"]["root"]) / "prepared").resolve(), target_is_directory=True)
    return validate({"data": {**params["data"], "root": str(data)}, "seeds": [params["studies"]["protocols"]["seed"]],
                     "benchmarks": {run["name"]: run["bench"]}}, where="studies.protocols")


def validation_accuracy(algo, bench: Benchmark, steps: int) -> tuple[float, float, int]:
    """Mean accuracy (%) and 95% CI on the saved validation episodes, leaving the random state as it was."""
    from metalearn.stats import mean_ci95

    rng = torch.get_rng_state()
    dev = next(algo.parameters()).device
    values = [100.0 * m["accuracy"] for batch in benchmarks.eval_batches(bench, "val", dev)
              for m in algo.evaluate_tasks(batch, steps)]
    torch.set_rng_state(rng)
    mean, ci95 = mean_ci95(values)
    return mean, ci95, len(values)


def protocols_study(params: dict, out: Path, device: str = "auto", log: Log = _stderr) -> list[dict]:
    """Train (or reuse) and score every variant; write protocols.csv and protocols.png."""
    from metalearn.evaluate import evaluate
    from metalearn.train import TrainingDiverged, config_hash, train

    out = Path(out)
    seed = params["studies"]["protocols"]["seed"]
    rows = []
    runs = protocols_runs(params)
    for number, run in enumerate(runs, 1):
        work = out / "protocols" / run["variant"]
        rp = _protocol_params(params, run, out / "protocols" / "data")
        label = f"[study protocols {number}/{len(runs)}] {run['algorithm']}, {run['variant']}"
        benchmark = Benchmark.of(rp, run["name"])
        bench = benchmark.settings
        benchmarks.make_episodes(benchmark)
        model, progress_file = work / "model.pt", work / "progress.json"
        digest = config_hash(Run.of(benchmark, run["algorithm"], seed).config())
        progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}
        if progress.get("config_hash") != digest:
            progress = {"config_hash": digest, "points": []}
        base = {"variant": run["variant"], "queries": bench["queries"], "dataset": bench["dataset"]}
        if not _current_model(model, digest):
            log(f"{label}: training")
            steps = bench["algorithms"][run["algorithm"]]["test_inner_steps"]
            clock = {"wall": time.perf_counter(), "cpu": time.process_time()}

            def validate_now(iteration: int, algo) -> None:
                # Meta-training time: that of the last validation before this one (after a resume: the one
                # at the checkpoint resumed from, made just before it was written) plus the time since the
                # last mark. The validation itself is not counted.
                kept = [p for p in progress["points"] if p["iteration"] < iteration]
                before = kept[-1] if kept else {"train_seconds": 0.0, "cpu_seconds": 0.0}
                wall = before["train_seconds"] + time.perf_counter() - clock["wall"]
                cpu = before["cpu_seconds"] + time.process_time() - clock["cpu"]
                mean, ci95, episodes = validation_accuracy(algo, benchmark, steps)
                progress["points"] = kept + [{"iteration": iteration, "train_seconds": round(wall, 2),
                                              "cpu_seconds": round(cpu, 2), "accuracy": mean, "ci95": ci95,
                                              "episodes": episodes}]
                work.mkdir(parents=True, exist_ok=True)
                progress_file.write_text(json.dumps(progress, indent=1) + "\n")
                log(f"{label}: iteration {iteration}: validation accuracy {mean:.2f} ± {ci95:.2f} % "
                    f"({cpu:.0f} CPU s of meta-training)")
                clock.update(wall=time.perf_counter(), cpu=time.process_time())

            try:
                train(benchmark, run["algorithm"], seed, work, device=device, log=log, on_checkpoint=validate_now)
            except TrainingDiverged as exc:
                log(f"{label}: diverged ({exc})")
                rows.append({**{k: "" for k in PROTOCOL_COLUMNS}, **base, "split": "test", "status": "diverged"})
                continue
            (work / "checkpoint.pt").unlink(missing_ok=True)
        for point in progress["points"]:
            rows.append({**base, "split": "val", **point, "status": "ok"})
        result = evaluate(rp, model, device=device, log=log)
        last = progress["points"][-1] if progress["points"] else {}
        rows.append({**base, "split": "test", "iteration": result["iterations"],
                     "train_seconds": last.get("train_seconds", ""), "cpu_seconds": last.get("cpu_seconds", ""),
                     "accuracy": result["mean"], "ci95": result["ci95"], "episodes": result["episodes"], "status": "ok"})
        log(f"{label}: test accuracy {result['mean']:.2f} ± {result['ci95']:.2f} % after {result['iterations']} "
            f"meta-iterations")
    _write_csv(out / "protocols.csv", PROTOCOL_COLUMNS, rows)
    plot_protocols(rows, out / "protocols.png")
    return rows


def plot_protocols(rows: list[dict], path: Path) -> Path:
    """Validation accuracy (95% CI band) against meta-iterations (left) and CPU seconds (right)."""
    from metalearn.report import _save, plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for number, variant in enumerate(variants):
        points = sorted((r for r in rows if r["variant"] == variant and r["split"] == "val"),
                        key=lambda r: r["iteration"])
        test = next((r for r in rows if r["variant"] == variant and r["split"] == "test"), None)
        label = variant
        if test is not None and test["status"] == "ok":
            label += f" (test {test['accuracy']:.1f} ± {test['ci95']:.1f} %)"
        elif test is not None:
            label += f" ({test['status']})"
        if not points:
            continue
        y = [p["accuracy"] for p in points]
        ci = [0.0 if math.isnan(p["ci95"]) else p["ci95"] for p in points]
        for axis, key in zip(axes, ("iteration", "cpu_seconds")):
            x = [p[key] for p in points]
            axis.plot(x, y, marker="o", ms=3, color=f"C{number}", label=label)
            axis.fill_between(x, [a - c for a, c in zip(y, ci)], [a + c for a, c in zip(y, ci)],
                              color=f"C{number}", alpha=0.2)
    axes[0].set(xlabel="meta-iterations", ylabel="validation accuracy (%)", title="Per meta-iteration")
    axes[1].set(xlabel="CPU seconds of meta-training", title="Per CPU-second")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


STUDIES = {"mtnet": mtnet_study, "protocols": protocols_study}


def run_study(params: dict, name: str, out: Path, device: str = "auto", log: Log = _stderr) -> list[dict]:
    return STUDIES[name](params, out, device=device, log=log)
