"""Meta-training of an RL benchmark: metalearn.train's loop, with TRPO in place of Adam.

The same contract as the supervised loop (metalearn/train.py, whose checkpoint and model-file
helpers this reuses): every `checkpoint_every` iterations the state (policy, task-and-noise
generator, torch's generator, history, elapsed time) is written atomically; a rerun resumes from
it and ends with exactly the parameters of an uninterrupted run. TRPO keeps no optimiser state.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from metalearn.config import benchmark
from metalearn.rl.envs import sample_tasks
from metalearn.rl.metarl import MetaRL
from metalearn.train import Checkpoint, Progress, TrainingDiverged, Tracker, run_config, write_model

TRPO_DEFAULTS = {"max_kl": 0.01, "cg_iters": 10, "damping": 1e-5, "backtrack_ratio": 0.8, "max_backtracks": 15}


def source_files(algorithm: str | None = None) -> list[Path]:
    """The files whose edits change an RL run's result (the config hash and the pipeline use them):
    every method's, since metalearn/rl runs them all (`algorithm` is accepted for the families' signature)."""
    return sorted(Path(__file__).resolve().parent.glob("*.py"))


def config_hash(config: dict) -> str:
    from metalearn.train import settings_digest

    return settings_digest(config, source_files())


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
    name = f"{bench_name}/{algorithm}/seed{seed}"
    # no optimizer: TRPO keeps no state between steps
    checkpoint = Checkpoint(out_dir / "checkpoint.pt", digest, config, {"algorithm": learner}, None, generator)
    start, history, elapsed = checkpoint.resume(torch.device("cpu"), log, name)
    if tracker is not None and start == 0:
        tracker.log_params({"benchmark": bench_name, "algorithm": algorithm, "seed": seed, "device": "cpu",
                            **{f"train.{k}": v for k, v in cfg.items()},
                            **{f"trpo.{k}": v for k, v in trpo.items()},
                            **{f"hp.{k}": v for k, v in config["hparams"].items()}})
    # the random-initialisation baseline is not trained
    iterations = 0 if not learner.trains else config["hparams"].get("iterations", cfg["iterations"])
    every = cfg.get("checkpoint_every", 50)
    log(f"training {algorithm} on {bench_name} (seed {seed}): {iterations} meta-iterations")
    progress = Progress(name, iterations, cfg.get("log_every", 10), history, log, tracker)
    for iteration in range(start + 1, iterations + 1):
        tick = time.perf_counter()
        goals = sample_tasks(bench, cfg["meta_batch"], generator)
        metrics = learner.meta_step(goals, generator, trpo)
        if not all(math.isfinite(v) for v in metrics.values()) or not all(
                bool(torch.isfinite(p).all()) for p in learner.parameters()):
            raise TrainingDiverged(f"{name}: non-finite values at iteration "
                                   f"{iteration} ({metrics}); the last checkpoint is kept at {checkpoint.path}")
        elapsed += time.perf_counter() - tick
        progress.add(iteration, metrics, elapsed)
        if iteration % every == 0 or iteration == iterations:
            checkpoint.save(iteration, history, elapsed)
    return write_model(out_dir, config, digest, learner, elapsed, iterations, history)


def load_model(saved: dict) -> MetaRL:
    """The learner of a model file's record (metalearn.train.read_model_file checked it)."""
    learner = build(saved["config"])
    learner.load_state_dict(saved["state_dict"])
    return learner
