"""Meta-training chunks of tasks together (maml.py, models.forward_tasks) gives the one-task-at-a-time
loop's meta-gradients and metrics, for MAML, first-order MAML and every algorithm that takes that path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalearn.algorithms import ALGORITHMS, build_algorithm
from metalearn.algorithms.maml import chunk_count
from metalearn.models import MLP, Conv4
from metalearn.tasks import Objective, TaskBatch

HPARAMS = {"inner_lr": 0.1, "inner_steps": 2, "test_inner_steps": 2}


def _batched_algorithms() -> list[str]:
    return sorted(name for name, cls in ALGORITHMS.items() if getattr(cls, "batched_tasks", False))


def test_the_maml_family_without_extra_layers_takes_the_batched_path():
    assert _batched_algorithms() == ["fomaml", "maml", "metasgd"]


def _per_task_parameters(model, tasks: int) -> dict[str, torch.Tensor]:
    """A different parameter set per task, stacked: [tasks, *shape]."""
    return {name: p.detach() + 0.1 * torch.randn(tasks, *p.shape, dtype=p.dtype)
            for name, p in model.named_parameters()}


@pytest.mark.parametrize("network", ["conv4-stride", "conv4-maxpool", "mlp"])
def test_forward_tasks_is_each_tasks_own_forward(network):
    torch.manual_seed(0)
    if network == "conv4-stride":
        model, x = Conv4(1, 5, filters=8), torch.rand(3, 4, 1, 28, 28)
    elif network == "conv4-maxpool":
        model, x = Conv4(3, 5, filters=6, pooling="max", image_size=84), torch.rand(3, 4, 3, 84, 84)
    else:
        model, x = MLP(1, (7, 6), 2), torch.randn(3, 4, 1)
    model, x = model.double(), x.double()
    params = _per_task_parameters(model, len(x))
    together = model.forward_tasks(params, x)
    for t in range(len(x)):
        alone = functional_call(model, {name: p[t] for name, p in params.items()}, (x[t],))
        torch.testing.assert_close(together[t], alone, rtol=1e-12, atol=1e-12)


def _omniglot_like(tasks: int) -> tuple[Conv4, TaskBatch]:
    """5-way 1-shot, 2 queries per class, 28x28: small enough for float64, the real network's shape."""
    torch.manual_seed(1)
    model = Conv4(1, 5, filters=16).double()
    x = torch.rand(tasks, 15, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(5).repeat(3).expand(tasks, -1)
    return model, TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def _sinusoid_like(tasks: int) -> tuple[MLP, TaskBatch]:
    torch.manual_seed(1)
    model = MLP(1, (8, 8), 1).double()
    x = torch.rand(tasks, 12, 1, dtype=torch.float64) * 10 - 5
    y = torch.rand(tasks, 1, 1, dtype=torch.float64) * torch.sin(x + torch.rand(tasks, 1, 1, dtype=torch.float64))
    return model, TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def _meta_step(name: str, problem, batched: bool, monkeypatch):
    model, tasks = problem
    kind = "classification" if isinstance(model, Conv4) else "regression"
    algo = build_algorithm(name, model, Objective(model, kind), HPARAMS).double()
    if name == "metasgd":  # learned rates that differ per entry, not the constant start
        torch.manual_seed(2)
        with torch.no_grad():
            for rate in algo.alpha.values():
                rate.uniform_(0.02, 0.2)
    algo.batched_tasks = batched
    calls = []
    forward_tasks = Objective.forward_tasks
    monkeypatch.setattr(Objective, "forward_tasks", lambda self, *a: calls.append(1) or forward_tasks(self, *a))
    algo.zero_grad(set_to_none=True)
    metrics = algo.meta_step(tasks)
    assert bool(calls) == batched  # the path under test is the one taken
    return metrics, {k: p.grad.clone() for k, p in algo.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", _batched_algorithms())
@pytest.mark.parametrize("problem", [_omniglot_like, _sinusoid_like])
def test_batched_meta_step_equals_the_one_task_at_a_time_loop(name, problem, monkeypatch):
    """9 Omniglot-shaped tasks make 3 chunks (4, 4, 1 tasks: a remainder), 9 sinusoid tasks one."""
    loop_metrics, loop = _meta_step(name, problem(9), batched=False, monkeypatch=monkeypatch)
    batched_metrics, batched = _meta_step(name, problem(9), batched=True, monkeypatch=monkeypatch)
    assert loop.keys() == batched.keys() and len(loop) >= 2
    scale = max(g.abs().max() for g in loop.values())
    for key in loop:
        torch.testing.assert_close(batched[key], loop[key], rtol=1e-9, atol=1e-12 * scale)
    assert batched_metrics == pytest.approx(loop_metrics, rel=1e-9)


@pytest.mark.parametrize("first_order", [False, True])
def test_batched_maml_equals_a_plain_pytorch_loop(first_order):
    """Against the textbook loop written out here: autograd.grad per task, functional_call."""
    model, tasks = _omniglot_like(6)
    name = "fomaml" if first_order else "maml"
    algo = build_algorithm(name, model, Objective(model, "classification"), HPARAMS)
    algo.zero_grad(set_to_none=True)
    algo.meta_step(tasks)
    theta = dict(model.named_parameters())
    expected = {k: torch.zeros_like(p) for k, p in theta.items()}
    for i in range(len(tasks)):
        fast = dict(theta)
        for _ in range(HPARAMS["inner_steps"]):
            loss = F.cross_entropy(functional_call(model, fast, (tasks.support_x[i],)), tasks.support_y[i])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: p - HPARAMS["inner_lr"] * g for (k, p), g in zip(fast.items(), grads)}
        query = F.cross_entropy(functional_call(model, fast, (tasks.query_x[i],)), tasks.query_y[i])
        for k, g in zip(theta, torch.autograd.grad(query / len(tasks), list(theta.values()))):
            expected[k] += g
    scale = max(g.abs().max() for g in expected.values())
    for k, p in theta.items():
        torch.testing.assert_close(p.grad, expected[k], rtol=1e-9, atol=1e-12 * scale)


def test_chunks_are_sized_for_the_cpu_and_whole_on_an_accelerator():
    omniglot = _omniglot_like(32)[1]
    sinusoid = _sinusoid_like(25)[1]
    assert chunk_count(omniglot, torch.device("cpu")) == 8  # 4 tasks of 5 28x28 images a chunk
    assert chunk_count(sinusoid, torch.device("cpu")) == 1
    assert chunk_count(omniglot, torch.device("cuda")) == 1
    chunks = omniglot.split(3)
    assert [len(c) for c in chunks] == [11, 11, 10]
    assert torch.equal(torch.cat([c.query_x for c in chunks]), omniglot.query_x)
    assert [len(c) for c in sinusoid.split(40)] == [1] * 25
