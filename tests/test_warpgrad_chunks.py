"""WarpGrad's chunked meta-training and evaluation (warpgrad.py `run_chunk`, `evaluate_chunk`,
`WarpedNetwork.forward_tasks`) against its one-task-at-a-time loop (`batched_tasks = False`), in float64:
the meta-gradients of phi and theta_0 and the metrics to 1e-9, for warpgrad / warpmaml / warpleap,
second and first order, on a Conv4 and an MLP, with uneven chunks run by the thread pool."""
from __future__ import annotations

import threading

import pytest
import torch
from torch.func import functional_call

import metalearn.algorithms.maml
from metalearn.algorithms import build_algorithm
from metalearn.algorithms.warpgrad import WarpedNetwork, warp_layers
from metalearn.models import MLP, Conv4, OmniConv
from metalearn.tasks import Objective, TaskBatch

# 3 steps, 2 of the 3 trajectory points buffered (theta_0 and theta_1): a buffer that is not the whole path
HPARAMS = {"inner_lr": 0.1, "inner_steps": 3, "test_inner_steps": 2, "snapshots": 2}


def _conv_tasks(tasks: int) -> tuple[Conv4, TaskBatch]:
    """5-way 1-shot, 2 queries per class, 14x14 images, 6 filters: tiny, but the real layout."""
    torch.manual_seed(1)
    model = Conv4(1, 5, filters=6, image_size=14).double()
    x = torch.rand(tasks, 15, 1, 14, 14, dtype=torch.float64)
    y = torch.arange(5).repeat(3).expand(tasks, -1)
    return model, TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def _mlp_tasks(tasks: int) -> tuple[MLP, TaskBatch]:
    torch.manual_seed(1)
    model = MLP(1, (8, 8), 1).double()
    x = torch.rand(tasks, 12, 1, dtype=torch.float64) * 10 - 5
    amplitude, phase = torch.rand(2, tasks, 1, 1, dtype=torch.float64)
    y = amplitude * torch.sin(x + phase)
    return model, TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def _perturb_warps(algo) -> None:
    """phi away from the identity (BN scale 0 would zero the warp convolutions' gradients)."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in algo.warp.parameters():
            p.add_(0.2 * torch.randn_like(p))


_FORWARD_TASKS = Objective.forward_tasks


def _spy(monkeypatch) -> tuple[list[int], set[str]]:
    """Record the chunk size and the thread of every chunked forward pass."""
    calls, threads = [], set()
    forward_tasks = _FORWARD_TASKS  # the class's own (not an earlier call's spy)

    def spy(self, params, x):
        calls.append(len(x))
        threads.add(threading.current_thread().name)
        return forward_tasks(self, params, x)
    monkeypatch.setattr(Objective, "forward_tasks", spy)
    return calls, threads


def _chunks_of_three(monkeypatch, tasks: TaskBatch) -> None:
    """7 tasks -> chunks of 3, 2 and 2 (chunk_count: 3 tasks a chunk), three workers for them."""
    monkeypatch.setattr(metalearn.algorithms.maml, "CPU_CHUNK_NUMBERS", 3 * tasks.support_x[0].numel())
    monkeypatch.setenv("METALEARN_TASK_THREADS", "3")


def scale_of(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return max(g.abs().max() for g in grads.values())


def _meta_step(name, problem, first_order, batched, monkeypatch, **changes):
    model, tasks = problem(7)
    kind = "classification" if isinstance(model, Conv4) else "regression"
    algo = build_algorithm(name, model, Objective(model, kind),
                           {**HPARAMS, "first_order": first_order, **changes}).double()
    _perturb_warps(algo)
    algo.batched_tasks = batched
    _chunks_of_three(monkeypatch, tasks)
    calls, threads = _spy(monkeypatch)
    algo.zero_grad(set_to_none=True)
    metrics = algo.meta_step(tasks)
    grads = {k: p.grad.clone() for k, p in algo.named_parameters() if p.grad is not None}
    return metrics, grads, calls, threads


@pytest.mark.parametrize("problem", [_conv_tasks, _mlp_tasks])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("name", ["warpgrad", "warpmaml", "warpleap"])
def test_chunked_meta_gradient_equals_the_one_task_loop(name, first_order, problem, monkeypatch):
    loop_metrics, loop, loop_calls, _ = _meta_step(name, problem, first_order, False, monkeypatch)
    metrics, chunked, calls, threads = _meta_step(name, problem, first_order, True, monkeypatch)
    assert not loop_calls  # the loop never ran a chunk
    # Each chunk (3, 2, 2): K support passes along the trajectory, the query pass (metrics; Warp-MAML's
    # loss), Warp-Leap's final support loss, and per buffered point (2) a support pass (second order)
    # and a query pass.
    per_chunk = HPARAMS["inner_steps"] + 1 + (name == "warpleap") + 2 * (1 if first_order else 2)
    assert sorted(calls) == sorted([3, 2, 2] * per_chunk)
    assert any(t.startswith("metalearn-task") for t in threads)  # the pool ran the chunks
    expected_kinds = {"warp"} if name == "warpgrad" else {"warp", "model"}  # warpgrad: theta_0 fixed
    assert {k.split(".")[0] for k in loop} == expected_kinds and loop.keys() == chunked.keys()
    for kind in expected_kinds:  # not trivially zero (a bias before a BatchNorm gets ~0: not all of them)
        assert sum(g.abs().sum() for k, g in loop.items() if k.startswith(kind)) > 1e-6 * scale_of(loop)
    scale = scale_of(loop)
    for key in loop:
        torch.testing.assert_close(chunked[key], loop[key], rtol=1e-9, atol=1e-12 * scale)
    assert metrics == pytest.approx(loop_metrics, rel=1e-9)


@pytest.mark.parametrize("settings", [{"use_loss": True, "norm": False}, {"snapshots": 5},
                                      {"final_point": False, "inner_grad": "detached"}])
def test_chunked_warpleap_and_a_full_buffer_equal_the_loop(settings, monkeypatch):
    """Warp-Leap with the loss dimension and the path energy (per-task loss changes), a buffer
    holding every point (snapshots > steps), and the multi-shot protocol's official settings."""
    loop = _meta_step("warpleap", _mlp_tasks, False, False, monkeypatch, **settings)
    chunked = _meta_step("warpleap", _mlp_tasks, False, True, monkeypatch, **settings)
    scale = scale_of(loop[1])
    for key in loop[1]:
        torch.testing.assert_close(chunked[1][key], loop[1][key], rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("problem", [_conv_tasks, _mlp_tasks])
@pytest.mark.parametrize("name", ["warpgrad", "warpleap"])
def test_chunked_detached_inner_grad_equals_the_loop_and_differs_from_graph(name, problem, monkeypatch):
    """inner_grad detached (the official step, test_warpgrad.py checks its value) on the chunked path."""
    loop = _meta_step(name, problem, False, False, monkeypatch, inner_grad="detached")[1]
    chunked = _meta_step(name, problem, False, True, monkeypatch, inner_grad="detached")[1]
    graph = _meta_step(name, problem, False, True, monkeypatch)[1]
    scale = scale_of(loop)
    for key in loop:
        torch.testing.assert_close(chunked[key], loop[key], rtol=1e-9, atol=1e-12 * scale)
    warp = [k for k in loop if k.startswith("warp")]
    assert max((loop[k] - graph[k]).abs().max() for k in warp) > 1e-3 * scale_of({k: graph[k] for k in warp})


@pytest.mark.parametrize("changes", [{"mode": "online"}, {"meta_update": "per_point"}])
def test_online_and_per_point_run_one_task_at_a_time(changes, monkeypatch):
    """Documented: mode online and meta_update per_point keep the one-task path (no chunked pass)."""
    *_, calls, _ = _meta_step("warpgrad", _mlp_tasks, False, True, monkeypatch, **changes)
    assert not calls


def test_omniconv_runs_one_task_at_a_time(monkeypatch):
    torch.manual_seed(0)
    model = OmniConv(1, 5, filters=4).double()
    algo = build_algorithm("warpgrad", model, Objective(model, "classification"), HPARAMS).double()
    x = torch.rand(2, 10, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(5).repeat(2).expand(2, -1)
    calls, _ = _spy(monkeypatch)
    algo.meta_step(TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:]))
    assert not algo.takes_chunks() and not calls
    with pytest.raises(TypeError):
        algo.warped.model.forward_tasks({}, x)


