"""WarpGrad's continual-learning experiment (metalearn/continual/): the meta-objective covers exactly
the current and earlier sub-tasks, its warp gradient is the finite-difference one, the baseline is
plain SGD, sampling and the saved test sequences are deterministic, and the benchmark runs through
the CLI's split -> train -> evaluate -> aggregate with its forgetting figure."""
from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
import torch.nn.functional as F

from metalearn.cli import main
from metalearn.config import Benchmark, validate
from metalearn.continual import train as ctrain
from metalearn.continual.learner import Learner, learn_sequence
from metalearn.continual.tasks import SequenceSampler, Sequences, episode_settings, make_episodes, subintervals
from metalearn.errors import ConfigError

TINY = {"task": "continual", "model": "mlp", "hidden": [3, 3], "subtasks": 3,
        "steps_per_subtask": 2, "shots": 4, "queries": 3, "eval_queries": 5, "val_tasks": 2, "test_tasks": 6,
        "episode_seed": 0,
        "train": {"meta_batch": 2, "meta_lr": 0.01, "iterations": 3, "checkpoint_every": 2, "log_every": 1},
        "algorithms": {"warpgrad": {"inner_lr": 0.05}, "sgd": {"inner_lr": 0.05}}}


def tiny_sequences(count=2, seed=0, dtype=torch.float64) -> Sequences:
    seqs = SequenceSampler(TINY, torch.Generator().manual_seed(seed), torch.device("cpu")).sample(count)
    return Sequences(*(t.to(dtype) for t in (seqs.support_x, seqs.support_y, seqs.query_x, seqs.query_y)))


def tiny_learner(method="warpgrad", dtype=torch.float64, scramble=True, first_order=False) -> Learner:
    learner = Learner(method, TINY, {"inner_lr": 0.05, "first_order": first_order}, seed=0).to(dtype)
    if scramble and learner.warp is not None:  # warps away from the identity, so they matter
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in learner.meta_parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=dtype))
    return learner


# ----------------------------------------------------------------------------- the meta-objective
def test_meta_objective_covers_exactly_the_current_and_earlier_subtasks(monkeypatch):
    """A spy on the learner's losses: at a point of sub-task t, J takes one step on sub-task t's
    training points and is scored on the held-out points of sub-tasks 0..t, no other; its value is the
    mean of those sub-tasks' losses after the step (closed form from the spied step)."""
    learner, seqs = tiny_learner(), tiny_sequences()
    theta = learner.initial()
    calls = []
    original = Learner.loss

    def spy(self, params, data):
        calls.append(data)
        return original(self, params, data)

    monkeypatch.setattr(Learner, "loss", spy)
    for t in range(seqs.subtasks):
        calls.clear()
        value = ctrain.meta_objective(learner, theta, seqs, 1, t)
        assert len(calls) == 2
        (step_x, step_y), (scored_x, scored_y) = calls
        assert torch.equal(step_x, seqs.support_x[1, t]) and torch.equal(step_y, seqs.support_y[1, t])
        assert torch.equal(scored_x, seqs.query_x[1, :t + 1].flatten(0, 1))
        assert torch.equal(scored_y, seqs.query_y[1, :t + 1].flatten(0, 1))
        stepped = learner.step(learner.initial(), seqs.support(1, t))
        by_hand = sum(original(learner, stepped, seqs.query(1, s)) for s in range(t + 1)) / (t + 1)
        torch.testing.assert_close(value, by_hand, rtol=1e-12, atol=1e-12)


def test_meta_objective_ignores_later_subtasks_and_reads_every_earlier_one():
    learner, seqs = tiny_learner(), tiny_sequences()
    theta = learner.initial()
    t = 1
    base = ctrain.meta_objective(learner, theta, seqs, 0, t).item()
    for s in range(seqs.subtasks):
        changed = copy.deepcopy(seqs)
        changed.query_y[0, s] += 1.0
        value = ctrain.meta_objective(learner, theta, changed, 0, t).item()
        assert (value == base) == (s > t), f"sub-task {s} while learning sub-task {t}"


