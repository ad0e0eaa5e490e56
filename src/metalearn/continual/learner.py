"""The continual learner: a fixed random initialisation and, for WarpGrad, warp layers (its only
meta-parameters); learning a task sequence sub-task after sub-task."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalearn.algorithms.base import detached
from metalearn.algorithms.warpgrad import WarpedNetwork, warp_layers
from metalearn.continual.tasks import Sequences
from metalearn.errors import BadInput
from metalearn.models import MLP
from metalearn.tasks import Params

METHODS = ("warpgrad", "sgd")


class Learner(nn.Module):
    """The task learner: a fixed initialisation theta_0 (`model`, never meta-learned) and, for
    WarpGrad, warp layers phi (`warp`: its only meta-parameters). `sgd`: the same network without
    warp layers. Task parameters theta are a dict of the network's parameter names."""

    def __init__(self, method: str, bench: dict, hparams: dict[str, Any], seed: int):
        super().__init__()
        if method not in METHODS:
            raise BadInput(f"{method!r} is not a continual-learning method; use one of {list(METHODS)}")
        self.method = method
        torch.manual_seed(seed)  # the fixed random initialisation, the same for every method
        self.model = MLP(1, tuple(bench["hidden"]), 1).requires_grad_(False)
        self.inner_lr = float(hparams["inner_lr"])
        self.first_order = bool(hparams.get("first_order", False))
        self.warp = warp_layers(self.model) if method == "warpgrad" else None
        # the network the steps run through; not registered again (its parameters are model's and warp's)
        self.__dict__["network"] = WarpedNetwork(self.model, self.warp) if self.warp is not None else self.model

    def initial(self) -> Params:
        return detached(dict(self.model.named_parameters()))

    def predict(self, theta: Params, x: Tensor) -> Tensor:
        names = {f"task.{k}": v for k, v in theta.items()} if self.warp is not None else theta
        return functional_call(self.network, names, (x,))  # warp parameters: the live phi

    def loss(self, theta: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        return F.mse_loss(self.predict(theta, data[0]), data[1])

    def step(self, theta: Params, data: tuple[Tensor, Tensor], create_graph: bool = False) -> Params:
        """theta - alpha grad_theta L(theta; phi): one (warped) gradient step on `data`."""
        grads = torch.autograd.grad(self.loss(theta, data), list(theta.values()), create_graph=create_graph)
        new = {k: p - self.inner_lr * g for (k, p), g in zip(theta.items(), grads)}
        return new if create_graph else detached(new)

    def meta_parameters(self) -> list[nn.Parameter]:
        return [] if self.warp is None else list(self.warp.parameters())


def learn_sequence(learner: Learner, seqs: Sequences, i: int, steps: int,
                   visit: Callable[[int, int, Params], None] | None = None) -> Params:
    """Learn sequence i's sub-tasks in order, `steps` steps each, from theta_0; `visit(t, k, theta)`
    sees the point before each step (k counts all steps) and once more after the last (t = T - 1)."""
    theta = learner.initial()
    for t in range(seqs.subtasks):
        for j in range(steps):
            if visit is not None:
                visit(t, t * steps + j, theta)
            theta = learner.step(theta, seqs.support(i, t))
    if visit is not None:
        visit(seqs.subtasks - 1, seqs.subtasks * steps, theta)
    return theta
