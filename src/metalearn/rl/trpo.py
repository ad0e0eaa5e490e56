"""Trust region policy optimisation step (Schulman et al. 2015), the MAML paper's meta-optimiser for RL.

    maximise  L(theta)  subject to  KL(theta_old, theta) <= delta

with L the surrogate and KL the mean KL divergence of the policies, both functions of the meta-
parameters theta (through the inner adaptation for MAML). Settings as the official code's
optimiser (rllab ConjugateGradientOptimizer, used by cbfinn/maml_rl): the natural gradient direction
s = H^-1 g from `cg_iters` = 10 conjugate-gradient iterations on Hessian-vector products of the KL
(H + damping I, damping 1e-5), scaled to the trust-region edge sqrt(2 delta / s^T H s); then a
backtracking line search (ratio 0.8, at most 15 tries) accepts the first step that raises L and
keeps KL <= delta; if none does, the parameters stay where they were.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def conjugate_gradient(hvp: Callable[[Tensor], Tensor], b: Tensor, iterations: int, tol: float = 1e-10) -> Tensor:
    """Approximate solution x of H x = b (H symmetric positive definite, given by products H v)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iterations):
        hp = hvp(p)
        alpha = rr / (p @ hp)
        x, r = x + alpha * p, r - alpha * hp
        rr_new = r @ r
        if rr_new < tol:
            break
        p, rr = r + (rr_new / rr) * p, rr_new
    return x


def trpo_step(params: list[torch.nn.Parameter], surrogate: Callable[[], Tensor], kl: Callable[[], Tensor],
              max_kl: float = 0.01, cg_iters: int = 10, damping: float = 1e-5, backtrack_ratio: float = 0.8,
              max_backtracks: int = 15, kl_hvp: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
    """One TRPO update of `params` in place. `surrogate()` and `kl()` evaluate the objective and the
    mean KL from the old policy at the parameters' current values, differentiably. `kl_hvp`: products
    of the KL's Hessian at the current parameters with a flat vector, when the caller has a cheaper
    exact form (metarl.py's Fisher form); default: double backward through `kl()`."""
    old = [p.detach().clone() for p in params]
    loss_before = surrogate()
    g = _flat(torch.autograd.grad(loss_before, params, allow_unused=True, materialize_grads=True))
    if kl_hvp is None:
        kl_grads = _flat(torch.autograd.grad(kl(), params, create_graph=True, allow_unused=True,
                                             materialize_grads=True))

        def kl_hvp(v: Tensor) -> Tensor:
            return _flat(torch.autograd.grad(kl_grads @ v, params, retain_graph=True, allow_unused=True,
                                             materialize_grads=True))

    def hvp(v: Tensor) -> Tensor:
        return kl_hvp(v) + damping * v

    direction = conjugate_gradient(hvp, g.detach(), cg_iters)
    shs = direction @ hvp(direction)
    full_step = torch.sqrt(2 * max_kl / shs.clamp_min(1e-12)) * direction

    def assign(step: Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for p, p_old in zip(params, old):
                p.copy_(p_old + step[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    before = loss_before.item()
    for i in range(max_backtracks):
        assign(backtrack_ratio ** i * full_step)
        value, divergence = surrogate().item(), kl().item()
        if value > before and divergence <= max_kl:
            return {"surrogate_before": before, "surrogate": value, "kl": divergence, "backtracks": i}
    assign(torch.zeros_like(full_step))  # no acceptable step: stay
    return {"surrogate_before": before, "surrogate": before, "kl": 0.0, "backtracks": max_backtracks}
