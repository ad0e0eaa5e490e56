"""From a benchmark's settings to its pieces: network, objective, task samplers, saved episodes
(their files: metalearn.paths; the settings they depend on: metalearn.dependencies)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from metalearn.config import Benchmark
from metalearn.data import episodes as ep
from metalearn.data import imagenet, omniglot
from metalearn.data.imagenet_files import DATASETS as IMAGENET_DATASETS
from metalearn.data.omniglot_splits import split_sizes
from metalearn.dependencies import episode_settings
from metalearn.errors import BadFile
from metalearn.models import build_model
from metalearn.paths import episodes_path, prepared_path  # noqa: F401 (episodes_path: callers' benchmarks.episodes_path)
from metalearn.tasks import Objective, TaskBatch


def objective_kind(bench: dict) -> str:
    return "regression" if bench["task"] in ("sinusoid", "polynomial") else "classification"


def build_objective(bench: dict, extra_inputs: int = 0) -> Objective:
    return Objective(build_model(bench, extra_inputs), objective_kind(bench))


def task_parameter_count(bench: dict) -> int:
    """How many true parameters a task of this benchmark has (what the oracle baseline is given):
    sinusoids: amplitude and phase, and the frequency where it varies."""
    if bench["task"] != "sinusoid":
        raise ValueError(f"task {bench['task']!r}: only sinusoid tasks expose their parameters (oracle baseline)")
    return 3 if bench.get("frequency") else 2


def metric_name(bench: dict) -> str:
    return "mse" if bench["task"] in ("sinusoid", "polynomial") else "accuracy"


def load_split_images(benchmark: Benchmark) -> dict[str, torch.Tensor]:
    """uint8 images [classes, 20, 28, 28] of each split of a classification benchmark."""
    bench = benchmark.settings
    images, classes = omniglot.load(prepared_path(benchmark.params, bench["dataset"]))
    splits = omniglot.split_classes(classes, bench["dataset"], bench["split"], bench["split_seed"])
    return {name: images[index] for name, index in splits.items()}


def load_split_alphabets(benchmark: Benchmark) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Omniglot with `within_alphabet`: {split: (uint8 images [classes, 20, 28, 28], alphabet offsets)},
    the classes of each split grouped by alphabet (omniglot.alphabet_offsets)."""
    bench = benchmark.settings
    images, classes = omniglot.load(prepared_path(benchmark.params, bench["dataset"]))
    splits = omniglot.split_classes(classes, bench["dataset"], bench["split"], bench["split_seed"])
    return {name: (images[index], omniglot.alphabet_offsets([classes[i] for i in index.tolist()])[1])
            for name, index in splits.items()}


def load_split_pools(benchmark: Benchmark) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """mini-/tiered-ImageNet: {split: (uint8 images [N, 3, 84, 84] grouped by class, offsets)}, checked
    against the benchmark's ways and shots (the prepared data may be a subset of the standard splits)."""
    pools = imagenet.split_pools(imagenet.load(prepared_path(benchmark.params, benchmark.settings["dataset"])))
    imagenet.check_fits(pools, benchmark.settings, benchmark.name)
    return pools


def train_sampler(benchmark: Benchmark, generator: torch.Generator, device: torch.device):
    bench = benchmark.settings
    if bench["task"] == "sinusoid":
        return ep.SinusoidSampler(bench["shots"], bench["queries"], generator, device, bench.get("frequency"))
    if bench["task"] == "polynomial":
        return ep.PolynomialSampler(bench["degree"], bench["shots"], bench["queries"], generator, device)
    if bench["task"] in IMAGENET_DATASETS:
        images, offsets = load_split_pools(benchmark)["train"]
        return ep.PoolSampler(images.to(device), offsets.to(device), bench["ways"], bench["shots"],
                              bench["queries"], generator)
    # rotations (Omniglot): `classes` (default) adds every class turned by 90, 180 and 270 degrees as
    # new meta-training classes; `per_task` (cbfinn/maml data_generator.py) turns each class of each
    # task by a random multiple of 90 degrees, at meta-test too (saved with the episodes)
    if bench.get("within_alphabet"):  # every task within one alphabet; a rotated alphabet is a new alphabet
        images, offsets = ep.rotated_alphabets(*load_split_alphabets(benchmark)["train"])
        return ep.AlphabetSampler(images.to(device), offsets, bench["ways"], bench["shots"], bench["queries"],
                                  generator)
    pool = load_split_images(benchmark)["train"]
    per_task = bench.get("rotations", "classes") == "per_task"
    pool = (pool if per_task else ep.with_rotations(pool)).to(device)
    return ep.ClassificationSampler(pool, bench["ways"], bench["shots"], bench["queries"], generator, per_task)


