"""Meta-training chunks of tasks together (maml.py, models.forward_tasks) gives the one-task-at-a-time
loop's meta-gradients and metrics, for MAML, first-order MAML and every algorithm that takes that path
(Meta-SGD; T-net and MT-net through the network with T, mtnet.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import metalearn.algorithms.maml
from metalearn.algorithms import ALGORITHMS, build_algorithm
from metalearn.algorithms.maml import chunk_count
from metalearn.algorithms.mtnet import TransformedNetwork, transforms
from metalearn.models import MLP, Conv4
from metalearn.tasks import Objective, TaskBatch

HPARAMS = {"inner_lr": 0.1, "inner_steps": 2, "test_inner_steps": 2}
# iMAML: the exact implicit system (no dampings), whose CG meets negative curvature on some tasks
IMAML_HPARAMS = {"lam": 1.0, "cg_steps": 4, "cg_damping": 0.0, "lam_damping": 0.0}


def hparams_for(name: str, **changes) -> dict:
    return {**HPARAMS, **(IMAML_HPARAMS if name == "imaml" else {}), **changes}


def _batched_algorithms() -> list[str]:
    return sorted(name for name, cls in ALGORITHMS.items() if getattr(cls, "batched_tasks", False))


def test_the_maml_family_takes_the_batched_path():
    assert {"fomaml", "imaml", "maml", "metasgd", "mtnet", "tnet"} <= set(_batched_algorithms())


def _per_task_parameters(model, tasks: int) -> dict[str, torch.Tensor]:
    """A different parameter set per task, stacked: [tasks, *shape]."""
    return {name: p.detach() + 0.1 * torch.randn(tasks, *p.shape, dtype=p.dtype)
            for name, p in model.named_parameters()}


@pytest.mark.parametrize("network", ["conv4-stride", "conv4-maxpool", "mlp"])
def test_forward_tasks_is_each_tasks_own_forward(network):
    torch.manual_seed(0)
    if network == "conv4-stride":
        model, x = Conv4(1, 5, filters=8), torch.rand(3, 4, 1, 28, 28)
    elif network == "conv4-maxpool":
        model, x = Conv4(3, 5, filters=6, pooling="max", image_size=84), torch.rand(3, 4, 3, 84, 84)
    else:
        model, x = MLP(1, (7, 6), 2), torch.randn(3, 4, 1)
    model, x = model.double(), x.double()
    params = _per_task_parameters(model, len(x))
    together = model.forward_tasks(params, x)
    for t in range(len(x)):
        alone = functional_call(model, {name: p[t] for name, p in params.items()}, (x[t],))
        torch.testing.assert_close(together[t], alone, rtol=1e-12, atol=1e-12)
    # The same network with a T (not the identity, shared by the tasks) after every weight layer.
    transformed = TransformedNetwork(model, transforms(model)).double()
    with torch.no_grad():
        for T in transformed.transform:
            T.weight.add_(0.3 * torch.randn_like(T.weight))
    params = {f"task.{name}": p for name, p in params.items()}
    together = transformed.forward_tasks(params, x)
    for t in range(len(x)):
        alone = functional_call(transformed, {name: p[t] for name, p in params.items()}, (x[t],))
        torch.testing.assert_close(together[t], alone, rtol=1e-12, atol=1e-12)


def _omniglot_like(tasks: int) -> tuple[Conv4, TaskBatch]:
    """5-way 1-shot, 2 queries per class, 28x28: small enough for float64, the real network's shape."""
    torch.manual_seed(1)
    model = Conv4(1, 5, filters=16).double()
    x = torch.rand(tasks, 15, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(5).repeat(3).expand(tasks, -1)
    return model, TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def _sinusoid_like(tasks: int, informed: bool = False) -> tuple[MLP, TaskBatch]:
    """`informed`: the tasks carry their amplitude and phase, the network takes them as inputs (oracle)."""
    torch.manual_seed(1)
    model = MLP(3 if informed else 1, (8, 8), 1).double()
    x = torch.rand(tasks, 12, 1, dtype=torch.float64) * 10 - 5
    amplitude, phase = torch.rand(2, tasks, 1, 1, dtype=torch.float64)
    y = amplitude * torch.sin(x + phase)
    info = torch.cat([amplitude, phase], -1).squeeze(1) if informed else None
    return model, TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:], info)


def _informed_sinusoid_like(tasks: int) -> tuple[MLP, TaskBatch]:
    return _sinusoid_like(tasks, informed=True)


