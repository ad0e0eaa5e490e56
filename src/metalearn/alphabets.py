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
    transform to its test alphabets too -- a deviation, documented here).
  * Pixels (`dataset`, `background`): the official images are resize.py's `im.resize((28, 28),
    LANCZOS)` of the 1-bit PNGs, which Pillow carries out with nearest neighbour on mode "1" (binary
    pixels: our `omniglot-binary` cache), read by torchvision's Omniglot (`convert("L")`) and
    ToTensor: background 1, strokes 0, and RandomAffine's fill (0) is stroke-coloured (black wedges
    where rotation or translation uncovers the frame). PAPER runs that (`dataset: omniglot-binary`,
    `background: 1`). The default, `background: 0`, is the cache's own polarity (strokes 1 on 0),
    where the fill is background; with `dataset: omniglot`, grey Lanczos edges.
  * Meta-batch: `meta_batch` (20) tasks, the training alphabets in a freshly shuffled cycle
    (DataContainer.train); `meta_steps` (1000) meta-steps.
  * Evaluation: for every test alphabet, adapt from the meta-learned start on its training images
    (BatchNorm in train mode, running statistics reset first, as model.init_adaptation), then
    classify its 100 held-out images in eval mode (running statistics), as wrapper.run_task.
Network: models.OmniConv (model.py); warp layers as main.py's defaults (algorithms/warpgrad.py).
Meta-optimisers: plain SGD, lr 0.1 (main.py's outer_kwargs) for Leap and Reptile; Warp-Leap with
warpgrad.py's `meta_update: per_point` (updaters.py) and its meta-objective's step as utils.py's `step`
(`inner_grad: detached`); Leap's and Warp-Leap's paths end at the point before the last step, as
wrapper.py's run_batches feeds them (`final_point: false`; see PAPER). Baselines (wrapper.py, run_multi.py): MAML (second
order, 5 training steps, outer SGD lr 0.5; maml.py adapts on a fresh mini-batch per step through
`MiniBatchObjective.draw`; its meta-objective the training alphabet's held-out drawings, augmented),
first-order MAML as _FOWrapper (100 steps, outer lr 0.5: the gradient of the last training mini-batch
before the last step, `meta_training_task`), `ft` (pretraining by SGD on the training alphabets' mixed
mini-batches, then fine-tuning; `head: shared`, PAPER's, as the official code runs it: model.py's
multi-headed Linear is `nn.ModuleList([_linear_factory()] * NUM_CLASSES)`, the same Linear in every
slot, so every alphabet trains one head, and FtWrapper.run_tasks never calls init_adaptation at test,
so fine-tuning starts from the pretrained head; the default `per_alphabet` is the multi-headed design
the name suggests: a head per training alphabet, a fresh head at test) and `scratch` (the
official `no`, renamed as YAML reads a key `no` as false: training each test task from the seeded
initialisation). MAML and FOMAML test with the benchmark's steps (100, the official task_val_steps),
as every method.

Pipeline: a benchmark with `task: alphabets` (params.yaml's paper profile: `omniglot-alphabets`, the
settings of PAPER) runs through `metalearn split` (make_episodes: the alphabet split), `metalearn
train` (train: resumable) and `metalearn evaluate` (evaluate: one episode per test alphabet), which
dispatch here (metalearn.families); `python -m metalearn.alphabets` runs the same functions in one command.

Tasks run one at a time here (`parallel_tasks` off): the BatchNorm running statistics are the
module's own buffers and mini-batches and transforms draw from torch's generator.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from metalearn.algorithms import build_algorithm
from metalearn.config import Run
from metalearn.errors import BadFile, BadInput
from metalearn.models import OmniConv
from metalearn.tasks import Objective, Task

TASK = "alphabets"  # params.yaml's `task` of the protocol's benchmark (paper profile: omniglot-alphabets)
METHODS = ("warpleap", "leap", "reptile", "maml", "fomaml", "ft", "scratch")
DRAWINGS = 20  # per Omniglot character
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


def alphabet_task(images: Tensor, characters: Tensor, background: int = 0) -> Task:
    """One alphabet's task: support = its characters' 15 training drawings, query = their 5 held-out
    drawings; labels 0..ways-1 in the order of `characters`; images float in [0, 1], [n, 1, 28, 28].
    `background`: the value of the background (the cache's strokes are 255 on 0; 1: the official
    ToTensor images, strokes 0 on 1, so augment's fill 0 is stroke-coloured, as theirs)."""
    drawings = images[characters].float().div(255).unsqueeze(2)  # [ways, 20, 1, 28, 28]
    if background:
        drawings = 1 - drawings
    labels = torch.arange(len(characters)).view(-1, 1)
    train, test = drawings[:, HOLD_OUT:], drawings[:, :HOLD_OUT]
    return Task(support=(train.flatten(0, 1), labels.expand(-1, train.shape[1]).flatten()),
                query=(test.flatten(0, 1), labels.expand(-1, HOLD_OUT).flatten()))


def augment(images: Tensor) -> Tensor:
    """Each image through its own draw of data.py's RandomAffine (torch's generator)."""
    from torchvision import transforms  # here: see omniglot._load_image

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

    @property
    def batches_tasks(self) -> bool:
        """Never a chunk of tasks at once (maml.py's batched path reads whole support sets, not `draw`)."""
        return False

    def draw(self, data):
        inputs, targets = data
        if len(inputs) > self.batch_size:
            chosen = torch.randperm(len(inputs))[:self.batch_size]
            inputs, targets = inputs[chosen], targets[chosen]
        return (augment(inputs) if self.augment else inputs), targets


# -- the protocol ----------------------------------------------------------------------------------

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


def meta_batch(alphabets: int, size: int, generator: torch.Generator) -> list[int]:
    """One meta-step's training-alphabet indices: shuffled cycles through the alphabets, cut at
    `size` (DataContainer.train: shuffle, extend, cut; a fresh draw every meta-step)."""
    pending: list[int] = []
    while len(pending) < size:
        pending += torch.randperm(alphabets, generator=generator).tolist()
    return pending[:size]


def meta_training_task(method: str, task: Task, objective: MiniBatchObjective) -> Task:
    """What one meta-step sees of a training alphabet (support: its training drawings, query: its
    held-out ones), as the official wrappers feed it:
      * maml: adapts on mini-batches of training drawings, its meta-objective the loss on the held-out
        drawings (maml_task's outer loader: dataset.eval(), all of them, through the same transform).
      * fomaml (_FOWrapper, _all_grads False): the meta-gradient is the gradient of the last of the
        `steps` training mini-batches at the point before the last step, i.e. FOMAML with steps - 1
        inner steps (build_learner) whose query is one more augmented mini-batch of training drawings.
      * the others read the training drawings only (query = support: Reptile and Leap only report
        metrics on it; Warp-Leap's meta-objective draws its mini-batches from it, as updaters.py).
    Deviation: the official MAML meta-loss also adds the last inner step's training loss (maml_task's
    `loss +=` continues the inner loop's variable); ours is the held-out loss alone."""
    if method == "maml":
        return Task(task.support, (augment(task.query[0]), task.query[1]))
    if method == "fomaml":
        return Task(task.support, objective.draw(task.support))
    return Task(task.support, task.support)


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


# -- the pipeline's benchmark (`task: alphabets`): split, train, evaluate ------------------------

EPISODE_SETTINGS = ("task", "dataset", "ways", "train_alphabets", "test_alphabets", "split_seed")
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def episode_settings(bench: dict) -> dict:
    """What the saved alphabet split depends on (stored with it, checked on use)."""
    return {k: bench[k] for k in EPISODE_SETTINGS}


def load_split(params: dict, bench: dict) -> tuple[Tensor, AlphabetSplit]:
    """The prepared Omniglot images and the benchmark's alphabet split of them."""
    from metalearn.benchmarks import prepared_path
    from metalearn.data import omniglot

    images, classes = omniglot.load(prepared_path(params, bench["dataset"]))
    try:
        split = split_alphabets(classes, bench["ways"], bench["train_alphabets"], bench["test_alphabets"],
                                bench["split_seed"])
    except ValueError as exc:
        raise BadInput(f"train_alphabets + test_alphabets: {exc}") from None
    return images, split


def make_episodes(params: dict, bench_name: str) -> Path:
    """`metalearn split`: the alphabets of each split and their characters (indices into the prepared
    cache), so evaluation scores exactly the test alphabets training never saw."""
    from metalearn.benchmarks import episodes_path
    from metalearn.data.episodes import save_episodes

    bench = params["benchmarks"][bench_name]
    _, split = load_split(params, bench)
    saved: dict[str, Any] = {"settings": episode_settings(bench)}
    for part in ("train", "val", "test"):
        chosen = getattr(split, part)
        characters = [c for _, c in chosen]
        saved[part] = {"alphabets": [a for a, _ in chosen], "characters": torch.stack(characters) if characters
                       else torch.empty(0, bench["ways"], dtype=torch.long)}
    path = episodes_path(params, bench_name)
    save_episodes(saved, path)
    return path


def source_files(method: str) -> list[Path]:
    """The files whose edits change a run: this module, models.py, tasks.py and the algorithm files
    of the method (the baselines adapt with reptile.py's plain SGD)."""
    from metalearn import algorithms, models, tasks

    files = [Path(inspect.getsourcefile(m)).resolve() for m in (sys.modules[__name__], models, tasks)]
    name = {"ft": "reptile", "scratch": "reptile"}.get(method, method)
    return files + [p for p in algorithms.source_files(name) if p not in files]


def config_hash(config: dict) -> str:
    from metalearn.train import settings_digest

    return settings_digest(config, source_files(config["algorithm"]))


def train(params: dict, bench_name: str, method: str, seed: int, out_dir: Path, device: str = "auto",
          tracker=None, log: Log = _stderr) -> Path:
    """Meta-train `method` on the training alphabets (the loop of metalearn.train, resumable: every
    `checkpoint_every` meta-steps the network, the heads (ft), the optimiser and both random states
    are saved); `scratch` has nothing to learn and saves its seeded initialisation. Writes
    out_dir/model.pt and history.json."""
    from metalearn.train import Cadence, pick_device, run_loop

    dev = pick_device(device)
    run = Run.of(params, bench_name, method, seed)
    bench, cfg, hparams = run.settings, run.train, run.hparams
    algo = build_learner(method, bench, hparams, seed).to(dev)
    images, split = load_split(params, bench)
    tasks = [_on(alphabet_task(images, chars, bench.get("background", 0)), dev) for _, chars in split.train]
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


def _on(task: Task, device) -> Task:
    return Task(tuple(t.to(device) for t in task.support), tuple(t.to(device) for t in task.query))


def load_learner(saved: dict, model_path: Path, device):
    config = saved["config"]
    try:
        algo = build_learner(config["algorithm"], config["settings"], config["hparams"], config["seed"]).to(device)
        algo.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BadFile(f"{model_path}: its settings or parameters do not make a multi-shot {config['algorithm']} "
                      f"learner ({type(exc).__name__}: {str(exc)[:300]}); train it again (`metalearn train`)") from None
    return algo


def evaluate(params: dict, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
             steps: int | None = None, log: Log = _stderr) -> dict:
    """The evaluation record of metalearn.evaluate for a multi-shot model: one episode per alphabet of
    the saved split (`metalearn split`), its accuracy (%) on the held-out drawings after `steps`
    (default: the benchmark's) SGD steps on its training drawings (`evaluate_alphabet`); mini-batches
    drawn from torch's generator seeded with the run's seed, so a rerun gives the same numbers."""
    from metalearn.benchmarks import read_current_episodes
    from metalearn.stats import mean_ci95
    from metalearn.train import pick_device

    config = saved["config"]
    bench_name = config["benchmark"]
    bench = params["benchmarks"][bench_name]
    dev = pick_device(device)
    algo = load_learner(saved, model_path, dev)
    chosen = read_current_episodes(params, bench_name, episode_settings(bench))[split]
    images, _ = load_split(params, bench)
    steps = bench["steps"] if steps is None else steps
    torch.manual_seed(config["seed"])
    values = []
    for alphabet, characters in zip(chosen["alphabets"], chosen["characters"]):
        task = alphabet_task(images, characters, bench.get("background", 0))
        values.append(100.0 * evaluate_alphabet(algo, _on(task, dev), steps))
        log(f"[evaluate {bench_name}/{config['algorithm']}/seed{config['seed']}] {alphabet}: {values[-1]:.1f}%")
    mean, ci95 = mean_ci95(values)
    return {"benchmark": bench_name, "algorithm": config["algorithm"], "seed": config["seed"], "split": split,
            "ways": bench["ways"], "shots": DRAWINGS - HOLD_OUT, "metric": "accuracy", "mean": mean, "ci95": ci95,
            "episodes": len(values), "inner_steps": steps, "iterations": saved.get("iterations"),
            "train_seconds": saved["train_seconds"], "per_episode": values, "alphabets": list(chosen["alphabets"])}


# -- settings and command line ---------------------------------------------------------------------

# The official protocol (main.py's defaults; run_multi.py's learning rates and steps: maml and fomaml
# inner 0.1, outer 0.5, maml 5 training steps; the others 0.1 and 0.1; the paper sweeps the number of
# training alphabets, run_multi.py --npres 1 3 5 10 15 20 25). params.yaml's paper profile holds the
# same as its `omniglot-alphabets` benchmark (tests/test_alphabets.py checks they agree).
PAPER = {
    # the official pixels (module docstring, "Pixels"): binary, background 1
    "task": TASK, "model": "omniconv", "dataset": "omniglot-binary", "background": 1, "ways": 20,
    "train_alphabets": 25, "test_alphabets": 10,
    "split_seed": 8879, "steps": 100, "batch_size": 128, "filters": 64,
    "train": {"meta_batch": 20, "iterations": 1000, "checkpoint_every": 20, "log_every": 10},
    "algorithms": {
        # Warp-Leap with the official updater (updaters.py): one SGD step per buffered point, shuffled;
        # the official meta-objective's step, phi's gradient not through the inner gradient (inner_grad
        # detached: src/warpgrad/warpgrad/utils.py lines 85, 117-122; algorithms/warpgrad.py)
        "warpleap": {"inner_lr": 0.1, "meta_update": "per_point", "shuffle_buffer": True, "warp_lr": 0.1,
                     "init_lr": 0.1, "inner_grad": "detached", "final_point": False},
        # Leap's and Warp-Leap's paths end at theta_{K-1}, the point before the last step (final_point
        # false: wrapper.py run_batches lines 126-136, updaters.py simplified_leap lines 146-151)
        "leap": {"inner_lr": 0.1, "meta_lr": 0.1, "final_point": False},
        "reptile": {"inner_lr": 0.1, "meta_lr": 0.1},
        "maml": {"inner_lr": 0.1, "meta_lr": 0.5, "inner_steps": 5},
        "fomaml": {"inner_lr": 0.1, "meta_lr": 0.5},
        # one head shared by all alphabets and kept at test (model.py line 180; wrapper.py lines 560-583)
        "ft": {"inner_lr": 0.1, "head": "shared"},
        "scratch": {"inner_lr": 0.1}}}
# CPU-sized settings (the run of docs/notes/multishot-omniglot.md): 10 training
# alphabets, 50 steps of 32 images, meta-batch 3, 12 meta-steps, 32 filters; the rest is PAPER's.
CPU = {**PAPER, "train_alphabets": 10, "split_seed": 1, "steps": 50, "batch_size": 32, "filters": 32,
       "train": {"meta_batch": 3, "iterations": 12, "checkpoint_every": 4, "log_every": 4}}


def main(argv: list[str] | None = None) -> None:
    """python -m metalearn.alphabets --settings cpu|paper --data <root> [--methods ...] [--out results.json]:
    split, train and evaluate as the pipeline's jobs do (models under --work)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--data", default="data", help="data root holding prepared/omniglot-binary.pt "
                        "(the settings' dataset: metalearn prepare --dataset omniglot-binary)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("models-alphabets"), help="folder for the models")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    name = f"omniglot-alphabets-{args.settings}"
    params = {"profile": args.settings, "data": {"root": args.data},
              "benchmarks": {name: CPU if args.settings == "cpu" else PAPER}}
    make_episodes(params, name)
    results = {}
    for method in args.methods:
        start = time.process_time()
        model = train(params, name, method, args.seed, args.work / method, device="cpu", log=lambda s: None)
        result = evaluate(params, model, torch.load(model, weights_only=True), log=lambda s: None)
        result["cpu_seconds"] = time.process_time() - start
        print(f"{method}: {result['mean']:.1f} +- {result['ci95']:.1f} % ({result['episodes']} test alphabets, "
              f"{result['cpu_seconds']:.0f} CPU-s)", flush=True)
        results[method] = result
    if args.out:
        args.out.write_text(json.dumps({"settings": params["benchmarks"][name], "results": results}, indent=1))


if __name__ == "__main__":
    main()
