"""Meta-RL speed (metalearn.rl): environment steps per second and seconds per meta-iteration.

    python -m bench.rl [--repeats R]      (or `make bench`)

2D navigation, `tasks` x `rollouts` = 20 x 20 = 400 environments (the paper's meta-batch and
rollouts per step), horizon 100:
  - `vectorised-env`: metalearn.rl.envs.Navigation2D, all 400 environments stepped in one tensor op;
  - `python-loop-env`: the official code's way (cbfinn/maml_rl point_env_randgoal.py, through rllab's
    normalize wrapper): one NumPy environment object per rollout, stepped one by one in Python;
  - `sampling`: whole rollouts with the policy (metalearn.rl.metarl.sample: policy forward + noise +
    environment step per time step), environment steps per second;
  - `meta-iteration`: seconds per meta-iteration (sampling, inner step, TRPO step) of MAML and of the
    pretrained baseline at the default profile's meta-batch (10).
Half-cheetah (Gymnasium's HalfCheetah-v5 dynamics, goal velocity), 400 environments, 20 steps:
  - `mujoco-rollout-Nthreads`: metalearn.rl.locomotion.HalfCheetah, all environments advanced by one
    `mujoco.rollout` call per step on N threads (one MjData each);
  - `gymnasium-loop`: `gymnasium.make("HalfCheetah-v5").step` in a plain Python loop (one environment).
Ant (Gymnasium's Ant-v5, goal velocity), the same rows: its last substep of each step runs in a Python
loop over the environments (locomotion.Ant explains why), so its batching gains less; environments whose
episode has ended (unhealthy) are not stepped and not counted.
Each figure is the median of `repeats` timed blocks. Writes bench/results/rl.csv.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench import write_csv

RESULTS = Path(__file__).resolve().parent / "results"
TASKS, ROLLOUTS, HORIZON = 20, 20, 100


class LoopPointEnv:
    """One 2D navigation environment in NumPy, as the official code steps it (one object per rollout)."""

    def __init__(self, goal):
        self.goal = goal

    def reset(self):
        self.state = np.zeros(2)
        return self.state.copy()

    def step(self, action):
        self.state = self.state + np.clip(0.1 * action, -0.1, 0.1)
        x, y = self.state - self.goal
        return self.state.copy(), -(x ** 2 + y ** 2) ** 0.5


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    from metalearn.rl.envs import Navigation2D, sample_goals
    from metalearn.rl.metarl import MetaRL, sample
    from metalearn.rl.policy import per_task

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "rl.csv"))
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    goals = sample_goals(TASKS, generator)
    actions = torch.randn(HORIZON, TASKS, ROLLOUTS, 2, generator=generator)
    steps = TASKS * ROLLOUTS * HORIZON
    rows = []

    def vectorised():
        env = Navigation2D(goals, ROLLOUTS)
        env.reset()
        for t in range(HORIZON):
            env.step(actions[t])

    np_actions, np_goals = actions.numpy(), goals.numpy()

    def python_loop():
        envs = [LoopPointEnv(np_goals[i]) for i in range(TASKS) for _ in range(ROLLOUTS)]
        for env in envs:
            env.reset()
        for t in range(HORIZON):
            for k, env in enumerate(envs):
                env.step(np_actions[t, k // ROLLOUTS, k % ROLLOUTS])

    torch.manual_seed(0)
    bench = {"task": "navigation", "rollouts": ROLLOUTS, "discount": 0.99}
    learner = MetaRL("maml", bench, {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 3})
    params = {n: p.detach() for n, p in per_task(learner.policy.params(), TASKS).items()}

    def sampling():
        sample(learner.policy, params, learner.env(goals), generator)

    for name, fn in (("vectorised-env", vectorised), ("python-loop-env", python_loop), ("sampling", sampling)):
        seconds = median_time(fn, args.repeats)
        rows.append({"benchmark": "navigation-2d", "measure": name, "env_steps_per_s": round(steps / seconds),
                     "seconds": round(seconds, 4)})
    from metalearn.rl.locomotion import ENVIRONMENTS, MAX_VELOCITY

    for robot, gym_id in (("halfcheetah", "HalfCheetah-v5"), ("ant", "Ant-v5")):
        name, env_class = f"{robot}-vel", ENVIRONMENTS[robot]
        robot_goals = MAX_VELOCITY[robot] * torch.rand(TASKS, 1, generator=generator, dtype=torch.float64)
        robot_actions = torch.rand(20, TASKS, ROLLOUTS, env_class.action_dim, generator=generator,
                                   dtype=torch.float64) * 2 - 1
        for threads in (1, 2):
            env = env_class(robot_goals, ROLLOUTS, "velocity", threads=threads)
            live_steps = []

            def batched():
                env.reset()
                live = 0
                for t in range(20):
                    live += TASKS * ROLLOUTS - int(env.done.sum())
                    env.step(robot_actions[t])
                live_steps.append(live)  # an ant whose episode has ended is not stepped: not counted

            seconds = median_time(batched, args.repeats)
            rows.append({"benchmark": name, "measure": f"mujoco-rollout-{threads}threads",
                         "env_steps_per_s": round(statistics.median(live_steps) / seconds),
                         "seconds": round(seconds, 4)})
        import gymnasium as gym

        gym_env = gym.make(gym_id)
        gym_env.reset(seed=0)
        loop_actions = robot_actions.reshape(-1, env_class.action_dim).numpy()[:1000]

        def gymnasium_loop():
            for a in loop_actions:
                if gym_env.step(a)[2]:  # terminated (the ant only): a new episode, as a sampler would
                    gym_env.reset()

        seconds = median_time(gymnasium_loop, args.repeats)
        rows.append({"benchmark": name, "measure": "gymnasium-loop",
                     "env_steps_per_s": round(len(loop_actions) / seconds), "seconds": round(seconds, 4)})
    for algorithm in ("maml", "pretrained"):
        torch.manual_seed(0)
        learner = MetaRL(algorithm, bench, {"inner_lr": 0.1, "inner_steps": 1, "test_inner_steps": 3})
        batch_goals = sample_goals(10, generator)
        seconds = median_time(lambda: learner.meta_step(batch_goals, generator, {"max_kl": 0.01}), args.repeats)
        rows.append({"benchmark": "navigation-2d", "measure": f"meta-iteration-{algorithm}",
                     "env_steps_per_s": "", "seconds": round(seconds, 3)})
    for row in rows:
        print(f"  {row['measure']:24s} {row['env_steps_per_s']!s:>10} env steps/s  {row['seconds']} s", flush=True)
    print(f"-> {write_csv(rows, args.out)}")


if __name__ == "__main__":
    main()
