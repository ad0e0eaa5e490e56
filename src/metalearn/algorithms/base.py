"""The algorithm interface every meta-learner implements; the training loop knows only this.

An algorithm is an ``nn.Module`` whose parameters are everything it meta-learns: the network's
initialisation (``self.model``), and whatever else the method adds (learned learning rates, warp
layers, masks, ...). The loop calls ``meta_step(tasks)``, which leaves the meta-gradient in the
parameters' ``.grad``, and then steps the meta-optimizer; evaluation calls ``adapt`` and ``predict``.

Most algorithms only write ``task_meta_loss(task)``: the default ``meta_step`` differentiates it per
task and averages. Tasks run concurrently on the CPU (`map_tasks`: one task per core, each single-
threaded), because a few-shot task's tensors are too small for PyTorch's intra-op threads to keep two
cores busy; per-task gradients are summed in task order, so the result does not depend on timing.
Algorithms opt in with ``parallel_tasks = True`` once their per-task code is thread-safe: it must
run the network through ``objective.forward`` (which gives each thread its own module objects) and
draw no random numbers (threads would consume a shared generator in a timing-dependent order).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor, nn

from metalearn.tasks import Objective, Params, Task, TaskBatch

T = TypeVar("T")
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _task_workers(device: torch.device) -> int:
    """Concurrent tasks: the CPU's intra-op threads (METALEARN_TASK_THREADS overrides); 1 on GPUs."""
    if device.type != "cpu":
        return 1
    return max(1, int(os.environ.get("METALEARN_TASK_THREADS", torch.get_num_threads())))


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

    def task_meta_loss(self, task: Task) -> tuple[Tensor, dict[str, float]]:
        """One task's meta-loss (a function of the meta-parameters) and its float metrics."""
        raise NotImplementedError

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        """Leave the meta-gradient of the batch's mean meta-loss in ``.grad``; return the mean metrics
        (at least ``loss``, the query loss after adaptation). Override for meta-gradients that are not
        the gradient of a loss (iMAML's implicit gradient, WarpGrad's replay buffer, ...)."""
        meta_params = [p for p in self.parameters() if p.requires_grad]

        def one_task(task: Task):
            loss, metrics = self.task_meta_loss(task)
            return torch.autograd.grad(loss, meta_params, allow_unused=True), metrics

        results = self.map_tasks(one_task, tasks)
        add_to_grad(meta_params, [g for g, _ in results], 1.0 / len(tasks))
        return mean_metrics([m for _, m in results])

    # -- shared -----------------------------------------------------------------------------------
    parallel_tasks: bool = False  # opt in once the per-task code is known to be thread-safe

    def task_workers(self) -> int:
        """How many tasks (or chunks) `map_tasks` runs at once."""
        return _task_workers(next(self.parameters()).device) if self.parallel_tasks else 1

    def map_tasks(self, fn: Callable[[Task], T], tasks: TaskBatch) -> list[T]:
        """``[fn(task) for task in tasks]``, run concurrently on the CPU (see the module docstring)."""
        workers = self.task_workers()
        if workers == 1 or len(tasks) == 1:
            return [fn(task) for task in tasks]
        pool = _POOLS.setdefault(workers, ThreadPoolExecutor(workers, thread_name_prefix="metalearn-task"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one core per task; restored below
        try:
            return list(pool.map(fn, tasks))
        finally:
            torch.set_num_threads(threads)

    def initial_params(self) -> Params:
        return dict(self.model.named_parameters())

    def predict(self, params: Params, inputs: Tensor) -> Tensor:
        """The adapted network's outputs (algorithms with extra, non-adapted layers override this)."""
        return self.objective.forward(params, inputs)

    def predict_query(self, params: Params, task: Task) -> Tensor:
        """The adapted network's outputs on the task's query inputs (evaluation: all of them at once;
        maml.py can feed them in batches, `eval_query_batch`)."""
        return self.predict(params, task.query[0])

    def evaluate_task(self, task: Task, steps: int | None = None) -> dict[str, float]:
        """Adapt on the support set, then measure on the query set (no meta-gradient kept)."""
        with torch.enable_grad():
            adapted = self.adapt(task.support, steps)
        with torch.no_grad():
            return self.objective.metrics(self.predict_query(adapted, task), task.query[1])

    def evaluate_task_curve(self, task: Task, steps: int) -> list[dict[str, float]]:
        """`evaluate_task` after 0, 1, ..., `steps` adaptation steps (the test error against the number
        of gradient steps, as MAML's Figure 2). Algorithms whose adaptation is a sequence of steps
        override this to take each step once (maml.py)."""
        return [self.evaluate_task(task, s) for s in range(steps + 1)]

    def evaluate_tasks(self, tasks: TaskBatch, steps: int, curve: bool = False) -> list:
        """`evaluate_task(task, steps)` of every task of the batch, in order (`curve`: each task's
        `evaluate_task_curve`). Here one task at a time, concurrently (`map_tasks`); the MAML family
        adapts chunks of tasks together (maml.py), to the same numbers."""
        if curve:
            return self.map_tasks(lambda task: self.evaluate_task_curve(task, steps), tasks)
        return self.map_tasks(lambda task: self.evaluate_task(task, steps), tasks)

    def adapted_predictions(self, task: Task, inputs: Tensor, steps: int) -> Tensor:
        """The network's outputs at `inputs` after adapting to the task's support set in `steps`
        steps (the report's fitted curves)."""
        with torch.enable_grad():
            adapted = self.adapt(task.support, steps)
        with torch.no_grad():
            return self.predict(adapted, inputs)


def add_to_grad(params, gradients: list[list[Tensor | None]], scale: float) -> None:
    """p.grad += scale * the sum of p's gradients over the list (one gradient list per task or
    chunk; None: p unused), summed in list order, so the result does not depend on thread timing."""
    for i, p in enumerate(params):
        grads = [g[i] for g in gradients if g[i] is not None]
        if grads:
            total = torch.stack(grads).sum(0) * scale
            p.grad = total if p.grad is None else p.grad + total


def mean_metrics(metrics: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over tasks."""
    return {key: sum(m[key] for m in metrics) / len(metrics) for key in metrics[0]}


def detached(params: Params) -> Params:
    """Fresh leaves that require grad: the start of an inner loop with no meta-gradient."""
    return {name: p.detach().requires_grad_() for name, p in params.items()}
