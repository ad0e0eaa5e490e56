"""T-nets and MT-nets (Lee & Choi, ICML 2018): a meta-learned metric and subspace for adaptation.

T-net. Every weight layer W of the task network is followed by a square transformation T of its
outputs, y = T (W x + b): a linear map for a linear layer, a 1x1 channel-mixing convolution for a
convolution (placed before the BatchNorm, as in the official code). T starts at the identity and is
meta-learned; the inner loop adapts W (and b) only:
    W <- W - alpha grad_W L_S(W; T)
The gradient through T is T^T times the output gradient, so this is gradient descent on W in the
metric T T^T of the layer's outputs (test: test_tnet_step_is_gradient_descent_in_the_metric_T_Tt).

MT-net. T-net plus mask logits zeta, one per output unit of every layer. Per task a binary mask M
(one value per unit, shared by the unit's whole row of W, its bias and, in conv4, its BatchNorm
scale and shift) is drawn with the straight-through Gumbel-softmax of temperature tau over the two
classes {update, keep} with logits {zeta, 0}, so P(M = 1) = sigmoid(zeta); the forward value is
the hard sample, the gradient that of the relaxed one. The mask is drawn once per task and used
for all inner steps:
    W <- W - alpha M (.) grad_W L_S(W; T)
zeta, T and the initialisation are meta-learned through the MAML meta-gradient (second order, or
first order with `first_order`).

Which layers (official code, yoonholee/MT-net, `share_M`): every weight layer, the output layer
included, gets a T and a mask (MLP 1-40-40-1: 3 layers; conv4: 4 convolutions and the head).
The official code keeps BatchNorm outside the inner loop altogether (as the official MAML code);
with conv4's `batch_norm: affine` (default) MAML adapts BatchNorm's scale and shift, so MT-net does
too, masked with their channel's unit, which keeps T = I, M = 1 exactly MAML; with `batch_norm: maml`
(the official network: offset only, meta-learned, not adapted) neither adapts it.

Masks at meta-test time: the official code samples them as during meta-training. So does
`eval_mask: sample` (default), from a generator seeded by the episode's support set, so an
evaluation is deterministic, the same for every run and thread, and still averages over masks as the
official one does. `eval_mask: mode` uses the most probable mask instead, M = [zeta > 0].
Training masks come from torch's global (CPU) generator, which the training loop checkpoints; they
are drawn for the whole meta-batch, task by task in task order, before any task runs, so the draws
do not depend on thread timing or on how the meta-batch is cut into chunks.

Meta-training runs chunks of tasks together, as MAML's (maml.py): `TransformedNetwork.forward_tasks`
evaluates a chunk, each task with its own weights and the one shared T, and MT-net's step sizes
alpha M carry a leading task dimension, each task's own mask. The result is the one-task loop's to
float rounding (tests/test_batched.py). Evaluation (`adapt`) runs one task at a time.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.maml import MAML, StepSizes
from metalearn.models import MLP, Conv4, batch_norm_tasks, tasks_in_channels
from metalearn.tasks import Objective, Params, Task, TaskBatch


# -- the layers: which parameters form one layer's units ------------------------------------------

def weight_layers(model: nn.Module) -> list[tuple[int, list[str]]]:
    """(output units, names of the adapted parameters with one row per unit) of every weight layer,
    in forward order. conv4: each block's convolution with its BatchNorm's scale and offset (those
    it has and the inner loop adapts: the MAML code's BatchNorm has no scale, and its offset is
    meta-learned only, `Conv4.meta_only`), then the head."""
    if isinstance(model, Conv4):
        adapted = {name for name, _ in model.named_parameters()} - set(model.meta_only)
        layers = [(block[0].out_channels, [name for j in (0, 1) for p in ("weight", "bias")
                                           if (name := f"features.{i}.{j}.{p}") in adapted])
                  for i, block in enumerate(model.features)]
        return layers + [(model.head.out_features, ["head.weight", "head.bias"])]
    if isinstance(model, MLP):
        return [(layer.out_features, [f"net.{i}.weight", f"net.{i}.bias"])
                for i, layer in enumerate(model.net) if isinstance(layer, nn.Linear)]
    raise TypeError(f"no T-net layers defined for {type(model).__name__}")


def identity_transform(units: int, conv: bool) -> nn.Module:
    """T, starting at the identity: a square linear map, or a 1x1 convolution mixing channels."""
    layer = nn.Conv2d(units, units, 1, bias=False) if conv else nn.Linear(units, units, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(units).view_as(layer.weight))
    return layer


def transforms(model: nn.Module) -> nn.ModuleList:
    """One identity T per weight layer (1x1 convolutions after conv4's convolutions)."""
    conv = [isinstance(model, Conv4) and i < len(model.features) for i in range(len(weight_layers(model)))]
    return nn.ModuleList(identity_transform(units, c) for (units, _), c in zip(weight_layers(model), conv))


class TransformedNetwork(nn.Module):
    """The task network (`task`) with T after each weight layer; used through functional_call."""

    def __init__(self, task: nn.Module, transform: nn.ModuleList):
        super().__init__()
        self.task, self.transform = task, transform

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.task, Conv4):
            x = self.task.pixels(x)
            for block, T in zip(self.task.features, self.transform):
                x = block[1:](T(block[0](x)))  # conv, T, then BatchNorm, ReLU (, pool)
            x = x.flatten(1) if self.task.flatten else x.mean(dim=(2, 3))  # as Conv4.forward
            return self.transform[-1](self.task.head(x))
        transform = iter(self.transform)
        for layer in self.task.net:
            x = layer(x)
            if isinstance(layer, nn.Linear):
                x = next(transform)(x)
        return x

    def forward_tasks(self, params: Params, x: Tensor) -> Tensor:
        """`forward` for a chunk of tasks: params (the task network's, named as in `forward`, with
        "task.") -> [tasks, *shape], x [tasks, n, ...] -> [tasks, n, out]. T is this module's own,
        shared by all tasks (meta-learned, never adapted). The layout is Conv4's and MLP's
        `forward_tasks` (models.py), with T where `forward` puts it."""
        if isinstance(self.task, Conv4):
            # Tasks ride in the channel dimension, [n, tasks * C, H, W], as in Conv4.forward_tasks.
            tasks = x.shape[0]
            h = tasks_in_channels(self.task.pixels(x))
            for i, ((_, norm, *rest), T) in enumerate(zip(self.task.features, self.transform)):
                h = self.task.conv_tasks(i, params, h, tasks, prefix="task.")
                # T after the convolution, before BatchNorm: the 1x1 convolution as one matrix product
                # of every task's channels [n, H, W, tasks, C] with the shared T [C, C] (in channels-last
                # memory a plain matrix product, no copy; faster per meta-step than a grouped 1x1
                # convolution with T repeated per task).
                h = F.linear(h.permute(0, 2, 3, 1).unflatten(3, (tasks, -1)), T.weight.flatten(1))
                h = h.flatten(3).permute(0, 3, 1, 2)
                h = batch_norm_tasks(norm, h, params, f"task.features.{i}.1.", tasks)
                for layer in rest:  # ReLU (and max-pooling): per channel, so per task
                    h = layer(h)
            return F.linear(self.task.head_tasks(params, h, tasks, prefix="task."), self.transform[-1].weight)
        transform = iter(self.transform)
        for i, layer in enumerate(self.task.net):
            if isinstance(layer, nn.Linear):  # a batched matrix product over the tasks, then T (shared)
                x = torch.baddbmm(params[f"task.net.{i}.bias"].unsqueeze(1), x,
                                  params[f"task.net.{i}.weight"].transpose(1, 2))
                x = F.linear(x, next(transform).weight)
            else:
                x = layer(x)
        return x