def test_meta_gradient_buffers_each_point_with_the_subtask_being_learned(monkeypatch):
    """Algorithm 2: the buffered points are spread over the whole sequence, each scored with the
    sub-task it was taken in (k // steps), sequence by sequence; `.grad` is the mean of their gradients."""
    learner, seqs = tiny_learner(), tiny_sequences()
    steps = TINY["steps_per_subtask"]
    seen = []
    original = ctrain.meta_objective

    def spy(learner_, theta, seqs_, i, t):
        seen.append((i, t))
        return original(learner_, theta, seqs_, i, t)

    monkeypatch.setattr(ctrain, "meta_objective", spy)
    ctrain.meta_gradient(learner, seqs, steps, snapshots=seqs.subtasks * steps)
    assert seen == [(i, k // steps) for i in range(len(seqs)) for k in range(seqs.subtasks * steps)]
    got = [p.grad.clone() for p in learner.meta_parameters()]
    # by hand: replay each sequence with phi fixed, average the per-point gradients
    expected = [torch.zeros_like(p) for p in learner.meta_parameters()]
    count = 0
    for i in range(len(seqs)):
        theta = learner.initial()
        for t in range(seqs.subtasks):
            for _ in range(steps):
                grads = torch.autograd.grad(original(learner, theta, seqs, i, t), learner.meta_parameters())
                expected = [e + g for e, g in zip(expected, grads)]
                count += 1
                theta = learner.step(theta, seqs.support(i, t))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e / count, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_warp_meta_gradient_matches_finite_differences(first_order):
    """d J / d phi at a fixed trajectory point (float64), against central differences on every warp
    parameter: through the warped step and the warped loss (first order: the loss only)."""
    learner, seqs = tiny_learner(first_order=first_order), tiny_sequences()
    theta = learner.initial()
    for _ in range(3):  # a point inside sub-task 1
        theta = learner.step(theta, seqs.support(0, 0) if _ < 2 else seqs.support(0, 1))
    theta = {k: v.detach() for k, v in theta.items()}
    phi = learner.meta_parameters()
    analytic = torch.autograd.grad(ctrain.meta_objective(learner, theta, seqs, 0, 1), phi)
    eps = 1e-6
    for p, g in zip(phi, analytic):
        numeric = torch.zeros_like(p)
        for index in range(p.numel()):
            values = []
            for shift in (eps, -2 * eps, eps):  # up, down, back
                with torch.no_grad():
                    p.view(-1)[index] += shift
                values.append(ctrain.meta_objective(learner, theta, seqs, 0, 1).item())
            numeric.view(-1)[index] = (values[0] - values[1]) / (2 * eps)
        torch.testing.assert_close(g, numeric, rtol=1e-6, atol=1e-8)
    assert max(g.abs().max().item() for g in analytic) > 1e-3  # the warps do matter here


# ----------------------------------------------------------------------------- the baseline
def test_sgd_baseline_is_plain_sgd_and_untrained_warps_change_nothing():
    """`sgd` learns a sequence as torch.optim.SGD on the network from the same initialisation; WarpGrad
    with its warps at their start (the identity) takes the very same steps."""
    seqs = tiny_sequences(dtype=torch.float32)
    steps = TINY["steps_per_subtask"]
    sgd = Learner("sgd", TINY, {"inner_lr": 0.05}, seed=0)
    warped = Learner("warpgrad", TINY, {"inner_lr": 0.05}, seed=0)
    network = copy.deepcopy(sgd.model).requires_grad_(True)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05)
    for t in range(seqs.subtasks):
        for _ in range(steps):
            optimizer.zero_grad()
            x, y = seqs.support(0, t)
            F.mse_loss(network(x), y).backward()
            optimizer.step()
    ours = learn_sequence(sgd, seqs, 0, steps)
    identity = learn_sequence(warped, seqs, 0, steps)
    for name, p in network.named_parameters():
        torch.testing.assert_close(ours[name], p.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(identity[name], p.detach(), rtol=1e-6, atol=1e-7)
    assert sgd.meta_parameters() == [] and len(warped.meta_parameters()) == 4


# ----------------------------------------------------------------------------- the task family and files
def test_sampling_is_deterministic_given_the_seed_and_points_lie_in_their_subinterval():
    a, b, c = tiny_sequences(seed=3), tiny_sequences(seed=3), tiny_sequences(seed=4)
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))
    for t, (low, high) in enumerate(subintervals(TINY)):
        for x in (a.support_x[:, t], a.query_x[:, t]):
            assert bool((x >= low).all()) and bool((x < high).all())
    assert subintervals(TINY)[0][0] == -5.0 and subintervals(TINY)[-1][1] == 5.0


def tiny_params(tmp_path, **bench) -> dict:
    return validate({"data": {"root": str(tmp_path / "data")}, "seeds": [0],
                     "benchmarks": {"continual-tiny": {**copy.deepcopy(TINY), **bench}}})


def test_saved_test_sequences_are_identical_across_reruns(tmp_path):
    paths = [make_episodes(Benchmark.of(tiny_params(tmp_path / str(n)), "continual-tiny")) for n in range(2)]
    first, second = (torch.load(p, weights_only=True) for p in paths)
    assert first["settings"] == second["settings"] == episode_settings(TINY)
    for split in ("val", "test"):
        assert first[split].keys() == second[split].keys()
        for key in first[split]:
            assert torch.equal(first[split][key], second[split][key])
    assert first["test"]["x"].shape == (TINY["test_tasks"], TINY["subtasks"], TINY["shots"] + TINY["eval_queries"])


