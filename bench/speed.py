"""Meta-training speed and peak memory: ours against a plain PyTorch loop, `higher` and TorchOpt.

    python -m bench.speed [--iterations N] [--repeats R]      (or `make bench`)

Every implementation computes the same meta-gradient (same network, initialisation, tasks, inner
learning rate and steps) and takes an Adam step, for
  - MAML second order and first order on Omniglot 5-way 1-shot (1 query per class, as the MAML code),
    meta-batch 32, conv4 with 64 filters, 1 inner step (alpha 0.4);
  - MAML second order and first order on sinusoid 10-shot (10 query points), meta-batch 25, MLP 40-40,
    1 inner step (alpha 0.01).
Each (implementation, setting) runs in a fresh subprocess, so peak memory is its own: `peak_mb` is
the growth of the process's peak resident memory over its resident memory just before the first
meta-step (the kernel's peak counter is reset there; on CUDA: torch.cuda.max_memory_allocated). `iters_per_s` is the median over `repeats`
timed blocks after warm-up. Writes bench/results/speed.csv
(columns impl, algorithm, benchmark, iters_per_s, peak_mb) and prints ours / best peer.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {
    "omniglot-5w1s": dict(kind="classification", ways=5, shots=1, queries=1, meta_batch=32, inner_lr=0.4),
    "sinusoid-10shot": dict(kind="regression", shots=10, queries=10, meta_batch=25, inner_lr=0.01),
}
IMPLS = ["ours", "plain", "higher", "torchopt"]


def make_problem(benchmark: str, device: torch.device):
    """Model, tasks and criterion, identical for every implementation (fixed seed)."""
    from metalearn.models import MLP, Conv4
    from metalearn.tasks import TaskBatch

    s = SETTINGS[benchmark]
    torch.manual_seed(0)
    if s["kind"] == "classification":
        model = Conv4(1, s["ways"])
        n = s["ways"] * (s["shots"] + s["queries"])
        x = torch.rand(s["meta_batch"], n, 1, 28, 28)
        y = torch.arange(s["ways"]).repeat_interleave(s["shots"] + s["queries"]).expand(s["meta_batch"], -1)
        # support = first shot of each class, query = the rest
        order = torch.cat([torch.arange(0, n, s["shots"] + s["queries"]),
                           torch.tensor([i for i in range(n) if i % (s["shots"] + s["queries"]) != 0])])
        x, y = x[:, order], y[:, order]
        k = s["ways"] * s["shots"]
        criterion = F.cross_entropy
    else:
        model = MLP()
        x = torch.rand(s["meta_batch"], s["shots"] + s["queries"], 1) * 10 - 5
        y = torch.sin(x)
        k = s["shots"]
        criterion = F.mse_loss
    tasks = TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
    return model.to(device), tasks.to(device), criterion


def step_ours(model, tasks, criterion, inner_lr, first_order):
    from metalearn.algorithms import build_algorithm
    from metalearn.tasks import Objective

    kind = "classification" if criterion is F.cross_entropy else "regression"
    algo = build_algorithm("fomaml" if first_order else "maml", model, Objective(model, kind),
                           {"inner_lr": inner_lr, "inner_steps": 1, "test_inner_steps": 1})
    opt = torch.optim.Adam(algo.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        algo.meta_step(tasks)
        opt.step()
    return step


def step_plain(model, tasks, criterion, inner_lr, first_order):
    """The textbook loop: one task at a time, torch.autograd.grad(create_graph=True)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    names = [n for n, _ in model.named_parameters()]

    def step():
        opt.zero_grad(set_to_none=True)
        params = list(model.parameters())
        for i in range(len(tasks)):
            loss = criterion(model(tasks.support_x[i]), tasks.support_y[i])
            grads = torch.autograd.grad(loss, params, create_graph=not first_order)
            fast = {n: p - inner_lr * g for n, p, g in zip(names, params, grads)}
            query = criterion(functional_call(model, fast, (tasks.query_x[i],)), tasks.query_y[i])
            (query / len(tasks)).backward()
        opt.step()
    return step


def step_higher(model, tasks, criterion, inner_lr, first_order):
    import higher

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)

    def step():
        opt.zero_grad(set_to_none=True)
        for i in range(len(tasks)):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not first_order) as (fmodel, diffopt):
                diffopt.step(criterion(fmodel(tasks.support_x[i]), tasks.support_y[i]))
                query = criterion(fmodel(tasks.query_x[i]), tasks.query_y[i]) / len(tasks)
                if first_order:  # higher's fast weights are detached: carry their gradient to theta
                    grads = torch.autograd.grad(query, fmodel.parameters())
                    for p, g in zip(model.parameters(), grads):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    query.backward()
        opt.step()
    return step


