"""iMAML (Rajeswaran, Finn, Kakade & Levine, 2019): implicit meta-gradients.

Inner problem, per task, started at phi = theta and solved with no graph kept:
    phi*(theta) = argmin_phi  L_S(phi) + (lam / 2) ||phi - theta||^2
  inner_solver 'gd': `inner_steps` gradient steps of size `inner_lr` on that objective;
  inner_solver 'hf': `inner_steps` Hessian-free Newton steps, each (H + lam I) d = grad solved by CG.
Implicit meta-gradient: d phi*/d theta = (I + H/lam)^{-1} with H = Hessian of L_S at phi*, so the
task's meta-gradient g solves
    (I + H / (lam + cg_damping)) g = grad_phi L_Q(phi*)
by `cg_steps` of conjugate gradient on Hessian-vector products. cg_damping = 0 is the exact implicit
gradient; the official code adds a damping to lam in this system for stability (1.0 in its Omniglot
runs). Memory does not depend on `inner_steps`: only phi* and one Hessian-vector product graph live.
"""
from __future__ import annotations

import torch
from torch import Tensor

from metalearn.algorithms.base import Algorithm, detached
from metalearn.tasks import Params, Task


def conjugate_gradient(matvec, b: list[Tensor], steps: int) -> list[Tensor]:
    """Approximately solve A x = b (A symmetric positive definite) from x = 0, `steps` iterations."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = sum((t * t).sum() for t in r)
    for _ in range(steps):
        if rs <= 1e-20:
            break
        ap = matvec(p)
        alpha = rs / sum((u * v).sum() for u, v in zip(p, ap))
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rs_new = sum((t * t).sum() for t in r)
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p)]
        rs = rs_new
    return x


class IMAML(Algorithm):
    name = "imaml"
    parallel_tasks = True  # per-task code is pure: objective.forward and autograd only

    def __init__(self, model, objective, hparams):
        super().__init__(model, objective, hparams)
        self.inner_lr = float(hparams["inner_lr"])
        self.inner_steps = int(hparams["inner_steps"])
        self.lam = float(hparams["lam"])
        self.cg_steps = int(hparams["cg_steps"])
        self.cg_damping = float(hparams.get("cg_damping", 0.0))
        self.inner_solver = hparams.get("inner_solver", "gd")

    def hessian_operator(self, params: Params, support):
        """v -> (Hessian of L_S at `params`) v; the gradient graph is built once and reused by every
        product of a CG solve (it is freed with the returned function)."""
        params = detached(params)
        loss = self.objective.loss(params, support)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        inputs = list(params.values())
        return lambda v: list(torch.autograd.grad(grads, inputs, grad_outputs=v, retain_graph=True))

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None) -> Params:
        """phi* of the proximal inner problem (no graph to theta; `create_graph` is not used)."""
        theta = {k: v.detach() for k, v in (params or self.initial_params()).items()}
        phi = detached(theta)
        for _ in range(self.test_inner_steps if steps is None else steps):
            loss = self.objective.loss(phi, support)
            grads = torch.autograd.grad(loss, list(phi.values()))
            grads = [g + self.lam * (p - t) for g, p, t in zip(grads, phi.values(), theta.values())]
            if self.inner_solver == "hf":  # Newton step: (H + lam I) d = grad, by CG
                hessian = self.hessian_operator(phi, support)
                step = conjugate_gradient(lambda v: [h + self.lam * vi for h, vi in zip(hessian(v), v)],
                                          grads, self.cg_steps)
            else:
                step = [self.inner_lr * g for g in grads]
            phi = {k: (p - d).detach().requires_grad_() for (k, p), d in zip(phi.items(), step)}
        return phi

    def task_meta_gradient(self, task: Task) -> tuple[list[Tensor], dict[str, float]]:
        phi = self.adapt(task.support, self.inner_steps)
        outputs = self.objective.forward(phi, task.query[0])
        loss = self.objective.criterion(outputs, task.query[1])
        query_grad = list(torch.autograd.grad(loss, list(phi.values())))
        scale = 1.0 / (self.lam + self.cg_damping)
        hessian = self.hessian_operator(phi, task.support)
        meta_grad = conjugate_gradient(lambda v: [vi + scale * h for vi, h in zip(v, hessian(v))],
                                       query_grad, self.cg_steps)
        return meta_grad, self.objective.metrics(outputs.detach(), task.query[1], loss.detach())

    def meta_step(self, tasks) -> dict[str, float]:
        results = self.map_tasks(self.task_meta_gradient, tasks)
        for i, p in enumerate(self.model.parameters()):
            total = torch.stack([g[i] for g, _ in results]).sum(0) / len(tasks)  # fixed order
            p.grad = total if p.grad is None else p.grad + total
        return {key: sum(m[key] for _, m in results) / len(results) for key in results[0][1]}