@pytest.mark.parametrize("network", ["conv4-stride", "conv4-maxpool", "conv4-flatten-dark", "conv4-maml-bn", "mlp"])
def test_warped_forward_tasks_is_each_tasks_own_forward(network):
    """Every task's theta and one phi (away from the identity): the chunk's outputs are each task's own."""
    torch.manual_seed(0)
    if network == "conv4-stride":
        model, x = Conv4(1, 5, filters=4, image_size=14), torch.rand(3, 4, 1, 14, 14)
    elif network == "conv4-maxpool":
        model, x = Conv4(3, 5, filters=4, pooling="max", image_size=32), torch.rand(3, 4, 3, 32, 32)
    elif network == "conv4-flatten-dark":  # the iMAML code's network's choices
        model, x = Conv4(1, 5, filters=4, image_size=28, features="flatten", stroke="dark"), torch.rand(3, 4, 1, 28, 28)
    elif network == "conv4-maml-bn":  # the MAML code's BatchNorm: an offset only
        model, x = Conv4(1, 5, filters=4, image_size=14, batch_norm="maml"), torch.rand(3, 4, 1, 14, 14)
    else:
        model, x = MLP(1, (7, 6), 2), torch.randn(3, 4, 1)
    warped = WarpedNetwork(model, warp_layers(model)).double()
    x = x.double()
    with torch.no_grad():
        for p in warped.warp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = {f"task.{k}": p.detach() + 0.1 * torch.randn(len(x), *p.shape, dtype=p.dtype)
              for k, p in model.named_parameters()}
    together = warped.forward_tasks(params, x)
    for t in range(len(x)):
        alone = functional_call(warped, {k: p[t] for k, p in params.items()}, (x[t],))
        torch.testing.assert_close(together[t], alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("curve", [False, True])
@pytest.mark.parametrize("problem", [_conv_tasks, _mlp_tasks])
def test_chunked_evaluation_equals_the_one_task_loop_per_task(problem, curve, monkeypatch):
    def evaluate(batched: bool):
        model, tasks = problem(7)
        kind = "classification" if isinstance(model, Conv4) else "regression"
        algo = build_algorithm("warpmaml", model, Objective(model, kind), HPARAMS).double()
        _perturb_warps(algo)
        algo.batched_tasks = batched
        _chunks_of_three(monkeypatch, tasks)
        # the query sets fed 2 tasks at a time (maml.query_parts): the chunk of 3 as 2 and 1
        monkeypatch.setattr(metalearn.algorithms.maml, "CPU_QUERY_NUMBERS", 2 * tasks.query_x[0].numel())
        calls, threads = _spy(monkeypatch)
        return algo.evaluate_tasks(tasks, 3, curve=curve), calls, threads
    loop, loop_calls, _ = evaluate(False)
    chunked, calls, threads = evaluate(True)
    assert not loop_calls and sorted(calls) == sorted([3, 2, 2] * 3 + [2, 1, 2, 2] * (4 if curve else 1))
    assert any(t.startswith("metalearn-task") for t in threads)
    for ours, expected in zip(chunked, loop, strict=True):
        for o, e in zip(ours if curve else [ours], expected if curve else [expected], strict=True):
            assert o == pytest.approx(e, rel=1e-9, abs=1e-12)
