"""The Leap/WarpGrad multi-shot Omniglot protocol (metalearn.alphabets), on synthetic alphabets:
the tasks, augmentation and BatchNorm of the official code, MAML's and FOMAML's mini-batch inner loops,
and the protocol as a benchmark of the pipeline (split, train with resumption, evaluate, aggregate)."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.func import functional_call

from metalearn.algorithms.maml import MAML
from metalearn.alphabets import evaluate as al_evaluate, settings as al_settings, tasks as al_tasks
from metalearn.alphabets import train as al_train
from metalearn.cli import main
from metalearn.config import Benchmark, load_params, validate
from metalearn.errors import ConfigError
from metalearn.models import OmniConv
from metalearn.tasks import Objective, Task

ROOT = Path(__file__).resolve().parents[1]
WAYS = 3
SIZES = {"background/A": 5, "background/B": 3, "background/C": 2, "evaluation/D": 4, "evaluation/E": 3,
         "evaluation/F": 6, "background/G": 1}  # C and G have fewer than WAYS characters


def fake_cache():
    classes = [f"{a}/character{j:02d}" for a, n in SIZES.items() for j in range(1, n + 1)]
    torch.manual_seed(0)
    return torch.randint(0, 256, (len(classes), 20, 28, 28), dtype=torch.uint8), classes


# A tiny benchmark of the protocol: 2 training and 2 test alphabets of 3 characters, 2 steps of 8 images
TINY = {"task": "alphabets", "model": "omniconv", "dataset": "omniglot", "ways": WAYS, "train_alphabets": 2,
        "test_alphabets": 2, "split_seed": 3, "steps": 2, "batch_size": 8, "filters": 4,
        "train": {"meta_batch": 2, "iterations": 2, "checkpoint_every": 1, "log_every": 1},
        "algorithms": {"warpleap": {"inner_lr": 0.1, "meta_update": "per_point", "shuffle_buffer": True},
                       "leap": {"inner_lr": 0.1, "meta_lr": 0.1}, "reptile": {"inner_lr": 0.1, "meta_lr": 0.1},
                       "maml": {"inner_lr": 0.1, "meta_lr": 0.5, "inner_steps": 1},
                       "fomaml": {"inner_lr": 0.1, "meta_lr": 0.5}, "ft": {"inner_lr": 0.1},
                       "scratch": {"inner_lr": 0.1}}}
QUIET = (lambda message: None)


def tiny_params(tmp_path, **bench) -> dict:
    """Valid params with the tiny benchmark, its prepared cache written under tmp_path/data."""
    images, classes = fake_cache()
    (tmp_path / "data/prepared").mkdir(parents=True, exist_ok=True)
    torch.save({"images": images, "classes": classes}, tmp_path / "data/prepared/omniglot.pt")
    return validate({"data": {"root": str(tmp_path / "data")}, "seeds": [0],
                     "benchmarks": {"omniglot-tiny": {**copy.deepcopy(TINY), **bench}}})


def test_a_task_is_one_alphabet_and_test_alphabets_are_never_meta_trained():
    images, classes = fake_cache()
    split = al_tasks.split_alphabets(classes, WAYS, 2, 2, seed=3)
    eligible = {a for a, n in SIZES.items() if n >= WAYS}
    names = [a for part in (split.train, split.test, split.val) for a, _ in part]
    assert sorted(names) == sorted(eligible)  # each eligible alphabet in exactly one split
    assert len(split.train) == 2 and len(split.test) == 2
    assert not {a for a, _ in split.train} & {a for a, _ in split.test}
    for alphabet, chars in split.train + split.test + split.val:
        assert len(chars) == WAYS == len(set(chars.tolist()))
        assert all(al_tasks.alphabet_of(classes[c]) == alphabet for c in chars)  # the classes: its characters
    again = al_tasks.split_alphabets(classes, WAYS, 2, 2, seed=3)
    assert [(a, c.tolist()) for a, c in again.train + again.test] == [(a, c.tolist()) for a, c in split.train + split.test]


def test_task_has_15_training_and_5_held_out_drawings_per_character():
    images, _ = fake_cache()
    chars = torch.tensor([4, 0, 7])
    task = al_tasks.alphabet_task(images, chars)
    (x, y), (xq, yq) = task.support, task.query
    assert x.shape == (45, 1, 28, 28) and xq.shape == (15, 1, 28, 28)
    for label, c in enumerate(chars.tolist()):
        torch.testing.assert_close(x[y == label].squeeze(1), images[c, 5:].float() / 255)
        torch.testing.assert_close(xq[yq == label].squeeze(1), images[c, :5].float() / 255)


def test_augmentation_is_the_official_random_affine_and_changes_each_image():
    assert al_tasks.AFFINE == {"degrees": (0, 360), "translate": (0.2, 0.2), "scale": (0.8, 1.2)}  # data.py
    images, _ = fake_cache()
    x = images[0, :4].float().div(255).unsqueeze(1)
    torch.manual_seed(0)
    out = al_tasks.augment(x)
    assert out.shape == x.shape and all(not torch.equal(a, b) for a, b in zip(out, x))


def test_every_meta_training_image_is_augmented_and_no_test_image_is(tmp_path, monkeypatch):
    """augment is replaced by a marker (+10): the network's first layer then sees only marked inputs
    while meta-training (every method, through the pipeline's train), and only unmarked ones at test."""
    params = tiny_params(tmp_path)
    al_tasks.make_episodes(Benchmark.of(params, "omniglot-tiny"))
    monkeypatch.setattr(al_tasks, "augment", lambda x: x + 10.0)
    seen = []
    original_build = al_train.build_learner

    def build(*args, **kwargs):
        algo = original_build(*args, **kwargs)
        algo.objective.model.features[0][0].register_forward_hook(
            lambda module, inputs, output: seen.append((algo.objective.augment, inputs[0].min().item(),
                                                        inputs[0].max().item(), len(inputs[0]))))
        return algo

    monkeypatch.setattr(al_train, "build_learner", build)
    batch = TINY["batch_size"]
    for method in ("leap", "reptile", "warpleap", "ft", "maml", "fomaml"):
        seen.clear()
        model = al_train.train(Benchmark.of(params, "omniglot-tiny"), method, 0, tmp_path / method, "cpu", log=QUIET)
        al_evaluate.evaluate(Benchmark.of(params, "omniglot-tiny"), model, torch.load(model, weights_only=True), log=QUIET)
        training = [s for s in seen if s[0]]
        testing = [s for s in seen if not s[0]]
        assert training and testing, method
        # while meta-training, every forward pass on a mini-batch (<= batch_size images) is marked
        assert all(lo >= 10 for _, lo, _, n in training if n <= batch), method
        assert all(hi <= 1 for _, _, hi, _ in testing), method  # test images: never transformed
        if method == "maml":  # its meta-objective: the 5 held-out drawings per character, marked too
            assert any(n == WAYS * al_tasks.HOLD_OUT and lo >= 10 for _, lo, _, n in training)
        if method != "ft":  # the meta-learners' own passes on whole training sets happen only for metrics
            assert any(n <= batch for _, _, _, n in training)


def test_omniconv_is_the_official_network():
    model = OmniConv(1, 20)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 20)


