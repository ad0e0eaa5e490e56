"""From a benchmark's settings to its pieces: data paths, network, objective, task samplers.

File layout below ``data.root`` (all produced by the pipeline steps, versioned by DVC):
  raw/omniglot/<archive>.zip            download
  prepared/<dataset>.pt (+ .json)       prepare
  episodes/<benchmark>.pt               split (validation and test episodes)
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from metalearn.data import episodes as ep
from metalearn.data import omniglot
from metalearn.models import build_model
from metalearn.tasks import Objective, TaskBatch


def raw_dir(params: dict) -> Path:
    return Path(params["data"]["root"]) / "raw" / "omniglot"


def prepared_path(params: dict, dataset: str) -> Path:
    return Path(params["data"]["root"]) / "prepared" / f"{dataset}.pt"


def episodes_path(params: dict, bench_name: str) -> Path:
    return Path(params["data"]["root"]) / "episodes" / f"{bench_name}.pt"


def objective_kind(bench: dict) -> str:
    return "regression" if bench["task"] == "sinusoid" else "classification"


def build_objective(bench: dict) -> Objective:
    return Objective(build_model(bench), objective_kind(bench))


def metric_name(bench: dict) -> str:
    return "mse" if bench["task"] == "sinusoid" else "accuracy"


def load_split_images(params: dict, bench: dict) -> dict[str, torch.Tensor]:
    """uint8 images [classes, 20, 28, 28] of each split of a classification benchmark."""
    images, classes = omniglot.load(prepared_path(params, bench["dataset"]))
    splits = omniglot.split_classes(classes, bench["dataset"], bench["split"], bench["split_seed"])
    return {name: images[index] for name, index in splits.items()}


def train_sampler(params: dict, bench: dict, generator: torch.Generator, device: torch.device):
    if bench["task"] == "sinusoid":
        return ep.SinusoidSampler(bench["shots"], bench["queries"], generator, device)
    pool = ep.with_rotations(load_split_images(params, bench)["train"]).to(device)
    return ep.ClassificationSampler(pool, bench["ways"], bench["shots"], bench["queries"], generator)


class StaleEpisodes(RuntimeError):
    """Saved episodes that belong to other benchmark settings."""


EPISODE_SETTINGS = ("task", "dataset", "split", "split_seed", "ways", "shots", "eval_queries",
                    "episode_seed", "val_tasks", "test_tasks")


def episode_settings(bench: dict) -> dict:
    """The settings that determine a benchmark's saved episodes (stored with them and checked on use)."""
    return {k: bench[k] for k in EPISODE_SETTINGS if k in bench}


def make_episodes(params: dict, bench_name: str) -> Path:
    bench = params["benchmarks"][bench_name]
    counts = None
    if bench["task"] != "sinusoid":
        counts = omniglot.split_sizes(bench["dataset"], bench["split"])
    path = episodes_path(params, bench_name)
    ep.save_episodes({**ep.make_eval_episodes(bench, counts), "settings": episode_settings(bench)}, path)
    return path


def eval_batches(params: dict, bench_name: str, split: str, device: torch.device,
                 chunk: int = 50) -> Iterator[TaskBatch]:
    """The saved episodes of `split` ('val' or 'test'), in chunks of TaskBatches on `device`."""
    bench = params["benchmarks"][bench_name]
    path = episodes_path(params, bench_name)
    episodes = ep.load_episodes(path)
    if episodes.get("settings") != episode_settings(bench):
        raise StaleEpisodes(f"{path} was made for other settings of {bench_name} ({episodes.get('settings')}); "
                         f"run `metalearn split -b {bench_name}` (the pipeline does this by itself)")
    saved = episodes[split]
    if bench["task"] == "sinusoid":
        tasks = ep.sinusoid_tasks(saved, bench["shots"])
        for start in range(0, len(tasks), chunk):
            end = start + chunk
            yield TaskBatch(tasks.support_x[start:end], tasks.support_y[start:end],
                            tasks.query_x[start:end], tasks.query_y[start:end]).to(device)
        return
    images = load_split_images(params, bench)[split]
    for start in range(0, saved["classes"].shape[0], chunk):
        classes = saved["classes"][start:start + chunk]
        drawings = saved["drawings"][start:start + chunk]
        yield ep.gather_tasks(images, classes, drawings, bench["shots"]).to(device)
