"""Each paper's own protocol: the points where the official code differs from the defaults are settings,
whose defaults keep the defaults' results and whose values in params.yaml's paper profile are the official
ones. Each behaviour test knows the answer the official code gives; the official values themselves, with
their files and lines, are written once in src/metalearn/protocols.yaml and checked here against the
resolved profiles."""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.func import functional_call

from conftest import ROOT, quick_params
from metalearn import benchmarks, protocols
from metalearn.algorithms import build_algorithm
from metalearn.algorithms.maml import MAML
from metalearn.config import Benchmark, load_params
from metalearn.data import episodes as ep
from metalearn.models import MLP, Conv4, build_model
from metalearn.tasks import Objective, TaskBatch
from metalearn.train import clip_meta_grad, train

MAML_FAMILY = ["maml", "fomaml", "metasgd", "tnet", "mtnet"]


def _tasks(tasks: int = 3, ways: int = 5, shots: int = 2, queries: int = 2, seed: int = 0) -> TaskBatch:
    """A fixed batch of N-way K-shot tasks of 28x28 images, float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, ways * (shots + queries), 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.arange(ways).repeat(shots + queries).expand(tasks, -1)
    n = ways * shots
    return TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:])


def _algorithm(name: str, ways: int = 5, inner_steps: int = 1, **model_choices):
    torch.manual_seed(0)
    model = Conv4(1, ways, filters=8, **model_choices).double()
    hparams = {"inner_lr": 0.3, "inner_steps": inner_steps, "test_inner_steps": inner_steps,
               "inner_loss": "sum_over_shots"}
    algo = build_algorithm(name, model, Objective(model, "classification"), hparams).double()
    with torch.no_grad():  # a T that is not the identity, so T-/MT-nets' path is really exercised
        for T in getattr(algo, "transform", []):
            T.weight.add_(0.1 * torch.randn_like(T.weight))
    return algo


def _official_step(algo, support, shots: int) -> dict[str, torch.Tensor]:
    """cbfinn/maml: fast_weights = weights - update_lr * tf.gradients(xent, weights), xent = each
    example's softmax cross-entropy / K (utils.py); tf.gradients of the vector sums over examples."""
    theta = {k: v.detach().requires_grad_() for k, v in algo.initial_params().items()}
    x, y = support
    per_example = F.cross_entropy(algo.predict(theta, x), y, reduction="none")
    grads = torch.autograd.grad((per_example / shots).sum(), list(theta.values()))
    return {k: p - algo.inner_lr * g for (k, p), g in zip(theta.items(), grads)}


def _all_units(algo):
    """MT-net's step sizes with every unit's mask 1 (so the step is the plain one)."""
    return {name: torch.ones((), dtype=torch.float64) for name in algo.initial_params()}


# -- 1. inner-loss scale -------------------------------------------------------------------------

@pytest.mark.parametrize("name", MAML_FAMILY)
def test_sum_over_shots_step_is_the_maml_codes_xent_step(name):
    """One inner step = theta - alpha * sum_i grad l_i / K (= N alpha x the mean loss's gradient),
    in the one-task path (`adapt`, what evaluation runs) and in the chunked path."""
    ways, shots = 5, 2
    algo = _algorithm(name, ways)
    tasks = _tasks(ways=ways, shots=shots)
    extra = {"masks": _all_units(algo)} if name == "mtnet" else {}
    for task in tasks:
        expected = _official_step(algo, task.support, shots)
        adapted = algo.adapt(task.support, 1, **extra)
        assert adapted.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(adapted[key], expected[key], rtol=1e-10, atol=1e-12)
        # evaluation adapts the same way (its query loss is the official step's)
        if name != "mtnet":
            query_loss = F.cross_entropy(algo.predict(expected, task.query[0]), task.query[1]).item()
            assert algo.evaluate_task(task, 1)["loss"] == pytest.approx(query_loss, rel=1e-9)
    # the chunked path (meta-training): each task's query loss after the official step
    # (MT-net: MAML's chunk with alpha M, M = 1, which its own chunk_meta_losses calls with the drawn M)
    step_sizes = algo.masked_step_sizes(_all_units(algo)) if name == "mtnet" else None
    losses, _ = MAML.chunk_meta_losses(algo, tasks, step_sizes)
    for t, task in enumerate(tasks):
        adapted = _official_step(algo, task.support, shots)
        expected = F.cross_entropy(algo.predict(adapted, task.query[0]), task.query[1])
        torch.testing.assert_close(losses[t], expected, rtol=1e-10, atol=1e-12)


def test_sum_over_shots_is_n_times_the_mean_step_and_mean_is_the_default():
    tasks = _tasks(tasks=1, ways=5, shots=1)
    task = tasks[0]
    algo = _algorithm("maml", 5)
    theta = algo.initial_params()
    summed = algo.adapt(task.support, 1)
    algo.inner_loss = "mean"
    mean = algo.adapt(task.support, 1)
    for key in theta:  # the step taken is 5 (= N) times as long
        torch.testing.assert_close(summed[key] - theta[key], 5 * (mean[key] - theta[key]), rtol=1e-9, atol=1e-12)
    default = build_algorithm("maml", algo.model, algo.objective, {"inner_lr": 0.3, "inner_steps": 1,
                                                                    "test_inner_steps": 1})
    assert default.inner_loss == "mean"


def test_sum_over_shots_is_refused_for_regression():
    """The MAML code's regression loss (utils.py mse) is tf.reduce_mean: a mean, as ours."""
    model = MLP()
    with pytest.raises(ValueError, match="mse"):
        build_algorithm("maml", model, Objective(model, "regression"),
                        {"inner_lr": 0.01, "inner_steps": 1, "test_inner_steps": 1, "inner_loss": "sum_over_shots"})


# -- 2. BatchNorm as the MAML code's -------------------------------------------------------------

def test_maml_batch_norm_has_an_offset_no_scale_and_eps_1e_3():
    model = Conv4(1, 5, filters=8, batch_norm="maml")
    names = {name for name, _ in model.named_parameters()}
    for i, (_, norm, *_) in enumerate(model.features):
        assert f"features.{i}.1.weight" not in names and f"features.{i}.1.bias" in names
        assert norm.eps == 1e-3
    assert set(model.meta_only) == {f"features.{i}.1.bias" for i in range(4)}
    norm = model.features[0][1]
    with torch.no_grad():
        norm.bias.copy_(torch.linspace(-1, 1, 8))
    h = torch.randn(6, 8, 5, 5)
    mean, var = h.mean(dim=(0, 2, 3), keepdim=True), h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = (h - mean) / torch.sqrt(var + 1e-3) + norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(h), expected, rtol=1e-5, atol=1e-5)
    assert Conv4(1, 5, filters=8).meta_only == ()  # the default (affine) adapts everything


