"""Shared test fixtures: the Omniglot mirror, small parameter sets, prepared data."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("METALEARN_DATA_MIRROR", ROOT.parent / "shared" / "data" / "omniglot"))


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs on METALEARN_TEST_DEVICE (default cpu; bench/gpu_check.sh: cuda)")
    share_the_cores()
    if getattr(config.option, "dist", "no") == "loadgroup" and pytest.version_tuple >= (9, 2):
        from importlib.metadata import version

        if tuple(int(p) for p in version("pytest-xdist").split(".")[:2]) <= (3, 8):
            raise pytest.UsageError("pytest >= 9.2 with pytest-xdist <= 3.8 ignores --dist loadgroup's groups "
                                    "(pytest-xdist#1386): pip install 'pytest<9.2' (the test extra pins it)")


def share_the_cores() -> None:
    """Under pytest-xdist each worker is a process, and PyTorch gives each one every core as intra-op
    threads: on 2 cores, two workers' convolutions ran 4 threads, and a test that meta-trains one chunk
    took 35-51 s instead of 7 (docs/notes/test-suite-timing.md). A worker gets its share of the cores
    instead, and so do the commands it starts (OMP_NUM_THREADS, read by PyTorch at its start): a
    `metalearn verify` of a small MLP's record took 7 times as long on 2 threads beside other work as on
    1. Tests that need threads ask for them (METALEARN_TASK_THREADS, torch.set_num_threads, or an
    OMP_NUM_THREADS of their own in a command's environment); Snakemake sets its jobs' own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = max(1, torch.get_num_threads() // workers)
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)


# Tests that read the session's quick-profile run (the `quick_run` fixture, tests/quick_run.py).
# `make test` runs the suite on every core with pytest-xdist (`-n auto --dist loadgroup`), where a
# session fixture is made once per worker: one group keeps the quick run on a single worker (made once,
# as without xdist). xdist starts the largest group first: the quick run, then the SLURM test beside
# it, is the suite's longest chain, while the other workers take the remaining tests. Debian packages
# are installed one apt-get at a time by a lock (tests/debian.py), not by this group.
SERIAL_GROUP = "quick-run"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"quick_run", "cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """xdist groups a test by a suffix on its id; where that fails silently (pytest-xdist#1386: pytest
    9.2), the quick run would be made on every worker: stop instead."""
    if not getattr(session.config.option, "loadgroup", False):  # set by xdist's workers
        return
    lost = [item.nodeid for item in session.items
            if (marker := item.get_closest_marker("xdist_group"))
            and not item.nodeid.endswith(f"@{marker.args[0] if marker.args else marker.kwargs.get('name')}")]
    if lost:
        pytest.exit(f"pytest-xdist did not group {lost[0]} (and {len(lost) - 1} more); see "
                    "pytest-xdist#1386", returncode=4)


def quick_params(tmp_path: Path, **overrides) -> dict:
    """params.yaml's quick profile, with data below `tmp_path` and the mirror of the tests."""
    from metalearn.config import apply_profile, deep_merge, validate

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = apply_profile(raw, "quick")
    params["data"] = {"root": str(tmp_path / "data"), "mirror": str(MIRROR)}
    return validate(deep_merge(params, overrides))


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "images_background_small1.zip").exists():
        pytest.fail(f"the Omniglot mirror is missing at {MIRROR}; set METALEARN_DATA_MIRROR")
    return MIRROR


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, mirror):
    """The quick profile run once (pipeline + report) in a copy of the project; tests/quick_run.py."""
    from quick_run import run_quick_profile

    return run_quick_profile(tmp_path_factory.mktemp("quick-run"))


@pytest.fixture(scope="session")
def prepared_small(tmp_path_factory, mirror) -> dict:
    """Quick params whose data root holds the prepared omniglot-small cache and saved episodes."""
    from metalearn import benchmarks, paths
    from metalearn.config import Benchmark
    from metalearn.data import omniglot

    root = tmp_path_factory.mktemp("shared-data")
    params = quick_params(root)
    archives = omniglot.download("omniglot-small", paths.raw_dir(params), str(mirror))
    omniglot.prepare("omniglot-small", archives, benchmarks.prepared_path(params, "omniglot-small"))
    for name in params["benchmarks"]:
        benchmarks.make_episodes(Benchmark.of(params, name))
    return copy.deepcopy(params)


def meta_train_on_sinusoids(algo, iterations: int, meta_batch: int = 5, meta_lr: float = 0.01):
    """A short, seeded meta-training on MAML's sinusoids (10 shots, 10 queries); returns 100 held-out
    tasks (50 query points each) from a generator of their own, to score the result on."""
    import torch

    from metalearn.data.episodes import SinusoidSampler

    sampler = SinusoidSampler(10, 10, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(algo.parameters(), lr=meta_lr)
    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        algo.meta_step(sampler.sample(meta_batch))
        optimizer.step()
    return SinusoidSampler(10, 50, torch.Generator().manual_seed(123)).sample(100)


def held_out_loss(algo, tasks, steps=None) -> float:
    """Mean query loss over `tasks` after the algorithm's adaptation (`steps`: its test steps)."""
    return sum(algo.evaluate_task(task, steps)["loss"] for task in tasks) / len(tasks)
