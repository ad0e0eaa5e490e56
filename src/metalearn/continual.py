"""WarpGrad's continual-learning experiment (Flennerhag et al., ICLR 2020, "Meta-Learning with Warped
Gradient Descent", its continual-learning section and appendix). The official repository
(flennerhag/warpgrad) has no code for it. The section itself could not be read from this project's
stored copies of the paper (only its abstract and introduction): the protocol below follows the
issue's description of it (#16) and our reading of the paper, and every choice left open is written
down (docs/protocols.md#continual-learning-warpgrad).

The protocol:
  - A task is a *sequence* of T regression sub-tasks on one input interval: MAML's sinusoid regression
    (x in [-5, 5]) with the interval cut into T = 5 consecutive pieces; sub-task t is the task's
    function on piece t. The learner sees the sub-tasks one after another, never an earlier one again.
  - The task learner is a feed-forward network with warp layers interleaved (a 4-layer network).
    It takes K = 20 gradient steps on each sub-task, T * K = 100 steps in all.
  - What is meta-learned: the warp layers only. The initialisation is a fixed random one (as we read
    the paper: fixed, to isolate what the warp parameters do), not meta-learned.
  - The meta-objective at a point theta of the learner's trajectory while it learns sub-task t is the
    loss on the current *and every earlier* sub-task (1..t) after one warped step on sub-task t: it
    rewards warps whose steps on the current sub-task do not undo the earlier ones (no forgetting),
    and it never looks at a sub-task the learner has not seen yet.
  - Compared against: the same network trained by plain SGD without warp layers, from the same
    initialisation, with the same step size (the paper's baseline: catastrophic forgetting).
  - Reported: the loss on each sub-task as learning proceeds (forgetting curves), averaged over test
    task sequences.

Left open (or not known to us), and the choice made here (a benchmark setting wherever it is a number):
  - target functions: MAML's sinusoid y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi]
    (data/episodes.py SINUSOID); one sinusoid per task sequence;
  - sub-intervals: `subtasks` equal pieces of MAML's [-5, 5]; x drawn uniformly in each piece;
  - data per sub-task: `shots` training points (every step is a full-batch step on them) and
    `queries` held-out points for the meta-objective (meta-training), `eval_queries` for the test
    sequences' curves; fresh points for every meta-training sequence;
  - network: MLP 1 -> `hidden` -> 1 with ReLU (default three hidden layers of 40: "4 layers"), a
    linear warp layer Omega h + b after each hidden layer's ReLU, starting at the identity
    (algorithms/warpgrad.py `warp_layers`, `WarpedNetwork`: the project's warp layers, so an
    untrained warp is exactly plain SGD);
  - the initialisation: the network's seeded PyTorch initialisation (seed = the run's seed), the same
    for every task sequence and for WarpGrad and SGD;
  - the step size alpha (`inner_lr`, per method; the same for both in params.yaml) and plain SGD
    steps (no momentum);
  - the meta-objective's form: the mean of the query losses of sub-tasks 1..t (equal point counts, so
    the loss on their union), after one differentiable step on sub-task t's training points from the
    buffered point theta (a constant: no backpropagation through the trajectory, as WarpGrad's
    Algorithm 2); `first_order: true` drops the step (the losses at theta);
  - meta-training: Algorithm 2 (offline): each sequence is learned with the warps fixed, `snapshots`
    trajectory points (evenly spaced over the T * K steps, theta_0 first; default all) are buffered,
    and the meta-gradient is the mean over the meta-batch's buffered points; Adam (train.meta_lr)
    takes one step per meta-iteration (the paper's meta-optimiser and budget: not known to us);
  - evaluation: the saved test sequences (`test_tasks`, drawn once from `episode_seed`), each learned
    from the fixed initialisation; after every step (and before the first) the MSE on every
    sub-task's `eval_queries` held-out points is recorded; the summary score (`mse`) is the mean over
    the T sub-tasks after the last step, i.e. what is left of all of them at the end.

Pipeline: `metalearn split` (make_episodes), `metalearn train` (train: WarpGrad meta-trains its warps;
`sgd` has nothing to meta-learn and saves its initialisation), `metalearn evaluate` (evaluate: the
standard evaluation record, its `per_episode` the final mean MSE, plus the curves under `continual`)
dispatch here for benchmarks with `task: continual` (metalearn.families); the report's `<benchmark>-continual.png` is
`plot_forgetting`.
"""
from __future__ import annotations

