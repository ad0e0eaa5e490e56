"""Meta-reinforcement learning (metalearn.rl): each test checks a property with a known answer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metalearn.config import Benchmark, validate
from metalearn.rl import baseline
from metalearn.rl.envs import Navigation2D
from metalearn.rl.metarl import MetaBatch, MetaRL, Rollouts, inner_step, log_probs, pg_loss, sample
from metalearn.rl.policy import GaussianMLPPolicy, kl_divergence, per_task
from metalearn.rl.trpo import _flat, trpo_step


def tiny_bench(**overrides) -> dict:
    bench = {"task": "navigation", "model": "gaussian-mlp", "horizon": 8, "rollouts": 4, "discount": 0.99,
             "test_tasks": 3, "episode_seed": 0,
             "train": {"meta_batch": 2, "iterations": 4, "checkpoint_every": 2, "log_every": 1},
             "algorithms": {"maml": {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 2},
                            "random": {"inner_lr": 0.1, "test_inner_steps": 2}}}
    bench.update(overrides)
    return bench


def tiny_params(root, **overrides) -> dict:
    return validate({"profile": "test", "data": {"root": str(root)}, "seeds": [0],
                     "benchmarks": {"navigation-2d": tiny_bench(**overrides)}})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (the pipeline's jobs run single-threaded too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_navigation_reward_and_clipping_match_the_formula():
    goals = torch.tensor([[0.3, -0.2], [-0.5, 0.5]])
    env = Navigation2D(goals, rollouts=3)
    assert torch.equal(env.reset(), torch.zeros(2, 3, 2))
    actions = [torch.tensor([[[0.5, -0.5], [3.0, -7.0], [-1.0, 0.2]]] * 2),
               torch.tensor([[[0.9, 2.0], [-0.3, 0.0], [1e3, -1e3]]] * 2)]
    position = np.zeros((2, 3, 2))
    for action in actions:
        obs, reward = env.step(action)
        # the policy acts in [-1, 1] units (rllab's normalize): the move is clip(0.1 a, -0.1, 0.1)
        position = position + np.clip(0.1 * action.numpy(), -0.1, 0.1)
        np.testing.assert_allclose(obs.numpy(), position, rtol=0, atol=1e-6)
        distance = np.sqrt(((position - goals.numpy()[:, None]) ** 2).sum(-1))
        np.testing.assert_allclose(reward.numpy(), -distance, rtol=0, atol=1e-6)
    assert np.abs(position).max() <= 0.2 + 1e-7  # two steps of at most 0.1 per coordinate
    oracle = Navigation2D(goals, rollouts=3, oracle=True)
    obs = oracle.reset()
    assert torch.equal(obs[..., 2:], goals[:, None].expand(2, 3, 2))  # the oracle sees its goal


def test_navigation_ends_an_episode_within_the_goal_tolerance_and_masks_the_steps_after():
    """maml_rl point_env_randgoal.py: done once |x - gx| < 0.01 and |y - gy| < 0.01 after a move, and
    rllab's rollout stops there (the ending step's reward counts). Here the point stays, earns 0, and
    `sample` masks the steps after the ending one."""
    from metalearn.rl.envs import GOAL_TOLERANCE

    goals = torch.tensor([[0.1, 0.0], [0.3, 0.3]])
    env = Navigation2D(goals, rollouts=2, horizon=4)
    env.reset()
    # rollout (0, 0) lands on its goal at the first step (0.1 per coordinate at most); the others miss
    action = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]])
    obs, reward = env.step(action)
    assert env.done.tolist() == [[True, False], [False, False]] and reward[0, 0] == 0.0  # exactly at the goal
    obs2, reward2 = env.step(action)
    assert torch.equal(obs2[0, 0], obs[0, 0]) and reward2[0, 0] == 0 and (reward2[~env.done] < 0).all()
    # just inside the tolerance in both coordinates ends it; just outside in one does not
    for offset, ends in (((0.99, -0.99), True), ((1.01, 0.0), False)):
        env = Navigation2D(torch.tensor([[0.1 + offset[0] * GOAL_TOLERANCE, offset[1] * GOAL_TOLERANCE]]), 1, horizon=2)
        env.reset()
        _, reward = env.step(torch.tensor([[[1.0, 0.0]]]))
        assert env.done.item() is ends and reward.item() < 0
    # the sampler: the ending step taken, none after; its return is the sum up to the end
    torch.manual_seed(0)
    env = Navigation2D(torch.tensor([[0.1, 0.0], [0.4, -0.4]]), rollouts=3, horizon=6)

    class Straight(GaussianMLPPolicy):  # moves (1, 0) then stays, without noise: reaches (0.1, 0) at step 1
        def distribution(self, params, obs):
            mean = torch.where(obs[..., :1] < 0.05, 1.0, 0.0).expand(*obs.shape[:-1], 2) * torch.tensor([1.0, 0.0])
            return mean, torch.full_like(mean, -30.0)

    policy = Straight(2, 2)
    rollouts = sample(policy, policy.params(), env, torch.Generator().manual_seed(0))
    assert rollouts.mask is not None
    assert rollouts.mask[0].tolist() == [[1, 0, 0, 0, 0, 0]] * 3 and (rollouts.mask[1] == 1).all()
    assert rollouts.rewards[0].abs().max() < 1e-6 and (rollouts.rewards[1] < 0).all()


def test_policy_gradient_estimate_matches_the_analytic_gradient_of_a_gaussian_bandit():
    """One-step bandit, reward -(a - c)^2 per action dimension, policy N(mu, sigma^2) (a linear policy
    on a zero observation: mu is the output bias). J = -(mu - c)^2 - sigma^2 per dimension, so
    dJ/dmu = -2 (mu - c) and dJ/dlog sigma = -2 sigma^2. The REINFORCE estimate (the gradient of
    -pg_loss with the raw reward as advantage) must match within its 99.7% confidence interval."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(1, 2, hidden=())
    with torch.no_grad():
        policy.b0.copy_(torch.tensor([0.3, -0.4]))
        policy.log_std.copy_(torch.tensor([math.log(0.5), math.log(1.5)]))
    c = torch.tensor([1.0, 0.5])
    mu, sigma = policy.b0.detach(), policy.log_std.detach().exp()
    analytic = torch.cat([-2 * (mu - c), -2 * sigma ** 2])
    generator = torch.Generator().manual_seed(1)
    estimates = []
    for _ in range(400):  # 400 independent estimates of 500 samples each
        actions = mu + sigma * torch.randn(1, 500, 1, 2, generator=generator)
        rewards = -((actions - c) ** 2).sum(-1)
        rollouts = Rollouts(torch.zeros(1, 500, 1, 1), actions, rewards)
        loss = pg_loss(policy, policy.params(), rollouts, rewards).sum()
        grads = torch.autograd.grad(-loss, [policy.b0, policy.log_std])
        estimates.append(torch.cat(grads))
    estimates = torch.stack(estimates)
    mean, half_width = estimates.mean(0), 3 * estimates.std(0) / math.sqrt(len(estimates))
    assert ((mean - analytic).abs() <= half_width).all(), (mean, analytic, half_width)
    assert (half_width < 0.2 * analytic.abs()).all()  # the interval is narrow enough to mean something


