"""iMAML's implicit meta-gradient against the exact one on a problem with a closed-form inner solution
(ridge regression on fixed features), its inner solvers, and its reductions."""
from __future__ import annotations

import torch
from torch import nn

from metalearn.algorithms import build_algorithm
from metalearn.algorithms.imaml import conjugate_gradient
from metalearn.models import MLP
from metalearn.tasks import Objective, TaskBatch

D = 6
LAM = 2.0


def ridge_setup(cg_steps, inner_steps=400, lam=LAM, solver="gd", inner_lr=0.05, **damping):
    """Linear regression on fixed features, L_S(phi) = mean((X_s phi - y_s)^2): a quadratic, so the
    proximal inner problem has a closed-form solution. Two tasks, float64."""
    torch.manual_seed(0)
    model = nn.Linear(D, 1, bias=False).double()
    algo = build_algorithm("imaml", model, Objective(model, "regression"),
                           {"inner_lr": inner_lr, "inner_steps": inner_steps, "test_inner_steps": inner_steps,
                            "lam": lam, "cg_steps": cg_steps, "inner_solver": solver, **damping})
    x = torch.randn(2, 20, D, dtype=torch.float64)
    y = x @ torch.randn(2, D, 1, dtype=torch.float64) + 0.1 * torch.randn(2, 20, 1, dtype=torch.float64)
    return algo, TaskBatch(x[:, :8], y[:, :8], x[:, 8:], y[:, 8:])


def closed_form_solution(xs, ys, theta, lam):
    """phi*(theta) = (H + lam I)^{-1} (2/n X^T y + lam theta), H = 2/n X^T X; and H."""
    n = xs.shape[0]
    hessian = 2.0 / n * xs.T @ xs
    phi = torch.linalg.solve(hessian + lam * torch.eye(D, dtype=xs.dtype), 2.0 / n * xs.T @ ys.view(-1) + lam * theta)
    return phi, hessian


def exact_meta_gradient(algo, batch, lam):
    """d/dtheta of the mean query loss at phi*(theta), by differentiating the closed form."""
    theta = algo.model.weight.detach().clone().view(-1).requires_grad_()
    total = 0.0
    for i in range(len(batch)):
        phi, _ = closed_form_solution(batch.support_x[i], batch.support_y[i], theta, lam)
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
        exact = exact_meta_gradient(algo, batch, lam=LAM)
        errors.append((implicit(algo, batch) - exact).norm().item() / exact.norm().item())
    assert errors[-1] < 1e-8  # CG is exact in D steps on a D-dimensional problem
    assert errors[0] > errors[1] > errors[2] > errors[-1]
    assert errors[0] > 1e-3  # one CG step is visibly inexact here: the comparison has teeth


def test_damping_solves_the_official_codes_system():
    """cg_damping c, lam_damping d: g = ((1 + c) I + H / (lam + d))^{-1} grad L_Q(phi*), the matrix of
    imaml_dev's matrix_evaluator (regu_coef = c, lam_damping = d)."""
    c, d = 1.0, 10.0
    algo, batch = ridge_setup(cg_steps=D, cg_damping=c, lam_damping=d)
    theta = algo.model.weight.detach().view(-1)
    expected = 0.0
    for i in range(len(batch)):
        phi, hessian = closed_form_solution(batch.support_x[i], batch.support_y[i], theta, LAM)
        xq, yq = batch.query_x[i], batch.query_y[i].view(-1)
        query_grad = 2.0 / xq.shape[0] * xq.T @ (xq @ phi - yq)
        matrix = (1 + c) * torch.eye(D, dtype=torch.float64) + hessian / (LAM + d)
        expected = expected + torch.linalg.solve(matrix, query_grad) / len(batch)
    torch.testing.assert_close(implicit(algo, batch), expected, rtol=1e-7, atol=1e-10)


