"""WarpGrad (Flennerhag, Rusu, Pascanu, Visin, Yin & Hadsell, ICLR 2020): warped gradient descent.

Network: the task network with a *warp layer* after each of its blocks. Task parameters theta (the
task network's) adapt; warp parameters phi are shared by all tasks, held fixed during adaptation and
meta-learned. Their Jacobians precondition theta's gradient. Warp layers (`warp_layers`):
  conv4: after each [conv, BN, ReLU(, pool)] block,  h <- h + BN(conv3x3(h)), the BN scale starting at 0;
  MLP:   after each hidden [linear, ReLU],            h <- Omega h + b, starting at Omega = I, b = 0.
These two start as the identity, so WarpGrad starts out as plain SGD on the task network.
  OmniConv (the papers' multi-shot Omniglot network, models.py): after each block a plain 3x3
  convolution, 64 -> 64 filters, PyTorch's default initialisation, no BatchNorm, residual or
  activation: src/omniglot/main.py's defaults (warp_num_layers 1, warp_residual, warp_batch_norm and
  warp_final_head off, warp_act_fun None) with model.py's WarpLayer. Not the identity at the start.

Adaptation (`adapt`): theta_{k+1} = theta_k - alpha grad_theta L_S(theta_k; phi), k < K, no graph kept.
Meta-objective, trajectory agnostic: points theta_k of the adaptation trajectories are constants,
    J(phi) = mean over tasks and points of  L_Q(theta_k - alpha grad_theta L_S(theta_k; phi); phi)
(`first_order`: L_Q(theta_k; phi), no step). Its gradient w.r.t. phi backpropagates through one step
only, never through the trajectory: cost per point does not depend on K.
Through the step (`inner_grad`): graph (default): phi's gradient also flows through the inner
gradient grad_theta L_S(theta_k; phi) (second order, the objective as written above); detached: the
official code's, grad_phi L_Q(stopgrad(theta_k - alpha grad_theta L_S(theta_k; phi)); phi), phi
only through the query pass at the stepped point. flennerhag/warpgrad src/warpgrad/warpgrad/utils.py
`step` (line 85) calls its `backward` (lines 117-122): autograd.grad with create_graph=True, then
p.backward(g) without it, so the gradient accumulated in p.grad holds no graph; optim.py SGD.step
(lines 73, 91) builds p - lr * p.grad from that constant.

Meta-training (`mode`):
  offline (Algorithm 2, the official code's): adapt with phi fixed, keeping `snapshots` points of
    each trajectory (evenly spaced, theta_0 first) with the task's data in a replay buffer, then the
    meta-gradient over the buffer. phi changes only after the meta-step, so each task's buffer is
    used as soon as its trajectory is complete (the same gradient as after the whole meta-batch, with
    one task's buffer alive per worker instead of all); it lives inside the meta-step, so checkpoints
    (taken between meta-steps) lose nothing. The loop takes one optimiser step per meta-step: the
    paper's L updates per buffer become one update on the whole buffer. Memory grows with
    `snapshots` (default K), not with K.
  online (Algorithm 1): the meta-gradient at each theta_k is accumulated while the trajectory is
    produced (every point, no buffer); phi is updated after the meta-batch. With `snapshots` >= K,
    offline and online compute the same meta-gradient.

Initialisation theta_0 (`init`): none: the task network's seeded initialisation, fixed (not
meta-learned); maml: Warp-MAML, MAML's meta-gradient through the K warped steps (memory grows with
K, as MAML's; `first_order`: FOMAML's); leap: Warp-Leap, Leap's path objective on the
trajectory (`LeapPath` of leap.py; by default as the official Warp-Leap: path length without the
loss term; `norm`, `use_loss`, `stabilizer`, `final_point` as in Leap; final_point false: the
buffered points theta_0 .. theta_{K-1} only, as updaters.py simplified_leap, lines 146-151).

Meta-update (`meta_update`):
  batch (default): the gradient of J over the whole meta-batch's buffer (and the initialisation's
    meta-gradient) are left in .grad for the loop's optimiser (Adam, train.meta_lr): one update of
    phi per meta-step.
  per_point: the official updater (flennerhag/warpgrad src/warpgrad/warpgrad/updaters.py,
    DualUpdater with epochs=1, bsz=1: warp_on_same_loss, then simplified_leap; optimisers as
    src/omniglot/wrapper.py WarpGradWrapper and main.py's defaults). After the meta-batch is adapted,
    phi takes one plain-SGD step (lr `warp_lr`, default 0.1) per buffered point: the gradient of J at
    that one point, at the current phi, so each step sees the previous ones' phi. The points are
    visited once (one epoch), in buffer order (task by task, trajectory order), or in a random order
    with `shuffle_buffer` (updaters.py shuffles with np.random; here torch's generator, which the
    loop checkpoints). Then the initialisation (maml, leap) takes one SGD step (lr `init_lr`, default
    0.1) on its meta-gradient (updaters.py: one step_fn call after the warp epoch). Both optimisers
    are plain SGD, stateless, so checkpoints between meta-steps lose nothing; no .grad is left for
    the loop's optimiser, which therefore changes nothing. Memory: the meta-batch's buffers are all
    alive until the warp epoch (the official code keeps them too).

Chunks of tasks (`batched_tasks`, `takes_chunks`; as maml.py, leap.py, imaml.py): on Conv4 and the MLP
the meta-batch is cut into chunks (maml.py `task_chunks`), run concurrently (base.py `map_tasks`).
A chunk's tasks each have their own theta [tasks, *shape] and go through the warped network in one
call (`WarpedNetwork.forward_tasks`: the task network's layers as its forward_tasks, models.py; the
warp layers are phi, shared: Conv4's convolution as one plain convolution over every task's maps,
its BatchNorm over each task's own images; the MLP's Omega h + b on [tasks, n, F]). The gradient of
the chunk's summed loss w.r.t. one task's theta is that task's own, and w.r.t. phi (or theta_0,
expanded per task) the sum over the tasks. `run_chunk` walks the chunk's trajectories together
(phi fixed, no graph; Warp-MAML: through the steps; Warp-Leap: `LeapPath(tasks=True)`), buffers
the same points, and takes J's gradient at each buffered point for the whole chunk: the one-task
loop's meta-gradient, to float rounding (tests/test_warpgrad_chunks.py). Chunked: mode offline with
meta_update batch (the default), every init, first_order or not, and evaluation (`evaluate_tasks`,
with MAML's `eval_query_batch`). One task at a time: mode online (not chunked yet: its gradient at every
point as the trajectory is produced), meta_update per_point (SGD steps on phi one buffered point after
another, each at the previous one's phi), OmniConv (running statistics, metalearn/alphabets/) and
objectives that draw mini-batches (alphabets.MiniBatchObjective), and `batched_tasks = False`.

Names: `warpgrad` (init from hparams, default none), `warpmaml` (init maml), `warpleap` (init leap).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.base import Algorithm, add_to_grad, detached, mean_metrics
from metalearn.algorithms.leap import LeapPath
from metalearn.algorithms.maml import MAML, query_metrics, task_chunks
from metalearn.models import MLP, Conv4, OmniConv, batch_norm_tasks, tasks_in_channels
from metalearn.tasks import Objective, Params, Task, TaskBatch


class ResidualConvWarp(nn.Module):
    """h + BN(conv3x3(h)) with the BN scale at 0: the identity until phi is meta-learned."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels, track_running_stats=False)  # batch statistics, as the task net
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.norm.weight)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.norm(self.conv(h))

    def forward_tasks(self, h: Tensor, tasks: int) -> Tensor:
        """`forward` on a chunk laid out [n, tasks * C, H, W] (models.Conv4.forward_tasks). The
        convolution is phi's for every task, so it runs as one plain convolution over the n * tasks
        maps ([n * tasks, C, H, W], the same memory; no grouped convolution of phi repeated per task,
        which is slower on the CPU); BatchNorm then normalises each (task, channel) over its own task's
        images. phi's gradient sums over the tasks."""
        n, channels = h.shape[0], h.shape[1] // tasks
        warped = self.conv(h.reshape(n * tasks, channels, *h.shape[2:])).view(h.shape)
        return h + batch_norm_tasks(self.norm, warped, {}, "", tasks)


