"""T-nets and MT-nets compute what the paper says: reductions to MAML, masks that freeze units,
the relaxed gradient of the mask logits in closed form, T as a metric; and the polynomial tasks."""
from __future__ import annotations

import math

import pytest
import torch

from metalearn.algorithms import build_algorithm
from metalearn.algorithms.mtnet import straight_through_gumbel, weight_layers
from metalearn.config import Benchmark
from metalearn.models import MLP, Conv4
from metalearn.tasks import Objective, TaskBatch

HP = {"inner_lr": 0.05, "inner_steps": 2, "test_inner_steps": 2}


def regression_batch(tasks=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 8, 1, generator=g, dtype=torch.float64)
    y = torch.sin(3 * x) + 0.1 * torch.randn(tasks, 8, 1, generator=g, dtype=torch.float64)
    return TaskBatch(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:])


def classification_batch(tasks=2, ways=3, seed=1, side=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 2 * ways, 1, side, side, generator=g, dtype=torch.float64)
    y = torch.arange(ways).repeat(2).expand(tasks, -1)
    return TaskBatch(x[:, :ways], y[:, :ways], x[:, ways:], y[:, ways:])


NETWORKS = {
    "mlp": lambda: MLP(1, (5, 4), 1),
    "conv4": lambda: Conv4(1, 3, filters=4),
    # the iMAML protocol's variant: dark strokes (the network sees 1 - x), 2x2 maps flattened, not averaged
    "conv4-dark-flatten": lambda: Conv4(1, 3, filters=4, image_size=28, features="flatten", stroke="dark"),
}


def pair(name, network, hparams=HP):
    """(MAML, `name`) on identically initialised copies of `network` (float64)."""
    out = []
    for algo_name in ("maml", name):
        torch.manual_seed(0)
        model = NETWORKS[network]().double()
        out.append(build_algorithm(algo_name, model, Objective(model, "regression" if network == "mlp"
                                                                else "classification"), hparams).double())
    return out


def batch_for(network):
    if network == "mlp":
        return regression_batch()
    return classification_batch(side=28 if network == "conv4-dark-flatten" else 8)


def model_grads(algo, batch):
    algo.zero_grad(set_to_none=True)
    algo.meta_step(batch)
    return {k: p.grad.clone() for k, p in algo.model.named_parameters()}


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("name", ["tnet", "mtnet"])
def test_identity_T_and_unit_masks_reproduce_maml_exactly(name, network):
    maml, algo = pair(name, network)
    if name == "mtnet":  # zeta so large that every Gumbel sample is M = 1 (through the sampling code)
        for zeta in algo.zeta:
            zeta.data.fill_(1e4)
    batch = batch_for(network)
    task = batch[0]
    masks = None
    if name == "mtnet":
        masks = algo.masks([torch.rand(u, 2, dtype=torch.float64) for u, _ in algo.layers])
        assert all(bool((m == 1).all()) for m in masks.values())
    a = maml.adapt(task.support, 2, create_graph=False)
    b = algo.adapt(task.support, 2, create_graph=False, **({} if masks is None else {"masks": masks}))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-14)
    ga, gb = model_grads(maml, batch), model_grads(algo, batch)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("network", ["mlp", "conv4"])
def test_masked_units_keep_their_weights_and_unmasked_units_take_the_maml_step(network):
    maml, algo = pair("mtnet", network)
    task = batch_for(network)[0]
    # M = 0 everywhere: adaptation leaves every weight where it started.
    for zeta in algo.zeta:
        zeta.data.fill_(-1e4)
    masks = algo.masks([torch.rand(u, 2, dtype=torch.float64) for u, _ in algo.layers])
    assert all(bool((m == 0).all()) for m in masks.values())
    frozen = algo.adapt(task.support, 3, masks=masks)
    for k, p in algo.model.named_parameters():
        assert torch.equal(frozen[k], p.detach())
    # Alternate units masked: after one step their rows are unchanged, the others moved as MAML's.
    masks = {}
    for units, names in algo.layers:
        unit = (torch.arange(units) % 2).double()
        for n in names:
            masks[n] = unit.view(units, *[1] * (algo.model.get_parameter(n).dim() - 1))
    one = algo.adapt(task.support, 1, masks=masks)
    reference = maml.adapt(task.support, 1)
    for units, names in algo.layers:
        for n in names:
            start = algo.model.get_parameter(n).detach()
            assert torch.equal(one[n][0::2], start[0::2])
            torch.testing.assert_close(one[n][1::2], reference[n][1::2], rtol=0, atol=1e-14)
            if n.endswith("weight") and units > 1:  # (a conv bias before BatchNorm has a zero gradient;
                # a 1-unit layer has no odd unit)
                assert not torch.equal(one[n][1::2], start[1::2])


