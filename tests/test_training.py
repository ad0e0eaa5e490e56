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

from conftest import ROOT, quick_params, write_params
from metalearn.config import deep_merge
from metalearn.evaluate import evaluate, mean_ci95
from metalearn.train import TrainingDiverged, load_model, train


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


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(prepared_small, tmp_path):
    params = deep_merge(prepared_small, {"benchmarks": {"sinusoid": {
        "train": {"iterations": 200, "checkpoint_every": 2, "meta_lr": 1e30},
        "algorithms": {"maml": {"inner_lr": 1e6}}}}})
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="Lower meta_lr or inner_lr") as info:
        train(params, "sinusoid", "maml", 0, out, device="cpu", log=lambda s: None)
    assert "became" in str(info.value)
    assert not (out / "model.pt").exists()
    if (out / "checkpoint.pt").exists():  # whatever was saved is finite
        saved = torch.load(out / "checkpoint.pt", weights_only=True)["algorithm"]
        assert all(torch.isfinite(v).all() for v in saved.values())
        assert "last good checkpoint" in str(info.value)


def test_model_file_loads_without_pickled_code_and_evaluates(prepared_small, tmp_path):
    model_path = train(prepared_small, "sinusoid", "fomaml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
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