def _problems(name: str) -> list:
    """The test problems an algorithm applies to: the oracle sees sinusoid parameters, so sinusoids only."""
    if getattr(ALGORITHMS[name], "sees_task_parameters", False):
        return [_informed_sinusoid_like]
    if getattr(ALGORITHMS[name], "classification_only", False):  # Proto-MAML: a head built from classes
        return [_omniglot_like]
    return [_omniglot_like, _sinusoid_like]


def _meta_step(name: str, problem, batched: bool, monkeypatch):
    model, tasks = problem
    kind = "classification" if isinstance(model, Conv4) else "regression"
    algo = build_algorithm(name, model, Objective(model, kind), hparams_for(name)).double()
    torch.manual_seed(2)
    with torch.no_grad():
        if name == "metasgd":  # learned rates that differ per entry, not the constant start
            for rate in algo.alpha.values():
                rate.uniform_(0.02, 0.2)
        if name in ("tnet", "mtnet"):  # a T that is not the identity: where it sits matters
            for T in algo.transform:
                T.weight.add_(0.2 * torch.randn_like(T.weight))
        if name == "mtnet":  # logits that differ per unit: P(M = 1) from about 0.1 to 0.9
            for zeta in algo.zeta:
                zeta.uniform_(-2.0, 2.0)
    torch.manual_seed(3)  # MT-net draws its masks from the global generator: the same in both paths
    algo.batched_tasks = batched
    calls = []
    forward_tasks = Objective.forward_tasks
    monkeypatch.setattr(Objective, "forward_tasks",
                        lambda self, params, x: calls.append(len(x)) or forward_tasks(self, params, x))
    algo.zero_grad(set_to_none=True)
    metrics = algo.meta_step(tasks)
    assert bool(calls) == batched  # the path under test is the one taken
    return metrics, {k: p.grad.clone() for k, p in algo.named_parameters() if p.grad is not None}, calls


def _assert_equal_steps(loop_step, batched_step):
    (loop_metrics, loop, _), (batched_metrics, batched, _) = loop_step, batched_step
    assert loop.keys() == batched.keys() and len(loop) >= 2
    scale = max(g.abs().max() for g in loop.values())
    for key in loop:
        torch.testing.assert_close(batched[key], loop[key], rtol=1e-9, atol=1e-12 * scale)
    assert batched_metrics == pytest.approx(loop_metrics, rel=1e-9)


@pytest.mark.parametrize("name, problem", [(name, problem) for name in _batched_algorithms() for problem in _problems(name)])
def test_batched_meta_step_equals_the_one_task_at_a_time_loop(name, problem, monkeypatch):
    """9 Omniglot-shaped tasks make 3 chunks of 3 (at 4 tasks a chunk, cut into equal parts: the
    uneven chunks are the next test's; 3 workers, so no rounding up), 9 sinusoid tasks one (maml.py's
    size, well above theirs)."""
    monkeypatch.setenv("METALEARN_TASK_THREADS", "3")
    if problem is _omniglot_like:
        monkeypatch.setattr(metalearn.algorithms.maml, "CPU_CHUNK_NUMBERS", 4 * problem(9)[1].support_x[0].numel())
    loop = _meta_step(name, problem(9), batched=False, monkeypatch=monkeypatch)
    batched = _meta_step(name, problem(9), batched=True, monkeypatch=monkeypatch)
    assert set(batched[2]) == ({3} if problem is _omniglot_like else {9})
    _assert_equal_steps(loop, batched)


@pytest.mark.parametrize("name", ["tnet", "mtnet"])
@pytest.mark.parametrize("problem", [_omniglot_like, _sinusoid_like])
def test_tnet_and_mtnet_chunks_equal_the_one_task_loop_in_every_meta_parameter(name, problem, monkeypatch):
    """7 tasks forced into 3 chunks of unequal sizes (3, 2, 2): the meta-gradients of the
    initialisation, of every T and (MT-net) of every zeta, and the metrics, are the loop's. MT-net's
    tasks each get their own mask, from the noise the loop draws for them, in task order."""
    support_numbers = problem(7)[1].support_x[0].numel()
    monkeypatch.setattr(metalearn.algorithms.maml, "CPU_CHUNK_NUMBERS", 3 * support_numbers)  # 3 tasks a chunk
    monkeypatch.setenv("METALEARN_TASK_THREADS", "3")  # 3 chunks for 3 workers (chunk_count)
    loop = _meta_step(name, problem(7), batched=False, monkeypatch=monkeypatch)
    batched = _meta_step(name, problem(7), batched=True, monkeypatch=monkeypatch)
    # forward_tasks runs on chunks of 3, 2 and 2 tasks (support for each inner step, then query)
    assert sorted(batched[2]) == sorted([3, 2, 2] * (HPARAMS["inner_steps"] + 1))
    kinds = {key.split(".")[0] for key in batched[1]}
    assert kinds == ({"model", "transform", "zeta"} if name == "mtnet" else {"model", "transform"})
    assert all(g.abs().sum() > 0 for key, g in batched[1].items() if not key.startswith("model"))
    _assert_equal_steps(loop, batched)