def test_mask_logits_get_the_straight_through_gradient_of_the_relaxation():
    """d L_Q / d zeta = d L_Q / d M  *  d s / d zeta, s = sigmoid((zeta + g0 - g1) / tau) the relaxed
    sample: the forward pass uses the hard mask, the gradient is that of the relaxation."""
    tau = 0.7
    _, algo = pair("mtnet", "mlp", {**HP, "temperature": tau})
    with torch.no_grad():
        for zeta in algo.zeta:
            zeta.copy_(torch.randn(zeta.shape, dtype=torch.float64))
    task = regression_batch()[0]
    noise = [torch.rand(u, 2, dtype=torch.float64) for u, _ in algo.layers]
    loss, _ = algo.task_meta_loss(task, algo.masks(noise))
    dzeta = torch.autograd.grad(loss, list(algo.zeta))
    # Independently: the query loss as a function of explicit per-unit masks at the hard values.
    units = []
    for (n_units, names), zeta, u in zip(algo.layers, algo.zeta, noise):
        g = -torch.log(-torch.log(u + 1e-20) + 1e-20)
        units.append(((zeta.detach() + g[:, 0] - g[:, 1]) / tau))
    hard = [(z > 0).double().requires_grad_() for z in units]
    masks = {n: m.view(nu, *[1] * (algo.model.get_parameter(n).dim() - 1))
             for (nu, names), m in zip(algo.layers, hard) for n in names}
    loss_m, _ = algo.task_meta_loss(task, masks)
    dmask = torch.autograd.grad(loss_m, hard)
    for got, dl_dm, z in zip(dzeta, dmask, units):
        s = torch.sigmoid(z)
        expected = dl_dm * s * (1 - s) / tau
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-14)
        assert got.abs().sum() > 0