# -- T-net ----------------------------------------------------------------------------------------

class TNet(MAML):
    """MAML's inner loop and meta-gradient (maml.py) in the network with T after each layer."""
    name = "tnet"

    def __init__(self, model, objective, hparams: dict[str, Any]):
        super().__init__(model, objective, hparams)
        self.transform = transforms(model)  # T, meta-learned, never adapted
        # Not a registered submodule: its parameters are self.model's and self.transform's.
        self.transformed = Objective(TransformedNetwork(model, self.transform), objective.kind)

    def predict(self, params: Params, inputs: Tensor) -> Tensor:
        """The network's outputs with adapted weights `params` and the current T."""
        return self.transformed.forward({f"task.{k}": v for k, v in params.items()}, inputs)

    def predict_tasks(self, params: Params, inputs: Tensor) -> Tensor:
        """`predict` for a chunk of tasks (params name -> [tasks, *shape]), with the shared T."""
        return self.transformed.forward_tasks({f"task.{k}": v for k, v in params.items()}, inputs)


# -- MT-net ---------------------------------------------------------------------------------------

@dataclass
class MaskedTask(Task):
    """A task with the uniform noise of its mask draw (one [units, 2] tensor per layer)."""
    noise: list[Tensor] | None = None


class MaskedTaskBatch:
    """A meta-batch with each task's mask noise (one [tasks, units, 2] tensor per layer), kept in
    step with its tasks: a task of it is a MaskedTask, a chunk (`split`) carries its tasks' noise.
    Everything else (support_x, ...) is the TaskBatch's."""

    def __init__(self, tasks: TaskBatch, noise: list[Tensor]):
        self.tasks, self.noise = tasks, noise

    def __getattr__(self, name: str):  # only for names not set in __init__
        if name == "tasks":  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.tasks, name)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> MaskedTask:
        task = self.tasks[i]
        return MaskedTask(task.support, task.query, [u[i] for u in self.noise])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def split(self, parts: int) -> list["MaskedTaskBatch"]:
        chunks = self.tasks.split(parts)  # consecutive, in task order
        sizes = [len(chunk) for chunk in chunks]
        noise = [u.split(sizes) for u in self.noise]
        return [MaskedTaskBatch(chunk, [u[c] for u in noise]) for c, chunk in enumerate(chunks)]


