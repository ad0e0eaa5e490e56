"""Episodes: sampled on the fly for meta-training, generated once and saved for evaluation.

Saved episodes hold indices only (classes, drawings and, with `rotations: per_task`, each class's
multiple of 90 degrees for classification; task parameters and input points for regression), so every algorithm is evaluated on the identical episodes. All
sampling is tensor indexing driven by one ``torch.Generator``: no Python loop per image, and the
generator's state is checkpointed so a resumed training draws the same episodes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from metalearn.tasks import TaskBatch

# -- classification (Omniglot and the like) -------------------------------------------------------


def with_rotations(images: Tensor) -> Tensor:
    """[C, D, H, W] -> [4C, D, H, W]: every class also rotated by 90, 180 and 270 degrees (new classes)."""
    rotated = [torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]
    return torch.stack(rotated, dim=1).flatten(0, 1)


def draw_rotations(n_episodes: int, ways: int, generator: torch.Generator) -> Tensor:
    """[E, ways] multiples of 90 degrees (0-3), uniform and independent: one per class of each
    episode (cbfinn/maml data_generator.py: `tf.multinomial(tf.log([[1., 1., 1., 1.]]), num_classes)`
    per task, in meta-training and at test alike)."""
    return torch.randint(4, (n_episodes, ways), generator=generator)


def rotate_classes(picked: Tensor, rotations: Tensor) -> Tensor:
    """picked [B, ways, n, H, W] with class (b, w)'s images rotated by rotations[b, w] x 90 degrees
    counter-clockwise (torch.rot90, as tf.image.rot90)."""
    out = picked.clone()
    for k in (1, 2, 3):
        chosen = rotations == k
        out[chosen] = torch.rot90(picked[chosen], k, dims=(-2, -1))
    return out


def draw_episodes(n_episodes: int, n_classes: int, n_drawings: int, ways: int, per_class: int,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Class indices [E, ways] (distinct per episode) and drawing indices [E, ways, per_class]."""
    classes = torch.rand(n_episodes, n_classes, generator=generator).argsort(dim=1)[:, :ways]
    drawings = torch.rand(n_episodes, ways, n_drawings, generator=generator).argsort(dim=2)[..., :per_class]
    return classes, drawings


def gather_tasks(images: Tensor, classes: Tensor, drawings: Tensor, shots: int,
                 rotations: Tensor | None = None) -> TaskBatch:
    """Build a TaskBatch from uint8 images [C, D, H, W] and episode indices.

    Support: the first `shots` drawings of each class, query: the rest; label = position of the
    class in the episode. Inputs are float in [0, 1] with a channel axis: [B, ways*n, 1, H, W].
    `rotations` [B, ways] (rotations: per_task): each class's images turned by that many 90 degrees.
    """
    batch, ways, per_class = drawings.shape
    picked = images[classes.unsqueeze(-1), drawings]  # [B, ways, per_class, H, W]
    if rotations is not None:
        picked = rotate_classes(picked, rotations)
    picked = picked.unsqueeze(3).float().div_(255.0)  # channel axis
    labels = torch.arange(ways, device=images.device).view(1, ways, 1).expand(batch, ways, per_class)
    support_x, query_x = picked[:, :, :shots], picked[:, :, shots:]
    support_y, query_y = labels[:, :, :shots], labels[:, :, shots:]
    return TaskBatch(support_x.flatten(1, 2), support_y.flatten(1, 2),
                     query_x.flatten(1, 2), query_y.flatten(1, 2))


class ClassificationSampler:
    """On-the-fly N-way K-shot meta-training tasks over a class pool held on the device as uint8.
    `rotate`: each class of a task turned by a random multiple of 90 degrees (`draw_rotations`),
    drawn after the classes and drawings."""

    def __init__(self, images: Tensor, ways: int, shots: int, queries: int, generator: torch.Generator,
                 rotate: bool = False):
        self.images, self.ways, self.shots, self.queries = images, ways, shots, queries
        self.generator, self.rotate = generator, rotate

    def sample(self, batch: int) -> TaskBatch:
        classes, drawings = draw_episodes(batch, self.images.shape[0], self.images.shape[1],
                                          self.ways, self.shots + self.queries, self.generator)
        rotations = draw_rotations(batch, self.ways, self.generator) if self.rotate else None
        device = self.images.device
        return gather_tasks(self.images, classes.to(device), drawings.to(device), self.shots,
                            None if rotations is None else rotations.to(device))