@pytest.mark.parametrize("name", MAML_FAMILY)
def test_maml_batch_norm_offset_is_meta_learned_but_not_adapted(name):
    algo = _algorithm(name, batch_norm="maml", inner_steps=2)
    offsets = [f"features.{i}.1.bias" for i in range(4)]
    with torch.no_grad():
        for key in offsets:
            algo.model.get_parameter(key).normal_(0, 0.1)
    tasks = _tasks()
    extra = {"masks": _all_units(algo)} if name == "mtnet" else {}
    adapted = algo.adapt(tasks[0].support, 2, **extra)
    assert not set(offsets) & set(adapted)  # no inner update: the network's own beta is used
    assert all(not torch.equal(adapted[k], algo.model.get_parameter(k)) for k in ("features.0.0.weight", "head.bias"))
    if name == "metasgd":
        assert not any(key.replace(".", "-") in algo.alpha for key in offsets)
    for batched in (True, False):  # both meta-training paths give beta a (nonzero) meta-gradient
        algo.zero_grad(set_to_none=True)
        algo.batched_tasks = batched
        torch.manual_seed(1)
        algo.meta_step(tasks)
        for key in offsets:
            grad = algo.model.get_parameter(key).grad
            assert grad is not None and grad.abs().sum() > 0
        grads = {n: p.grad.clone() for n, p in algo.named_parameters() if p.grad is not None}
        if batched:
            chunked = grads
    for n, g in grads.items():  # the chunked path's meta-gradient is the one-task loop's
        torch.testing.assert_close(chunked[n], g, rtol=1e-8, atol=1e-10)


def test_forward_tasks_with_maml_batch_norm_is_each_tasks_own_forward():
    """models.forward_tasks (the chunked path) with beta shared, not in the per-task parameters."""
    from metalearn.algorithms.mtnet import TransformedNetwork, transforms

    torch.manual_seed(0)
    for model, x in ((Conv4(1, 5, filters=8, batch_norm="maml"), torch.rand(3, 4, 1, 28, 28)),
                     (Conv4(3, 5, filters=6, pooling="max", image_size=84, batch_norm="maml"), torch.rand(3, 4, 3, 84, 84))):
        model, x = model.double(), x.double()
        with torch.no_grad():
            for key in model.meta_only:
                model.get_parameter(key).normal_()
        params = {name: p.detach() + 0.1 * torch.randn(len(x), *p.shape, dtype=p.dtype)
                  for name, p in model.named_parameters() if name not in model.meta_only}
        together = model.forward_tasks(params, x)
        for t in range(len(x)):
            alone = functional_call(model, {name: p[t] for name, p in params.items()}, (x[t],))
            torch.testing.assert_close(together[t], alone, rtol=1e-12, atol=1e-12)
        transformed = TransformedNetwork(model, transforms(model)).double()
        tparams = {f"task.{name}": p for name, p in params.items()}
        together = transformed.forward_tasks(tparams, x)
        for t in range(len(x)):
            alone = functional_call(transformed, {name: p[t] for name, p in tparams.items()}, (x[t],))
            torch.testing.assert_close(together[t], alone, rtol=1e-12, atol=1e-12)


# -- 3. the output layer's initialisation --------------------------------------------------------

def test_normal_head_init_is_the_maml_codes_w5():
    """cbfinn/maml maml.py construct_conv_weights: w5 = tf.random_normal (mean 0, std 1), b5 = 0."""
    torch.manual_seed(0)
    model = build_model({"model": "conv4", "ways": 20, "head_init": "normal"})
    w = model.head.weight  # 20 x 64 = 1280 draws
    assert abs(w.mean().item()) < 0.1 and 0.93 < w.std().item() < 1.07
    assert (model.head.bias == 0).all()
    torch.manual_seed(0)
    default = build_model({"model": "conv4", "ways": 20})  # Xavier-uniform: |w| <= sqrt(6 / (64 + 20))
    assert default.head.weight.abs().max().item() <= (6 / 84) ** 0.5
    # the rest of the network is initialised as before, draw for draw
    for (name, p), (_, q) in zip(model.named_parameters(), default.named_parameters()):
        if not name.startswith("head."):
            assert torch.equal(p, q), name


# -- 4. rotations by a random multiple of 90 degrees per class and task ---------------------------

def _images(classes: int = 30, size: int = 28) -> torch.Tensor:
    return torch.randint(0, 256, (classes, 20, size, size), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def test_per_task_rotations_turn_each_class_by_its_drawn_multiple_of_90_degrees():
    images, ways, shots, queries = _images(), 5, 1, 2
    sampler = ep.ClassificationSampler(images, ways, shots, queries, torch.Generator().manual_seed(3), rotate=True)
    replay = torch.Generator().manual_seed(3)
    tasks = sampler.sample(40)
    classes, drawings = ep.draw_episodes(40, len(images), 20, ways, shots + queries, replay)
    rotations = ep.draw_rotations(40, ways, replay)
    assert set(rotations.unique().tolist()) == {0, 1, 2, 3}
    for b in range(40):
        for w in range(ways):
            picked = images[classes[b, w], drawings[b, w]].float() / 255  # [shots + queries, H, W]
            turned = torch.rot90(picked, int(rotations[b, w]), dims=(-2, -1))  # counter-clockwise, as tf rot90
            assert torch.equal(tasks.support_x[b, w, 0], turned[0])
            assert torch.equal(tasks.query_x[b, w * queries:(w + 1) * queries, 0], turned[1:])


def _fake_prepared(tmp_path: Path, **bench) -> dict:
    """Quick params over a stand-in omniglot-small cache (random images, 242 characters)."""
    params = quick_params(tmp_path, benchmarks={"omniglot-5w1s": bench})
    path = benchmarks.prepared_path(params, "omniglot-small")
    path.parent.mkdir(parents=True)
    torch.save({"images": _images(242), "classes": [f"background/A/character{i:03d}" for i in range(242)]}, path)
    return params


def test_per_task_rotations_are_saved_with_the_test_episodes(tmp_path):
    params = _fake_prepared(tmp_path, rotations="per_task")
    bench = params["benchmarks"]["omniglot-5w1s"]
    assert benchmarks.episode_settings(bench)["rotations"] == "per_task"
    saved = ep.load_episodes(benchmarks.make_episodes(Benchmark.of(params, "omniglot-5w1s")))
    images = benchmarks.load_split_images(Benchmark.of(params, "omniglot-5w1s"))["test"]
    rotations = saved["test"]["rotations"]
    assert rotations.shape == (bench["test_tasks"], bench["ways"]) and set(rotations.unique().tolist()) <= {0, 1, 2, 3}
    assert len(rotations.unique()) > 1
    tasks = next(benchmarks.eval_batches(Benchmark.of(params, "omniglot-5w1s"), "test", torch.device("cpu"), chunk=1000))
    for b in range(len(tasks)):
        for w in range(bench["ways"]):
            image = images[saved["test"]["classes"][b, w], saved["test"]["drawings"][b, w, 0]].float() / 255
            assert torch.equal(tasks.support_x[b, w, 0], torch.rot90(image, int(rotations[b, w]), dims=(-2, -1)))


def test_default_rotations_keep_the_saved_episodes_and_the_rotated_classes(tmp_path):
    """Default (classes): episodes as before (no rotations in them or in their settings), and the
    meta-training pool holds every class in its four rotations."""
    params = _fake_prepared(tmp_path)
    bench = params["benchmarks"]["omniglot-5w1s"]
    assert "rotations" not in benchmarks.episode_settings(bench)
    saved = ep.load_episodes(benchmarks.make_episodes(Benchmark.of(params, "omniglot-5w1s")))
    generator = torch.Generator().manual_seed(bench["episode_seed"])  # the episodes' recipe before the setting
    for split, count in (("val", bench["val_tasks"]), ("test", bench["test_tasks"])):
        classes, drawings = ep.draw_episodes(count, omniglot_sizes(bench)[split], 20, bench["ways"],
                                             bench["shots"] + bench["eval_queries"], generator)
        assert set(saved[split]) == {"classes", "drawings"}
        assert torch.equal(saved[split]["classes"], classes) and torch.equal(saved[split]["drawings"], drawings)
    sampler = benchmarks.train_sampler(Benchmark.of(params, "omniglot-5w1s"), torch.Generator().manual_seed(0),
                                       torch.device("cpu"))
    assert not sampler.rotate and len(sampler.images) == 4 * omniglot_sizes(bench)["train"]
    per_task = benchmarks.train_sampler(Benchmark.of(_fake_prepared(tmp_path / "b", rotations="per_task"), "omniglot-5w1s"),
                                        torch.Generator().manual_seed(0), torch.device("cpu"))
    assert per_task.rotate and len(per_task.images) == omniglot_sizes(bench)["train"]


def omniglot_sizes(bench: dict) -> dict[str, int]:
    from metalearn.data import omniglot_splits
    return omniglot_splits.split_sizes(bench["dataset"], bench["split"])


# -- 6. BatchNorm statistics of the query images at evaluation --------------------------------------

@pytest.mark.parametrize("name", MAML_FAMILY)
def test_eval_query_batch_shots_normalises_k_query_images_per_class_at_a_time(name):
    """cbfinn/maml main.py tests on episodes of K support + K query images per class
    (DataGenerator(update_batch_size * 2)): each forward pass sees K query images of every class."""
    algo = _algorithm(name, 5, batch_norm="maml")
    algo.eval_query_batch = "shots"
    ways, shots, per_class = 5, 2, 6
    task = _tasks(tasks=1, ways=ways, shots=shots, queries=per_class)[0]
    # saved episodes hold the query images class by class (episodes.gather_tasks)
    query_x = task.query[0].view(per_class, ways, 1, 28, 28).transpose(0, 1).reshape(-1, 1, 28, 28)
    query_y = torch.arange(ways).repeat_interleave(per_class)
    task = type(task)(task.support, (query_x, query_y))
    adapted = algo.adapt(task.support, 1)  # (MT-net: the episode's own mask, as evaluation draws it)
    expected = torch.empty(ways * per_class, ways, dtype=torch.float64)
    for start in range(0, per_class, shots):  # the official batches: images start..start+K-1 of every class
        batch = torch.cat([torch.arange(c * per_class + start, c * per_class + start + shots) for c in range(ways)])
        expected[batch] = algo.predict(adapted, query_x[batch])
    with torch.no_grad():
        torch.testing.assert_close(algo.predict_query(adapted, task), expected, rtol=1e-10, atol=1e-12)
        whole = algo.predict(adapted, query_x)
    assert not torch.allclose(whole, expected)  # the batch statistics differ, so the setting matters
    metrics = algo.evaluate_task(task, 1)
    expected_accuracy = (expected.argmax(-1) == query_y).double().mean().item()
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)
    assert algo.evaluate_task_curve(task, 1)[1]["accuracy"] == pytest.approx(expected_accuracy)
    algo.eval_query_batch = "all"  # the default: one batch
    torch.testing.assert_close(algo.predict_query(adapted, task), whole.detach())


