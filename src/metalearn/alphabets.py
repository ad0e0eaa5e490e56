"""The Leap and WarpGrad papers' multi-shot Omniglot protocol (Flennerhag et al. 2019, 2020), as the
official code runs it (flennerhag/warpgrad src/omniglot/: data.py, model.py, wrapper.py, main.py;
read, not copied).

Tasks (data.py, DataContainer and SubOmniglot)
  * One alphabet per task; its classes are `ways` (20) of its characters, drawn once per alphabet with
    the split seed and kept for the whole run (SubOmniglot shuffles the alphabet's characters and keeps
    the first num_classes). Only alphabets with at least `ways` characters take part (DataContainer's
    filter); they are shuffled with the seed, the first `train_alphabets` are meta-training
    (num_pretrain: the paper sweeps 1-25), the next `test_alphabets` (TEST = 10) meta-test, the rest
    validation. Meta-test alphabets are never seen in meta-training.
  * Per character, the first 5 of its 20 drawings (file order; the prepared cache keeps it) are the
    held-out test images (HOLD_OUT = 5), the other 15 the training images.
  * Adaptation: `steps` SGD steps (100), each on a mini-batch of `batch_size` (task_batch_size 128)
    training images drawn at random (RandomSampler). Every meta-training image is randomly
    transformed each time it is drawn, RandomAffine((0, 360), (0.2, 0.2), (0.8, 1.2)) (data.py's
    DEFAULT_TRANSFORM); test-time images never are (the issue's protocol; data.py passes the same
    transform to its test alphabets too -- a deviation, documented here). Our images are strokes on a
    zero background, so the affine fill (0) is background (the official ToTensor images are black
    strokes on white and get a black fill).
  * Meta-batch: `meta_batch` (20) tasks, the training alphabets in a freshly shuffled cycle
    (DataContainer.train); `meta_steps` (1000) meta-steps.
  * Evaluation: for every test alphabet, adapt from the meta-learned start on its training images
    (BatchNorm in train mode, running statistics reset first, as model.init_adaptation), then
    classify its 100 held-out images in eval mode (running statistics), as wrapper.run_task.
Network: models.OmniConv (model.py); warp layers as main.py's defaults (algorithms/warpgrad.py).
Meta-optimisers: plain SGD, lr 0.1 (main.py's outer_kwargs) for Leap and Reptile; Warp-Leap with
warpgrad.py's `meta_update: per_point` (updaters.py). Baselines (wrapper.py): `ft` (multi-headed
pretraining: one head per training alphabet, SGD on their mixed mini-batches, then fine-tuning with a
fresh head) and `no` (training each test task from the seeded initialisation).

Tasks run one at a time here (`parallel_tasks` off): the BatchNorm running statistics are the
module's own buffers and mini-batches and transforms draw from torch's generator.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchvision import transforms

from metalearn.algorithms import build_algorithm
from metalearn.models import OmniConv
from metalearn.tasks import Objective, Task

HOLD_OUT = 5  # data.py: the first 5 drawings of each character are its test images
AFFINE = dict(degrees=(0, 360), translate=(0.2, 0.2), scale=(0.8, 1.2))  # data.py DEFAULT_TRANSFORM


def alphabet_of(name: str) -> str:
    """'background/Greek/character01' -> 'background/Greek'."""
    return name.rsplit("/", 1)[0]


@dataclass
class AlphabetSplit:
    """Per split, the alphabets (names) and each one's `ways` character indices into the cache."""
    train: list[tuple[str, Tensor]] = field(default_factory=list)
    test: list[tuple[str, Tensor]] = field(default_factory=list)
    val: list[tuple[str, Tensor]] = field(default_factory=list)


def split_alphabets(classes: list[str], ways: int, train_alphabets: int, test_alphabets: int,
                    seed: int) -> AlphabetSplit:
    """Alphabets with at least `ways` characters, shuffled with `seed`: train, test, then the rest
    (validation); each keeps `ways` of its characters, drawn with the same generator."""
    generator = torch.Generator().manual_seed(seed)
    members: dict[str, list[int]] = {}
    for index, name in enumerate(classes):
        members.setdefault(alphabet_of(name), []).append(index)
    names = sorted(a for a, chars in members.items() if len(chars) >= ways)
    if train_alphabets + test_alphabets > len(names):
        raise ValueError(f"{len(names)} alphabets have >= {ways} characters: cannot take "
                         f"{train_alphabets} for training and {test_alphabets} for test")
    names = [names[i] for i in torch.randperm(len(names), generator=generator).tolist()]

    def chosen(alphabet: str) -> tuple[str, Tensor]:
        chars = torch.tensor(members[alphabet])
        return alphabet, chars[torch.randperm(len(chars), generator=generator)[:ways]]

    return AlphabetSplit(train=[chosen(a) for a in names[:train_alphabets]],
                         test=[chosen(a) for a in names[train_alphabets:train_alphabets + test_alphabets]],
                         val=[chosen(a) for a in names[train_alphabets + test_alphabets:]])


