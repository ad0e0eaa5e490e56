"""Meta-training speed and peak memory: ours against a plain PyTorch loop, `higher` and TorchOpt.

    python -m bench.speed [--iterations N] [--repeats R]      (or `make bench`)

Every implementation computes the same meta-gradient (same network, initialisation, tasks, inner
learning rate and steps) and takes an Adam step, for
  - MAML second order and first order on Omniglot 5-way 1-shot (1 query per class, as the MAML code),
    meta-batch 32, conv4 with 64 filters, 1 inner step (alpha 0.4);
  - MAML second order and first order on sinusoid 10-shot (10 query points), meta-batch 25, MLP 40-40,
    1 inner step (alpha 0.01);
  - Meta-SGD, T-net, MT-net, iMAML (5 inner steps, 5 CG steps), Leap (3 steps, path energy) and WarpGrad
    (warp layers meta-learned, initialisation fixed; the default profile's steps and buffer) on
    both (`OTHER_ALGORITHMS`); iMAML also against TorchOpt's implicit differentiation (`torchopt`:
    torchopt.diff.implicit.custom_root, its conjugate gradient, the same inner steps and linear system).
Every algorithm, MAML included, also runs two ways of our own code with chunking off:
  - `serial`: the plain per-task loop (issue #19's peer for every row): the algorithm's one-task code,
    one task after another, every core as intra-op threads, as MAML's hand-written `plain` loop runs;
  - `loop`: the same one-task code with its tasks spread over the cores (`map_tasks`, one task per
    core): what our package ran before chunking. Not a peer but an ablation (what chunking gains over
    our own concurrent tasks); the summary prints ours / best peer and ours / loop apart.
Each implementation runs in a process of its own, so peak memory is its own: `peak_mb` is the
growth of the process's peak resident memory over its resident memory just before the first
meta-step (the kernel's peak counter is reset there; on CUDA: torch.cuda.max_memory_allocated).
The implementations of a setting are timed interleaved (`measure`): `iters_per_s` is the median of
`repeats` timed blocks after a warm-up step. Writes bench/results/speed.csv
(columns impl, algorithm, benchmark, iters_per_s, peak_mb, threads) and prints ours / best peer, then the
evaluation rows of bench/evaluation.py (algorithm `maml-evaluation`: 600 test episodes, chunked vs
the one-episode loop; `iters_per_s` there is episodes per second).
`threads` is the worker's intra-op threads (the harness process's torch.get_num_threads(): every core
by default, which also sets how many chunks of tasks ours runs at once, algorithms/base.py). The control rows
(`--control-threads`, default 1) time MAML and first-order MAML again with every implementation on
that many threads, so the table separates what batching tasks gains from what the other cores gain.
"""
from __future__ import annotations

import argparse
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

from bench import evaluation, write_csv

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

# The other algorithms of the MAML family, iMAML, Leap and WarpGrad. Their settings are the default
# profile's (params.yaml) where they differ from MAML's.
OTHER_ALGORITHMS = {
    "metasgd": {}, "tnet": {}, "mtnet": {},
    "imaml": {"inner_steps": 5, "lam": 2.0, "cg_steps": 5, "cg_damping": 1.0, "lam_damping": 10.0},
    "leap": {"inner_steps": 3, "norm": False},
    "warpgrad": {},  # per benchmark: BENCHMARK_HPARAMS
}
# Settings that differ between the benchmarks, by objective kind: WarpGrad's default-profile ones
# (params.yaml: Omniglot 5w1s 3 steps, 2 buffered points; sinusoid 5 steps, every point buffered)
BENCHMARK_HPARAMS = {
    ("warpgrad", "classification"): {"inner_steps": 3, "snapshots": 2},
    ("warpgrad", "regression"): {"inner_steps": 5, "snapshots": 5},
}
# Our own code with chunking off, for every algorithm (the module docstring): `serial` one task at a
# time (a peer: the plain per-task loop), `loop` tasks concurrent on the cores (an ablation, not a peer)
UNCHUNKED_IMPLS = ["serial", "loop"]
OTHER_IMPLS = ["ours", *UNCHUNKED_IMPLS]
NOT_PEERS = {"ours", "loop"}
# Peers beyond the per-task loop, per algorithm
ALGORITHM_PEERS = {"imaml": ["torchopt"]}