@pytest.mark.parametrize("first_order", [False, True])
def test_batched_maml_equals_a_plain_pytorch_loop(first_order):
    """Against the textbook loop written out here: autograd.grad per task, functional_call."""
    model, tasks = _omniglot_like(6)
    name = "fomaml" if first_order else "maml"
    algo = build_algorithm(name, model, Objective(model, "classification"), HPARAMS)
    algo.zero_grad(set_to_none=True)
    algo.meta_step(tasks)
    theta = dict(model.named_parameters())
    expected = {k: torch.zeros_like(p) for k, p in theta.items()}
    for i in range(len(tasks)):
        fast = dict(theta)
        for _ in range(HPARAMS["inner_steps"]):
            loss = F.cross_entropy(functional_call(model, fast, (tasks.support_x[i],)), tasks.support_y[i])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: p - HPARAMS["inner_lr"] * g for (k, p), g in zip(fast.items(), grads)}
        query = F.cross_entropy(functional_call(model, fast, (tasks.query_x[i],)), tasks.query_y[i])
        for k, g in zip(theta, torch.autograd.grad(query / len(tasks), list(theta.values()))):
            expected[k] += g
    scale = max(g.abs().max() for g in expected.values())
    for k, p in theta.items():
        torch.testing.assert_close(p.grad, expected[k], rtol=1e-9, atol=1e-12 * scale)


def test_chunks_are_sized_for_the_cpu_and_whole_on_an_accelerator():
    omniglot = _omniglot_like(32)[1]
    sinusoid = _sinusoid_like(25)[1]
    assert chunk_count(omniglot, torch.device("cpu")) == 4  # 8 tasks of 5 28x28 images a chunk (two per core)
    assert chunk_count(sinusoid, torch.device("cpu")) == 1
    assert chunk_count(omniglot, torch.device("cuda")) == 1
    chunks = omniglot.split(3)
    assert [len(c) for c in chunks] == [11, 11, 10]
    assert torch.equal(torch.cat([c.query_x for c in chunks]), omniglot.query_x)
    assert [len(c) for c in sinusoid.split(40)] == [1] * 25


def test_chunks_come_in_multiples_of_the_workers_that_run_them():
    """Several chunks are rounded up to a multiple of the workers (no core idles through the last
    round); one chunk stays one (it runs on every intra-op thread); never more chunks than tasks."""
    episodes = _omniglot_like(50)[1]  # `metalearn evaluate`'s batch of test episodes, 8 a chunk
    cpu = torch.device("cpu")
    assert chunk_count(episodes, cpu, workers=1) == 7
    assert chunk_count(episodes, cpu, workers=2) == 8
    assert [len(c) for c in episodes.split(chunk_count(episodes, cpu, workers=2))] == [7, 7, 6, 6, 6, 6, 6, 6]
    assert chunk_count(episodes, cpu, workers=3) == 9
    assert chunk_count(_omniglot_like(32)[1], cpu, workers=2) == 4  # already a multiple
    assert chunk_count(_omniglot_like(8)[1], cpu, workers=2) == 1
    assert chunk_count(_omniglot_like(9)[1], cpu, workers=16) == 9
    assert chunk_count(episodes, torch.device("cuda"), workers=2) == 1


def test_an_algorithm_cuts_its_tasks_for_its_own_workers(monkeypatch):
    """`task_chunks` asks for the workers `map_tasks` will use: the pool's threads when the algorithm
    runs tasks concurrently, one when it does not."""
    from metalearn.algorithms.maml import task_chunks

    monkeypatch.setenv("METALEARN_TASK_THREADS", "2")
    model, episodes = _omniglot_like(50)
    algo = build_algorithm("maml", model, Objective(model, "classification"), hparams_for("maml"))
    assert algo.task_workers() == 2 and len(task_chunks(algo, episodes)) == 8
    algo.parallel_tasks = False
    assert algo.task_workers() == 1 and len(task_chunks(algo, episodes)) == 7


