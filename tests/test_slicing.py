"""Time-sliced training: a planned stop (time limit, METALEARN_STOP_AT, SIGTERM/SIGUSR1) writes the
checkpoint at an iteration's end and exits 75 with no model; reruns resume it to exactly the result
of an uninterrupted run; Snakemake never takes a sliced job's output for done."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import write_params
from metalearn import train as train_module
from metalearn.config import Benchmark, deep_merge

EXIT_SLICE_ENDED = 75


def _metalearn(*args: str) -> list[str]:
    return [sys.executable, "-m", "metalearn.cli", *args]


def _stop_at_iterations(monkeypatch, stops: set[int]) -> list[int]:
    """STOP.reason answers "stop" after the iterations in `stops` (it is asked once per iteration, so
    the n-th question of the whole test is iteration n); returns the iterations it stopped at."""
    asked, stopped = [0], []

    def reason():
        asked[0] += 1
        if asked[0] in stops:
            stopped.append(asked[0])
            return "a test's planned stop"
        return None

    monkeypatch.setattr(train_module.STOP, "reason", reason)
    return stopped


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


@pytest.mark.parametrize("bench, algorithm", [("omniglot-5w1s", "maml"), ("continual-sinusoid", "warpgrad")])
def test_three_slices_equal_one_uninterrupted_run(prepared_small, tmp_path, monkeypatch, bench, algorithm):
    """Stops after iterations 7 and 16 (between checkpoints every 10 and reports every 4): the third
    slice ends with the parameters, optimizer state and curve of the run that never stopped."""
    from metalearn import families

    overrides = {"benchmarks": {bench: {"train": {"iterations": 22, "checkpoint_every": 10, "log_every": 4,
                                                  "meta_batch": 2}}}}
    if bench == "continual-sinusoid":
        overrides["benchmarks"][bench].update({"task": "continual", "model": "mlp", "hidden": [8, 8], "subtasks": 2,
                                               "steps_per_subtask": 3, "shots": 5, "queries": 5, "eval_queries": 5,
                                               "val_tasks": 2, "test_tasks": 2, "episode_seed": 0,
                                               "algorithms": {"warpgrad": {"inner_lr": 0.01, "snapshots": 3}}})
        overrides["benchmarks"][bench]["train"]["meta_lr"] = 0.003
    benchmark = Benchmark.of(deep_merge(prepared_small, overrides), bench)
    run = families.family(benchmark.settings).train

    whole = run(benchmark, algorithm, 0, tmp_path / "whole", device="cpu", log=lambda s: None)
    stopped = _stop_at_iterations(monkeypatch, {7, 16})
    sliced = tmp_path / "sliced"
    for expected_stop in (7, 16):
        with pytest.raises(train_module.SliceEnded, match=f"after iteration {expected_stop} of 22"):
            run(benchmark, algorithm, 0, sliced, device="cpu", log=lambda s: None)
        assert not (sliced / "model.pt").exists() and not (sliced / "history.json").exists()
        assert torch.load(sliced / "checkpoint.pt", weights_only=True)["iteration"] == expected_stop
    path = run(benchmark, algorithm, 0, sliced, device="cpu", log=lambda s: None)
    assert stopped == [7, 16]

    a, b = torch.load(whole, weights_only=True), torch.load(path, weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["iterations"] == b["iterations"] == 22
    ca, cb = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (tmp_path / "whole", sliced))
    moments = [(x, y) for x, y in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values())]
    assert moments and all(torch.equal(x["exp_avg"], y["exp_avg"]) and torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
                           for x, y in moments)
    curve_a = json.loads((tmp_path / "whole" / "history.json").read_text())
    curve_b = json.loads((sliced / "history.json").read_text())
    assert [e["iteration"] for e in curve_a] == [4, 8, 12, 16, 20, 22]
    assert _without_seconds(curve_a) == _without_seconds(curve_b)
    assert b["provenance"]["cpu_seconds"] > 0 and b["provenance"]["command"]


def test_time_limit_and_sigterm_end_a_slice_with_exit_75_and_no_model(prepared_small, tmp_path):
    params = deep_merge(prepared_small, {"benchmarks": {"sinusoid": {"train": {
        "iterations": 200000, "checkpoint_every": 100000, "log_every": 100000}}}})
    params_file = write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "run"
    base = ["train", "--params", str(params_file), "-b", "sinusoid", "-a", "maml", "--out", str(out), "--device", "cpu"]

    done = subprocess.run(_metalearn(*base, "--time-limit", "2s"), capture_output=True, text=True)
    assert done.returncode == EXIT_SLICE_ENDED, done.stderr[-2000:]
    assert "time limit reached" in done.stderr and "run the same command again to resume" in done.stderr
    first = torch.load(out / "checkpoint.pt", weights_only=True)["iteration"]
    assert 0 < first < 200000
    assert not (out / "model.pt").exists() and not (out / "history.json").exists()

    proc = subprocess.Popen(_metalearn(*base), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # signal once the slice is under way
        if "resuming" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_SLICE_ENDED, rest[-2000:]
    assert "SIGTERM received" in rest
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] > first
    assert not (out / "model.pt").exists()

    bad = subprocess.run(_metalearn(*base, "--time-limit", "soon"), capture_output=True, text=True)
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr
    env = {**os.environ, "METALEARN_STOP_AT": "tomorrow"}
    bad = subprocess.run(_metalearn(*base), capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "METALEARN_STOP_AT='tomorrow'" in bad.stderr


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("45m", 2700), ("2h", 7200), ("1d", 86400),
                                           ("1:30:00", 5400), ("02:30", 150)])
def test_durations_read_as_slurm_and_people_write_them(text, seconds):
    from metalearn.cli import duration

    assert duration(text) == seconds


@pytest.mark.slow
def test_snakemake_never_takes_a_sliced_training_for_done_and_a_rerun_resumes_it(tmp_path, mirror):
    """METALEARN_STOP_AT in the past: the training job stops after its first iteration (exit 75),
    Snakemake counts it failed and keeps no model; the same command without it resumes and finishes."""
    from test_workflow import SNAKEMAKE, copy_project, edit, workflow_env

    project = copy_project(tmp_path / "project")
    edit(project / "params.yaml", "\nprofile: default\n", "\nprofile: quick\n")
    target = "models/sinusoid/maml/seed0/model.pt"
    env = {**workflow_env(project), "METALEARN_STOP_AT": "1"}
    cmd = [SNAKEMAKE, "--cores", "1", target]
    sliced = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    assert sliced.returncode != 0
    assert "time limit reached; stopped after iteration 1 of" in sliced.stdout + sliced.stderr
    assert not (project / target).exists()
    assert torch.load(project / "models/sinusoid/maml/seed0/checkpoint.pt", weights_only=True)["iteration"] == 1
    dry = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", target], cwd=project, env=env, capture_output=True, text=True)
    assert "train" in dry.stdout  # still planned: no output of the slice looks done

    del env["METALEARN_STOP_AT"]
    finished = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-3000:]
    assert "resuming sinusoid/maml/seed0 from iteration 1" in finished.stdout + finished.stderr
    assert (project / target).exists()
    assert not (project / "models/sinusoid/maml/seed0/checkpoint.pt").exists()  # the rule's cleanup


def test_an_unfinished_training_is_recorded_in_progress_with_its_curve_and_checkpoint(prepared_small, tmp_path,
                                                                                      monkeypatch):
    from metalearn import pages, records

    params = deep_merge(prepared_small, {"benchmarks": {"sinusoid": {"train": {"iterations": 40, "log_every": 2}}}})
    params["benchmarks"]["sinusoid"]["algorithms"] = {"maml": params["benchmarks"]["sinusoid"]["algorithms"]["maml"]}
    params["benchmarks"] = {"sinusoid": params["benchmarks"]["sinusoid"]}
    _stop_at_iterations(monkeypatch, {6})
    out = tmp_path / "models/sinusoid/maml/seed0"
    with pytest.raises(train_module.SliceEnded):
        train_module.train(Benchmark.of(params, "sinusoid"), "maml", 0, out, device="cpu", log=lambda s: None)
    root = tmp_path / "recorded"
    (folder,) = records.write_records(params, root, tmp_path / "models", tmp_path / "evals", None, log=lambda s: None)
    record = records.read_record(folder / "record.json")
    assert record["status"] == "in progress" and record["training"]["iterations"] == 6
    assert record["training"]["budget"] == 40 and [e["iteration"] for e in record["training"]["curve"]] == [2, 4, 6]
    assert (folder / "checkpoint.pt").read_bytes() == (out / "checkpoint.pt").read_bytes()
    assert not (folder / "model.pt").exists()
    assert records.load_records(root) == [] and len(records.load_records(root, in_progress=True)) == 1
    (check,) = records.verify(root, tmp_path / "unused.yaml", log=lambda s: None)
    assert not check.problems and "in progress (6 of 40 iterations)" in check.notes[0]
    page = pages.generate(root, tmp_path / "docs", tmp_path / "no-readme.md", tmp_path / "no-bench")[
        tmp_path / "docs" / f"{params['profile']}.md"]
    assert "| sinusoid | maml | 0 | 6 of 40 |" in page
