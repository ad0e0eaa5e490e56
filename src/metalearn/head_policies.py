"""The output layer's starting point when a trained model meets a task (#36): the head policies of
`metalearn adapt` (adapt.py) and `metalearn evaluate --head` (episodic.py), one implementation for both.

  trained  the meta-learned head (needs the training's number of classes)
  zero     one output per class, weights and bias zero: every class scores alike until the steps
  proto    set from the support set's features (heads.py: weight 2 c_k, bias -||c_k||^2), then the steps
  auto     trained at the training's number of classes, else proto (zero for T-nets and MT-nets): on the
           heads profile's within-alphabet 20-way tasks a 5-way model scored far better from the
           prototype head than from the zero head (the records' table: docs/results/heads.md)
Algorithms that build their head from each task's support set (`head_from_support`: protomaml,
foprotomaml) always get proto; T-nets and MT-nets (T after the head) cannot take proto.

Below adapt.py and episodic.py, so that neither imports the other (adapt.py reaches the tracking
layer for MLflow models, which sits above the task families).
"""
from __future__ import annotations

import torch
from torch import Tensor

from metalearn import benchmarks
from metalearn.algorithms import ALGORITHMS, Algorithm, build_algorithm
from metalearn.algorithms.base import detached
from metalearn.algorithms.mtnet import TNet
from metalearn.heads import with_prototype_head
from metalearn.tasks import Params, TaskBatch

HEAD = ("model.head.weight", "model.head.bias")  # the output layer's entries in an algorithm's state
HEAD_POLICIES = ("auto", "trained", "zero", "proto")


class AdaptError(ValueError):
    """Input the adaptation cannot use (folders, images, model), with what to change."""


def head_policy(saved: dict, ways: int, head: str = "auto") -> str:
    """The head policy a saved model gets for `ways` classes under `head` (HEAD_POLICIES): `auto` is
    `trained` at the training's number of classes, else `proto` (`zero` where proto cannot apply: T-nets
    and MT-nets); algorithms that build their head from the support set always get `proto`. An
    AdaptError when the policy cannot apply."""
    if head not in HEAD_POLICIES:
        raise AdaptError(f"head policy must be one of {HEAD_POLICIES}, not {head!r}")
    config = saved["config"]
    settings = config["settings"]
    trained_ways = settings.get("ways")
    if trained_ways is None:
        raise AdaptError(f"{config['benchmark']} is not a classification benchmark: nothing to adapt to folders of images")
    cls = ALGORITHMS.get(config["algorithm"], Algorithm)  # (an unknown name: build_algorithm says so below)
    if getattr(cls, "head_from_support", False):  # protomaml: its own adaptation builds the head
        if head in ("trained", "zero"):
            raise AdaptError(f"{config['algorithm']} sets its head from the support set in every task: "
                             f"--head {head} does not apply (use auto or proto)")
        head = "proto"
    if head == "trained" and ways != trained_ways:
        raise AdaptError(f"the trained head has {trained_ways} outputs and the support has {ways} classes; "
                         "use --head zero, proto (or auto)")
    if head == "proto" and issubclass(cls, TNet):
        raise AdaptError(f"{config['algorithm']} transforms the head's outputs (its T follows the head): "
                         "a prototype head does not apply; use --head trained, zero (or auto)")
    if head == "auto":
        return "trained" if ways == trained_ways else ("zero" if issubclass(cls, TNet) else "proto")
    return head


def adapted_algorithm(saved: dict, ways: int, head: str = "auto", device: str = "auto") -> tuple[Algorithm, str]:
    """The saved algorithm rebuilt for `ways` classes, with the head policy applied; (algorithm, policy used)."""
    from metalearn.train import pick_device

    policy = head_policy(saved, ways, head)
    config = saved["config"]
    settings = config["settings"]
    trained_ways = settings.get("ways")
    # The same construction as train.build, with the support's number of classes.
    torch.manual_seed(config["seed"])
    objective = benchmarks.build_objective({**settings, "ways": ways})
    algo = build_algorithm(config["algorithm"], objective.model, objective, config["hparams"])
    state = algo.state_dict()
    for key, value in saved["state_dict"].items():
        if key in HEAD and policy in ("zero", "proto"):  # proto: set from the support in adapt_and_predict
            state[key] = torch.zeros_like(state[key])
        elif state[key].shape == value.shape:
            state[key] = value
        else:
            shaped = [k for k, v in saved["state_dict"].items() if k not in HEAD and v.shape != state[k].shape]
            raise AdaptError(f"{config['algorithm']} meta-learned {shaped} for {trained_ways} classes; it cannot "
                             f"adapt to {ways}: give the support {trained_ways} classes")
    algo.load_state_dict(state)
    return algo.to(pick_device(device)), policy


def prototype_start(algo: Algorithm, support: tuple[Tensor, Tensor]) -> Params:
    """The algorithm's starting parameters (theta) with the head set from the support set's prototypes
    (metalearn/heads.py), as fresh leaves: where its adaptation steps start under the `proto` head."""
    with torch.no_grad():
        return detached(with_prototype_head(algo.predict, algo.initial_params(), *support))


def evaluate_tasks(algo: Algorithm, tasks: TaskBatch, steps: int, head: str = "as_loaded",
                   curve: bool = False) -> list:
    """Each task's query metrics after `steps` adaptation steps, the head as `adapt_and_predict` takes
    it: "proto" sets it from the task's support set first (one task at a time); anything else is the
    algorithm's own evaluation (`algo.evaluate_tasks`, with the trained or zero head that
    `adapted_algorithm` loaded). For comparing the head policies on a benchmark's saved episodes
    (`metalearn evaluate --head`, metalearn.episodic). `curve`: per task, the metrics after 0, 1, ...,
    `steps` steps (with "proto": each count adapted afresh from the prototype start)."""
    if head != "proto" or getattr(algo, "head_from_support", False):
        return algo.evaluate_tasks(tasks, steps, curve=True) if curve else algo.evaluate_tasks(tasks, steps)
    results = []
    for task in tasks:
        start = prototype_start(algo, task.support)
        scored = []
        for count in (range(steps + 1) if curve else [steps]):
            with torch.enable_grad():
                adapted = algo.adapt(task.support, count, params=start)
            with torch.no_grad():
                scored.append(algo.objective.metrics(algo.predict_query(adapted, task), task.query[1]))
        results.append(scored if curve else scored[0])
    return results