def test_masks_are_bernoulli_sigmoid_zeta_and_tau_only_shapes_the_relaxation():
    zeta = torch.tensor([-2.0, 0.0, 1.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([straight_through_gumbel(zeta, torch.rand(3, 2, generator=g, dtype=torch.float64), tau)
                         for tau in (0.3, 3.0) for _ in range(4000)])
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    frequency = draws.mean(0)  # 8000 draws: standard error < 0.006
    torch.testing.assert_close(frequency, torch.sigmoid(zeta), rtol=0, atol=0.025)


def test_T_is_meta_learned_not_adapted_and_starts_at_identity():
    for network in ("mlp", "conv4"):
        _, algo = pair("tnet", network)
        for T in algo.transform:
            w = T.weight.detach().flatten(1) if T.weight.dim() == 2 else T.weight.detach()[:, :, 0, 0]
            assert torch.equal(w, torch.eye(w.shape[0], dtype=w.dtype))
        assert len(algo.transform) == len(weight_layers(algo.model))  # the head has its T too
        batch = batch_for(network)
        adapted = algo.adapt(batch[0].support, 1)
        assert set(adapted) == set(dict(algo.model.named_parameters()))  # T is not in the inner loop
        algo.zero_grad(set_to_none=True)
        algo.meta_step(batch)
        assert all(T.weight.grad is not None and T.weight.grad.abs().sum() > 0 for T in algo.transform)


def test_tnet_step_is_gradient_descent_in_the_metric_T_Tt():
    """Linear net y = T (W x + b): one step changes the outputs by
    -alpha T T^T sum_m dL/dy_m (x_m^T x_n + 1), the MAML step seen through the metric T T^T."""
    torch.manual_seed(0)
    model = MLP(3, (), 2).double()
    algo = build_algorithm("tnet", model, Objective(model, "regression"), {**HP, "inner_steps": 1}).double()
    with torch.no_grad():
        algo.transform[0].weight.copy_(torch.tensor([[1.0, 0.5], [-0.3, 2.0]]))
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    before = algo.predict(dict(model.named_parameters()), x).detach()
    after = algo.predict(algo.adapt((x, y), 1), x).detach()
    T = algo.transform[0].weight.detach()
    dl_dy = 2 * (before - y) / y.numel()  # mse
    expected = before - 0.05 * (x @ x.T + 1) @ dl_dy @ (T @ T.T).T
    torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("network", ["mlp", "conv4"])
def test_metasgd_with_every_rate_alpha_is_maml_and_its_rates_get_the_closed_form_gradient(network):
    """Untrained, every rate is inner_lr: adapted parameters and theta's meta-gradient are MAML's.
    For one inner step theta' = theta - a (.) g_S(theta), so dL_Q(theta')/da = -g_S (.) grad L_Q(theta')."""
    maml, algo = pair("metasgd", network)
    batch = batch_for(network)
    a, b = maml.adapt(batch[0].support, 2), algo.adapt(batch[0].support, 2)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-14)
    ga, gb = model_grads(maml, batch), model_grads(algo, batch)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-12, atol=1e-14)

    one_step = build_algorithm("metasgd", algo.model, algo.objective, {**HP, "inner_steps": 1}).double()
    with torch.no_grad():  # rates that differ per entry
        for rate in one_step.alpha.values():
            rate.uniform_(0.01, 0.1)
    task = batch[0]
    one_step.zero_grad(set_to_none=True)
    loss, _ = one_step.task_meta_loss(task)
    loss.backward()
    theta = dict(algo.model.named_parameters())
    g_support = torch.autograd.grad(one_step.objective.loss(theta, task.support), list(theta.values()))
    adapted = {k: (p - one_step.step_sizes()[k] * g).detach().requires_grad_()
               for (k, p), g in zip(theta.items(), g_support)}
    g_query = torch.autograd.grad(one_step.objective.loss(adapted, task.query), list(adapted.values()))
    for (k, _), gs, gq in zip(theta.items(), g_support, g_query):
        torch.testing.assert_close(one_step.alpha[k.replace(".", "-")].grad, -gs * gq, rtol=1e-10, atol=1e-14)


def test_meta_test_masks_are_deterministic_per_episode_and_vary_across_episodes():
    _, algo = pair("mtnet", "mlp")
    batch = regression_batch(tasks=6)
    first = [algo.evaluate_task(task)["loss"] for task in batch]
    assert [algo.evaluate_task(task)["loss"] for task in batch] == first
    assert [r["loss"] for r in algo.map_tasks(algo.evaluate_task, batch)] == first  # threads: same
    # zeta = 0: each unit adapts with probability 1/2, so different episodes get different masks.
    flat = [tuple(torch.cat([m.flatten() for m in algo.episode_masks(t.support).values()]).tolist()) for t in batch]
    assert len(set(flat)) == len(batch) and all(set(f) == {0.0, 1.0} for f in flat)
    # eval_mask mode: M = [zeta > 0]; with zeta < 0 nothing adapts, the adapted loss is the initial one.
    mode = build_algorithm("mtnet", algo.model, algo.objective, {**HP, "eval_mask": "mode"}).double()
    for zeta in mode.zeta:
        zeta.data.fill_(-0.1)
    task = batch[0]
    start = torch.nn.functional.mse_loss(mode.predict(dict(algo.model.named_parameters()), task.query[0]),
                                         task.query[1]).item()
    assert mode.evaluate_task(task)["loss"] == start


