"""The one meta-training loop every algorithm and every task family shares (`run_loop`), and the
episodes family's use of it (`train`).

Resumable: every `checkpoint_every` iterations the whole state (meta-parameters, optimizer,
episode generator, history, elapsed time) is written atomically; a rerun continues from the last
checkpoint and ends with exactly the parameters of an uninterrupted run (same device, same seed).
A NaN/inf meta-loss or meta-gradient stops training with an error; the last good checkpoint stays.
The other families (metalearn.continual.train, metalearn.alphabets.train, metalearn.rl.train) give `run_loop`
their own step; its bookkeeping (Progress, Checkpoint, write_model) is written once, here.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from metalearn import benchmarks
from metalearn.algorithms import ALGORITHMS, build_algorithm
from metalearn.config import Benchmark, Run
from metalearn.data.images import preprocessing_for
from metalearn.errors import BadFile

MODEL_FORMAT = 1


class TrainingDiverged(RuntimeError):
    pass


class SliceEnded(Exception):
    """Training stopped on purpose (a time limit, SIGTERM or SIGUSR1) right after writing its
    checkpoint; no model was written, and a rerun of the same command resumes it."""


class StopRequest:
    """When a training should stop on purpose: at a deadline (`metalearn train --time-limit`, or the
    pipeline's METALEARN_STOP_AT) or once SIGTERM/SIGUSR1 arrives (SLURM sends one before the wall time).
    The loops look at it after each iteration, so a stop costs at most one iteration of work."""

    def __init__(self) -> None:
        self.deadline: float | None = None  # time.time() seconds
        self.signal: str | None = None

    def stop_at(self, deadline: float | None) -> None:
        if deadline is not None:
            self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)

    def catch_signals(self) -> None:
        """SIGTERM and SIGUSR1 ask for a stop at the next iteration's end (instead of killing the
        process mid-iteration); only in the main thread, where Python delivers signals."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        import signal

        self.signal = signal.Signals(signum).name

    def reason(self) -> str | None:
        """Why to stop now, or None to go on."""
        if self.signal is not None:
            return f"{self.signal} received"
        if self.deadline is not None and time.time() >= self.deadline:
            return "time limit reached"
        return None


STOP = StopRequest()  # this process's; metalearn.cli sets it from --time-limit and installs the handlers


