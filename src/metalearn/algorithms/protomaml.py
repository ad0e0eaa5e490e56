"""Proto-MAML (Triantafillou et al. 2020, Meta-Dataset): MAML whose output layer starts every task
from the support set's prototypes, and its first-order variant (the paper's fo-Proto-MAML).

Per task, before the inner loop: c_k = the mean embedding of class k's support examples (the
features of the network at theta, just before the head), the head's weight row k = 2 c_k and its
bias -||c_k||^2 (metalearn/heads.py), so that before any step the network scores x by -||f(x) - c_k||^2
up to a per-example constant. Then MAML's inner loop runs from there, and the query loss after it is
the meta-loss, as in MAML. The head is a function of the feature parameters, so the meta-gradient
flows through the prototypes too: second order (`protomaml`) through the inner steps as MAML;
first order (`foprotomaml`) with the inner gradients constant as FOMAML, but still through the
prototype head, as the paper's code does (google-research/meta-dataset, MAMLLearner.forward_pass: the
prototypes come from the embedding variables with no stop-gradient, and the inner steps differentiate
the embedding and the head variables each as their own). The network's own head parameters are
never used, so they are never meta-learned (they stay at their initialisation); any number of classes
works at test time, as the head is built for the task.

Everything else is MAML's (maml.py: inner loss, step sizes, `eval_query_batch`, chunks of tasks);
only where the head is set per task is new: `adapt` (one task: evaluation and the one-task meta-loss),
`chunk_meta_losses` (meta-training a chunk), `evaluate_chunk` and `evaluate_task_curve` (evaluation).
A separate module, so that maml.py, and with it the settings digests of every trained MAML-family
model, stays as it is.

Which algorithms: MAML and first-order MAML. Not (yet) the others, each for a reason:
- Meta-SGD, T-nets, MT-nets meta-learn parameters shaped by the classes (the head's learned rates,
  T after the head, the head's mask), which a per-task head of any number of classes does not fit,
  and with T after the head the network's output is not the head's (heads.py).
- iMAML's meta-gradient is implicit, (I + H/lam)^-1 grad L_Q at the solution, which assumes the
  proximal anchor is theta itself; with the head a function of theta it needs one more vector-Jacobian
  product through the prototypes, a change to its meta-gradient (imaml.py), not only to its start.
- Reptile and Leap meta-learn the initialisation from the path theta_0 -> theta_K; a head rebuilt per
  task is not part of a shared initialisation those updates move, so the prototype head would only
  enter at test time (`metalearn adapt --head proto` offers that for them).
- WarpGrad's meta-objective trains the warp layers at buffered trajectory points, with its own
  initialisation modes; it is a separate derivation.
Classification only (the head is built from class labels): a regression objective, or a network
without a linear `head`, is refused.
"""
from __future__ import annotations

import torch
from torch import Tensor

from metalearn.algorithms.base import detached
from metalearn.algorithms.maml import MAML
from metalearn.heads import HEAD_BIAS, HEAD_WEIGHT, with_prototype_head
from metalearn.tasks import Params, Task, TaskBatch


class ProtoMAML(MAML):
    name = "protomaml"
    first_order = False
    head_from_support = True  # the head is built from each task's support set (adapt.py reads this)
    classification_only = True  # refuses regression objectives and networks without a linear `head`

    def __init__(self, model, objective, hparams):
        super().__init__(model, objective, hparams)
        if objective.kind != "classification":
            raise ValueError(f"{self.name} builds its output layer from the support set's classes: "
                             "classification only")
        names = dict(model.named_parameters())
        if HEAD_WEIGHT not in names or HEAD_BIAS not in names or names[HEAD_WEIGHT].dim() != 2:
            raise ValueError(f"{self.name} needs a network whose output layer is a linear `head` "
                             f"({type(model).__name__} has none)")

    def with_support_head(self, params: Params, support_x: Tensor, support_y: Tensor, chunk: bool = False) -> Params:
        """`params` with the head set from the support set's prototypes (heads.py); `chunk`: params
        [tasks, *shape] and support [tasks, n, ...]. Differentiable in the feature parameters."""
        return with_prototype_head(self.predict_tasks if chunk else self.predict, params, support_x, support_y)

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None,
              step_sizes=None) -> Params:
        """MAML's inner loop from `params` (default theta, detached) with the head set from `support`
        first. With `params` given (meta-training) the head stays a function of them, for the
        meta-gradient; without, it starts as fresh leaves (evaluation: no meta-gradient)."""
        start = self.with_support_head(detached(self.initial_params()) if params is None else params, *support)
        if params is None:
            start = detached(start)
        return super().adapt(support, steps, create_graph, params=start, step_sizes=step_sizes)

    def evaluate_task_curve(self, task: Task, steps: int) -> list[dict[str, float]]:
        """MAML's curve (maml.py), from the prototype head: step 0 is the prototype classifier."""
        with torch.no_grad():
            params = detached(self.with_support_head(self.initial_params(), *task.support))
        curve = []
        for step in range(steps + 1):
            if step:
                with torch.enable_grad():
                    params = detached(MAML.adapt(self, task.support, 1, params=params))
            with torch.no_grad():
                curve.append(self.objective.metrics(self.predict_query(params, task), task.query[1]))
        return curve

    def evaluation_start(self, tasks: TaskBatch) -> Params:
        """MAML's start of a chunk's evaluation with every task's head set from its own support set."""
        theta = {name: p.detach().expand(len(tasks), *p.shape).clone() for name, p in self.initial_params().items()}
        with torch.no_grad():
            return detached(self.with_support_head(theta, tasks.support_x, tasks.support_y, chunk=True))

    def chunk_meta_losses(self, tasks: TaskBatch, step_sizes=None) -> tuple[Tensor, list[dict[str, float]]]:
        """MAML's `chunk_meta_losses` with every task's head set from its own support set first (a
        function of theta's feature parameters, so the meta-gradient flows through the prototypes)."""
        theta = {name: p.expand(len(tasks), *p.shape) for name, p in self.initial_params().items()}
        start = self.with_support_head(theta, tasks.support_x, tasks.support_y, chunk=True)

        def support_loss(p: Params) -> Tensor:
            outputs = self.predict_tasks(p, tasks.support_x)
            return self.support_loss(self.objective.task_losses(outputs, tasks.support_y), outputs).sum()
        adapted = self.descend(support_loss, start, self.inner_steps, create_graph=not self.first_order,
                               step_sizes=step_sizes)
        outputs = self.predict_tasks(adapted, tasks.query_x)
        losses = self.objective.task_losses(outputs, tasks.query_y)
        return losses, self.objective.task_metrics(outputs.detach(), tasks.query_y, losses)


class FOProtoMAML(ProtoMAML):
    name = "foprotomaml"
    first_order = True