def uniform_noise(layers: list[tuple[int, list[str]]], generator: torch.Generator | None = None) -> list[Tensor]:
    """U(0, 1) noise for one mask draw, on the CPU (None: torch's global generator)."""
    return [torch.rand(units, 2, generator=generator) for units, _ in layers]


def straight_through_gumbel(zeta: Tensor, noise: Tensor, temperature: float) -> Tensor:
    """A binary sample of P(1) = sigmoid(zeta), differentiable as its Gumbel-softmax relaxation.
    Two classes with logits (zeta, 0); `noise` [units, 2] is U(0, 1) (or [tasks, units, 2]: a
    sample per task, [tasks, units])."""
    logits = torch.stack([zeta, torch.zeros_like(zeta)], dim=-1)
    gumbel = -torch.log(-torch.log(noise + 1e-20) + 1e-20)
    soft = torch.softmax((logits + gumbel) / temperature, dim=-1)[..., 0]
    hard = (soft >= 0.5).to(soft.dtype)  # the arg max of the two classes
    return (hard - soft).detach() + soft  # value: hard; gradient: the relaxed sample's


class MTNet(TNet):
    name = "mtnet"

    def __init__(self, model, objective, hparams: dict[str, Any]):
        super().__init__(model, objective, hparams)
        self.temperature = float(hparams.get("temperature", 1.0))
        self.eval_mask = hparams.get("eval_mask", "sample")
        if self.eval_mask not in ("sample", "mode"):
            raise ValueError(f"eval_mask must be sample or mode, not {self.eval_mask!r}")
        self.layers = weight_layers(model)
        logit_init = float(hparams.get("logit_init", 0.0))  # the official default: 0, P(M = 1) = 1/2
        self.zeta = nn.ParameterList(nn.Parameter(torch.full((units,), logit_init)) for units, _ in self.layers)

    def masks(self, noise: list[Tensor] | None) -> Params:
        """M per adapted parameter, shaped to broadcast over the unit's row; None noise: the mode.
        Noise [tasks, units, 2] per layer (a chunk's): M [tasks, units, 1...], each task's own."""
        masks = {}
        for (units, names), zeta, u in zip(self.layers, self.zeta, noise or [None] * len(self.layers)):
            unit_mask = (zeta > 0).to(zeta.dtype) if u is None else \
                straight_through_gumbel(zeta, u.to(device=zeta.device, dtype=zeta.dtype), self.temperature)
            for name in names:
                shape = self.model.get_parameter(name).shape
                masks[name] = unit_mask.view(*unit_mask.shape, *[1] * (len(shape) - 1))
        return masks

    def adapted_fraction(self) -> list[float]:
        """Expected fraction of each layer's units that adapt, mean sigmoid(zeta) = P(M = 1)."""
        return [torch.sigmoid(zeta).mean().item() for zeta in self.zeta]

    def masked_step_sizes(self, masks: Params) -> StepSizes:
        """alpha M per parameter: W <- W - alpha M (.) grad_W L_S (masked units take no step)."""
        return {name: self.inner_lr * mask for name, mask in masks.items()}

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None,
              step_sizes: StepSizes | None = None, masks: Params | None = None) -> Params:
        """MAML's inner loop with step sizes alpha M; no `masks` (meta-test): the episode's mask."""
        if step_sizes is None:
            step_sizes = self.masked_step_sizes(self.episode_masks(support) if masks is None else masks)
        return super().adapt(support, steps, create_graph, params, step_sizes)

    @torch.no_grad()
    def episode_masks(self, support) -> Params:
        """A meta-test episode's mask: sampled from a generator seeded by its support inputs
        (`eval_mask: sample`), or the most probable mask (`mode`); see the module docstring."""
        noise = None
        if self.eval_mask == "sample":
            seed = zlib.crc32(support[0].detach().cpu().numpy().tobytes())
            noise = uniform_noise(self.layers, torch.Generator().manual_seed(seed))
        return self.masks(noise)

    def evaluation_step_sizes(self, tasks: TaskBatch) -> StepSizes:
        """alpha M with each task's own episode mask (`episode_masks`), stacked [tasks, units, 1...]."""
        masks = [self.episode_masks(task.support) for task in tasks]
        return self.masked_step_sizes({name: torch.stack([m[name] for m in masks]) for name in masks[0]})

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        # Draw every task's mask noise here, in task order on the calling thread, from the global
        # generator (checkpointed by the loop); then the tasks (or chunks of them) may run
        # concurrently. The same draws whichever path runs, so chunked equals one task at a time.
        draws = [uniform_noise(self.layers) for _ in range(len(tasks))]
        return super().meta_step(MaskedTaskBatch(tasks, [torch.stack(layer) for layer in zip(*draws)]))

    def chunk_meta_losses(self, tasks: MaskedTaskBatch) -> tuple[Tensor, list[dict[str, float]]]:
        """MAML's chunk with step sizes alpha M, M [tasks, units, 1...]: each task its own mask."""
        return super().chunk_meta_losses(tasks, self.masked_step_sizes(self.masks(tasks.noise)))

    def task_meta_loss(self, task: Task, masks: Params | None = None):
        if masks is None:
            noise = task.noise if isinstance(task, MaskedTask) else uniform_noise(self.layers)
            masks = self.masks(noise)
        return super().task_meta_loss(task, self.masked_step_sizes(masks))
