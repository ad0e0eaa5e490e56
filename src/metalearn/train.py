"""The one meta-training loop every algorithm shares.

Resumable: every `checkpoint_every` iterations the whole state (meta-parameters, optimizer,
episode generator, history, elapsed time) is written atomically; a rerun continues from the last
checkpoint and ends with exactly the parameters of an uninterrupted run (same device, same seed).
A NaN/inf meta-loss or meta-gradient stops training with an error; the last good checkpoint stays.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from metalearn import benchmarks
from metalearn.adapt import preprocessing_for
from metalearn.algorithms import build_algorithm
from metalearn.config import algorithm_params, benchmark

MODEL_FORMAT = 1


class TrainingDiverged(RuntimeError):
    pass


class Tracker(Protocol):
    """Receives the run's progress (e.g. an MLflow run); all methods optional in spirit."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def run_config(params: dict, bench_name: str, algorithm: str, seed: int) -> dict:
    """Everything that determines a training run; its hash guards against resuming a stale checkpoint."""
    bench = benchmark(params, bench_name)
    # Evaluation-only settings are left out: changing them must not invalidate a trained model.
    settings = {k: v for k, v in bench.items()
                if k not in ("algorithms", "val_tasks", "test_tasks", "eval_queries", "episode_seed")}
    return {"benchmark": bench_name, "algorithm": algorithm, "seed": seed, "settings": settings,
            "hparams": algorithm_params(params, bench_name, algorithm)}


def config_hash(config: dict) -> str:
    """Settings plus the algorithm's source code: a checkpoint from other settings or an edited
    algorithm is not resumed."""
    from metalearn.algorithms import source_files

    sources = sorted(source_files(config["algorithm"]))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for source in sources:
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def build(params: dict, bench_name: str, algorithm: str, seed: int, device: torch.device):
    """The algorithm (with a seeded initialisation) for a benchmark, on `device`."""
    bench = benchmark(params, bench_name)
    torch.manual_seed(seed)
    objective = benchmarks.build_objective(bench)
    algo = build_algorithm(algorithm, objective.model, objective, algorithm_params(params, bench_name, algorithm))
    return algo.to(device)


def _all_finite(algo: torch.nn.Module) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in algo.parameters())


def train(params: dict, bench_name: str, algorithm: str, seed: int, out_dir: Path,
          device: str = "auto", tracker: Tracker | None = None,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Path:
    """Meta-train and write ``out_dir/model.pt`` (+ ``history.json``); returns the model path."""
    dev = pick_device(device)
    bench = benchmark(params, bench_name)
    cfg = bench["train"]
    config = run_config(params, bench_name, algorithm, seed)
    digest = config_hash(config)
    algo = build(params, bench_name, algorithm, seed, dev)
    optimizer = torch.optim.Adam(algo.parameters(), lr=cfg["meta_lr"])
    generator = torch.Generator().manual_seed(seed)
    sampler = benchmarks.train_sampler(params, bench, generator, dev)

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / "checkpoint.pt"
    start, history, elapsed = 0, [], 0.0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=dev, weights_only=True)
        if state.get("config_hash") == digest:
            algo.load_state_dict(state["algorithm"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])  # algorithms that draw noise (masks, ...) use it
            start, history, elapsed = state["iteration"], state["history"], state["train_seconds"]
            log(f"resuming {bench_name}/{algorithm}/seed{seed} from iteration {start}")
        else:
            log(f"ignoring {checkpoint_path}: it belongs to other settings")

    def save_checkpoint(iteration: int) -> None:
        _atomic_save({"config_hash": digest, "iteration": iteration, "algorithm": algo.state_dict(),
                      "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                      "torch_rng": torch.get_rng_state(),
                      "history": history, "train_seconds": elapsed}, checkpoint_path)

    if tracker is not None and start == 0:
        tracker.log_params({"benchmark": bench_name, "algorithm": algorithm, "seed": seed,
                            "device": str(dev), **{f"train.{k}": v for k, v in cfg.items()},
                            **{f"hp.{k}": v for k, v in config["hparams"].items()}})
    # An algorithm may have its own budget on a benchmark (e.g. equal-time comparisons).
    iterations = config["hparams"].get("iterations", cfg["iterations"])
    every, log_every = cfg.get("checkpoint_every", 500), cfg.get("log_every", 100)
    log(f"training {algorithm} on {bench_name} (seed {seed}) on {dev}: {iterations} meta-iterations")
    window_start, window_iters, running = time.perf_counter(), 0, {}
    for iteration in range(start + 1, iterations + 1):
        tick = time.perf_counter()
        tasks = sampler.sample(cfg["meta_batch"])
        optimizer.zero_grad(set_to_none=True)
        metrics = algo.meta_step(tasks)
        if not math.isfinite(metrics["loss"]) or not _all_finite(algo):
            kept = (f"the last good checkpoint (iteration {(iteration - 1) // every * every}) is kept at "
                    f"{checkpoint_path}" if checkpoint_path.exists() else "no checkpoint was written yet")
            raise TrainingDiverged(
                f"{bench_name}/{algorithm}/seed{seed}: meta-loss or meta-gradient became "
                f"{metrics['loss']} at iteration {iteration}; {kept}. Lower meta_lr or inner_lr.")
        optimizer.step()
        elapsed += time.perf_counter() - tick
        window_iters += 1
        for key, value in metrics.items():
            running[key] = running.get(key, 0.0) + value
        if iteration % log_every == 0 or iteration == iterations:
            means = {key: value / window_iters for key, value in running.items()}
            speed = window_iters / max(time.perf_counter() - window_start, 1e-9)
            history.append({"iteration": iteration, "seconds": round(elapsed, 3), **means})
            shown = " | ".join(f"{k} {v:.4f}" for k, v in means.items())
            log(f"[{bench_name}/{algorithm}/seed{seed}] iter {iteration}/{iterations} | {shown} | {speed:.2f} it/s")
            if tracker is not None:
                tracker.log_metrics({f"train_{k}": v for k, v in means.items()}, step=iteration)
            window_start, window_iters, running = time.perf_counter(), 0, {}
        if iteration % every == 0 or iteration == iterations:
            save_checkpoint(iteration)

    model_path = out_dir / "model.pt"
    _atomic_save({"format": MODEL_FORMAT, "config": config, "config_hash": digest,
                  "state_dict": {k: v.detach().cpu() for k, v in algo.state_dict().items()},
                  "train_seconds": elapsed, "iterations": iterations,
                  # how images reach the network, for `metalearn adapt` on the user's own images
                  "preprocessing": preprocessing_for(config["settings"])}, model_path)
    (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return model_path


def load_model(path: Path, device: str = "auto"):
    """(algorithm, saved record) from a model file written by `train`; no pickled code is loaded."""
    dev = pick_device(device)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = saved["config"]
    params = {"benchmarks": {config["benchmark"]: {**config["settings"],
                                                   "algorithms": {config["algorithm"]: config["hparams"]}}}}
    algo = build({**params, "data": {}}, config["benchmark"], config["algorithm"], config["seed"], dev)
    algo.load_state_dict(saved["state_dict"])
    return algo, saved
