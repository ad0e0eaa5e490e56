"""The prototype head (Proto-MAML, Triantafillou et al. 2020): metalearn/heads.py, the protomaml and
foprotomaml algorithms (algorithms/protomaml.py) and `metalearn adapt --head proto`, checked against
answers known independently: squared distances to class means, a nearest-prototype classifier, a
meta-loss written out with its inner gradient in closed form (finite differences), and a command run
on generated images."""
from __future__ import annotations

import copy
import csv

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT, quick_params
from metalearn import adapt as ad
from metalearn import head_policies as hp
from metalearn.algorithms import build_algorithm, source_files
from metalearn.cli import main
from metalearn.config import Benchmark
from metalearn.heads import embed, prototype_head
from metalearn.models import Conv4
from metalearn.tasks import Objective, Task, TaskBatch
from test_adapt import drawing, image_folder, save_untrained


class TinyNet(nn.Module):
    """tanh(A x + a) then a linear head: a few parameters, float64, with the chunk forward of models.py."""

    def __init__(self, inputs: int = 3, features: int = 2, ways: int = 3):
        super().__init__()
        self.body = nn.Linear(inputs, features)
        self.head = nn.Linear(features, ways)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))

    def forward_tasks(self, params, x):
        h = torch.tanh(torch.baddbmm(params["body.bias"].unsqueeze(1), x, params["body.weight"].transpose(1, 2)))
        return torch.baddbmm(params["head.bias"].unsqueeze(1), h, params["head.weight"].transpose(1, 2))


# -- the head ---------------------------------------------------------------------------------------

def test_logits_are_minus_squared_distances_to_the_prototypes_up_to_a_per_example_constant():
    torch.manual_seed(0)
    ways, dim = 5, 4
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 3, 0, 2])  # uneven shots; class 4 has none
    support = torch.randn(len(labels), dim, dtype=torch.float64)
    weight, bias = prototype_head(support, labels, ways)
    prototypes = torch.stack([support[labels == k].mean(0) if (labels == k).any()
                              else torch.zeros(dim, dtype=torch.float64) for k in range(ways)])
    for f in (support, torch.randn(7, dim, dtype=torch.float64)):  # the support itself and other points
        logits = f @ weight.T + bias
        distances = ((f[:, None, :] - prototypes[None]) ** 2).sum(-1)
        # logit_k = 2 c_k.f - ||c_k||^2 = -||f - c_k||^2 + ||f||^2
        torch.testing.assert_close(logits - (f ** 2).sum(-1, keepdim=True), -distances, rtol=1e-12, atol=1e-12)
    assert not weight[4].any() and bias[4] == 0  # an empty class: c = 0
    # a chunk of tasks: each task's own head
    chunk = torch.randn(3, 6, dim, dtype=torch.float64)
    chunk_labels = torch.stack([torch.randperm(6) % 3 for _ in range(3)])
    weights, biases = prototype_head(chunk, chunk_labels, 3)
    for t in range(3):
        w, b = prototype_head(chunk[t], chunk_labels[t], 3)
        torch.testing.assert_close(weights[t], w, rtol=0, atol=0)
        torch.testing.assert_close(biases[t], b, rtol=0, atol=0)


def test_embed_is_the_conv4_features_before_its_head_one_task_and_a_chunk():
    torch.manual_seed(0)
    model = Conv4(1, 5, filters=4).double()
    objective = Objective(model, "classification")
    params = dict(model.named_parameters())
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        expected = model.features(x).mean(dim=(2, 3))
        torch.testing.assert_close(embed(objective.forward, params, x), expected, rtol=1e-14, atol=1e-14)
        chunk = {name: p.expand(2, *p.shape) for name, p in params.items()}
        xs = torch.rand(2, 6, 1, 28, 28, dtype=torch.float64)
        together = embed(objective.forward_tasks, chunk, xs)
        for t in range(2):
            torch.testing.assert_close(together[t], model.features(xs[t]).mean(dim=(2, 3)), rtol=1e-12, atol=1e-12)


def separable_task(ways: int, shots: int, seed: int = 0) -> tuple[TinyNet, Task]:
    """Inputs 3 * one_hot(class) + noise through a body that is the identity: features near one-hot per
    class (tanh(3) = 0.995). The network's own head is made wrong on purpose (minus the identity)."""
    torch.manual_seed(seed)
    net = TinyNet(ways, ways, ways).double()
    with torch.no_grad():
        net.body.weight.copy_(torch.eye(ways))
        net.body.bias.zero_()
        net.head.weight.copy_(-torch.eye(ways))
        net.head.bias.zero_()
    y = torch.arange(ways).repeat(shots)
    x = 3 * F.one_hot(y, ways).double() + 0.1 * torch.randn(len(y), ways, dtype=torch.float64)
    return net, Task((x, y), (x, y))