# -- 7. iMAML: where the proximal term enters, and lam at meta-test --------------------------------

def _imaml(**hp):
    torch.manual_seed(0)
    model = Conv4(1, 5, filters=8).double()
    hparams = {"inner_lr": 0.1, "inner_steps": 3, "test_inner_steps": 3, "lam": 2.0, "cg_steps": 2, **hp}
    return build_algorithm("imaml", model, Objective(model, "classification"), hparams).double()


def _sgd(algo, theta, support, steps):
    phi = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    for _ in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(algo.predict(phi, support[0]), support[1]), list(phi.values()))
        phi = {k: (p - algo.inner_lr * g).detach().requires_grad_() for (k, p), g in zip(phi.items(), grads)}
    return phi


def test_imaml_final_step_is_the_official_inner_loop_and_test_lam_its_evaluation():
    """aravindr93/imaml_dev omniglot_implicit_maml.py: learn_task (n SGD steps on L_S), then one SGD
    step on regularization_loss(w_k, lam); measure_accuracy.py --lam 0.0: the same with lam 0."""
    algo = _imaml(proximal="final_step", test_lam=0.0)
    task = _tasks(tasks=1)[0]
    theta = algo.initial_params()
    plain = _sgd(algo, theta, task.support, 3)
    official = {k: p - 0.1 * 2.0 * (p - theta[k]) for k, p in plain.items()}
    trained = algo.adapt(task.support, 3, lam=algo.lam)  # what meta-training adapts to
    tested = algo.adapt(task.support)  # what evaluation adapts to (test_lam = 0)
    for k in theta:
        torch.testing.assert_close(trained[k], official[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(tested[k], plain[k], rtol=1e-10, atol=1e-12)
    query_loss = F.cross_entropy(algo.predict(plain, task.query[0]), task.query[1]).item()
    assert algo.evaluate_task(task)["loss"] == pytest.approx(query_loss, rel=1e-9)


def test_imaml_defaults_descend_the_proximal_objective_with_lam_at_test():
    algo = _imaml()
    assert algo.proximal == "objective" and algo.test_lam == algo.lam
    task = _tasks(tasks=1)[0]
    theta = {k: v.detach() for k, v in algo.initial_params().items()}
    phi = {k: v.clone().requires_grad_() for k, v in theta.items()}
    for _ in range(3):
        grads = torch.autograd.grad(algo.proximal_objective(phi, theta, task.support), list(phi.values()))
        phi = {k: (p - 0.1 * g).detach().requires_grad_() for (k, p), g in zip(phi.items(), grads)}
    for k, p in algo.adapt(task.support).items():
        torch.testing.assert_close(p, phi[k], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="gd"):
        _imaml(proximal="final_step", inner_solver="hf")


# -- 9. meta-gradient clipping ------------------------------------------------------------------------

def test_clip_meta_grad_clamps_each_entry_before_the_adam_step():
    layer = torch.nn.Linear(3, 1)
    layer.weight.grad = torch.tensor([[100.0, -100.0, 5.0]])
    layer.bias.grad = None
    clip_meta_grad(layer, 10.0)
    assert layer.weight.grad.tolist() == [[10.0, -10.0, 5.0]]
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    optimizer.step()
    # Adam's first moment holds (1 - beta1) x the clipped gradient: 10, not 100, reached it
    assert optimizer.state[layer.weight]["exp_avg"][0].tolist() == pytest.approx([1.0, -1.0, 0.5])
    clip_meta_grad(layer, None)  # the default: no clipping
    assert layer.weight.grad.tolist() == [[10.0, -10.0, 5.0]]


def test_training_loop_clips_the_meta_gradient(tmp_path):
    """train.clip_meta_grad in the loop: a tiny limit bounds what reaches Adam (first moment)."""
    params = quick_params(tmp_path, benchmarks={"sinusoid": {
        "train": {"meta_batch": 2, "iterations": 1, "checkpoint_every": 1, "clip_meta_grad": 1e-6}}})
    train(Benchmark.of(params, "sinusoid"), "maml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    assert state and all(s["exp_avg"].abs().max().item() <= 0.1 * 1e-6 * (1 + 1e-6) for s in state.values())


def test_imagenet_clip_limit_is_the_maml_codes_on_our_loss_scale():
    """Our meta-loss is each task's mean query cross-entropy, averaged over the tasks; the MAML code's
    (maml.py total_losses2) sums xent = cross-entropy / K (utils.py xent) over the N*Q query images and
    averages over the meta-batch. Its meta-gradient is N*Q/K times ours, so its clip at +-10 is ours at
    10 K / (N Q), the paper profile's train.clip_meta_grad on mini- and tiered-ImageNet (float64)."""
    torch.manual_seed(0)
    ways, shots, queries, meta_batch = 5, 2, 3, 2
    model = Conv4(1, ways, filters=8).double()
    algo = build_algorithm("maml", model, Objective(model, "classification"),
                           {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 1, "inner_loss": "sum_over_shots"})
    x = torch.rand(meta_batch, ways * (shots + queries), 1, 28, 28, dtype=torch.float64)
    y = torch.arange(ways).repeat(shots + queries).expand(meta_batch, -1)
    k = ways * shots
    tasks = TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
    meta_params = [p for p in algo.parameters() if p.requires_grad]
    algo.meta_step(tasks)
    ours = [p.grad.clone() for p in meta_params]
    official = sum(F.cross_entropy(algo.predict(algo.adapt(task.support, 1, create_graph=True, params=algo.initial_params()),
                                                task.query[0]), task.query[1], reduction="sum") / shots
                   for task in tasks) / meta_batch
    for theirs, mine in zip(torch.autograd.grad(official, meta_params), ours):
        torch.testing.assert_close(theirs, mine * ways * queries / shots, rtol=1e-9, atol=1e-12)
    paper = load_params(ROOT / "params.yaml", "paper")["benchmarks"]
    for name in ("miniimagenet-5w1s", "miniimagenet-5w5s", "tieredimagenet-5w1s", "tieredimagenet-5w5s"):
        bench = paper[name]
        assert bench["train"]["clip_meta_grad"] == pytest.approx(10 * bench["shots"] / (bench["ways"] * bench["queries"]),
                                                                 rel=1e-12), name


def test_mlp_maml_init_is_the_codes_truncated_normal_and_pytorchs_stays_the_default():
    """mlp_init maml: cbfinn/maml construct_fc_weights (and MT-net's copy), weights tf.truncated_normal
    with std 0.01 (redrawn beyond two standard deviations: std 0.0088 after truncation), biases zero.
    The default keeps nn.Linear's own initialisation, uniform in +-1/sqrt(fan_in) (first layer: +-1)."""
    torch.manual_seed(0)
    maml = build_model({"model": "mlp", "mlp_init": "maml"}, extra_inputs=2)  # the oracle's inputs too
    linears = [m for m in maml.net if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert linears[0].in_features == 3 and len(weights) == 3 * 40 + 40 * 40 + 40
    assert weights.abs().max() <= 0.02
    assert abs(weights.std().item() - 0.01 * 0.8796) < 6e-4
    assert all((m.bias == 0).all() for m in linears)
    default = build_model({"model": "mlp"})
    first = [m for m in default.net if isinstance(m, torch.nn.Linear)][0]
    assert first.weight.abs().max() > 0.5 and (first.bias != 0).all()  # U[-1, 1]: fan_in 1
    with pytest.raises(ValueError, match="init must be"):
        MLP(init="xavier")


def test_meta_adam_eps_is_the_training_loops_adam_eps(tmp_path):
    """imaml's meta_adam_eps reaches the meta-optimizer; without it, torch's default 1e-8."""
    base = {"inner_lr": 0.01, "inner_steps": 1, "test_inner_steps": 1, "lam": 2.0, "cg_steps": 1}
    for hparams, eps in ((base, 1e-8), ({**base, "meta_adam_eps": 1e-3}, 1e-3)):
        params = quick_params(tmp_path / str(eps), benchmarks={"sinusoid": {
            "train": {"meta_batch": 2, "iterations": 1, "checkpoint_every": 1}, "algorithms": {"imaml": hparams}}})
        train(Benchmark.of(params, "sinusoid"), "imaml", 0, tmp_path / str(eps) / "run", device="cpu", log=lambda s: None)
        state = torch.load(tmp_path / str(eps) / "run" / "checkpoint.pt", weights_only=True)["optimizer"]
        assert [group["eps"] for group in state["param_groups"]] == [eps]


# -- the official settings, written once (src/metalearn/protocols.yaml) ----------------------------------

def _resolved() -> dict[str, dict]:
    """The paper and regression profiles, resolved (YAML anchors unshared, so one value can be changed)."""
    return {profile: json.loads(json.dumps(load_params(ROOT / "params.yaml", profile)))
            for profile in ("paper", "regression")}


def test_every_official_setting_is_what_the_profiles_run():
    """Each entry of protocols.yaml (official value, file and line) against the resolved paper and
    regression profiles: the official value, or for a documented deviation our value."""
    data = protocols.load()
    items = protocols.entries(data)
    assert len(items) > 100 and {p for e in items for p in e["profiles"]} == {"paper", "regression"}
    wrong = protocols.mismatches(items, _resolved())
    assert not wrong, "\n".join(wrong)


def test_a_drifted_setting_is_named_with_its_official_source():
    """params.yaml drifting from an entry fails the check, naming the key and the official line; an entry
    for a benchmark or algorithm no profile configures fails too."""
    resolved = _resolved()
    items = protocols.entries(protocols.load())
    resolved["paper"]["benchmarks"]["omniglot-20w1s"]["algorithms"]["maml"]["test_inner_steps"] = 5
    del resolved["paper"]["benchmarks"]["omniglot-5w1s"]["batch_norm"]  # absent: the default, affine
    resolved["regression"]["benchmarks"]["sinusoid"]["algorithms"]["maml"]["inner_lr"] = 0.001  # the code's, not ours
    wrong = protocols.mismatches(items, resolved)
    assert any(w.startswith("paper omniglot-20w1s.algorithms.maml.test_inner_steps = 5, expected 10")
               and "cbfinn/maml main.py:223-230" in w for w in wrong), wrong
    assert any(w.startswith("paper omniglot-5w1s.batch_norm = 'affine', expected 'maml'") for w in wrong), wrong
    assert any(w.startswith("regression sinusoid.algorithms.maml.inner_lr = 0.001, expected 0.01 (ours:") for w in wrong)
    assert len(wrong) == 3, wrong
    entry = {"key": "inner_lr", "official": 0.1, "profiles": ["paper"], "benchmarks": ["omniglot-5w1s"],
             "algorithms": ["protomaml"], "repo": "cbfinn/maml", "source": {"file": "main.py", "at": "1", "what": "x"}}
    assert "not configured" in protocols.mismatches([entry], resolved)[0]


@pytest.mark.parametrize("change, problem", [
    (lambda e: e.pop("source"), "no source"),
    (lambda e: e.update(source={}), "no source"),
    (lambda e: e["source"].pop("at"), "source without `at`"),
    (lambda e: e.update(repo="someone/else"), "is not one of `repositories`"),
    (lambda e: e.update(source={"paper": "MAML"}), "without its place"),
    (lambda e: e.update(ours=3), "without its one-line `why`"),
    (lambda e: e.update(ours=3, why="w", note="docs/notes/no-such-note.md"), "does not exist"),
    (lambda e: e.update(paper={"value": 3}), "`paper` needs"),
    (lambda e: e.update(offical=3), "unknown field 'offical'"),
])
def test_an_entry_without_a_source_or_a_deviation_without_its_why_is_refused(tmp_path, change, problem):
    from metalearn.errors import ConfigError

    data = yaml.safe_load(protocols.PATH.read_text())
    change(data["sections"][0]["entries"][0])
    path = tmp_path / "protocols.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=re.escape(problem)):
        protocols.load(path, root=ROOT)


def test_the_protocol_tables_are_generated_and_a_stale_page_is_caught(tmp_path):
    """docs/protocols.md's block is markdown(protocols.yaml), written by `metalearn pages`; a changed
    entry makes pages.stale name the page."""
    from metalearn import pages

    data = protocols.load()
    page = (ROOT / "docs" / "protocols.md").read_text()
    assert protocols.with_tables(page, protocols.markdown(data)) == page, "run `metalearn pages`"
    block = protocols.markdown(data)
    assert "| maml, fomaml: `test_inner_steps` (omniglot-5w1s, omniglot-5w5s) | `10` |" in block
    assert "MAML Appendix A.1: 'evaluated using 3 gradient steps with the same step size'" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{pages.BEGIN}\n{pages.END}\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "protocols.md").write_text(page)
    files = pages.generate(ROOT / "results" / "recorded", tmp_path / "docs" / "results", readme, ROOT / "bench" / "results")
    pages.write(files, tmp_path / "docs" / "results")
    assert pages.stale(files, tmp_path / "docs" / "results") == []
    data["sections"][0]["entries"][0]["official"] = "omniglot"
    changed = pages.generate(ROOT / "results" / "recorded", tmp_path / "docs" / "results", readme,
                             ROOT / "bench" / "results", protocols_data=data)
    assert pages.stale(changed, tmp_path / "docs" / "results") == [tmp_path / "docs" / "protocols.md"]


def test_eval_curve_scores_a_classification_benchmark_after_every_step(prepared_small, tmp_path):
    """eval_curve on Omniglot (the paper profile's MAML benchmarks): the evaluation scores after 0..steps
    steps on every episode; the last is the score itself, each step's column is evaluate(steps=k)'s, and
    the report draws the accuracy against the steps."""
    from metalearn import report
    from metalearn.evaluate import evaluate

    params = copy.deepcopy(prepared_small)
    bench = params["benchmarks"]["omniglot-5w1s"]
    bench.update({"eval_curve": True, "train": {**bench["train"], "iterations": 2, "checkpoint_every": 2}})
    bench["algorithms"] = {"maml": {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3,
                                    "inner_loss": "sum_over_shots", "eval_query_batch": "shots"}}
    model_path = train(Benchmark.of(params, "omniglot-5w1s"), "maml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    scored = evaluate(params, model_path, device="cpu", log=lambda s: None)
    assert [c["steps"] for c in scored["curve"]] == [0, 1, 2, 3] and len(scored["per_episode_curve"]) == 4
    assert scored["per_episode_curve"][3] == pytest.approx(scored["per_episode"])
    assert scored["curve"][3]["mean"] == pytest.approx(scored["mean"])
    for steps in (0, 1):
        alone = evaluate(params, model_path, device="cpu", steps=steps, log=lambda s: None)
        assert alone["per_episode"] == pytest.approx(scored["per_episode_curve"][steps])
    assert "steps" in report.plot_kinds(bench)
    path = report.plot_steps([scored], "omniglot-5w1s", tmp_path / "steps.png")
    assert path.stat().st_size > 5_000


@pytest.mark.parametrize("profile", ["default", "quick"])
def test_default_and_quick_profiles_keep_todays_protocol(profile):
    params = load_params(ROOT / "params.yaml", profile)
    for bench in params["benchmarks"].values():
        for key in ("batch_norm", "head_init", "rotations", "stroke", "reproduces", "mlp_init"):
            assert key not in bench
        assert bench["model"] != "conv4-imaml"
        assert "clip_meta_grad" not in bench["train"]
        for hp in bench["algorithms"].values():
            assert not {"inner_loss", "eval_query_batch", "proximal", "test_lam", "meta_adam_eps"} & set(hp)


def test_binary_images_are_the_maml_codes_pixels(mirror):
    """omniglot-binary (data/omniglot.py) against the MAML code's own call on the same PNGs
    (data/omniglot_resized/resize_images.py: Image.open(f).resize((28, 28), resample=Image.LANCZOS),
    which Pillow carries out with nearest neighbour on these 1-bit images), then inverted as its
    data_generator.py (1 - image): every pixel of 40 drawings equal, all 0 or 255."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    from metalearn.data import omniglot, omniglot_splits

    with zipfile.ZipFile(mirror / "images_background_small1.zip") as archive:
        names = [n for n in archive.namelist() if n.endswith(".png")][::97][:40]
        for name in names:
            data = archive.read(name)
            official = np.asarray(Image.open(io.BytesIO(data)).resize((28, 28), resample=Image.LANCZOS).convert("L"))
            ours = omniglot._load_image(data, "binary").numpy()
            assert np.array_equal(ours, 255 - official), name
            assert set(np.unique(ours)) <= {0, 255}
    lanczos = omniglot._load_image(data).numpy()
    assert len(np.unique(lanczos)) > 2  # the default variant keeps grey edges: a different image
    assert omniglot_splits.split_sizes("omniglot-binary", "maml") == omniglot_splits.split_sizes("omniglot", "maml")


def test_binary_variants_share_the_archives_download(tmp_path):
    """The paper profile reads omniglot-binary: its prepare stage depends on the full Omniglot archives,
    downloaded by the one `download-omniglot` stage (DVC) and rule (Snakemake), never twice."""
    sys.path.insert(0, str(ROOT / "workflow"))
    import pipeline

    raw = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"profile": "paper"}
    overlay = raw["profiles"]["paper"]["benchmarks"]
    for name in [n for n in overlay if "imagenet" in n]:  # user-supplied files, absent here
        del overlay[name]
    stages = pipeline.dvc_stages(raw)["stages"]
    downloads = [name for name in stages if name.startswith("download-")]
    assert downloads == ["download-omniglot"]
    assert stages["prepare-omniglot-binary"]["deps"] == stages["download-omniglot"]["outs"]
    assert "omniglot-binary" not in pipeline.OMNIGLOT_ARCHIVE_SETS


# ----------------------------------------------------------------------------- the protocol study
def _protocol_study_params(prepared: dict, **study) -> dict:
    from metalearn.config import validate

    params = copy.deepcopy(prepared)
    params["studies"] = {"protocols": {
        "benchmark": "omniglot-5w1s", "algorithm": "maml", "iterations": 4, "eval_every": 2, "seed": 0,
        "variants": {"default": {}, "three-queries": {"benchmark": {"queries": 3}},
                     "maml-code": {"benchmark": {"batch_norm": "maml", "head_init": "normal", "rotations": "per_task"},
                                   "algorithm": {"inner_loss": "sum_over_shots", "eval_query_batch": "shots"}}},
        **study}}
    return validate(params)


def test_protocol_study_validates_meta_trains_each_variant_and_leaves_training_unchanged(prepared_small, tmp_path):
    """Each variant is meta-trained for the study's iterations with a validation every `eval_every`; the
    validation at the last iteration is the saved model's own validation score (evaluate, split val), the
    test row is its test score, and validating on the way changes nothing in the training (the model equals
    a training without the validations). A second call reuses every run; the figure is written."""
    from metalearn.evaluate import evaluate
    from metalearn.studies import protocols_runs, protocols_study

    params = _protocol_study_params(prepared_small)
    logs: list[str] = []
    rows = protocols_study(params, tmp_path / "out", device="cpu", log=logs.append)
    assert [r["variant"] for r in rows if r["split"] == "test"] == ["default", "three-queries", "maml-code"]
    for run in protocols_runs(params):
        mine = [r for r in rows if r["variant"] == run["variant"]]
        val = [r for r in mine if r["split"] == "val"]
        assert [r["iteration"] for r in val] == [2, 4]
        assert 0 < val[0]["cpu_seconds"] < val[1]["cpu_seconds"] and 0 < val[0]["train_seconds"] < val[1]["train_seconds"]
        assert all(r["episodes"] == params["benchmarks"]["omniglot-5w1s"]["val_tasks"] for r in val)
        assert mine[-1]["queries"] == run["bench"]["queries"]
        work = tmp_path / "out" / "protocols"
        run_params = {"data": {**params["data"], "root": str(work / "data")}, "seeds": [0],
                      "benchmarks": {run["name"]: run["bench"]}}
        model = work / run["variant"] / "model.pt"
        scored = evaluate(run_params, model, split="val", device="cpu", log=lambda s: None)
        assert val[-1]["accuracy"] == pytest.approx(scored["mean"], abs=1e-9)
        tested = evaluate(run_params, model, device="cpu", log=lambda s: None)
        assert (mine[-1]["split"], mine[-1]["accuracy"], mine[-1]["episodes"]) == ("test", tested["mean"], 40)
    assert [r["queries"] for r in rows if r["split"] == "test"] == [1, 3, 1]

    plain = protocols_runs(params)[0]
    plain_params = {"data": {**params["data"], "root": str(tmp_path / "out" / "protocols" / "data")}, "seeds": [0],
                    "benchmarks": {plain["name"]: plain["bench"]}}
    train(Benchmark.of(plain_params, plain["name"]), "maml", 0, tmp_path / "plain", device="cpu", log=lambda s: None)
    studied = torch.load(tmp_path / "out" / "protocols" / "default" / "model.pt", weights_only=True)["state_dict"]
    alone = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(studied[k], alone[k]) for k in alone)

    assert (tmp_path / "out" / "protocols.png").stat().st_size > 10_000
    logs.clear()
    assert protocols_study(params, tmp_path / "out", device="cpu", log=logs.append) == rows
    assert not [line for line in logs if line.endswith(": training")]


def test_protocol_study_resumes_a_killed_run_and_keeps_its_validations(prepared_small, tmp_path):
    """A study killed after its first validation resumes from the checkpoint and ends with the same model
    and validation scores as an uninterrupted study."""
    from metalearn import studies

    params = _protocol_study_params(prepared_small, variants={"default": {}})
    whole = studies.protocols_study(params, tmp_path / "whole", device="cpu", log=lambda s: None)

    class Killed(Exception):
        pass

    original = studies.validation_accuracy
    calls = []

    def dies_after_first(*args, **kwargs):
        if calls:
            raise Killed
        calls.append(1)
        return original(*args, **kwargs)

    studies.validation_accuracy = dies_after_first
    try:
        with pytest.raises(Killed):
            studies.protocols_study(params, tmp_path / "killed", device="cpu", log=lambda s: None)
    finally:
        studies.validation_accuracy = original
    logs: list[str] = []
    resumed = studies.protocols_study(params, tmp_path / "killed", device="cpu", log=logs.append)
    assert any("resuming" in line and "from iteration 2" in line for line in logs)
    key = ("variant", "split", "iteration", "accuracy", "ci95", "episodes")
    assert [tuple(r[k] for k in key) for r in resumed] == [tuple(r[k] for k in key) for r in whole]


def test_protocol_study_names_a_bad_variant_key_and_the_pipeline_plans_it():
    """A misspelt overlay key is refused with the variant and the key named; the protocols profile's
    pipeline has one study_protocols job reading both image sets it needs; the default profile's has
    none (about 100 CPU-minutes: opt-in, `make reproduce PROFILE=protocols`), and otherwise the same jobs."""
    from metalearn.config import validate
    from metalearn.errors import ConfigError

    params = load_params(ROOT / "params.yaml", "protocols")
    params["studies"]["protocols"]["variants"]["typo"] = {"benchmark": {"quries": 3}}
    with pytest.raises(ConfigError, match=r"studies\.protocols\.variants\.typo(.|\n)*quries"):
        validate(params)
    sys.path.insert(0, str(ROOT / "workflow"))
    import pipeline

    default = load_params(ROOT / "params.yaml", "default")
    params = load_params(ROOT / "params.yaml", "protocols")
    assert "protocols" not in pipeline.studies(default) and "protocols" in pipeline.studies(params)
    assert {k: v for k, v in params.items() if k not in ("profile", "studies")} == \
        {k: v for k, v in default.items() if k not in ("profile", "studies")}
    sources = pipeline.study_sources(params, "protocols")
    assert {"data/prepared/omniglot.pt", "data/prepared/omniglot-binary.pt", "src/metalearn/studies.py",
            "src/metalearn/algorithms/maml.py"} <= set(sources)
    runs = pipeline.study_settings(params, "protocols")
    assert [r["variant"] for r in runs] == ["default", "default-15-queries", "maml-code"]
    assert {r["bench"]["train"]["iterations"] for r in runs} == {3000}


# ------------------------------------------------- iMAML's own Omniglot protocol (aravindr93/imaml_dev)

def _imaml_code_network(ways: int, filters: int = 64) -> torch.nn.Sequential:
    """The iMAML code's Omniglot network as implicit_maml/learner_model.py make_conv_network lays it out and
    initialises it (conv1-4 stride 2 padding 1, BatchNorm2d(track_running_stats=False), ReLU, ZeroPad2d((0, 1,
    0, 1)) before conv3, Flatten, fc1 on 2*2*filters; xavier_uniform_(gain=1.73), biases uniform_(0, 0.05)), in
    the order it creates and initialises them."""
    nn = torch.nn
    layers, convs = [], []
    for i in range(4):
        if i == 2:
            layers.append(nn.ZeroPad2d((0, 1, 0, 1)))
        convs.append(nn.Conv2d(1 if i == 0 else filters, filters, 3, stride=2, padding=1))
        layers += [convs[-1], nn.BatchNorm2d(filters, track_running_stats=False), nn.ReLU()]
    fc1 = nn.Linear(2 * 2 * filters, ways)
    for layer in convs + [fc1]:
        nn.init.xavier_uniform_(layer.weight, gain=1.73)
        nn.init.uniform_(layer.bias, a=0.0, b=0.05)
    return nn.Sequential(*layers, nn.Flatten(), fc1)


def test_conv4_imaml_is_the_imaml_codes_network_draw_for_draw():
    """build_model's conv4-imaml against make_conv_network's layout, seeded alike: the same parameters
    (weights drawn in the same order), and the same outputs when given the iMAML code's dark-stroke pixels
    (stroke dark: our network sees 1 - x); the chunked path (forward_tasks) is each task's own forward."""
    torch.manual_seed(0)
    ours = build_model({"model": "conv4-imaml", "ways": 5, "stroke": "dark"}).double()
    torch.manual_seed(0)
    official = _imaml_code_network(5).double()
    mine = [p for _, p in ours.named_parameters()]
    theirs = list(official.parameters())
    assert [p.shape for p in mine] == [p.shape for p in theirs]  # fc1: 256 = 2 x 2 x 64 inputs
    assert all(torch.equal(p, q) for p, q in zip(mine, theirs))
    assert ours.meta_only == ()  # every parameter adapted, as the official inner SGD on model.parameters()
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(ours(x), official(1 - x), rtol=1e-12, atol=1e-12)
    # why conv4-imaml has no ZeroPad2d: on the 7x7 maps it adds the zero row and column that conv3's padding
    # already supplies there, and no stride-2 window reaches beyond: the same function with or without it
    unpadded = torch.nn.Sequential(*[m for m in official if not isinstance(m, torch.nn.ZeroPad2d)])
    torch.testing.assert_close(unpadded(1 - x), official(1 - x), rtol=0, atol=0)
    assert not torch.allclose(ours(x), official(x))  # and the strokes' side matters
    xs = torch.rand(3, 6, 1, 28, 28, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = {n: p.detach() + 0.05 * torch.randn(3, *p.shape, dtype=p.dtype) for n, p in ours.named_parameters()}
    together = ours.forward_tasks(params, xs)
    for t in range(3):
        alone = functional_call(ours, {n: p[t] for n, p in params.items()}, (xs[t],))
        torch.testing.assert_close(together[t], alone, rtol=1e-12, atol=1e-12)


def test_imaml_init_bounds_and_default_init_unchanged():
    """init imaml: |w| <= 1.73 sqrt(6 / (fan_in + fan_out)) (Xavier-uniform, gain 1.73), filled up to the
    bound, std bound / sqrt(3); biases in [0, 0.05]; BatchNorm scale 1, offset 0. The default conv4 keeps
    Xavier (gain 1) and zero biases, draw for draw."""
    torch.manual_seed(0)
    model = build_model({"model": "conv4-imaml", "ways": 20})
    layers = [block[0] for block in model.features] + [model.head]
    for layer in layers:
        w = layer.weight
        fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
        bound = 1.73 * (6 / (fan_in + fan_out)) ** 0.5
        assert w.abs().max().item() <= bound and w.abs().max().item() > 0.95 * bound
        assert abs(w.std().item() - bound / 3 ** 0.5) < 0.1 * bound / 3 ** 0.5
        assert 0 <= layer.bias.min().item() and layer.bias.max().item() <= 0.05 and layer.bias.std().item() > 0.01
    for block in model.features:
        assert (block[1].weight == 1).all() and (block[1].bias == 0).all()
    assert model.head.in_features == 256
    with pytest.raises(ValueError, match="head_init"):
        build_model({"model": "conv4-imaml", "ways": 5, "head_init": "normal"})
    # the default network, against its recipe: modules created in order, then Xavier-uniform and zeros
    torch.manual_seed(0)
    default = build_model({"model": "conv4", "ways": 5})
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(1 if i == 0 else 64, 64, 3, stride=2, padding=1) for i in range(4)]
    head = torch.nn.Linear(64, 5)
    for layer in convs + [head]:
        torch.nn.init.xavier_uniform_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    expected = [t for layer in convs for t in (layer.weight, layer.bias)] + [head.weight, head.bias]
    got = [p for n, p in default.named_parameters() if n.split(".")[-2] != "1"]  # less BatchNorm's (1 and 0)
    assert all(torch.equal(p, q) for p, q in zip(got, expected)) and len(got) == len(expected)
    assert not default.dark_stroke and not default.flatten


def test_imaml_on_its_network_adapts_the_batch_norm_scale_and_offset():
    """The iMAML code's BatchNorm has a scale and an offset, both adapted by the inner SGD and both given
    an implicit meta-gradient (chunked and one-task paths alike)."""
    torch.manual_seed(0)
    model = Conv4(1, 5, filters=8, features="flatten", init="imaml", stroke="dark").double()
    hparams = {"inner_lr": 0.1, "inner_steps": 3, "test_inner_steps": 3, "lam": 2.0, "cg_steps": 2,
               "proximal": "final_step", "test_lam": 0.0}
    algo = build_algorithm("imaml", model, Objective(model, "classification"), hparams).double()
    tasks = _tasks()
    theta = algo.initial_params()
    adapted = algo.adapt(tasks[0].support, 3, lam=algo.lam)
    norms = [f"features.{i}.1.{kind}" for i in range(4) for kind in ("weight", "bias")]
    assert set(norms) <= set(adapted)
    assert all(not torch.equal(adapted[k], theta[k]) for k in norms)
    grads = {}
    for batched in (True, False):
        algo.zero_grad(set_to_none=True)
        algo.batched_tasks = batched
        algo.meta_step(tasks)
        grads[batched] = {n: p.grad.clone() for n, p in algo.model.named_parameters()}
        assert all(grads[batched][k].abs().sum() > 0 for k in norms)
    for n in grads[True]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-8, atol=1e-10)


def test_dark_stroke_gives_the_imaml_codes_pixels(mirror):
    """aravindr93/imaml_dev dataset.py: Image.open(f).convert('L').resize((28, 28), LANCZOS) / 255, rotated
    by scipy's rotate(image, 90 k). Ours: the `omniglot` cache (the same Lanczos, strokes 255) is exactly
    255 - its pixels, the network with stroke dark sees 1 - cache / 255 (to float rounding), and the
    per-task rotation (torch.rot90, k quarter turns) is scipy's rotate by 90 k degrees."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image
    from scipy.ndimage import rotate

    from metalearn.data import omniglot

    dark = Conv4(1, 5, filters=4, stroke="dark")
    with zipfile.ZipFile(mirror / "images_background_small1.zip") as archive:
        names = [n for n in archive.namelist() if n.endswith(".png")][::97][:40]
        for i, name in enumerate(names):
            data = archive.read(name)
            official = np.asarray(Image.open(io.BytesIO(data), mode="r").convert("L").resize((28, 28), resample=Image.LANCZOS))
            cache = omniglot._load_image(data)  # uint8 [28, 28], what the `omniglot` cache holds
            assert np.array_equal(255 - cache.numpy(), official), name
            seen = dark.pixels(cache.float() / 255)  # gather_tasks' / 255, then the network's 1 - x
            torch.testing.assert_close(seen, torch.from_numpy(official.astype(np.float32) / 255.0), rtol=0, atol=1e-7)
            k = i % 4
            turned = ep.rotate_classes(cache.view(1, 1, 1, 28, 28), torch.tensor([[k]]))[0, 0, 0]
            np.testing.assert_allclose(255 - turned.numpy(), rotate(official.astype(np.float32), 90.0 * k), atol=1e-3)
    assert len(np.unique(official)) > 2  # grey edges: not the MAML code's binary pixels


def test_imaml_benchmarks_draw_the_maml_codes_characters_and_episodes():
    """The paper profile's -imaml benchmarks differ from the MAML code's only in pixels and network: the
    same meta-test characters, and the same saved episodes (classes, drawings, rotations)."""
    from metalearn.data import omniglot, omniglot_splits

    paper = load_params(ROOT / "params.yaml", "paper")["benchmarks"]
    names = [f"background/A/character{i:04d}" for i in range(1623)]
    for name in ("omniglot-5w1s", "omniglot-20w1s", "omniglot-5w5s", "omniglot-20w5s"):
        maml, imaml = paper[name], paper[f"{name}-imaml"]
        assert "imaml" not in maml["algorithms"] and set(imaml["algorithms"]) == {"imaml"}
        assert imaml["reproduces"] == name
        differ = {k for k in set(maml) | set(imaml) if maml.get(k) != imaml.get(k)}
        assert differ <= {"model", "dataset", "stroke", "batch_norm", "head_init", "train", "algorithms", "reproduces",
                          "eval_curve"}, differ
        splits = [omniglot.split_classes(names, b["dataset"], b["split"], b["split_seed"]) for b in (maml, imaml)]
        assert all(torch.equal(splits[0][s], splits[1][s]) for s in ("train", "val", "test"))
        assert len(splits[1]["test"]) == 423  # the iMAML code's meta-test characters: chars[1200:]
        sizes = omniglot_splits.split_sizes(imaml["dataset"], imaml["split"])
        episodes = [ep.make_eval_episodes(b, sizes) for b in (maml, imaml)]
        for split in ("val", "test"):
            assert set(episodes[1][split]) == {"classes", "drawings", "rotations"}
            assert all(torch.equal(episodes[0][split][k], episodes[1][split][k]) for k in episodes[1][split])


def test_paper_rows_put_a_reproducing_benchmark_beside_the_papers_number():
    """metalearn/paper.py: a benchmark that `reproduces` the paper's gets the paper's number, in its own row."""
    from metalearn import paper

    number = {"benchmark": "omniglot-5w1s", "algorithm": "imaml", "metric": "accuracy", "mean": 99.16, "ci95": 0.35,
              "iterations": 60000, "requires": {"dataset": ["omniglot", "omniglot-binary"]}, "source": "T"}

    def result(bench, values):
        return {"benchmark": bench, "algorithm": "imaml", "metric": "accuracy", "inner_steps": 16,
                "per_episode": values, "iterations": 60000, "seed": 0}
    settings = {"omniglot-5w1s": {"dataset": "omniglot-binary"},
                "omniglot-5w1s-imaml": {"dataset": "omniglot", "reproduces": "omniglot-5w1s"},
                "omniglot-5w1s-other": {"dataset": "omniglot"}}
    results = [result("omniglot-5w1s-imaml", [99.0, 99.4]), result("omniglot-5w1s", [90.0, 92.0]),
               result("omniglot-5w1s-other", [50.0, 50.0])]
    rows = paper.paper_rows(results, settings, [number])
    assert [(r["benchmark"], r["ours_mean"]) for r in rows] == [("omniglot-5w1s", 91.0), ("omniglot-5w1s-imaml", 99.2)]
    assert rows[1]["paper_mean"] == 99.16 and rows[1]["verdict"] == "within the paper's CI"
    assert paper.paper_rows(results[:1], None, [number]) == []  # without the settings nothing says so


@pytest.mark.parametrize("name, bench, key", [
    ("omniglot-5w1s", {"model": "conv4-imaml", "head_init": "normal"}, "head_init"),
    ("omniglot-5w1s", {"model": "conv4-imaml", "algorithms": {"mtnet": {"inner_lr": 0.1, "inner_steps": 1,
                                                                        "test_inner_steps": 1}}}, "algorithms.mtnet"),
    ("omniglot-5w1s", {"stroke": "grey"}, "stroke"),
    ("omniglot-5w1s", {"stroke": "dark", "algorithms": {"tnet": {"inner_lr": 0.1, "inner_steps": 1,
                                                                 "test_inner_steps": 1}}}, "algorithms.tnet"),
    ("omniglot-5w1s", {"reproduces": "Omniglot 5-way"}, "reproduces"),
    ("sinusoid", {"stroke": "dark"}, "stroke"),  # Omniglot only
    ("sinusoid", {"mlp_init": "xavier"}, "mlp_init"),
    ("omniglot-5w1s", {"mlp_init": "maml"}, "mlp_init"),  # mlp networks only
])
def test_schema_refuses_bad_imaml_protocol_settings_naming_the_key(tmp_path, name, bench, key):
    from metalearn.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"{name}\.{key}"):
        quick_params(tmp_path, benchmarks={name: bench})


def test_imaml_protocol_trains_evaluates_and_adapts_end_to_end(prepared_small, tmp_path):
    """A conv4-imaml, stroke-dark benchmark through the ordinary machinery: meta-training, the saved
    model's evaluation, and `metalearn adapt`'s rebuilding of the network from the model file."""
    import shutil

    from metalearn import head_policies
    from metalearn.evaluate import evaluate

    params = copy.deepcopy(prepared_small)
    bench = params["benchmarks"]["omniglot-5w1s"]
    bench.update({"model": "conv4-imaml", "stroke": "dark", "rotations": "per_task",
                  "train": {**bench["train"], "iterations": 2, "checkpoint_every": 2}})
    bench["algorithms"] = {"imaml": {"inner_lr": 0.1, "inner_steps": 2, "test_inner_steps": 2, "lam": 2.0, "cg_steps": 2,
                                     "proximal": "final_step", "test_lam": 0.0, "meta_adam_eps": 1e-3}}
    params["data"]["root"] = str(tmp_path / "data")
    shutil.copytree(prepared_small["data"]["root"], tmp_path / "data")
    benchmarks.make_episodes(Benchmark.of(params, "omniglot-5w1s"))  # rotations per task: new episodes
    model_path = train(Benchmark.of(params, "omniglot-5w1s"), "imaml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    scored = evaluate(params, model_path, device="cpu", log=lambda s: None)
    assert scored["episodes"] == bench["test_tasks"] and 0 <= scored["mean"] <= 100
    saved = torch.load(model_path, weights_only=True)
    algo, policy = head_policies.adapted_algorithm(saved, 5, device="cpu")
    assert policy == "trained" and algo.model.dark_stroke and algo.model.head.in_features == 256
    assert all(torch.equal(algo.state_dict()[k], v) for k, v in saved["state_dict"].items())


def test_imaml_eval_query_batch_shots_feeds_k_query_images_per_class_at_a_time():
    """The iMAML code's test predicts a task's N*K query images together: with eval_query_batch shots our
    evaluation of 6 query images per class feeds the network K per class at a time, in the one-task path
    and in the chunked one alike; the default feeds all at once."""
    ways, shots, per_class = 5, 2, 6
    algo = _imaml(proximal="final_step", test_lam=0.0, eval_query_batch="shots")
    tasks = _tasks(tasks=3, ways=ways, shots=shots, queries=per_class)
    expected = []
    for task in tasks:
        adapted = algo.adapt(task.support)
        query_x, query_y = task.query
        outputs = torch.empty(len(query_y), ways, dtype=torch.float64)
        for start in range(0, per_class, shots):  # images start..start+K-1 of every class
            batch = torch.cat([(query_y == c).nonzero().flatten()[start:start + shots] for c in range(ways)])
            outputs[batch] = algo.predict(adapted, query_x[batch]).detach()
        expected.append(((outputs.argmax(-1) == query_y).float().mean().item(), F.cross_entropy(outputs, query_y).item()))
        whole = algo.predict(adapted, query_x).detach()
        assert not torch.allclose(whole, outputs)  # the batch statistics differ, so the setting matters
    for batched in (True, False):
        algo.batched_tasks = batched
        got = [(m["accuracy"], m["loss"]) for m in algo.evaluate_tasks(tasks, 3)]
        assert [v for pair in got for v in pair] == pytest.approx([v for pair in expected for v in pair], rel=1e-9)
    assert _imaml().eval_query_batch == "all"
