"""Reptile (Nichol, Achiam & Schulman 2018, "On first-order meta-learning algorithms").

Inner loop, per task: plain gradient descent from theta_0 on the support loss, no graph kept,
    theta_{k+1} = theta_k - alpha * grad L_S(theta_k),   k = 0 .. K-1.
Outer loop (the paper's Algorithm 2, batched): theta_0 <- theta_0 + epsilon * mean_tasks (theta_K - theta_0).
Written as a meta-gradient for the loop's optimiser,
    g = theta_0 - mean_tasks theta_K,
so that plain SGD with learning rate epsilon on g is Reptile's update (the official WarpGrad code's
ReptileWrapper sets p.grad = p - mean of the adapted parameters the same way, flennerhag/warpgrad
src/omniglot/wrapper.py, _FOWrapper with _all_grads). No query set is used: Reptile never looks at it;
the metrics are the query loss/accuracy after adaptation, as every algorithm reports.

Hyperparameters: inner_lr (alpha), inner_steps (K), test_inner_steps.
"""
from __future__ import annotations

import torch
from torch import Tensor

from metalearn.algorithms.base import Algorithm, add_to_grad, detached, mean_metrics
from metalearn.tasks import Params, Task


class Reptile(Algorithm):
    name = "reptile"
    parallel_tasks = True  # per-task code is pure: objective.forward and autograd only

    def __init__(self, model, objective, hparams):
        super().__init__(model, objective, hparams)
        self.inner_lr = float(hparams["inner_lr"])
        self.inner_steps = int(hparams["inner_steps"])

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None) -> Params:
        """Plain gradient descent on the support loss from theta_0 (no graph along the path)."""
        theta = detached(self.initial_params() if params is None else params)
        for _ in range(self.test_inner_steps if steps is None else steps):
            loss = self.objective.loss(theta, support)
            grads = torch.autograd.grad(loss, list(theta.values()))
            theta = detached({k: p - self.inner_lr * g for (k, p), g in zip(theta.items(), grads)})
        return theta

    def task_meta_gradient(self, task: Task) -> tuple[list[Tensor], dict[str, float]]:
        """theta_0 - theta_K for one task, and the query metrics after adaptation."""
        theta = self.adapt(task.support, self.inner_steps)
        with torch.no_grad():
            metrics = self.objective.metrics(self.objective.forward(theta, task.query[0]), task.query[1])
            difference = [p.detach() - theta[name] for name, p in self.initial_params().items()]
        return difference, metrics

    def meta_step(self, tasks) -> dict[str, float]:
        results = self.map_tasks(self.task_meta_gradient, tasks)
        add_to_grad(self.model.parameters(), [g for g, _ in results], 1.0 / len(tasks))
        return mean_metrics([m for _, m in results])
