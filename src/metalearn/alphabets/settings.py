"""The multi-shot protocol's settings: the official code's (PAPER; params.yaml's paper profile holds
the same as its `omniglot-alphabets` benchmark) and CPU-sized ones (CPU)."""
from metalearn.alphabets.tasks import TASK

# The official protocol (main.py's defaults; run_multi.py's learning rates and steps: maml and fomaml
# inner 0.1, outer 0.5, maml 5 training steps; the others 0.1 and 0.1; the paper sweeps the number of
# training alphabets, run_multi.py --npres 1 3 5 10 15 20 25). params.yaml's paper profile holds the
# same as its `omniglot-alphabets` benchmark (tests/test_alphabets.py checks they agree).
PAPER = {
    # the official pixels (module docstring, "Pixels"): binary, background 1
    "task": TASK, "model": "omniconv", "dataset": "omniglot-binary", "background": 1, "ways": 20,
    "train_alphabets": 25, "test_alphabets": 10,
    "split_seed": 8879, "steps": 100, "batch_size": 128, "filters": 64,
    "train": {"meta_batch": 20, "iterations": 1000, "checkpoint_every": 20, "log_every": 10},
    "algorithms": {
        # Warp-Leap with the official updater (updaters.py): one SGD step per buffered point, shuffled;
        # the official meta-objective's step, phi's gradient not through the inner gradient (inner_grad
        # detached: src/warpgrad/warpgrad/utils.py lines 85, 117-122; algorithms/warpgrad.py)
        "warpleap": {"inner_lr": 0.1, "meta_update": "per_point", "shuffle_buffer": True, "warp_lr": 0.1,
                     "init_lr": 0.1, "inner_grad": "detached", "final_point": False},
        # Leap's and Warp-Leap's paths end at theta_{K-1}, the point before the last step (final_point
        # false: wrapper.py run_batches lines 126-136, updaters.py simplified_leap lines 146-151)
        "leap": {"inner_lr": 0.1, "meta_lr": 0.1, "final_point": False},
        # the official meta-gradient theta_0 - theta_{K-1} (wrapper.py _partial_meta_update): 99 of the 100 steps
        "reptile": {"inner_lr": 0.1, "meta_lr": 0.1, "inner_steps": 99},
        "maml": {"inner_lr": 0.1, "meta_lr": 0.5, "inner_steps": 5},
        "fomaml": {"inner_lr": 0.1, "meta_lr": 0.5},
        # one head shared by all alphabets and kept at test (model.py line 180; wrapper.py lines 560-583)
        "ft": {"inner_lr": 0.1, "head": "shared"},
        "scratch": {"inner_lr": 0.1}}}
# CPU-sized settings (the run of docs/notes/multishot-omniglot.md): 10 training
# alphabets, 50 steps of 32 images, meta-batch 3, 12 meta-steps, 32 filters; the rest is PAPER's.
CPU = {**PAPER, "train_alphabets": 10, "split_seed": 1, "steps": 50, "batch_size": 32, "filters": 32,
       "train": {"meta_batch": 3, "iterations": 12, "checkpoint_every": 4, "log_every": 4}}
