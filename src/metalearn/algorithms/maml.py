"""MAML (Finn, Abbeel & Levine, 2017) and first-order MAML.

Inner loop, per task:  theta'  = theta - alpha * grad_theta L_S(theta), repeated `inner_steps` times.
Outer loop:            theta  <- theta - beta * grad_theta sum_tasks L_Q(theta')   (Adam, in the loop)
Second order: the gradient flows through the inner updates (Hessian-vector products).
First order (FOMAML): the inner gradients are constants, so d theta'/d theta = I.

The inner loop is shared by the MAML family, which differs only in two places: the step size of
each parameter (`step_sizes`: alpha here; Meta-SGD's learned rates; MT-net's alpha * mask) and the
network the adapted parameters run in (`predict`, and `predict_tasks` for a chunk of tasks:
T-nets add their transformations).

Protocol points of the MAML code that are settings (default: our own choice; params.yaml's paper profile:
the official ones):
- `inner_loss`: the support loss the inner step differentiates. `mean` (default): the mean
  cross-entropy over the N*K support examples. `sum_over_shots`: cbfinn/maml utils.py `xent`, each
  example's cross-entropy divided by K, summed by tf.gradients (maml.py), i.e. N times the mean: the
  step is N*alpha times the mean loss's gradient. Classification only: the MAML code's regression
  loss (utils.py `mse`) is a mean, as ours. Used wherever the inner loop runs: one task (`adapt`,
  also at evaluation) and chunks of tasks (`chunk_meta_losses`).
- `eval_query_batch`: how evaluation feeds a task's query images to the network, which matters
  because BatchNorm normalises with the batch's statistics. `all` (default): in one batch. `shots`:
  in batches of K images per class, K = the support set's shots, as the MAML code's test episodes
  hold them (main.py: DataGenerator(update_batch_size * 2), K support + K query images per class;
  for Omniglot also the shape of its training query batches). Classification only.
- The inner loop of one task (`adapt`) takes each step's support examples through
  `objective.draw`: all of them here; a fresh random mini-batch per step under the multi-shot
  Omniglot protocol (alphabets.MiniBatchObjective, whose objective never runs chunks of tasks).
- Parameters the network marks `meta_only` (models.py: the MAML code's BatchNorm offsets, which are
  not among its adapted `weights`) stay out of theta' (`initial_params`): the inner loop never
  moves them, the network reads its own copy, and the meta-gradient reaches them directly.

Meta-training runs the meta-batch in chunks of tasks (`batched_tasks`): the network evaluates a
chunk with every task's own parameters in one call (models.py, `forward_tasks`), and the inner loop
differentiates the sum of the chunk's task losses, whose gradient with respect to one task's
parameters is that task's own gradient. Chunks run concurrently, one per core at a time (base.py).
The result is the one-task-at-a-time loop's, to float rounding (tests/test_batched.py); faster, as a
chunk's operations are few and large instead of many and tiny (bench/speed.py).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from metalearn.algorithms.base import Algorithm, add_to_grad, detached, mean_metrics
from metalearn.tasks import Params, Task, TaskBatch

StepSizes = dict[str, "float | Tensor"]  # per parameter name: a scalar, or a tensor broadcast over it
# (in a chunk, over [tasks, *shape]: a rate per task, e.g. MT-net's alpha * mask, has that leading dim)

# On the CPU a chunk holds about this many support-set numbers: small enough that several chunks
# share the cores (two per core for meta-batch 32), large enough that its operations are few and
# large: 8 Omniglot 5-way 1-shot tasks, all 25 sinusoid tasks (timings: docs/notes/speed.md).
CPU_CHUNK_NUMBERS = 2 ** 15
# Evaluation feeds a chunk's query sets to the network a part at a time, of about this many query
# numbers: a part's feature maps stay small enough for the caches. 2 Omniglot tasks of 75 query
# images a part (timings: docs/notes/speed.md); sinusoid tasks' 100 query points: every
# task in one part.
CPU_QUERY_NUMBERS = 2 ** 17


def chunk_count(tasks: TaskBatch, device: torch.device, workers: int = 1) -> int:
    """How many chunks to cut a meta-batch into: by size on the CPU, one on an accelerator. Where
    size asks for several, a multiple of the `workers` that run them (base.py `map_tasks`), so that no
    core idles through the last round: 50 test episodes of 8 a chunk are 7 chunks, 4 rounds on 2 cores
    with one idle in the last; as 8 chunks of 6-7, none idles (docs/notes/speed.md)."""
    if device.type != "cpu":
        return 1
    tasks_per_chunk = max(1, CPU_CHUNK_NUMBERS // tasks.support_x[0].numel())
    chunks = -(-len(tasks) // tasks_per_chunk)
    if chunks == 1:  # one chunk on every intra-op thread (a small meta-batch, all sinusoid tasks)
        return 1
    return min(len(tasks), -(-chunks // workers) * workers)


def task_chunks(algo: Algorithm, tasks: TaskBatch) -> list[TaskBatch]:
    """`tasks` cut into `chunk_count` chunks for the device and the workers `algo` runs them on."""
    return tasks.split(chunk_count(tasks, next(algo.parameters()).device, algo.task_workers()))


def query_metrics(predict: Callable[[Params, Tensor], Tensor], params: Params, objective, tasks: TaskBatch,
                  batches: list[Tensor]) -> list[dict[str, float]]:
    """Each task's query metrics for a chunk of adapted tasks (`params`: name -> [tasks, *shape]):
    `predict(params, query_x[:, batch])` for each of `batches` (`MAML.query_batches`: all query images
    at once, or K per class), scored by `objective`; on the CPU a few tasks at a time (`query_parts`).
    Shared by the chunked evaluations (MAML family, iMAML, WarpGrad); no graph is kept."""
    with torch.no_grad():
        outputs = None
        for part in query_parts(tasks):
            part_params = {name: p[part] for name, p in params.items()}
            for batch in batches:
                predicted = predict(part_params, tasks.query_x[part, batch])
                if outputs is None:
                    outputs = predicted.new_empty(len(tasks), tasks.query_x.shape[1], *predicted.shape[2:])
                outputs[part, batch] = predicted
        return objective.task_metrics(outputs, tasks.query_y, objective.task_losses(outputs, tasks.query_y))


def query_parts(tasks: TaskBatch) -> list[slice]:
    """The chunk's tasks in parts of about CPU_QUERY_NUMBERS query numbers (all of them on an accelerator)."""
    if tasks.query_x.device.type != "cpu":
        return [slice(None)]
    per_part = max(1, CPU_QUERY_NUMBERS // tasks.query_x[0].numel())
    return [slice(start, start + per_part) for start in range(0, len(tasks), per_part)]


class MAML(Algorithm):
    name = "maml"
    first_order = False
    parallel_tasks = True  # per-task code is pure: objective.forward and autograd only
    batched_tasks = True  # meta-train chunks of tasks together when the network has forward_tasks

    def __init__(self, model, objective, hparams):
        super().__init__(model, objective, hparams)
        self.inner_lr = float(hparams["inner_lr"])
        self.inner_steps = int(hparams["inner_steps"])
        self.first_order = bool(hparams.get("first_order", type(self).first_order))
        self.inner_loss = hparams.get("inner_loss", "mean")  # see the module docstring
        if self.inner_loss not in ("mean", "sum_over_shots"):
            raise ValueError(f"inner_loss must be 'mean' or 'sum_over_shots', not {self.inner_loss!r}")
        if self.inner_loss == "sum_over_shots" and objective.kind != "classification":
            raise ValueError("inner_loss 'sum_over_shots' is for classification: the MAML code's "
                             "regression loss (utils.py mse) is a mean")
        self.eval_query_batch = hparams.get("eval_query_batch", "all")  # see the module docstring
        if self.eval_query_batch not in ("all", "shots"):
            raise ValueError(f"eval_query_batch must be 'all' or 'shots', not {self.eval_query_batch!r}")
        if self.eval_query_batch == "shots" and objective.kind != "classification":
            raise ValueError("eval_query_batch 'shots' is for classification (batches of K images per class)")

    def initial_params(self) -> Params:
        """theta, the parameters the inner loop adapts: the network's, less its `meta_only` ones."""
        meta_only = set(getattr(self.model, "meta_only", ()))
        return {name: p for name, p in self.model.named_parameters() if name not in meta_only}

    def step_sizes(self) -> StepSizes:
        """The inner loop's step size per adapted parameter: alpha for all."""
        return {name: self.inner_lr for name in self.initial_params()}

    def support_loss(self, losses: Tensor, outputs: Tensor) -> Tensor:
        """The inner loop's loss from the criterion's `losses` (a task's mean, or [tasks] of them) and
        the `outputs` [..., N]: the mean itself, or (`sum_over_shots`, cbfinn/maml utils.py xent)
        sum_i l_i / K = N * mean, as the N*K support examples hold K per class."""
        return losses if self.inner_loss == "mean" else losses * outputs.shape[-1]

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None,
              step_sizes: StepSizes | None = None) -> Params:
        """theta <- theta - step_size (.) grad L_S(theta), `steps` times (default: the test steps)."""
        params = detached(self.initial_params()) if params is None else params

        def loss(p: Params) -> Tensor:
            # each step's examples: the whole support set, or a fresh mini-batch of it where the
            # objective draws one per step (tasks.Objective.draw; the Leap/WarpGrad protocol, metalearn/alphabets/)
            inputs, targets = self.objective.draw(support)
            outputs = self.predict(p, inputs)
            return self.support_loss(self.objective.criterion(outputs, targets), outputs)
        return self.descend(loss, params, self.test_inner_steps if steps is None else steps, create_graph,
                            step_sizes)

    def descend(self, loss: Callable[[Params], Tensor], params: Params, steps: int, create_graph: bool,
                step_sizes: StepSizes | None = None) -> Params:
        """The inner loop: params <- params - step_size (.) grad loss(params), `steps` times."""
        rates = self.step_sizes() if step_sizes is None else step_sizes
        for _ in range(steps):
            grads = torch.autograd.grad(loss(params), list(params.values()), create_graph=create_graph)
            params = {name: p - rates[name] * g for (name, p), g in zip(params.items(), grads)}
        return params

    def predict_query(self, params: Params, task: Task) -> Tensor:
        """The adapted network's outputs on the task's query images, fed to it as `eval_query_batch`
        says: all at once, or in batches of K per class (K = shots; the images of each class in order)."""
        inputs, targets = task.query
        if self.eval_query_batch == "all":
            return self.predict(params, inputs)
        shots = len(task.support[1]) // len(task.support[1].unique())
        per_class = [(targets == c).nonzero().flatten() for c in targets.unique()]
        outputs = None
        for start in range(0, max(len(i) for i in per_class), shots):
            batch = torch.cat([i[start:start + shots] for i in per_class])
            predicted = self.predict(params, inputs[batch])
            if outputs is None:
                outputs = predicted.new_empty(len(targets), *predicted.shape[1:])
            outputs[batch] = predicted
        return outputs

    def evaluate_task_curve(self, task: Task, steps: int) -> list[dict[str, float]]:
        """The query metrics after 0, 1, ..., `steps` inner steps, each step taken once: the same
        numbers as `evaluate_task(task, s)` for every s (tests/test_regression.py)."""
        params = detached(self.initial_params())
        curve = []
        for step in range(steps + 1):
            if step:
                with torch.enable_grad():
                    params = detached(self.adapt(task.support, 1, params=params))
            with torch.no_grad():
                curve.append(self.objective.metrics(self.predict_query(params, task), task.query[1]))
        return curve

    # -- evaluating a chunk of tasks at once ------------------------------------------------------
    def evaluate_tasks(self, tasks: TaskBatch, steps: int, curve: bool = False) -> list:
        """`evaluate_task` (`curve`: `evaluate_task_curve`) of every task, chunks of tasks adapted
        together as in meta-training (the module docstring), to the one-task loop's numbers (each task's
        own, tests/test_batched.py). One task at a time where the network cannot run a chunk, or the
        tasks' query sets are not laid out alike (`query_batches`)."""
        batches = self.query_batches(tasks.query_y, tasks.support_y)
        if not (self.batched_tasks and self.objective.batches_tasks) or batches is None:
            return super().evaluate_tasks(tasks, steps, curve)
        chunks = task_chunks(self, tasks)
        results = self.map_tasks(lambda chunk: self.evaluate_chunk(chunk, steps, curve, batches), chunks)
        return [result for chunk_results in results for result in chunk_results]

    def query_batches(self, query_y: Tensor, support_y: Tensor) -> list[Tensor] | None:
        """The query indices `predict_query` feeds the network together, the same for every task of
        the stack ([tasks, n] targets); None if the tasks differ (`eval_query_batch: shots` groups by class)."""
        if self.eval_query_batch == "all":
            return [torch.arange(query_y.shape[1], device=query_y.device)]
        if not (query_y == query_y[:1]).all() or not (support_y == support_y[:1]).all():
            return None
        targets, classes = query_y[0], support_y[0].unique()
        shots = len(support_y[0]) // len(classes)
        per_class = [(targets == c).nonzero().flatten() for c in targets.unique()]
        return [torch.cat([i[start:start + shots] for i in per_class])
                for start in range(0, max(len(i) for i in per_class), shots)]

    def evaluation_step_sizes(self, tasks: TaskBatch) -> StepSizes:
        """The inner loop's step sizes at evaluation, broadcast over [tasks, *shape]."""
        return self.step_sizes()

    def evaluation_start(self, tasks: TaskBatch) -> Params:
        """Where a chunk's evaluation starts: one copy of theta per task, leaves without a meta-gradient."""
        return {name: p.detach().expand(len(tasks), *p.shape).clone().requires_grad_()
                for name, p in self.initial_params().items()}

    def evaluate_chunk(self, tasks: TaskBatch, steps: int, curve: bool, batches: list[Tensor]) -> list:
        """The query metrics of a chunk's tasks after `steps` inner steps (`curve`: after each of
        0..`steps`), every task's parameters adapted on its own support set; no meta-gradient kept."""
        rates = self.evaluation_step_sizes(tasks)
        params = self.evaluation_start(tasks)

        def support_loss(p: Params) -> Tensor:
            outputs = self.predict_tasks(p, tasks.support_x)
            return self.support_loss(self.objective.task_losses(outputs, tasks.support_y), outputs).sum()
        after_step = []  # [steps taken][tasks] metrics
        for step in range(steps + 1):
            if step:
                with torch.enable_grad():
                    params = detached(self.descend(support_loss, params, 1, False, rates))
            if curve or step == steps:
                after_step.append(query_metrics(self.predict_tasks, params, self.objective, tasks, batches))
        per_task = [list(metrics) for metrics in zip(*after_step)]
        return per_task if curve else [metrics[-1] for metrics in per_task]

    def task_meta_loss(self, task: Task, step_sizes: StepSizes | None = None):
        adapted = self.adapt(task.support, self.inner_steps, create_graph=not self.first_order,
                             params=self.initial_params(), step_sizes=step_sizes)
        outputs = self.predict(adapted, task.query[0])
        loss = self.objective.criterion(outputs, task.query[1])
        return loss, self.objective.metrics(outputs.detach(), task.query[1])

    # -- meta-training a chunk of tasks at once (see the module docstring) ------------------------
    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        if not (self.batched_tasks and self.objective.batches_tasks):
            return super().meta_step(tasks)
        meta_params = [p for p in self.parameters() if p.requires_grad]
        chunks = task_chunks(self, tasks)

        def one_chunk(chunk: TaskBatch):
            losses, metrics = self.chunk_meta_losses(chunk)
            return torch.autograd.grad(losses.sum(), meta_params, allow_unused=True), metrics

        results = self.map_tasks(one_chunk, chunks)
        add_to_grad(meta_params, [g for g, _ in results], 1.0 / len(tasks))
        return mean_metrics([m for _, chunk_metrics in results for m in chunk_metrics])

    def chunk_meta_losses(self, tasks: TaskBatch, step_sizes: StepSizes | None = None
                          ) -> tuple[Tensor, list[dict[str, float]]]:
        """`task_meta_loss` of every task of a chunk: the losses [tasks] and each task's metrics.
        Each task's parameters start as theta (expanded: one copy per task, sharing theta's memory,
        so their gradients flow back to theta and add up over the tasks). `step_sizes` as in
        `descend`, broadcast over [tasks, *shape] (default: `step_sizes()`, the same for every task)."""
        theta = {name: p.expand(len(tasks), *p.shape) for name, p in self.initial_params().items()}

        def support_loss(p: Params) -> Tensor:
            outputs = self.predict_tasks(p, tasks.support_x)
            return self.support_loss(self.objective.task_losses(outputs, tasks.support_y), outputs).sum()
        adapted = self.descend(support_loss, theta, self.inner_steps, create_graph=not self.first_order,
                               step_sizes=step_sizes)
        outputs = self.predict_tasks(adapted, tasks.query_x)
        losses = self.objective.task_losses(outputs, tasks.query_y)
        return losses, self.objective.task_metrics(outputs.detach(), tasks.query_y, losses)

    def predict_tasks(self, params: Params, inputs: Tensor) -> Tensor:
        """`predict` for a chunk of tasks: params name -> [tasks, *shape], inputs [tasks, n, ...]."""
        return self.objective.forward_tasks(params, inputs)


class FOMAML(MAML):
    name = "fomaml"
    first_order = True
