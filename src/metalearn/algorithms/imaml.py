"""iMAML (Rajeswaran, Finn, Kakade & Levine, 2019): implicit meta-gradients.

Inner problem, per task, started at phi = theta and solved with no graph kept:
    phi*(theta) = argmin_phi  G(phi) = L_S(phi) + (lam / 2) ||phi - theta||^2
  inner_solver 'gd': `inner_steps` gradient-descent steps of size `inner_lr` on G;
  inner_solver 'hf': `inner_steps` Hessian-free (truncated Newton) steps: the search direction
      solves (H + lam I) d = grad G by `cg_steps` of CG, the step size comes from a backtracking
      line search on G (the paper's "iMAML, Hessian-Free").
Implicit meta-gradient: d phi*/d theta = (I + H/lam)^{-1}, H the Hessian of L_S at phi*, so the
task's meta-gradient g solves
    ((1 + cg_damping) I + H / (lam + lam_damping)) g = grad_phi L_Q(phi*)
by `cg_steps` of conjugate gradient on Hessian-vector products. With cg_damping = lam_damping = 0
this is the paper's system (I + H/lam) g = grad L_Q; the dampings keep CG well posed where H is
indefinite (a neural network far from a minimum).

Relation to the official code (aravindr93/imaml_dev), read to fix these choices:
- Its CG matrix is `(1 + regu_coef) v + H v / (lam + lam_damping)`, and its training script passes
  `--cg_damping` (1.0 in the published Omniglot command) as `regu_coef`, leaving `lam_damping` at its
  default 10.0. Our `cg_damping` and `lam_damping` are those two numbers, so the `paper` profile
  (cg_damping 1, lam_damping 10) computes what the official runs computed; both 0 is the exact system.
- Its `--lam_lr` (learning lam by its own meta-gradient) is 0 in every published command and marked
  untested there: lam is a fixed hyperparameter here.
- Its inner loop (examples/omniglot_implicit_maml.py: `learn_task`, then one `inner_opt` step on
  `regularization_loss(w_k, lam)`) runs `inner_steps` plain SGD steps on L_S and then one step of
  the same size on the proximal term alone, phi <- phi - inner_lr * lam * (phi - theta). By default
  (`proximal: objective`) we follow the paper and descend G itself, so phi is (approximately) the
  point the implicit gradient assumes; `proximal: final_step` is the official code's order (gd only).
- Its meta-test adaptation (examples/measure_accuracy.py, run with `--lam 0.0` in examples/README.md)
  is the same loop with lam = 0: plain gradient descent on L_S, no proximal pull. `test_lam` is the
  lam of meta-test adaptation (`adapt` without `lam`); default: `lam`, the proximal problem of training.
- Its outer Adam has eps 1e-3 (implicit_maml/learner_model.py): `meta_adam_eps` (train.py's Adam;
  default PyTorch's 1e-8, the paper profile 1e-3).
- Its test (measure_accuracy.py, utils.measure_accuracy) predicts a task's N*K query images (x_val) in
  one forward pass, so BatchNorm normalises K query images per class together: `eval_query_batch: shots`
  feeds our saved episodes' query images so, K per class at a time (as the MAML family, maml.py, whose
  `predict_query` and `query_batches` are used here); default `all`, every query image at once.
Memory does not depend on `inner_steps`: only phi* and one Hessian-vector-product graph live.

Meta-training and evaluation run chunks of tasks together (as maml.py; solver `gd`), each task with its
own phi [tasks, *shape] in one network call (models.py, `forward_tasks`). The chunk's summed inner
objective separates over the tasks, so its gradient is every task's own, and its Hessian is block-
diagonal: one Hessian-vector product of the sum gives every task's own product. CG then runs every
task's system with its own step sizes (`conjugate_gradient_tasks`), so the result is the one-task
loop's, to float rounding (tests/test_batched.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from metalearn.algorithms.base import Algorithm, add_to_grad, detached, mean_metrics
from metalearn.algorithms.maml import MAML, query_metrics, task_chunks
from metalearn.tasks import Params, Task, TaskBatch


def dot(u: list[Tensor], v: list[Tensor]) -> Tensor:
    return sum((a * b).sum() for a, b in zip(u, v))


def conjugate_gradient(matvec, b: list[Tensor], steps: int) -> list[Tensor]:
    """Approximately solve A x = b from x = 0 with `steps` CG iterations (A symmetric).

    Truncated as in truncated-Newton methods (Nocedal & Wright, Alg. 7.1): if a direction of
    non-positive curvature appears, stop and return the current iterate (b itself if it is the first),
    which for A = a Hessian-based matrix is still a descent direction / a gradient-like estimate."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = dot(r, r)
    for i in range(steps):
        if rs <= 1e-30:
            break
        ap = matvec(p)
        curvature = dot(p, ap)
        if curvature <= 0:
            return [t.clone() for t in b] if i == 0 else x
        alpha = rs / curvature
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rs_new = dot(r, r)
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p)]
        rs = rs_new
    return x


