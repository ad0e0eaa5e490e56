"""Parsing the Snakefile and planning the DAG import no torch: every Snakemake start plans (two per cluster
job, about a hundred in this test suite), and importing torch cost each seconds. The planning reads
torch-free modules (metalearn.paths, metalearn.dependencies, metalearn.study_plans,
metalearn.data.omniglot_splits, metalearn.data.imagenet_files, metalearn.gpus); what they know without
importing the modules that use torch is checked here against those modules."""
from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from metalearn import algorithms, dependencies, families, gpus
from metalearn.config import load_params, read_yaml
from metalearn.data import omniglot_splits
from test_workflow import SNAKEMAKE, copy_project, workflow_env

PROFILES = sorted(read_yaml(ROOT / "params.yaml")["profiles"])


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> Path:
    """A folder that, first on PYTHONPATH, makes `import torch` (and matplotlib, also slow to import and
    only for drawing) fail."""
    folder = tmp_path_factory.mktemp("no-torch")
    for module in ("torch", "matplotlib"):
        (folder / module).mkdir()
        (folder / module / "__init__.py").write_text(f'raise ImportError("{module} imported while planning")\n')
    return folder


def without_torch(env: dict, no_torch: Path) -> dict:
    return {**env, "PYTHONPATH": f"{no_torch}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(no_torch)}


def test_the_stand_in_makes_importing_torch_fail(no_torch):
    out = subprocess.run([sys.executable, "-c", "import torch"], env=without_torch(workflow_env(), no_torch),
                         capture_output=True, text=True)
    assert out.returncode != 0 and "torch imported while planning" in out.stderr


@pytest.mark.parametrize("profile", ["default", "quick"])
def test_snakemake_plans_every_job_without_torch(tmp_path, no_torch, profile):
    """`snakemake -n` in a copy of the project, with torch unimportable: it plans every job of the profile."""
    project = copy_project(tmp_path / "project")
    out = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--config", f"profile={profile}"], cwd=project,
                         env=without_torch(workflow_env(project), no_torch), capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    assert "torch imported while planning" not in text and "matplotlib imported while planning" not in text
    params = load_params(ROOT / "params.yaml", profile)
    runs = sum(len(b["algorithms"]) for b in params["benchmarks"].values()) * len(params["seeds"])
    stats = text[text.index("Job stats:"):]
    for rule, count in {"train": runs, "evaluate": runs, "split": len(params["benchmarks"]), "aggregate": 1}.items():
        assert f"\n{rule} " in stats and int(stats.split(f"\n{rule} ")[1].split()[0]) == count, (rule, stats)
    # the jobs themselves run `metalearn`, which imports torch as usual (not under this PYTHONPATH)
    split = subprocess.run(["metalearn", "split", "--profile", profile, "--benchmark", "sinusoid"], cwd=project,
                           env=workflow_env(project), capture_output=True, text=True)
    assert split.returncode == 0, split.stderr[-3000:]
    assert (project / "data" / "episodes" / "sinusoid.pt").is_file()


PLAN_EVERY_PROFILE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {workflow!r})
    import pipeline
    from metalearn.config import read_yaml
    from metalearn.data.imagenet_files import MissingData

    raw = read_yaml({params!r})
    for profile in raw["profiles"]:
        params = pipeline.load_config(raw, profile)
        try:
            planned = pipeline.planned(params, log=lambda line: None)
        except MissingData:
            continue
        for dataset in pipeline.OMNIGLOT_ARCHIVE_SETS:
            pipeline.raw_archives(params, dataset)
        for dataset in pipeline.datasets(planned):
            pipeline.prepared(params, dataset)
            try:
                pipeline.raw_inputs(params, dataset)
            except MissingData:
                pass
        for bench in planned["benchmarks"]:
            pipeline.episodes(params, bench), pipeline.split_settings(params, bench)
            pipeline.eval_episodes(params, bench), pipeline.eval_data(params, bench), pipeline.eval_settings(params, bench)
        for bench, algorithm, seed in pipeline.runs(planned):
            pipeline.bench_data(params, bench), pipeline.train_sources(params, bench, algorithm)
            pipeline.train_settings(params, bench, algorithm, seed), pipeline.train_priority(params, bench, algorithm)
        for study in pipeline.studies(planned):
            pipeline.study_sources(params, study), pipeline.study_settings(params, study)
        pipeline.plot_files(planned)
    pipeline.dvc_stages(raw)
    from metalearn.gpus import cuda_available
    cuda_available()
    assert "torch" not in sys.modules and "matplotlib" not in sys.modules, "torch or matplotlib imported"
    print("planned without torch")