def linear_warp(features: int) -> nn.Linear:
    """A linear warp Omega h + b, starting at the identity."""
    layer = nn.Linear(features, features)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(features))
        layer.bias.zero_()
    return layer


def warp_layers(model: nn.Module) -> nn.ModuleList:
    """One warp layer per block of the task network (identity-initialised but for OmniConv's)."""
    if isinstance(model, Conv4):
        return nn.ModuleList(ResidualConvWarp(block[0].out_channels) for block in model.features)
    if isinstance(model, OmniConv):
        return nn.ModuleList(nn.Conv2d(block[0].out_channels, block[0].out_channels, 3, padding=1)
                             for block in model.features)
    if isinstance(model, MLP):
        return nn.ModuleList(linear_warp(layer.out_features) for layer in model.net[:-1]
                             if isinstance(layer, nn.Linear))
    raise TypeError(f"no warp layers defined for {type(model).__name__}")


class WarpedNetwork(nn.Module):
    """The task network (`task`) with `warp` layers interleaved; used through functional_call."""

    def __init__(self, task: nn.Module, warp: nn.ModuleList):
        super().__init__()
        self.task, self.warp = task, warp

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.task, Conv4):
            x = self.task.pixels(x)
            for block, warp in zip(self.task.features, self.warp):
                x = warp(block(x))
            x = x.flatten(1) if self.task.flatten else x.mean(dim=(2, 3))  # as Conv4.forward
            return self.task.head(x)
        if isinstance(self.task, OmniConv):
            for block, warp in zip(self.task.features, self.warp):
                x = warp(block(x))
            return self.task.head(x.flatten(1))
        warps = iter(self.warp)
        for layer in self.task.net:  # MLP: a warp after each hidden layer's ReLU
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                x = next(warps)(x)
        return x

    def forward_tasks(self, params: Params, x: Tensor) -> Tensor:
        """`forward` for a chunk of tasks, each with its own task parameters (params "task.<name>" ->
        [tasks, *shape]), x [tasks, n, ...] -> [tasks, n, ...]; the warp layers (phi) are the module's,
        shared by the tasks. The task network's layers run as in its own forward_tasks (models.py)."""
        theta = {name.removeprefix("task."): p for name, p in params.items()}
        if isinstance(self.task, Conv4):
            tasks = x.shape[0]
            h = tasks_in_channels(self.task.pixels(x), layout=False)
            for i, ((_, norm, *rest), warp) in enumerate(zip(self.task.features, self.warp)):
                h = self.task.conv_tasks(i, theta, h, tasks)
                h = batch_norm_tasks(norm, h, theta, f"features.{i}.1.", tasks)
                for layer in rest:  # ReLU (and max-pooling): per channel, so per task
                    h = layer(h)
                h = warp.forward_tasks(h, tasks)
            return self.task.head_tasks(theta, h, tasks)
        if not isinstance(self.task, MLP):  # OmniConv: running statistics, one task at a time (metalearn/alphabets/)
            raise TypeError(f"{type(self.task).__name__} runs one task at a time")
        warps = iter(self.warp)
        for i, layer in enumerate(self.task.net):
            if isinstance(layer, nn.Linear):
                x = torch.baddbmm(theta[f"net.{i}.bias"].unsqueeze(1), x, theta[f"net.{i}.weight"].transpose(1, 2))
            else:  # ReLU, then the shared warp Omega h + b on [tasks, n, F]
                warp = next(warps)
                x = F.linear(layer(x), warp.weight, warp.bias)
        return x