def step_torchopt(model, tasks, criterion, inner_lr, first_order):
    import torchopt

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner = torchopt.sgd(lr=inner_lr)
    names = [n for n, _ in model.named_parameters()]

    def step():
        opt.zero_grad(set_to_none=True)
        params = tuple(model.parameters())
        for i in range(len(tasks)):
            state = inner.init(params)
            loss = criterion(model(tasks.support_x[i]), tasks.support_y[i])
            grads = torch.autograd.grad(loss, params, create_graph=not first_order)
            updates, _ = inner.update(grads, state, inplace=False)
            fast = torchopt.apply_updates(params, updates, inplace=False)
            query = criterion(functional_call(model, dict(zip(names, fast)), (tasks.query_x[i],)),
                              tasks.query_y[i])
            (query / len(tasks)).backward()
        opt.step()
    return step


STEPS = {"ours": step_ours, "plain": step_plain, "higher": step_higher, "torchopt": step_torchopt}


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS counter (Linux: clear_refs 5) and return the resident MB now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def measure(impl: str, algorithm: str, benchmark: str, iterations: int, repeats: int) -> dict:
    """Run in a fresh process (see `main`): speed and peak memory of one implementation."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tasks, criterion = make_problem(benchmark, device)
    step = STEPS[impl](model, tasks, criterion, SETTINGS[benchmark]["inner_lr"], algorithm == "fomaml")
    before = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / iterations)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _status_mb("VmHWM") - before
    return {"impl": impl, "algorithm": algorithm, "benchmark": benchmark,
            "iters_per_s": round(1 / statistics.median(times), 3), "peak_mb": round(peak, 1)}


def check_same_gradients(benchmark: str, algorithm: str) -> float:
    """Largest difference between any implementation's meta-gradient and the plain loop's, relative to
    the largest entry of the plain loop's (they must agree; per-tensor ratios would be meaningless for
    the conv biases, whose gradient BatchNorm cancels to rounding noise)."""
    device = torch.device("cpu")
    grads = {}
    # In float64: in float32 the support sets' BatchNorm (5 images) amplifies rounding to ~1e-2.
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    for impl in IMPLS:
        model, tasks, criterion = make_problem(benchmark, device)
        step = STEPS[impl](model, tasks, criterion, SETTINGS[benchmark]["inner_lr"], algorithm == "fomaml")
        step()  # .grad keeps the meta-gradient of the step (each step starts with zero_grad)
        grads[impl] = [p.grad.detach().clone() for p in model.parameters()]
    torch.set_default_dtype(dtype)
    ref = torch.cat([r.flatten() for r in grads["plain"]])
    return max(((torch.cat([g.flatten() for g in grads[impl]]) - ref).abs().max() / ref.abs().max()).item()
               for impl in IMPLS)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5, help="meta-iterations per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks (the median is reported)")
    parser.add_argument("--impls", nargs="+", default=IMPLS)
    parser.add_argument("--out", default=str(RESULTS / "speed.csv"))
    parser.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        print(json.dumps(measure(*args._one, args.iterations, args.repeats)))
        return
    rows = []
    for benchmark in SETTINGS:
        for algorithm in ("maml", "fomaml"):
            print(f"{benchmark} {algorithm}: meta-gradients differ from the plain loop's by at most "
                  f"{check_same_gradients(benchmark, algorithm):.1e} (relative, float64)", flush=True)
            for impl in args.impls:
                iterations = args.iterations * (20 if benchmark.startswith("sinusoid") else 1)
                out = subprocess.run([sys.executable, "-m", "bench.speed", "--_one", impl, algorithm, benchmark,
                                      "--iterations", str(iterations), "--repeats", str(args.repeats)],
                                     capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"  {impl:9s} {row['iters_per_s']:8.2f} it/s  peak {row['peak_mb']:8.1f} MB", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["impl", "algorithm", "benchmark", "iters_per_s", "peak_mb"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    for benchmark in SETTINGS:
        for algorithm in ("maml", "fomaml"):
            sel = {r["impl"]: r for r in rows if r["benchmark"] == benchmark and r["algorithm"] == algorithm}
            peers = [r for i, r in sel.items() if i != "ours"]
            if "ours" in sel and peers:
                best = max(peers, key=lambda r: r["iters_per_s"])
                print(f"{benchmark:16s} {algorithm:7s} ours {sel['ours']['iters_per_s']:.2f} it/s = "
                      f"{sel['ours']['iters_per_s'] / best['iters_per_s']:.2f} x best peer ({best['impl']})")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
