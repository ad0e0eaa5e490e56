"""The baselines of MAML's regression study (Finn et al. 2017, Section 5.1): pretrained and oracle.

pretrained  One network trained on all tasks at once, no meta-learning:
                theta <- Adam on mean_tasks L_S(theta),
            the loss of the un-adapted network on each task's support points (the MAML code's
            `pretrain_op`, run with `--pretrain_iterations` and no meta-training iterations). At test
            time it is fine-tuned as MAML adapts: `test_inner_steps` gradient steps of size `inner_lr`
            on the support set (maml.py's inner loop). Trained on sampled tasks only, so it never sees
            a saved test task before fine-tuning on it.
oracle      The same network and training, given each task's true parameters (amplitude and phase,
            and the frequency where it varies) as extra inputs beside x (the MAML code's
            `--baseline=oracle`): how well the network does when it is told the task. Fine-tuned at
            test time as pretrained (it has nothing left to learn: its curve is flat).
Both are reference points for MAML's curve of test error against gradient steps (report figure).
"""
from __future__ import annotations

import torch
from torch import Tensor

from metalearn.algorithms.maml import MAML
from metalearn.tasks import InformedTask, Task, TaskBatch


class Pretrained(MAML):
    name = "pretrained"
    baseline = True  # no meta-learning: not one of the algorithms every benchmark compares

    def __init__(self, model, objective, hparams):
        # No inner loop in training: MAML's `inner_steps` is 0 (inner_lr and the test steps fine-tune).
        super().__init__(model, objective, {**hparams, "inner_steps": 0})

    def task_meta_loss(self, task: Task, step_sizes=None):
        outputs = self.predict(self.initial_params(), task.support[0])
        loss = self.objective.criterion(outputs, task.support[1])
        return loss, self.objective.metrics(outputs.detach(), task.support[1], loss.detach())

    def chunk_meta_losses(self, tasks: TaskBatch, step_sizes=None):
        theta = {name: p.expand(len(tasks), *p.shape) for name, p in self.initial_params().items()}
        outputs = self.objective.forward_tasks(theta, tasks.support_x)
        losses = self.objective.task_losses(outputs, tasks.support_y)
        return losses, self.objective.task_metrics(outputs.detach(), tasks.support_y, losses)


class Oracle(Pretrained):
    name = "oracle"
    sees_task_parameters = True  # train.build gives its network one input per task parameter more

    @staticmethod
    def informed_inputs(inputs: Tensor, info: Tensor) -> Tensor:
        """x [..., n, 1] with the task parameters info [..., k] appended to every point: [..., n, 1 + k]."""
        if info is None:
            raise ValueError("the oracle needs the tasks' true parameters (TaskBatch.info); "
                             "only sinusoid tasks provide them")
        return torch.cat([inputs, info.unsqueeze(-2).expand(*inputs.shape[:-1], info.shape[-1])], dim=-1)

    def informed_task(self, task: Task) -> Task:
        info = getattr(task, "info", None)
        return Task((self.informed_inputs(task.support[0], info), task.support[1]),
                    (self.informed_inputs(task.query[0], info), task.query[1]))

    def meta_step(self, tasks: TaskBatch):
        return super().meta_step(TaskBatch(self.informed_inputs(tasks.support_x, tasks.info), tasks.support_y,
                                           self.informed_inputs(tasks.query_x, tasks.info), tasks.query_y))

    def evaluate_task(self, task: Task, steps=None):
        return super().evaluate_task(self.informed_task(task), steps)

    def evaluate_task_curve(self, task: Task, steps: int):
        return super().evaluate_task_curve(self.informed_task(task), steps)

    def evaluate_chunk(self, tasks: TaskBatch, steps: int, curve: bool, batches):
        return super().evaluate_chunk(TaskBatch(self.informed_inputs(tasks.support_x, tasks.info), tasks.support_y,
                                                self.informed_inputs(tasks.query_x, tasks.info), tasks.query_y),
                                      steps, curve, batches)

    def adapted_predictions(self, task: InformedTask, inputs: Tensor, steps: int) -> Tensor:
        return super().adapted_predictions(self.informed_task(task), self.informed_inputs(inputs, task.info), steps)
