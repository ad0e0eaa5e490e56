"""WarpGrad, Warp-MAML and Warp-Leap compute what the paper says, checked against independent answers."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from metalearn.algorithms import build_algorithm
from metalearn.algorithms.warpgrad import snapshot_steps
from conftest import held_out_loss, meta_train_on_sinusoids
from metalearn.config import Benchmark
from metalearn.models import MLP, Conv4
from metalearn.tasks import Objective, TaskBatch

ALPHA, STEPS = 0.1, 3


def mlp_setup(name="warpgrad", tasks=3, perturb=0.3, seed=0, **hparams):
    """A tiny double-precision MLP 1-4-3-1 with its two 4x4 / 3x3 warp layers moved off the identity."""
    torch.manual_seed(seed)
    model = MLP(1, (4, 3), 1).double()
    hp = {"inner_lr": ALPHA, "inner_steps": STEPS, "test_inner_steps": STEPS, **hparams}
    algo = build_algorithm(name, model, Objective(model, "regression"), hp).double()
    with torch.no_grad():
        for p in algo.warp.parameters():
            p.add_(perturb * torch.randn_like(p))
    x = torch.randn(tasks, 10, 1, dtype=torch.float64)
    y = torch.sin(2 * x + torch.arange(tasks, dtype=torch.float64).view(-1, 1, 1))
    return algo, TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def forward_by_hand(theta: list, phi: list, x):
    """The warped MLP written out: [linear, ReLU, warp] x 2, linear head (theta, phi as tensor lists)."""
    h = x
    for i in range(2):
        h = torch.relu(h @ theta[2 * i].T + theta[2 * i + 1])
        h = h @ phi[2 * i].T + phi[2 * i + 1]
    return h @ theta[4].T + theta[5]


def trajectory_by_hand(theta, phi, support, steps):
    """theta_0 .. theta_{steps-1} of gradient descent through the warped MLP (constants)."""
    points = []
    for _ in range(steps):
        theta = [t.detach().requires_grad_() for t in theta]
        points.append([t.detach() for t in theta])
        grads = torch.autograd.grad(F.mse_loss(forward_by_hand(theta, phi, support[0]), support[1]), theta)
        theta = [t - ALPHA * g for t, g in zip(theta, grads)]
    return points


def warp_objective_by_hand(points_per_task, phi, batch, first_order=False):
    """J(phi) = mean over tasks and points of L_Q(theta - alpha grad L_S(theta; phi); phi)."""
    total, count = 0.0, 0
    for i, points in enumerate(points_per_task):
        for theta in points:
            theta = [t.detach().requires_grad_() for t in theta]
            if not first_order:
                loss = F.mse_loss(forward_by_hand(theta, phi, batch.support_x[i]), batch.support_y[i])
                grads = torch.autograd.grad(loss, theta, create_graph=True)
                theta = [t - ALPHA * g for t, g in zip(theta, grads)]
            total = total + F.mse_loss(forward_by_hand(theta, phi, batch.query_x[i]), batch.query_y[i])
            count += 1
    return total / count


def warp_meta_gradient(algo, batch):
    algo.zero_grad(set_to_none=True)
    metrics = algo.meta_step(batch)
    return [p.grad.clone() for p in algo.warp.parameters()], metrics


def finite_difference_gradient(fn, params: list, eps=1e-6):
    grads = []
    for p in params:
        g = torch.zeros_like(p)
        for j in range(p.numel()):
            saved = p.view(-1)[j].item()
            p.view(-1)[j] = saved + eps
            plus = fn().item()
            p.view(-1)[j] = saved - eps
            minus = fn().item()
            p.view(-1)[j] = saved
            g.view(-1)[j] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


# -- adaptation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("network", ["mlp", "conv4"])
def test_identity_warp_adaptation_equals_plain_sgd_on_the_task_network(network):
    torch.manual_seed(0)
    if network == "mlp":
        model, kind = MLP(1, (8, 8), 1).double(), "regression"
        x, y = torch.randn(6, 1, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    else:
        model, kind = Conv4(1, 3, filters=8).double(), "classification"
        x, y = torch.rand(6, 1, 28, 28, dtype=torch.float64), torch.arange(3).repeat(2)
    hp = {"inner_lr": 0.3, "inner_steps": 4, "test_inner_steps": 4}
    warp = build_algorithm("warpgrad", model, Objective(model, kind), hp).double()  # fresh: identity warp
    sgd = build_algorithm("maml", model, Objective(model, kind), hp)  # same theta_0, no warp layers
    warped, plain = warp.adapt((x, y)), sgd.adapt((x, y))
    assert warped.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(warped[name], plain[name], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(warp.predict(warped, x), sgd.predict(plain, x), rtol=1e-10, atol=1e-12)
    assert any((warped[n] - p).abs().max() > 1e-3 for n, p in model.named_parameters())  # it did adapt


def test_adapted_task_parameters_differ_from_plain_sgd_once_the_warp_is_not_the_identity():
    algo, batch = mlp_setup()
    sgd = build_algorithm("maml", algo.model, algo.objective, algo.hparams)
    warped, plain = algo.adapt(batch[0].support), sgd.adapt(batch[0].support)
    assert max((warped[n] - plain[n]).abs().max().item() for n in plain) > 1e-4


# -- the meta-objective ---------------------------------------------------------------------------

@pytest.mark.parametrize("first_order", [False, True])
def test_warp_meta_gradient_is_the_trajectory_agnostic_objective_by_finite_differences(first_order):
    algo, batch = mlp_setup(first_order=first_order, snapshots=STEPS)
    grads, metrics = warp_meta_gradient(algo, batch)
    phi = [p.detach().clone() for p in algo.warp.parameters()]
    theta0 = [p.detach() for p in algo.model.parameters()]
    # The trajectory points are taken once, at the current phi, and then held constant.
    points = [trajectory_by_hand(theta0, phi, batch[i].support, STEPS) for i in range(len(batch))]
    numeric = finite_difference_gradient(lambda: warp_objective_by_hand(points, phi, batch, first_order), phi)
    for g, n in zip(grads, numeric):
        torch.testing.assert_close(g, n, rtol=1e-5, atol=1e-7)
    assert all(g.abs().max() > 1e-4 for g in grads)  # phi receives gradients
    assert all(p.grad is None for p in algo.model.parameters())  # init none: theta_0 is not meta-learned
    # 'loss' is the query loss after K warped steps.
    final = [trajectory_by_hand(theta0, phi, batch[i].support, STEPS + 1)[-1] for i in range(len(batch))]
    query = [F.mse_loss(forward_by_hand(final[i], phi, batch.query_x[i]), batch.query_y[i]).item()
             for i in range(len(batch))]
    assert metrics["loss"] == pytest.approx(sum(query) / len(query), rel=1e-9)


def official_step_meta_gradient(points_per_task, phi, batch):
    """The official code's meta-gradient, replayed with its own calls (flennerhag/warpgrad
    src/warpgrad/warpgrad/utils.py `step` and `backward`, optim.py SGD.step): autograd.grad with
    create_graph=True, p.backward(g) into leaf parameters, p - lr * p.grad, the query loss; its
    gradient w.r.t. phi, averaged over the points."""
    phi = [p.detach().clone().requires_grad_() for p in phi]
    total = [torch.zeros_like(p) for p in phi]
    count = 0
    for i, points in enumerate(points_per_task):
        for theta in points:
            theta = [t.detach().clone().requires_grad_() for t in theta]  # the model's leaf parameters
            loss = F.mse_loss(forward_by_hand(theta, phi, batch.support_x[i]), batch.support_y[i])
            for p, g in zip(theta, torch.autograd.grad(loss, theta, create_graph=True)):
                p.backward(g)
            stepped = [p - ALPHA * p.grad for p in theta]
            query = F.mse_loss(forward_by_hand(stepped, phi, batch.query_x[i]), batch.query_y[i])
            total = [a + g for a, g in zip(total, torch.autograd.grad(query, phi))]
            count += 1
    return [g / count for g in total]


def stopgrad_objective_by_hand(points_per_task, phi, batch):
    """J with the step a constant: mean of L_Q(stopgrad(theta - alpha grad L_S(theta; phi)); phi)."""
    total, count = 0.0, 0
    for i, points in enumerate(points_per_task):
        for theta in points:
            theta = [t.detach().requires_grad_() for t in theta]
            with torch.enable_grad():
                loss = F.mse_loss(forward_by_hand(theta, phi, batch.support_x[i]), batch.support_y[i])
                grads = torch.autograd.grad(loss, theta)
            stepped = [(t - ALPHA * g).detach() for t, g in zip(theta, grads)]
            total = total + F.mse_loss(forward_by_hand(stepped, phi, batch.query_x[i]), batch.query_y[i])
            count += 1
    return total / count


@pytest.mark.parametrize("meta_update", ["batch", "per_point"])
def test_detached_inner_grad_is_the_official_meta_gradient_and_differs_from_graph(meta_update):
    """inner_grad detached: phi's gradient only through the query pass at the stepped point, as the
    official `step` computes it (its calls replayed) and as grad_phi L_Q(stopgrad(theta - alpha g); phi)
    (phi a leaf, the step a constant); graph (the default) is a different, second-order gradient."""
    algo, batch = mlp_setup(inner_grad="detached", snapshots=STEPS)
    phi = [p.detach().clone().requires_grad_() for p in algo.warp.parameters()]
    theta0 = [p.detach() for p in algo.model.parameters()]
    points = [trajectory_by_hand(theta0, phi, batch[i].support, STEPS) for i in range(len(batch))]
    official = official_step_meta_gradient(points, phi, batch)
    by_hand = torch.autograd.grad(stopgrad_objective_by_hand(points, phi, batch), phi)
    if meta_update == "batch":
        grads, _ = warp_meta_gradient(algo, batch)
    else:  # what the per_point updater steps on at each point (`warp_gradient`), averaged here
        names = [n for n, _ in algo.model.named_parameters()]
        per_point = [algo.warp_gradient(dict(zip(names, point)), batch[i])
                     for i in range(len(batch)) for point in points[i]]
        grads = [sum(g) / len(per_point) for g in zip(*per_point)]
    graph_algo, _ = mlp_setup(inner_grad="graph", snapshots=STEPS)
    second_order, _ = warp_meta_gradient(graph_algo, batch)
    default_algo, _ = mlp_setup(snapshots=STEPS)  # default: graph, unchanged
    default, _ = warp_meta_gradient(default_algo, batch)
    for g, o, h, s, d in zip(grads, official, by_hand, second_order, default):
        torch.testing.assert_close(g, o, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g, h, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(d, s, rtol=0, atol=0)
    difference = max((g - s).abs().max() / s.abs().max() for g, s in zip(grads, second_order))
    assert difference > 1e-2  # the inner gradient's own dependence on phi is not negligible here
    assert all(g.abs().max() > 1e-4 for g in grads)


def test_inner_grad_takes_graph_or_detached():
    with pytest.raises(ValueError, match="inner_grad"):
        mlp_setup(inner_grad="first")


def test_offline_buffer_keeps_evenly_spaced_snapshots_starting_at_theta_0():
    assert snapshot_steps(100, 5) == {0, 20, 40, 60, 80}
    assert snapshot_steps(1, 5) == {0}
    assert snapshot_steps(3, 3) == {0, 1, 2}
    algo, batch = mlp_setup(snapshots=2)  # points theta_0 and theta_1 of 3 steps
    grads, _ = warp_meta_gradient(algo, batch)
    phi = [p.detach().clone() for p in algo.warp.parameters()]
    theta0 = [p.detach() for p in algo.model.parameters()]
    points = [trajectory_by_hand(theta0, phi, batch[i].support, STEPS)[:2] for i in range(len(batch))]
    expected = torch.autograd.grad(warp_objective_by_hand(points, [p.requires_grad_() for p in phi], batch), phi)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_online_meta_gradient_equals_offline_with_every_point_in_the_buffer():
    online, batch = mlp_setup(mode="online")
    offline, _ = mlp_setup(mode="offline", snapshots=STEPS)
    (g_on, m_on), (g_off, m_off) = warp_meta_gradient(online, batch), warp_meta_gradient(offline, batch)
    for a, b in zip(g_on, g_off):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert m_on == pytest.approx(m_off, rel=1e-12)  # offline runs chunks of tasks (warpgrad.py)


def graph_size(tensor) -> int:
    """Number of autograd nodes behind `tensor` (0 for a leaf or a constant)."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