def snapshot_steps(steps: int, snapshots: int) -> set[int]:
    """`snapshots` trajectory points out of theta_0 .. theta_{steps-1}, evenly spaced, theta_0 first."""
    count = min(steps, snapshots)
    return {i * steps // count for i in range(count)}


class WarpGrad(Algorithm):
    name = "warpgrad"
    default_init = "none"
    parallel_tasks = True  # per-task code is pure: forward passes through self.warped, autograd only
    batched_tasks = True  # chunks of tasks together where `takes_chunks` (the module docstring)

    def __init__(self, model, objective, hparams: dict[str, Any]):
        super().__init__(model, objective, hparams)
        self.inner_lr = float(hparams["inner_lr"])
        self.inner_steps = int(hparams["inner_steps"])
        self.mode = hparams.get("mode", "offline")
        self.init = hparams.get("init", self.default_init)
        if type(self) is not WarpGrad and self.init != self.default_init:
            raise ValueError(f"{self.name} meta-learns the initialisation with {self.default_init}, "
                             f"not init: {self.init}")
        if self.mode not in ("offline", "online") or self.init not in ("none", "maml", "leap"):
            raise ValueError(f"mode must be offline|online and init none|maml|leap, not {self.mode}, {self.init}")
        self.first_order = bool(hparams.get("first_order", False))
        self.meta_update = hparams.get("meta_update", "batch")
        if self.meta_update not in ("batch", "per_point"):
            raise ValueError(f"meta_update must be batch|per_point, not {self.meta_update}")
        if self.meta_update == "per_point" and self.mode != "offline":
            raise ValueError("meta_update per_point updates phi over a replay buffer: it needs mode offline")
        self.warp_lr = float(hparams.get("warp_lr", 0.1))  # per_point: updaters.py / main.py's outer lr
        # graph: phi's gradient through the inner gradient too; detached: the official step (docstring)
        self.inner_grad = hparams.get("inner_grad", "graph")
        if self.inner_grad not in ("graph", "detached"):
            raise ValueError(f"inner_grad must be graph|detached, not {self.inner_grad!r}")
        self.init_lr = float(hparams.get("init_lr", 0.1))
        self.shuffle_buffer = bool(hparams.get("shuffle_buffer", False))
        self.snapshots = int(hparams.get("snapshots", self.inner_steps))
        self.leap = dict(norm=bool(hparams.get("norm", True)), use_loss=bool(hparams.get("use_loss", False)),
                         stabilizer=bool(hparams.get("stabilizer", True)))
        self.final_point = bool(hparams.get("final_point", True))  # init leap: theta_K ends the path (leap.py)
        # how evaluation feeds the query set to the network: as MAML's `eval_query_batch` (maml.py)
        self.eval_query_batch = hparams.get("eval_query_batch", "all")
        if self.eval_query_batch not in ("all", "shots"):
            raise ValueError(f"eval_query_batch must be 'all' or 'shots', not {self.eval_query_batch!r}")
        if self.eval_query_batch == "shots" and objective.kind != "classification":
            raise ValueError("eval_query_batch 'shots' is for classification (batches of K images per class)")
        self.warp = warp_layers(model)  # phi
        if self.init == "none":
            self.model.requires_grad_(False)  # theta_0 stays the seeded initialisation
        # Not a registered submodule: its parameters are self.model's and self.warp's.
        self.warped = Objective(WarpedNetwork(model, self.warp), objective.kind)

    # -- the warped network -----------------------------------------------------------------------
    def predict(self, params: Params, inputs: Tensor) -> Tensor:
        """The warped network's outputs with task parameters `params` and the current phi."""
        return self.warped.forward({f"task.{k}": v for k, v in params.items()}, inputs)

    # the query set fed all at once or in batches of K per class, as MAML's evaluation (maml.py)
    predict_query = MAML.predict_query
    query_batches = MAML.query_batches

    def task_loss(self, params: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = self.objective.draw(data)  # all of it, or a mini-batch (tasks.Objective.draw)
        return self.warped.criterion(self.predict(params, inputs), targets)

    def adapt(self, support, steps=None, create_graph=False, params: Params | None = None) -> Params:
        """Gradient descent on theta through the warped network, phi fixed; no graph along the
        trajectory unless `create_graph` (then differentiable w.r.t. the starting point)."""
        theta = detached(self.initial_params()) if params is None else params
        for _ in range(self.test_inner_steps if steps is None else steps):
            theta, _, _ = self.step(theta, support, create_graph)
        return theta

    def step(self, theta: Params, support, create_graph: bool = False):
        """(theta - alpha grad_theta L_S(theta; phi), L_S(theta; phi), grad): one adaptation step."""
        loss = self.task_loss(theta, support)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=create_graph)
        new = {k: p - self.inner_lr * g for (k, p), g in zip(theta.items(), grads)}
        return (new if create_graph else detached(new)), loss, grads

    # -- the meta-objective -----------------------------------------------------------------------
    def warp_meta_loss(self, theta: Params, task: Task) -> Tensor:
        """J at one trajectory point theta (a constant): one step from theta on the support set,
        differentiable w.r.t. phi unless inner_grad is detached (then a constant), then the query
        loss (first_order: the query loss at theta)."""
        theta = detached(theta)
        if not self.first_order:
            theta, _, _ = self.step(theta, task.support, create_graph=self.inner_grad == "graph")
        return self.task_loss(theta, task.query)

    def warp_gradient(self, theta: Params, task: Task) -> list[Tensor]:
        return list(torch.autograd.grad(self.warp_meta_loss(theta, task), list(self.warp.parameters())))

    def buffer_gradient(self, buffer: list[Params], task: Task) -> list[Tensor]:
        """Sum of the warp gradients at the buffered points of one task (a running sum)."""
        total = None
        for point in buffer:
            g = self.warp_gradient(point, task)
            total = g if total is None else [a + b for a, b in zip(total, g)]
        return total

    def run_task(self, task: Task) -> dict[str, Any]:
        """Adapt to one task with phi fixed; return its summed warp gradient (offline: over the
        replay buffer of its trajectory; online: at every point as it is produced) and the
        initialisation's meta-gradient (maml, leap)."""
        learn_init = self.init == "maml"
        differentiable = learn_init and not self.first_order
        theta = self.initial_params() if learn_init else detached(self.initial_params())
        keep = snapshot_steps(self.inner_steps, self.snapshots) if self.mode == "offline" else set()
        buffer, warp_grad = [], None
        path = LeapPath(**self.leap) if self.init == "leap" else None
        for k in range(self.inner_steps):
            point = {name: p.detach() for name, p in theta.items()}  # a constant for the meta-objective
            if k in keep:
                buffer.append(point)
            if self.mode == "online":
                g = self.warp_gradient(point, task)
                warp_grad = g if warp_grad is None else [a + b for a, b in zip(warp_grad, g)]
            theta_next, loss, grads = self.step(theta, task.support, create_graph=differentiable)
            if path is not None:
                path.add(list(theta.values()), loss, grads)
            if learn_init and not differentiable:  # first order: theta_K = theta_0 - sum of constants
                theta_next = {name: p - self.inner_lr * g.detach() for (name, p), g in zip(theta.items(), grads)}
            theta = theta_next
        init_grad = None
        if learn_init:  # Warp-MAML: d L_Q(theta_K) / d theta_0 through the warped steps
            query_loss = self.task_loss(theta, task.query)
            init_grad = list(torch.autograd.grad(query_loss, list(self.model.parameters())))
            outputs = self.predict(theta, task.query[0]).detach()
        else:
            with torch.no_grad():
                outputs = self.predict(theta, task.query[0])
        if path is not None:
            if self.final_point:
                with torch.no_grad():
                    path.add(list(theta.values()), self.task_loss(theta, task.support), None)
            init_grad = path.gradient
        if self.mode == "offline" and self.meta_update == "batch":  # Algorithm 2's J over this task's buffer
            warp_grad = self.buffer_gradient(buffer, task)
        return {"warp_grad": warp_grad, "init_grad": init_grad, "points": len(buffer) or self.inner_steps,
                "buffer": buffer if self.meta_update == "per_point" else None, "task": task,
                "metrics": self.warped.metrics(outputs, task.query[1])}

    def per_point_update(self, results: list[dict[str, Any]]) -> None:
        """The official updater: one SGD step on phi per buffered point, then one on theta_0."""
        points = [(point, r["task"]) for r in results for point in r["buffer"]]  # buffer order
        if self.shuffle_buffer:
            points = [points[i] for i in torch.randperm(len(points)).tolist()]
        warp_params = list(self.warp.parameters())
        warp_optimizer = torch.optim.SGD(warp_params, lr=self.warp_lr)
        for point, task in points:  # batch size 1, one epoch
            warp_optimizer.zero_grad(set_to_none=True)
            for p, g in zip(warp_params, self.warp_gradient(point, task)):
                p.grad = g
            warp_optimizer.step()
        warp_optimizer.zero_grad(set_to_none=True)  # nothing left for the loop's optimiser
        if self.init != "none":
            init_params = list(self.model.parameters())
            init_optimizer = torch.optim.SGD(init_params, lr=self.init_lr)
            init_optimizer.zero_grad(set_to_none=True)
            add_to_grad(init_params, [r["init_grad"] for r in results], 1.0 / len(results))
            init_optimizer.step()
            init_optimizer.zero_grad(set_to_none=True)

    # -- a chunk of tasks at once (see the module docstring) ---------------------------------------
    def takes_chunks(self) -> bool:
        """Whether evaluation (and, with mode offline and meta_update batch, meta-training) runs
        chunks of tasks: the task network is Conv4 or the MLP (not OmniConv) and the objective feeds
        whole support sets (not metalearn/alphabets/ mini-batches)."""
        return self.batched_tasks and self.objective.batches_tasks and isinstance(self.model, (Conv4, MLP))

    def chunk_losses(self, theta: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Each task's loss [tasks] (and the outputs) with its own theta [tasks, *shape], the shared phi."""
        outputs = self.warped.forward_tasks({f"task.{k}": v for k, v in theta.items()}, x)
        return self.warped.task_losses(outputs, y), outputs

    def chunk_step(self, theta: Params, tasks: TaskBatch, create_graph: bool = False):
        """`step` of every task of the chunk: the gradient of the summed support losses w.r.t. one
        task's theta is that task's own."""
        losses, _ = self.chunk_losses(theta, tasks.support_x, tasks.support_y)
        grads = torch.autograd.grad(losses.sum(), list(theta.values()), create_graph=create_graph)
        new = {k: p - self.inner_lr * g for (k, p), g in zip(theta.items(), grads)}
        return (new if create_graph else detached(new)), losses, grads

    def chunk_warp_meta_losses(self, theta: Params, tasks: TaskBatch) -> Tensor:
        """`warp_meta_loss` of every task of a chunk, each at its own point theta [tasks, *shape]
        (constants): [tasks] query losses after one step, differentiable unless inner_grad is
        detached (first_order: at theta)."""
        theta = detached(theta)
        if not self.first_order:
            theta, _, _ = self.chunk_step(theta, tasks, create_graph=self.inner_grad == "graph")
        return self.chunk_losses(theta, tasks.query_x, tasks.query_y)[0]

    def run_chunk(self, tasks: TaskBatch) -> dict[str, Any]:
        """`run_task` (mode offline, meta_update batch) of a chunk's tasks, walked together: each
        task's trajectory, its buffered points, J's gradient over them and the initialisation's
        meta-gradient, each summed over the chunk's tasks (by autograd where phi or theta_0 is shared)."""
        learn_init = self.init == "maml"
        differentiable = learn_init and not self.first_order
        start = self.initial_params()
        if learn_init:  # one copy per task sharing theta_0's memory: gradients add up on theta_0
            theta = {k: p.expand(len(tasks), *p.shape) for k, p in start.items()}
        else:
            theta = {k: p.detach().expand(len(tasks), *p.shape).clone().requires_grad_() for k, p in start.items()}
        keep = snapshot_steps(self.inner_steps, self.snapshots)
        buffer = []
        path = LeapPath(**self.leap, tasks=True) if self.init == "leap" else None
        for k in range(self.inner_steps):
            if k in keep:
                buffer.append({name: p.detach() for name, p in theta.items()})
            theta_next, losses, grads = self.chunk_step(theta, tasks, create_graph=differentiable)
            if path is not None:
                path.add(list(theta.values()), losses, grads)
            if learn_init and not differentiable:  # first order: theta_K = theta_0 - sum of constants
                theta_next = {name: p - self.inner_lr * g.detach() for (name, p), g in zip(theta.items(), grads)}
            theta = theta_next
        init_grad = None
        if learn_init:  # Warp-MAML through the chunk's warped steps
            query_losses, outputs = self.chunk_losses(theta, tasks.query_x, tasks.query_y)
            init_grad = list(torch.autograd.grad(query_losses.sum(), list(self.model.parameters())))
            outputs = outputs.detach()
        else:
            with torch.no_grad():
                _, outputs = self.chunk_losses(theta, tasks.query_x, tasks.query_y)
        if path is not None:
            if self.final_point:
                with torch.no_grad():
                    path.add(list(theta.values()), self.chunk_losses(theta, tasks.support_x, tasks.support_y)[0], None)
            init_grad = [g.sum(0) for g in path.gradient]
        warp_params, warp_grad = list(self.warp.parameters()), None
        for point in buffer:  # J at each buffered point of every task of the chunk
            g = torch.autograd.grad(self.chunk_warp_meta_losses(point, tasks).sum(), warp_params)
            warp_grad = list(g) if warp_grad is None else [a + b for a, b in zip(warp_grad, g)]
        metrics = self.warped.task_metrics(outputs, tasks.query_y, self.warped.task_losses(outputs, tasks.query_y))
        return {"warp_grad": warp_grad, "init_grad": init_grad, "points": len(buffer) * len(tasks),
                "metrics": metrics}

    def evaluate_tasks(self, tasks: TaskBatch, steps: int, curve: bool = False) -> list:
        """`evaluate_task` (`curve`: after each of 0..`steps` steps) of every task, chunks of tasks
        adapted together with phi fixed, to the one-task loop's numbers; one task at a time where
        chunks are not taken or the query layouts differ (maml.py `query_batches`)."""
        batches = self.query_batches(tasks.query_y, tasks.support_y)
        if not self.takes_chunks() or batches is None:
            return super().evaluate_tasks(tasks, steps, curve)
        chunks = task_chunks(self, tasks)
        results = self.map_tasks(lambda chunk: self.evaluate_chunk(chunk, steps, curve, batches), chunks)
        return [result for chunk_results in results for result in chunk_results]

    def evaluate_chunk(self, tasks: TaskBatch, steps: int, curve: bool, batches: list[Tensor]) -> list:
        """The query metrics of a chunk's tasks after `steps` warped steps (`curve`: after each of
        0..`steps`), each task's theta adapted on its own support set, phi fixed; no graph kept."""
        theta = {k: p.detach().expand(len(tasks), *p.shape).clone().requires_grad_()
                 for k, p in self.initial_params().items()}
        after_step = []  # [steps taken][tasks] metrics
        for step in range(steps + 1):
            if step:
                with torch.enable_grad():
                    theta, _, _ = self.chunk_step(theta, tasks)
            if curve or step == steps:
                task_params = {f"task.{k}": v for k, v in theta.items()}
                after_step.append(query_metrics(self.warped.forward_tasks, task_params, self.warped, tasks, batches))
        per_task = [list(metrics) for metrics in zip(*after_step)]
        return per_task if curve else [metrics[-1] for metrics in per_task]

    def meta_step(self, tasks) -> dict[str, float]:
        if self.takes_chunks() and self.mode == "offline" and self.meta_update == "batch":
            chunks = task_chunks(self, tasks)
            results = self.map_tasks(self.run_chunk, chunks)
            metrics = [m for r in results for m in r["metrics"]]
            add_to_grad(self.warp.parameters(), [r["warp_grad"] for r in results], 1.0 / sum(r["points"] for r in results))
            if self.init != "none":
                add_to_grad(self.model.parameters(), [r["init_grad"] for r in results], 1.0 / len(tasks))
            return mean_metrics(metrics)
        results = self.map_tasks(self.run_task, tasks)
        if self.meta_update == "per_point":
            self.per_point_update(results)
            return mean_metrics([r["metrics"] for r in results])
        points = sum(r["points"] for r in results)  # J is the mean over tasks and trajectory points
        add_to_grad(self.warp.parameters(), [r["warp_grad"] for r in results], 1.0 / points)
        if self.init != "none":
            add_to_grad(self.model.parameters(), [r["init_grad"] for r in results], 1.0 / len(tasks))
        return mean_metrics([r["metrics"] for r in results])


class WarpMAML(WarpGrad):
    name = "warpmaml"
    default_init = "maml"


class WarpLeap(WarpGrad):
    name = "warpleap"
    default_init = "leap"
