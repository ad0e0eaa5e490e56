"""Tasks: what the algorithms adapt to.

A task is a support set (for adaptation) and a query set (for the meta-objective / evaluation).
The algorithms never look inside them: they hand them to the `Objective`, which turns parameters
and data into a loss. So a task whose loss comes from sampled trajectories (reinforcement learning)
or from a stream (continual learning) only needs its own Objective, not a new training loop.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

Params = dict[str, Tensor]


@dataclass
class Task:
    support: tuple[Tensor, Tensor]  # (inputs, targets)
    query: tuple[Tensor, Tensor]


@dataclass
class InformedTask(Task):
    """A task with its true parameters (sinusoid: amplitude, phase (, frequency)): what the oracle
    baseline is given as extra inputs. Meta-learners never read them."""
    info: Tensor | None = None


@dataclass
class TaskBatch:
    """A meta-batch of same-shaped supervised tasks, stacked along a leading task dimension."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    info: Tensor | None = None  # [tasks, k]: the tasks' true parameters, where the task family has them

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, i: int) -> Task:
        support, query = (self.support_x[i], self.support_y[i]), (self.query_x[i], self.query_y[i])
        return Task(support, query) if self.info is None else InformedTask(support, query, self.info[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _tensors(self) -> list[Tensor]:
        return [t for t in (self.support_x, self.support_y, self.query_x, self.query_y, self.info) if t is not None]

    def split(self, parts: int) -> list["TaskBatch"]:
        """The batch cut into `parts` consecutive chunks of (nearly) equal size, in task order."""
        pieces = [t.tensor_split(min(parts, len(self))) for t in self._tensors()]
        return [TaskBatch(*chunk) for chunk in zip(*pieces)]

    def slice(self, start: int, end: int) -> "TaskBatch":
        """Tasks start..end-1, in order."""
        return TaskBatch(*(t[start:end] for t in self._tensors()))

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(*(t.to(device, non_blocking=True) for t in self._tensors()))


class Objective:
    """Model forward pass + criterion: ``loss(params, data)`` for one task's (inputs, targets)."""

    def __init__(self, model: torch.nn.Module, kind: str):
        if kind not in ("classification", "regression"):
            raise ValueError(f"unknown objective kind {kind!r}")
        self.model = model
        self.kind = kind
        self.criterion: Callable[[Tensor, Tensor], Tensor] = (
            F.cross_entropy if kind == "classification" else F.mse_loss)

    def forward(self, params: Params, inputs: Tensor) -> Tensor:
        return functional_call(self._module_for_this_thread(), params, (inputs,))

    def _module_for_this_thread(self) -> torch.nn.Module:
        """functional_call swaps tensors into the module while it runs, so concurrent tasks
        (Algorithm.map_tasks) each need their own module objects. The replica shares the original's
        parameter and buffer tensors, so anything not passed in `params` is the live value."""
        if threading.current_thread() is threading.main_thread():
            return self.model
        local = self.__dict__.setdefault("_threads", threading.local())
        replica = getattr(local, "replica", None)
        if replica is None or local.source is not self.model:
            shared = {id(t): t for t in (*self.model.parameters(), *self.model.buffers())}
            local.replica, local.source = copy.deepcopy(self.model, memo=shared), self.model
        return local.replica

    # -- many tasks at once: parameters and data stacked along a leading task dimension -----------
    @property
    def batches_tasks(self) -> bool:
        """Whether the network can run a chunk of tasks in one call (`forward_tasks`)."""
        return hasattr(self.model, "forward_tasks")

    def forward_tasks(self, params: Params, inputs: Tensor) -> Tensor:
        """Each task's outputs with its own parameters: params name -> [tasks, *shape], inputs
        [tasks, n, ...] -> [tasks, n, ...]. The network evaluates the tasks together (models.py)."""
        return self.model.forward_tasks(params, inputs)

    def task_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """[tasks]: each task's `criterion` (the mean over its own examples)."""
        losses = self.criterion(outputs.flatten(0, 1), targets.flatten(0, 1), reduction="none")
        return losses.view(len(outputs), -1).mean(1)

    def task_metrics(self, outputs: Tensor, targets: Tensor, losses: Tensor) -> list[dict[str, float]]:
        """`metrics` of every task in a stack, from its per-task `losses`."""
        columns = {"loss": losses.detach()}
        if self.kind == "classification":
            columns["accuracy"] = (outputs.argmax(-1) == targets).float().mean(1)  # as `metrics`
        values = {key: column.tolist() for key, column in columns.items()}
        return [{key: values[key][i] for key in values} for i in range(len(outputs))]

    def draw(self, data: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The examples one loss evaluation uses: all of `data` here; a mini-batch of it where a task's
        adaptation takes one per step (alphabets.MiniBatchObjective, the Leap/WarpGrad Omniglot protocol)."""
        return data

    def loss(self, params: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = self.draw(data)
        return self.criterion(self.forward(params, inputs), targets)

    def metrics(self, outputs: Tensor, targets: Tensor, loss: Tensor | None = None) -> dict[str, float]:
        """Loss (computed unless given) and, for classification, accuracy, as plain floats."""
        result = {"loss": (self.criterion(outputs, targets) if loss is None else loss).item()}
        if self.kind == "classification":
            result["accuracy"] = (outputs.argmax(-1) == targets).float().mean().item()
        return result