def alphabet_task(images: Tensor, characters: Tensor) -> Task:
    """One alphabet's task: support = its characters' 15 training drawings, query = their 5 held-out
    drawings; labels 0..ways-1 in the order of `characters`; images float in [0, 1], [n, 1, 28, 28]."""
    drawings = images[characters].float().div(255).unsqueeze(2)  # [ways, 20, 1, 28, 28]
    labels = torch.arange(len(characters)).view(-1, 1)
    train, test = drawings[:, HOLD_OUT:], drawings[:, :HOLD_OUT]
    return Task(support=(train.flatten(0, 1), labels.expand(-1, train.shape[1]).flatten()),
                query=(test.flatten(0, 1), labels.expand(-1, HOLD_OUT).flatten()))


def augment(images: Tensor) -> Tensor:
    """Each image through its own draw of data.py's RandomAffine (torch's generator)."""
    transform = transforms.RandomAffine(**AFFINE)
    return torch.stack([transform(image) for image in images])


class MiniBatchObjective(Objective):
    """An Objective whose every loss evaluation sees one random mini-batch of `batch_size` of the data
    it is given (data.py's RandomSampler + DataLoader), randomly transformed while `augment` is on
    (meta-training). Evaluation calls `forward` on the query images directly: never transformed."""

    def __init__(self, model, batch_size: int):
        super().__init__(model, "classification")
        self.batch_size = batch_size
        self.augment = False

    def draw(self, data):
        inputs, targets = data
        if len(inputs) > self.batch_size:
            chosen = torch.randperm(len(inputs))[:self.batch_size]
            inputs, targets = inputs[chosen], targets[chosen]
        return (augment(inputs) if self.augment else inputs), targets


# -- the protocol ----------------------------------------------------------------------------------

def build_learner(method: str, settings: dict, hparams: dict, seed: int):
    """The algorithm (or baseline's plain-SGD learner) for `method`, on a fresh OmniConv."""
    torch.manual_seed(seed)
    model = OmniConv(1, settings["ways"], settings.get("filters", 64))
    objective = MiniBatchObjective(model, settings["batch_size"])
    name = {"ft": "reptile", "no": "reptile"}.get(method, method)  # the baselines adapt by plain SGD
    algo = build_algorithm(name, model, objective, {"inner_lr": settings["inner_lr"], "inner_steps": settings["steps"],
                                                    "test_inner_steps": settings["steps"], **hparams})
    algo.parallel_tasks = False  # running BatchNorm statistics and random mini-batches: one task at a time
    return algo


def evaluate_alphabet(algo, task: Task, steps: int) -> float:
    """Accuracy on the held-out drawings after `steps` SGD steps on the training drawings (not
    transformed), from freshly reset running statistics; eval mode (running statistics) at test."""
    model = algo.objective.model
    algo.objective.augment = False
    model.reset_running_stats()
    model.train()
    with torch.enable_grad():
        adapted = algo.adapt(task.support, steps)
    model.eval()
    try:
        with torch.no_grad():
            return algo.objective.metrics(algo.predict(adapted, task.query[0]), task.query[1])["accuracy"]
    finally:
        model.train()


def meta_batches(alphabets: int, meta_steps: int, meta_batch: int, generator: torch.Generator):
    """Training-alphabet indices, `meta_batch` per meta-step: shuffled cycles through the alphabets,
    cut at `meta_batch` (DataContainer.train: shuffle, extend, cut; a fresh draw every meta-step)."""
    for _ in range(meta_steps):
        pending: list[int] = []
        while len(pending) < meta_batch:
            pending += torch.randperm(alphabets, generator=generator).tolist()
        yield pending[:meta_batch]


