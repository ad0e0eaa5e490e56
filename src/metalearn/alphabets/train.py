"""Meta-training in the multi-shot protocol: each method's learner on OmniConv, the meta-batches of
training alphabets, the multi-headed pretraining step (`ft`) and the loop (metalearn.train.run_loop)."""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from metalearn import dependencies
from metalearn.algorithms import build_algorithm
from metalearn.alphabets.tasks import MiniBatchObjective, alphabet_task, load_split, meta_training_task, on_device
from metalearn.config import Benchmark, Run
from metalearn.errors import BadFile, BadInput
from metalearn.models import OmniConv
from metalearn.tasks import Task

METHODS = ("warpleap", "leap", "reptile", "maml", "fomaml", "ft", "scratch")
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_learner(method: str, bench: dict, hparams: dict, seed: int):
    """The algorithm (or baseline's plain-SGD learner) for `method`, on a fresh OmniConv seeded by
    `seed`. Every method adapts for the benchmark's `steps` at test; in meta-training for `inner_steps`
    (default `steps`; MAML: 5), FOMAML for one fewer (its meta-gradient is the next mini-batch's
    gradient, `meta_training_task`)."""
    if method not in METHODS:
        raise BadInput(f"{method!r} is not a method of the multi-shot protocol; use one of {list(METHODS)}")
    torch.manual_seed(seed)
    model = OmniConv(1, bench["ways"], bench["filters"])
    objective = MiniBatchObjective(model, bench["batch_size"])
    name = {"ft": "reptile", "scratch": "reptile"}.get(method, method)  # the baselines adapt by plain SGD
    steps = bench["steps"]
    inner_steps = hparams.get("inner_steps", steps)  # mini-batches per task in meta-training
    if method == "fomaml":  # the last one is the meta-objective's (meta_training_task)
        inner_steps -= 1
    own = {k: v for k, v in hparams.items() if k not in ("meta_lr", "iterations", "inner_steps", "head")}
    algo = build_algorithm(name, model, objective, {**own, "inner_steps": inner_steps, "test_inner_steps": steps})
    algo.parallel_tasks = False  # running BatchNorm statistics and random mini-batches: one task at a time
    return algo


def meta_batch(alphabets: int, size: int, generator: torch.Generator) -> list[int]:
    """One meta-step's training-alphabet indices: shuffled cycles through the alphabets, cut at
    `size` (DataContainer.train: shuffle, extend, cut; a fresh draw every meta-step)."""
    pending: list[int] = []
    while len(pending) < size:
        pending += torch.randperm(alphabets, generator=generator).tolist()
    return pending[:size]


