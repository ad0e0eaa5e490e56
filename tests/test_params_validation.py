"""An invalid params.yaml fails before any work starts, with the offending key named, in `metalearn`
and in the Snakemake workflow (`snakemake -n`) alike."""
from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from conftest import ROOT
from metalearn import cli
from metalearn.config import load_params
from test_workflow import SNAKEMAKE, copy_project, workflow_env

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _set(path: str, value):
    """A mutation of the raw params.yaml: set (or with value=DELETE, remove) a dotted key."""
    def mutate(raw):
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return mutate


DELETE = object()

# (what is wrong, mutation of params.yaml, text the error must contain: the key)
BAD_INPUTS = [
    ("unknown top-level key", _set("epochs", 3), "epochs: unknown key"),
    ("unknown hyperparameter (typo)", _set("benchmarks.sinusoid.algorithms.maml.inner_lrr", 0.1),
     "benchmarks.sinusoid.algorithms.maml.inner_lrr: unknown key"),
    ("wrong type", _set("benchmarks.sinusoid.train.meta_batch", "25"), "benchmarks.sinusoid.train.meta_batch"),
    ("negative inner steps", _set("benchmarks.sinusoid.algorithms.maml.inner_steps", -1),
     "benchmarks.sinusoid.algorithms.maml.inner_steps"),
    ("zero learning rate", _set("benchmarks.omniglot-5w1s.train.meta_lr", 0),
     "benchmarks.omniglot-5w1s.train.meta_lr"),
    ("more ways than the split's classes", _set("benchmarks.omniglot-5w1s.ways", 30),
     "benchmarks.omniglot-5w1s.ways"),
    ("more images per class than Omniglot has", _set("benchmarks.omniglot-5w1s.eval_queries", 25),
     "benchmarks.omniglot-5w1s.eval_queries"),
    ("unknown algorithm", _set("benchmarks.sinusoid.algorithms.protonet", {"inner_lr": 0.1}),
     "benchmarks.sinusoid.algorithms.protonet: unknown key"),
    ("unknown model", _set("benchmarks.omniglot-5w1s.model", "resnet12"), "benchmarks.omniglot-5w1s.model"),
    ("key not allowed for the task", _set("benchmarks.sinusoid.ways", 5), "benchmarks.sinusoid.ways"),
    ("missing required key", _set("benchmarks.sinusoid.train.meta_batch", DELETE), "'meta_batch' is a required"),
    ("duplicate seeds", _set("seeds", [0, 0]), "seeds"),
    ("unknown profile selected", _set("profile", "fast"), "profile: unknown profile 'fast'"),
    ("bad value inside a profile overlay", _set("profiles.quick.benchmarks.sinusoid.train.iterations", 0),
     "benchmarks.sinusoid.train.iterations"),
    ("malformed benchmark name", _set("benchmarks.cifar-5w1s", copy.deepcopy(RAW["benchmarks"]["sinusoid"])),
     "benchmarks"),
]
IDS = [case[0] for case in BAD_INPUTS]
SNAKEMAKE_CASES = {"unknown top-level key", "unknown hyperparameter (typo)", "wrong type", "negative inner steps",
                   "more ways than the split's classes", "more images per class than Omniglot has",
                   "unknown algorithm", "key not allowed for the task", "unknown profile selected",
                   "bad value inside a profile overlay"}


def _bad_raw(mutate) -> dict:
    raw = copy.deepcopy(RAW)
    mutate(raw)
    return raw


def test_the_committed_params_are_valid_in_every_profile():
    for profile in RAW["profiles"]:
        assert load_params(ROOT / "params.yaml", profile)["profile"] == profile


@pytest.mark.parametrize("mutate,key", [case[1:] for case in BAD_INPUTS], ids=IDS)
def test_metalearn_rejects_bad_params_naming_the_key(tmp_path, capsys, mutate, key):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_bad_raw(mutate), sort_keys=False))
    # `train` would start work right away: it must stop at validation (exit 2) and write nothing.
    code = cli.main(["train", "--params", str(path), "-b", "sinusoid", "-a", "maml", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert key in err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_snakemake_rejects_bad_params_before_any_job_naming_the_key(tmp_path):
    """`snakemake -n` on each bad params.yaml: an error naming the key, raised while the workflow is
    parsed, i.e. before the DAG is built and before any job. Run a few at a time (each one is mostly
    interpreter start-up)."""
    project = copy_project(tmp_path / "project")
    # Ten kinds (the workflow calls the same validation as `metalearn`, tested above on all of them)
    # and the workflow's own rule: the command line may not override params.yaml.
    cases = [case for case in BAD_INPUTS if case[0] in SNAKEMAKE_CASES]
    cases.append(("--config may only set the profile", None, "seeds: set in --config"))
    assert len(cases) == len(SNAKEMAKE_CASES) + 1
    procs = []
    for i, (name, mutate, key) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        subprocess.run(["cp", "-a", str(project), str(folder)], check=True)
        extra = []
        if mutate is None:
            extra = ["--config", "seeds=[1]"]
        else:
            (folder / "params.yaml").write_text(yaml.safe_dump(_bad_raw(mutate), sort_keys=False))
        procs.append((name, key, folder, [SNAKEMAKE, "-n", "--cores", "1", *extra]))
    results = []
    for start in range(0, len(procs), 4):
        running = [(name, key, folder, subprocess.Popen(cmd, cwd=folder, env=workflow_env(folder),
                                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
                   for name, key, folder, cmd in procs[start:start + 4]]
        results += [(name, key, folder, p.wait(), p.stdout.read()) for name, key, folder, p in running]
    failures = []
    for name, key, folder, code, out in results:
        if code == 0 or key not in out or "Building DAG" in out or (folder / "data").exists():
            failures.append(f"{name}: exit {code}, expected {key!r} before planning, got:\n{out[-1500:]}")
    assert not failures, "\n\n".join(failures)


def test_valid_params_pass_snakemake_validation(tmp_path):
    """The control of the test above: the unmodified copy plans jobs (so the failures are the edits')."""
    project = copy_project(tmp_path / "project")
    out = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--config", "profile=quick"],
                         cwd=project, env=workflow_env(project), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "train" in out.stdout and "Building DAG" in out.stdout + out.stderr
