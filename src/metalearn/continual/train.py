"""Meta-training of the continual learner: the meta-objective at a point of the learner's trajectory,
its meta-gradient over a meta-batch (WarpGrad's Algorithm 2) and the loop (metalearn.train.run_loop)."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from metalearn import dependencies
from metalearn.algorithms.base import detached
from metalearn.algorithms.warpgrad import snapshot_steps
from metalearn.config import Benchmark, Run
from metalearn.continual.learner import Learner, learn_sequence
from metalearn.continual.tasks import SequenceSampler, Sequences
from metalearn.errors import BadFile
from metalearn.tasks import Params

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def meta_objective(learner: Learner, theta: Params, seqs: Sequences, i: int, t: int) -> Tensor:
    """J at a trajectory point theta (a constant) while sub-task t is learned: one differentiable step
    on sub-task t's training points, then the mean query loss of the current and earlier sub-tasks
    0..t (first_order: the losses at theta). Never a later sub-task: the learner has not seen it."""
    theta = detached(theta)
    if not learner.first_order:
        theta = learner.step(theta, seqs.support(i, t), create_graph=True)
    return learner.loss(theta, seqs.queries_up_to(i, t))


def meta_gradient(learner: Learner, seqs: Sequences, steps: int, snapshots: int) -> dict[str, float]:
    """Algorithm 2 over a meta-batch of sequences: learn each with phi fixed, buffering `snapshots`
    trajectory points (with the sub-task each belongs to); then add the gradient of the mean J over
    all buffered points to the warp parameters' .grad. Returns the mean J (`loss`) and the mean final
    query loss over the sub-tasks (`final_loss`)."""
    phi = learner.meta_parameters()
    keep = snapshot_steps(seqs.subtasks * steps, snapshots)
    buffer: list[tuple[int, int, Params]] = []
    finals = []
    for i in range(len(seqs)):
        def remember(t: int, k: int, theta: Params, i=i) -> None:
            if k in keep:
                buffer.append((i, t, {n: p.detach() for n, p in theta.items()}))
        theta = learn_sequence(learner, seqs, i, steps, remember)
        with torch.no_grad():
            finals.append(learner.loss(theta, seqs.queries_up_to(i, seqs.subtasks - 1)).item())
    total, grads = 0.0, [torch.zeros_like(p) for p in phi]
    for i, t, theta in buffer:
        value = meta_objective(learner, theta, seqs, i, t)
        for g, d in zip(grads, torch.autograd.grad(value, phi)):
            g += d
        total += value.item()
    for p, g in zip(phi, grads):
        p.grad = g / len(buffer) if p.grad is None else p.grad + g / len(buffer)
    return {"loss": total / len(buffer), "final_loss": sum(finals) / len(finals)}


# The files whose edits change a continual run: this subpackage's, models.py and WarpGrad's
source_files = dependencies.continual_files


def config_hash(config: dict) -> str:
    from metalearn.train import settings_digest

    return settings_digest(config, source_files(config["algorithm"]))


def build_learner(bench: dict, method: str, hparams: dict, seed: int, device) -> Learner:
    return Learner(method, bench, hparams, seed).to(device)


def train(benchmark: Benchmark, method: str, seed: int, out_dir: Path, device: str = "auto",
          tracker=None, log: Log = _stderr) -> Path:
    """Meta-train WarpGrad's warp layers (the loop of metalearn.train, resumable); `sgd` has nothing to
    learn and saves its initialisation. Writes out_dir/model.pt and history.json."""
    from metalearn.train import pick_device, run_loop

    dev = pick_device(device)
    run = Run.of(benchmark, method, seed)
    bench, cfg, hparams = run.settings, run.train, run.hparams
    learner = build_learner(bench, method, hparams, seed, dev)
    phi = learner.meta_parameters()
    optimizer = torch.optim.Adam(phi, lr=cfg["meta_lr"]) if phi else None
    generator = torch.Generator().manual_seed(seed)
    sampler = SequenceSampler(bench, generator, dev)
    steps = bench["steps_per_subtask"]
    snapshots = hparams.get("snapshots", bench["subtasks"] * steps)  # default: every trajectory point
    iterations = run.iterations if phi else 0  # sgd: no checkpoint either

    def step(iteration: int) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        return meta_gradient(learner, sampler.sample(cfg["meta_batch"]), steps, snapshots)

    return run_loop(run, out_dir, dev, config_hash, modules={"algorithm": learner}, optimizer=optimizer,
                    generator=generator, iterations=iterations, step=step,
                    finite=lambda metrics: math.isfinite(metrics["loss"]) and all(
                        bool(torch.isfinite(p.grad).all()) for p in phi),
                    update=lambda iteration, metrics: optimizer.step(), speed=False,
                    plan=f"{iterations} meta-iterations"
                    + ("" if phi else " (no meta-parameters: the fixed initialisation is the model)"),
                    tracker=tracker, log=log)


def load_learner(saved: dict, model_path: Path, device) -> Learner:
    config = saved["config"]
    try:
        learner = build_learner(config["settings"], config["algorithm"], config["hparams"], config["seed"], device)
        learner.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BadFile(f"{model_path}: its settings or parameters do not make a continual {config['algorithm']} "
                      f"learner ({type(exc).__name__}: {str(exc)[:300]}); train it again (`metalearn train`)") from None
    return learner