def multihead_step(algo, heads: nn.ModuleList, optimizer, tasks: list[Task], chosen: list[int], steps: int,
                   generator: torch.Generator) -> dict[str, float]:
    """One meta-step of wrapper.py's FtWrapper: one network, `heads[i]` the head of training alphabet
    i (`head: shared`: the network's own head in every slot, as the official code); `steps`
    mini-batches of each chosen alphabet, mixed in random order, SGD (lr inner_lr) on the shared
    layers and that alphabet's head. (The head every test task starts from: `train`.)"""
    model, objective = algo.objective.model, algo.objective
    order = [i for i in chosen for _ in range(steps)]
    order = [order[j] for j in torch.randperm(len(order), generator=generator).tolist()]
    total, correct = 0.0, 0.0
    for i in order:
        x, y = objective.draw(tasks[i].support)
        outputs = heads[i](model.features(x).flatten(1))
        loss = objective.criterion(outputs, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        correct += (outputs.argmax(1) == y).float().mean().item()
    return {"loss": total / len(order), "accuracy": correct / len(order)}


# The files whose edits change a run: this subpackage's, models.py, tasks.py and the method's algorithm files
source_files = dependencies.alphabets_files


def config_hash(config: dict) -> str:
    from metalearn.train import settings_digest

    return settings_digest(config, source_files(config["algorithm"]))


def train(benchmark: Benchmark, method: str, seed: int, out_dir: Path, device: str = "auto",
          tracker=None, log: Log = _stderr) -> Path:
    """Meta-train `method` on the training alphabets (the loop of metalearn.train, resumable: every
    `checkpoint_every` meta-steps the network, the heads (ft), the optimiser and both random states
    are saved); `scratch` has nothing to learn and saves its seeded initialisation. Writes
    out_dir/model.pt and history.json."""
    from metalearn.train import Cadence, pick_device, run_loop

    dev = pick_device(device)
    run = Run.of(benchmark, method, seed)
    bench, cfg, hparams = run.settings, run.train, run.hparams
    algo = build_learner(method, bench, hparams, seed).to(dev)
    images, split = load_split(benchmark)
    tasks = [on_device(alphabet_task(images, chars, bench.get("background", 0)), dev) for _, chars in split.train]
    iterations = 0 if method == "scratch" else run.iterations  # scratch: no checkpoint either
    heads = nn.ModuleList()
    shared_head = method == "ft" and hparams.get("head", "per_alphabet") == "shared"
    if shared_head:  # the official construction: the model's own head in every slot (model.py line 180)
        heads = nn.ModuleList([algo.model.head] * len(tasks))
    elif method == "ft":  # a head per training alphabet beside the shared layers
        heads = nn.ModuleList(copy.deepcopy(algo.model.head) for _ in tasks)
        for head in heads:
            head.reset_parameters()
    if method == "ft":
        trunk = [p for name, p in algo.model.named_parameters() if not name.startswith("head.")]
        # (a ModuleList lists a module it holds in every slot once: the shared head is one parameter set)
        optimizer = torch.optim.SGD(trunk + list(heads.parameters()), lr=algo.inner_lr)
    else:  # Leap, Reptile, MAML, FOMAML: plain SGD on the meta-gradient (main.py's outer optimiser);
        # Warp-Leap's per_point updater steps its own SGD and leaves no gradient for this one
        optimizer = torch.optim.SGD(algo.parameters(), lr=hparams.get("meta_lr", 0.1))
    generator = torch.Generator().manual_seed(seed)

    def step(iteration: int) -> dict[str, float]:
        chosen = meta_batch(len(tasks), cfg["meta_batch"], generator)
        algo.objective.augment = True  # every meta-training image, each time it is drawn
        if method == "ft":
            metrics = multihead_step(algo, heads, optimizer, tasks, chosen, bench["steps"], generator)
        else:
            optimizer.zero_grad(set_to_none=True)
            metrics = algo.meta_step([meta_training_task(method, tasks[i], algo.objective) for i in chosen])
            optimizer.step()
        algo.objective.augment = False
        return metrics

    def finish() -> dict:
        if method == "ft" and not shared_head:  # the shared layers start every test task with a fresh head
            algo.model.head.reset_parameters()  # (shared: the pretrained head, as FtWrapper.run_tasks keeps it)
        return {}

    # torch's generator, saved with the rest (Checkpoint): mini-batches and augmentation draw from it
    return run_loop(run, out_dir, dev, config_hash, modules={"algorithm": algo, "heads": heads}, optimizer=optimizer,
                    generator=generator, iterations=iterations, step=step,
                    finite=lambda metrics: math.isfinite(metrics["loss"]) and all(
                        bool(torch.isfinite(p).all()) for p in algo.parameters()),
                    diverged="the loss or the parameters", finish=finish, unit="meta-step", speed=False,
                    cadence=Cadence(checkpoint_every=50, log_every=10),  # meta-steps of many tasks: long
                    plan=f"{iterations} meta-steps on {len(tasks)} training alphabets"
                    + ("" if iterations else " (no meta-learning: the seeded initialisation)"),
                    tracker=tracker, log=log)


def load_learner(saved: dict, model_path: Path, device):
    config = saved["config"]
    try:
        algo = build_learner(config["algorithm"], config["settings"], config["hparams"], config["seed"]).to(device)
        algo.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BadFile(f"{model_path}: its settings or parameters do not make a multi-shot {config['algorithm']} "
                      f"learner ({type(exc).__name__}: {str(exc)[:300]}); train it again (`metalearn train`)") from None
    return algo