def test_hessian_free_inner_solver_reaches_the_proximal_solution_in_one_newton_step():
    algo, batch = ridge_setup(cg_steps=D, inner_steps=1, solver="hf")
    theta = algo.model.weight.detach().view(-1)
    expected, _ = closed_form_solution(batch.support_x[0], batch.support_y[0], theta, LAM)
    phi = algo.adapt(batch[0].support, steps=1)
    torch.testing.assert_close(phi["weight"].view(-1), expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(implicit(algo, batch), exact_meta_gradient(algo, batch, LAM), rtol=1e-7, atol=1e-10)


def test_meta_gradient_depends_on_the_solution_not_the_path():
    """400 small GD steps and 1 Newton step reach the same phi*: the same meta-gradient."""
    gd, batch = ridge_setup(cg_steps=D, inner_steps=400, solver="gd")
    hf, _ = ridge_setup(cg_steps=D, inner_steps=1, solver="hf")
    torch.testing.assert_close(implicit(gd, batch), implicit(hf, batch), rtol=1e-7, atol=1e-10)


def test_hessian_free_steps_never_increase_the_proximal_objective_of_a_network():
    """On a non-convex network (negative curvature possible), the line search keeps G decreasing."""
    torch.manual_seed(0)
    model = MLP(1, (16, 16), 1)
    algo = build_algorithm("imaml", model, Objective(model, "regression"),
                           {"inner_lr": 0.01, "inner_steps": 1, "lam": 0.1, "cg_steps": 5, "inner_solver": "hf"})
    x = torch.rand(10, 1) * 10 - 5
    support = (x, 3.0 * torch.sin(x + 1.0))
    theta = {k: v.detach() for k, v in algo.initial_params().items()}
    # k steps from theta: each prefix of the same deterministic run
    values = []
    for steps in range(6):
        phi = algo.adapt(support, steps=steps)
        with torch.no_grad():
            values.append(algo.proximal_objective(phi, theta, support).item())
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert values[-1] < 0.5 * values[0]  # and it makes real progress


def test_conjugate_gradient_stops_at_negative_curvature():
    """Truncated CG: on an indefinite matrix whose first direction has negative curvature it returns
    b (a gradient-like direction) rather than stepping towards a saddle."""
    matrix = torch.diag(torch.tensor([-1.0, 2.0]))
    b = [torch.tensor([1.0, 0.0])]
    torch.testing.assert_close(conjugate_gradient(lambda v: [matrix @ v[0]], b, 5)[0], b[0])
    spd = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    x = conjugate_gradient(lambda v: [spd @ v[0]], [torch.tensor([1.0, 2.0])], 2)[0]
    torch.testing.assert_close(x, torch.linalg.solve(spd, torch.tensor([1.0, 2.0])))


def test_inner_solve_keeps_no_graph_to_theta():
    for solver in ("gd", "hf"):
        algo, batch = ridge_setup(cg_steps=2, inner_steps=5, solver=solver)
        phi = algo.adapt(batch[0].support, steps=5, params=algo.initial_params())
        assert all(p.grad_fn is None and p.is_leaf for p in phi.values())
        assert algo.model.weight.grad is None  # nothing was backpropagated into theta either


def test_large_lambda_keeps_phi_at_theta_and_gives_the_first_order_gradient():
    """lam -> infinity: phi* -> theta and (I + H/lam)^{-1} -> I, so the meta-gradient is grad L_Q(theta)."""
    algo, batch = ridge_setup(cg_steps=3, inner_steps=20, lam=1e8, inner_lr=1e-9)
    theta = algo.model.weight.detach().clone().requires_grad_()
    phi = algo.adapt(batch[0].support, steps=20)
    torch.testing.assert_close(phi["weight"], theta.detach(), rtol=0, atol=1e-7)
    loss = sum(((batch.query_x[i] @ theta.T - batch.query_y[i]) ** 2).mean() for i in range(2)) / 2
    expected = torch.autograd.grad(loss, theta)[0].view(-1)
    torch.testing.assert_close(implicit(algo, batch), expected, rtol=1e-6, atol=1e-9)


def test_meta_training_lowers_the_adapted_query_loss():
    """A few Adam meta-steps on a fixed batch of sinusoid-like tasks lower the loss after adaptation."""
    torch.manual_seed(0)
    model = MLP(1, (16, 16), 1)
    algo = build_algorithm("imaml", model, Objective(model, "regression"),
                           {"inner_lr": 0.02, "inner_steps": 10, "lam": 1.0, "cg_steps": 5,
                            "cg_damping": 1.0, "lam_damping": 10.0})
    x = torch.rand(4, 20, 1) * 10 - 5
    y = torch.linspace(1, 3, 4).view(4, 1, 1) * torch.sin(x + torch.linspace(0, 2, 4).view(4, 1, 1))
    batch = TaskBatch(x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])
    optimizer = torch.optim.Adam(algo.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        optimizer.zero_grad(set_to_none=True)
        losses.append(algo.meta_step(batch)["loss"])
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]


def test_imaml_trains_the_conv4_for_a_step():
    from metalearn.models import Conv4

    torch.manual_seed(0)
    model = Conv4(1, 5)
    algo = build_algorithm("imaml", model, Objective(model, "classification"),
                           {"inner_lr": 0.1, "inner_steps": 3, "test_inner_steps": 3, "lam": 2.0,
                            "cg_steps": 3, "cg_damping": 1.0, "lam_damping": 10.0})
    x = torch.rand(2, 10, 1, 28, 28)
    y = torch.arange(5).repeat(2).expand(2, -1)
    batch = TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    metrics = algo.meta_step(batch)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and 0.0 <= metrics["accuracy"] <= 1.0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in algo.parameters())
