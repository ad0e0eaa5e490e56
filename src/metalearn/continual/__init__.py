"""WarpGrad's continual-learning experiment (Flennerhag et al., ICLR 2020, "Meta-Learning with Warped
Gradient Descent", its continual-learning section and appendix). The official repository
(flennerhag/warpgrad) has no code for it. The section itself could not be read from this project's
stored copies of the paper (only its abstract and introduction): the protocol below follows the
issue's description of it (#16) and our reading of the paper, and every choice left open is written
down (docs/protocols.md#continual-learning-warpgrad).

The protocol:
  - A task is a *sequence* of T regression sub-tasks on one input interval: MAML's sinusoid regression
    (x in [-5, 5]) with the interval cut into T = 5 consecutive pieces; sub-task t is the task's
    function on piece t. The learner sees the sub-tasks one after another, never an earlier one again.
  - The task learner is a feed-forward network with warp layers interleaved (a 4-layer network).
    It takes K = 20 gradient steps on each sub-task, T * K = 100 steps in all.
  - What is meta-learned: the warp layers only. The initialisation is a fixed random one (as we read
    the paper: fixed, to isolate what the warp parameters do), not meta-learned.
  - The meta-objective at a point theta of the learner's trajectory while it learns sub-task t is the
    loss on the current *and every earlier* sub-task (1..t) after one warped step on sub-task t: it
    rewards warps whose steps on the current sub-task do not undo the earlier ones (no forgetting),
    and it never looks at a sub-task the learner has not seen yet.
  - Compared against: the same network trained by plain SGD without warp layers, from the same
    initialisation, with the same step size (the paper's baseline: catastrophic forgetting).
  - Reported: the loss on each sub-task as learning proceeds (forgetting curves), averaged over test
    task sequences.

Left open (or not known to us), and the choice made here (a benchmark setting wherever it is a number):
  - target functions: MAML's sinusoid y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi]
    (data/episodes.py SINUSOID); one sinusoid per task sequence;
  - sub-intervals: `subtasks` equal pieces of MAML's [-5, 5]; x drawn uniformly in each piece;
  - data per sub-task: `shots` training points (every step is a full-batch step on them) and
    `queries` held-out points for the meta-objective (meta-training), `eval_queries` for the test
    sequences' curves; fresh points for every meta-training sequence;
  - network: MLP 1 -> `hidden` -> 1 with ReLU (default three hidden layers of 40: "4 layers"), a
    linear warp layer Omega h + b after each hidden layer's ReLU, starting at the identity
    (algorithms/warpgrad.py `warp_layers`, `WarpedNetwork`: the project's warp layers, so an
    untrained warp is exactly plain SGD);
  - the initialisation: the network's seeded PyTorch initialisation (seed = the run's seed), the same
    for every task sequence and for WarpGrad and SGD;
  - the step size alpha (`inner_lr`, per method; the same for both in params.yaml) and plain SGD
    steps (no momentum);
  - the meta-objective's form: the mean of the query losses of sub-tasks 1..t (equal point counts, so
    the loss on their union), after one differentiable step on sub-task t's training points from the
    buffered point theta (a constant: no backpropagation through the trajectory, as WarpGrad's
    Algorithm 2); `first_order: true` drops the step (the losses at theta);
  - meta-training: Algorithm 2 (offline): each sequence is learned with the warps fixed, `snapshots`
    trajectory points (evenly spaced over the T * K steps, theta_0 first; default all) are buffered,
    and the meta-gradient is the mean over the meta-batch's buffered points; Adam (train.meta_lr)
    takes one step per meta-iteration (the paper's meta-optimiser and budget: not known to us);
  - evaluation: the saved test sequences (`test_tasks`, drawn once from `episode_seed`), each learned
    from the fixed initialisation; after every step (and before the first) the MSE on every
    sub-task's `eval_queries` held-out points is recorded; the summary score (`mse`) is the mean over
    the T sub-tasks after the last step, i.e. what is left of all of them at the end.

Pipeline: `metalearn split` (tasks.make_episodes), `metalearn train` (train.train: WarpGrad meta-trains
its warps; `sgd` has nothing to meta-learn and saves its initialisation), `metalearn evaluate`
(evaluate.evaluate: the standard evaluation record, its `per_episode` the final mean MSE, plus the
curves under `continual`) dispatch here for benchmarks with `task: continual` (metalearn.families); the
report's `<benchmark>-continual.png` is plot.plot_forgetting.

  tasks.py     the task sequences: drawing them, the saved test sequences (`metalearn split`)
  learner.py   the task learner (a fixed initialisation, WarpGrad's warp layers) and learning a sequence
  train.py     the meta-objective, its meta-gradient (Algorithm 2) and the meta-training loop
  evaluate.py  forgetting curves on the saved test sequences
  plot.py      the figure
"""
