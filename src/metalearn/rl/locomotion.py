"""MuJoCo locomotion task families of the MAML paper (Section 5.3), many environments per call.

HalfCheetah, as Gymnasium's `HalfCheetah-v5` defines it (its model file, frame skip 5, dt 0.05,
observation qpos[1:] + qvel (17 numbers), reset noise U[-0.1, 0.1] on qpos and 0.1 N(0, 1) on qvel,
control cost 0.1 * |a|^2), with the paper's rewards in place of the forward reward
(cbfinn/maml_rl rllab/envs/mujoco/half_cheetah_env_rand*.py):
  goal velocity   -|v_x - v_goal| - control cost, v_goal ~ U[0, 2] per task
  goal direction  d * v_x - control cost, d = +1 or -1 per task (forward / backward)
v_x = (x_after - x_before) / dt, as Gymnasium computes it. Actions are clipped to the action space
[-1, 1]^6 before they reach the environment (as an agent using Gymnasium's action space does).

Stepping: instead of one Python `env.step` per environment, all environments' MuJoCo states are
advanced together by `mujoco.rollout` (MuJoCo's own batched stepping in C++, on a pool of threads,
one MjData per thread): one call per time step for every task and rollout. `tests/test_rl.py`
checks observations and rewards against Gymnasium's own environment step by step.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

FAMILIES = {"halfcheetah-vel": "velocity", "halfcheetah-dir": "direction"}


def _model_path() -> str:
    import gymnasium

    return os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", "half_cheetah.xml")


class HalfCheetah:
    horizon = 200
    observation_dim, action_dim = 17, 6
    frame_skip, ctrl_cost_weight, reset_noise = 5, 0.1, 0.1

    def __init__(self, goals: Tensor, rollouts: int, family: str, oracle: bool = False,
                 horizon: int | None = None, threads: int | None = None, seed: int = 0):
        import mujoco

        self.mujoco = mujoco
        from mujoco import rollout

        self._rollout = rollout
        self.goals, self.rollouts, self.family, self.oracle = goals, rollouts, family, oracle
        if horizon is not None:
            self.horizon = horizon
        if oracle:
            self.observation_dim = 17 + goals.shape[-1]
        self.model = mujoco.MjModel.from_xml_path(_model_path())
        self.dt = self.model.opt.timestep * self.frame_skip
        threads = threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
        self.datas = [mujoco.MjData(self.model) for _ in range(max(1, threads))]
        self.spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self.nq, self.nv = self.model.nq, self.model.nv
        self.rng = np.random.default_rng(seed)

    def reset(self) -> Tensor:
        n = len(self.goals) * self.rollouts
        qpos = self.model.qpos0 + self.rng.uniform(-self.reset_noise, self.reset_noise, (n, self.nq))
        qvel = self.reset_noise * self.rng.standard_normal((n, self.nv))
        return self.set_state(qpos, qvel)

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> Tensor:
        """Start every environment at (qpos, qvel) ([tasks * rollouts, nq / nv]), as Gymnasium's set_state."""
        self.state = np.zeros((len(qpos), self.mujoco.mj_stateSize(self.model, self.spec)))
        self.state[:, 1:1 + self.nq], self.state[:, 1 + self.nq:1 + self.nq + self.nv] = qpos, qvel
        return self._observe()

    def _observe(self) -> Tensor:
        qpos, qvel = self.state[:, 1 + 1:1 + self.nq], self.state[:, 1 + self.nq:1 + self.nq + self.nv]
        obs = torch.as_tensor(np.concatenate([qpos, qvel], 1), dtype=self.goals.dtype)
        obs = obs.view(len(self.goals), self.rollouts, -1)
        if self.oracle:
            obs = torch.cat([obs, self.goals[:, None].expand(-1, self.rollouts, -1)], -1)
        return obs

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """action [tasks, rollouts, 6] -> (observation, reward [tasks, rollouts])."""
        a = action.clamp(-1, 1).reshape(-1, self.action_dim).double().numpy()
        x_before = self.state[:, 1].copy()
        control = np.repeat(a[:, None], self.frame_skip, 1)
        states, _ = self._rollout.rollout(self.model, self.datas, self.state, control, persistent_pool=True)
        self.state = states[:, -1]
        velocity = torch.as_tensor((self.state[:, 1] - x_before) / self.dt).view(len(self.goals), self.rollouts)
        ctrl_cost = self.ctrl_cost_weight * torch.as_tensor((a ** 2).sum(1)).view(len(self.goals), self.rollouts)
        goal = self.goals[:, :1].double()
        forward = -(velocity - goal).abs() if self.family == "velocity" else goal * velocity
        return self._observe(), (forward - ctrl_cost).to(self.goals.dtype)


def sample_goals(family: str, count: int, generator: torch.Generator) -> Tensor:
    """[count, 1]: goal velocities U[0, 2] (cheetah), or directions +1 / -1."""
    if family == "velocity":
        return 2.0 * torch.rand(count, 1, generator=generator)
    return torch.randint(0, 2, (count, 1), generator=generator).float() * 2 - 1
