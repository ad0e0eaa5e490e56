"""The continual-learning task family's data: task sequences (one sinusoid cut into `subtasks`
consecutive pieces of MAML's interval), drawn fresh for meta-training and saved once for evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metalearn import dependencies
from metalearn.config import Benchmark
from metalearn.data.episodes import SINUSOID, save_episodes


@dataclass
class Sequences:
    """A batch of task sequences: support/query inputs and targets [sequences, T, points, 1]."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    @property
    def subtasks(self) -> int:
        return self.support_x.shape[1]

    def support(self, i: int, t: int) -> tuple[Tensor, Tensor]:
        return self.support_x[i, t], self.support_y[i, t]

    def query(self, i: int, t: int) -> tuple[Tensor, Tensor]:
        return self.query_x[i, t], self.query_y[i, t]

    def queries_up_to(self, i: int, t: int) -> tuple[Tensor, Tensor]:
        """The held-out points of sub-tasks 0..t together (equal counts: their mean loss is the mean
        of the sub-tasks' losses)."""
        return self.query_x[i, :t + 1].flatten(0, 1), self.query_y[i, :t + 1].flatten(0, 1)

    def to(self, device) -> "Sequences":
        return Sequences(*(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y)))


def subintervals(bench: dict) -> list[tuple[float, float]]:
    """The T consecutive, equal pieces of the input interval (MAML's), in the order they are learned."""
    low, high = SINUSOID["x"]
    width = (high - low) / bench["subtasks"]
    return [(low + t * width, low + (t + 1) * width) for t in range(bench["subtasks"])]


def draw_sequences(bench: dict, count: int, points: int, generator: torch.Generator) -> dict[str, Tensor]:
    """`count` task sequences: one sinusoid each (amplitude, phase) and `points` x values in each
    sub-interval, [count, T, points]; every draw from `generator`, in a fixed order."""
    def uniform(shape, bounds):
        return torch.rand(*shape, generator=generator) * (bounds[1] - bounds[0]) + bounds[0]

    amplitude = uniform((count, 1, 1), SINUSOID["amplitude"])
    phase = uniform((count, 1, 1), SINUSOID["phase"])
    x = torch.stack([uniform((count, points), piece) for piece in subintervals(bench)], dim=1)
    return {"amplitude": amplitude, "phase": phase, "x": x}


def sequences_from(drawn: dict[str, Tensor], shots: int) -> Sequences:
    """Support: the first `shots` points of each sub-task; query: the rest."""
    x = drawn["x"]
    y = drawn["amplitude"] * torch.sin(x - drawn["phase"])
    x, y = x.unsqueeze(-1), y.unsqueeze(-1)
    return Sequences(x[:, :, :shots], y[:, :, :shots], x[:, :, shots:], y[:, :, shots:])


class SequenceSampler:
    """Meta-training sequences, fresh from `generator` (seeded by the run's seed) every call."""

    def __init__(self, bench: dict, generator: torch.Generator, device: torch.device):
        self.bench, self.generator, self.device = bench, generator, device

    def sample(self, count: int) -> Sequences:
        drawn = draw_sequences(self.bench, count, self.bench["shots"] + self.bench["queries"], self.generator)
        return sequences_from(drawn, self.bench["shots"]).to(self.device)


# What the saved validation/test sequences depend on (stored with them, checked on use)
EPISODE_SETTINGS = dependencies.CONTINUAL_EPISODE_SETTINGS
episode_settings = dependencies.continual_episode_settings


def make_eval_sequences(bench: dict) -> dict[str, Any]:
    """{'val', 'test'}: the saved sequences, drawn once from `episode_seed` (deterministic), plus settings."""
    generator = torch.Generator().manual_seed(bench["episode_seed"])
    saved: dict[str, Any] = {"settings": episode_settings(bench)}
    for split, count in (("val", bench["val_tasks"]), ("test", bench["test_tasks"])):
        saved[split] = draw_sequences(bench, count, bench["shots"] + bench["eval_queries"], generator)
    return saved


def make_episodes(bench: Benchmark) -> Path:
    save_episodes(make_eval_sequences(bench.settings), bench.episodes_path)
    return bench.episodes_path


def eval_sequences(bench: Benchmark, split: str, device) -> Sequences:
    """The saved sequences of `split`, checked against the benchmark's settings."""
    from metalearn.benchmarks import read_current_episodes

    saved = read_current_episodes(bench, episode_settings(bench.settings))
    return sequences_from(saved[split], bench.settings["shots"]).to(device)