def test_test_time_uses_running_batchnorm_statistics_in_eval_mode():
    images, classes = fake_cache()
    split = al_tasks.split_alphabets(classes, WAYS, 2, 2, seed=3)
    task = al_tasks.alphabet_task(images, split.test[0][1])
    algo = al_train.build_learner("reptile", TINY, {"inner_lr": 0.1}, seed=0)
    model = algo.objective.model
    modes = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda module, i, o: modes.append(module.training))
    with torch.no_grad():  # garbage statistics from an earlier task: reset before adapting
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(100.0)
    torch.manual_seed(1)
    accuracy = al_evaluate.evaluate_alphabet(algo, task, steps=3)
    assert modes[-4:] == [False] * 4 and all(modes[:-4])  # adaptation in train mode, the test in eval mode
    bn = model.features[0][2]
    assert bn.num_batches_tracked.item() == 3 and bn.running_mean.abs().max() < 50  # reset, then 3 steps
    # eval mode: one image's prediction does not depend on the other test images
    torch.manual_seed(1)
    model.reset_running_stats()
    adapted = algo.adapt(task.support, 3)
    model.eval()
    with torch.no_grad():
        together = algo.predict(adapted, task.query[0])
        alone = torch.cat([algo.predict(adapted, x[None]) for x in task.query[0]])
    model.train()
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert accuracy == (together.argmax(1) == task.query[1]).float().mean().item()


# -- MAML and FOMAML on mini-batches ---------------------------------------------------------------

