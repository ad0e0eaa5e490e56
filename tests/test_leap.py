"""Leap's meta-gradient is the pulled-forward gradient of the learning path's length (or energy)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalearn.algorithms import build_algorithm
from metalearn.algorithms.leap import LeapPath
from conftest import held_out_loss, meta_train_on_sinusoids
from metalearn.models import MLP
from metalearn.tasks import Objective, TaskBatch

ALPHA, STEPS = 0.1, 4


def setup(tasks=3, **hparams):
    torch.manual_seed(0)
    model = MLP(1, (5,), 1).double()
    hp = {"inner_lr": ALPHA, "inner_steps": STEPS, "test_inner_steps": STEPS, **hparams}
    algo = build_algorithm("leap", model, Objective(model, "regression"), hp)
    x = torch.randn(tasks, 10, 1, dtype=torch.float64)
    y = torch.sin(2 * x + torch.arange(tasks, dtype=torch.float64).view(-1, 1, 1))
    return algo, TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def leap_gradient(algo, batch):
    algo.zero_grad(set_to_none=True)
    metrics = algo.meta_step(batch)
    return [p.grad.clone() for p in algo.model.parameters()], metrics


def path_by_hand(model, theta0, support, steps):
    """theta_0 .. theta_K of gradient descent on the support loss (constants)."""
    points, theta = [], dict(theta0)
    for _ in range(steps + 1):
        theta = {k: v.detach().requires_grad_() for k, v in theta.items()}
        points.append({k: v.detach() for k, v in theta.items()})
        loss = F.mse_loss(functional_call(model, theta, (support[0],)), support[1])
        grads = torch.autograd.grad(loss, list(theta.values()))
        theta = {k: v - ALPHA * g for (k, v), g in zip(theta.items(), grads)}
    return points


def pulled_forward_length(model, theta0, paths, batch, norm=True, use_loss=True):
    """The Leap objective as a function of theta_0 by autograd: every theta_k is theta_0 plus a
    constant displacement (Jacobian = identity) and every segment's end point z_{k+1} is constant."""
    total = 0.0
    for i, points in enumerate(paths):
        loss_of = lambda theta: F.mse_loss(functional_call(model, theta, (batch.support_x[i],)), batch.support_y[i])
        for start, end in zip(points[:-1], points[1:]):
            theta = {k: theta0[k] + (start[k] - theta0[k]).detach() for k in theta0}
            squared = sum(((end[k] - theta[k]) ** 2).sum() for k in theta0)
            if use_loss:
                squared = squared + (loss_of(end).detach() - loss_of(theta)) ** 2
            total = total + (squared.sqrt() if norm else 0.5 * squared)  # d_2's factor 2 dropped
    return total / len(paths)