import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalearn.algorithms.base import detached
from metalearn.algorithms.warpgrad import WarpedNetwork, snapshot_steps, warp_layers
from metalearn.config import Run
from metalearn.errors import BadFile, BadInput
from metalearn.data.episodes import SINUSOID, save_episodes
from metalearn.models import MLP
from metalearn.tasks import Params

METHODS = ("warpgrad", "sgd")
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the task family
@dataclass
class Sequences:
    """A batch of task sequences: support/query inputs and targets [sequences, T, points, 1]."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    @property
    def subtasks(self) -> int:
        return self.support_x.shape[1]

    def support(self, i: int, t: int) -> tuple[Tensor, Tensor]:
        return self.support_x[i, t], self.support_y[i, t]

    def query(self, i: int, t: int) -> tuple[Tensor, Tensor]:
        return self.query_x[i, t], self.query_y[i, t]

    def queries_up_to(self, i: int, t: int) -> tuple[Tensor, Tensor]:
        """The held-out points of sub-tasks 0..t together (equal counts: their mean loss is the mean
        of the sub-tasks' losses)."""
        return self.query_x[i, :t + 1].flatten(0, 1), self.query_y[i, :t + 1].flatten(0, 1)

    def to(self, device) -> "Sequences":
        return Sequences(*(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y)))


def subintervals(bench: dict) -> list[tuple[float, float]]:
    """The T consecutive, equal pieces of the input interval (MAML's), in the order they are learned."""
    low, high = SINUSOID["x"]
    width = (high - low) / bench["subtasks"]
    return [(low + t * width, low + (t + 1) * width) for t in range(bench["subtasks"])]


def draw_sequences(bench: dict, count: int, points: int, generator: torch.Generator) -> dict[str, Tensor]:
    """`count` task sequences: one sinusoid each (amplitude, phase) and `points` x values in each
    sub-interval, [count, T, points]; every draw from `generator`, in a fixed order."""
    def uniform(shape, bounds):
        return torch.rand(*shape, generator=generator) * (bounds[1] - bounds[0]) + bounds[0]

    amplitude = uniform((count, 1, 1), SINUSOID["amplitude"])
    phase = uniform((count, 1, 1), SINUSOID["phase"])
    x = torch.stack([uniform((count, points), piece) for piece in subintervals(bench)], dim=1)
    return {"amplitude": amplitude, "phase": phase, "x": x}


def sequences_from(drawn: dict[str, Tensor], shots: int) -> Sequences:
    """Support: the first `shots` points of each sub-task; query: the rest."""
    x = drawn["x"]
    y = drawn["amplitude"] * torch.sin(x - drawn["phase"])
    x, y = x.unsqueeze(-1), y.unsqueeze(-1)
    return Sequences(x[:, :, :shots], y[:, :, :shots], x[:, :, shots:], y[:, :, shots:])


class SequenceSampler:
    """Meta-training sequences, fresh from `generator` (seeded by the run's seed) every call."""

    def __init__(self, bench: dict, generator: torch.Generator, device: torch.device):
        self.bench, self.generator, self.device = bench, generator, device

    def sample(self, count: int) -> Sequences:
        drawn = draw_sequences(self.bench, count, self.bench["shots"] + self.bench["queries"], self.generator)
        return sequences_from(drawn, self.bench["shots"]).to(self.device)


EPISODE_SETTINGS = ("task", "subtasks", "shots", "eval_queries", "episode_seed", "val_tasks", "test_tasks")


def episode_settings(bench: dict) -> dict:
    """What the saved validation/test sequences depend on (stored with them, checked on use)."""
    return {k: bench[k] for k in EPISODE_SETTINGS}


def make_eval_sequences(bench: dict) -> dict[str, Any]:
    """{'val', 'test'}: the saved sequences, drawn once from `episode_seed` (deterministic), plus settings."""
    generator = torch.Generator().manual_seed(bench["episode_seed"])
    saved: dict[str, Any] = {"settings": episode_settings(bench)}
    for split, count in (("val", bench["val_tasks"]), ("test", bench["test_tasks"])):
        saved[split] = draw_sequences(bench, count, bench["shots"] + bench["eval_queries"], generator)
    return saved


def make_episodes(params: dict, bench_name: str) -> Path:
    from metalearn.benchmarks import episodes_path

    path = episodes_path(params, bench_name)
    save_episodes(make_eval_sequences(params["benchmarks"][bench_name]), path)
    return path