def test_linear_baseline_is_the_ridge_least_squares_fit_of_the_returns():
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(3, 4, 7, 2, generator=generator, dtype=torch.float64)
    rewards = torch.randn(3, 4, 7, generator=generator, dtype=torch.float64)
    returns = baseline.discounted_returns(rewards, 0.9)
    r = rewards.numpy()
    expected = np.stack([sum(0.9 ** k * r[..., t + k] for k in range(7 - t)) for t in range(7)], -1)
    np.testing.assert_allclose(returns.numpy(), expected, rtol=1e-12)
    feats = baseline.features(obs)
    t = np.arange(7) / 100.0
    np.testing.assert_allclose(feats[1, 2, :, 4:].numpy(), np.stack([t, t ** 2, t ** 3, np.ones(7)], -1))
    np.testing.assert_allclose(feats[1, 2, :, :4].numpy(), np.concatenate([obs[1, 2], obs[1, 2] ** 2], -1))
    flat_feats, flat_returns = feats.reshape(3, 28, -1), returns.reshape(3, 28)
    coeffs = baseline.fit(flat_feats, flat_returns, reg_coeff=1e-5)
    for task in range(3):  # ridge = least squares of the system augmented with sqrt(reg) I
        f, y = flat_feats[task].numpy(), flat_returns[task].numpy()
        k = f.shape[1]
        augmented = np.concatenate([f, math.sqrt(1e-5) * np.eye(k)]), np.concatenate([y, np.zeros(k)])
        np.testing.assert_allclose(coeffs[task].numpy(), np.linalg.lstsq(*augmented, rcond=None)[0], rtol=1e-6, atol=1e-8)
    adv = baseline.advantages(obs, rewards, 0.9)
    assert torch.allclose(adv.reshape(3, -1).mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(adv.reshape(3, -1).std(1, correction=0), torch.ones(3, dtype=torch.float64))


def _learner(name: str, **hparams) -> MetaRL:
    torch.manual_seed(0)
    return MetaRL(name, tiny_bench(), {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 2, **hparams})


def test_fisher_vector_product_is_the_hessian_of_the_kl(float64):
    """The cheap J^T M J form used by the TRPO step equals double backward through the KL, for two
    inner steps of MAML, for first-order MAML and without adaptation (pretrained)."""
    for name in ("maml", "fomaml", "pretrained"):
        learner = _learner(name, inner_steps=2)
        generator = torch.Generator().manual_seed(0)
        batch = learner.collect(torch.tensor([[0.2, 0.1], [-0.3, 0.4], [0.0, -0.5]]), generator)
        params = list(learner.policy.parameters())
        kl_grad = _flat(torch.autograd.grad(learner.mean_kl(learner.policy.params(), batch), params, create_graph=True))
        v = torch.randn(kl_grad.shape, generator=generator)
        exact = _flat(torch.autograd.grad(kl_grad @ v, params))
        assert torch.allclose(learner.fisher_vector_product(batch)(v), exact, rtol=1e-9, atol=1e-12), name


def test_trpo_step_keeps_the_kl_bound_and_raises_the_surrogate(float64):
    for name, max_kl in (("maml", 0.01), ("pretrained", 1e-4)):
        learner = _learner(name)
        generator = torch.Generator().manual_seed(0)
        batch = learner.collect(torch.tensor([[0.2, 0.1], [-0.3, 0.4]]), generator)
        before = learner.surrogate(learner.policy.params(), batch).item()
        old = [p.detach().clone() for p in learner.policy.parameters()]
        info = trpo_step(list(learner.policy.parameters()), lambda: learner.surrogate(learner.policy.params(), batch),
                         lambda: learner.mean_kl(learner.policy.params(), batch), max_kl=max_kl,
                         kl_hvp=learner.fisher_vector_product(batch) if name == "maml" else None)
        after = learner.surrogate(learner.policy.params(), batch).item()
        kl = learner.mean_kl(learner.policy.params(), batch).item()
        moved = max((p.detach() - o).abs().max().item() for p, o in zip(learner.policy.parameters(), old))
        assert moved > 0, name  # a step was taken (the test is not passed by standing still)
        assert kl <= max_kl and after > before, (name, kl, before, after, info)
        assert kl > 0.05 * max_kl  # the step goes near the edge of the trust region, as TRPO's should


def test_maml_meta_gradient_matches_finite_differences(float64):
    """The surrogate of the adapted policies, on fixed rollouts (fixed noise), is a deterministic
    function of theta: its autograd gradient (second order through the inner policy-gradient step)
    must match central finite differences; first-order MAML's must not (the inner Hessian matters)."""
    learner = _learner("maml")
    with torch.no_grad():  # zero biases put every ReLU at its kink at the start position (0, 0), where
        for name, p in learner.policy.named_parameters():  # the inner gradient jumps: move off it
            if name.startswith("b"):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(3)
    batch = learner.collect(torch.tensor([[0.4, -0.1], [-0.2, 0.3]]), generator)
    theta = {n: p.detach().clone().requires_grad_() for n, p in learner.policy.params().items()}
    grads = torch.autograd.grad(learner.surrogate(theta, batch), list(theta.values()))
    first_order = _learner("fomaml")
    first_order.load_state_dict(learner.state_dict())
    fo_grads = torch.autograd.grad(first_order.surrogate(theta, batch), list(theta.values()))
    directions = torch.Generator().manual_seed(4)
    eps = 1e-6
    for _ in range(3):
        v = {n: torch.randn(p.shape, generator=directions) for n, p in theta.items()}
        with torch.enable_grad():
            plus = learner.surrogate({n: (p.detach() + eps * v[n]).requires_grad_() for n, p in theta.items()}, batch).item()
            minus = learner.surrogate({n: (p.detach() - eps * v[n]).requires_grad_() for n, p in theta.items()}, batch).item()
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((g * v[n]).sum() for g, n in zip(grads, theta)).item()
        first = sum((g * v[n]).sum() for g, n in zip(fo_grads, theta)).item()
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (numeric, analytic)
        assert abs(numeric - first) > 1e-4 * abs(numeric)


def test_inner_step_is_a_gradient_ascent_step_on_the_estimated_return(float64):
    """theta' = theta + alpha * the policy-gradient estimate, per task, for all tasks at once."""
    learner = _learner("maml")
    generator = torch.Generator().manual_seed(0)
    batch = learner.collect(torch.tensor([[0.2, 0.1], [-0.3, 0.4]]), generator)
    adapted = learner.adapted(learner.policy.params(), batch)
    rollouts, adv = batch.inner[0]
    for task in range(2):
        one = Rollouts(rollouts.obs[task:task + 1], rollouts.actions[task:task + 1], rollouts.rewards[task:task + 1],
                       None if rollouts.mask is None else rollouts.mask[task:task + 1])
        params = learner.policy.params()
        grads = torch.autograd.grad(-pg_loss(learner.policy, params, one, adv[task:task + 1]).sum(), list(params.values()))
        for (name, p), g in zip(params.items(), grads):
            assert torch.allclose(adapted[name][task], p + 0.1 * g, atol=1e-12), name


def test_test_steps_after_the_first_take_inner_lr_times_test_later_lr_scale(float64):
    """The official evaluation's step sizes (maml_rl test_maml_*.py: init_learning_rate s for the first
    update, learning_rate 0.5 s after): evaluate's returns equal those of a hand-written loop of
    policy-gradient steps of 0.1, then 0.05, then 0.05, on the same rollouts (same noise)."""
    goals = torch.tensor([[0.2, 0.1], [-0.3, 0.4]])
    learner = _learner("maml", test_later_lr_scale=0.5)
    returns = learner.evaluate(goals, 3, torch.Generator().manual_seed(7))

    generator = torch.Generator().manual_seed(7)
    env = learner.env(goals, generator)
    params = {n: p.detach().expand(2, *p.shape).clone() for n, p in learner.policy.params().items()}
    expected = []
    for lr in (0.1, 0.05, 0.05, None):
        rollouts = sample(learner.policy, params, env, generator)
        expected.append(rollouts.returns())
        if lr is None:
            break
        leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
        adv = baseline.advantages(rollouts.obs, rollouts.rewards, 0.99, mask=rollouts.mask)
        grads = torch.autograd.grad(pg_loss(learner.policy, leaves, rollouts, adv).sum(), list(leaves.values()))
        params = {n: (p - lr * g).detach() for (n, p), g in zip(leaves.items(), grads)}
    torch.testing.assert_close(returns, torch.stack(expected, 1), rtol=0, atol=1e-12)
    # not passed vacuously: the default (every step 0.1) agrees on steps 0 and 1 only
    default = _learner("maml").evaluate(goals, 3, torch.Generator().manual_seed(7))
    torch.testing.assert_close(default[:, :2], returns[:, :2], rtol=0, atol=1e-12)
    assert (default[:, 2:] - returns[:, 2:]).abs().min() > 1e-6


def test_paper_profile_runs_the_official_test_step_sizes():
    """cbfinn/maml_rl's values, pinned: navigation trains and tests with 0.5 (maml_trpo_point.py
    fast_learning_rates = [0.5]; test_maml_point.py), and the step sizes of the test scripts for
    (maml, pretrained, random, oracle), later steps scaled 0.5 (ant direction 0.01)."""
    from pathlib import Path

    from metalearn.config import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", "paper")
    official = {"navigation-2d": ([0.5, 0.5, 0.5, 0.0], 0.5),      # test_maml_point.py
                "halfcheetah-vel": ([0.1, 0.02, 0.1, 0.0], 0.5),   # test_maml_cheetah.py
                "halfcheetah-dir": ([0.1, 0.2, 1.0, 0.0], 0.5),    # test_maml_cheetah_direc.py (ICML list)
                "ant-vel": ([0.1, 0.2, 1.0, 0.0], 0.5),            # test_maml_ant.py
                "ant-dir": ([0.1, 0.2, 1.0, 0.0], 0.01)}           # test_maml_ant_direc.py
    for name, (step_sizes, later_scale) in official.items():
        algorithms = params["benchmarks"][name]["algorithms"]
        for method, step in zip(("maml", "pretrained", "random", "oracle"), step_sizes):
            learner = MetaRL(method, params["benchmarks"][name], algorithms[method])
            assert learner.inner_lr == step, (name, method)
            if step > 0:
                assert learner.test_later_lr_scale == later_scale, (name, method)
    navigation = params["benchmarks"]["navigation-2d"]["algorithms"]
    assert navigation["fomaml"]["inner_lr"] == navigation["maml"]["inner_lr"] == 0.5


def test_evaluate_samples_test_rollouts_per_task_and_defaults_to_rollouts(monkeypatch):
    """Every test step samples `test_rollouts` rollouts per task (the official evaluation's batch_size /
    horizon), not the training's `rollouts`; without the setting, the training's (default profile)."""
    from metalearn.rl import metarl

    seen, original = [], metarl.sample

    def counting(policy, params, env, generator):
        rollouts = original(policy, params, env, generator)
        seen.append(tuple(rollouts.rewards.shape[:2]))
        return rollouts

    monkeypatch.setattr(metarl, "sample", counting)
    goals = torch.tensor([[0.2, 0.1], [-0.3, 0.4]])
    hparams = {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 2}
    learner = MetaRL("maml", tiny_bench(test_rollouts=6), hparams)
    assert learner.evaluate(goals, 2, torch.Generator().manual_seed(0)).shape == (2, 3)
    assert seen == [(2, 6)] * 3  # before each of the 2 steps and after the last
    learner.collect(goals, torch.Generator().manual_seed(0))  # meta-training keeps `rollouts`
    assert seen[3:] == [(2, 4)] * 2
    seen.clear()
    MetaRL("maml", tiny_bench(), hparams).evaluate(goals, 1, torch.Generator().manual_seed(0))
    assert seen == [(2, 4)] * 2


def test_paper_profile_runs_the_official_test_batch_and_steps():
    """cbfinn/maml_rl's test scripts, pinned: VPG with batch_size environment steps per iteration at
    max_path_length H (batch_size / H rollouts per test step) for n_itr iterations (the return after
    0..n_itr - 1 steps): test_maml_point.py 4000 / 100 and 5; test_maml_cheetah.py,
    test_maml_cheetah_direc.py, test_maml_ant.py 4000 / 200 and 4; test_maml_ant_direc.py 8000 / 200 and 4;
    2D navigation counts its 4000 in steps (test_samples; the locomotion benchmarks not yet).
    The default profile's navigation keeps its training's 20 rollouts and 3 steps."""
    from pathlib import Path

    from metalearn.config import load_params

    root = Path(__file__).resolve().parents[1] / "params.yaml"
    benchmarks = load_params(root, "paper")["benchmarks"]
    official = {"navigation-2d": (4000, 100, 5), "halfcheetah-vel": (4000, 200, 4),
                "halfcheetah-dir": (4000, 200, 4), "ant-vel": (4000, 200, 4), "ant-dir": (8000, 200, 4)}
    for name, (batch_size, horizon, n_itr) in official.items():
        bench = benchmarks[name]
        assert bench["horizon"] == horizon, name
        for method, hparams in bench["algorithms"].items():
            learner = MetaRL(method, bench, hparams)
            assert learner.test_rollouts == batch_size // horizon, (name, method)
            assert learner.test_inner_steps == n_itr - 1, (name, method)
            # where paths end early (the point at its goal), the batch is counted in steps as rllab does
            assert learner.test_samples == (batch_size if name == "navigation-2d" else None), (name, method)
    default = load_params(root, "default")["benchmarks"]["navigation-2d"]
    learner = MetaRL("maml", default, default["algorithms"]["maml"])
    assert (learner.test_rollouts, learner.rollouts, learner.test_inner_steps) == (20, 20, 3)


def test_paper_profile_steps_locomotion_at_the_official_dt():
    """cbfinn/maml_rl's time per action, pinned: rllab's mujoco_env.py steps the model once per action
    (frame_skip 1: no `frame_skip` numeric in either XML) at vendor/mujoco_models half_cheetah.xml's
    timestep 0.01 and ant.xml's 0.02; the paper profile's environments take the same dt from Gymnasium's
    0.01 models. The metarl profile keeps Gymnasium's 5 substeps (dt 0.05) its measured results used."""
    from pathlib import Path

    from metalearn.config import load_params
    from metalearn.rl.envs import make_env

    root = Path(__file__).resolve().parents[1] / "params.yaml"
    goals = torch.tensor([[1.0]])
    benchmarks = load_params(root, "paper")["benchmarks"]
    official = {"halfcheetah-vel": 0.01, "halfcheetah-dir": 0.01, "ant-vel": 0.02, "ant-dir": 0.02}
    for name, dt in official.items():
        env = make_env(benchmarks[name], goals, 1)
        assert env.model.opt.timestep == 0.01 and env.dt == pytest.approx(dt, abs=1e-15), name
        assert env.horizon * env.dt == pytest.approx(200 * dt)  # 2 s (cheetah) / 4 s (ant) per episode
    metarl = load_params(root, "metarl")["benchmarks"]["halfcheetah-vel"]
    assert make_env(metarl, goals, 1).dt == pytest.approx(0.05)


def _whole_and_killed_then_resumed(monkeypatch, params: dict, algorithm: str, out, log=lambda s: None,
                                   after_kill=lambda: None):
    """Train `algorithm` uninterrupted (out/whole) and again with its third meta-step killed, then
    resumed (out/killed; `after_kill` runs in between, `log` gets the resumed run's lines); -> the two
    model files."""
    from metalearn.rl import metarl
    from metalearn.rl.train import train

    whole = train(Benchmark.of(params, "navigation-2d"), algorithm, 0, out / "whole", log=lambda s: None)
    original, calls = metarl.MetaRL.meta_step, []

    def dies_at_the_third_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(metarl.MetaRL, "meta_step", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train(Benchmark.of(params, "navigation-2d"), algorithm, 0, out / "killed", log=lambda s: None)
    after_kill()
    monkeypatch.setattr(metarl.MetaRL, "meta_step", original)
    return whole, train(Benchmark.of(params, "navigation-2d"), algorithm, 0, out / "killed", log=log)


def test_killed_training_resumes_to_the_identical_result(tmp_path, monkeypatch):
    logs = []
    whole, resumed = _whole_and_killed_then_resumed(monkeypatch, tiny_params(tmp_path), "maml", tmp_path,
                                                    log=logs.append)
    assert any("resuming" in line and "iteration 2" in line for line in logs)
    a = torch.load(whole, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = torch.load(whole, weights_only=True)
    assert fresh["iterations"] == 4


def test_keep_best_saves_the_parameters_of_the_best_post_update_return(tmp_path, monkeypatch):
    """MAML paper Appendix A.2 ("the model with the best average return during training was used for
    evaluation"), opt-in: with scripted post-update returns 1, 3, 2, 0.5 the model file holds the
    parameters that sampled iteration 2 (before its TRPO step), not the last ones; training itself is
    unchanged, and a run killed after iteration 2's checkpoint resumes to the same selection."""
    from metalearn.rl import metarl
    from metalearn.rl.train import train

    scores, original, states = [1.0, 3.0, 2.0, 0.5], metarl.MetaRL.meta_step, []

    def scripted(self, *args, **kwargs):
        states.append({k: v.clone() for k, v in self.state_dict().items()})
        if len(states) == 3 and kill:
            raise KeyboardInterrupt
        return {**original(self, *args, **kwargs), "return_after": scores[len(states) - 1]}

    monkeypatch.setattr(metarl.MetaRL, "meta_step", scripted)
    train_cfg = {"meta_batch": 2, "iterations": 4, "checkpoint_every": 2, "log_every": 1}
    kill, quiet = False, (lambda s: None)
    plain = torch.load(train(Benchmark.of(tiny_params(tmp_path / "a"), "navigation-2d"), "maml", 0, tmp_path / "plain",
                             log=quiet), weights_only=True)
    plain_states, states[:] = list(states), []
    params = tiny_params(tmp_path / "b", train={**train_cfg, "keep_best": True})
    best = torch.load(train(Benchmark.of(params, "navigation-2d"), "maml", 0, tmp_path / "best", log=quiet), weights_only=True)
    assert best["best_iteration"] == 2 and best["iterations"] == 4 and "best_iteration" not in plain
    assert all(torch.equal(a[k], b[k]) for a, b in zip(states, plain_states) for k in a)  # same training
    assert all(torch.equal(best["state_dict"][k], states[1][k]) for k in states[1])
    assert not all(torch.equal(best["state_dict"][k], plain["state_dict"][k]) for k in states[1])

    states[:], kill = [], True
    with pytest.raises(KeyboardInterrupt):
        train(Benchmark.of(params, "navigation-2d"), "maml", 0, tmp_path / "killed", log=quiet)
    states[:], kill = [None, None], False  # the resumed run starts at iteration 3
    resumed = torch.load(train(Benchmark.of(params, "navigation-2d"), "maml", 0, tmp_path / "killed", log=quiet),
                         weights_only=True)
    assert resumed["best_iteration"] == 2
    assert all(torch.equal(resumed["state_dict"][k], best["state_dict"][k]) for k in best["state_dict"])


def test_paper_profile_keeps_the_best_iteration_and_the_others_the_last():
    from pathlib import Path

    from metalearn.config import load_params

    root = Path(__file__).resolve().parents[1] / "params.yaml"
    for profile, expected in (("paper", True), ("default", False), ("metarl", False)):
        for name, bench in load_params(root, profile)["benchmarks"].items():
            if bench is not None and bench.get("model") == "gaussian-mlp":
                assert bench["train"].get("keep_best", False) is expected, (profile, name)


def test_saved_test_tasks_are_identical_across_reruns_and_follow_the_seed(tmp_path):
    from metalearn.rl.tasks import make_test_tasks, read_test_tasks

    first = make_test_tasks(Benchmark.of(tiny_params(tmp_path / "a"), "navigation-2d"))
    second = make_test_tasks(Benchmark.of(tiny_params(tmp_path / "b"), "navigation-2d"))
    assert first.read_bytes() == second.read_bytes()
    goals, seed = read_test_tasks(Benchmark.of(tiny_params(tmp_path / "a"), "navigation-2d"))
    assert goals.shape == (3, 2) and goals.abs().max() <= 0.5
    other, other_seed = read_test_tasks(Benchmark.of(tiny_params(tmp_path / "b"), "navigation-2d"))
    assert torch.equal(goals, other) and seed == other_seed
    reseeded = Benchmark.of(tiny_params(tmp_path / "c", episode_seed=1), "navigation-2d")
    make_test_tasks(reseeded)
    assert not torch.equal(goals, read_test_tasks(reseeded)[0])


def test_cli_split_train_evaluate_tracked_give_returns_after_each_step(tmp_path, monkeypatch):
    import json

    import yaml

    from metalearn.cli import main

    monkeypatch.chdir(tmp_path)
    # An absolute store: MLflow caches a store per URI within a process, so the default relative
    # sqlite:///mlflow.db would follow this test's folder into later tests of the same session.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path / "data")))
    assert main(["split", "-b", "navigation-2d"]) == 0
    for algorithm in ("maml", "random"):
        assert main(["train", "-b", "navigation-2d", "-a", algorithm, "--out", f"m/{algorithm}", "--track"]) == 0
        assert main(["evaluate", "--model", f"m/{algorithm}/model.pt", "--out", f"{algorithm}.json", "--track"]) == 0
        result = json.loads((tmp_path / f"{algorithm}.json").read_text())
        assert result["metric"] == "return" and result["episodes"] == 3 and result["inner_steps"] == 2
        assert [p["steps"] for p in result["curve"]] == [0, 1, 2]
        assert result["per_episode"] == result["per_episode_curve"][-1]
        assert all(-8 * 1.5 <= v <= 0 for v in result["per_episode"])  # 8 steps, distance at most ~1.5
    assert main(["aggregate", "maml.json", "random.json", "--out", "summary.csv"]) == 0
    assert "navigation-2d,maml,,4,return" in (tmp_path / "summary.csv").read_text()
    # test_rollouts is an evaluation setting (config.NOT_TRAINING_SETTINGS): the run's config (the pipeline's
    # rerun trigger, the checkpoint's hash) does not change, and the model is evaluated with the current value
    from metalearn.train import run_config
    assert (run_config(tiny_params(tmp_path / "data", test_rollouts=6), "navigation-2d", "maml", 0)
            == run_config(tiny_params(tmp_path / "data"), "navigation-2d", "maml", 0))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path / "data", test_rollouts=6)))
    assert main(["evaluate", "--model", "m/maml/model.pt", "--out", "maml6.json"]) == 0
    assert json.loads((tmp_path / "maml6.json").read_text())["shots"] == 6
    # so is test_samples (the test batch in steps), read by the evaluation from the current params
    assert (run_config(tiny_params(tmp_path / "data", test_samples=20), "navigation-2d", "maml", 0)
            == run_config(tiny_params(tmp_path / "data"), "navigation-2d", "maml", 0))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path / "data", test_samples=20)))
    assert main(["evaluate", "--model", "m/maml/model.pt", "--out", "maml-steps.json"]) == 0
    by_steps = json.loads((tmp_path / "maml-steps.json").read_text())["per_episode"]
    assert by_steps != json.loads((tmp_path / "maml.json").read_text())["per_episode"]  # 20 steps: 3 paths, cut


