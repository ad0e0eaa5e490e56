"""Peak memory and time of a meta-step against the number of inner steps.

    python -m bench.memory [--steps 1 5 10 25 50 100] [--repeats 2]     (or `make bench`)

Omniglot conv4 (64 filters), 5-way 1-shot with 5 query images per class, meta-batch 4 (one task at
a time: the meta-batch does not change the per-task picture), random images. Each (algorithm, inner
steps) runs in a fresh subprocess; `peak_mb` is the growth of the process's peak resident memory over
its resident memory just before the first meta-step (the kernel's peak counter is reset there; on
CUDA: torch.cuda.max_memory_allocated), `seconds_per_iter` the median time of a meta-step (after a
warm-up step). Writes bench/results/memory.csv (algorithm, inner_steps, peak_mb, seconds_per_iter).

To add an algorithm: one entry in ALGORITHMS (name in the registry -> hyperparameters, where
`{steps}` is the number of inner steps).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import write_csv
from bench.speed import _status_mb, reset_peak_rss

RESULTS = Path(__file__).resolve().parent / "results"
ALGORITHMS = {
    "maml": {"inner_lr": 0.4},
    "fomaml": {"inner_lr": 0.4},
    "imaml": {"inner_lr": 0.1, "lam": 2.0, "cg_steps": 5, "cg_damping": 1.0, "lam_damping": 10.0},  # gd solver
    "warpgrad": {"inner_lr": 0.4, "snapshots": 5},  # offline: at most 5 trajectory points per task
}
STEPS = [1, 5, 10, 25, 50, 100]
WAYS, SHOTS, QUERIES, META_BATCH = 5, 1, 5, 4


def measure(algorithm: str, steps: int, repeats: int) -> dict:
    from metalearn.algorithms import build_algorithm
    from metalearn.models import Conv4
    from metalearn.tasks import Objective, TaskBatch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = Conv4(1, WAYS).to(device)
    hparams = {**ALGORITHMS[algorithm], "inner_steps": steps, "test_inner_steps": steps}
    algo = build_algorithm(algorithm, model, Objective(model, "classification"), hparams)
    # One task's graph at a time, the per-task memory being what is measured: no concurrent tasks,
    # and no chunks of tasks meta-trained together (the MAML family's default, maml.py).
    algo.parallel_tasks = False
    algo.batched_tasks = False
    x = torch.rand(META_BATCH, WAYS * (SHOTS + QUERIES), 1, 28, 28, device=device)
    y = torch.arange(WAYS, device=device).repeat(SHOTS + QUERIES).expand(META_BATCH, -1)
    tasks = TaskBatch(x[:, :WAYS * SHOTS], y[:, :WAYS * SHOTS], x[:, WAYS * SHOTS:], y[:, WAYS * SHOTS:])
    before = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats + 1):
        algo.zero_grad(set_to_none=True)
        start = time.perf_counter()
        algo.meta_step(tasks)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _status_mb("VmHWM") - before
    return {"algorithm": algorithm, "inner_steps": steps, "peak_mb": round(peak, 1),
            "seconds_per_iter": round(statistics.median(times[1:]), 4)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=STEPS)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "memory.csv"))
    parser.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        print(json.dumps(measure(args._one[0], int(args._one[1]), args.repeats)))
        return
    rows = []
    for algorithm in args.algorithms:
        for steps in args.steps:
            out = subprocess.run([sys.executable, "-m", "bench.memory", "--_one", algorithm, str(steps),
                                  "--repeats", str(args.repeats)], capture_output=True, text=True, check=True,
                                 cwd=RESULTS.parent.parent)  # the repository root: `-m bench.memory` resolves
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{algorithm:8s} {steps:4d} inner steps: peak {row['peak_mb']:8.1f} MB, "
                  f"{row['seconds_per_iter']:.3f} s/meta-step", flush=True)
    out = write_csv(rows, args.out, ["algorithm", "inner_steps", "peak_mb", "seconds_per_iter"])
    for algorithm in args.algorithms:
        peaks = {r["inner_steps"]: r["peak_mb"] for r in rows if r["algorithm"] == algorithm}
        low, high = min(peaks), max(peaks)
        print(f"{algorithm}: peak at {high} steps = {peaks[high] / max(peaks[low], 1e-9):.2f} x peak at {low} step(s)")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
