"""Leap (Flennerhag, Moreno, Lawrence & Damianou, ICLR 2019): "Transferring knowledge across
learning processes". The initialisation theta_0 is meta-learned to shorten the tasks' learning paths.

Inner loop, per task: plain gradient descent from theta_0, no graph kept,
    theta_{k+1} = theta_k - alpha * grad L_S(theta_k),   k = 0 .. K-1.
The learning path lives on the task manifold: points z_k = (theta_k, L_S(theta_k)) (with
`use_loss`; else z_k = theta_k). Leap minimises its length  sum_k ||z_{k+1} - z_k||  (`norm`: the
path length d_1) or its energy  sum_k ||z_{k+1} - z_k||^2  (d_2), with every z_{k+1} held fixed
("pulled forward") and d theta_k / d theta_0 approximated by the identity. Per segment this gives

    -[ (theta_{k+1} - theta_k) + dL_k * grad L_S(theta_k) ] / ||z_{k+1} - z_k||     (d_2: no division;
                                                                                    its factor 2 dropped)
with dL_k = L_S(theta_{k+1}) - L_S(theta_k). The stabiliser (`stabilizer`) uses -|dL_k| instead of
dL_k, so a step that raised the loss does not push the initialisation towards higher losses. The
meta-gradient is the mean over tasks of the sum over segments; the loop's optimiser steps theta_0.
Increments are accumulated step by step (`LeapPath`), so memory does not grow with K.

Leap adapts as MAML does at test time (plain gradient descent on the support loss, step inner_lr), so it
inherits MAML's evaluation, chunked (maml.py); only the meta-gradient is its own. On the CPU a chunk of
tasks walks its paths together (`chunk_meta_gradient`: one forward_tasks per step, per-task segment
lengths), to the one-task loop's meta-gradient (tests/test_batched.py).

Hyperparameters: inner_lr, inner_steps, test_inner_steps; norm, use_loss, stabilizer (the official
code's defaults: all true; flennerhag/warpgrad src/leap/leap/updaters.py computes the same increment).
`final_point`: whether theta_K, the point after the last step, ends the path (true, default: K
segments) or not (false: theta_0 .. theta_{K-1}, K-1 segments, as the official training loop:
src/omniglot/wrapper.py run_batches, lines 126-136, feeds Leap the point before each step and breaks
after the last step, which is taken but never fed; Warp-Leap's updaters.py simplified_leap, lines
146-151, walks the buffered points theta_0 .. theta_{K-1} the same way).
`LeapPath` is also the initialisation objective of Warp-Leap (warpgrad.py).

With `norm` (d_1) every segment enters as a unit vector however short it is, so on tasks whose loss is
nearly minimised after a step or two (5-way 1-shot, 3 steps of 0.4) the late, tiny segments -- which
push theta_0 to fit each task's support labels ever more confidently -- weigh as much as the first.
Measured on omniglot-5w1s (docs/notes/leap-loss.md): the meta-update does lower the
pulled-forward objective of its own tasks (tests/test_leap.py), yet over meta-training the head's norm
and the query loss after adaptation grew (the path length first grew, then fell); with d_2 the loss
stayed flat and the path shrank.
"""
from __future__ import annotations

import torch
from torch import Tensor

from metalearn.algorithms.base import add_to_grad, detached, mean_metrics
from metalearn.algorithms.maml import MAML, task_chunks
from metalearn.tasks import Params, Task, TaskBatch


class LeapPath:
    """Leap's meta-gradient for theta_0 from one learning path, fed one point at a time.

    `add(theta_k, loss_k, grad_k)` for k = 0 .. K (grad_K is not needed: pass None); `gradient`
    then holds sum_k of the segment increments above (zeros for a path of one point).
    With `tasks`, every tensor holds a chunk of paths along its first dimension (theta_k [tasks, *shape],
    loss_k [tasks]): each path's segments are measured on their own, `gradient` holds one per path.
    """

    def __init__(self, norm: bool = True, use_loss: bool = True, stabilizer: bool = True, tasks: bool = False):
        self.norm, self.use_loss, self.stabilizer, self.tasks = norm, use_loss, stabilizer, tasks
        self.gradient: list[Tensor] | None = None
        self._previous: tuple[list[Tensor], Tensor, list[Tensor] | None] | None = None

    def add(self, theta: list[Tensor], loss: Tensor, grad: list[Tensor] | None) -> None:
        theta = [t.detach() for t in theta]
        loss = loss.detach()
        grad = None if grad is None else [g.detach() for g in grad]
        if self.gradient is None:
            self.gradient = [torch.zeros_like(t) for t in theta]
        if self._previous is not None:
            self._add_segment(*self._previous, theta, loss)
        self._previous = (theta, loss, grad)

    def _per_path(self, value: Tensor, like: Tensor) -> Tensor:
        """A per-path scalar ([tasks] with `tasks`) shaped to broadcast over a parameter like `like`."""
        return value.view(-1, *[1] * (like.dim() - 1)) if self.tasks else value

    def _add_segment(self, theta, loss, grad, next_theta, next_loss) -> None:
        step = [b - a for a, b in zip(theta, next_theta)]  # theta_{k+1} - theta_k
        squared = sum((s * s).reshape(len(s), -1).sum(1) if self.tasks else (s * s).sum() for s in step)
        d_loss = None
        if self.use_loss:
            d_loss = next_loss - loss
            if self.stabilizer:
                d_loss = -d_loss.abs()
            squared = squared + d_loss * d_loss
        scale = 1.0 / squared.sqrt().clamp_min(1e-12) if self.norm else 1.0
        for total, s, g in zip(self.gradient, step, grad):
            increment = s + self._per_path(d_loss, g) * g if self.use_loss else s
            total.sub_(self._per_path(scale, s) * increment if self.norm else increment)