def eval_sequences(params: dict, bench_name: str, split: str, device) -> Sequences:
    """The saved sequences of `split`, checked against the benchmark's settings."""
    from metalearn.benchmarks import read_current_episodes

    bench = params["benchmarks"][bench_name]
    saved = read_current_episodes(params, bench_name, episode_settings(bench))
    return sequences_from(saved[split], bench["shots"]).to(device)


# ----------------------------------------------------------------------------- the learner
class Learner(nn.Module):
    """The task learner: a fixed initialisation theta_0 (`model`, never meta-learned) and, for
    WarpGrad, warp layers phi (`warp`: its only meta-parameters). `sgd`: the same network without
    warp layers. Task parameters theta are a dict of the network's parameter names."""

    def __init__(self, method: str, bench: dict, hparams: dict[str, Any], seed: int):
        super().__init__()
        if method not in METHODS:
            raise BadInput(f"{method!r} is not a continual-learning method; use one of {list(METHODS)}")
        self.method = method
        torch.manual_seed(seed)  # the fixed random initialisation, the same for every method
        self.model = MLP(1, tuple(bench["hidden"]), 1).requires_grad_(False)
        self.inner_lr = float(hparams["inner_lr"])
        self.first_order = bool(hparams.get("first_order", False))
        self.warp = warp_layers(self.model) if method == "warpgrad" else None
        # the network the steps run through; not registered again (its parameters are model's and warp's)
        self.__dict__["network"] = WarpedNetwork(self.model, self.warp) if self.warp is not None else self.model

    def initial(self) -> Params:
        return detached(dict(self.model.named_parameters()))

    def predict(self, theta: Params, x: Tensor) -> Tensor:
        names = {f"task.{k}": v for k, v in theta.items()} if self.warp is not None else theta
        return functional_call(self.network, names, (x,))  # warp parameters: the live phi

    def loss(self, theta: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        return F.mse_loss(self.predict(theta, data[0]), data[1])

    def step(self, theta: Params, data: tuple[Tensor, Tensor], create_graph: bool = False) -> Params:
        """theta - alpha grad_theta L(theta; phi): one (warped) gradient step on `data`."""
        grads = torch.autograd.grad(self.loss(theta, data), list(theta.values()), create_graph=create_graph)
        new = {k: p - self.inner_lr * g for (k, p), g in zip(theta.items(), grads)}
        return new if create_graph else detached(new)

    def meta_parameters(self) -> list[nn.Parameter]:
        return [] if self.warp is None else list(self.warp.parameters())


def learn_sequence(learner: Learner, seqs: Sequences, i: int, steps: int,
                   visit: Callable[[int, int, Params], None] | None = None) -> Params:
    """Learn sequence i's sub-tasks in order, `steps` steps each, from theta_0; `visit(t, k, theta)`
    sees the point before each step (k counts all steps) and once more after the last (t = T - 1)."""
    theta = learner.initial()
    for t in range(seqs.subtasks):
        for j in range(steps):
            if visit is not None:
                visit(t, t * steps + j, theta)
            theta = learner.step(theta, seqs.support(i, t))
    if visit is not None:
        visit(seqs.subtasks - 1, seqs.subtasks * steps, theta)
    return theta


# ----------------------------------------------------------------------------- the meta-objective
def meta_objective(learner: Learner, theta: Params, seqs: Sequences, i: int, t: int) -> Tensor:
    """J at a trajectory point theta (a constant) while sub-task t is learned: one differentiable step
    on sub-task t's training points, then the mean query loss of the current and earlier sub-tasks
    0..t (first_order: the losses at theta). Never a later sub-task: the learner has not seen it."""
    theta = detached(theta)
    if not learner.first_order:
        theta = learner.step(theta, seqs.support(i, t), create_graph=True)
    return learner.loss(theta, seqs.queries_up_to(i, t))


def meta_gradient(learner: Learner, seqs: Sequences, steps: int, snapshots: int) -> dict[str, float]:
    """Algorithm 2 over a meta-batch of sequences: learn each with phi fixed, buffering `snapshots`
    trajectory points (with the sub-task each belongs to); then add the gradient of the mean J over
    all buffered points to the warp parameters' .grad. Returns the mean J (`loss`) and the mean final
    query loss over the sub-tasks (`final_loss`)."""
    phi = learner.meta_parameters()
    keep = snapshot_steps(seqs.subtasks * steps, snapshots)
    buffer: list[tuple[int, int, Params]] = []
    finals = []
    for i in range(len(seqs)):
        def remember(t: int, k: int, theta: Params, i=i) -> None:
            if k in keep:
                buffer.append((i, t, {n: p.detach() for n, p in theta.items()}))
        theta = learn_sequence(learner, seqs, i, steps, remember)
        with torch.no_grad():
            finals.append(learner.loss(theta, seqs.queries_up_to(i, seqs.subtasks - 1)).item())
    total, grads = 0.0, [torch.zeros_like(p) for p in phi]
    for i, t, theta in buffer:
        value = meta_objective(learner, theta, seqs, i, t)
        for g, d in zip(grads, torch.autograd.grad(value, phi)):
            g += d
        total += value.item()
    for p, g in zip(phi, grads):
        p.grad = g / len(buffer) if p.grad is None else p.grad + g / len(buffer)
    return {"loss": total / len(buffer), "final_loss": sum(finals) / len(finals)}


# ----------------------------------------------------------------------------- evaluation
def forgetting_curve(learner: Learner, seqs: Sequences, i: int, steps: int) -> Tensor:
    """[T * steps + 1, T]: the query MSE on every sub-task before each step and after the last."""
    rows: list[Tensor] = []

    x, y = seqs.query_x[i], seqs.query_y[i]  # [T, points, 1]

    def record(t: int, k: int, theta: Params) -> None:
        with torch.no_grad():  # every sub-task's points in one forward pass, then each one's MSE
            errors = (learner.predict(theta, x.flatten(0, 1)).view_as(y) - y) ** 2
            rows.append(errors.mean(dim=(1, 2)))

    learn_sequence(learner, seqs, i, steps, record)
    return torch.stack(rows)


# ----------------------------------------------------------------------------- training and files
def source_files(method: str) -> list[Path]:
    """The files whose edits change a continual run: this module, models.py and WarpGrad's files
    (warp layers; algorithms.source_files, for either method: both run through this module)."""
    from metalearn import algorithms, models

    files = [Path(inspect.getsourcefile(sys.modules[__name__])).resolve(),
             Path(inspect.getsourcefile(models)).resolve()]
    return files + [p for p in algorithms.source_files("warpgrad") if p not in files]


def config_hash(config: dict) -> str:
    from metalearn.train import settings_digest

    return settings_digest(config, source_files(config["algorithm"]))


def build_learner(bench: dict, method: str, hparams: dict, seed: int, device) -> Learner:
    return Learner(method, bench, hparams, seed).to(device)


def train(params: dict, bench_name: str, method: str, seed: int, out_dir: Path, device: str = "auto",
          tracker=None, log: Log = _stderr) -> Path:
    """Meta-train WarpGrad's warp layers (the loop of metalearn.train, resumable); `sgd` has nothing to
    learn and saves its initialisation. Writes out_dir/model.pt and history.json."""
    from metalearn.train import pick_device, run_loop

    dev = pick_device(device)
    run = Run.of(params, bench_name, method, seed)
    bench, cfg, hparams = run.settings, run.train, run.hparams
    learner = build_learner(bench, method, hparams, seed, dev)
    phi = learner.meta_parameters()
    optimizer = torch.optim.Adam(phi, lr=cfg["meta_lr"]) if phi else None
    generator = torch.Generator().manual_seed(seed)
    sampler = SequenceSampler(bench, generator, dev)
    steps = bench["steps_per_subtask"]
    snapshots = hparams.get("snapshots", bench["subtasks"] * steps)  # default: every trajectory point
    iterations = run.iterations if phi else 0  # sgd: no checkpoint either

    def step(iteration: int) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        return meta_gradient(learner, sampler.sample(cfg["meta_batch"]), steps, snapshots)

    return run_loop(run, out_dir, dev, config_hash, modules={"algorithm": learner}, optimizer=optimizer,
                    generator=generator, iterations=iterations, step=step,
                    finite=lambda metrics: math.isfinite(metrics["loss"]) and all(
                        bool(torch.isfinite(p.grad).all()) for p in phi),
                    update=lambda iteration, metrics: optimizer.step(), speed=False,
                    plan=f"{iterations} meta-iterations"
                    + ("" if phi else " (no meta-parameters: the fixed initialisation is the model)"),
                    tracker=tracker, log=log)


def load_learner(saved: dict, model_path: Path, device) -> Learner:
    config = saved["config"]
    try:
        learner = build_learner(config["settings"], config["algorithm"], config["hparams"], config["seed"], device)
        learner.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BadFile(f"{model_path}: its settings or parameters do not make a continual {config['algorithm']} "
                      f"learner ({type(exc).__name__}: {str(exc)[:300]}); train it again (`metalearn train`)") from None
    return learner


def evaluate(params: dict, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
             steps: int | None = None, log: Log = _stderr) -> dict:
    """The evaluation record of metalearn.evaluate for a continual model: `per_episode` is each test
    sequence's final MSE averaged over its sub-tasks; `continual` holds the forgetting curves (mean
    and 95% CI over sequences of the MSE on each sub-task before each step and after the last), each
    sub-task's MSE right after it was learned and at the end, per sequence."""
    from metalearn.stats import mean_ci95
    from metalearn.train import pick_device

    if steps is not None:
        raise BadInput("--steps: a continual benchmark learns each sub-task for its steps_per_subtask "
                       "(params.yaml); leave --steps out")
    config = saved["config"]
    bench_name = config["benchmark"]
    bench = params["benchmarks"][bench_name]
    dev = pick_device(device)
    learner = load_learner(saved, model_path, dev)
    seqs = eval_sequences(params, bench_name, split, dev)
    per_step = bench["steps_per_subtask"]
    T = seqs.subtasks
    curves = []
    for i in range(len(seqs)):
        curves.append(forgetting_curve(learner, seqs, i, per_step))
        if (i + 1) % 50 == 0:
            log(f"[evaluate {bench_name}/{config['algorithm']}/seed{config['seed']}] {i + 1} sequences")
    curves = torch.stack(curves).double().cpu()  # [sequences, T * steps + 1, T]
    final = curves[:, -1, :]  # [sequences, T]
    learned = torch.stack([curves[:, (t + 1) * per_step, t] for t in range(T)], dim=1)  # right after sub-task t
    values = final.mean(1).tolist()
    mean, ci95 = mean_ci95(values)
    stats = [[mean_ci95(curves[:, k, s].tolist()) for s in range(T)] for k in range(curves.shape[1])]
    return {"benchmark": bench_name, "algorithm": config["algorithm"], "seed": config["seed"], "split": split,
            "ways": None, "shots": bench["shots"], "metric": "mse", "mean": mean, "ci95": ci95,
            "episodes": len(values), "inner_steps": T * per_step, "iterations": saved.get("iterations"),
            "train_seconds": saved["train_seconds"], "per_episode": values,
            "continual": {"subtasks": T, "steps_per_subtask": per_step,
                          "curve_mean": [[m for m, _ in row] for row in stats],
                          "curve_ci95": [[c for _, c in row] for row in stats],
                          "per_episode_learned": learned.tolist(), "per_episode_final": final.tolist()}}


# ----------------------------------------------------------------------------- CLI and tracking

# ----------------------------------------------------------------------------- the figure
def plot_forgetting(results: list[dict], title: str, path: Path) -> Path:
    """One panel per method: the test MSE on each sub-task against the steps taken, from the step its
    learning starts (seeds averaged); dotted lines mark the sub-task boundaries. A curve that rises
    after its sub-task ends is forgetting."""
    from metalearn.report import _save, plt

    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["algorithm"], []).append(r)
    methods = sorted(by_method, key=lambda m: (m != "sgd", m))
    fig, axes = plt.subplots(1, max(len(methods), 1), figsize=(5 * max(len(methods), 1), 3.8),
                             squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        runs = by_method[method]
        info = runs[0]["continual"]
        T, per_step = info["subtasks"], info["steps_per_subtask"]
        mean = torch.tensor([r["continual"]["curve_mean"] for r in runs]).mean(0)  # [steps + 1, T]
        for t in range(T):
            xs = list(range(t * per_step, mean.shape[0]))
            ax.plot(xs, mean[t * per_step:, t].tolist(), color=f"C{t}", label=f"sub-task {t + 1}")
        for t in range(1, T):
            ax.axvline(t * per_step, color="grey", lw=0.8, ls=":")
        final = sum(r["mean"] for r in runs) / len(runs)
        ax.set(title=f"{method}: final mean MSE {final:.3g}", xlabel="steps (sub-tasks learned in order)",
               yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test MSE on the sub-task")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{title}: loss on each sub-task as learning proceeds (forgetting curves)")
    return _save(fig, path)