def step_torchopt_imaml(model, tasks, criterion, inner_lr, hparams):
    """iMAML with TorchOpt's implicit differentiation (torchopt.diff.implicit.custom_root), the way
    TorchOpt's own iMAML example writes it: per task, the inner problem G = L_S + lam/2 ||phi - theta||^2
    solved by the same `inner_steps` gradient steps (no graph), the meta-gradient by TorchOpt's CG
    (`cg_steps` iterations, no early stop) through the root's optimality condition. The condition is
    written so that TorchOpt's linear system is the official code's damped one (algorithms/imaml.py):
    F(phi, theta) = grad L_S(phi) + c (phi - theta), c = lam + lam_damping, with ridge cg_damping * c,
    so TorchOpt solves (H + (1 + cg_damping) c I) u = grad L_Q and returns c u = ours."""
    import torchopt
    from torchopt.diff.implicit import custom_root

    lam, steps = hparams["lam"], hparams["inner_steps"]
    pull = hparams["lam"] + hparams["lam_damping"]
    names = [name for name, _ in model.named_parameters()]

    def loss(params, x, y):
        return criterion(functional_call(model, dict(zip(names, params)), (x,)), y)

    def optimality(phi, theta, x, y):
        grads = torch.func.grad(lambda p: loss(p, x, y))(phi)  # TorchOpt differentiates this with torch.func
        return tuple(g + pull * (p - t) for g, p, t in zip(grads, phi, theta))

    solve = torchopt.linear_solve.solve_cg(maxiter=hparams["cg_steps"], ridge=hparams["cg_damping"] * pull,
                                           rtol=0.0, atol=0.0)

    @custom_root(optimality, argnums=1, solve=solve)
    def inner_solve(phi, theta, x, y):
        theta = tuple(t.detach() for t in theta)
        phi = tuple(t.clone().requires_grad_() for t in theta)
        with torch.enable_grad():  # TorchOpt runs the solver inside an autograd.Function (no grad mode)
            for _ in range(steps):
                proximal = loss(phi, x, y) + 0.5 * lam * sum(((p - t) ** 2).sum() for p, t in zip(phi, theta))
                grads = torch.autograd.grad(proximal, phi)
                phi = tuple((p - inner_lr * g).detach().requires_grad_() for p, g in zip(phi, grads))
        return tuple(p.detach() for p in phi)

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        theta = tuple(model.parameters())
        for i in range(len(tasks)):
            phi = inner_solve(theta, theta, tasks.support_x[i], tasks.support_y[i])
            (loss(phi, tasks.query_x[i], tasks.query_y[i]) / len(tasks)).backward()
        opt.step()
    return step


def algorithm_hparams(algorithm: str, criterion, inner_lr: float) -> dict:
    kind = "classification" if criterion is F.cross_entropy else "regression"
    return {"inner_lr": inner_lr if algorithm != "imaml" or kind == "regression" else 0.1,
            "inner_steps": 1, "test_inner_steps": 1, **OTHER_ALGORITHMS.get(algorithm, {}),
            **BENCHMARK_HPARAMS.get((algorithm, kind), {})}


