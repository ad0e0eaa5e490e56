"""MLflow tracking: a training is one complete run (params, per-step metrics, model artifact that loads
without unpickling code, tags), evaluation joins it, aggregation parents it; parallel jobs lose nothing,
on the default SQLite store and on a real `mlflow server` bound to 127.0.0.1."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import quick_params, write_params
from metalearn import cli

ITERATIONS, LOG_EVERY = 12, 3


def _sinusoid_params(tmp_path: Path) -> Path:
    """Quick params with only the sinusoid benchmark (no data to prepare), short training."""
    params = quick_params(tmp_path, benchmarks={
        "omniglot-5w1s": None,
        "sinusoid": {"train": {"iterations": ITERATIONS, "log_every": LOG_EVERY, "checkpoint_every": 6}}})
    return write_params(tmp_path / "params.yaml", params)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client, client.get_experiment_by_name("metalearn").experiment_id


def _check_training_run(client, run, model_path: Path, algorithm: str) -> None:
    """Everything a training run must hold."""
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["benchmark"], tags["algorithm"], tags["seed"]) == ("sinusoid", algorithm, "0")
    assert tags["device"] == "cpu" and tags["data_hash"] == "synthetic" and tags["git_commit"]
    assert run.data.params["hp.inner_lr"] == "0.01" and run.data.params["train.iterations"] == str(ITERATIONS)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == list(range(LOG_EVERY, ITERATIONS + 1, LOG_EVERY))
    local = client.download_artifacts(run.info.run_id, "model/model.pt", str(model_path.parent.parent / "dl"))
    assert Path(local).read_bytes() == model_path.read_bytes()
    saved = torch.load(local, weights_only=True)  # plain tensors and data: no code is unpickled
    assert saved["config"]["algorithm"] == algorithm
    assert tags["model_sha256"]


def test_training_evaluation_and_summary_form_one_tracked_record(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = str(_sinusoid_params(tmp_path))
    assert cli.main(["train", "--params", params, "-b", "sinusoid", "-a", "maml", "--out", "m", "--track"]) == 0
    assert cli.main(["split", "--params", params]) == 0
    assert cli.main(["evaluate", "--params", params, "--model", "m/model.pt", "--out", "e.json", "--track"]) == 0
    assert cli.main(["aggregate", "--params", params, "e.json", "--histories", "m/history.json",
                     "--out", "results/summary.csv", "--plots", "plots", "--track"]) == 0

    assert (tmp_path / "mlflow.db").exists()  # the default store
    client, experiment = _client("sqlite:///mlflow.db")
    runs = client.search_runs([experiment])
    (training,) = [r for r in runs if r.data.tags["kind"] == "training"]
    (summary,) = [r for r in runs if r.data.tags["kind"] == "summary"]
    assert len(runs) == 2  # the evaluation joined the training run instead of opening one
    _check_training_run(client, training, tmp_path / "m" / "model.pt", "maml")
    assert {"test_mse", "test_mse_ci95", "test_episodes"} <= set(training.data.metrics)
    assert training.data.tags["mlflow.parentRunId"] == summary.info.run_id
    assert summary.data.metrics["sinusoid/maml/mse"] == pytest.approx(training.data.metrics["test_mse"], rel=1e-3)
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id, "results")}
    assert {"results/summary.csv", "results/summary.md", "results/sinusoid-paired.png"} <= artifacts
    # file artifacts beside the database, not inside a server or ./mlruns
    assert (tmp_path / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


def test_tracking_is_off_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["train", "--params", str(_sinusoid_params(tmp_path)), "-b", "sinusoid", "-a", "fomaml",
                     "--out", "m"]) == 0
    assert (tmp_path / "m" / "model.pt").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def _train_in_parallel(tmp_path: Path, uri: str | None) -> None:
    """Two trainings at once, as `snakemake --cores 2` runs them."""
    params = _sinusoid_params(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    procs = [subprocess.Popen([sys.executable, "-m", "metalearn.cli", "train", "--params", str(params),
                               "-b", "sinusoid", "-a", algorithm, "--out", algorithm, "--track"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for algorithm in ("maml", "fomaml")]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)


@pytest.mark.slow
def test_parallel_trainings_log_complete_runs_to_sqlite(tmp_path):
    """Both processes find no database and create it at once, then write concurrently."""
    _train_in_parallel(tmp_path, None)
    client, experiment = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.data.tags["algorithm"]: r for r in client.search_runs([experiment])}
    assert sorted(runs) == ["fomaml", "maml"]
    for algorithm, run in runs.items():
        _check_training_run(client, run, tmp_path / algorithm / "model.pt", algorithm)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.slow
def test_parallel_trainings_log_complete_runs_to_a_local_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
        start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
        uri = f"http://127.0.0.1:{port}"
        _train_in_parallel(tmp_path, uri)
        client, experiment = _client(uri)
        runs = {r.data.tags["algorithm"]: r for r in client.search_runs([experiment])}
        assert sorted(runs) == ["fomaml", "maml"]
        for algorithm, run in runs.items():
            _check_training_run(client, run, tmp_path / algorithm / "model.pt", algorithm)
        assert not (tmp_path / "mlflow.db").exists()  # MLFLOW_TRACKING_URI was honoured
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