def test_schema_rejects_bad_rl_settings_naming_the_key(tmp_path):
    from metalearn.errors import ConfigError

    for overrides, key in (({"rollouts": 0}, "rollouts"), ({"trpo": {"max_kl": -1}}, "max_kl"),
                           ({"algorithms": {"maml": {"inner_lr": 0.1, "inner_steps": 1}}}, "test_inner_steps"),
                           ({"ways": 5}, "ways"), ({"test_tasks": 1}, "test_tasks"),
                           ({"frame_skip": 0}, "frame_skip"), ({"test_rollouts": 0}, "test_rollouts"),
                           ({"test_samples": 0}, "test_samples")):
        with pytest.raises(ConfigError, match=key):
            tiny_params(tmp_path, **overrides)


@pytest.mark.parametrize("frame_skip", [5, 1, 2])
def test_batched_half_cheetah_matches_gymnasium_step_by_step(frame_skip):
    """Observations of the mujoco.rollout-stepped environments equal Gymnasium's own HalfCheetah-v5 from
    the same states under the same actions (clipped to [-1, 1]), and rewards the official ones
    (maml_rl half_cheetah_env_rand.py, half_cheetah_env_rand_direc.py) of Gymnasium's velocity: goal
    velocity -|v - goal| and goal direction d * v, each minus 1e-1 * 0.5 * |a|^2 (Gymnasium's: 0.1).
    For every `frame_skip`: Gymnasium's default 5 and the paper profile's 1 (reference built with the same)."""
    import gymnasium as gym

    from metalearn.rl.locomotion import HalfCheetah

    reference = gym.make("HalfCheetah-v5", frame_skip=frame_skip).unwrapped
    reference.reset(seed=0)
    rng = np.random.default_rng(0)
    qpos = reference.init_qpos + rng.uniform(-0.1, 0.1, (4, 9))
    qvel = 0.1 * rng.standard_normal((4, 9))
    actions = rng.uniform(-1.3, 1.3, (10, 4, 6))  # some beyond the action space: clipped
    for family, goals in (("velocity", [[1.5], [0.5]]), ("direction", [[1.0], [-1.0]])):
        goals = torch.tensor(goals, dtype=torch.float64)
        batch = HalfCheetah(goals, 2, family, frame_skip=frame_skip)
        assert batch.dt == pytest.approx(reference.dt) and batch.dt == pytest.approx(0.01 * frame_skip)
        obs = batch.set_state(qpos, qvel).reshape(4, -1).numpy()
        steps = [batch.step(torch.as_tensor(actions[t]).view(2, 2, 6)) for t in range(10)]
        for k in range(4):
            reference.set_state(qpos[k], qvel[k])
            np.testing.assert_allclose(obs[k], reference._get_obs(), atol=1e-9)
            goal = goals[k // 2, 0].item()
            for t in range(10):
                o, _, _, _, info = reference.step(np.clip(actions[t, k], -1, 1))
                forward = -abs(info["x_velocity"] - goal) if family == "velocity" else goal * info["x_velocity"]
                ctrl_cost = 0.05 * (np.clip(actions[t, k], -1, 1) ** 2).sum()
                np.testing.assert_allclose(steps[t][0].reshape(4, -1)[k].numpy(), o, atol=1e-8)
                assert abs(steps[t][1].reshape(4)[k].item() - (forward - ctrl_cost)) < 1e-8
        assert batch.done.shape == (4,) and not batch.done.any()  # HalfCheetah-v5 never terminates


# frame_skip -> the step at which the thrown ant leaves the healthy range: the first step to end after
# its torso passes z = 1, about 0.1 s in (steps ending 0.11, 0.12, 0.15 s in)
ANT_TERMINATION_STEP = {5: 2, 1: 10, 2: 5}


@pytest.mark.parametrize("frame_skip", [5, 1, 2])
def test_batched_ant_matches_gymnasium_step_by_step_including_termination(frame_skip):
    """Observations (with the clipped contact forces) and termination of the batched Ant equal Gymnasium's
    own Ant-v5 from the same states under the same actions; rewards are the official ones (maml_rl
    ant_env_rand.py, ant_env_rand_direc.py) of Gymnasium's velocity and contact forces: -|v - goal| + 1.0
    + 0.05 or d * v + 0.05, minus 0.005 |a|^2 and 5e-4 |clip(cfrc_ext)|^2. One environment is thrown
    upward and leaves the healthy z range 0.11-0.15 s in (at frame_skip 5 its third step): that step
    earns the same terms (the survive constant included, as there); afterwards its reward is 0 and its
    observation frozen. For every `frame_skip` (0.4 s of simulated time each): Gymnasium's default 5, the
    paper profile's 2, and 1, where no substep is left for mujoco.rollout (reference built with the same)."""
    import gymnasium as gym

    from metalearn.rl.locomotion import Ant

    reference = gym.make("Ant-v5", frame_skip=frame_skip).unwrapped
    rng = np.random.default_rng(0)
    qpos = reference.init_qpos + rng.uniform(-0.1, 0.1, (4, 15))
    qvel = 0.1 * rng.standard_normal((4, 14))
    qvel[3, 2] = 2.0  # upward: above z = 1 after 0.11-0.15 s
    horizon = 40 // frame_skip
    actions = rng.uniform(-1.3, 1.3, (40, 4, 8))[:horizon]  # some beyond the action space: clipped
    for family, goals in (("velocity", [[2.5], [0.5]]), ("direction", [[1.0], [-1.0]])):
        goals = torch.tensor(goals, dtype=torch.float64)
        batch = Ant(goals, 2, family, frame_skip=frame_skip)
        assert batch.dt == pytest.approx(reference.dt) and batch.dt == pytest.approx(0.01 * frame_skip)
        obs = batch.set_state(qpos, qvel).reshape(4, -1).numpy()
        steps = [batch.step(torch.as_tensor(actions[t]).view(2, 2, 8)) for t in range(horizon)]
        ended = []
        for k in range(4):
            reference.reset(seed=0)  # zeroes cfrc_ext, as a real reset does
            reference.set_state(qpos[k], qvel[k])
            np.testing.assert_allclose(obs[k], reference._get_obs(), atol=1e-9)
            goal = goals[k // 2, 0].item()
            for t in range(horizon):
                o, _, terminated, _, info = reference.step(np.clip(actions[t, k], -1, 1))
                forward = -abs(info["x_velocity"] - goal) if family == "velocity" else goal * info["x_velocity"]
                survive = 1.0 + 0.05 if family == "velocity" else 0.05
                ctrl_cost = 0.5 * 1e-2 * (np.clip(actions[t, k], -1, 1) ** 2).sum()
                contact_cost = 0.5 * 1e-3 * (np.clip(reference.data.cfrc_ext, -1, 1) ** 2).sum()
                expected = forward + survive - ctrl_cost - contact_cost
                np.testing.assert_allclose(steps[t][0].reshape(4, -1)[k].numpy(), o, atol=1e-8)
                assert abs(steps[t][1].reshape(4)[k].item() - expected) < 1e-8
                if terminated:
                    ended.append((k, t))
                    for later in steps[t + 1:]:
                        assert later[1].reshape(4)[k].item() == 0.0
                        assert torch.equal(later[0].reshape(4, -1)[k], steps[t][0].reshape(4, -1)[k])
                    break
        assert ended == [(3, ANT_TERMINATION_STEP[frame_skip])]
        assert batch.done.tolist() == [False, False, False, True]
        # the contact forces were exercised: zero after the reset, nonzero (feet landing) later
        assert (obs[:, 27:] == 0).all() and any((o[..., 27:] != 0).any() for o, _ in steps)


def test_saved_locomotion_test_tasks_follow_the_papers_distributions(tmp_path):
    """The saved test tasks are the draws of `episode_seed`: goal velocities U[0, 3] for the ant and
    U[0, 2] for the cheetah (the same uniforms, scaled), directions +1 / -1 for both."""
    from metalearn.rl.tasks import make_test_tasks, read_test_tasks

    benches = {name: tiny_bench(task=name, test_tasks=200)
               for name in ("ant-vel", "ant-dir", "halfcheetah-vel", "halfcheetah-dir")}
    params = validate({"profile": "test", "data": {"root": str(tmp_path)}, "seeds": [0], "benchmarks": benches})
    tasks = {}
    for name in benches:
        make_test_tasks(Benchmark.of(params, name))
        tasks[name] = read_test_tasks(Benchmark.of(params, name))[0]
        assert tasks[name].shape == (200, 1)
    uniform = torch.rand(200, 1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tasks["ant-vel"], 3 * uniform)
    torch.testing.assert_close(tasks["halfcheetah-vel"], 2 * uniform)
    assert tasks["ant-vel"].max() > 2.5 and tasks["ant-vel"].min() < 0.5
    for name in ("ant-dir", "halfcheetah-dir"):
        assert set(tasks[name].flatten().tolist()) == {-1.0, 1.0}
        assert 60 < (tasks[name] > 0).sum() < 140


def test_ant_oracle_observation_and_learner_dimensions():
    """The policy of an ant benchmark sees Gymnasium's 105 numbers (+ the goal for the oracle) and acts in 8."""
    learner = MetaRL("oracle", tiny_bench(task="ant-dir"), {"inner_lr": 0.0, "test_inner_steps": 1})
    env = learner.env(torch.tensor([[1.0], [-1.0]]))
    obs = env.reset()
    assert obs.shape == (2, 4, 106) and torch.equal(obs[..., -1], torch.tensor([[1.0] * 4, [-1.0] * 4]))
    assert (env.observation_dim, env.action_dim) == (106, 8)
    assert learner.policy.w0.shape == (106, 100) and learner.policy.w2.shape == (100, 8)


# -- episodes that end early (the Ant): means over the steps taken -----------------------------------

def test_environments_that_never_end_episodes_keep_the_unmasked_code_path():
    """The half-cheetah never ends an episode early: `sample` keeps no mask, and the policy-gradient
    loss, the surrogate and the KL are the plain means over all steps they were before masks existed,
    bit for bit (whole meta-steps and evaluations were also compared with the code before the change,
    identical)."""
    for task in ("halfcheetah-vel",):
        torch.manual_seed(0)
        learner = MetaRL("maml", tiny_bench(task=task, horizon=5), {"inner_lr": 0.1, "test_inner_steps": 1})
        goals = torch.tensor([[0.2, 0.1], [-0.3, 0.4]]) if task == "navigation" else torch.tensor([[0.5], [1.5]])
        batch = learner.collect(goals, torch.Generator().manual_seed(0))
        assert batch.post.mask is None and all(r.mask is None for r, _ in batch.inner), task
        theta = learner.policy.params()
        (rollouts, adv), = batch.inner
        plain = -(log_probs(learner.policy, theta, rollouts) * adv.reshape(2, -1)).mean(1)
        assert torch.equal(pg_loss(learner.policy, theta, rollouts, adv), plain), task
        adapted = learner.adapted(theta, batch)
        ratio = torch.exp(log_probs(learner.policy, adapted, batch.post) - batch.old_logp)
        assert torch.equal(learner.surrogate(theta, batch), (ratio * batch.post_adv.reshape(ratio.shape)).mean())
        mean, log_std = learner.policy.distribution(adapted, batch.post.obs.reshape(2, -1, batch.post.obs.shape[-1]))
        kl = kl_divergence(batch.old_mean, batch.old_log_std, mean, log_std).mean()
        assert torch.equal(learner.mean_kl(theta, batch), kl), task


def _cut(rollouts: Rollouts, lengths: list[list[int]], generator: torch.Generator) -> Rollouts:
    """The rollouts with episode (i, j) ended after lengths[i][j] steps: the steps after it get reward 0
    (as the Ant's), and noise for observations and actions, which nothing may read; mask 1 on the rest."""
    horizon = rollouts.rewards.shape[-1]
    mask = (torch.arange(horizon) < torch.tensor(lengths)[..., None]).to(rollouts.rewards.dtype)
    noise = lambda x: torch.where(mask[..., None] > 0, x, 5 * torch.randn(x.shape, generator=generator))
    return Rollouts(noise(rollouts.obs), noise(rollouts.actions), rollouts.rewards * mask, mask)


def _pad(rollouts: Rollouts, dead: int, generator: torch.Generator) -> Rollouts:
    """The rollouts, every episode ending on its last step, followed by `dead` steps not taken."""
    tasks, k, horizon = rollouts.rewards.shape
    pad = lambda x: torch.cat([x, torch.zeros(tasks, k, dead, *x.shape[3:])], 2)
    return _cut(Rollouts(pad(rollouts.obs), pad(rollouts.actions), pad(rollouts.rewards)),
                [[horizon] * k] * tasks, generator)


def _batch(learner: MetaRL, inner: list[Rollouts], post: Rollouts) -> MetaBatch:
    """A MetaBatch of these rollouts, with the old distribution of the current policy adapted on `inner`."""
    batch = MetaBatch([(r, learner.advantages(r)) for r in inner], post, learner.advantages(post), None, None, None)
    params = {n: p.detach() for n, p in learner.adapted(learner.policy.params(), batch).items()}
    tasks = post.obs.shape[0]
    obs = post.obs.reshape(tasks, -1, post.obs.shape[-1])
    batch.old_mean, batch.old_log_std = learner.policy.distribution(params, obs)
    batch.old_logp = log_probs(learner.policy, params, post).detach()
    return batch


LENGTHS = [[8, 3, 1, 5], [2, 8, 6, 4]]  # 2 tasks x 4 rollouts of horizon 8, ended early but for two


def test_baseline_and_policy_gradient_loss_use_only_the_steps_taken(float64):
    """With early ends, each task's baseline is the ridge fit on its steps taken only (t = the step's
    index in its episode), the advantages are normalised over those steps (0 elsewhere), and the
    policy-gradient loss is minus the mean of log pi * A over them: as rllab's on paths cut at `done`.
    What the steps not taken hold (noise here) changes nothing."""
    learner = _learner("maml")
    generator = torch.Generator().manual_seed(0)
    env = Navigation2D(torch.tensor([[0.2, 0.1], [-0.3, 0.4]]), 4, horizon=8)
    full = sample(learner.policy, learner.policy.params(), env, generator)
    rollouts = _cut(full, LENGTHS, generator)
    adv = learner.advantages(rollouts)
    loss = pg_loss(learner.policy, learner.policy.params(), rollouts, adv)
    logp = log_probs(learner.policy, learner.policy.params(), rollouts).reshape(2, 4, 8)
    for i in range(2):
        live = [(j, slice(0, n)) for j, n in enumerate(LENGTHS[i])]
        feats = torch.cat([baseline.features(rollouts.obs[i, j, t]) for j, t in live])
        returns = torch.cat([baseline.discounted_returns(rollouts.rewards[i, j, t], 0.99) for j, t in live])
        expected = returns - feats @ baseline.fit(feats[None], returns[None])[0]
        expected = (expected - expected.mean()) / (expected.std(correction=0) + 1e-8)
        torch.testing.assert_close(torch.cat([adv[i, j, t] for j, t in live]), expected, rtol=1e-9, atol=1e-9)
        manual = -(torch.cat([logp[i, j, t] for j, t in live]) * expected).mean()
        torch.testing.assert_close(loss[i], manual, rtol=1e-9, atol=1e-12)
    assert (adv[rollouts.mask == 0] == 0).all()
    other = _cut(full, LENGTHS, torch.Generator().manual_seed(1))  # other noise on the steps not taken
    assert not torch.equal(other.obs, rollouts.obs)
    assert torch.equal(learner.advantages(other), adv)
    assert torch.equal(pg_loss(learner.policy, learner.policy.params(), other, adv), loss)


def test_steps_not_taken_change_nothing_in_the_meta_step(float64):
    """The same rollouts, once as they are and once followed by 3 steps not taken (every episode ended
    on its last step, as a path the official sampler cuts there), give the same advantages, inner step,
    surrogate, KL, Fisher products and TRPO step: the means are over the steps taken."""
    generator = torch.Generator().manual_seed(0)
    results = []
    for padded in (False, True):
        learner = _learner("maml")
        batch = learner.collect(torch.tensor([[0.2, 0.1], [-0.3, 0.4]]), torch.Generator().manual_seed(0))
        pad = (lambda r: _pad(r, 3, generator)) if padded else (lambda r: r)
        batch = _batch(learner, [pad(r) for r, _ in batch.inner], pad(batch.post))
        (rollouts, adv), = batch.inner
        theta = learner.policy.params()
        leaves = {n: p.detach().clone().requires_grad_() for n, p in per_task(theta, 2).items()}
        stepped = inner_step(learner.policy, leaves, rollouts, adv, 0.1, create_graph=False)
        near = {n: (p.detach() + 0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
                .requires_grad_() for n, p in theta.items()}
        v = torch.randn(sum(p.numel() for p in theta.values()), generator=torch.Generator().manual_seed(3))
        values = [adv[..., :8], batch.post_adv[..., :8], *stepped.values(), learner.surrogate(near, batch),
                  learner.mean_kl(near, batch), learner.fisher_vector_product(batch)(v)]
        trpo_step(list(learner.policy.parameters()), lambda: learner.surrogate(learner.policy.params(), batch),
                  lambda: learner.mean_kl(learner.policy.params(), batch), kl_hvp=learner.fisher_vector_product(batch))
        results.append(values + [p.detach().clone() for p in learner.policy.parameters()])
    assert results[1][0].shape == results[0][0].shape
    parameters = len(list(_learner("maml").parameters()))
    for a, b in zip(results[0][:-parameters], results[1][:-parameters]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    for a, b in zip(results[0][-parameters:], results[1][-parameters:]):  # CG amplifies rounding
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_surrogate_and_kl_average_over_the_steps_taken_as_maml_npo(float64):
    """Episodes of different lengths: the surrogate is each task's mean over its steps taken, then the
    mean over tasks (maml_npo.py reduce_mean per task, then over tasks); the KL the mean over all tasks'
    steps taken pooled (reduce_mean of the concatenated KLs); the Fisher form is the Hessian of that KL."""
    learner = _learner("maml")
    generator = torch.Generator().manual_seed(0)
    batch = learner.collect(torch.tensor([[0.2, 0.1], [-0.3, 0.4]]), generator)
    batch = _batch(learner, [_cut(r, LENGTHS[::-1], generator) for r, _ in batch.inner],
                   _cut(batch.post, LENGTHS, generator))
    theta = {n: (p.detach() + 0.01 * torch.randn(p.shape, generator=generator)).requires_grad_()
             for n, p in learner.policy.params().items()}
    adapted = learner.adapted(theta, batch)
    ratio = torch.exp(log_probs(learner.policy, adapted, batch.post) - batch.old_logp).reshape(2, 4, 8)
    mean, log_std = learner.policy.distribution(adapted, batch.post.obs.reshape(2, -1, 2))
    kl = kl_divergence(batch.old_mean, batch.old_log_std, mean, log_std).reshape(2, 4, 8)
    live = [(i, j, slice(0, n)) for i in range(2) for j, n in enumerate(LENGTHS[i])]
    per_task_means = [torch.cat([ratio[i, j, t] * batch.post_adv[i, j, t] for k, j, t in live if k == i]).mean()
                      for i in range(2)]
    torch.testing.assert_close(learner.surrogate(theta, batch), torch.stack(per_task_means).mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(learner.mean_kl(theta, batch), torch.cat([kl[i, j, t] for i, j, t in live]).mean(),
                               rtol=1e-10, atol=0)
    params = list(learner.policy.parameters())
    kl_grad = _flat(torch.autograd.grad(learner.mean_kl(learner.policy.params(), batch), params, create_graph=True))
    v = torch.randn(kl_grad.shape, generator=generator)
    exact = _flat(torch.autograd.grad(kl_grad @ v, params))
    assert torch.allclose(learner.fisher_vector_product(batch)(v), exact, rtol=1e-9, atol=1e-12)


def test_ant_rollouts_record_the_steps_taken():
    """`sample` in the Ant marks every step up to and including the one on which the episode ends (its
    reward counts, as in the official paths), and none after; one environment thrown upward ends early."""
    from metalearn.rl.locomotion import Ant

    class Thrown(Ant):
        def reset(self):
            super().reset()
            qpos, qvel = self.state[:, 1:1 + self.nq].copy(), self.state[:, 1 + self.nq:1 + self.nq + self.nv].copy()
            qvel[3, 2] = 2.0  # upward: above z = 1 within a few steps
            return self.set_state(qpos, qvel)

    torch.manual_seed(0)
    env = Thrown(torch.tensor([[1.0], [-1.0]]), 2, "direction", horizon=8)
    policy = GaussianMLPPolicy(env.observation_dim, env.action_dim)
    rollouts = sample(policy, policy.params(), env, torch.Generator().manual_seed(0))
    mask = rollouts.mask.reshape(4, 8)
    taken = mask.sum(1).long().tolist()
    assert taken[:3] == [8, 8, 8] and 1 < taken[3] < 8 and env.done.tolist() == [False, False, False, True]
    assert torch.equal(mask[3], (torch.arange(8) < taken[3]).to(mask.dtype))
    rewards = rollouts.rewards.reshape(4, 8)
    assert rewards[3, taken[3] - 1] != 0 and (rewards[3, taken[3]:] == 0).all()


def test_pretrained_adam_iterations_are_adam_steps_on_the_pre_update_pg_loss(float64):
    """`optimizer: adam` (maml_rl maml_npo.py:31-36, use_maml=False): each iteration is one full-batch
    Adam step (lr 1e-3) on the mean over tasks of -mean(log pi(a|s) A) of the rollouts sampled with
    theta, its moments carried over. The first step has a closed form: -lr g / (|g| + eps); the second
    is recomputed by hand from the first's moments."""
    learner = _learner("pretrained", optimizer="adam")
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    goals = torch.tensor([[0.2, 0.1], [-0.3, 0.4], [0.0, -0.5]])
    names = [n for n, _ in learner.policy.named_parameters()]

    def gradient(seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The gradient of the tasks' mean loss on the rollouts meta_step(seed) samples, written out."""
        batch = learner.collect(goals, torch.Generator().manual_seed(seed))
        assert batch.inner == []  # no inner step: the pre-update rollouts only
        theta = {n: p.detach().clone().requires_grad_() for n, p in learner.policy.params().items()}
        logp = log_probs(learner.policy, per_task(theta, 3), batch.post)
        loss = torch.stack([-(logp[i] * batch.post_adv[i].reshape(-1)).mean() for i in range(3)]).mean()
        return list(torch.autograd.grad(loss, [theta[n] for n in names])), loss.detach()

    g1, loss1 = gradient(1)
    old = [p.detach().clone() for p in learner.policy.parameters()]
    metrics = learner.meta_step(goals, torch.Generator().manual_seed(1), {}, optimizer)
    assert metrics["loss"] == pytest.approx(loss1.item(), rel=1e-12) and metrics["backtracks"] == 0
    for p, o, g in zip(learner.policy.parameters(), old, g1):
        torch.testing.assert_close(p.detach(), o - 1e-3 * g / (g.abs() + 1e-8),
                                   rtol=0, atol=1e-15)
    assert max((p.detach() - o).abs().max().item() for p, o in zip(learner.policy.parameters(), old)) > 9e-4

    g2, _ = gradient(2)
    old = [p.detach().clone() for p in learner.policy.parameters()]
    learner.meta_step(goals, torch.Generator().manual_seed(2), {}, optimizer)
    for p, o, a, b in zip(learner.policy.parameters(), old, g1, g2):
        m = (0.9 * 0.1 * a + 0.1 * b) / (1 - 0.9 ** 2)  # bias-corrected moments
        v = (0.999 * 0.001 * a * a + 0.001 * b * b) / (1 - 0.999 ** 2)
        torch.testing.assert_close(p.detach(), o - 1e-3 * m / (v.sqrt() + 1e-8), rtol=0, atol=1e-15)


def test_pretrained_adam_training_resumes_to_the_identical_result(tmp_path, monkeypatch):
    """Adam's moments are part of the checkpoint: a run killed after iteration 2 ends where an
    uninterrupted one does (a resumed run with fresh moments would not)."""
    algorithms = {"pretrained": {"inner_lr": 0.1, "test_inner_steps": 2, "optimizer": "adam"}}

    def the_checkpoint_holds_adams_moments():
        assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    whole, resumed = _whole_and_killed_then_resumed(monkeypatch, tiny_params(tmp_path, algorithms=algorithms),
                                                    "pretrained", tmp_path, after_kill=the_checkpoint_holds_adams_moments)
    a = torch.load(whole, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_only_the_paper_navigation_pretrained_uses_the_official_adam():
    """maml_rl's navigation baseline is use_maml=False (Adam, test_maml_point.py:23); its locomotion
    baselines are plain TRPO runs (cluster_trpo_*.py), and other profiles keep TRPO everywhere. The
    setting belongs to the pretrained baseline only."""
    from pathlib import Path

    from metalearn.config import load_params
    from metalearn.errors import ConfigError

    root = Path(__file__).resolve().parents[1] / "params.yaml"
    for profile in ("paper", "default", "metarl"):
        for name, bench in load_params(root, profile)["benchmarks"].items():
            if bench is None or bench.get("model") != "gaussian-mlp":
                continue
            for method, hparams in bench["algorithms"].items():
                expected = "adam" if (profile, name, method) == ("paper", "navigation-2d", "pretrained") else "trpo"
                assert MetaRL(method, bench, hparams).optimizer == expected, (profile, name, method)
    with pytest.raises(ConfigError, match="optimizer"):
        validate({"profile": "test", "data": {"root": "/tmp"}, "seeds": [0], "benchmarks": {"navigation-2d": tiny_bench(
            algorithms={"maml": {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 2, "optimizer": "adam"}})}})


def test_the_random_baselines_tanh_network_is_the_official_one():
    """maml_rl test_maml_point.py:56-60 builds the random baseline without hidden_nonlinearity: rllab's
    tanh. `nonlinearity: tanh` gives exactly tanh(tanh(obs W0 + b0) W1 + b1) W2 + b2; relu stays the default."""
    torch.manual_seed(0)
    tanh = MetaRL("random", tiny_bench(), {"inner_lr": 0.5, "test_inner_steps": 1, "nonlinearity": "tanh"}).policy
    relu = MetaRL("random", tiny_bench(), {"inner_lr": 0.5, "test_inner_steps": 1}).policy
    obs = torch.randn(5, 2)
    for policy, f in ((tanh, torch.tanh), (relu, torch.relu)):
        p = policy.params()
        expected = f(f(obs @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        assert torch.equal(policy.distribution(p, obs)[0], expected)
    from pathlib import Path

    from metalearn.config import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", "paper")["benchmarks"]["navigation-2d"]["algorithms"]
    assert params["random"]["nonlinearity"] == "tanh" and "nonlinearity" not in params["maml"]


class _EndsAfter:
    """A stand-in environment: `rollouts` paths per task, each ending after `length` steps (taken steps
    reward 1, the frozen ones 0), horizon 5."""
    horizon, terminates = 5, True

    def __init__(self, tasks: int, rollouts: int, length: int):
        self.shape, self.length = (tasks, rollouts), length

    def reset(self):
        self.t = 0
        self.done = torch.zeros(self.shape, dtype=torch.bool)
        return torch.zeros(*self.shape, 2)

    def step(self, action):
        reward = (~self.done).float()
        self.t += 1
        self.done = self.done | (self.t >= self.length)
        return torch.zeros(*self.shape, 2), reward


def test_a_test_batch_of_steps_takes_paths_until_the_count_and_cuts_the_last():
    """rllab's sample_paths + truncate_paths: paths of 3 steps, 10 steps per task -> 3 whole paths and
    one cut to 1 step (4 paths, return (3+3+3+1)/4); rounds of 2 rollouts, so 2 rounds, the 4th path
    of the second round left out."""
    from metalearn.rl.metarl import sample_steps

    policy = MetaRL("maml", tiny_bench(), {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 1}).policy
    params = {n: p.detach() for n, p in per_task(policy.params(), 2).items()}
    rollouts = sample_steps(policy, params, _EndsAfter(2, 2, 3), torch.Generator().manual_seed(0), 10)
    assert rollouts.mask.shape == (2, 4, 5)
    assert rollouts.mask[0].sum(-1).tolist() == [3, 3, 3, 1] and torch.equal(rollouts.mask[0], rollouts.mask[1])
    assert rollouts.mask.sum((1, 2)).tolist() == [10, 10]
    assert rollouts.returns().tolist() == [2.5, 2.5]
    # whole paths only when the count falls on a path's end; rounds stop once every task has it
    rollouts = sample_steps(policy, params, _EndsAfter(2, 3, 3), torch.Generator().manual_seed(0), 9)
    assert rollouts.mask.shape == (2, 3, 5) and rollouts.returns().tolist() == [3.0, 3.0]


def test_a_test_batch_of_all_the_steps_of_the_rollouts_is_the_rollouts_batch():
    """Where test_samples is test_rollouts x horizon and no path ends early (goals beyond the 8 steps of
    at most 0.1 each), the evaluation is the rollout-counted one (the same draws, every step kept)."""
    goals = torch.tensor([[1.2, 0.9], [-1.0, 1.1]])
    hparams = {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 2}
    by_rollouts = MetaRL("maml", tiny_bench(test_rollouts=6), hparams)
    by_steps = MetaRL("maml", tiny_bench(test_rollouts=6, test_samples=6 * 8), hparams)
    by_steps.load_state_dict(by_rollouts.state_dict())
    first = by_rollouts.evaluate(goals, 2, torch.Generator().manual_seed(0))
    second = by_steps.evaluate(goals, 2, torch.Generator().manual_seed(0))
    assert torch.allclose(first, second, rtol=1e-6, atol=1e-6), (first, second)
