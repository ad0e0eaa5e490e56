"""Meta-training of an RL benchmark: metalearn.train's loop, with TRPO in place of Adam.

The same contract as the supervised loop (metalearn/train.py, whose checkpoint and model-file
helpers this reuses): every `checkpoint_every` iterations the state (policy, task-and-noise
generator, torch's generator, history, elapsed time) is written atomically; a rerun resumes from
it and ends with exactly the parameters of an uninterrupted run. TRPO keeps no optimiser state; the
pretrained baseline's opt-in Adam (`optimizer: adam`, metarl.py) does, and it is checkpointed.

Model selection (`train.keep_best`, opt-in; the paper profile): the MAML paper's Appendix A.2, "the
model with the best average return during training was used for evaluation". With it, the model file
holds the parameters whose meta-iteration had the best post-update training return (`return_after`:
the mean over the meta-batch of the return after the inner steps, measured on the rollouts sampled with
those parameters, i.e. before that iteration's TRPO step), not the last ones; `best_iteration` in the
model file says which. The official evaluation loaded hand-picked snapshots instead (maml_rl
test_maml_*.py, e.g. itr_475.pkl of 800 meta-iterations, saved every 25), each taken after its
iteration's update.
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Callable

import torch

from torch import nn

from metalearn import dependencies
from metalearn.config import Benchmark, Run
from metalearn.rl.envs import sample_tasks
from metalearn.rl.metarl import MetaRL
from metalearn.train import Cadence, Tracker, run_loop

TRPO_DEFAULTS = {"max_kl": 0.01, "cg_iters": 10, "damping": 1e-5, "backtrack_ratio": 0.8, "max_backtracks": 15}


# The files whose edits change an RL run's result (the config hash and the pipeline use them): every
# method's, since metalearn/rl runs them all
source_files = dependencies.rl_files


def config_hash(config: dict) -> str:
    from metalearn.train import settings_digest

    return settings_digest(config, source_files())


def build(config: dict) -> MetaRL:
    """The learner of a run's config (run_config), with its seeded initialisation."""
    torch.manual_seed(config["seed"])
    return MetaRL(config["algorithm"], config["settings"], config["hparams"])


def trpo_settings(settings: dict) -> dict:
    return {**TRPO_DEFAULTS, **(settings.get("trpo") or {})}


class Best(nn.Module):
    """The parameters with the best post-update training return so far and their iteration (0: none
    yet, the initial ones), a module so that the checkpoint saves it and a resumed run selects the same."""

    def __init__(self, learner: MetaRL):
        super().__init__()
        self.learner = copy.deepcopy(learner)
        self.register_buffer("best_return", torch.tensor(-math.inf, dtype=torch.float64))
        self.register_buffer("iteration", torch.tensor(0))

    def offer(self, iteration: int, score: float, state: dict[str, torch.Tensor]) -> None:
        """Keep `state` (the learner's parameters that earned `score`) if it beats the best so far."""
        if score > self.best_return:
            self.learner.load_state_dict(state)
            self.best_return.fill_(score)
            self.iteration.fill_(iteration)


def train(benchmark: Benchmark, algorithm: str, seed: int, out_dir: Path,
          device: str = "cpu", tracker: Tracker | None = None,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Path:
    """Meta-train and write ``out_dir/model.pt`` (+ ``history.json``); returns the model path.
    `device` is accepted for the supervised loop's signature: RL runs on the CPU (environments and
    small policies; the cost is in sequential steps, not in arithmetic)."""
    run = Run.of(benchmark, algorithm, seed)
    bench, cfg = run.settings, run.train
    learner = build(run.config())
    generator = torch.Generator().manual_seed(seed)
    trpo = trpo_settings(bench)
    # no optimizer for TRPO (it keeps no state between steps); the official Adam keeps its moments
    # (torch's Adam at TF's defaults, lr 1e-3: TF adds epsilon outside the bias correction, i.e. its
    # 1e-8 is torch's 1e-8 * sqrt(1 - beta2^t), a difference only for gradients near 1e-8)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3) if learner.optimizer == "adam" else None
    best = Best(learner) if cfg.get("keep_best", False) else None
    modules = {"algorithm": learner} if best is None else {"algorithm": learner, "best": best}
    before: dict = {}  # the parameters that sample an iteration's rollouts, and so earn its return_after

    def step(iteration: int) -> dict[str, float]:
        goals = sample_tasks(bench, cfg["meta_batch"], generator)
        before["state"] = None if best is None else {k: v.detach().clone() for k, v in learner.state_dict().items()}
        return learner.meta_step(goals, generator, trpo, optimizer)

    def update(iteration: int, metrics: dict[str, float]) -> None:
        if best is not None:
            best.offer(iteration, metrics["return_after"], before["state"])

    def finish() -> dict:
        if best is None:
            return {}
        if int(best.iteration) > 0:
            learner.load_state_dict(best.learner.state_dict())
            log(f"{run.name}: keeping the parameters of iteration {int(best.iteration)} "
                f"(best post-update training return {float(best.best_return):.4f})")
        return {"best_iteration": int(best.iteration)}

    return run_loop(run, out_dir, torch.device("cpu"), config_hash, modules=modules, optimizer=optimizer,
                    generator=generator, iterations=run.iterations if learner.trains else 0,  # random: not trained
                    step=step, update=update, finish=finish,
                    finite=lambda metrics: all(math.isfinite(v) for v in metrics.values()) and all(
                        bool(torch.isfinite(p).all()) for p in learner.parameters()),
                    diverged="a metric or the parameters", cadence=Cadence(checkpoint_every=50, log_every=10),
                    tracked={f"trpo.{k}": v for k, v in trpo.items()}, tracker=tracker, log=log)


def load_model(saved: dict) -> MetaRL:
    """The learner of a model file's record (metalearn.train.read_model_file checked it)."""
    learner = build(saved["config"])
    learner.load_state_dict(saved["state_dict"])
    return learner