class Tracker(Protocol):
    """Receives the run's progress (e.g. an MLflow run); all methods optional in spirit."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def run_config(params: dict, bench_name: str, algorithm: str, seed: int) -> dict:
    """Everything that determines a training run (config.Run.config); its hash guards against resuming
    a stale checkpoint."""
    return Run.of(Benchmark.of(params, bench_name), algorithm, seed).config()


def settings_digest(config: dict, sources) -> str:
    """16 hex digits of a run's settings and its source files' code (every task family's config hash)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for source in sorted(Path(source) for source in sources):
        digest.update(source_code(source))
    return digest.hexdigest()[:16]


def source_code(path: Path) -> bytes:
    """A source file as the interpreter runs it: its syntax tree without comments, docstrings, blank
    lines or line numbers. An edited comment cannot change a result, so it must not make a long run's
    checkpoint stale (a run resumes across working sessions while the code around it is edited)."""
    tree = ast.parse(Path(path).read_text(), str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def config_hash(config: dict) -> str:
    """Settings plus the algorithm's source code: a checkpoint from other settings or an edited
    algorithm is not resumed."""
    from metalearn.algorithms import source_files

    return settings_digest(config, source_files(config["algorithm"]))


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def build(run: Run, device: torch.device):
    """The run's algorithm (with the seeded initialisation) for its benchmark, on `device`."""
    torch.manual_seed(run.seed)
    informed = getattr(ALGORITHMS.get(run.algorithm), "sees_task_parameters", False)  # the oracle baseline
    bench = run.settings
    objective = benchmarks.build_objective(bench, benchmarks.task_parameter_count(bench) if informed else 0)
    algo = build_algorithm(run.algorithm, objective.model, objective, dict(run.hparams))
    return algo.to(device)


def _all_finite(algo: torch.nn.Module) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in algo.parameters())


def clip_meta_grad(algo: torch.nn.Module, limit: float | None) -> None:
    """Clamp every meta-gradient entry to [-limit, limit] (None: leave them), before the optimizer
    step: cbfinn/maml maml.py, `tf.clip_by_value(grad, -10, 10)` on mini-ImageNet (train.clip_meta_grad)."""
    if limit is None:
        return
    for p in algo.parameters():
        if p.grad is not None:
            p.grad.clamp_(-limit, limit)


# ----------------------------------------------------------------------------- every loop's bookkeeping
class Progress:
    """A loop's reports: each iteration's metrics are summed over a window of `log_every` iterations
    (the last window may be shorter); at its end their means join the history (with the iteration and
    the training seconds so far), are logged as a progress line and go to the tracker as train_<key>.
    `history`: the list the checkpoint saves (a resumed run's continues). `unit` names an iteration in
    the line (alphabets: "meta-step"); `speed` adds the window's iterations per second to it."""

    def __init__(self, name: str, iterations: int, log_every: int, history: list[dict],
                 log: Callable[[str], None], tracker: Tracker | None = None, unit: str = "iter",
                 speed: bool = True, window: dict | None = None):
        self.name, self.iterations, self.log_every, self.history = name, iterations, log_every, history
        self.log, self.tracker, self.unit, self.speed = log, tracker, unit, speed
        self._new_window()
        if window:  # a resumed run continues the window its checkpoint was written in
            self.window, self.running = window["iterations"], dict(window["sums"])

    def window_state(self) -> dict:
        """The open window's sums, saved with a checkpoint written between two reports."""
        return {"iterations": int(self.window), "sums": {k: float(v) for k, v in self.running.items()}}

    def _new_window(self) -> None:
        self.window_start, self.window, self.running = time.perf_counter(), 0, {}

    def add(self, iteration: int, metrics: dict[str, float], elapsed: float) -> None:
        self.window += 1
        for key, value in metrics.items():
            self.running[key] = self.running.get(key, 0.0) + value
        if iteration % self.log_every != 0 and iteration != self.iterations:
            return
        means = {key: value / self.window for key, value in self.running.items()}
        speed = self.window / max(time.perf_counter() - self.window_start, 1e-9)
        self.history.append({"iteration": iteration, "seconds": round(elapsed, 3), **means})
        shown = " | ".join(f"{k} {v:.4f}" for k, v in means.items())
        self.log(f"[{self.name}] {self.unit} {iteration}/{self.iterations} | {shown}"
                 + (f" | {speed:.2f} it/s" if self.speed else ""))
        if self.tracker is not None:
            self.tracker.log_metrics({f"train_{k}": v for k, v in means.items()}, step=iteration)
        self._new_window()


class Checkpoint:
    """A loop's resumable state at `path`: the parameters of `modules` (saved under their keys), the
    optimizer's state ({} without one: TRPO keeps none), the loop's generator and torch's global one
    (algorithms draw noise, mini-batches and augmentations from it), the history and the training
    seconds. Saved atomically; resumed only by a run of the same config hash, so that a rerun ends
    with exactly the parameters of an uninterrupted run."""

    def __init__(self, path: Path, digest: str, config: dict, modules: dict[str, torch.nn.Module],
                 optimizer: torch.optim.Optimizer | None, generator: torch.Generator):
        self.path, self.digest, self.config = path, digest, config
        self.modules, self.optimizer, self.generator = modules, optimizer, generator
        self.window: dict | None = None  # the resumed run's open progress window (Progress(window=...))
        self.cpu_before = 0.0  # CPU seconds of the earlier slices of this training

    def cpu_seconds(self) -> float:
        """CPU seconds of this training so far, over all its slices (every thread of each process)."""
        return round(self.cpu_before + time.process_time(), 3)

    def resume(self, device: torch.device, log: Callable[[str], None], name: str) -> tuple[int, list[dict], float]:
        """(iteration, history, training seconds) to continue from, the state loaded; (0, [], 0.0) afresh."""
        state = read_checkpoint(self.path, device, log)
        if state is None:
            return 0, [], 0.0
        if state.get("config_hash") != self.digest:
            log(f"ignoring {self.path}: it belongs to other settings")
            return 0, [], 0.0
        for key, module in self.modules.items():
            module.load_state_dict(state[key])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.window, self.cpu_before = state.get("window"), state.get("cpu_seconds", 0.0)
        log(f"resuming {name} from iteration {state['iteration']}")
        return state["iteration"], state["history"], state["train_seconds"]

    def save(self, iteration: int, history: list[dict], elapsed: float, progress: Progress | None = None) -> None:
        _atomic_save({"config_hash": self.digest, "config": self.config, "iteration": iteration,
                      **{key: module.state_dict() for key, module in self.modules.items()},
                      "optimizer": {} if self.optimizer is None else self.optimizer.state_dict(),
                      "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                      "history": history, "train_seconds": elapsed, "cpu_seconds": self.cpu_seconds(),
                      "window": None if progress is None else progress.window_state()}, self.path)

    def end_iteration(self, iteration: int, iterations: int, every: int, history: list[dict], elapsed: float,
                      progress: Progress, before_save: Callable[[], None] | None = None) -> None:
        """After each iteration: the checkpoint every `every` iterations and at the last (`before_save`
        first); when a stop is requested (STOP) before the last, a checkpoint now and SliceEnded."""
        regular = iteration % every == 0 or iteration == iterations
        if regular and before_save is not None:
            before_save()
        stop = None if iteration == iterations else STOP.reason()
        if regular or stop:
            self.save(iteration, history, elapsed, progress)
        if stop:
            raise SliceEnded(f"{progress.name}: {stop}; stopped after iteration {iteration} of {iterations} "
                             f"with its checkpoint at {self.path}; run the same command again to resume")


def write_model(out_dir: Path, config: dict, digest: str, module: torch.nn.Module, elapsed: float,
                iterations: int, history: list[dict], checkpoint: Checkpoint | None = None, **extra: Any) -> Path:
    """The end of a loop: ``out_dir/model.pt`` (CPU parameters and the settings that rebuild them, the
    training's provenance with its CPU seconds over all slices; `extra` entries after them) and
    ``history.json``; returns the model path."""
    from metalearn import provenance

    model_path = out_dir / "model.pt"
    device = next(iter(module.parameters()), torch.empty(0)).device
    cpu = checkpoint.cpu_seconds() if checkpoint is not None else round(time.process_time(), 3)
    _atomic_save({"format": MODEL_FORMAT, "config": config, "config_hash": digest,
                  "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                  "train_seconds": elapsed, "iterations": iterations,
                  "provenance": {**provenance.collect(device), "cpu_seconds": cpu}, **extra}, model_path)
    (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return model_path


# ----------------------------------------------------------------------------- every loop, written once
@dataclass(frozen=True)
class Cadence:
    """How often a loop writes its checkpoint and reports its progress where the benchmark's `train`
    settings do not say (`checkpoint_every`, `log_every`): one default for every loop; a family whose
    iterations are long passes its own."""

    checkpoint_every: int = 500
    log_every: int = 100

    def of(self, train: dict) -> "Cadence":
        """The cadence of a benchmark's `train` settings, these defaults where they say nothing."""
        return Cadence(train.get("checkpoint_every", self.checkpoint_every), train.get("log_every", self.log_every))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_loop(run: Run, out_dir: Path, device: torch.device, config_hash: Callable[[dict], str], *,
             modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None,
             generator: torch.Generator, iterations: int, step: Callable[[int], dict[str, float]],
             finite: Callable[[dict[str, float]], bool], update: Callable[[int, dict[str, float]], None] | None = None,
             finish: Callable[[], dict[str, Any]] | None = None, cadence: Cadence = Cadence(),
             diverged: str = "meta-loss or meta-gradient", plan: str | None = None, unit: str = "iter",
             speed: bool = True, tracked: dict[str, Any] | None = None, tracker: Tracker | None = None,
             log: Callable[[str], None] = _stderr, on_checkpoint: Callable[[int], None] | None = None) -> Path:
    """Every task family's meta-training loop: the run's config and its hash (`config_hash`, the
    family's), the checkpoint resumed (when there is something to train), the parameters logged to the
    tracker, then per iteration `step(iteration)` (the family's work, returning its metrics), the
    check `finite(metrics)` (TrainingDiverged, the last good checkpoint kept), `update(iteration,
    metrics)` (what must not happen to a diverged iteration, e.g. the optimizer's step), the progress
    window and the checkpoint (`on_checkpoint(iteration)` just before it is written); at the end
    `finish()` (its entries join the model file) and ``out_dir/model.pt`` with ``history.json``.
    `modules` are checkpointed under their keys; modules["algorithm"] is the model written."""
    config = run.config()
    digest = config_hash(config)
    cadence = cadence.of(run.train)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(out_dir / "checkpoint.pt", digest, config, modules, optimizer, generator)
    start, history, elapsed = checkpoint.resume(device, log, run.name) if iterations else (0, [], 0.0)
    if tracker is not None and start == 0:
        tracker.log_params({"benchmark": run.benchmark, "algorithm": run.algorithm, "seed": run.seed,
                            "device": str(device), **{f"train.{k}": v for k, v in run.train.items()},
                            **(tracked or {}), **{f"hp.{k}": v for k, v in run.hparams.items()}})
    log(f"training {run.algorithm} on {run.benchmark} (seed {run.seed}) on {device}: "
        + (f"{iterations} meta-iterations" if plan is None else plan))
    progress = Progress(run.name, iterations, cadence.log_every, history, log, tracker, unit=unit, speed=speed,
                        window=checkpoint.window)
    for iteration in range(start + 1, iterations + 1):
        tick = time.perf_counter()
        metrics = step(iteration)
        if not finite(metrics):
            last = max((iteration - 1) // cadence.checkpoint_every * cadence.checkpoint_every, start)
            kept = (f"the last good checkpoint (iteration {last}) is kept at {checkpoint.path}"
                    if last and checkpoint.path.exists() else "no checkpoint was written yet")
            shown = ", ".join(f"{k} {v}" for k, v in metrics.items())
            raise TrainingDiverged(f"{run.name}: {diverged} became non-finite at iteration {iteration} "
                                   f"({shown}); {kept}. Lower meta_lr or inner_lr.")
        if update is not None:
            update(iteration, metrics)
        elapsed += time.perf_counter() - tick
        progress.add(iteration, metrics, elapsed)
        # on_checkpoint first: a run killed during it resumes before it and does it again
        checkpoint.end_iteration(iteration, iterations, cadence.checkpoint_every, history, elapsed, progress,
                                 None if on_checkpoint is None else lambda: on_checkpoint(iteration))
    extra = {} if finish is None else finish()
    return write_model(out_dir, config, digest, modules["algorithm"], elapsed, iterations, history, checkpoint, **extra)


# ----------------------------------------------------------------------------- the episodes family's loop
def train(bench: Benchmark, algorithm: str, seed: int, out_dir: Path,
          device: str = "auto", tracker: Tracker | None = None, log: Callable[[str], None] = _stderr,
          on_checkpoint: Callable[[int, torch.nn.Module], None] | None = None) -> Path:
    """Meta-train and write ``out_dir/model.pt`` (+ ``history.json``); returns the model path.
    ``on_checkpoint(iteration, algorithm)`` runs just before each checkpoint is written (e.g. a validation,
    metalearn.studies); it must leave the algorithm and the random state as it found them."""
    dev = pick_device(device)
    run = Run.of(bench, algorithm, seed)
    cfg = run.train
    algo = build(run, dev)
    # Adam's eps: torch's default, or the algorithm's own (`meta_adam_eps`: the iMAML code's outer Adam
    # uses 1e-3, aravindr93/imaml_dev implicit_maml/learner_model.py)
    optimizer = torch.optim.Adam(algo.parameters(), lr=cfg["meta_lr"], eps=run.hparams.get("meta_adam_eps", 1e-8))
    generator = torch.Generator().manual_seed(seed)
    sampler = benchmarks.train_sampler(bench, generator, dev)

    def step(iteration: int) -> dict[str, float]:
        tasks = sampler.sample(cfg["meta_batch"])
        optimizer.zero_grad(set_to_none=True)
        return algo.meta_step(tasks)

    def update(iteration: int, metrics: dict[str, float]) -> None:
        clip_meta_grad(algo, cfg.get("clip_meta_grad"))
        optimizer.step()

    # preprocessing: how images reach the network, for `metalearn adapt` on the user's own images
    return run_loop(run, out_dir, dev, config_hash, modules={"algorithm": algo}, optimizer=optimizer,
                    generator=generator, iterations=run.iterations, step=step, update=update,
                    finite=lambda metrics: math.isfinite(metrics["loss"]) and _all_finite(algo),
                    finish=lambda: {"preprocessing": preprocessing_for(run.config()["settings"])},
                    tracker=tracker, log=log,
                    on_checkpoint=None if on_checkpoint is None else lambda iteration: on_checkpoint(iteration, algo))


CHECKPOINT_KEYS = ("config_hash", "iteration", "algorithm", "optimizer", "generator", "torch_rng", "history",
                   "train_seconds")


def read_checkpoint(path: Path, device: torch.device, log: Callable[[str], None]) -> dict | None:
    """The checkpoint at `path`, or None when there is none; an unreadable one (truncated by a full
    disk, ...) is set aside as ``checkpoint.pt.corrupt`` (never deleted) so training restarts cleanly."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        problem = None if isinstance(state, dict) and all(k in state for k in CHECKPOINT_KEYS) else \
            "not a training checkpoint"
    except Exception as exc:  # torch raises several types (RuntimeError, OSError, EOFError, pickle errors)
        problem = f"unreadable (truncated or foreign; torch.load: {type(exc).__name__})"
    if problem is None:
        return state
    aside = path.with_name(path.name + ".corrupt")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.corrupt{number}")
    os.replace(path, aside)
    log(f"warning: {path} is {problem}; moved it to {aside} and training starts from iteration 0")
    return None


def _describe(saved: Any) -> str | None:
    """What a torch file that is not a model is, when it is one of metalearn's other files."""
    if not isinstance(saved, dict):
        return f"holds a {type(saved).__name__}, not a metalearn model"
    if "optimizer" in saved and "iteration" in saved:
        return "is a training checkpoint, not a model: pass the model.pt that training writes beside it when it ends"
    if "settings" in saved and ("test" in saved or "val" in saved):
        return "is a file of saved episodes (`metalearn split`), not a model"
    if "images" in saved or "shape" in saved:
        return "is a prepared data set, not a model"
    return None


def read_model_file(path: Path) -> dict:
    """A model file's record, checked: every problem is a BadFile naming the file and what to do."""
    path = Path(path)
    retrain = "train it again (`metalearn train`) or pass another model.pt"
    if path.is_dir():
        raise BadFile(f"{path}: a folder, not a model file; pass {path / 'model.pt'}")
    if not path.exists():
        raise BadFile(f"{path}: no such model file; {retrain}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (RuntimeError, EOFError, UnpicklingError, ...)
        # (torch's own message is left out: it suggests weights_only=False, i.e. running the file's code)
        raise BadFile(f"{path}: not a readable model file (truncated, or not written by `metalearn train`; "
                      f"torch.load: {type(exc).__name__}); {retrain}") from None
    kind = _describe(saved)
    if kind is None and saved.get("format") != MODEL_FORMAT:
        kind = (f"has model format {saved.get('format')!r}; this version of metalearn reads format {MODEL_FORMAT}"
                if "format" in saved else "is not a metalearn model (no format)")
    if kind is None:
        config = saved.get("config")
        fields = {"benchmark": str, "algorithm": str, "seed": int, "settings": dict, "hparams": dict}
        if not isinstance(config, dict) or any(not isinstance(config.get(k), t) for k, t in fields.items()) \
                or not isinstance(saved.get("state_dict"), dict):
            kind = "lacks its settings (config) or its parameters (state_dict)"
    if kind is not None:
        raise BadFile(f"{path}: {kind}; {retrain}")
    return saved


def load_model(path: Path, device: str = "auto", saved: dict | None = None):
    """(algorithm, saved record) from a model file written by `train`; no pickled code is loaded.
    `saved`: the file's record when the caller has read it already (read_model_file)."""
    dev = pick_device(device)
    saved = read_model_file(path) if saved is None else saved
    config = saved["config"]
    try:
        algo = build(Run.of_config(config), dev)
        algo.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BadFile(f"{path}: its settings or parameters do not make a {config['algorithm']} model "
                      f"({type(exc).__name__}: {str(exc)[:300]}); train it again (`metalearn train`)") from None
    return algo, saved
