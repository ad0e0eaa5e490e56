"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML with a learned learning rate for every parameter.

Inner loop, per task:  theta' = theta - alpha (.) grad_theta L_S(theta), repeated `inner_steps` times,
                       alpha a tensor of theta's shape.
Outer loop:            (theta, alpha) <- Adam on sum_tasks L_Q(theta'), through the inner steps
                       (second order; `first_order`: the inner gradients are constants, alpha still
                       gets its gradient -grad L_S (.) grad L_Q).
alpha starts at `inner_lr` everywhere, so an untrained Meta-SGD is MAML with that inner_lr (the
reduction the tests check); a constant start also keeps the comparison with MAML's inner_lr direct.
The inner loop is MAML's (maml.py); only `step_sizes` differs.
"""
from __future__ import annotations

import torch
from torch import nn

from metalearn.algorithms.maml import MAML, StepSizes


class MetaSGD(MAML):
    name = "metasgd"

    def __init__(self, model, objective, hparams):
        super().__init__(model, objective, hparams)
        # alpha, one rate per parameter entry; keys are parameter names with '.' -> '-'
        # (the adapted parameters only: none for the network's `meta_only` ones, maml.py)
        self.alpha = nn.ParameterDict({name.replace(".", "-"): nn.Parameter(torch.full_like(p, self.inner_lr))
                                       for name, p in self.initial_params().items()})

    def step_sizes(self) -> StepSizes:
        return {name: self.alpha[name.replace(".", "-")] for name in self.initial_params()}
