"""iMAML's implicit meta-gradient against the exact one on a problem with a closed-form inner solution."""
from __future__ import annotations

import torch
from torch import nn

from metalearn.algorithms import build_algorithm
from metalearn.tasks import Objective, TaskBatch

D = 6


def ridge_setup(cg_steps, inner_steps=400, lam=2.0, cg_damping=0.0, solver="gd", inner_lr=0.05):
    """Linear regression on fixed features: L_S(phi) = mean((X_s phi - y_s)^2)."""
    torch.manual_seed(0)
    model = nn.Linear(D, 1, bias=False).double()
    algo = build_algorithm("imaml", model, Objective(model, "regression"),
                           {"inner_lr": inner_lr, "inner_steps": inner_steps, "test_inner_steps": inner_steps,
                            "lam": lam, "cg_steps": cg_steps, "cg_damping": cg_damping, "inner_solver": solver})
    x = torch.randn(2, 20, D, dtype=torch.float64)
    y = x @ torch.randn(2, D, 1, dtype=torch.float64) + 0.1 * torch.randn(2, 20, 1, dtype=torch.float64)
    return algo, TaskBatch(x[:, :8], y[:, :8], x[:, 8:], y[:, 8:])


def exact_meta_gradient(algo, batch, lam):
    """Differentiate the closed form phi*(theta) = (H + lam I)^{-1} (2/n X^T y + lam theta)."""
    theta = algo.model.weight.detach().clone().view(-1).requires_grad_()
    total = 0.0
    for i in range(len(batch)):
        xs, ys = batch.support_x[i], batch.support_y[i].view(-1)
        n = xs.shape[0]
        hessian = 2.0 / n * xs.T @ xs
        phi = torch.linalg.solve(hessian + lam * torch.eye(D, dtype=xs.dtype), 2.0 / n * xs.T @ ys + lam * theta)
        total = total + ((batch.query_x[i] @ phi - batch.query_y[i].view(-1)) ** 2).mean()
    return torch.autograd.grad(total / len(batch), theta)[0]


def implicit(algo, batch):
    algo.zero_grad(set_to_none=True)
    algo.meta_step(batch)
    return algo.model.weight.grad.view(-1).clone()


def test_implicit_meta_gradient_matches_the_closed_form_and_improves_with_cg_steps():
    errors = []
    for cg_steps in (1, 2, 4, D):
        algo, batch = ridge_setup(cg_steps)
        exact = exact_meta_gradient(algo, batch, lam=2.0)
        errors.append((implicit(algo, batch) - exact).norm().item() / exact.norm().item())
    assert errors[-1] < 1e-8  # CG is exact in D steps on a D-dimensional problem
    assert errors[0] > errors[1] > errors[2] > errors[-1]


def test_hessian_free_inner_solver_reaches_the_proximal_solution():
    algo, batch = ridge_setup(cg_steps=D, inner_steps=1, solver="hf")
    xs, ys = batch.support_x[0], batch.support_y[0].view(-1)
    theta = algo.model.weight.detach().view(-1)
    hessian = 2.0 / xs.shape[0] * xs.T @ xs
    expected = torch.linalg.solve(hessian + 2.0 * torch.eye(D, dtype=xs.dtype), 2.0 / xs.shape[0] * xs.T @ ys + 2.0 * theta)
    phi = algo.adapt(batch[0].support, steps=1)
    torch.testing.assert_close(phi["weight"].view(-1), expected, rtol=1e-8, atol=1e-10)
    exact = exact_meta_gradient(algo, batch, lam=2.0)
    torch.testing.assert_close(implicit(algo, batch), exact, rtol=1e-7, atol=1e-10)


def test_inner_solve_keeps_no_graph_to_theta():
    algo, batch = ridge_setup(cg_steps=2, inner_steps=5)
    phi = algo.adapt(batch[0].support, steps=5)
    assert all(p.grad_fn is None and p.is_leaf for p in phi.values())


def test_large_lambda_keeps_phi_at_theta_and_gives_the_first_order_gradient():
    """lam -> infinity: phi* -> theta and (I + H/lam)^{-1} -> I, so the meta-gradient is grad L_Q(theta)."""
    algo, batch = ridge_setup(cg_steps=3, inner_steps=20, lam=1e8, inner_lr=1e-9)
    theta = algo.model.weight.detach().clone().requires_grad_()
    loss = sum(((batch.query_x[i] @ theta.T - batch.query_y[i]) ** 2).mean() for i in range(2)) / 2
    expected = torch.autograd.grad(loss, theta)[0].view(-1)
    torch.testing.assert_close(implicit(algo, batch), expected, rtol=1e-6, atol=1e-9)


def test_imaml_trains_the_conv4_for_a_few_steps():
    from metalearn.models import Conv4

    torch.manual_seed(0)
    model = Conv4(1, 5)
    algo = build_algorithm("imaml", model, Objective(model, "classification"),
                           {"inner_lr": 0.1, "inner_steps": 3, "test_inner_steps": 3, "lam": 2.0,
                            "cg_steps": 3, "cg_damping": 1.0})
    x = torch.rand(2, 10, 1, 28, 28)
    y = torch.arange(5).repeat(2).expand(2, -1)
    batch = TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    metrics = algo.meta_step(batch)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in algo.parameters())
