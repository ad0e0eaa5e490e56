"""The papers' regression experiments: MAML's sinusoid study with its baselines (pretrained, oracle),
MT-net's sinusoid protocol (frequency), the test error after every number of steps, paper vs ours."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from metalearn import benchmarks, paper
from metalearn.algorithms import build_algorithm
from metalearn.config import Benchmark, Run, load_params
from metalearn.data import episodes as ep
from metalearn.models import MLP
from metalearn.tasks import Objective

ROOT = Path(__file__).resolve().parents[1]
REGRESSION_BENCHMARKS = ["sinusoid", "sinusoid-k5", "sinusoid-k20",
                         "sinusoid-mtnet-k5", "sinusoid-mtnet-k10", "sinusoid-mtnet-k20"]


def regression_params(tmp_path: Path, **train) -> dict:
    params = load_params(ROOT / "params.yaml", "regression")
    params["data"] = {"root": str(tmp_path / "data"), "mirror": None}
    for bench in params["benchmarks"].values():
        bench["train"].update(train)
    return params


def algorithm(name: str, inputs: int = 1, **hparams):
    torch.manual_seed(0)
    objective = Objective(MLP(in_features=inputs), "regression")
    defaults = {"inner_lr": 0.01, "inner_steps": 1, "test_inner_steps": 5}
    return build_algorithm(name, objective.model, objective, {**defaults, **hparams})


# -- the task families --------------------------------------------------------------------------

def test_mtnet_sinusoids_draw_frequencies_in_0p8_to_1p2_and_use_them():
    drawn = ep.draw_sinusoids(4000, 7, torch.Generator().manual_seed(1), frequency=(0.8, 1.2))
    f = drawn["frequency"]
    assert float(f.min()) >= 0.8 and float(f.max()) <= 1.2
    assert float(f.min()) < 0.81 and float(f.max()) > 1.19  # the whole range, not a constant
    tasks = ep.sinusoid_tasks(drawn, 3)
    x = torch.cat([tasks.support_x, tasks.query_x], 1).squeeze(-1)
    y = torch.cat([tasks.support_y, tasks.query_y], 1).squeeze(-1)
    assert torch.allclose(y, drawn["amplitude"] * torch.sin(f * x - drawn["phase"]))
    # the benchmark's sampler draws from the configured range
    params = load_params(ROOT / "params.yaml", "regression")
    generator = torch.Generator().manual_seed(0)
    sampled = benchmarks.train_sampler(Benchmark.of(params, "sinusoid-mtnet-k5"), generator, "cpu").sample(500)
    assert sampled.info.shape == (500, 3)
    assert float(sampled.info[:, 2].min()) >= 0.8 and float(sampled.info[:, 2].max()) <= 1.2
    assert sampled.support_x.shape == (500, 5, 1) and sampled.query_x.shape == (500, 10, 1)


def test_maml_sinusoids_are_unchanged_by_the_frequency_option():
    """MAML's tasks draw amplitude, phase, then x from the generator, and nothing else: the saved test
    set of the `sinusoid` benchmark stays the one every earlier run was scored on."""
    generator = torch.Generator().manual_seed(3)
    amplitude = torch.rand(5, 1, generator=generator) * 4.9 + 0.1
    phase = torch.rand(5, 1, generator=generator) * math.pi
    x = torch.rand(5, 8, generator=generator) * 10.0 - 5.0
    drawn = ep.draw_sinusoids(5, 8, torch.Generator().manual_seed(3))
    assert set(drawn) == {"amplitude", "phase", "x"}
    for key, value in (("amplitude", amplitude), ("phase", phase), ("x", x)):
        assert torch.equal(drawn[key], value)


def test_saved_test_tasks_of_each_regression_benchmark_are_identical_across_reruns(tmp_path):
    first, second = regression_params(tmp_path / "a"), regression_params(tmp_path / "b")
    for name in REGRESSION_BENCHMARKS:
        a = ep.load_episodes(benchmarks.make_episodes(Benchmark.of(first, name)))
        b = ep.load_episodes(benchmarks.make_episodes(Benchmark.of(second, name)))
        assert a["settings"] == b["settings"] == benchmarks.episode_settings(first["benchmarks"][name])
        for split in ("val", "test"):
            assert a[split].keys() == b[split].keys()
            for key in a[split]:
                assert torch.equal(a[split][key], b[split][key]), (name, split, key)
        assert ("frequency" in a["test"]) == name.startswith("sinusoid-mtnet")
        assert a["test"]["x"].shape == (600, first["benchmarks"][name]["shots"] + 100)


# -- the baselines ------------------------------------------------------------------------------

def test_oracle_inputs_carry_each_tasks_true_amplitude_and_phase():
    for frequency in (None, (0.8, 1.2)):
        tasks = ep.SinusoidSampler(5, 10, torch.Generator().manual_seed(0), frequency=frequency).sample(8)
        oracle = algorithm("oracle", inputs=4 if frequency else 3)
        for i, task in enumerate(tasks):
            informed = oracle.informed_task(task)
            for (x, y), inputs in ((task.support, informed.support[0]), (task.query, informed.query[0])):
                assert torch.equal(inputs[:, :1], x)
                amplitude, phase = inputs[:, 1], inputs[:, 2]
                f = inputs[:, 3] if frequency else 1.0
                # the appended inputs are exactly the parameters that generated this task's targets
                assert torch.allclose(amplitude * torch.sin(f * x.squeeze(-1) - phase), y.squeeze(-1))
                assert torch.equal(inputs[:, 1:], tasks.info[i].expand(len(x), -1))


def test_oracle_network_takes_the_task_parameters_as_inputs(tmp_path):
    from metalearn.train import build

    params = regression_params(tmp_path)
    for name, inputs in (("sinusoid-k5", 3),):
        algo = build(Run.of(Benchmark.of(params, name), "oracle", 0), torch.device("cpu"))
        assert algo.model.net[0].in_features == inputs
        assert build(Run.of(Benchmark.of(params, name), "pretrained", 0), torch.device("cpu")).model.net[0].in_features == 1


def test_pretrained_meta_gradient_is_the_gradient_of_the_mean_support_loss_without_adaptation():
    tasks = ep.SinusoidSampler(5, 10, torch.Generator().manual_seed(0)).sample(6)
    pretrained = algorithm("pretrained")
    pretrained.meta_step(tasks)  # the chunked path (MLP.forward_tasks)
    expected = torch.autograd.grad(
        sum(torch.nn.functional.mse_loss(pretrained.model(t.support[0]), t.support[1]) for t in tasks) / len(tasks),
        list(pretrained.model.parameters()))
    for p, g in zip(pretrained.model.parameters(), expected):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_pretrained_never_sees_a_saved_test_task_before_fine_tuning(tmp_path, monkeypatch):
    """Every task the pretrained baseline trains on comes from the training sampler; none is a saved
    test task, and evaluating (fine-tuning on the test tasks) leaves the trained network unchanged."""
    from metalearn.algorithms.pretrained import Pretrained
    from metalearn.evaluate import evaluate
    from metalearn.train import load_model, train

    params = regression_params(tmp_path, iterations=20, checkpoint_every=10, log_every=10)
    name = "sinusoid-k5"
    params["benchmarks"][name]["test_tasks"] = 30
    benchmarks.make_episodes(Benchmark.of(params, name))
    seen = []
    original = Pretrained.meta_step
    monkeypatch.setattr(Pretrained, "meta_step", lambda self, tasks: seen.append(tasks.info.clone()) or original(self, tasks))
    model = train(Benchmark.of(params, name), "pretrained", 0, tmp_path / "model", device="cpu", log=lambda s: None)
    assert len(seen) == 20
    trained = torch.cat(seen)
    test = ep.load_episodes(benchmarks.episodes_path(params, name))["test"]
    test_parameters = torch.cat([test["amplitude"], test["phase"]], 1)
    assert not (trained.unsqueeze(1) == test_parameters.unsqueeze(0)).all(-1).any()
    before = {k: v.clone() for k, v in load_model(model, "cpu")[0].state_dict().items()}
    result = evaluate(params, model, device="cpu", log=lambda s: None)
    after = load_model(model, "cpu")[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(result["curve"]) == 11 and result["curve"][-1]["mean"] == pytest.approx(result["mean"])


# -- the test error against the number of steps -------------------------------------------------

@pytest.mark.parametrize("name", ["maml", "metasgd", "mtnet", "pretrained", "oracle"])
def test_the_curve_equals_evaluating_after_each_number_of_steps(name):
    tasks = ep.SinusoidSampler(5, 20, torch.Generator().manual_seed(2), frequency=(0.8, 1.2)).sample(3)
    extra = {"temperature": 1.0} if name == "mtnet" else {}
    algo = algorithm(name, inputs=4 if name == "oracle" else 1, inner_lr=0.05, **extra)
    for task in tasks:
        curve = algo.evaluate_task_curve(task, 6)
        assert len(curve) == 7
        for steps, metrics in enumerate(curve):
            assert metrics["loss"] == pytest.approx(algo.evaluate_task(task, steps)["loss"], rel=1e-6, abs=1e-9)
    # and a step lowers the support loss of a sinusoid (the steps are real gradient steps)
    assert curve[0]["loss"] != curve[1]["loss"]


def test_zero_steps_score_the_initialisation_exactly():
    tasks = ep.SinusoidSampler(5, 20, torch.Generator().manual_seed(2)).sample(2)
    maml = algorithm("maml")
    for task in tasks:
        with torch.no_grad():
            expected = torch.mean((maml.model(task.query[0]) - task.query[1]) ** 2).item()
        assert maml.evaluate_task_curve(task, 3)[0]["loss"] == pytest.approx(expected, rel=1e-6)


# -- paper vs ours ------------------------------------------------------------------------------

def _result(values, steps=1, curve=None, iterations=70000, algorithm="maml", benchmark="sinusoid-k5"):
    run = {"benchmark": benchmark, "algorithm": algorithm, "metric": "mse", "inner_steps": steps,
           "per_episode": values, "iterations": iterations, "seed": 0}
    if curve is not None:
        run["per_episode_curve"] = curve
    return run


def test_paper_rows_take_our_score_at_the_papers_step_count_and_give_verdicts():
    numbers = [
        {"benchmark": "sinusoid-k5", "algorithm": "maml", "metric": "mse", "steps": 1, "mean": 0.5, "ci95": 0.1,
         "iterations": 70000, "source": "T1"},
        {"benchmark": "sinusoid-k5", "algorithm": "maml", "metric": "mse", "steps": 2, "mean": 0.1, "ci95": None,
         "iterations": 70000, "source": "T1"},
        {"benchmark": "sinusoid-k5", "algorithm": "maml", "metric": "mse", "steps": 9, "mean": 0.1, "ci95": None,
         "iterations": 70000, "source": "T1"},  # we have no score after 9 steps: no row
        {"benchmark": "omniglot-5w1s", "algorithm": "maml", "metric": "accuracy", "mean": 98.7, "ci95": 0.4,
         "iterations": 60000, "requires": {"dataset": "omniglot"}, "source": "T2"},
    ]
    curve = [[1.0, 1.0], [0.55, 0.55], [0.3, 0.3]]  # steps 0, 1, 2 of two episodes
    omniglot = {"benchmark": "omniglot-5w1s", "algorithm": "maml", "metric": "accuracy", "inner_steps": 3,
                "per_episode": [90.0, 92.0], "iterations": 1500, "seed": 0}
    rows = paper.paper_rows([_result([0.3, 0.3], steps=2, curve=curve), omniglot],
                            {"omniglot-5w1s": {"dataset": "omniglot-small"}}, numbers)
    assert [(r["benchmark"], r["steps"]) for r in rows] == [("sinusoid-k5", 1), ("sinusoid-k5", 2), ("omniglot-5w1s", 3)]
    assert rows[0]["ours_mean"] == 0.55 and rows[0]["verdict"] == "within the paper's CI"
    assert rows[1]["ours_mean"] == 0.3 and rows[1]["verdict"] == "above (worse)"  # MSE: above is worse
    assert rows[2]["verdict"].startswith("not comparable: dataset 'omniglot-small'")
    rows = paper.paper_rows([omniglot], {"omniglot-5w1s": {"dataset": "omniglot"}}, numbers)
    assert rows[0]["iterations_ratio"] == 0.025
    assert rows[0]["verdict"] == "budget-limited (2% of the paper's meta-iterations), below (worse)"


def test_every_paper_number_has_a_source_and_a_configured_benchmark_protocol():
    params = {name: load_params(ROOT / "params.yaml", name)["benchmarks"] for name in ("paper", "regression")}
    for number in paper.paper_numbers():
        assert number["source"] and number["metric"] in ("mse", "accuracy", "return")
        assert number.get("iterations") is None or number["iterations"] > 0  # null: the paper gives none
        # the benchmark of that name, or one that `reproduces` it (e.g. the iMAML code's protocol; paper.py)
        ours = [bench for name, bench in params["paper"].items()
                if number["benchmark"] in (name, bench.get("reproduces"))]
        assert ours, number
        if number["algorithm"] == "reptile":  # iMAML's Table 2 rows: no profile runs Reptile on these yet
            continue
        ours = [bench for bench in ours if number["algorithm"] in bench["algorithms"]]
        assert ours, number
        for bench in ours:
            if number.get("steps") is not None:  # a step count needs the curve (RL evaluations record it)
                assert bench.get("eval_curve") or bench.get("model") == "gaussian-mlp", number


def test_the_mtnet_study_of_the_regression_profile_runs_the_official_polynomial_settings():
    from metalearn.studies import mtnet_runs

    params = load_params(ROOT / "params.yaml", "regression")
    runs = mtnet_runs(params)
    degree_runs = [r for r in runs if r["part"] == "degree"]
    assert [r["degree"] for r in degree_runs] == [0, 1, 2]
    for run in degree_runs:  # polynomial.sh: meta-batch 4, 10 shots, alpha main.py's default, 60k iterations
        assert run["hparams"]["inner_lr"] == 0.001
        assert run["bench"]["train"]["meta_batch"] == 4 and run["bench"]["shots"] == 10
        assert run["bench"]["train"]["iterations"] == 60000
        assert "frequency" not in run["bench"] and run["bench"]["task"] == "polynomial"
    sweep = sorted((r["algorithm"], r["inner_lr"]) for r in runs if r["part"] == "inner_lr")
    assert sweep == [(a, lr) for a in ("maml", "mtnet") for lr in (0.01, 0.04, 0.1)]
