"""MAML for reinforcement learning (Finn et al. 2017, Algorithm 3) and the paper's RL baselines.

    sample tasks T_i (goals)                                      meta-batch of `meta_batch`
    for each T_i, in one batched tensor program:
        D_i  <- K rollouts of f_theta in T_i                      K = `rollouts` (20)
        theta'_i = theta + alpha grad_theta J_i(theta; D_i)       vanilla policy gradient (REINFORCE,
                                                                  linear feature baseline, alpha = 0.1)
        D'_i <- K fresh rollouts of f_theta'_i                     (more steps: fresh rollouts each step)
    theta <- TRPO step on  sum_i J_i(theta'_i(theta); D'_i)      trpo.py, through the inner step

The outer objective is TRPO's surrogate, mean over tasks, steps and rollouts (the steps taken:
`Rollouts.mask`) of pi_theta'_i(a|s) / pi_old'_i(a|s) * A'(s, a), under the constraint mean
KL(pi_old'_i || pi_theta'_i) <= delta: both are functions of theta through theta'_i(theta),
differentiated to second order (MAML) or with the inner gradient held constant (first-order MAML).
As in the official code, the rollouts D_i are data: the dependence of their distribution on theta is
not differentiated.

Baselines (Section 5.3): `pretrained` trains one policy with TRPO on all tasks at once (no inner
step), `oracle` the same with the goal appended to the observation, `random` keeps its random
initialisation; at test time all take the same policy-gradient steps as MAML, each with its own
`inner_lr` (the oracle's is 0 in params.yaml: the official evaluation does not fine-tune it).
`pretrained` may instead take one full-batch Adam step per iteration on the policy-gradient loss of
all tasks' rollouts (`optimizer: adam`, opt-in): the official navigation baseline, MAML's launcher
with use_maml=False (maml_rl maml_npo.py:31-36, 127-128, 153-154; rl/train.py's torch Adam).

Test-time step sizes: the first test step is `inner_lr`, every later one `inner_lr *
test_later_lr_scale` (default 1). The official evaluation (maml_rl maml_examples/test_maml_*.py) runs
rllab's VPG with a FirstOrderOptimizer given init_learning_rate = s for its first update only and
learning_rate = 0.5 s (ant direction: 0.01 s) for the others: MAML is meta-trained for one step of s,
and the later steps are smaller.

Test batch: every test step samples `test_rollouts` rollouts per task (benchmark setting, default
`rollouts`). The official evaluation's VPG samples `batch_size` environment steps per iteration (rllab
parallel_sampler.sample_paths: whole paths until the count reaches it), so its rollouts per test step
are batch_size / horizon: test_maml_point.py 4000 / 100 = 40 where training took 20; the cheetah and
ant scripts 4000 / 200 = 20 and test_maml_ant_direc.py 8000 / 200 = 40, their training's. Where paths
end early (the goal reached, the Ant fallen) that sampler takes more paths for the same steps:
`test_samples` (benchmark setting) counts the test batch in steps taken as it does, rounds of
`test_rollouts` rollouts until each task has that many, the last path cut there (`sample_steps`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metalearn.rl import baseline
from metalearn.rl.envs import make_env, task_dim
from metalearn.rl.policy import GaussianMLPPolicy, Params, kl_divergence, log_prob, per_task
from metalearn.rl.trpo import trpo_step


@dataclass
class Rollouts:
    """`rollouts` trajectories in each of `tasks` environments: obs [tasks, rollouts, horizon, d],
    actions [tasks, rollouts, horizon, a], rewards [tasks, rollouts, horizon].

    `mask` [tasks, rollouts, horizon] (1 or 0, the observations' dtype): the steps actually taken, for
    environments whose episodes end early (the Ant): the step on which an episode ends is taken, the
    frozen steps after it (reward 0) are not. The official sampler cuts each path at its end, so every
    mean over steps (policy-gradient loss, baseline fit, advantage normalisation, surrogate, KL) is over
    the steps taken; here those means weigh the steps by the mask. None where episodes never end early
    (navigation, half-cheetah): every step is taken, and the unmasked code path runs unchanged."""
    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor | None = None
    paths: Tensor | None = None  # [tasks]: the paths with a step taken, where a batch of steps left some out

    def returns(self) -> Tensor:
        """[tasks]: the mean over rollouts of the undiscounted return (the paper's 'average return'; the
        steps not taken earn 0, so no mask is needed); over the paths taken where a batch counted in
        steps left some out (`sample_steps`)."""
        if self.paths is not None:
            return self.rewards.sum((-1, -2)) / self.paths
        return self.rewards.sum(-1).mean(-1)


def sample(policy: GaussianMLPPolicy, params: Params, env, generator: torch.Generator) -> Rollouts:
    """Roll out the policy (one parameter set per task, [tasks, ...]) in every environment at once; the
    steps taken are recorded (`Rollouts.mask`) only where the environment can end episodes early
    (`terminates`), from its `done` before each step."""
    obs_t = env.reset()
    obs, actions, rewards, taken = [], [], [], []
    terminates = getattr(env, "terminates", False)
    with torch.no_grad():
        for _ in range(env.horizon):
            if terminates:  # taken unless the episode ended on an earlier step
                taken.append(torch.as_tensor(~env.done, dtype=obs_t.dtype).view(obs_t.shape[:2]))
            mean, log_std = policy.distribution(params, obs_t)
            action = mean + torch.exp(log_std) * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            next_obs, reward = env.step(action)
            obs.append(obs_t), actions.append(action), rewards.append(reward)
            obs_t = next_obs
    return Rollouts(torch.stack(obs, 2), torch.stack(actions, 2), torch.stack(rewards, 2),
                    torch.stack(taken, 2) if terminates else None)


def sample_steps(policy: GaussianMLPPolicy, params: Params, env, generator: torch.Generator,
                 samples: int) -> Rollouts:
    """rllab's batch of `samples` steps per task (parallel_sampler.sample_paths, then truncate_paths):
    rounds of the environment's rollouts until every task has taken that many steps, paths in the order
    sampled, the path that reaches the count cut there and the later ones left out (mask 0). `returns`
    averages over the paths with a step taken, the cut path's kept rewards included, as rllab's."""
    rounds, taken = [], None
    while taken is None or bool((taken < samples).any()):
        rollouts = sample(policy, params, env, generator)
        mask = rollouts.mask if rollouts.mask is not None else torch.ones_like(rollouts.rewards)
        rounds.append((rollouts, mask))
        taken = mask.sum((1, 2)) if taken is None else taken + mask.sum((1, 2))
    obs, actions, rewards = (torch.cat([getattr(r, k) for r, _ in rounds], 1) for k in ("obs", "actions", "rewards"))
    mask = torch.cat([m for _, m in rounds], 1)
    tasks = mask.shape[0]
    kept = mask * (mask.reshape(tasks, -1).cumsum(1).reshape(mask.shape) <= samples).to(mask.dtype)
    return Rollouts(obs, actions, rewards * kept, kept, paths=(kept.sum(-1) > 0).sum(-1).to(rewards.dtype))


def log_probs(policy: GaussianMLPPolicy, params: Params, rollouts: Rollouts) -> Tensor:
    """[tasks, rollouts * horizon]: log pi(a|s) of every step under each task's parameters."""
    tasks = rollouts.obs.shape[0]
    mean, log_std = policy.distribution(params, rollouts.obs.reshape(tasks, -1, rollouts.obs.shape[-1]))
    return log_prob(mean, log_std, rollouts.actions.reshape(tasks, -1, rollouts.actions.shape[-1]))


def mean_over_taken(values: Tensor, mask: Tensor | None, dim: int | None = None) -> Tensor:
    """The mean of per-step `values` [tasks, steps] over `dim` (None: all of them) counting the steps
    taken only (`mask`: Rollouts.mask); without a mask, the plain mean."""
    if mask is None:
        return values.mean() if dim is None else values.mean(dim)
    mask = mask.reshape(values.shape)
    return (values * mask).sum() / mask.sum() if dim is None else (values * mask).sum(dim) / mask.sum(dim)


def pg_loss(policy: GaussianMLPPolicy, params: Params, rollouts: Rollouts, adv: Tensor) -> Tensor:
    """[tasks]: -mean(log pi(a|s) * A), whose gradient is minus the REINFORCE estimate of grad J; the
    mean is over the task's steps taken (maml_rl maml_npo.py: -tf.reduce_mean(logli * adv) over the
    task's cut paths)."""
    return -mean_over_taken(log_probs(policy, params, rollouts) * adv.reshape(adv.shape[0], -1), rollouts.mask, 1)


def inner_step(policy: GaussianMLPPolicy, params: Params, rollouts: Rollouts, adv: Tensor, lr: float,
               create_graph: bool) -> Params:
    """theta'_i = theta_i + lr * (policy-gradient estimate of task i), for all tasks at once: the
    gradient of the sum of the tasks' losses w.r.t. the [tasks, ...] stack is each task's own."""
    names = list(params)
    loss = pg_loss(policy, params, rollouts, adv).sum()
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
    return {n: params[n] - lr * g for n, g in zip(names, grads)}


@dataclass
class MetaBatch:
    """What one meta-iteration sampled: the inner steps' rollouts and advantages (data for the inner
    policy gradients), and the post-adaptation rollouts with their advantages and the old policy's
    distribution (data for the surrogate and the KL)."""
    inner: list[tuple[Rollouts, Tensor]]
    post: Rollouts
    post_adv: Tensor
    old_logp: Tensor
    old_mean: Tensor
    old_log_std: Tensor


class MetaRL(nn.Module):
    """One class for MAML, first-order MAML and the baselines: they differ in the number of inner
    steps during meta-training (MAML: `inner_steps`; pretrained/oracle: 0), in whether the inner
    gradient is differentiated (`first_order`), in the observation (oracle) and in training at all
    (random). Evaluation is the same policy-gradient fine-tuning for all (`evaluate`)."""

    def __init__(self, name: str, bench: dict, hparams: dict[str, Any]):
        super().__init__()
        self.name, self.bench, self.hparams = name, bench, dict(hparams)
        self.oracle = name == "oracle"
        env = make_env(bench, torch.zeros(1, task_dim(bench)), 1, self.oracle)
        self.policy = GaussianMLPPolicy(env.observation_dim, env.action_dim,
                                        nonlinearity=str(hparams.get("nonlinearity", "relu")))
        self.inner_lr = float(hparams["inner_lr"])
        self.inner_steps = int(hparams.get("inner_steps", 1)) if name in ("maml", "fomaml") else 0
        self.first_order = name == "fomaml" or bool(hparams.get("first_order", False))
        self.test_inner_steps = int(hparams["test_inner_steps"])
        self.test_later_lr_scale = float(hparams.get("test_later_lr_scale", 1.0))
        self.rollouts = int(bench["rollouts"])
        self.test_rollouts = int(bench.get("test_rollouts", self.rollouts))  # per task per test step
        self.test_samples = bench.get("test_samples")  # or steps per task per test step (sample_steps)
        self.discount = float(bench.get("discount", 0.99))
        self.trains = name != "random"
        # the meta-update: TRPO (default) or, for the pretrained baseline, rllab's FirstOrderOptimizer
        self.optimizer = str(hparams.get("optimizer", "trpo"))
        if self.optimizer != "trpo" and self.inner_steps:
            raise ValueError(f"{name}: optimizer {self.optimizer!r} is the pretrained baseline's (no inner step)")

    def env(self, goals: Tensor, generator: torch.Generator | None = None, rollouts: int | None = None):
        """The tasks' environments, `rollouts` (default: the training's) per task; MuJoCo's reset noise
        is seeded from `generator` (reproducible runs; 2D navigation starts at the origin and draws nothing)."""
        seed = 0
        if generator is not None and self.bench["task"] != "navigation":
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return make_env(self.bench, goals, self.rollouts if rollouts is None else rollouts, self.oracle, seed)

    def advantages(self, rollouts: Rollouts) -> Tensor:
        return baseline.advantages(rollouts.obs, rollouts.rewards, self.discount, mask=rollouts.mask)

    # -- meta-training ------------------------------------------------------------------------------
    def collect(self, goals: Tensor, generator: torch.Generator) -> MetaBatch:
        """Sample D_i, adapt, sample D'_i (no meta-gradient kept: these are the TRPO step's data)."""
        env = self.env(goals, generator)
        params = {n: p.detach() for n, p in per_task(self.policy.params(), len(goals)).items()}
        inner = []
        for _ in range(self.inner_steps):
            rollouts = sample(self.policy, params, env, generator)
            adv = self.advantages(rollouts)
            inner.append((rollouts, adv))
            leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
            params = {n: p.detach() for n, p in inner_step(self.policy, leaves, rollouts, adv, self.inner_lr,
                                                            create_graph=False).items()}
        post = sample(self.policy, params, env, generator)
        with torch.no_grad():
            tasks = len(goals)
            mean, log_std = self.policy.distribution(params, post.obs.reshape(tasks, -1, post.obs.shape[-1]))
            old_logp = log_probs(self.policy, params, post)
        return MetaBatch(inner, post, self.advantages(post), old_logp, mean, log_std)

    def adapted(self, theta: Params, batch: MetaBatch) -> Params:
        """theta'_i(theta) for every task, differentiable w.r.t. theta (to second order unless first-order)."""
        params = per_task(theta, batch.post.obs.shape[0])
        for rollouts, adv in batch.inner:
            params = inner_step(self.policy, params, rollouts, adv, self.inner_lr, create_graph=not self.first_order)
        return params

    def surrogate(self, theta: Params, batch: MetaBatch) -> Tensor:
        """Mean over tasks and steps of pi_theta'(a|s) / pi_old'(a|s) * A': each task's mean over its
        steps taken, then the mean over tasks (maml_npo.py: tf.reduce_mean(lr * adv) per task, then
        tf.reduce_mean over the stack of tasks)."""
        ratio = torch.exp(log_probs(self.policy, self.adapted(theta, batch), batch.post) - batch.old_logp)
        terms = ratio * batch.post_adv.reshape(ratio.shape)
        if batch.post.mask is None:  # every task has as many steps: the mean over all of them
            return terms.mean()
        return mean_over_taken(terms, batch.post.mask, 1).mean()

    def mean_kl(self, theta: Params, batch: MetaBatch) -> Tensor:
        """Mean over tasks and steps of KL(pi_old'(.|s) || pi_theta'(.|s)): over all tasks' steps taken
        pooled (maml_npo.py: tf.reduce_mean(tf.concat(kls, 0)), so a task with more steps taken weighs
        more; without early ends, the same as the mean of the tasks' means)."""
        tasks = batch.post.obs.shape[0]
        mean, log_std = self.policy.distribution(self.adapted(theta, batch),
                                                 batch.post.obs.reshape(tasks, -1, batch.post.obs.shape[-1]))
        return mean_over_taken(kl_divergence(batch.old_mean, batch.old_log_std, mean, log_std), batch.post.mask)

    def fisher_vector_product(self, batch: MetaBatch):
        """v -> H v, H the Hessian of `mean_kl` at the current (old) parameters, without differentiating
        three times through the inner step. At theta_old the KL and its gradient in the policy's outputs
        vanish, so H = J^T M J exactly: J the Jacobian of the adapted policy's outputs (mean, log std)
        w.r.t. theta, M the Gaussian's Fisher matrix in those outputs (1/sigma^2 for the mean, 2 for the
        log std, per step and action dimension, over the number of steps taken; 0 on steps not taken).
        J chains the inner steps: d theta'/d theta = prod_j (I - alpha H_j), H_j the Hessian of step j's
        policy-gradient loss (first-order MAML: I), applied as Hessian-vector products of each step's
        retained gradient graph."""
        tasks = batch.post.obs.shape[0]
        names = [n for n, _ in self.policy.named_parameters()]
        params = {n: p.detach() for n, p in per_task(self.policy.params(), tasks).items()}
        steps = []  # (leaf stack P_j, gradient G_j of step j's loss with its graph)
        for rollouts, adv in batch.inner:
            leaves = {n: params[n].clone().requires_grad_() for n in names}
            grads = torch.autograd.grad(pg_loss(self.policy, leaves, rollouts, adv).sum(), list(leaves.values()),
                                        create_graph=not self.first_order)
            steps.append((leaves, grads))
            params = {n: (leaves[n] - self.inner_lr * g).detach() for n, g in zip(names, grads)}
        obs = batch.post.obs.reshape(tasks, -1, batch.post.obs.shape[-1])
        final = {n: params[n].clone().requires_grad_() for n in names}
        mean, log_std = self.policy.distribution(final, obs)
        if batch.post.mask is None:
            weight_mean = torch.exp(-2 * batch.old_log_std) / mean[..., 0].numel()
            weight_log_std = 2.0 / mean[..., 0].numel()
        else:  # mean_kl's pooled mean over the steps taken
            step_weight = (batch.post.mask / batch.post.mask.sum()).reshape(*mean.shape[:-1], 1)
            weight_mean = torch.exp(-2 * batch.old_log_std) * step_weight
            weight_log_std = 2.0 * step_weight

        def through_steps(vectors: list[Tensor], order) -> list[Tensor]:
            for leaves, grads in order:  # w <- w - alpha H_j w
                if self.first_order:
                    continue
                hw = torch.autograd.grad(grads, list(leaves.values()), grad_outputs=vectors, retain_graph=True)
                vectors = [w - self.inner_lr * h for w, h in zip(vectors, hw)]
            return vectors

        def product(v: Tensor) -> Tensor:
            pieces = list(v.split([p.numel() for p in self.policy.parameters()]))
            w = [piece.view(p.shape).expand(tasks, *p.shape) for piece, p in zip(pieces, self.policy.parameters())]
            w = through_steps(w, steps)
            _, (mean_dot, log_std_dot) = torch.func.jvp(
                lambda *p: self.policy.distribution(dict(zip(names, p)), obs),
                tuple(final[n].detach() for n in names), tuple(w))
            z = torch.autograd.grad((mean, log_std), list(final.values()),
                                    grad_outputs=(weight_mean * mean_dot, weight_log_std * log_std_dot),
                                    retain_graph=True)
            z = through_steps(list(z), reversed(steps))
            return torch.cat([zi.sum(0).reshape(-1) for zi in z])

        return product

    def meta_step(self, goals: Tensor, generator: torch.Generator, trpo: dict,
                  optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """Sample, then one TRPO step on the meta-parameters (in place); returns the metrics. With
        `optimizer: adam`, one step of `optimizer` (rl/train.py's Adam, its state kept across steps)
        instead."""
        batch = self.collect(goals, generator)
        if self.optimizer == "adam":
            return self.first_order_step(batch, optimizer)
        params = list(self.policy.parameters())
        info = trpo_step(params, lambda: self.surrogate(self.policy.params(), batch),
                         lambda: self.mean_kl(self.policy.params(), batch), **trpo,
                         kl_hvp=self.fisher_vector_product(batch))
        before = batch.inner[0][0].returns().mean().item() if batch.inner else batch.post.returns().mean().item()
        return {"loss": -info["surrogate"], "return_before": before,
                "return_after": batch.post.returns().mean().item(), "kl": info["kl"],
                "backtracks": float(info["backtracks"])}

    def first_order_step(self, batch: MetaBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One step of `optimizer` on the mean over tasks of the policy-gradient loss -mean(log pi(a|s) A)
        of the rollouts sampled with theta (no inner step: `batch.post`), as maml_npo.py with
        use_maml=False: surr_obj = tf.reduce_mean(tf.stack(all_surr_objs[0], 0)) (:127) on the
        pre-update samples only (:153-154), minimised by FirstOrderOptimizer(batch_size=None,
        max_epochs=1): one full-batch step. Its gradient at theta is TRPO's surrogate gradient; the step
        has no trust region."""
        if optimizer is None:
            raise ValueError(f"{self.name}: optimizer 'adam' needs its optimizer state (rl/train.py)")
        loss = pg_loss(self.policy, per_task(self.policy.params(), batch.post.obs.shape[0]),
                       batch.post, batch.post_adv).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            kl = self.mean_kl(self.policy.params(), batch).item()
        returns = batch.post.returns().mean().item()
        return {"loss": loss.item(), "return_before": returns, "return_after": returns, "kl": kl,
                "backtracks": 0.0}

    # -- meta-test ----------------------------------------------------------------------------------
    def evaluate(self, goals: Tensor, steps: int, generator: torch.Generator) -> Tensor:
        """[tasks, steps + 1]: each task's average return after 0, 1, ..., `steps` policy-gradient
        steps (`test_rollouts` fresh rollouts per task before each step and after the last, or
        `test_samples` steps taken: sample_steps): the first of size `inner_lr`, the later ones
        `inner_lr * test_later_lr_scale` (the module's docstring)."""
        env = self.env(goals, generator, self.test_rollouts)
        params = {n: p.detach() for n, p in per_task(self.policy.params(), len(goals)).items()}
        returns = []
        for step in range(steps + 1):
            if self.test_samples is None:
                rollouts = sample(self.policy, params, env, generator)
            else:
                rollouts = sample_steps(self.policy, params, env, generator, int(self.test_samples))
            returns.append(rollouts.returns())
            if step < steps:
                lr = self.inner_lr if step == 0 else self.inner_lr * self.test_later_lr_scale
                leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
                with torch.enable_grad():
                    params = {n: p.detach() for n, p in inner_step(
                        self.policy, leaves, rollouts, self.advantages(rollouts), lr, False).items()}
        return torch.stack(returns, 1)