def step_algorithm(algorithm: str, model, tasks, criterion, inner_lr, chunked: bool, concurrent: bool = True):
    """A meta-iteration of `algorithm` as `metalearn train` runs it (chunked), or task by task: the
    tasks spread over the cores (`concurrent`), or one after another in this thread."""
    from metalearn.algorithms import build_algorithm
    from metalearn.tasks import Objective

    kind = "classification" if criterion is F.cross_entropy else "regression"
    hparams = algorithm_hparams(algorithm, criterion, inner_lr)
    algo = build_algorithm(algorithm, model, Objective(model, kind), hparams).to(tasks.support_x.device)
    algo.batched_tasks = chunked
    if not concurrent:
        algo.parallel_tasks = False  # map_tasks then runs the tasks in order, on every intra-op thread
    opt = torch.optim.Adam(algo.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        algo.meta_step(tasks)
        opt.step()
    step.algo = algo
    return step


def make_step(impl: str, algorithm: str, benchmark: str, model, tasks, criterion):
    inner_lr = SETTINGS[benchmark]["inner_lr"]
    if algorithm in ("maml", "fomaml") and impl in STEPS:
        return STEPS[impl](model, tasks, criterion, inner_lr, algorithm == "fomaml")
    if (algorithm, impl) == ("imaml", "torchopt"):
        hparams = algorithm_hparams(algorithm, criterion, inner_lr)
        return step_torchopt_imaml(model, tasks, criterion, hparams["inner_lr"], hparams)
    return step_algorithm(algorithm, model, tasks, criterion, inner_lr, impl == "ours", impl != "serial")


def machine() -> str:
    """What the timings were taken on: the GPU, or the CPU's model and cores."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA)"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads (CPU)"


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


def worker(impl: str, algorithm: str, benchmark: str, threads: str = "0") -> None:
    """One implementation in its own process (see `main`), so its peak memory is its own. Sets up and
    warms up, says `ready`, then times blocks of meta-iterations on request ("time N" on stdin ->
    seconds on stdout); "done" -> its peak memory, and it exits."""
    from metalearn import allocator

    allocator.tune()  # as the `metalearn` command runs, for every implementation alike (bench/allocator.py)
    if int(threads):  # the harness's own intra-op threads, or a control row's (and so concurrent chunks)
        torch.set_num_threads(int(threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tasks, criterion = make_problem(benchmark, device)
    step = make_step(impl, algorithm, benchmark, model, tasks, criterion)
    before = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "done":
            break
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(int(command[1])):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(time.perf_counter() - start, flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _status_mb("VmHWM") - before
    print(json.dumps({"peak_mb": round(peak, 1)}), flush=True)


def start_worker(impl: str, algorithm: str, benchmark: str, threads: int = 0, env: dict | None = None):
    """A `worker` process, set up and warmed up (it has said `ready`)."""
    process = subprocess.Popen([sys.executable, "-m", "bench.speed", "--_worker", impl, algorithm, benchmark,
                                str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent, env=env)
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {impl} worker failed to start (its error is above)")
    return process


def time_interleaved(workers: dict, iterations: int, repeats: int,
                     before_exit=lambda: None) -> dict[str, tuple[float, float]]:
    """label -> (median seconds per meta-iteration, peak MB) of started workers: `repeats` rounds in
    which each worker in turn (the order rotating) times a block of `iterations` meta-iterations, the
    others idle. A slow spell of the machine thus hits every worker alike instead of whichever happened
    to run then. Then `before_exit()`, and the workers exit."""
    labels = list(workers)
    seconds = {label: [] for label in labels}
    for round_ in range(repeats):
        for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
            workers[label].stdin.write(f"time {iterations}\n")
            workers[label].stdin.flush()
            seconds[label].append(float(workers[label].stdout.readline()) / iterations)
    before_exit()
    result = {}
    for label, process in workers.items():
        process.stdin.write("done\n")
        process.stdin.flush()
        result[label] = (statistics.median(seconds[label]), json.loads(process.stdout.readline())["peak_mb"])
        process.wait()
    return result


def measure(impls: list[str], algorithm: str, benchmark: str, iterations: int, repeats: int,
            threads: int = 0) -> list[dict]:
    """Speed and peak memory of every implementation, interleaved (`time_interleaved`): one worker
    process each, all set up first, one at a time, so set-up and warm-up do not compete either."""
    threads = threads or torch.get_num_threads()  # 0: this process's, given to the workers explicitly
    workers = {impl: start_worker(impl, algorithm, benchmark, threads) for impl in impls}
    timed = time_interleaved(workers, iterations, repeats)
    return [{"impl": impl, "algorithm": algorithm, "benchmark": benchmark, "iters_per_s": round(1 / seconds, 3),
             "peak_mb": peak, "threads": threads}
            for impl, (seconds, peak) in timed.items()]


def check_same_gradients(benchmark: str, algorithm: str, impls: list[str]) -> float:
    """Largest difference between any implementation's meta-gradient and the plain loop's (for the
    other algorithms: the serial per-task loop's, every meta-parameter: T, masks' logits, rates), relative to
    the largest entry of the plain loop's (they must agree; per-tensor ratios would be meaningless for
    the conv biases, whose gradient BatchNorm cancels to rounding noise)."""
    device = torch.device("cpu")
    grads = {}
    # In float64: in float32 the support sets' BatchNorm (5 images) amplifies rounding to ~1e-2.
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    reference = "plain" if algorithm in ("maml", "fomaml") else "serial"
    for impl in {reference, *impls}:
        model, tasks, criterion = make_problem(benchmark, device)
        torch.manual_seed(1)  # MT-net draws its masks: the same draws for every implementation
        step = make_step(impl, algorithm, benchmark, model, tasks, criterion)
        step()  # .grad keeps the meta-gradient of the step (each step starts with zero_grad)
        parameters = step.algo.parameters() if hasattr(step, "algo") else model.parameters()
        grads[impl] = [p.grad.detach().clone() for p in parameters if p.grad is not None]
    torch.set_default_dtype(dtype)
    ref = torch.cat([r.flatten() for r in grads[reference]])
    return max(((torch.cat([g.flatten() for g in grads[impl]]) - ref).abs().max() / ref.abs().max()).item()
               for impl in impls)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5,
                        help="meta-iterations per timed block (x20 on the sinusoid, whose iterations are short)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per implementation (the median is reported)")
    parser.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS,
                        help="ours and the external peers to time; the serial per-task loop (a peer) and our "
                             "concurrent loop (the ablation) are timed for every algorithm whatever this says")
    parser.add_argument("--benchmarks", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--algorithms", nargs="*", default=list(OTHER_ALGORITHMS), choices=list(OTHER_ALGORITHMS),
                        help="besides MAML and first-order MAML (against their per-task loops)")
    parser.add_argument("--eval-episodes", type=int, default=600,
                        help="test episodes of the evaluation rows (bench/evaluation.py; 0: none)")
    parser.add_argument("--out", default=str(RESULTS / "speed.csv"))
    parser.add_argument("--control-threads", type=int, default=1,
                        help="also time MAML and first-order MAML with every implementation on this many "
                             "threads (0: no control rows)")
    parser.add_argument("--_worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        worker(*args._worker)
        return
    rows = []
    for benchmark in args.benchmarks:
        for algorithm in ("maml", "fomaml", *args.algorithms):
            impls = [*args.impls, *UNCHUNKED_IMPLS] if algorithm in ("maml", "fomaml") else OTHER_IMPLS + [
                impl for impl in ALGORITHM_PEERS.get(algorithm, []) if impl in args.impls]
            print(f"{benchmark} {algorithm}: meta-gradients differ from the "
                  f"{'plain' if algorithm in ('maml', 'fomaml') else 'serial per-task'} loop's by at most "
                  f"{check_same_gradients(benchmark, algorithm, impls):.1e} (relative, float64)", flush=True)
            iterations = args.iterations * (20 if benchmark.startswith("sinusoid") else 1)
            # (none on a GPU, and none where they would repeat the main rows: a machine of that many cores)
            controls = [args.control_threads] if algorithm in ("maml", "fomaml") and not torch.cuda.is_available() \
                and args.control_threads not in (0, torch.get_num_threads()) else []
            for threads in [0, *controls]:
                # (on one thread `loop` is `serial`: the control rows leave it out)
                timed = impls if not threads else [impl for impl in impls if impl != "loop"]
                for row in measure(timed, algorithm, benchmark, iterations, args.repeats, threads):
                    rows.append(row)
                    print(f"  {row['impl']:9s} {row['iters_per_s']:8.2f} it/s  peak {row['peak_mb']:8.1f} MB  "
                          f"{row['threads']} threads", flush=True)
    if args.eval_episodes:  # evaluation: episodes per second, chunked vs the one-episode loop
        rows += [{**row, "threads": torch.get_num_threads()}
                 for row in evaluation.run(args.benchmarks, args.eval_episodes, min(args.repeats, 3))]
    out = write_csv(rows, args.out, ["impl", "algorithm", "benchmark", "iters_per_s", "peak_mb", "threads"])
    print(f"\nmachine: {machine()}, torch {torch.__version__}")
    for benchmark in args.benchmarks:
        for algorithm in ("maml", "fomaml", *args.algorithms):
            for threads in sorted({r["threads"] for r in rows}, reverse=True):
                sel = {r["impl"]: r for r in rows if (r["benchmark"], r["algorithm"], r["threads"]) ==
                       (benchmark, algorithm, threads)}
                peers = [r for i, r in sel.items() if i not in NOT_PEERS]
                if "ours" in sel and peers:
                    ours = sel["ours"]["iters_per_s"]
                    best = max(peers, key=lambda r: r["iters_per_s"])
                    ablation = f"; {ours / sel['loop']['iters_per_s']:.2f} x our concurrent loop" if "loop" in sel else ""
                    print(f"{benchmark:16s} {algorithm:8s} {threads} threads: ours {ours:.2f} it/s = "
                          f"{ours / best['iters_per_s']:.2f} x best peer ({best['impl']}){ablation}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