def largest_graph(name, steps, batched=True, **hparams):
    """The largest autograd graph behind any task-parameter point or meta-loss of one meta-step
    (`batched`: chunks of tasks where warpgrad.py takes them, else one task at a time)."""
    algo, batch = mlp_setup(name, **{**hparams, "inner_steps": steps})
    algo.batched_tasks = batched
    sizes = []

    def recording_step(step):
        def recorded(theta, data, create_graph=False):
            new, loss, grads = step(theta, data, create_graph)
            sizes.append(max(graph_size(t) for t in new.values()))
            return new, loss, grads
        return recorded

    def recording_meta_loss(meta_loss):
        def recorded(theta, data):
            loss = meta_loss(theta, data)
            sizes.append(graph_size(loss))
            return loss
        return recorded

    algo.step, algo.chunk_step = recording_step(algo.step), recording_step(algo.chunk_step)
    algo.warp_meta_loss = recording_meta_loss(algo.warp_meta_loss)
    algo.chunk_warp_meta_losses = recording_meta_loss(algo.chunk_warp_meta_losses)
    algo.meta_step(batch)
    return max(sizes)


def test_trajectory_builds_no_graph_so_meta_step_cost_does_not_grow_with_steps():
    algo, batch = mlp_setup()
    adapted = algo.adapt(batch[0].support, steps=5)
    assert all(p.grad_fn is None for p in adapted.values())  # leaves: nothing links them to theta_0
    for mode, batched in (("offline", True), ("offline", False), ("online", True)):
        for name in ("warpgrad", "warpleap"):
            short = largest_graph(name, 2, batched, mode=mode, snapshots=2)
            assert largest_graph(name, 30, batched, mode=mode, snapshots=2) == short > 0, (name, mode, batched)
    # The measurement does see a graph through the trajectory: Warp-MAML's grows with the steps.
    for batched in (True, False):
        assert largest_graph("warpmaml", 30, batched, snapshots=2) > 5 * largest_graph("warpmaml", 2, batched, snapshots=2)