def test_params_schema_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="continual-tiny.algorithms.maml"):
        tiny_params(tmp_path, algorithms={"maml": {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 1}})
    with pytest.raises(ConfigError, match="continual-tiny: 'steps_per_subtask' is a required"):
        validate({"data": {"root": "d"}, "seeds": [0], "benchmarks": {"continual-tiny": {
            k: v for k, v in TINY.items() if k != "steps_per_subtask"}}})
    with pytest.raises(ConfigError, match="benchmarks.sinusoid.subtasks: not allowed"):
        validate({"data": {"root": "d"}, "seeds": [0], "benchmarks": {"sinusoid": {
            "task": "sinusoid", "model": "mlp", "shots": 5, "queries": 5, "eval_queries": 5, "val_tasks": 1,
            "test_tasks": 1, "episode_seed": 0, "subtasks": 5, "train": TINY["train"],
            "algorithms": {"maml": {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 1}}}}})


# ----------------------------------------------------------------------------- through the CLI
def test_split_train_evaluate_aggregate_through_the_cli(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["split", "-b", "continual-tiny"]) == 0
    evals = []
    for method in ("warpgrad", "sgd"):
        assert main(["train", "-b", "continual-tiny", "-a", method, "--out", f"models/{method}"]) == 0
        evals.append(f"eval/{method}.json")
        assert main(["evaluate", "--model", f"models/{method}/model.pt", "--out", evals[-1]]) == 0
    result = json.loads((tmp_path / "eval/sgd.json").read_text())
    curve = result["continual"]["curve_mean"]
    assert len(curve) == TINY["subtasks"] * TINY["steps_per_subtask"] + 1 and len(curve[0]) == TINY["subtasks"]
    assert result["episodes"] == TINY["test_tasks"] and result["metric"] == "mse"
    finals = result["continual"]["per_episode_final"]
    assert result["per_episode"] == pytest.approx([sum(f) / len(f) for f in finals])
    assert json.loads((tmp_path / "models/warpgrad/history.json").read_text())[-1]["iteration"] == 3
    assert main(["aggregate", *evals, "--out", "results/summary.csv", "--plots", "results/plots"]) == 0
    rows = list(csv.DictReader((tmp_path / "results/summary.csv").open()))
    assert {(r["benchmark"], r["algorithm"], r["metric"]) for r in rows} == {
        ("continual-tiny", "warpgrad", "mse"), ("continual-tiny", "sgd", "mse")}
    assert (tmp_path / "results/plots/continual-tiny-continual.png").stat().st_size > 0
    assert main(["evaluate", "--model", "models/sgd/model.pt", "--out", "x.json", "--steps", "3"]) == 2


def test_a_tracked_continual_training_is_one_mlflow_run_with_the_model_files_config_hash(tmp_path, monkeypatch):
    """`metalearn train --track` for a continual benchmark goes through the same tracked run as every
    family (metalearn.families): tags name the run, its config hash is the model file's."""
    import mlflow
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path)))
    assert main(["split", "-b", "continual-tiny"]) == 0
    assert main(["train", "-b", "continual-tiny", "-a", "warpgrad", "--out", "m", "--track"]) == 0
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    saved = torch.load(tmp_path / "m/model.pt", weights_only=True)
    assert run.info.status == "FINISHED"
    assert (run.data.tags["benchmark"], run.data.tags["algorithm"], run.data.tags["kind"]) == (
        "continual-tiny", "warpgrad", "training")
    assert run.data.tags["config_hash"] == saved["config_hash"] and run.data.tags["data_hash"] == "synthetic"
    assert run.data.tags["model_sha256"]


def test_an_interrupted_meta_training_resumes_to_the_same_warps(tmp_path, monkeypatch):
    """Killed after its checkpoint at iteration 2, a rerun resumes there and ends with the warps of an
    uninterrupted run (sampler and optimiser state restored)."""
    params, quiet = tiny_params(tmp_path), (lambda message: None)
    whole = ctrain.train(Benchmark.of(params, "continual-tiny"), "warpgrad", 0, tmp_path / "whole", "cpu", log=quiet)
    original, calls = ctrain.meta_gradient, []

    def killed_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(ctrain, "meta_gradient", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        ctrain.train(Benchmark.of(params, "continual-tiny"), "warpgrad", 0, tmp_path / "resumed", "cpu", log=quiet)
    monkeypatch.setattr(ctrain, "meta_gradient", original)
    resumed = ctrain.train(Benchmark.of(params, "continual-tiny"), "warpgrad", 0, tmp_path / "resumed", "cpu", log=quiet)
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], Learner("warpgrad", TINY, {"inner_lr": 0.05}, 0).state_dict()[k])
                   for k in a)  # the warps did move