_FORWARD_TASKS = Objective.forward_tasks


def _evaluation(name: str, problem, batched: bool, curve: bool, hparams: dict, monkeypatch):
    """Per-task query metrics of `evaluate_tasks`, the chunk sizes forward_tasks saw, the threads that ran."""
    model, tasks = problem
    kind = "classification" if isinstance(model, Conv4) else "regression"
    algo = build_algorithm(name, model, Objective(model, kind), hparams).double()
    torch.manual_seed(2)
    with torch.no_grad():  # meta-parameters that matter (as in _meta_step)
        for p in algo.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if name == "metasgd":
            for rate in algo.alpha.values():
                rate.uniform_(0.02, 0.2)
        if name == "mtnet":
            for zeta in algo.zeta:
                zeta.uniform_(-2.0, 2.0)
    algo.batched_tasks = batched
    calls, threads = [], set()
    forward_tasks = _FORWARD_TASKS  # the class's own (not an earlier call's spy)

    def spy(self, params, x):
        calls.append(len(x))
        threads.add(__import__("threading").current_thread().name.split("_")[0])
        return forward_tasks(self, params, x)
    monkeypatch.setattr(Objective, "forward_tasks", spy)
    return algo.evaluate_tasks(tasks, hparams["test_inner_steps"], curve=curve), calls, threads


@pytest.mark.parametrize("curve", [False, True])
@pytest.mark.parametrize("name, problem", [(name, problem) for name in _batched_algorithms() for problem in _problems(name)])
def test_chunked_evaluation_equals_the_one_task_loop_per_task(name, problem, curve, monkeypatch):
    """7 tasks forced into chunks of 3, 2 and 2 (a remainder), three worker threads, and the query sets
    fed 2 tasks at a time (the chunk of 3 as 2 and 1): every task's query metrics (after each number
    of steps, `curve`) are the one-task loop's, task by task. Omniglot-shaped tasks feed their queries
    in batches of K per class (`eval_query_batch: shots`, BatchNorm statistics)."""
    monkeypatch.setenv("METALEARN_TASK_THREADS", "3")
    support_numbers = problem(7)[1].support_x[0].numel()
    monkeypatch.setattr(metalearn.algorithms.maml, "CPU_CHUNK_NUMBERS", 3 * support_numbers)
    query_numbers = problem(7)[1].query_x[0].numel() * (3 if problem is _informed_sinusoid_like else 1)  # the
    # oracle appends the 2 task parameters to every query point
    monkeypatch.setattr(metalearn.algorithms.maml, "CPU_QUERY_NUMBERS", 2 * query_numbers)
    hparams = hparams_for(name, test_inner_steps=3)
    if problem is _omniglot_like and name != "imaml":
        hparams["eval_query_batch"] = "shots"
    loop, loop_calls, _ = _evaluation(name, problem(7), False, curve, hparams, monkeypatch)
    chunked, calls, threads = _evaluation(name, problem(7), True, curve, hparams, monkeypatch)
    assert not loop_calls and len(chunked) == len(loop) == 7
    if name == "imaml" and curve:  # iMAML's curve: one task at a time (imaml.py)
        assert not calls
    else:
        steps_scored = hparams["test_inner_steps"] + 1 if curve else 1
        query_calls = 2 if "eval_query_batch" in hparams else 1  # shots: 2 queries per class, 1 shot -> 2 batches
        # (Proto-MAML: one more pass over each chunk's support set, the prototypes of its head)
        support_passes = hparams["test_inner_steps"] + int(getattr(ALGORITHMS[name], "head_from_support", False))
        assert sorted(calls) == sorted([3, 2, 2] * support_passes
                                       + [2, 1, 2, 2] * steps_scored * query_calls)
        assert any(t.startswith("metalearn-task") for t in threads)  # the chunks ran in the pool
    for ours, expected in zip(chunked, loop):
        for o, e in zip(ours if curve else [ours], expected if curve else [expected]):
            assert o.keys() == e.keys()
            assert o == pytest.approx(e, rel=1e-9, abs=1e-12)
    if curve:  # the curve's step-0 value is the unadapted network's: it differs from the adapted one
        assert any(c[0]["loss"] != pytest.approx(c[-1]["loss"]) for c in chunked)