def test_mtnet_training_resumes_to_the_identical_result(tmp_path):
    """The Gumbel noise comes from the checkpointed global generator: a run interrupted after a
    checkpoint and resumed equals an uninterrupted one, for every meta-parameter (zeta, T, theta)."""
    from conftest import quick_params
    from metalearn.train import train

    params = quick_params(tmp_path, benchmarks={"sinusoid": {"train": {
        "meta_batch": 3, "iterations": 9, "checkpoint_every": 3, "log_every": 3}}})

    def interrupt(message):
        if "iter 6/" in message:  # after the checkpoint of iteration 3, before that of 6
            raise KeyboardInterrupt

    full = train(Benchmark.of(params, "sinusoid"), "mtnet", 0, tmp_path / "full", device="cpu", log=lambda s: None)
    with pytest.raises(KeyboardInterrupt):
        train(Benchmark.of(params, "sinusoid"), "mtnet", 0, tmp_path / "cut", device="cpu", log=interrupt)
    messages = []
    resumed = train(Benchmark.of(params, "sinusoid"), "mtnet", 0, tmp_path / "cut", device="cpu", log=messages.append)
    assert any("resuming sinusoid/mtnet/seed0 from iteration 3" in m for m in messages)
    a = torch.load(full, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("zeta") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- polynomial regression (the MT-net paper's task family) -----------------------------------------

def test_polynomial_tasks_are_polynomials_of_the_given_degree_in_the_official_ranges():
    from metalearn.data import episodes as ep

    g = torch.Generator().manual_seed(0)
    for degree in (0, 1, 3):
        drawn = ep.draw_polynomials(200, 30, degree, g)
        c, x = drawn["coefficients"], drawn["x"]
        assert c.shape == (200, degree + 1) and x.shape == (200, 30)
        scale = 2.0 ** torch.arange(degree + 1)  # official: c_i ~ U[-1, 1] / 2^i, x ~ U[-2, 2]
        assert (c * scale).abs().max() <= 1 and (c * scale).abs().max() > 0.9
        assert x.abs().max() <= 2 and x.abs().max() > 1.9
        tasks = ep.polynomial_tasks(drawn, 10)
        assert tasks.support_x.shape == (200, 10, 1) and tasks.query_x.shape == (200, 20, 1)
        xs = torch.cat([tasks.support_x, tasks.query_x], 1).squeeze(-1).double()
        ys = torch.cat([tasks.support_y, tasks.query_y], 1).squeeze(-1).double()
        vander = torch.stack([xs ** i for i in range(degree + 1)], -1)
        torch.testing.assert_close(ys, (vander * c.double().unsqueeze(1)).sum(-1), rtol=1e-5, atol=1e-5)
        if degree > 0:  # degree exactly `degree`: one degree fewer cannot fit the points
            fit = torch.linalg.lstsq(vander[..., :-1], ys.unsqueeze(-1)).solution
            residual = (vander[..., :-1] @ fit).squeeze(-1) - ys
            assert residual.abs().max() > 1e-3


def test_polynomial_benchmark_validates_samples_and_saves_episodes(tmp_path):
    from conftest import quick_params
    from metalearn import benchmarks

    poly = {"task": "polynomial", "degree": 2, "model": "mlp", "shots": 10, "queries": 10,
            "eval_queries": 50, "val_tasks": 4, "test_tasks": 6, "episode_seed": 0,
            "train": {"meta_batch": 4, "meta_lr": 0.001, "iterations": 2},
            "algorithms": {"mtnet": {"inner_lr": 0.01, "inner_steps": 1, "test_inner_steps": 1}}}
    params = quick_params(tmp_path, benchmarks={"polynomial-2": poly})
    bench = params["benchmarks"]["polynomial-2"]
    assert benchmarks.objective_kind(bench) == "regression" and benchmarks.metric_name(bench) == "mse"
    batch = benchmarks.train_sampler(Benchmark.of(params, "polynomial-2"), torch.Generator().manual_seed(0), torch.device("cpu")).sample(4)
    assert batch.support_x.shape == (4, 10, 1) and batch.query_y.shape == (4, 10, 1)
    benchmarks.make_episodes(Benchmark.of(params, "polynomial-2"))
    test = list(benchmarks.eval_batches(Benchmark.of(params, "polynomial-2"), "test", torch.device("cpu")))
    assert sum(len(b) for b in test) == 6 and test[0].query_x.shape[1] == 50
    with pytest.raises(Exception):
        quick_params(tmp_path, benchmarks={"polynomial-2": {**poly, "degree": -1}})
    with pytest.raises(Exception):
        quick_params(tmp_path, benchmarks={"polynomial-x": {k: v for k, v in poly.items() if k != "degree"}})


def test_quick_profile_trains_tnet_mtnet_metasgd_on_both_benchmarks(prepared_small, tmp_path):
    from metalearn.train import train

    params = prepared_small
    for bench in ("sinusoid", "omniglot-5w1s"):
        for name in ("tnet", "mtnet", "metasgd"):
            assert name in params["benchmarks"][bench]["algorithms"]
    small = {**params, "benchmarks": {b: {**params["benchmarks"][b], "train": {
        **params["benchmarks"][b]["train"], "iterations": 2, "meta_batch": 2}} for b in ("sinusoid", "omniglot-5w1s")}}
    for bench in ("sinusoid", "omniglot-5w1s"):
        for name in ("tnet", "mtnet", "metasgd"):
            path = train(Benchmark.of(small, bench), name, 0, tmp_path / bench / name, device="cpu", log=lambda s: None)
            assert math.isfinite(torch.load(path, weights_only=True)["train_seconds"])


def test_mtnet_study_writes_its_table_and_figure_and_reuses_finished_runs(tmp_path):
    """The quick profile's study: one MT-net per degree, MAML and MT-net per inner lr; P(M = 1) per
    layer is read from the saved zeta; a second call retrains nothing; a bad benchmark is named."""
    import csv

    from conftest import quick_params
    from metalearn.config import validate
    from metalearn.errors import ConfigError
    from metalearn.studies import mtnet_study

    params = quick_params(tmp_path)
    study = params["studies"]["mtnet"]
    logs = []
    rows = mtnet_study(params, tmp_path / "out", device="cpu", log=logs.append)
    table = list(csv.DictReader(open(tmp_path / "out" / "mtnet.csv")))
    assert len(table) == len(rows)
    layers = len(weight_layers(MLP(1, (40, 40), 1)))
    degree_rows = [r for r in table if r["part"] == "degree"]
    assert sorted({int(r["degree"]) for r in degree_rows}) == study["degrees"]
    assert len(degree_rows) == layers * len(study["degrees"])
    assert all(0 < float(r["adapted_fraction"]) < 1 for r in degree_rows)
    sweep = {(r["algorithm"], float(r["inner_lr"])) for r in table if r["part"] == "inner_lr"}
    assert sweep == {(a, lr) for a in study["algorithms"] for lr in study["inner_lrs"]}
    saved = torch.load(tmp_path / "out" / "mtnet" / "polynomial-d2" / "mtnet" / "model.pt", weights_only=True)
    fractions = [torch.sigmoid(saved["state_dict"][f"zeta.{i}"]).mean().item() for i in range(layers)]
    assert [float(r["adapted_fraction"]) for r in degree_rows if r["degree"] == "2"] == pytest.approx(fractions, abs=1e-6)
    assert (tmp_path / "out" / "mtnet.png").read_bytes()[:4] == b"\x89PNG"
    trainings = [line for line in logs if line.startswith("training ")]  # train()'s opening line
    assert len(trainings) == len(study["degrees"]) + len(sweep)

    logs.clear()
    assert mtnet_study(params, tmp_path / "out", device="cpu", log=logs.append) == rows
    assert not any(line.startswith("training ") for line in logs)

    with pytest.raises(ConfigError, match="studies.mtnet.benchmark"):
        validate({**params, "studies": {"mtnet": {**study, "benchmark": "omniglot-5w1s"}}})
