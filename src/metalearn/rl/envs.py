"""Environments as batched tensors: every (task, rollout) pair is one row, stepped together.

2D navigation (MAML paper, Section 5.3; cbfinn/maml_rl maml_examples/point_env_randgoal.py): a point
starts at the origin; a task is a goal drawn uniformly from [-0.5, 0.5]^2; the observation is the
position; the action moves the point, clipped to [-0.1, 0.1]^2; the reward is the negative distance
to the goal after the move; the horizon is 100 steps.

Two details from the official code: (1) the environment is wrapped in rllab's `normalize`, which
presents the action space as [-1, 1]^2 and rescales to the true bounds, clip(0.1 * a, -0.1, 0.1):
the policy's unit-variance initial noise then means moves of ~0.1, not saturated ones (`action_scale`);
(2) an episode ends once the point is within GOAL_TOLERANCE of the goal in both coordinates after a
move (point_env_randgoal.py `done`; rllab's rollout stops there, in training and at test). In these
fixed-length tensors an ended episode is frozen (no move, reward 0) and the sampler records the steps
taken (`terminates`, metarl.Rollouts.mask), as for the Ant. Without it a policy near its goal keeps
paying for its action noise: MAML's return after 2-3 test steps was about -11 instead of about -4
(docs/notes/navigation-vs-official.md).
"""
from __future__ import annotations

import torch
from torch import Tensor

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
ACTION_BOUND = 0.1
GOAL_TOLERANCE = 0.01  # |x - goal_x| and |y - goal_y| below it after a move: the episode ends


def sample_goals(count: int, generator: torch.Generator) -> Tensor:
    """[count, 2] goals uniform in [-0.5, 0.5]^2."""
    return GOAL_LOW + (GOAL_HIGH - GOAL_LOW) * torch.rand(count, 2, generator=generator)


class Navigation2D:
    """`tasks` goals x `rollouts` points, stepped together. With `oracle`, the goal is appended
    to the observation (the oracle baseline: the policy is told the task)."""

    horizon = 100
    action_dim = 2
    action_scale = ACTION_BOUND  # rllab's normalize wrapper: the policy acts in [-1, 1]^2 units
    terminates = True            # at the goal (module docstring); `done` [tasks, rollouts] says which ended

    def __init__(self, goals: Tensor, rollouts: int, oracle: bool = False, horizon: int | None = None):
        self.goals = goals  # [tasks, 2]
        self.rollouts = rollouts
        self.oracle = oracle
        if horizon is not None:
            self.horizon = horizon
        self.observation_dim = 4 if oracle else 2

    def reset(self) -> Tensor:
        self.position = torch.zeros(len(self.goals), self.rollouts, 2, dtype=self.goals.dtype)
        self.done = torch.zeros(len(self.goals), self.rollouts, dtype=torch.bool)
        return self._observe()

    def _observe(self) -> Tensor:
        if not self.oracle:
            return self.position.clone()
        return torch.cat([self.position, self.goals[:, None].expand_as(self.position)], -1)

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """action [tasks, rollouts, 2] in policy units -> (observation, reward [tasks, rollouts]); an
        episode that has ended stays where it is and earns 0 (its ending step's reward counts)."""
        live = ~self.done
        move = (self.action_scale * action).clamp(-ACTION_BOUND, ACTION_BOUND) * live[..., None]
        self.position = self.position + move
        offset = self.position - self.goals[:, None]
        reward = -offset.norm(dim=-1) * live
        self.done = self.done | (live & (offset.abs() < GOAL_TOLERANCE).all(-1))
        return self._observe(), reward


def make_env(bench: dict, goals: Tensor, rollouts: int, oracle: bool = False, seed: int = 0):
    """The vectorised environment of a benchmark for these tasks (`seed`: MuJoCo's reset noise)."""
    if bench["task"] == "navigation":
        return Navigation2D(goals, rollouts, oracle, bench.get("horizon"))
    from metalearn.rl import locomotion

    if bench["task"] in locomotion.FAMILIES:
        return locomotion.make(bench["task"], goals, rollouts, oracle, bench.get("horizon"), seed=seed,
                               frame_skip=bench.get("frame_skip"))
    raise ValueError(f"task {bench['task']!r} is not a reinforcement-learning task")


def task_dim(bench: dict) -> int:
    """Numbers that describe a task (what the oracle is given): a goal position, or a goal velocity/direction."""
    return 2 if bench["task"] == "navigation" else 1


def sample_tasks(bench: dict, count: int, generator: torch.Generator) -> Tensor:
    if bench["task"] == "navigation":
        return sample_goals(count, generator)
    from metalearn.rl import locomotion

    if bench["task"] in locomotion.FAMILIES:
        return locomotion.sample_task_goals(bench["task"], count, generator)
    raise ValueError(f"task {bench['task']!r} is not a reinforcement-learning task")
