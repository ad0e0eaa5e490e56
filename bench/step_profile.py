"""Where the second-order meta-training step spends its time: the paper profile's Omniglot 5-way 1-shot
MAML step (meta-batch 32, conv4 with the MAML code's BatchNorm and head, 1 inner step, alpha 0.4),
profiled with torch.profiler and each operator's own CPU time put in a category.

    python -m bench.step_profile [--steps N] [--threads T] [--algorithms maml fomaml]

Categories: convolution (forward, backward and double backward), batch norm (forward, backward and
double backward kernels), elementwise (add, mul, sub, div, clamp/threshold, exp, ...: the chain rule's
arithmetic and the BatchNorm double backward's composite ops), copies (copy_, clone, cat, contiguous),
autograd (the engine's own nodes), other. A speed lever for the long full-budget runs is worth taking
where a category is large and not a convolution (convolutions run near the CPU's float32 rate).
Writes bench/results/step_profile.csv: algorithm, benchmark, threads, category, seconds_per_step, share.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench import write_csv

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARK = "omniglot-5w1s"
CATEGORIES = {
    "convolution": ("convolution", "conv2d"),
    "batch norm": ("batch_norm", "batchnorm"),
    "elementwise": ("aten::add", "aten::mul", "aten::sub", "aten::div", "aten::clamp", "aten::threshold",
                    "aten::exp", "aten::neg", "aten::sum", "aten::mean", "aten::relu", "aten::where", "aten::pow",
                    "aten::sqrt", "aten::rsqrt", "aten::log", "aten::fill", "aten::zero"),
    "copies": ("aten::copy_", "aten::clone", "aten::cat", "aten::contiguous", "aten::stack", "aten::index"),
    "autograd": ("autograd::", "backward", "Backward"),
}


def category(name: str) -> str:
    lowered = name.lower()
    for label, keys in CATEGORIES.items():
        if any(key.lower() in lowered for key in keys):
            return label
    return "other"


def paper_step(algorithm: str):
    """One meta-step of the paper profile's settings on random images (the step's cost does not
    depend on the pixels): a function taking no argument."""
    from metalearn.algorithms import build_algorithm
    from metalearn.benchmarks import build_objective
    from metalearn.config import Benchmark, load_params
    from metalearn.tasks import TaskBatch

    benchmark = Benchmark.of(load_params(str(Path(__file__).resolve().parents[1] / "params.yaml"), "paper"), BENCHMARK)
    bench = benchmark.settings
    torch.manual_seed(0)
    objective = build_objective(bench)
    algo = build_algorithm(algorithm, objective.model, objective, benchmark.algorithm(algorithm))
    meta_batch, ways = bench["train"]["meta_batch"], bench["ways"]
    support, query = ways * bench["shots"], ways * bench["queries"]
    labels = torch.arange(ways)
    tasks = TaskBatch(torch.rand(meta_batch, support, 1, 28, 28),
                      labels.repeat_interleave(bench["shots"]).expand(meta_batch, -1).contiguous(),
                      torch.rand(meta_batch, query, 1, 28, 28),
                      labels.repeat_interleave(bench["queries"]).expand(meta_batch, -1).contiguous())
    optimizer = torch.optim.Adam(algo.parameters(), lr=bench["train"]["meta_lr"])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        algo.meta_step(tasks)
        optimizer.step()
    return step


def profile(algorithm: str, steps: int) -> list[dict]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = paper_step(algorithm)
    step()  # warm-up: allocator, kernels' first calls
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    seconds: dict[str, float] = {}
    for event in prof.key_averages():
        label = category(event.key)
        seconds[label] = seconds.get(label, 0.0) + event.self_cpu_time_total / 1e6
    total = sum(seconds.values())
    return [{"algorithm": algorithm, "benchmark": BENCHMARK, "threads": torch.get_num_threads(), "category": label,
             "seconds_per_step": round(value / steps, 4), "share": round(value / total, 3)}
            for label, value in sorted(seconds.items(), key=lambda item: -item[1])]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    # one thread: with more, ours spreads tasks over threads whose operators the profiler does not attribute
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algorithms", nargs="+", default=["maml", "fomaml"])
    parser.add_argument("--out", default=str(RESULTS / "step_profile.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for algorithm in args.algorithms:
        found = profile(algorithm, args.steps)
        rows += found
        print(f"{algorithm}: " + ", ".join(f"{r['category']} {r['share']:.0%}" for r in found), flush=True)
    print(f"-> {write_csv(rows, args.out)}")


if __name__ == "__main__":
    main()
