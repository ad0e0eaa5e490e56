"""The pipeline on a running SLURM cluster: slurmctld + slurmd + munge on this machine
(tests/cluster/cluster.sh, Debian's slurm-wlm), started for this module and stopped after it.

A subset of the quick profile (SUBSET: one sinusoid algorithm, made to fail, and one Omniglot one, so every
kind of rule job: download, prepare, split, train, evaluate, aggregate) runs through `snakemake --profile profiles/slurm`
(the project's cluster profile; only the partition and the resources this one-node cluster has are
overridden, on the command line as the plugin documents) and must give the summary.csv rows of the
session's local run of the whole quick profile for the same jobs (tests/quick_run.py). One training is
made to fail on the cluster: Snakemake must name the job's log, and a rerun must submit only what is
missing. Job counts come from SLURM's own record of finished jobs (its job completion log,
jobcomp/filetxt: there is no slurmdbd), not from Snakemake's output.

Why a subset: each SLURM job starts Snakemake twice (the sbatch script, then its srun step), each
parsing the Snakefile (which imports torch), so all 42 jobs of the quick profile made this the slowest
test of the suite by far (573 s in CI on 2 cores, 2026-11-30), while what it checks (submission of
every kind of job, the failure's log, keep-going, the precise rerun, identical results) is the same
for 9 jobs as for 42 (11 until 2026-11-30: a second sinusoid training added two jobs and no check). The other jobs' results are the local run's, checked by tests/test_workflow.py.
"""
from __future__ import annotations

import copy
import csv
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from metalearn.config import read_yaml
from test_workflow import SNAKEMAKE, pipeline, plan, workflow_env

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "tests" / "cluster" / "cluster.sh"
PARTITION = "debug"  # tests/cluster/cluster.sh's one partition
DAEMONS = ["slurmctld.pid", "slurmd.pid", "munge/munged.pid"]
# The quick profile's jobs that run on the cluster: sinusoid MAML (made to fail; Omniglot's jobs go on
# beside it) and Omniglot FOMAML (with its download, prepare and split jobs); no study (a long job, no
# SLURM feature of its own).
SUBSET = {"sinusoid": {"maml"}, "omniglot-5w1s": {"fomaml"}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A started cluster's directory (slurm.conf, logs, jobcomp.log); stopped and checked gone after."""
    installed = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    directory = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([str(SCRIPT), "start", str(directory)], capture_output=True, text=True, timeout=300)
    pids = [int((directory / name).read_text()) for name in DAEMONS if (directory / name).exists()]
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield directory
    finally:
        subprocess.run([str(SCRIPT), "stop", str(directory)], capture_output=True, timeout=300)
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
        assert not alive, f"cluster daemons still running after stop: {alive}"


def slurm_env(project: Path, cluster: Path) -> dict:
    env = workflow_env(project)
    env["SLURM_CONF"] = str(cluster / "slurm.conf")
    env["PATH"] = f"{cluster / 'bin'}{os.pathsep}{env['PATH']}"  # cluster.sh's srun (see there)
    return env


def snakemake_on_slurm(project: Path, cluster: Path) -> tuple[int, str]:
    """The quick profile through profiles/slurm, overriding only what this cluster lacks."""
    resources = {"slurm_partition": PARTITION, "runtime": 30, "mem_mb": 1000}
    command = [
        SNAKEMAKE, "--profile", "profiles/slurm", "--config", "profile=quick",
        "--default-resources", *[f"{k}={v}" for k, v in resources.items()],
        # the profile's GPU rules: the same resources, no GPU (a command-line --set-resources replaces the
        # profile's whole set-resources, gres included; slurm_extra cleared for older copies of the profile)
        "--set-resources", *[f"{rule}:{k}={v}" for rule in ("train", "evaluate")
                             for k, v in {**resources, "slurm_extra": "''"}.items()],
        "--retries", "0",                         # one training fails on purpose: no resubmission of it
        "--slurm-no-account",                     # no accounting database, so no accounts
        "--slurm-status-command", "squeue",       # sacct needs slurmdbd; MinJobAge keeps jobs in squeue
        "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "2",   # one machine: jobs take seconds, a status check is cheap
        "--latency-wait", "5",                    # one machine: outputs are there at once
    ]
    out = subprocess.run(command, cwd=project, env=slurm_env(project, cluster), capture_output=True, text=True,
                         timeout=3600)
    return out.returncode, out.stdout + out.stderr


def finished_jobs(cluster: Path, at_least: int = 0) -> list[dict]:
    """SLURM's job completion log: one `Key=value ...` line per finished job (waiting up to 30 s for
    `at_least` lines: slurmctld writes a line as it retires the job)."""
    path = cluster / "jobcomp.log"
    for _ in range(150):
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= at_least:
            break
        time.sleep(0.2)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines]