def task_dot(u: list[Tensor], v: list[Tensor]) -> Tensor:
    """`dot` of every task's own vectors, stacked along a leading task dimension: [tasks]."""
    return sum((a * b).flatten(1).sum(1) for a, b in zip(u, v))


def conjugate_gradient_tasks(matvec, b: list[Tensor], steps: int) -> list[Tensor]:
    """`conjugate_gradient` for a stack of independent systems (a leading task dimension; `matvec`
    block-diagonal across tasks): each task runs its own iteration, with its own step sizes and its
    own stopping (converged, or non-positive curvature: b itself at the first iteration, else the
    current iterate), so every task gets what `conjugate_gradient` gives it alone."""
    def per_task(scalars: Tensor, like: Tensor) -> Tensor:
        return scalars.view(-1, *[1] * (like.dim() - 1))
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = task_dot(r, r)
    active = torch.ones_like(rs, dtype=torch.bool)
    for i in range(steps):
        active &= rs > 1e-30
        if not active.any():
            break
        ap = matvec(p)
        curvature = task_dot(p, ap)
        negative = active & (curvature <= 0)
        if i == 0:
            x = [torch.where(per_task(negative, bi), bi, xi) for xi, bi in zip(x, b)]
        active &= ~negative
        alpha = torch.where(active, rs / curvature, torch.zeros_like(rs))
        x = [xi + per_task(alpha, xi) * pi for xi, pi in zip(x, p)]
        r = [ri - per_task(alpha, ri) * api for ri, api in zip(r, ap)]
        rs_new = task_dot(r, r)
        beta = torch.where(active, rs_new / rs, torch.zeros_like(rs))
        p = [ri + per_task(beta, ri) * pi for ri, pi in zip(r, p)]
        rs = torch.where(active, rs_new, rs)
    return x