class StaleEpisodes(RuntimeError):
    """Saved episodes that belong to other benchmark settings."""


def make_episodes(benchmark: Benchmark) -> Path:
    bench, path = benchmark.settings, benchmark.episodes_path
    if bench["task"] in IMAGENET_DATASETS:  # classes of different sizes: drawings depend on the data
        sizes = {split: offsets.diff() for split, (_, offsets) in load_split_pools(benchmark).items()}
        ep.save_episodes({**ep.make_pool_eval_episodes(bench, sizes), "settings": episode_settings(bench)}, path)
        return path
    if bench["task"] == "polynomial":
        ep.save_episodes({**ep.make_polynomial_eval_episodes(bench), "settings": episode_settings(bench)}, path)
        return path
    counts = offsets = None
    if bench["task"] != "sinusoid":
        counts = split_sizes(bench["dataset"], bench["split"], bench["split_seed"])
    if bench.get("within_alphabet"):  # the alphabets of each part: from the prepared class names
        offsets = {split: alphabet_offsets for split, (_, alphabet_offsets) in load_split_alphabets(benchmark).items()}
    ep.save_episodes({**ep.make_eval_episodes(bench, counts, offsets), "settings": episode_settings(bench)}, path)
    return path


def read_episodes(path: Path, bench_name: str) -> dict:
    """A benchmark's saved episodes; a missing, unreadable or foreign file is a BadFile naming it."""
    if not path.exists():
        raise BadFile(f"{path}: no saved episodes for {bench_name}; run `metalearn split -b {bench_name}` first")
    try:
        episodes = ep.load_episodes(path)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise BadFile(f"{path}: not a readable episode file ({type(exc).__name__}); "
                      f"run `metalearn split -b {bench_name}` to write it again") from None
    if not (isinstance(episodes, dict) and isinstance(episodes.get("settings"), dict)
            and "val" in episodes and "test" in episodes):
        raise BadFile(f"{path}: not a file of saved episodes; run `metalearn split -b {bench_name}` to write it again")
    return episodes


def read_current_episodes(benchmark: Benchmark, settings: dict) -> dict:
    """The benchmark's saved episode file, refused (StaleEpisodes) unless it was made for `settings`
    (its task family's `episode_settings`)."""
    path, name = benchmark.episodes_path, benchmark.name
    episodes = read_episodes(path, name)
    if episodes.get("settings") != settings:
        raise StaleEpisodes(f"{path} was made for other settings of {name} ({episodes.get('settings')}); "
                            f"run `metalearn split -b {name}` (the pipeline does this by itself)")
    return episodes


def eval_batches(benchmark: Benchmark, split: str, device: torch.device, chunk: int = 50) -> Iterator[TaskBatch]:
    """The saved episodes of `split` ('val' or 'test'), in chunks of TaskBatches on `device`."""
    bench = benchmark.settings
    saved = read_current_episodes(benchmark, episode_settings(bench))[split]
    if bench["task"] in ("sinusoid", "polynomial"):
        make = ep.sinusoid_tasks if bench["task"] == "sinusoid" else ep.polynomial_tasks
        tasks = make(saved, bench["shots"])
        for start in range(0, len(tasks), chunk):
            yield tasks.slice(start, start + chunk).to(device)
        return
    if bench["task"] in IMAGENET_DATASETS:
        images, offsets = load_split_pools(benchmark)[split]
        for start in range(0, saved["classes"].shape[0], chunk):
            yield ep.gather_pool_tasks(images, offsets, saved["classes"][start:start + chunk],
                                       saved["drawings"][start:start + chunk], bench["shots"]).to(device)
        return
    images = load_split_images(benchmark)[split]
    for start in range(0, saved["classes"].shape[0], chunk):
        classes = saved["classes"][start:start + chunk]
        drawings = saved["drawings"][start:start + chunk]
        rotations = saved["rotations"][start:start + chunk] if "rotations" in saved else None
        yield ep.gather_tasks(images, classes, drawings, bench["shots"], rotations).to(device)