def pretrain_multihead(algo, tasks: list[Task], settings: dict, generator: torch.Generator) -> None:
    """wrapper.py FtWrapper: one network with a head per training alphabet; each meta-step trains on
    `steps` mini-batches of each of `meta_batch` alphabets, mixed in random order, SGD (lr inner_lr)
    on the shared layers and that alphabet's head. The shared layers then start every test task with
    a fresh head (model.init_adaptation resets the heads)."""
    model, objective = algo.objective.model, algo.objective
    heads = [copy.deepcopy(model.head) for _ in tasks]
    for head in heads:
        head.reset_parameters()
    trunk = [p for name, p in model.named_parameters() if not name.startswith("head.")]
    optimizer = torch.optim.SGD(trunk + [p for h in heads for p in h.parameters()], lr=algo.inner_lr)
    objective.augment = True
    for chosen in meta_batches(len(tasks), settings["meta_steps"], settings["meta_batch"], generator):
        order = [i for i in chosen for _ in range(settings["steps"])]
        order = [order[j] for j in torch.randperm(len(order), generator=generator).tolist()]
        for i in order:
            x, y = objective.draw(tasks[i].support)
            loss = objective.criterion(heads[i](model.features(x).flatten(1)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    objective.augment = False
    model.head.reset_parameters()


def run_method(method: str, settings: dict, hparams: dict, images: Tensor, split: AlphabetSplit,
               seed: int, log=print) -> dict[str, Any]:
    """Meta-train `method` on the training alphabets and score it on the test alphabets."""
    algo = build_learner(method, settings, hparams, seed)
    # Meta-training reads only the training drawings: WarpGrad's meta-objective draws its two
    # mini-batches from them too (updaters.py via utils.get_data, which sets dataset.train()).
    train_tasks = [Task(t.support, t.support) for t in (alphabet_task(images, chars) for _, chars in split.train)]
    test_tasks = [alphabet_task(images, chars) for _, chars in split.test]
    generator = torch.Generator().manual_seed(seed)
    history = []
    if method == "ft":
        pretrain_multihead(algo, train_tasks, settings, generator)
    elif method != "no":
        # Leap / Reptile: plain SGD on the meta-gradient (main.py's outer optimiser); Warp-Leap's
        # per_point updater steps its own SGD and leaves no gradient for this one.
        optimizer = torch.optim.SGD(algo.parameters(), lr=settings["outer_lr"])
        for step, chosen in enumerate(meta_batches(len(train_tasks), settings["meta_steps"],
                                                         settings["meta_batch"], generator), 1):
            algo.objective.augment = True
            optimizer.zero_grad(set_to_none=True)
            metrics = algo.meta_step([train_tasks[i] for i in chosen])
            optimizer.step()
            history.append(metrics)
            if step % max(1, settings["meta_steps"] // 5) == 0:
                log(f"{method} meta-step {step}: training-task loss {metrics['loss']:.3f}, "
                    f"accuracy {metrics['accuracy']:.3f}")
        algo.objective.augment = False
    accuracies = [evaluate_alphabet(algo, task, settings["steps"]) for task in test_tasks]
    n = len(accuracies)
    mean = sum(accuracies) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (n - 1)) if n > 1 else 0.0
    return {"method": method, "accuracy": mean, "ci95": 1.96 * std / math.sqrt(n), "per_alphabet": accuracies,
            "test_alphabets": [a for a, _ in split.test], "history": history}


# -- settings and command line ---------------------------------------------------------------------

# The official protocol (main.py's defaults; run_multi.py's learning rates; the paper sweeps the
# number of training alphabets, run_multi.py --npres 1 3 5 10 15 20 25).
PAPER = {"ways": 20, "train_alphabets": 25, "test_alphabets": 10, "seed": 8879, "steps": 100, "batch_size": 128,
         "meta_batch": 20, "meta_steps": 1000, "outer_lr": 0.1, "inner_lr": 0.1, "filters": 64}
# What this 2-core CPU ran (README, "Multi-shot Omniglot: the Leap/WarpGrad protocol"): 10 training
# alphabets, 50 steps of 32 images, meta-batch 3, 12 meta-steps, 32 filters.
CPU = {**PAPER, "train_alphabets": 10, "seed": 1, "steps": 50, "batch_size": 32, "meta_batch": 3, "meta_steps": 12,
       "filters": 32}
# Warp-Leap with the official updater (updaters.py): one SGD step per buffered point, shuffled.
HPARAMS = {"warpleap": {"meta_update": "per_point", "shuffle_buffer": True, "warp_lr": 0.1, "init_lr": 0.1}}
METHODS = ("warpleap", "leap", "reptile", "ft", "no")


def main(argv: list[str] | None = None) -> None:
    """python -m metalearn.alphabets --settings cpu|paper --data <root> [--methods ...] [--out results.json]"""
    import argparse
    import json
    import time
    from pathlib import Path

    from metalearn.data import omniglot

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--data", default="data", help="data root holding prepared/omniglot.pt (metalearn prepare)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    settings = CPU if args.settings == "cpu" else PAPER
    images, classes = omniglot.load(Path(args.data) / "prepared" / "omniglot.pt")
    split = split_alphabets(classes, settings["ways"], settings["train_alphabets"], settings["test_alphabets"],
                            settings["seed"])
    results = {}
    for method in args.methods:
        start = time.process_time()
        result = run_method(method, settings, HPARAMS.get(method, {}), images, split, settings["seed"])
        result["cpu_seconds"] = time.process_time() - start
        print(f"{method}: {100 * result['accuracy']:.1f} +- {100 * result['ci95']:.1f} % "
              f"({len(result['per_alphabet'])} test alphabets, {result['cpu_seconds']:.0f} CPU-s)", flush=True)
        results[method] = {k: v for k, v in result.items() if k != "history"}
    if args.out:
        args.out.write_text(json.dumps({"settings": settings, "hparams": HPARAMS, "results": results}, indent=1))


if __name__ == "__main__":
    main()
