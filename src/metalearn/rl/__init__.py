"""Meta-reinforcement learning (MAML paper, Finn et al. 2017, Section 5.3 and Appendix A.2).

A task is an MDP (a goal position, a goal velocity, ...); its loss comes from trajectories sampled
with the policy, so it cannot be a fixed support/query set: this subpackage has its own objective
(policy-gradient surrogate), its own meta-update (TRPO) and its own loop, beside the supervised ones.

  envs.py        2D navigation, vectorised in torch (tasks x rollouts stepped in one tensor op)
  locomotion.py  HalfCheetah and Ant goal velocity / direction (Gymnasium's definitions, mujoco.rollout stepping)
  policy.py      Gaussian MLP policy, functional (parameters as a dict, per-task stacks)
  baseline.py    linear feature baseline, least squares per task
  trpo.py        TRPO step: conjugate gradient on Hessian-vector products of the KL, line search
  metarl.py      MAML / first-order MAML with a policy-gradient inner loop; the paper's baselines
  tasks.py       the saved test tasks (`metalearn split`)
  train.py       the meta-training loop (checkpointed, resumable to the identical result)
  evaluate.py    return after 0..k policy-gradient steps on the saved test tasks
"""
from __future__ import annotations

# params.yaml `task` values of the RL benchmarks
RL_TASKS = ("navigation", "halfcheetah-vel", "halfcheetah-dir", "ant-vel", "ant-dir")
# the RL methods (metarl.py): maml, fomaml, and the paper's baselines
RL_ALGORITHMS = ("maml", "fomaml", "pretrained", "random", "oracle")

