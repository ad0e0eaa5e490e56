"""Reptile's meta-gradient is theta_0 - mean theta_K: closed forms on a quadratic and a linear model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms import ALGORITHMS, build_algorithm
from metalearn.tasks import Objective, Task, TaskBatch


def linear_setup(tasks=3, steps=4, alpha=0.1):
    """A 1-output linear model on MSE: L_S(w) = |X w - y|^2 / n is a quadratic with Hessian A = 2 X'X / n."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    hp = {"inner_lr": alpha, "inner_steps": steps, "test_inner_steps": steps}
    algo = build_algorithm("reptile", model, Objective(model, "regression"), hp)
    x = torch.randn(tasks, 8, 3, dtype=torch.float64)
    y = torch.randn(tasks, 8, 1, dtype=torch.float64)
    return algo, TaskBatch(x[:, :6], y[:, :6], x[:, 6:], y[:, 6:])


def test_one_meta_step_on_a_quadratic_is_the_closed_form():
    """GD on L(w) = (w - w*)' A (w - w*) / 2 - const: w_K - w* = (I - alpha A)^K (w_0 - w*), per task."""
    steps, alpha = 4, 0.1
    algo, batch = linear_setup(steps=steps, alpha=alpha)
    w0 = algo.model.weight.detach().clone().view(-1)
    expected = torch.zeros_like(w0)
    for i in range(len(batch)):
        X, y = batch.support_x[i], batch.support_y[i].view(-1)
        A = 2 * X.T @ X / len(X)
        w_star = torch.linalg.solve(X.T @ X, X.T @ y)  # the task's least-squares minimiser
        M = torch.linalg.matrix_power(torch.eye(3, dtype=torch.float64) - alpha * A, steps)
        w_k = w_star + M @ (w0 - w_star)
        expected += (w0 - w_k) / len(batch)
    algo.zero_grad(set_to_none=True)
    algo.meta_step(batch)
    torch.testing.assert_close(algo.model.weight.grad.view(-1), expected, rtol=1e-10, atol=1e-12)
    # and SGD with learning rate epsilon on it is Reptile's interpolation theta_0 + eps (mean theta_K - theta_0)
    eps = 0.5
    torch.optim.SGD(algo.parameters(), lr=eps).step()
    torch.testing.assert_close(algo.model.weight.detach().view(-1), w0 - eps * expected, rtol=1e-12, atol=1e-12)


def test_with_one_inner_step_the_meta_gradient_is_alpha_times_the_joint_training_gradient():
    """K = 1: theta_0 - theta_1 = alpha grad L_S(theta_0): Reptile is joint training, scaled by alpha
    (Nichol et al. 2018, Section 5)."""
    alpha = 0.3
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    hp = {"inner_lr": alpha, "inner_steps": 1, "test_inner_steps": 1}
    algo = build_algorithm("reptile", model, Objective(model, "classification"), hp)
    x = torch.randn(4, 6, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (4, 6))
    batch = TaskBatch(x, y, x, y)
    algo.zero_grad(set_to_none=True)
    algo.meta_step(batch)
    joint = torch.autograd.grad(sum(F.cross_entropy(model(x[i]), y[i]) for i in range(4)) / 4,
                                list(model.parameters()))
    for p, g in zip(model.parameters(), joint):
        torch.testing.assert_close(p.grad, alpha * g, rtol=1e-10, atol=1e-12)


def test_metrics_are_the_query_loss_after_adaptation_and_concurrency_changes_nothing():
    algo, batch = linear_setup(tasks=4)
    serial = copy.deepcopy(algo)
    serial.parallel_tasks = False
    results = []
    for a in (algo, serial):
        a.zero_grad(set_to_none=True)
        metrics = a.meta_step(batch)
        results.append((a.model.weight.grad.clone(), metrics))
    assert torch.equal(results[0][0], results[1][0])
    query = [algo.evaluate_task(Task(t.support, t.query))["loss"] for t in batch]
    assert results[0][1]["loss"] == pytest.approx(sum(query) / len(query), rel=1e-12) == results[1][1]["loss"]


def test_reptile_is_registered():
    assert ALGORITHMS["reptile"].name == "reptile"
