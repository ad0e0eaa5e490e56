"""The multi-shot protocol's tasks: one alphabet per task, its characters' drawings split into training
and held-out images, mini-batches and augmentation as the official data.py; the saved alphabet split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metalearn import dependencies
from metalearn.config import Benchmark
from metalearn.errors import BadInput
from metalearn.tasks import Objective, Task

TASK = "alphabets"  # params.yaml's `task` of the protocol's benchmark (paper profile: omniglot-alphabets)
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


# What the saved alphabet split depends on (stored with it, checked on use)
EPISODE_SETTINGS = dependencies.ALPHABETS_EPISODE_SETTINGS
episode_settings = dependencies.alphabets_episode_settings


def load_split(benchmark: Benchmark) -> tuple[Tensor, AlphabetSplit]:
    """The prepared Omniglot images and the benchmark's alphabet split of them."""
    from metalearn.benchmarks import prepared_path
    from metalearn.data import omniglot

    bench = benchmark.settings
    images, classes = omniglot.load(prepared_path(benchmark.params, bench["dataset"]))
    try:
        split = split_alphabets(classes, bench["ways"], bench["train_alphabets"], bench["test_alphabets"],
                                bench["split_seed"])
    except ValueError as exc:
        raise BadInput(f"train_alphabets + test_alphabets: {exc}") from None
    return images, split


def make_episodes(benchmark: Benchmark) -> Path:
    """`metalearn split`: the alphabets of each split and their characters (indices into the prepared
    cache), so evaluation scores exactly the test alphabets training never saw."""
    from metalearn.data.episodes import save_episodes

    bench = benchmark.settings
    _, split = load_split(benchmark)
    saved: dict[str, Any] = {"settings": episode_settings(bench)}
    for part in ("train", "val", "test"):
        chosen = getattr(split, part)
        characters = [c for _, c in chosen]
        saved[part] = {"alphabets": [a for a, _ in chosen], "characters": torch.stack(characters) if characters
                       else torch.empty(0, bench["ways"], dtype=torch.long)}
    save_episodes(saved, benchmark.episodes_path)
    return benchmark.episodes_path


def on_device(task: Task, device) -> Task:
    return Task(tuple(t.to(device) for t in task.support), tuple(t.to(device) for t in task.query))