def _linear_problem(batch_size: int):
    """A 3-class linear classifier on 10 points: the plain objective and a mini-batch one on it."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    return model, (x, y), Objective(model, "classification"), al_tasks.MiniBatchObjective(model, batch_size)


def test_maml_with_a_batch_holding_the_whole_support_set_is_plain_maml():
    """The maml.py hook (objective.draw) changes nothing where the batch is the whole support set: the
    adapted parameters and the second-order meta-gradient equal plain MAML's, bit for bit."""
    model, data, plain, minibatch = _linear_problem(batch_size=10)
    task = Task(data, (data[0][:6] * 2, data[1][:6]))
    grads = []
    for objective in (plain, minibatch):
        algo = MAML(model, objective, {"inner_lr": 0.5, "inner_steps": 3})
        adapted = algo.adapt(data, 3)
        model.zero_grad(set_to_none=True)
        algo.meta_step([task])
        grads.append(([p.grad.clone() for p in model.parameters()], adapted))
    (g1, a1), (g2, a2) = grads
    assert all(torch.equal(a, b) for a, b in zip(g1, g2)) and all(torch.equal(a1[k], a2[k]) for k in a1)
    assert any(g.abs().sum() > 0 for g in g1)


def test_maml_takes_each_inner_step_on_its_own_mini_batch():
    """With batches of 4 of 10 points, MAML's adaptation equals SGD where step k uses the k-th
    mini-batch drawn from torch's generator (replayed here with the same seed)."""
    model, (x, y), _, minibatch = _linear_problem(batch_size=4)
    algo = MAML(model, minibatch, {"inner_lr": 0.5, "inner_steps": 3})
    torch.manual_seed(7)
    adapted = algo.adapt((x, y), 3)
    torch.manual_seed(7)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    batches = []
    for _ in range(3):
        chosen = torch.randperm(10)[:4]
        batches.append(chosen)
        w.requires_grad_(), b.requires_grad_()
        gw, gb = torch.autograd.grad(F.cross_entropy(F.linear(x[chosen], w, b), y[chosen]), (w, b))
        w, b = (w - 0.5 * gw).detach(), (b - 0.5 * gb).detach()
    torch.testing.assert_close(adapted["weight"], w, rtol=0, atol=1e-6)
    torch.testing.assert_close(adapted["bias"], b, rtol=0, atol=1e-6)
    assert len({tuple(c.tolist()) for c in batches}) == 3  # three different batches were drawn


def test_fomaml_meta_gradient_is_the_official_last_mini_batch_gradient():
    """_FOWrapper (wrapper.py) takes `steps` SGD steps on mini-batches and uses the gradient of the
    last mini-batch's loss at the point before the last step. Ours (steps - 1 inner steps, the query
    one more mini-batch, meta_training_task) gives that gradient: replayed by hand from the same seed."""
    images, classes = fake_cache()
    split = al_tasks.split_alphabets(classes, WAYS, 2, 2, seed=3)
    task = al_tasks.alphabet_task(images, split.train[0][1])
    bench = {**TINY, "steps": 3}
    algo = al_train.build_learner("fomaml", bench, TINY["algorithms"]["fomaml"], seed=0)
    assert algo.first_order and algo.inner_steps == 2 and algo.test_inner_steps == 3
    model = algo.objective.model
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.manual_seed(5)
    algo.meta_step([al_tasks.meta_training_task("fomaml", task, algo.objective)])
    got = {k: p.grad.clone() for k, p in model.named_parameters()}
    torch.manual_seed(5)
    (x, y) = task.support
    last = torch.randperm(len(x))[:bench["batch_size"]]  # drawn first: the meta-step's query batch
    theta = {k: v.clone().requires_grad_() for k, v in start.items()}
    for _ in range(2):  # the first steps - 1 mini-batches
        chosen = torch.randperm(len(x))[:bench["batch_size"]]
        grads = torch.autograd.grad(F.cross_entropy(functional_call(model, theta, (x[chosen],)), y[chosen]),
                                    list(theta.values()))
        theta = {k: (v - 0.1 * g).detach().requires_grad_() for (k, v), g in zip(theta.items(), grads)}
    expected = torch.autograd.grad(F.cross_entropy(functional_call(model, theta, (x[last],)), y[last]),
                                   list(theta.values()))
    for (name, g), e in zip(got.items(), expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6, msg=name)