""")


def test_every_profile_is_planned_without_torch(no_torch):
    """Every function the rules call, for every job of every profile (and dvc.yaml's stages)."""
    script = PLAN_EVERY_PROFILE.format(workflow=str(ROOT / "workflow"), params=str(ROOT / "params.yaml"))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=without_torch(workflow_env(), no_torch),
                         capture_output=True, text=True)
    assert out.returncode == 0 and "planned without torch" in out.stdout, out.stderr[-6000:]


# ----------------------------------------------------------------------------- what is known without torch
def test_the_algorithms_files_are_those_importing_them_finds():
    assert set(dependencies.ALGORITHM_MODULES) == set(algorithms.ALGORITHMS)
    for name in algorithms.ALGORITHMS:
        assert dependencies.algorithm_files(name) == algorithms.source_files(name), name


def test_the_families_modules_take_their_facts_from_dependencies():
    """One source for each fact: what planning reads (metalearn.dependencies) is what the runs use."""
    from metalearn import benchmarks
    from metalearn.alphabets import tasks as alphabet_tasks, train as alphabet_train
    from metalearn.continual import tasks as continual_tasks, train as continual_train
    from metalearn.rl import train as rl_train

    assert benchmarks.episode_settings is dependencies.episode_settings
    assert continual_tasks.episode_settings is dependencies.continual_episode_settings
    assert alphabet_tasks.episode_settings is dependencies.alphabets_episode_settings
    assert continual_train.source_files is dependencies.continual_files
    assert alphabet_train.source_files is dependencies.alphabets_files
    assert rl_train.source_files is dependencies.rl_files
    # and each family plans with them, for every configured benchmark
    own = {"episodes": algorithms.source_files, "rl": rl_train.source_files,
           "continual": continual_train.source_files, "alphabets": alphabet_train.source_files}
    seen = set()
    for profile in PROFILES:
        for name, bench in load_params(ROOT / "params.yaml", profile)["benchmarks"].items():
            family = families.family(bench)
            for algorithm in bench["algorithms"]:
                assert family.source_files(algorithm) == own[family.name](algorithm), (profile, name, algorithm)
            seen.add(family.name)
    assert seen == set(own)


@pytest.mark.parametrize("n", [*range(0, 40), 100, 1623])
def test_the_seeded_permutation_is_torchs(n):
    """omniglot_splits.torch_randperm: the background-alphabets partitions are torch.randperm's."""
    for seed in [*range(0, 60), 2**31 - 1, 2**32 - 1, 2**32 + 5, 2**63 - 1]:
        expected = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        assert omniglot_splits.torch_randperm(n, seed) == expected, (n, seed)


# ----------------------------------------------------------------------------- CUDA without torch
def test_cuda_is_found_as_torch_finds_it():
    assert gpus.cuda_available() == torch.cuda.is_available()


@pytest.mark.parametrize("visible", ["", "-1"])
def test_cuda_visible_devices_hides_the_devices_from_the_driver_as_from_torch(visible):
    """The driver applies CUDA_VISIBLE_DEVICES when it initialises: hidden devices are not counted (a
    fresh process each, as the driver reads it once)."""
    script = ("import torch; from metalearn.gpus import cuda_available; "
              "print(cuda_available(), torch.cuda.is_available())")
    out = subprocess.run([sys.executable, "-c", script], env={**workflow_env(), "CUDA_VISIBLE_DEVICES": visible},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


class FakeDriver:
    """libcuda's two calls: cuInit's result and the device count cuDeviceGetCount reports."""

    def __init__(self, init: int = 0, count: int = 1, count_status: int = 0):
        self.init, self.count, self.count_status, self.calls = init, count, count_status, []

    def cuInit(self, flags):  # noqa: N802 -- the driver's name
        self.calls.append(("cuInit", flags))
        return self.init

    def cuDeviceGetCount(self, pointer):  # noqa: N802
        self.calls.append(("cuDeviceGetCount",))
        ctypes.cast(pointer, ctypes.POINTER(ctypes.c_int)).contents.value = self.count
        return self.count_status


def test_cuda_is_available_when_the_driver_initialises_and_counts_a_device():
    driver = FakeDriver(count=2)
    loaded = []
    assert gpus.cuda_available(load=lambda name: loaded.append(name) or driver) is True
    assert loaded == ["libcuda.so.1"] and driver.calls == [("cuInit", 0), ("cuDeviceGetCount",)]


@pytest.mark.parametrize("driver", [FakeDriver(init=100), FakeDriver(count=0), FakeDriver(count=3, count_status=3),
                                    object()], ids=["no device (cuInit 100)", "0 devices", "count fails", "no calls"])
def test_cuda_is_unavailable_when_the_driver_fails_or_counts_none(driver):
    assert gpus.cuda_available(load=lambda name: driver) is False


def test_cuda_is_unavailable_without_the_driver_library():
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    assert gpus.cuda_available(load=missing) is False