@pytest.mark.parametrize("ways", [2, 7])
def test_with_zero_steps_the_prototype_head_classifies_each_support_example_as_its_class(ways):
    hparams = {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 1}
    net, task = separable_task(ways, shots=3)
    x, y = task.support
    # a MAML model whose trained head is wrong: `--head proto` replaces it from the support set
    maml = build_algorithm("maml", net, Objective(net, "classification"), hparams)
    assert (ad.adapt_and_predict(maml, task.support, x, steps=0).argmax(-1) != y).all()
    assert torch.equal(ad.adapt_and_predict(maml, task.support, x, steps=0, head="proto").argmax(-1), y)
    assert hp.evaluate_tasks(maml, TaskBatch(x[None], y[None], x[None], y[None]), 0, head="proto")[0]["accuracy"] == 1
    # protomaml builds the head itself, in the one-task and the chunked evaluation alike
    proto = build_algorithm("protomaml", net, Objective(net, "classification"), hparams)
    assert proto.evaluate_task(task, steps=0)["accuracy"] == 1
    assert proto.evaluate_tasks(TaskBatch(x[None], y[None], x[None], y[None]), 0)[0]["accuracy"] == 1


def test_protomaml_at_zero_steps_is_the_nearest_prototype_classifier_on_conv4():
    """On an untrained conv4 and random images (no separability): the query predictions at step 0 are
    argmin_k ||f(x) - c_k||^2 with the features computed by the module itself, and the curve's first
    point and the chunked evaluation agree."""
    torch.manual_seed(0)
    model = Conv4(1, 4, filters=4).double()
    algo = build_algorithm("protomaml", model, Objective(model, "classification"),
                           {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 1})
    x = torch.rand(2, 16, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(4).repeat(4).expand(2, -1)
    tasks = TaskBatch(x[:, :8], y[:, :8], x[:, 8:], y[:, 8:])
    with torch.no_grad():
        for t, task in enumerate(tasks):
            support, query = model.features(task.support[0]).mean((2, 3)), model.features(task.query[0]).mean((2, 3))
            prototypes = torch.stack([support[task.support[1] == k].mean(0) for k in range(4)])
            nearest = torch.cdist(query, prototypes).argmin(-1)
            params = algo.adapt(task.support, 0)
            assert torch.equal(algo.predict(params, task.query[0]).argmax(-1), nearest)
            expected = (nearest == task.query[1]).double().mean().item()
            assert algo.evaluate_task(task, 0)["accuracy"] == pytest.approx(expected)
            assert algo.evaluate_task_curve(task, 1)[0]["accuracy"] == pytest.approx(expected)
    chunked = algo.evaluate_tasks(tasks, 1, curve=True)
    for task, curve in zip(tasks, chunked):
        for got, want in zip(curve, algo.evaluate_task_curve(task, 1)):
            assert got == pytest.approx(want, rel=1e-9)


# -- the meta-gradient: finite differences of the meta-loss written out by hand -------------------

WAYS, LR, STEPS = 3, 0.5, 2


def tiny_tasks(tasks: int = 3) -> TaskBatch:
    torch.manual_seed(1)
    y = torch.arange(WAYS).repeat(4).expand(tasks, -1)  # 2 support + 2 query examples per class
    x = torch.randn(tasks, 4 * WAYS, 3, dtype=torch.float64) + F.one_hot(y, 3).double()
    half = 2 * WAYS
    return TaskBatch(x[:, :half], y[:, :half], x[:, half:], y[:, half:])


def start_by_hand(A, a, x, y):
    """(A, a, W, b) with the prototype head: W_k = 2 c_k, b_k = -||c_k||^2, c_k the mean of tanh(A x + a)."""
    h = torch.tanh(x @ A.T + a)
    c = torch.stack([h[y == k].mean(0) for k in range(WAYS)])
    return A, a, 2 * c, -(c ** 2).sum(1)


def inner_gradient(A, a, W, b, x, y):
    """The mean cross-entropy's gradient in (A, a, W, b), in closed form (no autograd.grad)."""
    h = torch.tanh(x @ A.T + a)
    dz = (torch.softmax(h @ W.T + b, -1) - F.one_hot(y, WAYS).double()) / len(y)
    dpre = (dz @ W) * (1 - h ** 2)
    return dpre.T @ x, dpre.sum(0), dz.T @ h, dz.sum(0)


def query_loss(A, a, W, b, x, y):
    return F.cross_entropy(torch.tanh(x @ A.T + a) @ W.T + b, y)


def adapt_by_hand(start, x, y):
    params = start
    for _ in range(STEPS):
        params = tuple(p - LR * g for p, g in zip(params, inner_gradient(*params, x, y)))
    return params


def second_order_meta_loss(A, a, tasks: TaskBatch):
    return sum(query_loss(*adapt_by_hand(start_by_hand(A, a, sx, sy), sx, sy), qx, qy)
               for sx, sy, qx, qy in zip(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)) / len(tasks)


def first_order_surrogate(A0, a0):
    """First order: the inner steps' total displacement is a constant (taken at (A0, a0)); the start,
    prototype head included, still depends on (A, a). Its gradient at (A0, a0) is fo-Proto-MAML's."""
    def loss(A, a, tasks: TaskBatch):
        total = 0
        for sx, sy, qx, qy in zip(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y):
            start0 = start_by_hand(A0, a0, sx, sy)
            shift = [s - e for s, e in zip(start0, adapt_by_hand(start0, sx, sy))]
            total = total + query_loss(*(s - d for s, d in zip(start_by_hand(A, a, sx, sy), shift)), qx, qy)
        return total / len(tasks)
    return loss


def central_differences(loss, A, a, eps=1e-6):
    grads = []
    for which in range(2):
        base = (A, a)[which]
        grad = torch.zeros_like(base)
        for i in range(base.numel()):
            plus, minus = [A.clone(), a.clone()], [A.clone(), a.clone()]
            plus[which].view(-1)[i] += eps
            minus[which].view(-1)[i] -= eps
            grad.view(-1)[i] = (loss(*plus) - loss(*minus)) / (2 * eps)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("name", ["protomaml", "foprotomaml"])
@pytest.mark.parametrize("chunked", [True, False])
def test_meta_gradient_matches_finite_differences(name, chunked):
    torch.manual_seed(0)
    net = TinyNet(3, 2, WAYS).double()
    algo = build_algorithm(name, net, Objective(net, "classification"),
                           {"inner_lr": LR, "inner_steps": STEPS, "test_inner_steps": STEPS})
    algo.batched_tasks = chunked  # the chunk path (chunk_meta_losses) or one task at a time (task_meta_loss)
    tasks = tiny_tasks()
    algo.meta_step(tasks)
    A0, a0 = net.body.weight.detach().clone(), net.body.bias.detach().clone()
    with torch.no_grad():
        loss = (second_order_meta_loss if name == "protomaml" else
                lambda A, a, t: first_order_surrogate(A0, a0)(A, a, t))
        numeric = central_differences(lambda A, a: loss(A, a, tasks), A0, a0)
    torch.testing.assert_close(net.body.weight.grad, numeric[0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(net.body.bias.grad, numeric[1], rtol=1e-6, atol=1e-9)
    assert net.head.weight.grad is None and net.head.bias.grad is None  # the head is built per task
    assert numeric[0].abs().max() > 1e-3  # a gradient worth checking


@pytest.mark.parametrize("name", ["protomaml", "foprotomaml"])
def test_chunks_on_two_threads_give_the_one_task_loops_meta_gradient_on_conv4(name, monkeypatch):
    """Several chunks (of 2 tasks), run concurrently, against one task at a time on the calling thread:
    the same meta-gradient in every parameter, and the same metrics (float64, a small conv4)."""
    import metalearn.algorithms.maml

    def meta_step(batched: bool):
        torch.manual_seed(0)
        model = Conv4(1, 3, filters=4).double()
        algo = build_algorithm(name, model, Objective(model, "classification"),
                               {"inner_lr": 0.3, "inner_steps": 2, "test_inner_steps": 2})
        algo.batched_tasks = batched
        x = torch.rand(4, 9, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        y = torch.arange(3).repeat(3).expand(4, -1)
        tasks = TaskBatch(x[:, :6], y[:, :6], x[:, 6:], y[:, 6:])
        monkeypatch.setattr(metalearn.algorithms.maml, "CPU_CHUNK_NUMBERS", 2 * tasks.support_x[0].numel())
        monkeypatch.setenv("METALEARN_TASK_THREADS", "2" if batched else "1")
        if batched:  # the path under test: two chunks, on two threads
            assert len(metalearn.algorithms.maml.task_chunks(algo, tasks)) == 2 and algo.task_workers() == 2
        metrics = algo.meta_step(tasks)
        return metrics, {k: p.grad for k, p in algo.named_parameters() if p.grad is not None}

    loop_metrics, loop = meta_step(False)
    chunk_metrics, chunked = meta_step(True)
    assert loop.keys() == chunked.keys() and "model.features.0.0.weight" in loop and "model.head.weight" not in loop
    scale = max(g.abs().max() for g in loop.values())
    for key in loop:
        torch.testing.assert_close(chunked[key], loop[key], rtol=1e-9, atol=1e-12 * scale)
    assert chunk_metrics == pytest.approx(loop_metrics, rel=1e-9)


def test_the_two_orders_differ_and_the_prototypes_carry_gradient():
    """Sanity of the check above: the second-order gradient is not the first-order one, and the first
    order's is not FOMAML's gradient with the head held constant (the path through the prototypes)."""
    tasks = tiny_tasks()
    A0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a0 = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        second = central_differences(lambda A, a: second_order_meta_loss(A, a, tasks), A0, a0)
        first = central_differences(lambda A, a: first_order_surrogate(A0, a0)(A, a, tasks), A0, a0)

        def head_held(A, a):  # the prototype head a constant (taken at A0, a0): no path through it
            total = 0
            for sx, sy, qx, qy in zip(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y):
                start0 = start_by_hand(A0, a0, sx, sy)
                shift = [s - e for s, e in zip(start0, adapt_by_hand(start0, sx, sy))]
                W, b = start0[2] - shift[2], start0[3] - shift[3]
                total = total + query_loss(A - shift[0], a - shift[1], W, b, qx, qy)
            return total / len(tasks)
        held = central_differences(head_held, A0, a0)
    assert (second[0] - first[0]).abs().max() > 1e-4
    assert (first[0] - held[0]).abs().max() > 1e-4


def test_protomaml_is_classification_only_and_leaves_maml_files_alone():
    from metalearn.models import MLP

    mlp = MLP(1, (4,), 1)
    with pytest.raises(ValueError, match="classification only"):
        build_algorithm("protomaml", mlp, Objective(mlp, "regression"), {"inner_lr": 0.1, "inner_steps": 1,
                                                                          "test_inner_steps": 1})
    # a separate module: the MAML family's settings digests read the same files as before
    assert [p.name for p in source_files("maml")] == ["maml.py", "base.py"]
    assert [p.name for p in source_files("foprotomaml")] == ["protomaml.py", "maml.py", "base.py"]


# -- `metalearn adapt --head proto` ---------------------------------------------------------------

def test_adapt_with_a_proto_head_at_another_number_of_classes_writes_predictions(tmp_path, capsys):
    params = quick_params(tmp_path)
    model = save_untrained(params, "omniglot-5w1s", "maml", tmp_path / "maml.pt")  # 5 ways
    layout = {f"c{i}": 2 for i in range(7)}
    support = image_folder(tmp_path / "support", layout, drawing)
    query = image_folder(tmp_path / "query", layout, lambda c, i: drawing(c, i + 10))
    out = tmp_path / "predictions.csv"
    assert main(["adapt", "--model", str(model), "--support", str(support), "--query", str(query),
                 "--out", str(out), "--head", "proto", "--steps", "1", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 14 and {r["predicted"] for r in rows} <= set(layout)
    assert all(1 / 7 <= float(r["probability"]) <= 1 for r in rows)
    assert "7 classes, proto head, 1 steps" in capsys.readouterr().err
    # one shot, zero steps: each prototype is its image's features, so each image is its own class
    one_shot = image_folder(tmp_path / "one-shot", {f"c{i}": 1 for i in range(7)}, drawing)
    result = ad.adapt(model, one_shot, one_shot, steps=0, head="proto", device="cpu")
    assert result.head == "proto" and result.accuracy == 1.0


def test_protomaml_models_use_their_own_head_at_any_number_of_classes(tmp_path):
    params = quick_params(tmp_path, benchmarks={"omniglot-5w1s": {"algorithms": {
        "protomaml": {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 1}}}})
    model = save_untrained(params, "omniglot-5w1s", "protomaml", tmp_path / "proto.pt")
    support = image_folder(tmp_path / "support", {f"c{i}": 1 for i in range(3)}, drawing)
    result = ad.adapt(model, support, support, steps=0, device="cpu")  # auto
    assert result.head == "proto" and result.accuracy == 1.0  # one shot: each image is its class's prototype
    saved = torch.load(model, weights_only=True)
    with pytest.raises(hp.AdaptError, match="sets its head from the support set"):
        hp.adapted_algorithm(saved, 3, "zero", "cpu")
    tnet = torch.load(save_untrained(quick_params(tmp_path), "omniglot-5w1s", "mtnet", tmp_path / "mtnet.pt"),
                      weights_only=True)
    with pytest.raises(hp.AdaptError, match="T follows the head"):
        hp.adapted_algorithm(tnet, 5, "proto", "cpu")


# -- `metalearn evaluate --head` ------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["maml", "mtnet", "protomaml"])
def test_evaluate_trained_and_auto_heads_are_todays_evaluation_bit_for_bit(prepared_small, tmp_path, algorithm):
    """The saved test episodes scored as before --head existed (load_model, the algorithm's own
    evaluate_tasks over benchmarks.eval_batches) and with --head trained / auto / none: the same
    per-episode values, bit for bit; the record says which head."""
    from metalearn import benchmarks
    from metalearn.evaluate import evaluate
    from metalearn.train import load_model

    params = copy.deepcopy(prepared_small)
    if algorithm == "protomaml":
        params["benchmarks"]["omniglot-5w1s"]["algorithms"]["protomaml"] = {"inner_lr": 0.4, "inner_steps": 1,
                                                                            "test_inner_steps": 1}
    model = save_untrained(params, "omniglot-5w1s", algorithm, tmp_path / "model.pt")
    algo, _ = load_model(model, "cpu")
    today = [100.0 * m["accuracy"] for batch in benchmarks.eval_batches(Benchmark.of(params, "omniglot-5w1s"), "test", torch.device("cpu"))
             for m in algo.evaluate_tasks(batch, algo.test_inner_steps)]
    expected_head = "proto" if algorithm == "protomaml" else "trained"
    for head in ([None, "auto", "proto"] if algorithm == "protomaml" else [None, "auto", "trained"]):
        result = evaluate(params, model, device="cpu", head=head, log=lambda s: None)
        assert result["per_episode"] == today and result["head"] == expected_head


def test_evaluate_proto_head_at_zero_steps_classifies_support_as_query_episodes_perfectly(prepared_small, tmp_path):
    """Episodes whose query images are copies of their support images (one shot): under the proto
    head with no step each image is its own class's prototype, so every query is right (an untrained
    conv4: distinct images have distinct features); the zero head scores all classes alike, so argmax
    says class 0 for every image: exactly 1/ways."""
    from metalearn import benchmarks
    from metalearn.data import episodes as ep
    from metalearn.evaluate import evaluate

    params = copy.deepcopy(prepared_small)
    source = benchmarks.prepared_path(params, "omniglot-small")
    params["data"]["root"] = str(tmp_path / "data")
    target = benchmarks.prepared_path(params, "omniglot-small")
    target.parent.mkdir(parents=True)
    for suffix in (".pt", ".json"):
        target.with_suffix(suffix).write_bytes(source.with_suffix(suffix).read_bytes())
    path = benchmarks.make_episodes(Benchmark.of(params, "omniglot-5w1s"))
    saved = ep.load_episodes(path)
    drawings = saved["test"]["drawings"]
    saved["test"]["drawings"] = drawings[..., :1].expand_as(drawings).clone()  # every query = the support image
    ep.save_episodes(saved, path)
    model = save_untrained(params, "omniglot-5w1s", "maml", tmp_path / "model.pt")
    proto = evaluate(params, model, device="cpu", steps=0, head="proto", log=lambda s: None)
    assert proto["head"] == "proto" and proto["per_episode"] == [100.0] * proto["episodes"]
    zero = evaluate(params, model, device="cpu", steps=0, head="zero", log=lambda s: None)
    assert zero["head"] == "zero" and zero["per_episode"] == pytest.approx([100.0 / 5] * zero["episodes"])
    trained = evaluate(params, model, device="cpu", steps=0, head="trained", log=lambda s: None)
    assert trained["mean"] < 100.0  # the untrained head itself does not know the classes


def test_the_head_policies_are_named_in_one_place():
    """HEAD_POLICIES is what `--head` accepts (metalearn evaluate and adapt) and what params.yaml's
    `eval_heads` pattern allows (the schema cannot import it: checked equal here)."""
    import re

    import yaml

    from metalearn import cli
    from metalearn.head_policies import HEAD_POLICIES

    schema = yaml.safe_load((ROOT / "src" / "metalearn" / "params.schema.yaml").read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "eval_heads" in node:
                found.append(node["eval_heads"]["items"]["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert found and all(re.match(r"\^\(([a-z|]+)\)", p)[1].split("|") == list(HEAD_POLICIES) for p in found), found
    actions = [a for sub in cli.parser()._subparsers._group_actions for name, p in sub.choices.items()
               if name in ("evaluate", "adapt") for a in p._actions if a.dest == "head"]
    assert len(actions) == 2 and all(tuple(a.choices) == HEAD_POLICIES for a in actions)