class IMAML(Algorithm):
    name = "imaml"
    parallel_tasks = True  # per-task code is pure: objective.forward and autograd only
    batched_tasks = True  # chunks of tasks together (solver gd) when the network has forward_tasks

    def __init__(self, model, objective, hparams):
        super().__init__(model, objective, hparams)
        self.inner_lr = float(hparams["inner_lr"])
        self.inner_steps = int(hparams["inner_steps"])
        self.lam = float(hparams["lam"])
        self.cg_steps = int(hparams["cg_steps"])
        self.cg_damping = float(hparams.get("cg_damping", 0.0))
        self.lam_damping = float(hparams.get("lam_damping", 0.0))
        self.inner_solver = hparams.get("inner_solver", "gd")
        if self.inner_solver not in ("gd", "hf"):
            raise ValueError(f"inner_solver must be 'gd' or 'hf', not {self.inner_solver!r}")
        self.proximal = hparams.get("proximal", "objective")  # see the module docstring
        if self.proximal not in ("objective", "final_step"):
            raise ValueError(f"proximal must be 'objective' or 'final_step', not {self.proximal!r}")
        if self.proximal == "final_step" and self.inner_solver != "gd":
            raise ValueError("proximal 'final_step' (the official code's inner loop) needs inner_solver gd")
        self.test_lam = float(hparams.get("test_lam", self.lam))  # lam of meta-test adaptation
        self.eval_query_batch = hparams.get("eval_query_batch", "all")  # see the module docstring
        if self.eval_query_batch not in ("all", "shots"):
            raise ValueError(f"eval_query_batch must be 'all' or 'shots', not {self.eval_query_batch!r}")
        if self.eval_query_batch == "shots" and objective.kind != "classification":
            raise ValueError("eval_query_batch 'shots' is for classification (batches of K images per class)")

    # evaluation's query batches (`eval_query_batch`), as the MAML family feeds them
    predict_query = MAML.predict_query
    query_batches = MAML.query_batches

    def hessian_operator(self, params: Params, support):
        """v -> (Hessian of L_S at `params`) v. The gradient graph is built once and reused by every
        product of one CG solve; it is freed with the returned function."""
        params = detached(params)
        inputs = list(params.values())
        grads = torch.autograd.grad(self.objective.loss(params, support), inputs, create_graph=True)

        def product(v: list[Tensor]) -> list[Tensor]:
            # A parameter whose gradient is linear in every parameter (the MAML code's BatchNorm offset,
            # models.py) has no second-order graph: its Hessian rows are zero, not missing.
            hv = torch.autograd.grad(grads, inputs, grad_outputs=v, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if h is None else h for p, h in zip(inputs, hv)]
        return product

    def proximal_objective(self, phi: Params, theta: Params, support, lam: float | None = None) -> Tensor:
        """G(phi) = L_S(phi) + lam/2 ||phi - theta||^2, the inner problem (lam: default `lam`)."""
        distance = sum(((p - t) ** 2).sum() for p, t in zip(phi.values(), theta.values()))
        return self.objective.loss(phi, support) + 0.5 * (self.lam if lam is None else lam) * distance

    def line_search(self, phi: Params, theta: Params, support, lam: float, direction: list[Tensor],
                    slope: Tensor, shrink: float = 0.5, tries: int = 10) -> float:
        """Backtracking (Armijo) step size t for phi - t * direction, from the full Newton step t = 1;
        `slope` = grad G . direction. Returns 0 if no tried step decreases G."""
        with torch.no_grad():
            start = self.proximal_objective(phi, theta, support, lam)
            t = 1.0
            for _ in range(tries):
                trial = {k: p - t * d for (k, p), d in zip(phi.items(), direction)}
                if self.proximal_objective(trial, theta, support, lam) <= start - 1e-4 * t * slope:
                    return t
                t *= shrink
        return 0.0

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None,
              lam: float | None = None) -> Params:
        """phi* of the proximal inner problem, as fresh leaves: no graph to theta (`create_graph`
        is ignored: the meta-gradient is implicit, never backpropagated through these steps).
        `lam`: the proximal strength (default `test_lam`, meta-test's; meta-training passes `lam`)."""
        lam = self.test_lam if lam is None else lam
        theta = {k: v.detach() for k, v in (params or self.initial_params()).items()}
        phi = detached(theta)
        # proximal 'final_step' (official code): the steps descend L_S alone (lam 0), then one step on the pull
        step_lam = 0.0 if self.proximal == "final_step" else lam
        for _ in range(self.test_inner_steps if steps is None else steps):
            objective = self.proximal_objective(phi, theta, support, step_lam)
            grads = list(torch.autograd.grad(objective, list(phi.values())))
            if self.inner_solver == "hf":  # truncated Newton: (H + lam I) d = grad G by CG, then search
                hessian = self.hessian_operator(phi, support)
                direction = conjugate_gradient(
                    lambda v: [h + lam * vi for h, vi in zip(hessian(v), v)], grads, self.cg_steps)
                del hessian  # free the Hessian graph before the line search's forward passes
                step = self.line_search(phi, theta, support, lam, direction, dot(grads, direction))
                update = [step * d for d in direction]
            else:
                update = [self.inner_lr * g for g in grads]
            phi = {k: (p - u).detach().requires_grad_() for (k, p), u in zip(phi.items(), update)}
        if self.proximal == "final_step" and lam:  # phi <- phi - inner_lr * grad (lam/2)||phi - theta||^2
            phi = {k: (p - self.inner_lr * lam * (p - theta[k])).detach().requires_grad_() for k, p in phi.items()}
        return phi

    def task_meta_gradient(self, task: Task) -> tuple[list[Tensor], dict[str, float]]:
        """g = ((1 + cg_damping) I + H / (lam + lam_damping))^{-1} grad L_Q(phi*), by CG."""
        phi = self.adapt(task.support, self.inner_steps, lam=self.lam)
        outputs = self.objective.forward(phi, task.query[0])
        loss = self.objective.criterion(outputs, task.query[1])
        query_grad = list(torch.autograd.grad(loss, list(phi.values())))
        hessian = self.hessian_operator(phi, task.support)
        identity, scale = 1.0 + self.cg_damping, 1.0 / (self.lam + self.lam_damping)
        meta_grad = conjugate_gradient(lambda v: [identity * vi + scale * h for vi, h in zip(v, hessian(v))],
                                       query_grad, self.cg_steps)
        return meta_grad, self.objective.metrics(outputs.detach(), task.query[1], loss.detach())

    def meta_step(self, tasks) -> dict[str, float]:
        """The implicit meta-gradient is not the gradient of a loss: set .grad directly (mean over tasks)."""
        if self.takes_chunks():
            results = self.map_tasks(self.chunk_meta_gradient, task_chunks(self, tasks))
            metrics = [m for _, chunk_metrics in results for m in chunk_metrics]
        else:
            results = self.map_tasks(self.task_meta_gradient, tasks)
            metrics = [m for _, m in results]
        # initial_params() order = parameters() order
        add_to_grad(self.model.parameters(), [g for g, _ in results], 1.0 / len(tasks))
        return mean_metrics(metrics)

    # -- chunks of tasks at once (see the module docstring) ----------------------------------------
    def takes_chunks(self) -> bool:
        return self.batched_tasks and self.objective.batches_tasks and self.inner_solver == "gd"

    def adapt_tasks(self, support_x: Tensor, support_y: Tensor, steps: int, lam: float) -> Params:
        """`adapt` of every task of a chunk: phi* name -> [tasks, *shape], fresh leaves."""
        theta = {k: v.detach().expand(len(support_x), *v.shape) for k, v in self.initial_params().items()}
        phi = {k: v.clone().requires_grad_() for k, v in theta.items()}
        step_lam = 0.0 if self.proximal == "final_step" else lam
        for _ in range(steps):
            outputs = self.objective.forward_tasks(phi, support_x)
            distance = sum(((p - t) ** 2).flatten(1).sum(1) for p, t in zip(phi.values(), theta.values()))
            objective = self.objective.task_losses(outputs, support_y) + 0.5 * step_lam * distance
            grads = torch.autograd.grad(objective.sum(), list(phi.values()))
            phi = {k: (p - self.inner_lr * g).detach().requires_grad_() for (k, p), g in zip(phi.items(), grads)}
        if self.proximal == "final_step" and lam:
            phi = {k: (p - self.inner_lr * lam * (p - theta[k])).detach().requires_grad_() for k, p in phi.items()}
        return phi

    def chunk_meta_gradient(self, tasks: TaskBatch) -> tuple[list[Tensor], list[dict[str, float]]]:
        """`task_meta_gradient` of a chunk's tasks, summed over them, and each task's metrics."""
        phi = self.adapt_tasks(tasks.support_x, tasks.support_y, self.inner_steps, self.lam)
        outputs = self.objective.forward_tasks(phi, tasks.query_x)
        losses = self.objective.task_losses(outputs, tasks.query_y)
        query_grad = list(torch.autograd.grad(losses.sum(), list(phi.values())))
        support_losses = self.objective.task_losses(self.objective.forward_tasks(phi, tasks.support_x), tasks.support_y)
        grads = torch.autograd.grad(support_losses.sum(), list(phi.values()), create_graph=True)

        # CG runs on one [tasks, P] matrix, every task's parameters side by side in a row, rather than
        # on the list of parameter tensors: a few operations per CG step instead of a few per tensor
        # (timed: docs/notes/speed.md); the Hessian-vector products take and give the tensors.
        shapes, sizes = [p.shape for p in phi.values()], [p[0].numel() for p in phi.values()]

        def rows(tensors: list[Tensor]) -> Tensor:
            return torch.cat([t.reshape(len(tasks), -1) for t in tensors], dim=1)

        def hessian(v: Tensor) -> Tensor:  # block-diagonal: each task's own H v
            hv = torch.autograd.grad(grads, list(phi.values()), retain_graph=True, allow_unused=True,
                                     grad_outputs=[c.reshape(s) for c, s in zip(v.split(sizes, dim=1), shapes)])
            return rows([torch.zeros_like(p) if h is None else h for p, h in zip(phi.values(), hv)])
        identity, scale = 1.0 + self.cg_damping, 1.0 / (self.lam + self.lam_damping)
        [meta_grad] = conjugate_gradient_tasks(lambda v: [identity * v[0] + scale * hessian(v[0])],
                                               [rows(query_grad)], self.cg_steps)
        return ([g.sum(0).view(s[1:]) for g, s in zip(meta_grad.split(sizes, dim=1), shapes)],
                self.objective.task_metrics(outputs.detach(), tasks.query_y, losses.detach()))

    def evaluate_tasks(self, tasks: TaskBatch, steps: int, curve: bool = False) -> list:
        """Chunks of tasks adapted together (`adapt_tasks`, lam = `test_lam`), their query images fed in
        `query_batches`, to the one-task loop's metrics; the curve, the `hf` solver and tasks whose query
        sets are laid out differently one task at a time (base.py)."""
        batches = self.query_batches(tasks.query_y, tasks.support_y)
        if curve or not self.takes_chunks() or batches is None:
            return super().evaluate_tasks(tasks, steps, curve)

        def chunk_metrics(chunk: TaskBatch) -> list[dict[str, float]]:
            with torch.enable_grad():
                phi = self.adapt_tasks(chunk.support_x, chunk.support_y, steps, self.test_lam)
            return query_metrics(self.objective.forward_tasks, phi, self.objective, chunk, batches)
        chunks = task_chunks(self, tasks)
        return [m for metrics in self.map_tasks(chunk_metrics, chunks) for m in metrics]
