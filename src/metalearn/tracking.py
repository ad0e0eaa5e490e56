"""MLflow tracking of the pipeline (optional: the `metalearn` subcommands' ``--track`` turns it on).

Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` in the working directory with
artifacts as plain files under ``mlartifacts/``. Experiment ``metalearn`` (``MLFLOW_EXPERIMENT_NAME``
overrides it).

- Every training is a run: its params, per-step metrics (through train.py's `Tracker` protocol),
  ``model.pt`` and ``history.json`` as artifacts (model.pt holds tensors and plain data only:
  ``torch.load(weights_only=True)`` reads it), and tags: benchmark, algorithm, seed, profile, git
  commit, data hash, device, model_sha256.
- An evaluation joins the run that trained its model (found by the model file's sha256), or opens a
  new run with the same tags when that run is not in this store (e.g. the model came from `dvc pull`).
- The aggregation is a summary run; the runs it summarises become its children (mlflow.parentRunId).

Parallel jobs and SQLite: two processes that find no database both try to create the schema, and
writers in separate processes can collide ("database is locked") once writes outlast SQLite's wait. For a sqlite store every call into
MLflow is made holding an exclusive lock on a file beside the database (fcntl), so the short writes
of parallel jobs queue instead of failing. (Measured with 4 processes x 40 metric batches on a fresh
database: plain MlflowClient, 3 of 4 processes failed creating the schema, 120 of 160 batches lost;
through this lock, 160 of 160 logged; on an existing database the plain client lost none.) A server store (``http://127.0.0.1:5000``) serialises
writes itself; its transient errors are retried.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from metalearn.config import Benchmark
from metalearn.config import Run as RunSettings
from metalearn.data.download import file_digests

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS = "mlartifacts"
EXPERIMENT = "metalearn"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def file_sha256(path: Path) -> str:
    return file_digests(path)["sha256"]


def git_commit(cwd: Path | None = None) -> str:
    """HEAD of the working tree, with '-dirty' when tracked files differ; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Exclusive across processes for a sqlite store (see the module docstring); a no-op otherwise."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Store:
    """An MLflow client whose every call goes through the store lock, with retries."""

    def __init__(self, uri: str | None = None, experiment: str | None = None, retries: int = 5):
        from mlflow.tracking import MlflowClient

        self.uri = uri or tracking_uri()
        self.retries = retries
        self.client = self.call(MlflowClient, tracking_uri=self.uri)
        self.experiment_id = self.call(self._experiment, experiment or os.environ.get(
            "MLFLOW_EXPERIMENT_NAME", EXPERIMENT))

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        from mlflow.exceptions import MlflowException

        for attempt in range(self.retries + 1):
            try:
                with _store_lock(self.uri):
                    return fn(*args, **kwargs)
            except (MlflowException, OSError) as exc:
                # Transient: a server restarting, another client (outside our lock) holding sqlite.
                if attempt == self.retries or "RESOURCE_ALREADY_EXISTS" in str(exc):
                    raise
                time.sleep(0.5 * 2 ** attempt)

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///") or "://" not in self.uri:
            location = Path(ARTIFACTS).resolve().as_uri()  # files beside the database, not ./mlruns
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by a parallel job (server store)
            return self.client.get_experiment_by_name(name).experiment_id

    def find_run(self, **tags: str):
        """The newest run carrying all these tags, or None."""
        where = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        runs = self.call(self.client.search_runs, [self.experiment_id], filter_string=where,
                         order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def start(self, name: str, tags: dict[str, Any]) -> "Run":
        run = self.call(self.client.create_run, self.experiment_id, run_name=name,
                        tags={k: str(v) for k, v in tags.items()})
        return Run(self, run.info.run_id)

    def resume(self, run_id: str) -> "Run":
        self.call(self.client.update_run, run_id, status="RUNNING")
        return Run(self, run_id)


class Run:
    """One MLflow run; implements train.py's `Tracker` protocol."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit
            self.store.call(self.store.client.log_batch, self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.store.call(self.store.client.log_batch, self.run_id, metrics=items[start:start + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.store.call(self.store.client.log_batch, self.run_id,
                        tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.store.call(self.store.client.log_artifact, self.run_id, str(path), folder)

    def end(self, status: str = "FINISHED") -> None:
        self.store.call(self.store.client.set_terminated, self.run_id, status=status)


@contextlib.contextmanager
def _finishing(run: Run) -> Iterator[Run]:
    try:
        yield run
    except BaseException as exc:
        run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    run.end("FINISHED")


def _data_hash(benchmark: Benchmark) -> str:
    from metalearn import benchmarks

    bench = benchmark.settings
    if bench["task"] in ("sinusoid", "polynomial") or "dataset" not in bench:  # (RL: simulated tasks)
        return "synthetic"  # tasks are drawn from the seeded generator; nothing is read
    return file_sha256(benchmarks.prepared_path(benchmark.params, bench["dataset"]))


@contextlib.contextmanager
def training_run(bench: Benchmark, algorithm: str, seed: int, device: str) -> Iterator[Run]:
    """An MLflow run around one training; pass it as train(..., tracker=run), then `log_model`."""
    from metalearn import families
    from metalearn.train import pick_device

    config_hash = families.family(bench.settings).config_hash  # e.g. RL runs hash metalearn/rl's sources
    commit = git_commit()
    store = Store()
    run = store.start(f"{bench.name}/{algorithm}/seed{seed}", {
        "benchmark": bench.name, "algorithm": algorithm, "seed": seed, "profile": bench.params["profile"],
        "git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty"),
        "data_hash": _data_hash(bench), "device": str(pick_device(device)),
        "config_hash": config_hash(RunSettings.of(bench, algorithm, seed).config()),
        "kind": "training"})
    with _finishing(run):
        yield run


def log_model(run: Run, model_path: Path) -> None:
    """model.pt (and history.json beside it) as artifacts; the model's hash lets evaluation find the run."""
    run.log_artifact(model_path, "model")
    history = model_path.with_name("history.json")
    if history.exists():
        run.log_artifact(history, "model")
    run.set_tags({"model_sha256": file_sha256(model_path)})


def log_evaluation(params: dict, model_path: Path, result: dict, result_path: Path) -> str:
    """Evaluation metrics into the run that trained the model; returns the run id."""
    from metalearn import benchmarks

    store = Store()
    model_hash = file_sha256(model_path)
    found = store.find_run(model_sha256=model_hash)
    if found is not None:
        run = store.resume(found.info.run_id)
    else:  # trained elsewhere (e.g. restored with dvc pull): a run of its own with the same tags
        run = store.start(f"{result['benchmark']}/{result['algorithm']}/seed{result['seed']}", {
            "benchmark": result["benchmark"], "algorithm": result["algorithm"], "seed": result["seed"],
            "profile": params["profile"], "git_commit": git_commit(), "model_sha256": model_hash,
            "kind": "training (trained elsewhere)"})
    with _finishing(run):
        split, metric = result["split"], result["metric"]
        run.log_metrics({f"{split}_{metric}": result["mean"], f"{split}_{metric}_ci95": result["ci95"],
                         f"{split}_episodes": result["episodes"], f"{split}_inner_steps": result["inner_steps"]})
        run.set_tags({"episodes_hash": file_sha256(benchmarks.episodes_path(params, result["benchmark"]))})
        run.log_artifact(result_path, "evaluation")
    return run.run_id


def log_summary(params: dict, rows: list[dict], results: list[dict], files: list[Path]) -> str:
    """The aggregation as a summary run, parent of the latest run of every (benchmark, algorithm, seed)."""
    store = Store()
    commit = git_commit()
    run = store.start("summary", {"kind": "summary", "profile": params["profile"], "git_commit": commit,
                                  "mlflow.source.git.commit": commit.removesuffix("-dirty")})
    with _finishing(run):
        metrics = {}
        for row in rows:
            prefix = f"{row['benchmark']}/{row['algorithm']}/{row['metric']}"
            metrics.update({prefix: row["mean"], f"{prefix}_ci95": row["ci95"]})
        run.log_metrics(metrics)
        for path in files:
            run.log_artifact(path, "results")
        for r in results:
            child = store.find_run(benchmark=r["benchmark"], algorithm=r["algorithm"], seed=str(r["seed"]))
            if child is not None:
                Run(store, child.info.run_id).set_tags({"mlflow.parentRunId": run.run_id})
    return run.run_id
