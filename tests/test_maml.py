"""MAML and first-order MAML compute what the paper says, checked against independent answers."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from metalearn.algorithms import build_algorithm
from metalearn.models import MLP
from metalearn.tasks import Objective, TaskBatch



def tiny_setup(inner_lr=0.05, inner_steps=2, first_order=False, tasks=3):
    torch.manual_seed(0)
    model = MLP(1, (5,), 1).double()
    objective = Objective(model, "regression")
    name = "fomaml" if first_order else "maml"
    algo = build_algorithm(name, model, objective,
                           {"inner_lr": inner_lr, "inner_steps": inner_steps, "test_inner_steps": inner_steps})
    x = torch.randn(tasks, 8, 1, dtype=torch.float64)  # finite differences need double precision
    y = torch.sin(3 * x) + 0.1 * torch.randn(tasks, 8, 1, dtype=torch.float64)
    batch = TaskBatch(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:])
    return algo, batch


def meta_loss_by_hand(model, params, batch, inner_lr, inner_steps):
    """The MAML objective written out independently: mean over tasks of L_Q(theta')."""
    total = 0.0
    for i in range(len(batch)):
        fast = dict(params)
        for _ in range(inner_steps):
            loss = torch.nn.functional.mse_loss(functional_call(model, fast, (batch.support_x[i],)), batch.support_y[i])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {k: v - inner_lr * g for (k, v), g in zip(fast.items(), grads)}
        total = total + torch.nn.functional.mse_loss(functional_call(model, fast, (batch.query_x[i],)), batch.query_y[i])
    return total / len(batch)


@pytest.fixture
def pool_spy(monkeypatch):
    """The number of items each `map_tasks` call handed to the thread pool (a fresh pool, so a test
    sees only its own calls): a test of concurrency asserts that the pool ran, not only that the
    result came out right (a one-item or one-thread call takes the serial shortcut)."""
    import metalearn.algorithms.base as base

    mapped: list[int] = []

    class SpyPool(base.ThreadPoolExecutor):
        def map(self, fn, *iterables, **kwargs):
            items = list(iterables[0])
            mapped.append(len(items))
            return super().map(fn, items, **kwargs)
    monkeypatch.setattr(base, "_POOLS", {})
    monkeypatch.setattr(base, "ThreadPoolExecutor", SpyPool)
    return mapped


def meta_gradient(algo, batch):
    algo.zero_grad(set_to_none=True)
    algo.meta_step(batch)
    return {k: p.grad.clone() for k, p in algo.model.named_parameters()}


def test_maml_meta_gradient_matches_finite_differences():
    algo, batch = tiny_setup()
    grads = meta_gradient(algo, batch)
    params = {k: p.detach().clone() for k, p in algo.model.named_parameters()}
    eps = 1e-6
    for name, value in params.items():
        flat = value.view(-1)
        for index in range(flat.numel()):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[name].view(-1)[index] += eps
            minus[name].view(-1)[index] -= eps
            with torch.enable_grad():
                lp = meta_loss_by_hand(algo.model, {k: v.requires_grad_() for k, v in plus.items()}, batch, 0.05, 2)
                lm = meta_loss_by_hand(algo.model, {k: v.requires_grad_() for k, v in minus.items()}, batch, 0.05, 2)
            numeric = (lp - lm).item() / (2 * eps)
            assert abs(grads[name].view(-1)[index].item() - numeric) < 1e-6 * max(1.0, abs(numeric))


def test_fomaml_equals_maml_without_second_order_terms():
    """One inner step: MAML's gradient is (I - alpha H_S) g_Q with g_Q = grad L_Q(theta');
    first-order MAML must be exactly g_Q, i.e. MAML minus the Hessian-vector term."""
    alpha = 0.05
    maml, batch = tiny_setup(inner_lr=alpha, inner_steps=1)
    fomaml, _ = tiny_setup(inner_lr=alpha, inner_steps=1, first_order=True)
    g_maml = meta_gradient(maml, batch)
    g_fo = meta_gradient(fomaml, batch)

    model = maml.model
    theta = {k: p.detach().requires_grad_() for k, p in model.named_parameters()}
    expected_second_order = {k: torch.zeros_like(v) for k, v in theta.items()}
    for i in range(len(batch)):
        support_loss = torch.nn.functional.mse_loss(functional_call(model, theta, (batch.support_x[i],)), batch.support_y[i])
        g_s = torch.autograd.grad(support_loss, list(theta.values()), create_graph=True)
        adapted = {k: (v - alpha * g).detach().requires_grad_() for (k, v), g in zip(theta.items(), g_s)}
        query_loss = torch.nn.functional.mse_loss(functional_call(model, adapted, (batch.query_x[i],)), batch.query_y[i])
        g_q = torch.autograd.grad(query_loss, list(adapted.values()))
        hvp = torch.autograd.grad(g_s, list(theta.values()), grad_outputs=g_q)  # H_S g_Q
        for (k, _), h in zip(theta.items(), hvp):
            expected_second_order[k] -= alpha * h / len(batch)
    for k in g_maml:
        torch.testing.assert_close(g_maml[k] - g_fo[k], expected_second_order[k], rtol=1e-9, atol=1e-12)
        assert g_fo[k].abs().sum() > 0


def test_adapt_lowers_support_loss_and_keeps_theta():
    algo, batch = tiny_setup(inner_lr=0.05, inner_steps=5)
    task = batch[0]
    before = {k: p.detach().clone() for k, p in algo.model.named_parameters()}
    adapted = algo.adapt(task.support, steps=5)
    loss0 = algo.objective.loss(algo.initial_params(), task.support).item()
    loss5 = algo.objective.loss(adapted, task.support).item()
    assert loss5 < loss0
    for k, p in algo.model.named_parameters():
        assert torch.equal(p, before[k])


@pytest.mark.parametrize("chunked", [False, True])
def test_concurrent_tasks_give_the_sequential_loops_meta_gradient(chunked, pool_spy, monkeypatch):
    """map_tasks runs tasks (or chunks of tasks: 6 tasks forced into 3 chunks) on 3 threads; the
    meta-gradient must be the one-thread loop's, and the pool must have run them."""
    import metalearn.algorithms.maml

    monkeypatch.setenv("METALEARN_TASK_THREADS", "3")
    algo, batch = tiny_setup(inner_lr=0.05, inner_steps=2, tasks=6)
    algo.batched_tasks = chunked
    monkeypatch.setattr(metalearn.algorithms.maml, "CPU_CHUNK_NUMBERS", 2 * batch.support_x[0].numel())
    algo.parallel_tasks = False
    sequential = meta_gradient(algo, batch)
    assert not pool_spy
    algo.parallel_tasks = True
    concurrent = meta_gradient(algo, batch)
    assert pool_spy == [3 if chunked else 6]
    for name in sequential:
        torch.testing.assert_close(concurrent[name], sequential[name], rtol=1e-10, atol=1e-12)


def test_concurrent_conv_tasks_match_sequential_on_the_omniglot_network(pool_spy, monkeypatch):
    """16 Omniglot-shaped tasks: 2 chunks of 8 (maml.py's CPU chunk size), on 2 threads."""
    from metalearn.models import Conv4

    monkeypatch.setenv("METALEARN_TASK_THREADS", "2")
    torch.manual_seed(1)
    model = Conv4(1, 5)
    algo = build_algorithm("maml", model, Objective(model, "classification"),
                           {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 1})
    x = torch.rand(16, 10, 1, 28, 28)
    y = torch.arange(5).repeat(2).expand(16, -1)
    batch = TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    algo.parallel_tasks = False
    sequential = meta_gradient(algo, batch)
    algo.parallel_tasks = True
    concurrent = meta_gradient(algo, batch)
    assert pool_spy == [2]
    # float32, and the threads' convolutions may round differently: entries compared relative to the
    # largest (the convolutions' biases, each followed by BatchNorm, have a gradient of 0 up to rounding)
    scale = max(g.abs().max() for g in sequential.values())
    for name in sequential:
        torch.testing.assert_close(concurrent[name], sequential[name], rtol=1e-4, atol=1e-5 * scale)


HPARAMS = {"inner_lr": 0.05, "inner_steps": 2, "test_inner_steps": 2, "lam": 2.0, "cg_steps": 3}


def _every_concurrent_algorithm():
    from metalearn.algorithms import ALGORITHMS

    return sorted(name for name, cls in ALGORITHMS.items() if cls.parallel_tasks)


def test_every_registered_algorithm_runs_its_tasks_concurrently():
    from metalearn.algorithms import ALGORITHMS

    assert _every_concurrent_algorithm() == sorted(ALGORITHMS)


@pytest.mark.parametrize("name", _every_concurrent_algorithm())
def test_concurrent_tasks_give_the_plain_loops_meta_gradient_for_every_algorithm(name, pool_spy, monkeypatch):
    """Each algorithm's meta-step with its tasks on 3 threads equals the one-task-at-a-time loop,
    for every meta-parameter (initialisation, warp layers, T, mask logits, learned rates). Chunked
    algorithms get chunks of 2 tasks, so that the pool runs several."""
    import metalearn.algorithms.maml
    from metalearn.algorithms import ALGORITHMS

    monkeypatch.setattr(metalearn.algorithms.maml, "CPU_CHUNK_NUMBERS", 8)  # 2 tasks of 4 support points a chunk
    if getattr(ALGORITHMS[name], "classification_only", False):
        pytest.skip("classification only (Proto-MAML): tests/test_proto_head.py runs its chunks on two threads")
    informed = getattr(ALGORITHMS[name], "sees_task_parameters", False)  # the oracle: 2 task parameters as inputs

    def gradients(parallel: bool):
        torch.manual_seed(0)
        model = MLP(3 if informed else 1, (6, 5), 1).double()
        algo = build_algorithm(name, model, Objective(model, "regression"), HPARAMS).double()
        algo.parallel_tasks = parallel
        x = torch.randn(6, 8, 1, dtype=torch.float64)
        info = torch.randn(6, 2, dtype=torch.float64) if informed else None
        batch = TaskBatch(x[:, :4], torch.sin(3 * x[:, :4]), x[:, 4:], torch.sin(3 * x[:, 4:]), info)
        torch.manual_seed(1)  # MT-net's mask noise, drawn on the calling thread
        metrics = algo.meta_step(batch)
        return metrics, {k: p.grad.clone() for k, p in algo.named_parameters() if p.grad is not None}

    monkeypatch.setenv("METALEARN_TASK_THREADS", "3")
    loop_metrics, loop = gradients(False)
    assert not pool_spy
    threaded_metrics, threaded = gradients(True)
    assert pool_spy and all(items > 1 for items in pool_spy)  # the pool ran several tasks or chunks
    assert loop and loop.keys() == threaded.keys()
    for key in loop:
        torch.testing.assert_close(threaded[key], loop[key], rtol=1e-12, atol=1e-14)
    assert threaded_metrics == pytest.approx(loop_metrics, rel=1e-12)
