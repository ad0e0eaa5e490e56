"""MuJoCo locomotion task families of the MAML paper (Section 5.3), many environments per call.
HalfCheetah and Ant below; each keeps Gymnasium's own (v5) model and observation, with the official rewards.

HalfCheetah, as Gymnasium's `HalfCheetah-v5` defines it (its model file, frame skip 5 and dt 0.05 unless
`frame_skip` says otherwise (Time step, below), observation qpos[1:] + qvel (17 numbers), reset noise
U[-0.1, 0.1] on qpos and 0.1 N(0, 1) on qvel),
with the paper's rewards, as the official code computes them (cbfinn/maml_rl
rllab/envs/mujoco/half_cheetah_env_rand.py, half_cheetah_env_rand_direc.py), in place of Gymnasium's:
  goal velocity   -|v_x - v_goal| - control cost, v_goal ~ U[0, 2] per task
  goal direction  d * v_x - control cost, d = +1 or -1 per task (forward / backward)
  control cost    0.05 |a|^2 (the official `1e-1 * 0.5 * sum(a^2)`; Gymnasium's is 0.1 |a|^2)
v_x = (x_after - x_before) / dt, as Gymnasium computes it. Actions are clipped to the action space
[-1, 1]^6 before they reach the environment (as an agent using Gymnasium's action space does).

Stepping: instead of one Python `env.step` per environment, all environments' MuJoCo states are
advanced together by `mujoco.rollout` (MuJoCo's own batched stepping in C++, on a pool of threads,
one MjData per thread): one call per time step for every task and rollout (the Ant's last substep
excepted, see Ant). `tests/test_rl.py` checks observations (and the Ant's termination) against
Gymnasium's own environments step by step, and the rewards against the official formulas evaluated on
Gymnasium's velocities and contact forces.

Time step: `frame_skip` MuJoCo substeps per action (benchmark setting `frame_skip`), default Gymnasium's
5, so dt = 5 x 0.01 = 0.05 s for both robots (both Gymnasium XMLs have timestep 0.01). The official
rllab environments step the physics once per action (rllab/envs/mujoco/mujoco_env.py: frame_skip 1
unless the XML sets a `frame_skip` numeric, which neither of theirs does) at their XMLs' timesteps,
0.01 s for the cheetah and 0.02 s for the ant: the paper profile sets frame_skip 1 (cheetah) and 2 (ant)
to get the same dt, so a 200-step episode lasts the official 2 s / 4 s of simulated time, not 10 s.
The ant's is the same dt in two RK4 steps of 0.01 where rllab takes one of 0.02 (both ant XMLs use RK4;
both cheetah XMLs MuJoCo's default Euler at 0.01, so there the step is the official one).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

# params.yaml `task` -> reward family; the robot is the name's prefix (ENVIRONMENTS)
FAMILIES = {"halfcheetah-vel": "velocity", "halfcheetah-dir": "direction",
            "ant-vel": "velocity", "ant-dir": "direction"}


def _model_path(xml: str) -> str:
    import gymnasium

    return os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", xml)


class Locomotion:
    """What the robots share: a Gymnasium MuJoCo model stepped `frame_skip` substeps per action (default
    Gymnasium's 5; dt = timestep x frame_skip, the denominator of v_x) for every task and rollout at
    once, Gymnasium's reset noise (U[-noise, noise] on qpos, noise * N(0, 1) on qvel), an observation
    that starts with qpos (its first `qpos_skipped` entries left out: the position on the floor) and
    qvel, the oracle's goal appended, and `done` (one flag per environment, tasks x rollouts flattened):
    all False for a robot whose episodes never end early (`terminates` False: the sampler then keeps
    no mask of the steps taken, metarl.Rollouts)."""

    xml: str
    observation_dim: int
    action_dim: int
    qpos_skipped: int
    horizon = 200
    frame_skip, reset_noise = 5, 0.1
    terminates = False

    def __init__(self, goals: Tensor, rollouts: int, family: str, oracle: bool = False,
                 horizon: int | None = None, threads: int | None = None, seed: int = 0,
                 frame_skip: int | None = None):
        import mujoco

        self.mujoco = mujoco
        from mujoco import rollout

        self._rollout = rollout
        self.goals, self.rollouts, self.family, self.oracle = goals, rollouts, family, oracle
        if horizon is not None:
            self.horizon = horizon
        if frame_skip is not None:
            if frame_skip < 1:
                raise ValueError(f"frame_skip must be at least 1, got {frame_skip}")
            self.frame_skip = frame_skip
        if oracle:
            self.observation_dim = type(self).observation_dim + goals.shape[-1]
        self.model = mujoco.MjModel.from_xml_path(_model_path(self.xml))
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
        self.done = np.zeros(len(qpos), dtype=bool)
        return self._observe()

    def _observation_parts(self) -> list[np.ndarray]:
        """[environments, k] blocks of the observation, in Gymnasium's order."""
        return [self.state[:, 1 + self.qpos_skipped:1 + self.nq], self.state[:, 1 + self.nq:1 + self.nq + self.nv]]

    def _observe(self) -> Tensor:
        obs = torch.as_tensor(np.concatenate(self._observation_parts(), 1), dtype=self.goals.dtype)
        obs = obs.view(len(self.goals), self.rollouts, -1)
        if self.oracle:
            obs = torch.cat([obs, self.goals[:, None].expand(-1, self.rollouts, -1)], -1)
        return obs

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """action [tasks, rollouts, action_dim] -> (observation, reward [tasks, rollouts])."""
        raise NotImplementedError


class HalfCheetah(Locomotion):
    """Gymnasium's `HalfCheetah-v5` with the paper's rewards (the module's docstring)."""

    xml = "half_cheetah.xml"
    observation_dim, action_dim, qpos_skipped = 17, 6, 1
    ctrl_cost_weight = 1e-1 * 0.5   # half_cheetah_env_rand*.py: ctrl_cost = 1e-1 * 0.5 * sum(a^2)

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """action [tasks, rollouts, 6] -> (observation, reward [tasks, rollouts]); episodes never end early."""
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


class Ant(Locomotion):
    """Gymnasium's `Ant-v5` (default arguments: model, observation, termination, reset), with the paper's
    rewards as the official code computes them (cbfinn/maml_rl rllab/envs/mujoco/ant_env_rand.py,
    ant_env_rand_direc.py) in place of Gymnasium's:

      observation  qpos[2:] (13) + qvel (14) + cfrc_ext[1:] clipped to [-1, 1] (13 bodies x 6 = 78): 105
      reward       forward + survive - control cost - contact cost, with
                   forward  -|v_x - v_goal| (v_goal ~ U[0, 3]) or d * v_x (d = +-1)
                   survive  goal velocity 1.05 (the official `+ 1.0  # make it happy, not suicidal`
                            plus survive_reward 0.05), goal direction 0.05 (survive_reward only): a
                            constant on every step taken, the terminating one included, as there
                   control  0.005 |a|^2 (official 0.5 * 1e-2 * sum((a / scaling)^2), a in rllab's
                            normalised [-1, 1] units), contact 5e-4 |clip(cfrc_ext, -1, 1)|^2 (0.5 * 1e-3)
      termination  when the torso height leaves [0.2, 1.0] or the state is not finite (the official
                   `notdone`, also Gymnasium's default terminate_when_unhealthy=True)
      reset        noise U[-0.1, 0.1] on every qpos entry, 0.1 N(0, 1) on qvel (as the cheetah's)

    Gymnasium's own reward (healthy 1 only while healthy, control 0.5 |a|^2) is not used. The official
    direction task draws v ~ U[0, 3] and goes backward when v < 1.5: a fair coin, as here.

    Two Gymnasium details need the MjData of the last substep, which mujoco.rollout does not return:
    v_x uses the torso's `xpos`, and Ant's integrator is RK4, whose last stage leaves `xpos` at an
    intermediate point, not at the new qpos; and cfrc_ext is what mj_rnePostConstraint computes from
    that same MjData. So of the `frame_skip` substeps, the first frame_skip - 1 are batched
    (mujoco.rollout; none when frame_skip is 1) and the last is one mj_step per environment in Python,
    as Gymnasium's do_simulation does it. After a reset the torso's xpos is the reset qpos
    (Gymnasium's set_state runs mj_forward) and the contact forces in the observation are zeros
    (mj_resetData zeroes them and mj_forward does not compute them).

    Termination in fixed-length batched rollouts: an environment that terminates (its reward for the
    terminating step included) is frozen: its later observations repeat the last one and its rewards
    are 0, so every return is Gymnasium's episode return. Those frozen steps are not steps taken: the
    sampler records which are (`terminates`; metarl.Rollouts.mask, from `done` before each step) and
    every mean over steps is over the steps taken, as the official sampler's paths cut at `done`.
    `done` (one flag per environment, tasks x rollouts flattened) says which have ended; `reset`
    starts every episode again."""

    xml = "ant.xml"
    observation_dim, action_dim, qpos_skipped = 105, 8, 2
    terminates = True
    ctrl_cost_weight, contact_cost_weight, healthy_z = 0.5 * 1e-2, 0.5 * 1e-3, (0.2, 1.0)
    # per step taken; ant_env_rand.py: +1.0 in forward_reward and survive_reward 0.05; _direc.py: 0.05
    survive_reward = {"velocity": 1.0 + 0.05, "direction": 0.05}

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> Tensor:
        n = len(qpos)
        self.torso_x = np.asarray(qpos, dtype=np.float64)[:, 0].copy()  # xpos after mj_forward = qpos
        self.contact = np.zeros((n, (self.model.nbody - 1) * 6))        # zeros until the first step
        return super().set_state(qpos, qvel)

    def _observation_parts(self) -> list[np.ndarray]:
        return super()._observation_parts() + [self.contact]

    def _last_substep(self, states: np.ndarray, controls: np.ndarray):
        """One mj_step + mj_rnePostConstraint per environment (Gymnasium's do_simulation, last substep):
        (new states, torso x from xpos, clip(cfrc_ext[1:], -1, 1))."""
        mujoco, data = self.mujoco, self.datas[0]
        new_states, torso_x = np.empty_like(states), np.empty(len(states))
        contact = np.empty((len(states), (self.model.nbody - 1) * 6))
        for i in range(len(states)):
            mujoco.mj_setState(self.model, data, states[i], self.spec)
            data.ctrl[:] = controls[i]
            mujoco.mj_step(self.model, data)
            mujoco.mj_rnePostConstraint(self.model, data)
            mujoco.mj_getState(self.model, data, new_states[i], self.spec)
            torso_x[i], contact[i] = data.xpos[1, 0], data.cfrc_ext[1:].ravel()
        return new_states, torso_x, np.clip(contact, -1.0, 1.0)

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """action [tasks, rollouts, 8] -> (observation, reward [tasks, rollouts]); see `done`."""
        shape = (len(self.goals), self.rollouts)
        a = action.clamp(-1, 1).reshape(-1, self.action_dim).double().numpy()
        live = ~self.done
        if not live.any():  # every episode has ended: nothing moves, nothing is earned
            return self._observe(), torch.zeros(shape, dtype=self.goals.dtype)
        states = self.state[live]
        if self.frame_skip > 1:  # mujoco.rollout of 0 steps returns no state to take the last of
            control = np.repeat(a[live][:, None], self.frame_skip - 1, 1)
            states = self._rollout.rollout(self.model, self.datas, states, control, persistent_pool=True)[0][:, -1]
        new_states, torso_x, contact = self._last_substep(states, a[live])
        velocity = (torso_x - self.torso_x[live]) / self.dt
        self.state[live], self.torso_x[live], self.contact[live] = new_states, torso_x, contact
        qpos_qvel = new_states[:, 1:1 + self.nq + self.nv]   # Gymnasium's state_vector()
        z = qpos_qvel[:, 2]
        healthy = np.isfinite(qpos_qvel).all(1) & (self.healthy_z[0] <= z) & (z <= self.healthy_z[1])
        goal = self.goals[:, :1].double().expand(shape).reshape(-1).numpy()[live]
        forward = -np.abs(velocity - goal) if self.family == "velocity" else goal * velocity
        reward = np.zeros(len(self.state))
        reward[live] = (forward + self.survive_reward[self.family] - self.ctrl_cost_weight * (a[live] ** 2).sum(1)
                        - self.contact_cost_weight * (contact ** 2).sum(1))
        self.done[live] = ~healthy
        return self._observe(), torch.as_tensor(reward, dtype=self.goals.dtype).view(shape)


ENVIRONMENTS = {"halfcheetah": HalfCheetah, "ant": Ant}
# goal velocities U[0, max] of the paper: cheetah 2, ant 3
MAX_VELOCITY = {"halfcheetah": 2.0, "ant": 3.0}


def make(task: str, goals: Tensor, rollouts: int, oracle: bool = False, horizon: int | None = None,
         seed: int = 0, frame_skip: int | None = None) -> Locomotion:
    robot = task.split("-")[0]
    return ENVIRONMENTS[robot](goals, rollouts, FAMILIES[task], oracle, horizon, seed=seed, frame_skip=frame_skip)


def sample_task_goals(task: str, count: int, generator: torch.Generator) -> Tensor:
    return sample_goals(FAMILIES[task], count, generator, MAX_VELOCITY[task.split("-")[0]])


def sample_goals(family: str, count: int, generator: torch.Generator, max_velocity: float = 2.0) -> Tensor:
    """[count, 1]: goal velocities U[0, max_velocity] (cheetah 2, ant 3), or directions +1 / -1."""
    if family == "velocity":
        return max_velocity * torch.rand(count, 1, generator=generator)
    return torch.randint(0, 2, (count, 1), generator=generator).float() * 2 - 1