def test_chunked_evaluation_falls_back_to_the_loop_when_query_layouts_differ(monkeypatch):
    """`eval_query_batch: shots` with tasks whose queries are ordered differently: one task at a time."""
    model, tasks = _omniglot_like(3)
    tasks.query_y = tasks.query_y.clone()  # (the tasks' targets share memory: one row expanded)
    tasks.query_y[1] = tasks.query_y[1].flip(0)
    hparams = {**HPARAMS, "eval_query_batch": "shots"}
    algo = build_algorithm("maml", model, Objective(model, "classification"), hparams)
    assert algo.query_batches(tasks.query_y, tasks.support_y) is None
    calls = []
    monkeypatch.setattr(Objective, "forward_tasks", lambda self, p, x: calls.append(len(x)))
    assert len(algo.evaluate_tasks(tasks, 1)) == 3 and not calls


def test_conjugate_gradient_of_a_stack_is_each_systems_own():
    """Independent systems, some positive definite, some indefinite (CG stops at non-positive
    curvature: at the first iteration with b, later with its iterate), one already solved (b = 0):
    every system gets what the one-system CG gives it."""
    from metalearn.algorithms.imaml import conjugate_gradient, conjugate_gradient_tasks

    torch.manual_seed(0)
    tasks, n = 6, 5
    q = torch.linalg.qr(torch.randn(tasks, n, n, dtype=torch.float64)).Q
    eigenvalues = torch.rand(tasks, n, dtype=torch.float64) + 0.1
    eigenvalues[1, 0] = -3.0  # indefinite
    eigenvalues[2] = -eigenvalues[2]  # negative definite: stops at the first iteration
    A = q @ torch.diag_embed(eigenvalues) @ q.transpose(1, 2)
    b = [torch.randn(tasks, n, dtype=torch.float64), torch.randn(tasks, 2, dtype=torch.float64)]
    b[0][3], b[1][3] = 0.0, 0.0  # solved from the start
    B = torch.eye(2, dtype=torch.float64) * torch.arange(1.0, tasks + 1, dtype=torch.float64).view(-1, 1, 1)

    def matvec_tasks(v):
        return [(A @ v[0].unsqueeze(-1)).squeeze(-1), (B @ v[1].unsqueeze(-1)).squeeze(-1)]
    together = conjugate_gradient_tasks(matvec_tasks, b, steps=4)
    stops = []
    for t in range(tasks):
        def matvec(v, t=t):
            return [A[t] @ v[0], B[t] @ v[1]]
        alone = conjugate_gradient(matvec, [b[0][t], b[1][t]], steps=4)
        for x, y in zip(together, alone):
            torch.testing.assert_close(x[t], y, rtol=1e-12, atol=1e-12)
        stops.append(torch.equal(alone[0], b[0][t]))
    assert stops[2] and not stops[0]  # the negative definite system returned b, a positive one did not


@pytest.mark.parametrize("settings", [{"norm": False}, {"use_loss": False}, {"stabilizer": False}])
def test_leap_chunks_walk_each_path_as_the_one_task_loop_in_every_setting(settings, monkeypatch):
    """Leap's chunked paths (leap.py chunk_meta_gradient: per-task segment lengths and loss changes)
    against the one-task loop, 7 Omniglot-shaped tasks in chunks of 3, 2 and 2, for the path energy
    (norm false: the default profile's 5-way 1-shot setting), without the loss dimension and without
    the stabiliser."""
    support_numbers = _omniglot_like(7)[1].support_x[0].numel()
    monkeypatch.setattr(metalearn.algorithms.maml, "CPU_CHUNK_NUMBERS", 3 * support_numbers)
    monkeypatch.setenv("METALEARN_TASK_THREADS", "3")

    def step(batched: bool):
        model, tasks = _omniglot_like(7)
        algo = build_algorithm("leap", model, Objective(model, "classification"), {**HPARAMS, **settings}).double()
        algo.batched_tasks = batched
        chunks, walk = [], algo.chunk_meta_gradient
        algo.chunk_meta_gradient = lambda chunk: chunks.append(len(chunk)) or walk(chunk)
        algo.zero_grad(set_to_none=True)
        metrics = algo.meta_step(tasks)
        assert sorted(chunks) == ([2, 2, 3] if batched else [])  # the path under test is the one taken
        return metrics, {k: p.grad.clone() for k, p in algo.named_parameters()}, None
    _assert_equal_steps(step(False), step(True))