class Leap(MAML):
    name = "leap"
    parallel_tasks = True  # per-task code is pure: objective.forward and autograd only
    batched_tasks = True  # chunks of paths walked together where the network has forward_tasks

    def __init__(self, model, objective, hparams):
        super().__init__(model, objective, hparams)  # inner_lr, inner_steps; MAML's evaluation
        self.norm = bool(hparams.get("norm", True))
        self.use_loss = bool(hparams.get("use_loss", True))
        self.stabilizer = bool(hparams.get("stabilizer", True))
        self.final_point = bool(hparams.get("final_point", True))  # theta_K ends the path (docstring)

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None,
              path: LeapPath | None = None) -> Params:
        """Plain gradient descent from theta_0 (no graph along the path); feeds `path` if given."""
        theta = detached(self.initial_params() if params is None else params)
        for _ in range(self.test_inner_steps if steps is None else steps):
            loss = self.objective.loss(theta, support)
            grads = torch.autograd.grad(loss, list(theta.values()))
            if path is not None:
                path.add(list(theta.values()), loss, grads)
            theta = detached({k: p - self.inner_lr * g for (k, p), g in zip(theta.items(), grads)})
        if path is not None and self.final_point:  # the path's last point: theta_K and its loss
            with torch.no_grad():
                path.add(list(theta.values()), self.objective.loss(theta, support), None)
        return theta

    def task_meta_gradient(self, task: Task) -> tuple[list[Tensor], dict[str, float]]:
        path = LeapPath(self.norm, self.use_loss, self.stabilizer)
        theta = self.adapt(task.support, self.inner_steps, path=path)
        with torch.no_grad():
            metrics = self.objective.metrics(self.objective.forward(theta, task.query[0]), task.query[1])
        return path.gradient, metrics

    def chunk_meta_gradient(self, tasks: TaskBatch) -> tuple[list[Tensor], list[dict[str, float]]]:
        """`task_meta_gradient` of a chunk of tasks, summed over them: their paths walked together
        (parameters [tasks, *shape]; the gradient of the summed support loss is each task's own)."""
        path = LeapPath(self.norm, self.use_loss, self.stabilizer, tasks=True)
        theta = {name: p.detach().expand(len(tasks), *p.shape).clone().requires_grad_()
                 for name, p in self.initial_params().items()}

        def support_losses(p: Params) -> Tensor:
            return self.objective.task_losses(self.predict_tasks(p, tasks.support_x), tasks.support_y)
        for _ in range(self.inner_steps):
            losses = support_losses(theta)
            grads = torch.autograd.grad(losses.sum(), list(theta.values()))
            path.add(list(theta.values()), losses, grads)
            theta = detached({k: p - self.inner_lr * g for (k, p), g in zip(theta.items(), grads)})
        with torch.no_grad():
            if self.final_point:
                path.add(list(theta.values()), support_losses(theta), None)
            outputs = self.predict_tasks(theta, tasks.query_x)
            metrics = self.objective.task_metrics(outputs, tasks.query_y,
                                                  self.objective.task_losses(outputs, tasks.query_y))
        return [g.sum(0) for g in path.gradient], metrics

    def meta_step(self, tasks) -> dict[str, float]:
        if self.batched_tasks and self.objective.batches_tasks:
            chunks = task_chunks(self, tasks)
            results = self.map_tasks(self.chunk_meta_gradient, chunks)
            metrics = [m for _, chunk_metrics in results for m in chunk_metrics]
        else:
            results = self.map_tasks(self.task_meta_gradient, tasks)
            metrics = [m for _, m in results]
        # the adapted parameters (initial_params: all the network's but those it marks meta_only, which
        # no path moves, models.py), in their order
        add_to_grad(list(self.initial_params().values()), [g for g, _ in results], 1.0 / len(tasks))
        return mean_metrics(metrics)
