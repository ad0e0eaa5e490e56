"""The linear feature baseline (cbfinn/maml_rl, rllab/baselines/linear_feature_baseline.py), one per task.

Features of the state at time t of a rollout: the observation o clipped to [-10, 10], o^2, and
t/100, (t/100)^2, (t/100)^3, 1. The coefficients are the ridge least-squares fit of the discounted
returns-to-go on the features, refit for every batch of rollouts of a task (regulariser 1e-5,
multiplied by 10 up to four times while the solution is not finite, as the official code).
The advantages are then the returns minus the fitted values (GAE with lambda = 1, rllab's default).
With a mask of the steps taken (episodes that end early, metarl.Rollouts), the fit and the
normalisation use those steps only, as rllab's on paths cut at their end (the features' t is the
step's index in its path either way); the advantages of steps not taken are 0.
"""
from __future__ import annotations

import torch
from torch import Tensor


def features(obs: Tensor) -> Tensor:
    """obs [..., horizon, obs_dim] -> [..., horizon, 2 * obs_dim + 4]."""
    o = obs.clamp(-10, 10)
    t = torch.arange(obs.shape[-2], dtype=obs.dtype) / 100.0
    t = t[:, None].expand(*obs.shape[:-1], 1)
    return torch.cat([o, o ** 2, t, t ** 2, t ** 3, torch.ones_like(t)], -1)


def fit(feats: Tensor, returns: Tensor, reg_coeff: float = 1e-5) -> Tensor:
    """Per task: argmin_w ||F w - y||^2 + reg ||w||^2. feats [tasks, n, k], returns [tasks, n] ->
    coefficients [tasks, k] (solved in float64: the normal equations of t, t^2, t^3 are ill-conditioned)."""
    f, y = feats.double(), returns.double()
    gram, target = f.transpose(1, 2) @ f, (f.transpose(1, 2) @ y[..., None])
    eye = torch.eye(f.shape[-1], dtype=torch.float64)
    for _ in range(5):
        coeffs = torch.linalg.lstsq(gram + reg_coeff * eye, target).solution[..., 0]
        if torch.isfinite(coeffs).all():
            break
        reg_coeff *= 10
    return coeffs.to(feats.dtype)


def discounted_returns(rewards: Tensor, discount: float) -> Tensor:
    """Returns-to-go sum_k discount^k r_{t+k} along the last (time) dimension."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + discount * running
        returns[..., t] = running
    return returns


def advantages(obs: Tensor, rewards: Tensor, discount: float, normalise: bool = True,
               mask: Tensor | None = None) -> Tensor:
    """obs [tasks, rollouts, horizon, d], rewards [tasks, rollouts, horizon] -> advantages of the same
    shape as rewards: returns-to-go minus each task's fitted baseline; with `normalise`, centred and
    scaled to unit standard deviation per task (rllab's center_adv, applied per task by maml_rl).
    `mask` (shaped as rewards, 1 on the steps taken): fit and normalise over those steps only."""
    tasks = obs.shape[0]
    # the environment already pays 0 after an episode's end; the mask makes it so whatever it pays
    returns = discounted_returns(rewards if mask is None else rewards * mask, discount)
    feats = features(obs)
    feats = feats.reshape(tasks, -1, feats.shape[-1])
    if mask is not None:
        return _masked_advantages(feats, returns, mask, normalise)
    coeffs = fit(feats, returns.reshape(tasks, -1))
    adv = returns - (feats @ coeffs[..., None])[..., 0].reshape(returns.shape)
    if normalise:
        flat = adv.reshape(tasks, -1)
        adv = ((flat - flat.mean(1, keepdim=True)) / (flat.std(1, correction=0, keepdim=True) + 1e-8)).reshape(adv.shape)
    return adv


def _masked_advantages(feats: Tensor, returns: Tensor, mask: Tensor, normalise: bool) -> Tensor:
    """`advantages` over the steps taken: a zeroed row adds nothing to the normal equations (F^T F,
    F^T y), so the fit is the fit on those steps alone; the mean and the std are over them too."""
    tasks = feats.shape[0]
    m = mask.reshape(tasks, -1).to(feats.dtype)
    coeffs = fit(feats * m[..., None], returns.reshape(tasks, -1) * m)
    flat = (returns.reshape(tasks, -1) - (feats @ coeffs[..., None])[..., 0]) * m
    if normalise:
        count = m.sum(1, keepdim=True)
        centred = (flat - flat.sum(1, keepdim=True) / count) * m
        std = torch.sqrt((centred ** 2).sum(1, keepdim=True) / count)
        flat = centred / (std + 1e-8)
    return flat.reshape(returns.shape)
