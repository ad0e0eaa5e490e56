"""The shared training loop: exact resume after a kill, NaN stop, model files, evaluation output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import quick_params, write_params
from metalearn.config import Benchmark, deep_merge
from metalearn.evaluate import evaluate
from metalearn.stats import mean_ci95
from metalearn.train import TrainingDiverged, config_hash, load_model, run_config, train


def _metalearn(*args, env=None):
    return [sys.executable, "-m", "metalearn.cli", *args]


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def test_killed_training_resumes_to_exactly_the_uninterrupted_result(prepared_small, tmp_path):
    """SIGKILL a training after a checkpoint, rerun it: the final parameters are bit-identical."""
    params = deep_merge(prepared_small, {"benchmarks": {"omniglot-5w1s": {"train": {
        "iterations": 40, "checkpoint_every": 5, "meta_batch": 2}}}})
    params_file = write_params(tmp_path / "params.yaml", params)
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    reference = tmp_path / "reference"
    subprocess.run(_metalearn("train", "--params", str(params_file), "-b", "omniglot-5w1s", "-a", "maml",
                              "--out", str(reference), "--device", "cpu"), check=True, env=env, capture_output=True)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(_metalearn("train", "--params", str(params_file), "-b", "omniglot-5w1s", "-a",
                                       "maml", "--out", str(resumed), "--device", "cpu"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = resumed / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if checkpoint.exists():
            try:
                if torch.load(checkpoint, weights_only=True)["iteration"] >= 10:
                    break
            except Exception:  # being replaced right now
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(checkpoint, weights_only=True)["iteration"]
    assert not (resumed / "model.pt").exists(), "the run finished before it could be killed"
    assert 10 <= killed_at < 40

    done = subprocess.run(_metalearn("train", "--params", str(params_file), "-b", "omniglot-5w1s", "-a", "maml",
                                     "--out", str(resumed), "--device", "cpu"),
                          check=True, env=env, capture_output=True, text=True)
    assert f"resuming omniglot-5w1s/maml/seed0 from iteration {killed_at}" in done.stderr
    a, b = _state(reference / "model.pt"), _state(resumed / "model.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _inject_nonfinite(monkeypatch, at_iteration: int, where: str) -> None:
    """Make the algorithm's meta-step at `at_iteration` (1-based) report a NaN loss, or leave an
    infinite meta-gradient, every other step unchanged."""
    import metalearn.train as train_module

    real_build = train_module.build

    def build(*args, **kwargs):
        algo = real_build(*args, **kwargs)
        real_step, calls = algo.meta_step, [0]

        def meta_step(tasks):
            metrics = real_step(tasks)
            calls[0] += 1
            if calls[0] == at_iteration:
                if where == "loss":
                    metrics = {**metrics, "loss": float("nan")}
                else:
                    next(p for p in algo.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
            return metrics

        algo.meta_step = meta_step
        return algo

    monkeypatch.setattr(train_module, "build", build)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(prepared_small, tmp_path, monkeypatch, where):
    """A NaN at iteration 7 (checkpoints every 2): the error names iteration 7 and the kept checkpoint
    of iteration 6, which holds exactly the parameters of an uninterrupted 6-iteration run; rerun
    without the fault, training resumes there and ends as an uninterrupted 10-iteration run."""
    def params(iterations):
        return deep_merge(prepared_small, {"benchmarks": {"sinusoid": {
            "train": {"iterations": iterations, "checkpoint_every": 2, "log_every": 2}}}})

    quiet = lambda s: None  # noqa: E731
    reference6 = train(Benchmark.of(params(6), "sinusoid"), "maml", 0, tmp_path / "ref6", device="cpu", log=quiet)
    reference10 = train(Benchmark.of(params(10), "sinusoid"), "maml", 0, tmp_path / "ref10", device="cpu", log=quiet)
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _inject_nonfinite(patch, 7, where)
        with pytest.raises(TrainingDiverged, match="Lower meta_lr or inner_lr") as info:
            train(Benchmark.of(params(10), "sinusoid"), "maml", 0, out, device="cpu", log=quiet)
    message = str(info.value)
    assert "at iteration 7" in message and "last good checkpoint (iteration 6)" in message
    assert not (out / "model.pt").exists()
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert kept["iteration"] == 6
    expected = _state(reference6)
    assert kept["algorithm"].keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(kept["algorithm"][key].cpu(), value), key

    logs = []
    train(Benchmark.of(params(10), "sinusoid"), "maml", 0, out, device="cpu", log=logs.append)
    assert "resuming sinusoid/maml/seed0 from iteration 6" in logs
    final, expected = _state(out / "model.pt"), _state(reference10)
    for key, value in expected.items():
        assert torch.equal(final[key], value), key


def _rewrite_state(model_path: Path, out: Path, change) -> Path:
    saved = torch.load(model_path, weights_only=True)
    saved["state_dict"] = {k: change(k, v) for k, v in saved["state_dict"].items()}
    torch.save(saved, out)
    return out


def test_evaluation_of_a_zero_model_is_the_mean_square_of_the_episode_file(prepared_small, tmp_path):
    """A known answer, from the episode file itself: an MLP with all weights and biases zero predicts
    0, so with 0 adaptation steps each episode's MSE is the mean of y^2 over its query points."""
    from metalearn import benchmarks
    from metalearn.data import episodes as ep

    model = train(Benchmark.of(prepared_small, "sinusoid"), "maml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    zero = _rewrite_state(model, tmp_path / "zero.pt", lambda k, v: torch.zeros_like(v))
    result = evaluate(prepared_small, zero, device="cpu", steps=0, log=lambda s: None)
    bench = prepared_small["benchmarks"]["sinusoid"]
    saved = torch.load(benchmarks.episodes_path(prepared_small, "sinusoid"), weights_only=True)["test"]
    y = saved["amplitude"] * torch.sin(saved["x"] - saved["phase"])  # the sinusoids of MAML: A sin(x - phase)
    expected = y[:, bench["shots"]:].pow(2).mean(1)
    assert y.shape == (bench["test_tasks"], bench["shots"] + bench["eval_queries"])
    assert result["per_episode"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert result["inner_steps"] == 0 and result["shots"] == bench["shots"]
    assert ep.sinusoid_tasks(saved, bench["shots"]).query_y.shape[1] == bench["eval_queries"]


def test_evaluation_with_a_zero_head_scores_exactly_chance(prepared_small, tmp_path):
    """A classifier whose output layer is zero gives every class the same score: without adaptation
    the prediction is class 0 for every query, and the saved episodes hold eval_queries queries per
    class, so every episode scores exactly 100 / ways percent (not "somewhere in [0, 100]")."""
    params = deep_merge(prepared_small, {"benchmarks": {"omniglot-5w1s": {"train": {"iterations": 2}}}})
    model = train(Benchmark.of(params, "omniglot-5w1s"), "maml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    zero_head = _rewrite_state(model, tmp_path / "zero-head.pt",
                               lambda k, v: torch.zeros_like(v) if k.startswith("model.head.") else v)
    result = evaluate(params, zero_head, device="cpu", steps=0, log=lambda s: None)
    ways = params["benchmarks"]["omniglot-5w1s"]["ways"]
    chance = [100.0 / ways] * params["benchmarks"]["omniglot-5w1s"]["test_tasks"]
    assert result["per_episode"] == pytest.approx(chance, abs=1e-4)  # float32 means: 0.2 is 0.20000000298
    assert result["mean"] == pytest.approx(100.0 / ways, abs=1e-4)


def test_model_file_loads_without_pickled_code_and_evaluates(prepared_small, tmp_path):
    model_path = train(Benchmark.of(prepared_small, "sinusoid"), "fomaml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    saved = torch.load(model_path, weights_only=True)  # no arbitrary unpickling needed
    assert saved["config"]["algorithm"] == "fomaml"
    algo, _ = load_model(model_path, device="cpu")
    result = evaluate(prepared_small, model_path, device="cpu", log=lambda s: None)
    bench = prepared_small["benchmarks"]["sinusoid"]
    assert result["metric"] == "mse" and result["episodes"] == bench["test_tasks"]
    assert len(result["per_episode"]) == bench["test_tasks"]
    assert (result["mean"], result["ci95"]) == pytest.approx(mean_ci95(result["per_episode"]))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["iteration"] == bench["train"]["iterations"]


def test_mean_ci95_is_the_papers_formula():
    mean, ci = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert ci == pytest.approx(1.96 * (5 / 3) ** 0.5 / 2)


def test_run_config_hash_changes_with_training_settings_only(tmp_path):
    """A model is retrained (its config hash changes) when a setting of its training changes, not when
    an evaluation-only setting or the paper-row label `reproduces` does (results/paper.md reads it)."""
    params = quick_params(tmp_path)

    def digest(**changes):
        bench = deep_merge(params["benchmarks"]["omniglot-5w1s"], changes)
        changed = deep_merge(params, {"benchmarks": {"omniglot-5w1s": bench}})
        return config_hash(run_config(changed, "omniglot-5w1s", "maml", 0))

    base = digest()
    for evaluation_only in ({"reproduces": "omniglot-5w1s-other"}, {"test_tasks": 7}, {"eval_queries": 3},
                            {"episode_seed": 5}, {"val_tasks": 3}, {"eval_curve": True}):
        assert digest(**evaluation_only) == base, evaluation_only
    for training in ({"queries": 2}, {"split_seed": 2}, {"train": {"meta_batch": 3}}):
        assert digest(**training) != base, training


def test_cli_pipeline_steps_on_tiny_data(tmp_path, mirror):
    """download -> prepare -> split -> train -> evaluate -> aggregate through the `metalearn` command."""
    params_file = write_params(tmp_path / "params.yaml", quick_params(tmp_path))
    run = lambda *a: subprocess.run(_metalearn(*a, "--params", str(params_file)), check=True,
                                    capture_output=True, text=True, cwd=tmp_path)
    run("download")
    run("prepare")
    run("split")
    run("train", "-b", "omniglot-5w1s", "-a", "fomaml", "--out", "m")
    out = run("evaluate", "--model", "m/model.pt", "--out", "e.json")
    assert "accuracy" in out.stderr
    run("aggregate", "e.json", "--out", "results/summary.csv")
    header = (tmp_path / "results" / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[:9] == ["benchmark", "algorithm", "ways", "shots", "metric", "mean", "ci95", "episodes",
                          "train_seconds"]
    assert (tmp_path / "results" / "summary.md").exists()


def test_cli_reports_invalid_params_with_the_key(tmp_path):
    params = quick_params(tmp_path)
    params["benchmarks"]["sinusoid"]["train"]["iterations"] = -3
    params_file = write_params(tmp_path / "params.yaml", params)
    result = subprocess.run(_metalearn("split", "--params", str(params_file)), capture_output=True, text=True)
    assert result.returncode == 2
    assert "benchmarks.sinusoid.train.iterations" in result.stderr