# -- the initialisation: Warp-MAML and Warp-Leap reduce to MAML and Leap at the identity warp ---

@pytest.mark.parametrize("first_order", [False, True])
def test_warp_maml_init_gradient_is_mamls_at_the_identity_warp(first_order):
    algo, batch = mlp_setup("warpmaml", perturb=0.0, first_order=first_order)
    maml = build_algorithm("fomaml" if first_order else "maml", algo.model, algo.objective, algo.hparams)
    algo.zero_grad(set_to_none=True)
    algo.meta_step(batch)
    warp_init = [p.grad.clone() for p in algo.model.parameters()]
    assert all(p.grad.abs().max() > 0 for p in algo.warp.parameters())  # phi learns alongside
    algo.zero_grad(set_to_none=True)
    maml.meta_step(batch)
    for a, p in zip(warp_init, algo.model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("final_point", [True, False])
def test_warp_leap_init_gradient_is_leaps_at_the_identity_warp(final_point):
    """With final_point false both paths end at theta_{K-1} (Leap's: the official loop's, test_leap.py)."""
    algo, batch = mlp_setup("warpleap", perturb=0.0, use_loss=True, final_point=final_point)
    leap = build_algorithm("leap", algo.model, algo.objective, {**algo.hparams, "use_loss": True})
    algo.zero_grad(set_to_none=True)
    algo.meta_step(batch)
    warp_init = [p.grad.clone() for p in algo.model.parameters()]
    algo.zero_grad(set_to_none=True)
    leap.meta_step(batch)
    for a, p in zip(warp_init, algo.model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-9, atol=1e-12)
        assert a.abs().max() > 0


def test_named_variants_fix_their_initialisation_objective():
    with pytest.raises(ValueError, match="warpleap"):
        mlp_setup("warpleap", init="maml")
    algo, _ = mlp_setup("warpgrad", init="leap")
    assert algo.init == "leap"


# -- concurrency and meta-learning ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["warpgrad", "warpmaml", "warpleap"])
def test_concurrent_tasks_give_the_same_meta_gradient(name):
    algo, batch = mlp_setup(name, tasks=4)
    serial = copy.deepcopy(algo)
    serial.parallel_tasks = False
    for a, b in zip(warp_meta_gradient(algo, batch)[0], warp_meta_gradient(serial, batch)[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_meta_trained_warp_lowers_the_loss_after_k_steps_on_held_out_sinusoids():
    """MAML's sinusoids, 1-40-40-1 MLP, theta_0 fixed (init none): only the warp is meta-learned."""
    hp = {"inner_lr": 0.01, "inner_steps": 5, "test_inner_steps": 5, "snapshots": 5}
    torch.manual_seed(0)
    model = MLP()
    algo = build_algorithm("warpgrad", model, Objective(model, "regression"), hp)
    identity = copy.deepcopy(algo)
    held_out = meta_train_on_sinusoids(algo, 60)
    trained, untrained = held_out_loss(algo, held_out), held_out_loss(identity, held_out)
    assert torch.equal(algo.model.net[0].weight, identity.model.net[0].weight)  # theta_0 untouched
    assert trained < 0.6 * untrained, (trained, untrained)
    assert trained < held_out_loss(algo, held_out, steps=0)  # and the k steps still help


class StopAt:
    """A tracker that interrupts training when metrics for `iteration` are logged."""

    def __init__(self, iteration):
        self.iteration = iteration

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        if step == self.iteration:
            raise KeyboardInterrupt


def test_warp_leap_trains_in_the_loop_resumes_exactly_and_evaluates(tmp_path):
    from conftest import quick_params
    from metalearn.benchmarks import make_episodes
    from metalearn.evaluate import evaluate
    from metalearn.train import load_model, train

    params = quick_params(tmp_path, benchmarks={"sinusoid": {"test_tasks": 5, "train": {
        "iterations": 6, "checkpoint_every": 3, "log_every": 3, "meta_batch": 3}}})
    quiet = {"device": "cpu", "log": lambda s: None}
    reference = train(Benchmark.of(params, "sinusoid"), "warpleap", 0, tmp_path / "reference", **quiet)
    with pytest.raises(KeyboardInterrupt):  # stopped after the checkpoint at iteration 3
        train(Benchmark.of(params, "sinusoid"), "warpleap", 0, tmp_path / "resumed", tracker=StopAt(6), **quiet)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["iteration"] == 3
    resumed = train(Benchmark.of(params, "sinusoid"), "warpleap", 0, tmp_path / "resumed", **quiet)
    a, b = (torch.load(path, weights_only=True)["state_dict"] for path in (reference, resumed))
    assert a.keys() == b.keys() and any(key.startswith("warp.") for key in a)
    assert all(torch.equal(a[key], b[key]) for key in a)
    algo, _ = load_model(resumed, device="cpu")
    assert algo.init == "leap" and all(torch.equal(p, a[f"warp.{n}"]) for n, p in algo.warp.named_parameters())
    make_episodes(Benchmark.of(params, "sinusoid"))
    result = evaluate(params, resumed, device="cpu", log=lambda s: None)
    assert result["episodes"] == 5 and torch.isfinite(torch.tensor(result["per_episode"])).all()


def test_params_yaml_registers_the_warp_variants_and_the_multishot_protocol():
    from conftest import ROOT
    from metalearn.config import load_params

    for profile in ("quick", "default"):
        benches = load_params(ROOT / "params.yaml", profile)["benchmarks"]
        assert {"leap", "warpgrad", "warpmaml", "warpleap"} <= set(benches["sinusoid"]["algorithms"])
        # on Omniglot the CPU profiles run WarpGrad and Leap; Warp-MAML/-Leap cost twice as much
        assert {"leap", "warpgrad"} <= set(benches["omniglot-5w1s"]["algorithms"])
        assert "omniglot-20w-multishot" not in benches  # the full protocol is for the paper profile
    paper = load_params(ROOT / "params.yaml", "paper")["benchmarks"]
    assert {"leap", "warpgrad", "warpmaml", "warpleap"} <= set(paper["omniglot-5w1s"]["algorithms"])
    multishot = load_params(ROOT / "params.yaml", "paper")["benchmarks"]["omniglot-20w-multishot"]
    assert (multishot["ways"], multishot["train"]["meta_batch"]) == (20, 20)
    for name in ("leap", "warpleap"):
        assert multishot["algorithms"][name]["inner_steps"] == 100
        assert multishot["algorithms"][name]["inner_lr"] == 0.1


# -- the official updater: one SGD step per buffered point ------------------------------------------

class StepSpy:
    """Wraps torch.optim.SGD.step: records, for each step, the optimiser's learning rate, the
    parameters it steps (by identity) and the point whose warp gradient was last computed."""

    def __init__(self, monkeypatch, algo):
        self.steps, self.points, self.last_point = [], [], None
        original_step, original_gradient = torch.optim.SGD.step, algo.warp_gradient

        def step(optimizer, *args, **kwargs):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self.steps.append((optimizer.param_groups[0]["lr"], {id(p) for p in params}, self.last_point))
            return original_step(optimizer, *args, **kwargs)

        def gradient(theta, task):
            self.last_point = [t.clone() for t in theta.values()]
            self.points.append(self.last_point)
            return original_gradient(theta, task)

        monkeypatch.setattr(torch.optim.SGD, "step", step)
        monkeypatch.setattr(algo, "warp_gradient", gradient)


@pytest.mark.parametrize("shuffle", [False, True])
def test_per_point_updater_steps_phi_once_per_buffered_point_in_buffer_order(monkeypatch, shuffle):
    snapshots, lr = 2, 0.05
    algo, batch = mlp_setup("warpleap", snapshots=snapshots, meta_update="per_point", warp_lr=lr,
                            init_lr=0.2, shuffle_buffer=shuffle)
    phi = [p.detach().clone() for p in algo.warp.parameters()]
    theta0 = [p.detach().clone() for p in algo.model.parameters()]
    spy = StepSpy(monkeypatch, algo)
    torch.manual_seed(7)
    algo.meta_step(batch)
    # The buffer: theta_0 and theta_1 of each task's 3 warped steps, task by task (the phi of adaptation).
    buffer = [(i, point) for i in range(len(batch))
              for point in trajectory_by_hand(theta0, phi, batch[i].support, STEPS)[:snapshots]]
    order = torch.Generator().manual_seed(7)  # shuffle_buffer: the loop-checkpointed torch generator
    visit = torch.randperm(len(buffer), generator=order).tolist() if shuffle else list(range(len(buffer)))
    warp_ids, init_ids = {id(p) for p in algo.warp.parameters()}, {id(p) for p in algo.model.parameters()}
    assert len(spy.steps) == len(buffer) + 1  # one warp step per point, then one step of theta_0
    for (step_lr, stepped, point), j in zip(spy.steps, visit):
        assert step_lr == lr and stepped == warp_ids
        for a, b in zip(point, buffer[j][1]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert spy.steps[-1][:2] == (0.2, init_ids)
    # phi by hand: SGD on J at one point at a time, each step at the phi the previous one left.
    for j in visit:
        i, point = buffer[j]
        phi = [p.requires_grad_() for p in phi]
        grads = torch.autograd.grad(warp_objective_by_hand([[point]], phi, batch.slice(i, i + 1)), phi)
        phi = [(p - lr * g).detach() for p, g in zip(phi, grads)]
    for p, expected in zip(algo.warp.parameters(), phi):
        torch.testing.assert_close(p.detach(), expected, rtol=1e-9, atol=1e-12)
    # nothing is left for the loop's optimiser
    assert all(p.grad is None for p in algo.parameters())


def test_per_point_updater_moves_theta_0_by_one_sgd_step_on_leaps_gradient():
    algo, batch = mlp_setup("warpleap", snapshots=2, meta_update="per_point", init_lr=0.2)
    reference, _ = mlp_setup("warpleap", snapshots=2)  # batch updater: the same Leap gradient in .grad
    reference.zero_grad(set_to_none=True)
    reference.meta_step(batch)
    before = [p.detach().clone() for p in algo.model.parameters()]
    algo.meta_step(batch)
    for p, b, r in zip(algo.model.parameters(), before, reference.model.parameters()):
        torch.testing.assert_close(p.detach(), b - 0.2 * r.grad, rtol=1e-10, atol=1e-12)


def test_per_point_updater_needs_the_replay_buffer():
    with pytest.raises(ValueError, match="offline"):
        mlp_setup(meta_update="per_point", mode="online")
    with pytest.raises(ValueError, match="per_point"):
        mlp_setup(meta_update="sometimes")
