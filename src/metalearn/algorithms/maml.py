"""MAML (Finn, Abbeel & Levine, 2017) and first-order MAML.

Inner loop, per task:  theta'  = theta - alpha * grad_theta L_S(theta), repeated `inner_steps` times.
Outer loop:            theta  <- theta - beta * grad_theta sum_tasks L_Q(theta')   (Adam, in the loop)
Second order: the gradient flows through the inner updates (Hessian-vector products).
First order (FOMAML): the inner gradients are constants, so d theta'/d theta = I.
"""
from __future__ import annotations

import torch

from metalearn.algorithms.base import Algorithm, detached
from metalearn.tasks import Params, Task


class MAML(Algorithm):
    name = "maml"
    first_order = False
    parallel_tasks = True  # per-task code is pure: objective.forward and autograd only

    def __init__(self, model, objective, hparams):
        super().__init__(model, objective, hparams)
        self.inner_lr = float(hparams["inner_lr"])
        self.inner_steps = int(hparams["inner_steps"])

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None) -> Params:
        params = detached(self.initial_params()) if params is None else params
        for _ in range(self.test_inner_steps if steps is None else steps):
            loss = self.objective.loss(params, support)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {name: p - self.inner_lr * g for (name, p), g in zip(params.items(), grads)}
        return params

    def task_meta_loss(self, task: Task):
        adapted = self.adapt(task.support, self.inner_steps, create_graph=not self.first_order,
                             params=self.initial_params())
        outputs = self.objective.forward(adapted, task.query[0])
        loss = self.objective.criterion(outputs, task.query[1])
        return loss, self.objective.metrics(outputs.detach(), task.query[1])


class FOMAML(MAML):
    name = "fomaml"
    first_order = True