@pytest.mark.parametrize("norm,use_loss", [(True, True), (True, False), (False, True), (False, False)])
def test_leap_gradient_is_the_gradient_of_the_pulled_forward_path_objective(norm, use_loss):
    algo, batch = setup(norm=norm, use_loss=use_loss, stabilizer=False)
    grads, _ = leap_gradient(algo, batch)
    theta0 = {k: p.detach().clone().requires_grad_() for k, p in algo.model.named_parameters()}
    paths = [path_by_hand(algo.model, theta0, batch[i].support, STEPS) for i in range(len(batch))]
    expected = torch.autograd.grad(pulled_forward_length(algo.model, theta0, paths, batch, norm, use_loss),
                                   list(theta0.values()))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def official_leap_gradient(model, theta0, batch, steps):
    """The official training loop and updater replayed (flennerhag/warpgrad src/omniglot/wrapper.py
    run_batches lines 112-136; src/leap/leap/updaters.py increment_grad, defaults norm, loss, stabilizer):
    at each of the `steps` batches the loss at the current point, Leap fed that point (before the
    step), then the SGD step; the loop breaks after the last step, so theta_K is never fed."""
    total = {k: torch.zeros_like(v) for k, v in theta0.items()}
    for i in range(len(batch)):
        theta, previous = {k: v.detach() for k, v in theta0.items()}, None
        for _ in range(steps):
            theta = {k: v.detach().requires_grad_() for k, v in theta.items()}
            loss = F.mse_loss(functional_call(model, theta, (batch.support_x[i],)), batch.support_y[i])
            grads = dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))
            if previous is not None:  # increment_grad(curr = this point, prev = the previous one)
                prev_theta, prev_loss, prev_grads = previous
                d_loss = loss.detach() - prev_loss
                d_loss = -d_loss if d_loss > 0 else d_loss  # the stabilizer
                norm = (d_loss ** 2 + sum(((theta[k].detach() - prev_theta[k]) ** 2).sum() for k in theta)).sqrt()
                for k in theta:
                    total[k] += (prev_theta[k] - theta[k].detach() - d_loss * prev_grads[k]) / norm
            previous = ({k: v.detach() for k, v in theta.items()}, loss.detach(), grads)
            theta = {k: v - ALPHA * grads[k] for k, v in theta.items()}  # optimizer.step(), then break if final
    return [g / len(batch) for g in total.values()]  # normalize(): the mean over the meta-batch's tasks


@pytest.mark.parametrize("batched", [False, True])
def test_leap_without_the_final_point_is_the_official_loops_gradient(batched):
    """final_point false: the path theta_0 .. theta_{K-1} (K-1 segments), as the official loop feeds
    Leap; the default (true) adds theta_K, one segment more."""
    algo, batch = setup(final_point=False)
    algo.batched_tasks = batched
    grads, metrics = leap_gradient(algo, batch)
    theta0 = {k: p.detach().clone() for k, p in algo.model.named_parameters()}
    official = official_leap_gradient(algo.model, theta0, batch, STEPS)
    shorter, _ = setup(inner_steps=STEPS - 1)  # default final_point: theta_0 .. theta_{K-1}, the same path
    shorter.batched_tasks = batched
    shorter_grads, _ = leap_gradient(shorter, batch)
    default, _ = setup()
    default.batched_tasks = batched
    default_grads, default_metrics = leap_gradient(default, batch)
    for g, o, s in zip(grads, official, shorter_grads):
        torch.testing.assert_close(g, o, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g, s, rtol=1e-9, atol=1e-12)
    assert max((g - d).abs().max() for g, d in zip(grads, default_grads)) > 1e-3
    assert metrics == default_metrics  # the path changes; adaptation (K steps) and its metrics do not


def test_leap_energy_without_the_loss_is_minus_the_mean_displacement():
    algo, batch = setup(norm=False, use_loss=False)
    grads, _ = leap_gradient(algo, batch)
    ends = [algo.adapt(batch[i].support, STEPS) for i in range(len(batch))]
    for g, (name, p) in zip(grads, algo.model.named_parameters()):
        displacement = sum(end[name] - p for end in ends) / len(batch)  # the segments telescope
        torch.testing.assert_close(g, -displacement, rtol=1e-9, atol=1e-12)


def test_stabilizer_treats_a_rise_of_the_loss_as_a_fall():
    """One segment in one dimension: theta 0 -> 1, loss 1 -> 2, gradient g at theta_0."""
    g = 0.5
    for stabilizer, d_loss in ((True, -1.0), (False, 1.0)):
        path = LeapPath(norm=True, use_loss=True, stabilizer=stabilizer)
        path.add([torch.tensor([0.0])], torch.tensor(1.0), [torch.tensor([g])])
        path.add([torch.tensor([1.0])], torch.tensor(2.0), None)
        expected = -(1.0 + d_loss * g) / math.sqrt(1.0 + d_loss ** 2)
        assert path.gradient[0].item() == pytest.approx(expected)
    falling = LeapPath(norm=True, use_loss=True, stabilizer=True)  # a fall is left as it is
    falling.add([torch.tensor([0.0])], torch.tensor(2.0), [torch.tensor([g])])
    falling.add([torch.tensor([1.0])], torch.tensor(1.0), None)
    assert falling.gradient[0].item() == pytest.approx(-(1.0 - g) / math.sqrt(2.0))


