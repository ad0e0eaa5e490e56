"""glibc's malloc with its defaults against metalearn.allocator's settings, per meta-iteration.

    python -m bench.allocator [--algorithms ...] [--threads 1 2] [--iterations 5] [--repeats 6]

For each algorithm, our implementation (chunked, as `metalearn train` runs it) on bench/speed.py's
Omniglot 5-way 1-shot problem in two worker processes, identical but for METALEARN_MALLOC=default
in one; their blocks of meta-iterations are timed interleaved (bench.speed.time_interleaved). Also
the minor page faults per meta-iteration of each. On one thread (as each job of the pipeline runs)
and on two (as `make bench`'s speed table). Writes bench/results/allocator.csv: algorithm, benchmark, threads, malloc,
iters_per_s, page_faults_per_iter, peak_mb; prints tuned ÷ default.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench import speed, write_csv

RESULTS = Path(__file__).resolve().parent / "results"
ALGORITHMS = ["maml", "fomaml", "metasgd", "tnet", "mtnet", "imaml", "leap", "warpgrad"]
SETTINGS = {"default": {"METALEARN_MALLOC": "default"}, "tuned": {"METALEARN_MALLOC": "tuned"}}


def page_faults(pid: int) -> int:
    """Minor page faults of a running process so far (/proc/PID/stat, field 10)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--benchmark", default="omniglot-5w1s", choices=list(speed.SETTINGS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=5, help="meta-iterations per timed block")
    parser.add_argument("--repeats", type=int, default=6, help="timed blocks per setting (the median is reported)")
    parser.add_argument("--out", default=str(RESULTS / "allocator.csv"))
    args = parser.parse_args(argv)
    rows = []
    for threads, algorithm in ((t, a) for t in args.threads for a in args.algorithms):
        workers = {name: speed.start_worker("ours", algorithm, args.benchmark, threads, {**os.environ, **env})
                   for name, env in SETTINGS.items()}
        faults_before = {name: page_faults(w.pid) for name, w in workers.items()}
        faults = {}

        def count_faults():  # read before the workers exit (time_interleaved ends them)
            faults.update({name: page_faults(w.pid) - faults_before[name] for name, w in workers.items()})

        timed = speed.time_interleaved(workers, args.iterations, args.repeats, before_exit=count_faults)
        iterations = args.iterations * args.repeats
        by_setting = {name: {"algorithm": algorithm, "benchmark": args.benchmark, "threads": threads, "malloc": name,
                             "iters_per_s": round(1 / seconds, 3),
                             "page_faults_per_iter": round(faults[name] / iterations), "peak_mb": peak}
                      for name, (seconds, peak) in timed.items()}
        rows += by_setting.values()
        default, tuned = by_setting["default"], by_setting["tuned"]
        print(f"{args.benchmark} {algorithm:8s} {threads} thread(s): default {default['iters_per_s']:7.3f} it/s "
              f"({default['page_faults_per_iter']} faults/it), tuned {tuned['iters_per_s']:7.3f} it/s "
              f"({tuned['page_faults_per_iter']} faults/it): {tuned['iters_per_s'] / default['iters_per_s']:.3f}x",
              flush=True)
    print(f"-> {write_csv(rows, args.out)}")


if __name__ == "__main__":
    main()
