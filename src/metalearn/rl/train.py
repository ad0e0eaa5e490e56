"""Meta-training of an RL benchmark: metalearn.train's loop, with TRPO in place of Adam.

The same contract as the supervised loop (metalearn/train.py, whose checkpoint and model-file
helpers this reuses): every `checkpoint_every` iterations the state (policy, task-and-noise
generator, torch's generator, history, elapsed time) is written atomically; a rerun resumes from
it and ends with exactly the parameters of an uninterrupted run. TRPO keeps no optimiser state.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from metalearn.config import benchmark
from metalearn.rl.envs import sample_tasks
from metalearn.rl.metarl import MetaRL
from metalearn.train import MODEL_FORMAT, TrainingDiverged, Tracker, _atomic_save, read_checkpoint, run_config

TRPO_DEFAULTS = {"max_kl": 0.01, "cg_iters": 10, "damping": 1e-5, "backtrack_ratio": 0.8, "max_backtracks": 15}


def source_files() -> list[Path]:
    """The files whose edits change an RL run's result (the config hash and the pipeline use them)."""
    return sorted(Path(__file__).resolve().parent.glob("*.py"))


def config_hash(config: dict) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for source in source_files():
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def build(config: dict) -> MetaRL:
    """The learner of a run's config (run_config), with its seeded initialisation."""
    torch.manual_seed(config["seed"])
    return MetaRL(config["algorithm"], config["settings"], config["hparams"])


def trpo_settings(settings: dict) -> dict:
    return {**TRPO_DEFAULTS, **(settings.get("trpo") or {})}


def train(params: dict, bench_name: str, algorithm: str, seed: int, out_dir: Path,
          device: str = "cpu", tracker: Tracker | None = None,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Path:
    """Meta-train and write ``out_dir/model.pt`` (+ ``history.json``); returns the model path.
    `device` is accepted for the supervised loop's signature: RL runs on the CPU (environments and
    small policies; the cost is in sequential steps, not in arithmetic)."""
    bench = benchmark(params, bench_name)
    cfg = bench["train"]
    config = run_config(params, bench_name, algorithm, seed)
    digest = config_hash(config)
    learner = build(config)
    generator = torch.Generator().manual_seed(seed)
    trpo = trpo_settings(bench)

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / "checkpoint.pt"
    start, history, elapsed = 0, [], 0.0
    state = read_checkpoint(checkpoint_path, torch.device("cpu"), log)
    if state is not None:
        if state.get("config_hash") == digest:
            learner.load_state_dict(state["algorithm"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start, history, elapsed = state["iteration"], state["history"], state["train_seconds"]
            log(f"resuming {bench_name}/{algorithm}/seed{seed} from iteration {start}")
        else:
            log(f"ignoring {checkpoint_path}: it belongs to other settings")

    def save_checkpoint(iteration: int) -> None:
        _atomic_save({"config_hash": digest, "config": config, "iteration": iteration,
                      "algorithm": learner.state_dict(), "optimizer": {}, "generator": generator.get_state(),
                      "torch_rng": torch.get_rng_state(), "history": history, "train_seconds": elapsed},
                     checkpoint_path)

    if tracker is not None and start == 0:
        tracker.log_params({"benchmark": bench_name, "algorithm": algorithm, "seed": seed, "device": "cpu",
                            **{f"train.{k}": v for k, v in cfg.items()},
                            **{f"trpo.{k}": v for k, v in trpo.items()},
                            **{f"hp.{k}": v for k, v in config["hparams"].items()}})
    # the random-initialisation baseline is not trained
    iterations = 0 if not learner.trains else config["hparams"].get("iterations", cfg["iterations"])
    every, log_every = cfg.get("checkpoint_every", 50), cfg.get("log_every", 10)
    log(f"training {algorithm} on {bench_name} (seed {seed}): {iterations} meta-iterations")
    window_start, window_iters, running = time.perf_counter(), 0, {}
    for iteration in range(start + 1, iterations + 1):
        tick = time.perf_counter()
        goals = sample_tasks(bench, cfg["meta_batch"], generator)
        metrics = learner.meta_step(goals, generator, trpo)
        if not all(math.isfinite(v) for v in metrics.values()) or not all(
                bool(torch.isfinite(p).all()) for p in learner.parameters()):
            raise TrainingDiverged(f"{bench_name}/{algorithm}/seed{seed}: non-finite values at iteration "
                                   f"{iteration} ({metrics}); the last checkpoint is kept at {checkpoint_path}")
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
                  "state_dict": {k: v.detach().cpu() for k, v in learner.state_dict().items()},
                  "train_seconds": elapsed, "iterations": iterations}, model_path)
    (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return model_path


def load_model(saved: dict) -> MetaRL:
    """The learner of a model file's record (metalearn.train.read_model_file checked it)."""
    learner = build(saved["config"])
    learner.load_state_dict(saved["state_dict"])
    return learner
