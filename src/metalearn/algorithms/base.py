"""The algorithm interface every meta-learner implements; the training loop knows only this.

An algorithm is an ``nn.Module`` whose parameters are everything it meta-learns: the network's
initialisation (``self.model``), and whatever else the method adds (learned learning rates, warp
layers, masks, ...). The loop calls ``meta_step(tasks)``, which leaves the meta-gradient in the
parameters' ``.grad``, and then steps the meta-optimizer; evaluation calls ``adapt`` and ``predict``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metalearn.tasks import Objective, Params, Task, TaskBatch


class Algorithm(nn.Module):
    name: str = "base"

    def __init__(self, model: nn.Module, objective: Objective, hparams: dict[str, Any]):
        super().__init__()
        self.model = model  # its parameters are the meta-learned initialisation theta
        self.objective = objective
        self.hparams = dict(hparams)
        self.test_inner_steps = int(hparams.get("test_inner_steps", hparams.get("inner_steps", 1)))

    # -- what a subclass provides -----------------------------------------------------------------
    def adapt(self, support: tuple[Tensor, Tensor], steps: int | None = None,
              create_graph: bool = False) -> Params:
        """Task-specific parameters after adapting to `support` (`steps` defaults to the test steps)."""
        raise NotImplementedError

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        """Accumulate the meta-gradient of the batch's mean meta-loss into ``.grad``; return metrics
        (at least ``loss``, the mean query loss after adaptation)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------
    def initial_params(self) -> Params:
        return dict(self.model.named_parameters())

    def predict(self, params: Params, inputs: Tensor) -> Tensor:
        """The adapted network's outputs (algorithms with extra, non-adapted layers override this)."""
        return self.objective.forward(params, inputs)

    def accumulate(self, loss: Tensor, scale: float) -> None:
        """Add d(scale * loss)/d(meta-parameters) into ``.grad`` (one task at a time keeps memory
        at one task's graph, whatever the meta-batch)."""
        meta_params = [p for p in self.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss * scale, meta_params, allow_unused=True)
        for p, g in zip(meta_params, grads):
            if g is None:
                continue
            p.grad = g if p.grad is None else p.grad + g

    def evaluate_task(self, task: Task, steps: int | None = None) -> dict[str, float]:
        """Adapt on the support set, then measure on the query set (no meta-gradient kept)."""
        with torch.enable_grad():
            adapted = self.adapt(task.support, steps)
        with torch.no_grad():
            return self.objective.metrics(self.predict(adapted, task.query[0]), task.query[1])


def detached(params: Params) -> Params:
    """Fresh leaves that require grad: the start of an inner loop with no meta-gradient."""
    return {name: p.detach().requires_grad_() for name, p in params.items()}