def test_maml_meta_objective_is_the_held_out_drawings_augmented(monkeypatch):
    images, classes = fake_cache()
    split = al_tasks.split_alphabets(classes, WAYS, 2, 2, seed=3)
    task = al_tasks.alphabet_task(images, split.train[0][1])
    monkeypatch.setattr(al_tasks, "augment", lambda x: x + 10.0)
    meta = al_tasks.meta_training_task("maml", task, al_tasks.MiniBatchObjective(OmniConv(1, WAYS, 4), 8))
    torch.testing.assert_close(meta.query[0], task.query[0] + 10.0)
    assert torch.equal(meta.query[1], task.query[1]) and meta.support is task.support
    assert al_tasks.meta_training_task("leap", task, None).query is task.support  # the others: training drawings


# -- the pipeline's benchmark -----------------------------------------------------------------------

def test_the_paper_profile_runs_the_official_settings_and_the_schema_names_bad_keys(tmp_path):
    paper = load_params(ROOT / "params.yaml", "paper")["benchmarks"]
    assert paper["omniglot-alphabets"] == al_settings.PAPER  # params.yaml and alphabets.settings.PAPER cannot drift apart
    assert set(al_settings.PAPER["algorithms"]) == set(al_train.METHODS)
    assert "omniglot-20w-multishot" in paper  # the approximate variant stays, documented
    # Warp-Leap's meta-objective steps as the official utils.py `step` does: phi's gradient not through
    # the inner gradient; Leap's and Warp-Leap's paths end before the last step, as the official loop
    # (tests/test_warpgrad.py, test_leap.py check the values); the settings reach the algorithms
    small = {**al_settings.PAPER, "filters": 4}
    warpleap = al_train.build_learner("warpleap", small, al_settings.PAPER["algorithms"]["warpleap"], 0)
    assert warpleap.inner_grad == "detached" and warpleap.meta_update == "per_point" and not warpleap.final_point
    assert not al_train.build_learner("leap", small, al_settings.PAPER["algorithms"]["leap"], 0).final_point
    for mutate, key in [({"algorithms": {"maml": {"inner_lr": 0.1, "meta_lr": -1}}},
                         "omniglot-tiny.algorithms.maml.meta_lr"),
                        ({"steps": 0}, "omniglot-tiny.steps"), ({"dataset": "omniglot-small"}, "omniglot-tiny.dataset"),
                        ({"algorithms": {"imaml": {"inner_lr": 0.1}}}, "omniglot-tiny.algorithms"),
                        ({"shots": 5}, "omniglot-tiny.shots")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            tiny_params(tmp_path, **mutate)


def test_ft_shared_head_is_the_official_one_head_kept_at_test(tmp_path, monkeypatch):
    """`head: shared` (PAPER's): model.py line 180, `nn.ModuleList([_linear_factory()] * NUM_CLASSES)`,
    puts one Linear in every slot, so every training alphabet trains the network's own head, and
    FtWrapper.run_tasks (wrapper.py lines 560-583) never calls init_adaptation, so a test task starts
    from the pretrained head. `per_alphabet` (the default): distinct heads, and a fresh one at test."""
    params = tiny_params(tmp_path)
    seen, original = {}, al_train.multihead_step

    def spy(algo, heads, *args):
        metrics = original(algo, heads, *args)
        seen.update(heads=list(heads), model_head=algo.model.head,
                    final=[{k: v.clone() for k, v in h.state_dict().items()} for h in heads])
        return metrics

    monkeypatch.setattr(al_train, "multihead_step", spy)
    start = al_train.build_learner("ft", TINY, TINY["algorithms"]["ft"], 0).model.head.state_dict()
    for head in ("shared", "per_alphabet"):
        params["benchmarks"]["omniglot-tiny"]["algorithms"]["ft"] = {"inner_lr": 0.1, "head": head}
        path = al_train.train(Benchmark.of(params, "omniglot-tiny"), "ft", 0, tmp_path / head, "cpu", log=QUIET)
        saved = torch.load(path, weights_only=True)
        tested = al_train.load_learner(saved, path, "cpu").model.head.state_dict()  # what evaluate adapts from
        assert len(seen["heads"]) == 2  # a slot per training alphabet
        if head == "shared":
            assert all(h is seen["model_head"] for h in seen["heads"])  # one head object in every slot
            assert len(list(nn.ModuleList(seen["heads"]).parameters())) == 2  # the optimiser's: weight, bias
            assert all(torch.equal(tested[k], seen["final"][0][k]) for k in tested)  # pretrained values
            assert not torch.equal(tested["weight"], start["weight"])  # ... that pretraining moved
        else:
            assert seen["heads"][0] is not seen["heads"][1] and seen["model_head"] not in seen["heads"]
            assert not any(torch.equal(tested["weight"], f["weight"]) for f in seen["final"])  # a fresh head
    with pytest.raises(ConfigError, match=r"omniglot-tiny\.algorithms\.ft\.head"):
        tiny_params(tmp_path, algorithms={"ft": {"inner_lr": 0.1, "head": "one"}})


def test_the_paper_pixels_are_the_official_pipelines(mirror):
    """`dataset: omniglot-binary` with `background: 1` (PAPER's) against the official chain on the same
    PNGs: resize.py (Image.open(f).resize((28, 28), resample=LANCZOS), which Pillow carries out with
    nearest neighbour on these 1-bit images, then saved), torchvision's Omniglot (`convert("L")`) and
    data.py's ToTensor: every pixel of two characters' 40 drawings equal, background 1, strokes 0.
    RandomAffine's fill (0) is then stroke-coloured, as on the official PIL images."""
    import io
    import zipfile

    from PIL import Image
    from torchvision import transforms

    from metalearn.data import omniglot

    def official(data: bytes) -> torch.Tensor:
        resized = Image.open(io.BytesIO(data)).resize((28, 28), resample=Image.LANCZOS)
        assert resized.mode == "1"
        saved = io.BytesIO()
        resized.save(saved, format="PNG")
        return transforms.ToTensor()(Image.open(saved).convert("L"))

    with zipfile.ZipFile(mirror / "images_background_small1.zip") as archive:
        pngs = sorted(n for n in archive.namelist() if n.endswith(".png"))
        folders = sorted({n.rsplit("/", 1)[0] for n in pngs})[:2]
        names = [[n for n in pngs if n.rsplit("/", 1)[0] == f] for f in folders]
        assert [len(n) for n in names] == [al_tasks.DRAWINGS] * 2
        cache = torch.stack([torch.stack([omniglot._load_image(archive.read(n), "binary") for n in character])
                             for character in names])  # the omniglot-binary cache's layout: [2, 20, 28, 28]
        theirs = torch.stack([torch.stack([official(archive.read(n)) for n in character]) for character in names])
    task = al_tasks.alphabet_task(cache, torch.tensor([0, 1]), background=1)
    assert torch.equal(task.query[0], theirs[:, :al_tasks.HOLD_OUT].flatten(0, 1))  # data.py: the first 5 held out
    assert torch.equal(task.support[0], theirs[:, al_tasks.HOLD_OUT:].flatten(0, 1))
    assert set(task.support[0].unique().tolist()) == {0.0, 1.0} and task.support[0].mean() > 0.5  # white ground
    default = al_tasks.alphabet_task(cache, torch.tensor([0, 1]))  # background 0: the cache's strokes 1 on 0
    assert torch.equal(default.support[0], 1 - task.support[0])
    blank = torch.ones(1, 1, 28, 28)  # a background-only image: the fill shows where the frame is uncovered
    torch.manual_seed(0)
    ours = al_tasks.augment(blank)[0]
    torch.manual_seed(0)  # the same draw of the official transform on the PIL image (data.py: before ToTensor)
    pil = transforms.ToTensor()(transforms.RandomAffine(**al_tasks.AFFINE)(Image.new("L", (28, 28), 255)))
    assert (ours == 0).any() and (pil == 0).any()  # stroke-coloured wedges, on both
    assert torch.equal(ours, pil)  # the same draw and map: pixel for pixel, here


def test_an_interrupted_meta_training_resumes_to_the_same_parameters(tmp_path, monkeypatch):
    """Killed after its checkpoint at meta-step 2, a rerun resumes there and ends with the parameters of
    an uninterrupted run: generator, torch's random state (mini-batches, augmentation), optimiser and
    (ft) the heads restored."""
    params = tiny_params(tmp_path, train={"meta_batch": 2, "iterations": 3, "checkpoint_every": 1})
    for method in ("fomaml", "ft"):
        whole = al_train.train(Benchmark.of(params, "omniglot-tiny"), method, 0, tmp_path / method / "whole", "cpu", log=QUIET)
        original, calls = al_train.meta_batch, []

        def killed_at_the_third(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(al_train, "meta_batch", killed_at_the_third)
        with pytest.raises(KeyboardInterrupt):
            al_train.train(Benchmark.of(params, "omniglot-tiny"), method, 0, tmp_path / method / "resumed", "cpu", log=QUIET)
        monkeypatch.setattr(al_train, "meta_batch", original)
        logged = []
        resumed = al_train.train(Benchmark.of(params, "omniglot-tiny"), method, 0, tmp_path / method / "resumed", "cpu", log=logged.append)
        assert any("from iteration 2" in line for line in logged), method
        a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (whole, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), method
        start = al_train.build_learner(method, TINY, TINY["algorithms"][method], 0).state_dict()
        assert not all(torch.equal(a[k], start[k]) for k in a if k.startswith("model.features"))  # it did learn


def test_split_train_evaluate_aggregate_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["split", "-b", "omniglot-tiny"]) == 0
    saved = torch.load(tmp_path / "data/episodes/omniglot-tiny.pt", weights_only=True)
    assert saved["settings"] == al_tasks.episode_settings(TINY) and len(saved["test"]["alphabets"]) == 2
    assert not set(saved["test"]["alphabets"]) & set(saved["train"]["alphabets"])
    evals = []
    for method in al_train.METHODS:
        assert main(["train", "-b", "omniglot-tiny", "-a", method, "--out", f"models/{method}"]) == 0
        evals.append(f"eval/{method}.json")
        assert main(["evaluate", "--model", f"models/{method}/model.pt", "--out", evals[-1]]) == 0
    result = json.loads((tmp_path / "eval/maml.json").read_text())
    assert (result["metric"], result["episodes"], result["inner_steps"], result["ways"]) == ("accuracy", 2, 2, WAYS)
    assert result["alphabets"] == saved["test"]["alphabets"]
    assert all(0 <= v <= 100 for v in result["per_episode"])
    again = tmp_path / "again.json"
    assert main(["evaluate", "--model", "models/maml/model.pt", "--out", str(again)]) == 0
    assert json.loads(again.read_text())["per_episode"] == result["per_episode"]  # seeded: reproducible
    assert json.loads((tmp_path / "models/reptile/history.json").read_text())[-1]["iteration"] == 2
    assert main(["aggregate", *evals, "--out", "results/summary.csv", "--plots", "results/plots"]) == 0
    rows = list(csv.DictReader((tmp_path / "results/summary.csv").open()))
    assert {(r["benchmark"], r["algorithm"], r["metric"], r["episodes"]) for r in rows} == {
        ("omniglot-tiny", m, "accuracy", "2") for m in al_train.METHODS}
    assert main(["evaluate", "--model", "models/maml/model.pt", "--out", "steps.json", "--steps", "1"]) == 0
    assert json.loads((tmp_path / "steps.json").read_text())["inner_steps"] == 1


def test_the_paper_profile_plans_the_protocol_as_pipeline_jobs():
    """workflow/pipeline.py (the jobs of both Snakemake and DVC): the paper profile's omniglot-alphabets
    has a split job reading the prepared full Omniglot (binary pixels), a training and an evaluation job per method,
    each training depending on alphabets/'s files and its method's algorithm files (`snakemake -n
    --profile profiles/paper` plans the same 17 jobs;
    docs/protocols.md#multi-shot-omniglot-the-leapwarpgrad-protocol)."""
    import sys

    sys.path.insert(0, str(ROOT / "workflow"))
    import pipeline

    raw = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"profile": "paper"}
    overlay = raw["profiles"]["paper"]["benchmarks"]
    for name in [n for n in overlay if "imagenet" in n]:  # user-supplied files, absent here
        del overlay[name]
    stages = pipeline.dvc_stages(raw)["stages"]
    assert stages["split-omniglot-alphabets"]["deps"] == ["data/prepared/omniglot-binary.pt",
                                                          "data/prepared/omniglot-binary.json"]
    for method in al_train.METHODS:
        train = stages[f"train-omniglot-alphabets-{method}-seed0"]
        assert train["cmd"].startswith(f"metalearn train --profile paper -b omniglot-alphabets -a {method} ")
        assert "src/metalearn/alphabets/train.py" in train["deps"]
        assert f"evaluate-omniglot-alphabets-{method}-seed0" in stages
    assert "src/metalearn/algorithms/warpgrad.py" in stages["train-omniglot-alphabets-warpleap-seed0"]["deps"]
    assert "src/metalearn/algorithms/maml.py" in stages["train-omniglot-alphabets-fomaml-seed0"]["deps"]
