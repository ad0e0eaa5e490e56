"""The Leap/WarpGrad multi-shot Omniglot protocol (metalearn.alphabets), on synthetic alphabets."""
from __future__ import annotations

import torch
from torch import nn

from metalearn import alphabets as al
from metalearn.models import OmniConv

WAYS = 3
SIZES = {"background/A": 5, "background/B": 3, "background/C": 2, "evaluation/D": 4, "evaluation/E": 3,
         "evaluation/F": 6, "background/G": 1}  # C and G have fewer than WAYS characters


def fake_cache():
    classes = [f"{a}/character{j:02d}" for a, n in SIZES.items() for j in range(1, n + 1)]
    torch.manual_seed(0)
    return torch.randint(0, 256, (len(classes), 20, 28, 28), dtype=torch.uint8), classes


SETTINGS = {"ways": WAYS, "train_alphabets": 2, "test_alphabets": 2, "seed": 3, "steps": 2, "batch_size": 8,
            "meta_batch": 2, "meta_steps": 2, "outer_lr": 0.1, "inner_lr": 0.1, "filters": 4}


def test_a_task_is_one_alphabet_and_test_alphabets_are_never_meta_trained():
    images, classes = fake_cache()
    split = al.split_alphabets(classes, WAYS, 2, 2, seed=3)
    eligible = {a for a, n in SIZES.items() if n >= WAYS}
    names = [a for part in (split.train, split.test, split.val) for a, _ in part]
    assert sorted(names) == sorted(eligible)  # each eligible alphabet in exactly one split
    assert len(split.train) == 2 and len(split.test) == 2
    assert not {a for a, _ in split.train} & {a for a, _ in split.test}
    for alphabet, chars in split.train + split.test + split.val:
        assert len(chars) == WAYS == len(set(chars.tolist()))
        assert all(al.alphabet_of(classes[c]) == alphabet for c in chars)  # the classes: its characters
    again = al.split_alphabets(classes, WAYS, 2, 2, seed=3)
    assert [(a, c.tolist()) for a, c in again.train + again.test] == [(a, c.tolist()) for a, c in split.train + split.test]


def test_task_has_15_training_and_5_held_out_drawings_per_character():
    images, _ = fake_cache()
    chars = torch.tensor([4, 0, 7])
    task = al.alphabet_task(images, chars)
    (x, y), (xq, yq) = task.support, task.query
    assert x.shape == (45, 1, 28, 28) and xq.shape == (15, 1, 28, 28)
    for label, c in enumerate(chars.tolist()):
        torch.testing.assert_close(x[y == label].squeeze(1), images[c, 5:].float() / 255)
        torch.testing.assert_close(xq[yq == label].squeeze(1), images[c, :5].float() / 255)


def test_augmentation_is_the_official_random_affine_and_changes_each_image():
    assert al.AFFINE == {"degrees": (0, 360), "translate": (0.2, 0.2), "scale": (0.8, 1.2)}  # data.py
    images, _ = fake_cache()
    x = images[0, :4].float().div(255).unsqueeze(1)
    torch.manual_seed(0)
    out = al.augment(x)
    assert out.shape == x.shape and all(not torch.equal(a, b) for a, b in zip(out, x))


def test_every_meta_training_image_is_augmented_and_no_test_image_is(monkeypatch):
    """augment is replaced by a marker (+10): the network's first layer then sees only marked inputs
    while meta-training, and only unmarked ones at test time."""
    images, classes = fake_cache()
    split = al.split_alphabets(classes, WAYS, 2, 2, seed=3)
    monkeypatch.setattr(al, "augment", lambda x: x + 10.0)
    seen = []
    original_build = al.build_learner

    def build(*args, **kwargs):
        algo = original_build(*args, **kwargs)
        algo.objective.model.features[0][0].register_forward_hook(
            lambda module, inputs, output: seen.append((algo.objective.augment, inputs[0].min().item(),
                                                        inputs[0].max().item(), len(inputs[0]))))
        return algo

    monkeypatch.setattr(al, "build_learner", build)
    for method in ("leap", "reptile", "warpleap", "ft"):
        seen.clear()
        hp = {"meta_update": "per_point"} if method == "warpleap" else {}
        al.run_method(method, SETTINGS, hp, images, split, seed=0, log=lambda s: None)
        training = [s for s in seen if s[0]]
        testing = [s for s in seen if not s[0]]
        assert training and testing, method
        # while meta-training, every forward pass on a mini-batch (<= batch_size images) is marked
        assert all(lo >= 10 for _, lo, _, n in training if n <= SETTINGS["batch_size"]), method
        assert all(hi <= 1 for _, _, hi, _ in testing), method  # test images: never transformed
        if method != "ft":  # the meta-learners' own passes on whole training sets happen only for metrics
            assert any(n <= SETTINGS["batch_size"] for _, _, _, n in training)


def test_omniconv_is_the_official_network():
    model = OmniConv(1, 20)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 20)


def test_test_time_uses_running_batchnorm_statistics_in_eval_mode():
    images, classes = fake_cache()
    split = al.split_alphabets(classes, WAYS, 2, 2, seed=3)
    task = al.alphabet_task(images, split.test[0][1])
    algo = al.build_learner("reptile", SETTINGS, {}, seed=0)
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
    accuracy = al.evaluate_alphabet(algo, task, steps=3)
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