# -- classification within one alphabet (Omniglot, `within_alphabet: true`) ----------------------
# A part's classes come grouped by alphabet: alphabet a holds classes offsets[a]:offsets[a + 1]. An
# episode draws its alphabet uniformly among those holding at least `ways` classes, then `ways`
# distinct classes of it uniformly, then the drawings as `draw_episodes`.


def draw_alphabet_episodes(n_episodes: int, offsets: Tensor, n_drawings: int, ways: int, per_class: int,
                           generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Class indices [E, ways] (distinct, all of one alphabet per episode) and drawing indices
    [E, ways, per_class]. Alphabets of fewer than `ways` classes are never drawn."""
    sizes = offsets.diff()
    eligible = (sizes >= ways).nonzero().flatten()
    if len(eligible) == 0:
        raise ValueError(f"{ways} classes within one alphabet requested, but the largest alphabet holds {int(sizes.max())}")
    alphabet = eligible[torch.randint(len(eligible), (n_episodes,), generator=generator)]
    keys = torch.rand(n_episodes, int(sizes.max()), generator=generator)
    keys[torch.arange(int(sizes.max())) >= sizes[alphabet].unsqueeze(-1)] = 2.0  # past the alphabet's end: never drawn
    classes = offsets[alphabet].unsqueeze(-1) + keys.argsort(dim=1)[:, :ways]
    drawings = torch.rand(n_episodes, ways, n_drawings, generator=generator).argsort(dim=2)[..., :per_class]
    return classes, drawings


def rotated_alphabets(images: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Rotations as new alphabets: [C, D, H, W] -> [4C, ...], the whole part turned by 0, 90, 180, 270
    degrees one after the other, and offsets for the 4 x alphabets (alphabet a turned k times: a new
    alphabet of the same size). Within one alphabet, an episode's classes then share one rotation,
    as the upright test alphabets' do."""
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    count = images.shape[0]
    starts = torch.cat([offsets[:-1] + k * count for k in range(4)])
    return rotated, torch.cat([starts, torch.tensor([4 * count])])


class AlphabetSampler:
    """On-the-fly meta-training tasks whose classes all come from one alphabet (`draw_alphabet_episodes`)."""

    def __init__(self, images: Tensor, offsets: Tensor, ways: int, shots: int, queries: int,
                 generator: torch.Generator):
        self.images, self.offsets, self.ways, self.shots, self.queries = images, offsets.cpu(), ways, shots, queries
        self.generator = generator

    def sample(self, batch: int) -> TaskBatch:
        classes, drawings = draw_alphabet_episodes(batch, self.offsets, self.images.shape[1], self.ways,
                                                   self.shots + self.queries, self.generator)
        device = self.images.device
        return gather_tasks(self.images, classes.to(device), drawings.to(device), self.shots)


# -- classification over classes of different sizes (mini-/tiered-ImageNet) -----------------------
# A pool is one uint8 array [N, channels, H, W] grouped by class, plus `offsets` [classes + 1]:
# class c holds images[offsets[c]:offsets[c + 1]] (tiered-ImageNet's classes hold 732 to 1300 images).


def draw_pool_episodes(n_episodes: int, sizes: Tensor, ways: int, per_class: int,
                       generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """As `draw_episodes`, for classes holding `sizes` images: drawing indices stay below the size of
    their class. With equal sizes it draws exactly what `draw_episodes` draws."""
    if per_class > int(sizes.min()):
        raise ValueError(f"{per_class} images per class requested, but a class holds only {int(sizes.min())}")
    classes = torch.rand(n_episodes, len(sizes), generator=generator).argsort(dim=1)[:, :ways]
    keys = torch.rand(n_episodes, ways, int(sizes.max()), generator=generator)
    beyond = torch.arange(int(sizes.max())) >= sizes[classes].unsqueeze(-1)
    keys[beyond] = 2.0  # above every uniform key: indices past a class's end are sorted last, never drawn
    return classes, keys.argsort(dim=2)[..., :per_class]


def gather_pool_tasks(images: Tensor, offsets: Tensor, classes: Tensor, drawings: Tensor, shots: int) -> TaskBatch:
    """A TaskBatch from a pool and episode indices, laid out as `gather_tasks`' (support: the first
    `shots` drawings of each class; label = the class's position in the episode); inputs are float in
    [0, 1], [B, ways*n, channels, H, W]."""
    batch, ways, per_class = drawings.shape
    picked = images[offsets[classes].unsqueeze(-1) + drawings].float().div_(255.0)  # [B, ways, n, C, H, W]
    labels = torch.arange(ways, device=picked.device).view(1, ways, 1).expand(batch, ways, per_class)
    return TaskBatch(picked[:, :, :shots].flatten(1, 2), labels[:, :, :shots].flatten(1, 2),
                     picked[:, :, shots:].flatten(1, 2), labels[:, :, shots:].flatten(1, 2))


class PoolSampler:
    """On-the-fly N-way K-shot meta-training tasks over a pool (images and offsets on one device)."""

    def __init__(self, images: Tensor, offsets: Tensor, ways: int, shots: int, queries: int,
                 generator: torch.Generator):
        self.images, self.offsets, self.ways, self.shots, self.queries = images, offsets, ways, shots, queries
        self.sizes = offsets.diff().cpu()  # the generator draws on the CPU
        self.generator = generator

    def sample(self, batch: int) -> TaskBatch:
        classes, drawings = draw_pool_episodes(batch, self.sizes, self.ways, self.shots + self.queries,
                                               self.generator)
        device = self.images.device
        return gather_pool_tasks(self.images, self.offsets, classes.to(device), drawings.to(device), self.shots)


def make_pool_eval_episodes(bench: dict, sizes: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """As `make_eval_episodes`, over pools whose classes hold `sizes[split]` images."""
    generator = torch.Generator().manual_seed(bench["episode_seed"])
    episodes = {}
    for split, count in (("val", bench["val_tasks"]), ("test", bench["test_tasks"])):
        classes, drawings = draw_pool_episodes(count, sizes[split], bench["ways"],
                                               bench["shots"] + bench["eval_queries"], generator)
        episodes[split] = {"classes": classes, "drawings": drawings}
    return episodes


# -- regression (sinusoid) ------------------------------------------------------------------------

SINUSOID = {"amplitude": (0.1, 5.0), "phase": (0.0, math.pi), "x": (-5.0, 5.0)}


def _uniform(shape, bounds, generator) -> Tensor:
    low, high = bounds
    return torch.rand(*shape, generator=generator) * (high - low) + low


def draw_sinusoids(n_tasks: int, n_points: int, generator: torch.Generator,
                   frequency: tuple[float, float] | None = None) -> dict[str, Tensor]:
    """Task parameters and input points, as in the MAML paper: y = A sin(x - phase). With a
    `frequency` range (MT-net's protocol, yoonholee/MT-net data_generator.py): y = A sin(f x - phase),
    f drawn from it after the phase; without one nothing else is drawn, so MAML's tasks stay the same."""
    drawn = {"amplitude": _uniform((n_tasks, 1), SINUSOID["amplitude"], generator),
             "phase": _uniform((n_tasks, 1), SINUSOID["phase"], generator)}
    if frequency is not None:
        drawn["frequency"] = _uniform((n_tasks, 1), tuple(frequency), generator)
    drawn["x"] = _uniform((n_tasks, n_points), SINUSOID["x"], generator)
    return drawn


def sinusoid_tasks(episodes: dict[str, Tensor], shots: int) -> TaskBatch:
    """Support: the first `shots` points of each task, query: the rest. `info` holds the task's
    true parameters [amplitude, phase(, frequency)], the oracle baseline's extra inputs."""
    x = episodes["x"]
    frequency = episodes.get("frequency")
    y = episodes["amplitude"] * torch.sin((x if frequency is None else frequency * x) - episodes["phase"])
    info = torch.cat([episodes[k] for k in ("amplitude", "phase", "frequency") if k in episodes], dim=1)
    x, y = x.unsqueeze(-1), y.unsqueeze(-1)  # [B, points, 1]
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], info)


class SinusoidSampler:
    def __init__(self, shots: int, queries: int, generator: torch.Generator, device="cpu",
                 frequency: tuple[float, float] | None = None):
        self.shots, self.queries, self.generator, self.device = shots, queries, generator, device
        self.frequency = frequency

    def sample(self, batch: int) -> TaskBatch:
        drawn = draw_sinusoids(batch, self.shots + self.queries, self.generator, self.frequency)
        return sinusoid_tasks(drawn, self.shots).to(self.device)


# -- regression (polynomials of a given degree; Lee & Choi 2018) -----------------------------------

# The official MT-net code (poly_generator.py): c_i ~ U[-1, 1] / 2^i, so that the terms of
# y = sum_i c_i x^i stay of similar size for x ~ U[-2, 2].
POLYNOMIAL = {"coefficient": (-1.0, 1.0), "x": (-2.0, 2.0)}


def draw_polynomials(n_tasks: int, n_points: int, degree: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Coefficients c_0..c_degree and input points of random polynomials of `degree`."""
    scale = 2.0 ** -torch.arange(degree + 1, dtype=torch.float32)
    return {"coefficients": _uniform((n_tasks, degree + 1), POLYNOMIAL["coefficient"], generator) * scale,
            "x": _uniform((n_tasks, n_points), POLYNOMIAL["x"], generator)}


def polynomial_tasks(episodes: dict[str, Tensor], shots: int) -> TaskBatch:
    x, c = episodes["x"], episodes["coefficients"]
    powers = x.unsqueeze(-1) ** torch.arange(c.shape[1], dtype=x.dtype)  # [B, points, degree + 1]
    y = (powers * c.unsqueeze(1)).sum(-1)
    x, y = x.unsqueeze(-1), y.unsqueeze(-1)  # [B, points, 1]
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


class PolynomialSampler:
    def __init__(self, degree: int, shots: int, queries: int, generator: torch.Generator, device="cpu"):
        self.degree, self.shots, self.queries = degree, shots, queries
        self.generator, self.device = generator, device

    def sample(self, batch: int) -> TaskBatch:
        drawn = draw_polynomials(batch, self.shots + self.queries, self.degree, self.generator)
        return polynomial_tasks(drawn, self.shots).to(self.device)


def make_polynomial_eval_episodes(bench: dict) -> dict[str, dict[str, Tensor]]:
    """{'val': ..., 'test': ...}: the saved polynomial tasks of a benchmark (seeded, deterministic)."""
    generator = torch.Generator().manual_seed(bench["episode_seed"])
    return {split: draw_polynomials(bench[f"{split}_tasks"], bench["shots"] + bench["eval_queries"],
                                    bench["degree"], generator) for split in ("val", "test")}


# -- saved evaluation episodes --------------------------------------------------------------------


def make_eval_episodes(bench: dict, split_class_counts: dict[str, int] | None,
                       alphabet_offsets: dict[str, Tensor] | None = None) -> dict[str, dict[str, Tensor]]:
    """{'val': ..., 'test': ...} index tensors for a benchmark's saved episodes (seeded, deterministic).
    `alphabet_offsets` (within_alphabet): each part's alphabets as offsets into its classes."""
    generator = torch.Generator().manual_seed(bench["episode_seed"])
    episodes = {}
    for split, count in (("val", bench["val_tasks"]), ("test", bench["test_tasks"])):
        if bench["task"] == "sinusoid":
            episodes[split] = draw_sinusoids(count, bench["shots"] + bench["eval_queries"], generator,
                                             bench.get("frequency"))
        elif bench.get("within_alphabet"):
            classes, drawings = draw_alphabet_episodes(count, alphabet_offsets[split], 20, bench["ways"],
                                                       bench["shots"] + bench["eval_queries"], generator)
            episodes[split] = {"classes": classes, "drawings": drawings}
        else:
            classes, drawings = draw_episodes(count, split_class_counts[split], 20, bench["ways"],
                                              bench["shots"] + bench["eval_queries"], generator)
            episodes[split] = {"classes": classes, "drawings": drawings}
            if bench.get("rotations") == "per_task":  # part of the episode: saved with it
                episodes[split]["rotations"] = draw_rotations(count, bench["ways"], generator)
    return episodes


def save_episodes(episodes: dict[str, Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(episodes, tmp)
    os.replace(tmp, path)


def load_episodes(path: Path) -> dict[str, Tensor]:
    return torch.load(path, weights_only=True)
