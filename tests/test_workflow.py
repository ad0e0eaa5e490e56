"""The workflow: Snakemake DAG, incremental reruns, DVC sharing, results table, figures and report.

The end-to-end test runs the quick profile once in a copy of the project (never the checkout's own data,
models or results) and checks everything that needs a finished run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import MIRROR, ROOT

BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
sys.path.insert(0, str(ROOT / "workflow"))
import pipeline  # noqa: E402


# ----------------------------------------------------------------------------- helpers (also used by
# test_params_validation.py and test_tracking.py)
def copy_project(dest: Path) -> Path:
    """The project's files (tracked and untracked, minus git-ignored ones) copied to `dest`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source, target = ROOT / name, dest / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            target.write_bytes(source.read_bytes())
    return dest


def workflow_env(project: Path | None = None) -> dict:
    """Environment of a pipeline run in `project`: its own sources, the venv's commands, the mirror,
    MLflow's default store inside the project."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["METALEARN_DATA_MIRROR"] = str(MIRROR)
    if project is not None:
        env["PYTHONPATH"] = str(project / "src")
    for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}.items():
        env[key] = value
    return env


def sh(cmd: list[str], cwd: Path, check: bool = True) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=workflow_env(cwd), capture_output=True, text=True)
    text = out.stdout + out.stderr
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{text[-6000:]}")
    return text


def dry_run(project: Path) -> str:
    """`snakemake -n --cores 1` in `project` through Snakemake's Python API, in this process: the same
    plan and output as the command, without its start-up (several seconds: Python, Snakemake, torch),
    which the tests that plan after every edit would pay each time. The Snakefile's `import pipeline`
    and `metalearn` are this process's (the checkout's; the projects are copies of it), so only the
    plan is checked this way: the runs themselves are `snakemake` commands in the project."""
    import contextlib
    import io

    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    output, cwd, path = io.StringIO(), os.getcwd(), list(sys.path)
    try:
        with contextlib.redirect_stderr(output), contextlib.redirect_stdout(output):
            with SnakemakeApi(OutputSettings()) as api:
                workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                        snakefile=project / "Snakefile", workdir=project)
                workflow.dag().execute_workflow(executor="dryrun")
    except BaseException as exc:  # noqa: BLE001 -- a failed plan fails the test, with Snakemake's output
        raise AssertionError(f"snakemake -n failed in {project}: {exc!r}\n{output.getvalue()[-6000:]}") from exc
    finally:
        os.chdir(cwd)
        sys.path[:] = path  # the Snakefile puts the project's workflow/ first
    return output.getvalue()


def plan(project: Path) -> tuple[Counter, list[str]]:
    """`snakemake -n` (dry_run): (jobs per rule, wildcards of the train jobs)."""
    out = dry_run(project)
    if "Nothing to be done" in out:
        return Counter(), []
    stats = out[out.index("Job stats:"):]
    counts = Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"})
    trains, rule = [], None
    for line in out.splitlines():
        if re.match(r"^(local)?rule \w+:", line):
            rule = line.split()[-1].rstrip(":")
        elif line.strip().startswith("wildcards:") and rule == "train":
            trains.append(line.split(":", 1)[1].strip())
    return counts, sorted(trains)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- fast: definitions
def test_dvc_yaml_is_generated_from_params_yaml():
    """dvc.yaml holds the jobs of workflow/pipeline.py for the committed params.yaml (no drift)."""
    assert (ROOT / "dvc.yaml").read_text() == pipeline.dvc_yaml_text(ROOT)


def test_an_algorithms_source_files_are_its_module_base_classes_and_the_modules_they_use():
    assert pipeline.source_files("maml") == ["src/metalearn/algorithms/maml.py", "src/metalearn/algorithms/base.py"]
    assert pipeline.source_files("fomaml") == pipeline.source_files("maml")  # FOMAML lives in maml.py
    assert set(pipeline.source_files("mtnet")) == {f"src/metalearn/algorithms/{f}.py" for f in ("mtnet", "maml", "base")}
    # Warp-Leap's initialisation objective is leap.py's LeapPath: not a base class, still its source
    # (and Leap's base class, MAML, whose evaluation it inherits: maml.py)
    assert set(pipeline.source_files("warpleap")) == {f"src/metalearn/algorithms/{f}.py"
                                                      for f in ("warpgrad", "leap", "maml", "base")}


def test_scheduling_priorities_put_data_then_the_longest_trainings_first():
    """Snakemake runs higher priorities first: the data rules, then image and RL trainings, then the
    sinusoid-sized ones; within each, algorithms that adapt in meta-training before the baselines,
    and among those the costlier first."""
    default, metarl, paper = (pipeline.load_config(yaml.safe_load((ROOT / "params.yaml").read_text()), p)
                              for p in ("default", "metarl", "paper"))
    every = [pipeline.train_priority(params, b, a) for params in (default, metarl, paper)
             for b, settings in params["benchmarks"].items() for a in settings["algorithms"]]
    assert max(every) < pipeline.DATA_PRIORITY and min(every) >= 2
    assert pipeline.train_priority(metarl, "halfcheetah-vel", "maml") > pipeline.train_priority(
        metarl, "halfcheetah-vel", "pretrained") > pipeline.train_priority(default, "sinusoid", "maml")
    assert pipeline.train_priority(default, "omniglot-5w1s", "fomaml") > pipeline.train_priority(default, "sinusoid", "maml")
    # within a tier the costlier first: the default profile's Omniglot trainings in the order of the
    # seconds they took in a fresh-clone `make reproduce` (pipeline.training_cost)
    omniglot = sorted(default["benchmarks"]["omniglot-5w1s"]["algorithms"],
                      key=lambda a: -pipeline.train_priority(default, "omniglot-5w1s", a))
    assert omniglot == ["imaml", "mtnet", "maml", "leap", "tnet", "metasgd", "warpgrad", "fomaml"]


def test_params_slices_separate_algorithms_and_evaluation_settings():
    params = pipeline.load_config(yaml.safe_load((ROOT / "params.yaml").read_text()), "quick")
    changed = json.loads(json.dumps(params))
    changed["benchmarks"]["sinusoid"]["algorithms"]["maml"]["inner_lr"] *= 2
    changed["benchmarks"]["sinusoid"]["test_tasks"] += 1
    slices = lambda p, a: pipeline.train_settings(p, "sinusoid", a, 0)
    assert slices(changed, "maml") != slices(params, "maml")
    assert slices(changed, "fomaml") == slices(params, "fomaml")
    assert pipeline.split_settings(changed, "sinusoid") != pipeline.split_settings(params, "sinusoid")
    assert pipeline.split_settings(changed, "omniglot-5w1s") == pipeline.split_settings(params, "omniglot-5w1s")


# ----------------------------------------------------------------------------- fast: results
def _result(bench, algo, seed, values, metric="accuracy"):
    return {"benchmark": bench, "algorithm": algo, "seed": seed, "split": "test", "ways": 5, "shots": 1,
            "metric": metric, "mean": sum(values) / len(values), "ci95": 0.0, "episodes": len(values),
            "inner_steps": 1, "train_seconds": 2.0, "per_episode": values}


def test_paired_comparison_is_the_ci_of_per_episode_differences():
    from metalearn.aggregate import paired

    a = [_result("omniglot-5w1s", "maml", 0, [100.0, 80.0, 60.0, 40.0])]
    b = [_result("omniglot-5w1s", "fomaml", s, v) for s, v in [(0, [90.0, 80.0, 50.0, 40.0]),
                                                                 (1, [90.0, 60.0, 70.0, 20.0])]]
    (pair,) = paired(a + b)
    # fomaml's seeds averaged per episode: [90, 70, 60, 30]; fomaml - maml = [-10, -10, 0, -10]
    diffs = [-10.0, -10.0, 0.0, -10.0]
    mean = sum(diffs) / 4
    std = (sum((d - mean) ** 2 for d in diffs) / 3) ** 0.5
    assert (pair["a"], pair["b"]) == ("fomaml", "maml")
    assert pair["mean"] == pytest.approx(mean)
    assert pair["ci95"] == pytest.approx(1.96 * std / 2, abs=1e-4)
    assert (pair["a_better"], pair["ties"], pair["episodes"]) == (0, 1, 4)
    # For a regression error lower is better: "a better" counts negative differences.
    (pair,) = paired([_result("sinusoid", "fomaml", 0, [1.0, 2.0], "mse"), _result("sinusoid", "maml", 0, [2.0, 1.5], "mse")])
    assert pair["a_better"] == 1 and pair["mean"] == pytest.approx(-0.25)


def test_paired_comparison_refuses_runs_on_different_episodes():
    from metalearn.aggregate import paired

    with pytest.raises(ValueError, match="different"):
        paired([_result("omniglot-5w1s", "maml", 0, [1.0, 2.0]), _result("omniglot-5w1s", "fomaml", 0, [1.0])])


def test_aggregate_writes_table_papers_numbers_and_figures(tmp_path):
    from metalearn.aggregate import aggregate
    from metalearn.report import plot_paths

    inputs, histories = [], []
    for algo, values in [("maml", [100.0, 80.0, 60.0]), ("fomaml", [80.0, 80.0, 40.0])]:
        path = tmp_path / f"{algo}.json"
        path.write_text(json.dumps(_result("omniglot-5w1s", algo, 0, values)))
        inputs.append(path)
        history = tmp_path / "models" / "omniglot-5w1s" / algo / "seed0" / "history.json"
        history.parent.mkdir(parents=True)
        history.write_text(json.dumps([{"iteration": i, "seconds": i, "loss": 1.0 / i} for i in (1, 2, 3)]))
        histories.append(history)
    aggregate(inputs, tmp_path / "results" / "summary.csv", histories, tmp_path / "plots")
    rows = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    assert [(r["algorithm"], round(float(r["mean"]), 3)) for r in rows] == [("fomaml", 66.667), ("maml", 80.0)]
    md = (tmp_path / "results" / "summary.md").read_text()
    assert "| omniglot-5w1s | maml | 5 | 1 | accuracy | 80.0 |" in md and "98.7±0.4" in md and "98.3±0.5" in md
    assert "| omniglot-5w1s | fomaml | maml | accuracy | -13.3333 |" in md
    for path in plot_paths(tmp_path / "plots", "omniglot-5w1s"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


# ----------------------------------------------------------------------------- slow: the quick profile
@pytest.mark.slow
def test_quick_profile_end_to_end_reruns_and_dvc_round_trip(tmp_path, quick_run):
    # `make reproduce` with PROFILE taken from params.yaml (the run, then the report): the session's
    # shared run (tests/quick_run.py); this test goes on to edit its project.
    project, log = quick_run.project, quick_run.log

    quick = pipeline.load_config(yaml.safe_load((project / "params.yaml").read_text()), "quick")
    runs_planned = pipeline.runs(quick)
    rows = list(csv.DictReader(open(project / "results" / "summary.csv")))
    assert {(r["benchmark"], r["algorithm"]) for r in rows} == {(b, a) for b, a, _ in runs_planned}
    assert {"maml", "fomaml", "imaml"} <= {r["algorithm"] for r in rows}
    for column in ["benchmark", "algorithm", "ways", "shots", "metric", "mean", "ci95", "episodes", "train_seconds"]:
        assert all(r[column] != "" for r in rows if column != "ways" or r["metric"] == "accuracy"), column
    assert {int(r["episodes"]) for r in rows} == {40, 50}  # the quick profile's test episodes
    assert "98.7±0.4" in (project / "results" / "summary.md").read_text()
    # Paper vs ours: the quick profile's Omniglot runs are on omniglot-small, not the papers' data.
    paper_rows = {(r["benchmark"], r["algorithm"]): r for r in csv.DictReader(open(project / "results" / "paper.csv"))}
    assert paper_rows[("omniglot-5w1s", "maml")]["paper_mean"] == "98.7"
    assert paper_rows[("omniglot-5w1s", "maml")]["verdict"].startswith("not comparable: dataset 'omniglot-small'")
    assert "| omniglot-5w1s | maml | 3 | 98.7 ± 0.4 |" in (project / "results" / "paper.md").read_text()
    report = (project / "results" / "report.html").read_text(errors="replace")
    assert "paper.csv" in report
    for plot in pipeline.plot_files(pipeline.load_config(yaml.safe_load((project / "params.yaml").read_text()))):
        assert (project / plot).read_bytes()[:4] == b"\x89PNG"
        assert Path(plot).name in report
    # The MT-net study ran with the quick profile's budget and its figure is in the report.
    table, figure = (project / f for f in pipeline.study_outputs("mtnet"))
    assert {r["part"] for r in csv.DictReader(open(table))} == {"degree", "inner_lr"}
    assert figure.read_bytes()[:4] == b"\x89PNG" and figure.name in report

    # Each training, evaluation and study job's runtime, from Snakemake's benchmark files, in one table.
    runtimes = list(csv.DictReader(open(project / "results" / "runtimes.csv")))
    assert sorted((r["step"], r["benchmark"], r["algorithm"], r["seed"]) for r in runtimes) == sorted(
        [(step, b, a, str(s)) for b, a, s in runs_planned for step in ("train", "evaluate")]
        + [("study", "", "mtnet", "")])
    assert all(float(r["seconds"]) > 0 and float(r["max_rss_mb"]) > 0 for r in runtimes)
    assert [float(r["seconds"]) for r in runtimes] == sorted((float(r["seconds"]) for r in runtimes), reverse=True)

    # Snakemake ran exactly the commands dvc.yaml declares (one definition for both).
    ran = set(re.findall(r"^Shell command: (metalearn .*)$", log, re.M))
    declared = {s["cmd"] for s in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values()}
    assert ran == declared

    # A second run with nothing changed executes zero jobs.
    assert "Nothing to be done" in sh([SNAKEMAKE, "--cores", "2"], project)

    # Every training is a complete MLflow run, evaluated and parented by the summary run.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("metalearn").experiment_id])
    summary = [r for r in runs if r.data.tags.get("kind") == "summary"]
    trainings = [r for r in runs if r.data.tags.get("kind") == "training"]
    assert len(summary) == 1 and len(trainings) == len(runs_planned)
    for run in trainings:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == summary[0].info.run_id
        assert run.data.tags["git_commit"].startswith(sh(["git", "rev-parse", "HEAD"], project).strip())
        metric = "accuracy" if run.data.tags["benchmark"] == "omniglot-5w1s" else "mse"
        assert f"test_{metric}" in run.data.metrics and "hp.inner_lr" in run.data.params
        iterations = 30 if metric == "accuracy" else 60
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")][-1] == iterations

    # Reruns are precise: one algorithm's hyperparameter -> its train/evaluate + the aggregation.
    params_file = project / "params.yaml"
    original = params_file.read_text()
    edit(params_file, "maml:   {inner_lr: 0.01, inner_steps: 1,", "maml:   {inner_lr: 0.02, inner_steps: 1,")
    counts, trains = plan(project)
    assert counts == Counter(train=1, evaluate=1, aggregate=1, all=1)
    assert trains == ["benchmark=sinusoid, algorithm=maml, seed=0"]
    # A data parameter (test episodes of one benchmark): its episodes and evaluations, no training.
    more_tasks = original.replace("test_tasks: 50,", "test_tasks: 60,", 1)  # the quick profile's sinusoid
    assert more_tasks != original
    params_file.write_text(more_tasks)
    sinusoid_runs = sum(1 for bench, _, _ in runs_planned if bench == "sinusoid")
    # (the MT-net study draws its tasks with the sinusoid benchmark's settings: it reruns too)
    assert plan(project)[0] == Counter(split=1, evaluate=sinusoid_runs, aggregate=1, study_mtnet=1, all=1)
    params_file.write_text(original)
    # An algorithm's source file: the algorithms defined there (maml.py: maml and fomaml).
    source = project / "src" / "metalearn" / "algorithms" / "maml.py"
    stat = source.stat()
    source.write_text(source.read_text() + "\n# edited\n")
    counts, trains = plan(project)
    in_maml_py = sum(1 for _, algorithm, _ in runs_planned
                     if "src/metalearn/algorithms/maml.py" in pipeline.source_files(algorithm))
    assert in_maml_py >= 4 and counts == Counter(train=in_maml_py, evaluate=in_maml_py, aggregate=1,
                                                 study_mtnet=1, all=1)  # the study trains MAML and MT-net
    source.write_text(source.read_text().removesuffix("\n# edited\n"))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plan(project) == (Counter(), [])  # both edits undone: nothing to do again

    # DVC: share through a (local) remote; a fresh clone restores everything and retrains nothing.
    remote = tmp_path / "remote"
    remote.mkdir()
    sh([str(BIN / "dvc"), "remote", "add", "-d", "shared", str(remote)], project)
    sh([sys.executable, "workflow/pipeline.py", "push"], project)
    assert sh([str(BIN / "dvc"), "status", "--json"], project).strip() in ("{}", "")
    sh(["git", "add", "-A"], project)
    sh(["git", "commit", "-qm", "results"], project)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    sh([sys.executable, "workflow/pipeline.py", "restore"], clone)
    for name in ["data/prepared/omniglot-small.pt", "data/episodes/omniglot-5w1s.pt",
                 "models/sinusoid/maml/seed0/model.pt", "models/omniglot-5w1s/fomaml/seed0/model.pt",
                 "results/summary.csv"]:
        assert sha256(clone / name) == sha256(project / name), name
    assert plan(clone) == (Counter(), [])
    # ... and the restored state still tracks changes precisely.
    edit(clone / "params.yaml", "fomaml: {inner_lr: 0.4, inner_steps: 1, test_inner_steps: 3}",
         "fomaml: {inner_lr: 0.3, inner_steps: 1, test_inner_steps: 3}")  # the default omniglot-5w1s line
    assert plan(clone) == (Counter(train=1, evaluate=1, aggregate=1, all=1),
                           ["benchmark=omniglot-5w1s, algorithm=fomaml, seed=0"])


@pytest.mark.slow
def test_snakemake_profiles_select_the_params_profile_and_the_cluster_profile_plans(tmp_path):
    """profiles/quick and profiles/slurm (the paper's settings) give valid dry runs. The SLURM executor
    needs snakemake-executor-plugin-slurm; without it the same profile is checked with the local
    executor (every other setting of the profile and the paper DAG still apply)."""
    from test_imagenet import make_mini_pickles, make_tiered

    project = copy_project(tmp_path / "project")
    out = sh([SNAKEMAKE, "--profile", "profiles/quick", "-n"], project)
    # The paper profile's mini-/tiered-ImageNet benchmarks need their files (tiny stand-ins here).
    make_mini_pickles(tmp_path / "mini")
    make_tiered(tmp_path / "tiered")
    edit(project / "params.yaml", "\ndata:\n", f"\ndata:\n  miniimagenet: {{path: {tmp_path / 'mini'}}}\n"
                                               f"  tieredimagenet: {{path: {tmp_path / 'tiered'}}}\n")
    assert "metalearn train --profile quick -b omniglot-5w1s" in out
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
        executors = [[]]
    except ImportError:
        executors = []
    for extra in executors + [["--executor", "local"]]:
        out = sh([SNAKEMAKE, "--profile", "profiles/slurm", "-n", *extra], project)
        assert "metalearn train --profile paper -b omniglot-20w1s -a maml" in out, out[-3000:]
        trainings = len(pipeline.runs(pipeline.load_config(yaml.safe_load((project / "params.yaml").read_text()), "paper")))
        assert re.search(rf"^train\s+{trainings}$", out, re.M), out[-3000:]