def test_leap_metrics_are_the_query_loss_after_adaptation_and_concurrency_changes_nothing():
    algo, batch = setup(tasks=4)
    serial = copy.deepcopy(algo)
    serial.parallel_tasks = False
    (grads, metrics), (serial_grads, serial_metrics) = leap_gradient(algo, batch), leap_gradient(serial, batch)
    for a, b in zip(grads, serial_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    query = [algo.evaluate_task(task)["loss"] for task in batch]
    assert metrics["loss"] == pytest.approx(sum(query) / len(query), rel=1e-9) == serial_metrics["loss"]


def test_leap_meta_training_lowers_the_loss_after_k_steps_on_held_out_sinusoids():
    torch.manual_seed(0)
    model = MLP()
    hp = {"inner_lr": 0.01, "inner_steps": 5, "test_inner_steps": 5}
    algo = build_algorithm("leap", model, Objective(model, "regression"), hp)
    untrained = copy.deepcopy(algo)
    held_out = meta_train_on_sinusoids(algo, 100)
    trained, before = held_out_loss(algo, held_out), held_out_loss(untrained, held_out)
    assert trained < 0.8 * before, (trained, before)


def pulled_forward_objective(algo, theta0, paths, batch):
    """sum over segments of ||z_{k+1} - z_k(theta_0)||, z_k = (theta_k, L_S(theta_k)), with the end points
    z_{k+1} constants and theta_k = theta_0 + a constant displacement (the objective Leap descends)."""
    total = 0.0
    for i, points in enumerate(paths):
        for (start, _), (end, end_loss) in zip(points[:-1], points[1:]):
            theta = {k: theta0[k] + (start[k] - points[0][0][k]) for k in theta0}
            loss = algo.objective.loss(theta, batch[i].support)
            total = total + (sum(((end[k] - theta[k]) ** 2).sum() for k in theta) + (end_loss - loss) ** 2).sqrt()
    return total / len(paths)


@pytest.mark.parametrize("stabilizer", [True, False])
def test_leap_meta_update_lowers_the_pulled_forward_path_objective_on_a_small_conv_problem(stabilizer):
    from metalearn.models import Conv4
    torch.manual_seed(0)
    model = Conv4(1, 3, filters=4).double()
    algo = build_algorithm("leap", model, Objective(model, "classification"),
                           {"inner_lr": 0.4, "inner_steps": 3, "test_inner_steps": 3, "stabilizer": stabilizer})
    x = torch.rand(2, 6, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(3).repeat(2).expand(2, -1)
    batch = TaskBatch(x, y, x, y)
    paths = []
    for task in batch:  # theta_0 .. theta_K and their support losses, by hand
        theta, points = {k: p.detach() for k, p in model.named_parameters()}, []
        for _ in range(4):
            theta = {k: v.requires_grad_() for k, v in theta.items()}
            loss = algo.objective.loss(theta, task.support)
            points.append(({k: v.detach() for k, v in theta.items()}, loss.detach()))
            grads = torch.autograd.grad(loss, list(theta.values()))
            theta = {k: (v - 0.4 * g).detach() for (k, v), g in zip(theta.items(), grads)}
        paths.append(points)
    before = pulled_forward_objective(algo, {k: p.detach() for k, p in model.named_parameters()}, paths, batch)
    optimizer = torch.optim.SGD(algo.parameters(), lr=1e-3)
    optimizer.zero_grad(set_to_none=True)
    algo.meta_step(batch)
    optimizer.step()
    after = pulled_forward_objective(algo, {k: p.detach() for k, p in model.named_parameters()}, paths, batch)
    assert after < before - 1e-4, (before.item(), after.item())