def submitted(log: str) -> dict[str, str]:
    """SLURM job id -> `rule/wildcards`, from the executor's "submitted" lines."""
    return {m[1]: f"{m[2]}/{m[3]}" for m in re.finditer(
        r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/(?:(\S+)/)?\d+\.log\)", log)}


def quick_subset(raw: dict, subset: dict[str, set[str]]) -> dict:
    """params.yaml (`raw`, not modified) whose quick profile runs only the trainings of `subset` and no
    study: every other benchmark and algorithm set to null in the quick overlay (null deletes a key)."""
    raw = copy.deepcopy(raw)
    quick = raw["profiles"]["quick"]
    benchmarks = quick.setdefault("benchmarks", {})
    for bench, settings in pipeline.load_config(raw, "quick")["benchmarks"].items():
        if bench not in subset:
            benchmarks[bench] = None
            continue
        overlay = benchmarks[bench] = benchmarks.get(bench) or {}
        overlay["algorithms"] = {**(overlay.get("algorithms") or {}),
                                 **{a: None for a in settings["algorithms"] if a not in subset[bench]}}
    quick["studies"] = None
    return raw


def read_summary(path: Path) -> dict:
    return {(r["benchmark"], r["algorithm"]): r for r in csv.DictReader(open(path))}


def test_quick_profile_on_slurm_matches_the_local_run_and_reruns_only_what_failed(cluster, quick_run, tmp_path):
    project = Path(shutil.copytree(quick_run.source, tmp_path / "project", symlinks=True))  # the local run's tree
    params = project / "params.yaml"
    full = read_yaml(params)
    raw = quick_subset(full, SUBSET)
    quick, everything = pipeline.load_config(raw, "quick"), pipeline.load_config(full, "quick")
    expected = sorted((b, a, s) for b, algorithms in SUBSET.items() for a in algorithms for s in everything["seeds"])
    assert pipeline.runs(quick) == expected and not pipeline.studies(quick)
    # The subset's jobs are the local run's jobs: the same episodes and the same training settings.
    for bench, algorithm, seed in expected:
        assert pipeline.split_settings(quick, bench) == pipeline.split_settings(everything, bench)
        assert (pipeline.train_settings(quick, bench, algorithm, seed)
                == pipeline.train_settings(everything, bench, algorithm, seed))
    original = yaml.safe_dump(raw, sort_keys=False)
    # One training that fails on the cluster: an inner learning rate at which MAML's loss overflows
    # (train.py raises TrainingDiverged, `metalearn train` exits 1).
    raw["benchmarks"]["sinusoid"]["algorithms"]["maml"]["inner_lr"] = 1.0e+30
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    counts, _ = plan(project)
    runs = len(expected)
    assert counts == Counter(download_omniglot_small=1, prepare=1, split=2, train=runs, evaluate=runs,
                             aggregate=1, all=1), counts
    jobs = sum(counts.values()) - counts["all"]  # `all` only collects: it is no SLURM job

    start = time.perf_counter()
    code, log = snakemake_on_slurm(project, cluster)
    first_seconds = time.perf_counter() - start
    assert code != 0, log[-3000:]
    # Snakemake names the failed job and its SLURM log, which holds the training's error.
    failed = re.search(r"Error in rule train:.*?\n\s+log: (\S+\.log)", log, re.S)
    assert failed, log[-5000:]
    assert "slurm_logs/rule_train/sinusoid_maml_0/" in failed[1]
    assert "meta-loss or meta-gradient became" in Path(failed[1]).read_text()
    # SLURM's record: every job but the failed training's evaluation and the aggregation ran once.
    ids = submitted(log)
    first = finished_jobs(cluster, len(ids))
    assert len(first) == len(ids) == jobs - 2, (len(first), len(ids), jobs)
    assert {j["JobId"] for j in first} == set(ids)
    states = Counter(j["JobState"] for j in first)
    assert states == Counter(COMPLETED=jobs - 3, FAILED=1), states
    (bad,) = [ids[j["JobId"]] for j in first if j["JobState"] == "FAILED"]
    assert bad == "train/sinusoid_maml_0"

    # The fixed params.yaml: the rerun submits exactly the missing jobs.
    params.write_text(original)
    assert plan(project)[0] == Counter(train=1, evaluate=1, aggregate=1, all=1)
    start = time.perf_counter()
    code, log = snakemake_on_slurm(project, cluster)
    rerun_seconds = time.perf_counter() - start
    assert code == 0, log[-5000:]
    second = finished_jobs(cluster, len(first) + 3)[len(first):]
    assert sorted(submitted(log)[j["JobId"]].split("/")[0] for j in second) == ["aggregate", "evaluate", "train"]
    assert {j["JobState"] for j in second} == {"COMPLETED"}
    assert plan(project) == (Counter(), [])
    print(f"\nSLURM: {len(first)} + {len(second)} jobs, {first_seconds:.0f} s + {rerun_seconds:.0f} s "
          f"(local run: {quick_run.seconds:.0f} s)")

    # The same results as the local run's for the same jobs, to float rounding (training times aside).
    ours, local = read_summary(project / "results" / "summary.csv"), read_summary(quick_run.results / "summary.csv")
    assert ours.keys() == {(b, a) for b, a, _ in expected} and ours.keys() <= local.keys()
    for key, row in ((key, local[key]) for key in ours):
        for column, value in row.items():
            if column == "train_seconds":
                continue
            if column in ("mean", "ci95"):
                assert float(ours[key][column]) == pytest.approx(float(value), rel=1e-6, abs=2e-4), (key, column)
            else:
                assert ours[key][column] == value, (key, column)


def test_a_slurm_signal_ends_a_training_slice_and_the_job_submitted_again_resumes(cluster, tmp_path):
    """SIGUSR1 delivered by SLURM to a training's job step (as the slurm profile's --signal=USR1@600 does
    before the wall time): the training writes its checkpoint and the job ends with exit code 75 and no
    model; the same job submitted again resumes from that iteration."""
    from conftest import quick_params, write_params
    from metalearn.config import deep_merge

    params = deep_merge(quick_params(tmp_path), {"benchmarks": {"sinusoid": {"train": {
        "iterations": 10 ** 7, "checkpoint_every": 10 ** 7, "log_every": 10 ** 7}}}})
    params_file = write_params(tmp_path / "params.yaml", params)
    out, env = tmp_path / "run", slurm_env(ROOT, cluster)
    train = (f"srun {ROOT / '.venv/bin/metalearn'} train --params {params_file} -b sinusoid -a maml "
             f"--out {out} --device cpu")

    def submit(command: str, log: Path) -> str:
        done = subprocess.run(["sbatch", "--parsable", "-p", PARTITION, "-o", str(log), "--wrap", command],
                              env=env, capture_output=True, text=True, check=True)
        return done.stdout.strip().split(";")[0]

    def wait_for(log: Path, text: str) -> None:
        for _ in range(600):
            if log.exists() and text in log.read_text():
                return
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not in {log}: {log.read_text() if log.exists() else '(none)'}")

    before = len(finished_jobs(cluster))
    first = submit(train, tmp_path / "first.log")
    wait_for(tmp_path / "first.log", "training maml on sinusoid")
    time.sleep(2)  # some iterations
    subprocess.run(["scancel", "--signal=USR1", first], env=env, check=True)
    (job,) = finished_jobs(cluster, before + 1)[before:]
    assert job["JobId"] == first and job["JobState"] == "FAILED" and job["ExitCode"].startswith("75"), job
    assert "SIGUSR1 received; stopped after iteration" in (tmp_path / "first.log").read_text()
    stopped = torch.load(out / "checkpoint.pt", weights_only=True)["iteration"]
    assert stopped > 0 and not (out / "model.pt").exists()

    second = submit(train + " --time-limit 2s", tmp_path / "second.log")
    (job,) = finished_jobs(cluster, before + 2)[before + 1:]
    assert job["JobId"] == second and job["ExitCode"].startswith("75"), job
    assert f"resuming sinusoid/maml/seed0 from iteration {stopped}" in (tmp_path / "second.log").read_text()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] > stopped
