"""The policy: a Gaussian MLP (MAML paper, Appendix A.2: two hidden layers of 100 ReLU units;
cbfinn/maml_rl MAMLGaussianMLPPolicy: Xavier-uniform weights, zero biases, a learned state-
independent log standard deviation starting at log 1, adapted in the inner loop like the weights).

Functional, as the rest of metalearn: ``distribution(params, obs)`` takes the parameters as a dict.
Parameters may carry a leading task dimension (one adapted policy per task, [tasks, ...]) with
observations [tasks, n, obs_dim]: all tasks' policies then run in one batched matrix product.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]
# hidden units' nonlinearity: relu (MAML's policies), tanh (rllab's default, so maml_rl's random baseline on
# 2D navigation, test_maml_point.py, which passes none)
NONLINEARITIES = {"relu": torch.relu, "tanh": torch.tanh}


class GaussianMLPPolicy(nn.Module):
    def __init__(self, observation_dim: int, action_dim: int, hidden: tuple[int, ...] = (100, 100),
                 init_std: float = 1.0, nonlinearity: str = "relu"):
        super().__init__()
        self.nonlinearity = NONLINEARITIES[nonlinearity]
        sizes = (observation_dim, *hidden, action_dim)
        self.layers = len(sizes) - 1
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            weight = torch.empty(n_in, n_out)  # [in, out]: obs @ W, batched per task as [tasks, in, out]
            nn.init.xavier_uniform_(weight)
            setattr(self, f"w{i}", nn.Parameter(weight))
            setattr(self, f"b{i}", nn.Parameter(torch.zeros(n_out)))
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def params(self) -> Params:
        return dict(self.named_parameters())

    def distribution(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of the action distribution, both shaped like obs[..., :action_dim].
        Per-task parameters ([tasks, ...]) need obs [tasks, n, obs_dim]."""
        per_task = params["w0"].dim() == 3
        h = obs
        for i in range(self.layers):
            bias = params[f"b{i}"]
            h = h @ params[f"w{i}"] + (bias[:, None] if per_task else bias)
            if i < self.layers - 1:
                h = self.nonlinearity(h)
        log_std = params["log_std"]
        log_std = (log_std[:, None] if per_task else log_std).expand_as(h)
        return h, log_std


def log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, diag(exp(log_std)^2)), summed over the action dimensions."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl_divergence(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the action dimensions."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


def per_task(params: Params, tasks: int) -> Params:
    """Shared parameters viewed as a [tasks, ...] stack (no copy; gradients flow back to them)."""
    return {name: p.expand(tasks, *p.shape) for name, p in params.items()}
