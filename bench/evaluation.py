"""Evaluation speed: 600 test episodes, chunked (ours) against the one-episode loops.

    python -m bench.evaluation [--episodes N] [--repeats R]      (`make bench` runs it through bench.speed)

`metalearn evaluate` adapts a chunk of test episodes at once (maml.py, `evaluate_tasks`). Against it,
with `batched_tasks` off (each episode adapted alone):
  - `serial`: the plain one-episode loop, episodes one after another on every intra-op thread;
  - `loop`: the loop it replaced, the episodes spread over the cores by `map_tasks`.
All three score the same episodes with the same network, as the default profile's test episodes:
  - Omniglot 5-way 1-shot: MAML's conv4 (64 filters), 15 queries per class, 3 test steps at alpha 0.4;
  - sinusoid 10-shot: the MLP 40-40, 100 query points, 10 test steps at alpha 0.01.
The per-episode metrics of the three are checked equal (float64) before the timing. Rows in
bench/speed.py's format: `iters_per_s` is episodes per second, `algorithm` is `maml-evaluation`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from metalearn.algorithms import build_algorithm
from metalearn.models import MLP, Conv4
from metalearn.tasks import Objective, TaskBatch

BENCHMARKS = {"omniglot-5w1s": dict(steps=3, inner_lr=0.4), "sinusoid-10shot": dict(steps=10, inner_lr=0.01)}


def make_problem(benchmark: str, episodes: int, dtype=torch.float32):
    torch.manual_seed(0)
    if benchmark == "omniglot-5w1s":
        ways, shots, queries = 5, 1, 15
        model, kind = Conv4(1, ways).to(dtype), "classification"
        x = torch.rand(episodes, ways * (shots + queries), 1, 28, 28, dtype=dtype)
        y = torch.arange(ways).repeat(shots + queries).expand(episodes, -1)
        k = ways * shots
    else:
        model, kind, k = MLP().to(dtype), "regression", 10
        x = torch.rand(episodes, k + 100, 1, dtype=dtype) * 10 - 5
        amplitude, phase = torch.rand(2, episodes, 1, 1, dtype=dtype) * torch.tensor([4.9, 3.14]).view(2, 1, 1, 1)
        y = (amplitude + 0.1) * torch.sin(x - phase)
    setting = BENCHMARKS[benchmark]
    algo = build_algorithm("maml", model, Objective(model, kind),
                           {"inner_lr": setting["inner_lr"], "inner_steps": 1, "test_inner_steps": setting["steps"]})
    return algo, TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])


IMPLS = ("ours", "serial", "loop")


def evaluate_all(algo, tasks: TaskBatch, impl: str, batch: int = 50) -> list[dict]:
    """The episodes in batches of 50, as `metalearn evaluate` reads them (benchmarks.eval_batches),
    by `impl` (the module docstring)."""
    algo.batched_tasks = impl == "ours"
    algo.parallel_tasks = impl != "serial"
    return [m for start in range(0, len(tasks), batch)
            for m in algo.evaluate_tasks(tasks.slice(start, start + batch), algo.test_inner_steps)]


def check_same_metrics(benchmark: str, episodes: int = 40) -> float:
    """Largest difference of any episode's metric between the chunked path and either loop (float64),
    relative to its size."""
    algo, tasks = make_problem(benchmark, episodes, torch.float64)
    chunked = evaluate_all(algo, tasks, "ours")
    return max(abs(c[k] - l[k]) / max(abs(l[k]), 1e-12)
               for impl in IMPLS[1:] for c, l in zip(chunked, evaluate_all(algo, tasks, impl)) for k in l)


def measure(benchmark: str, episodes: int, repeats: int) -> list[dict]:
    """Episodes per second of each path, timed interleaved (median of `repeats` passes over all episodes)."""
    algo, tasks = make_problem(benchmark, episodes)
    for impl in IMPLS:  # warm-up
        evaluate_all(algo, tasks.slice(0, 50), impl)
    seconds = {impl: [] for impl in IMPLS}
    for round_ in range(repeats):
        for impl in IMPLS[round_ % 3:] + IMPLS[:round_ % 3]:  # the order rotating
            start = time.perf_counter()
            evaluate_all(algo, tasks, impl)
            seconds[impl].append(time.perf_counter() - start)
    return [{"impl": impl, "algorithm": "maml-evaluation", "benchmark": f"{benchmark}-{episodes}-episodes",
             "iters_per_s": round(episodes / statistics.median(s), 2), "peak_mb": ""} for impl, s in seconds.items()]


def run(benchmarks=tuple(BENCHMARKS), episodes: int = 600, repeats: int = 3) -> list[dict]:
    rows = []
    for benchmark in benchmarks:
        print(f"{benchmark} evaluation: per-episode metrics differ from the one-episode loop's by at most "
              f"{check_same_metrics(benchmark):.1e} (relative, float64)", flush=True)
        measured = measure(benchmark, episodes, repeats)
        ours, serial, loop = (next(r for r in measured if r["impl"] == i)["iters_per_s"] for i in IMPLS)
        print(f"  ours {ours:.1f} episodes/s: {ours / serial:.2f} x the serial one-episode loop ({serial:.1f}), "
              f"{ours / loop:.2f} x the concurrent one ({loop:.1f})", flush=True)
        rows += measured
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    args = parser.parse_args(argv)
    run(args.benchmarks, args.episodes, args.repeats)


if __name__ == "__main__":
    main()
