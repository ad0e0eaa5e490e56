"""MAML (Finn, Abbeel & Levine, 2017) and first-order MAML.

Inner loop, per task:  theta'  = theta - alpha * grad_theta L_S(theta), repeated `inner_steps` times.
Outer loop:            theta  <- theta - beta * grad_theta sum_tasks L_Q(theta')   (Adam, in the loop)
Second order: the gradient flows through the inner updates (Hessian-vector products).
First order (FOMAML): the inner gradients are constants, so d theta'/d theta = I.

The inner loop is shared by the MAML family, which differs only in two places: the step size of
each parameter (`step_sizes`: alpha here; Meta-SGD's learned rates; MT-net's alpha * mask) and the
network the adapted parameters run in (`predict`: T-nets add their transformations).
"""
from __future__ import annotations

import torch
from torch import Tensor

from metalearn.algorithms.base import Algorithm, detached
from metalearn.tasks import Params, Task

StepSizes = dict[str, "float | Tensor"]  # per parameter name: a scalar, or a tensor broadcast over it


class MAML(Algorithm):
    name = "maml"
    first_order = False
    parallel_tasks = True  # per-task code is pure: objective.forward and autograd only

    def __init__(self, model, objective, hparams):
        super().__init__(model, objective, hparams)
        self.inner_lr = float(hparams["inner_lr"])
        self.inner_steps = int(hparams["inner_steps"])
        self.first_order = bool(hparams.get("first_order", type(self).first_order))

    def step_sizes(self) -> StepSizes:
        """The inner loop's step size per parameter: alpha for all."""
        return {name: self.inner_lr for name, _ in self.model.named_parameters()}

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None,
              step_sizes: StepSizes | None = None) -> Params:
        """theta <- theta - step_size (.) grad L_S(theta), `steps` times (default: the test steps)."""
        params = detached(self.initial_params()) if params is None else params
        rates = self.step_sizes() if step_sizes is None else step_sizes
        inputs, targets = support
        for _ in range(self.test_inner_steps if steps is None else steps):
            loss = self.objective.criterion(self.predict(params, inputs), targets)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {name: p - rates[name] * g for (name, p), g in zip(params.items(), grads)}
        return params

    def task_meta_loss(self, task: Task, step_sizes: StepSizes | None = None):
        adapted = self.adapt(task.support, self.inner_steps, create_graph=not self.first_order,
                             params=self.initial_params(), step_sizes=step_sizes)
        outputs = self.predict(adapted, task.query[0])
        loss = self.objective.criterion(outputs, task.query[1])
        return loss, self.objective.metrics(outputs.detach(), task.query[1])


class FOMAML(MAML):
    name = "fomaml"
    first_order = True
