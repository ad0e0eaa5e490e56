"""The paper profile without ImageNet (issue #37): mini- and tiered-ImageNet have no public download,
so on a machine without their files Snakemake's default target plans every other benchmark (Omniglot,
sinusoids, continual, RL, the MT-net study), prints one line per data set naming the benchmarks it
skips and the setting that includes them, and exits 0. A skipped benchmark's job named as a target
still fails with the files expected; with the files present (tiny generated ones, as
tests/test_imagenet.py makes them) the ImageNet benchmarks are planned again. dvc.yaml keeps every
benchmark and does not depend on the files present on the machine that writes it.
"""
from __future__ import annotations

import csv
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from metalearn.data import imagenet_files
from metalearn.data.download import MIRROR_ENV
from test_imagenet import imagenet_params, make_mini_pickles, make_tiered
from test_workflow import SNAKEMAKE, copy_project, workflow_env

sys.path.insert(0, str(ROOT / "workflow"))
import pipeline  # noqa: E402

IMAGENET_BENCHMARKS = ["miniimagenet-5w1s", "miniimagenet-5w5s", "tieredimagenet-5w1s", "tieredimagenet-5w5s"]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
PAPER = pipeline.load_config(RAW, "paper")


def snakemake(project, *args) -> tuple[int, str]:
    env = {k: v for k, v in workflow_env(project).items() if k != MIRROR_ENV}  # ImageNet is never in a mirror here
    run = subprocess.run([SNAKEMAKE, "--cores", "1", *args], cwd=project, env=env, capture_output=True, text=True)
    return run.returncode, run.stdout + run.stderr


def planned_trainings(out: str) -> set[str]:
    """The benchmarks of the train jobs in `snakemake -n`'s output."""
    benches, rule = set(), None
    for line in out.splitlines():
        if re.match(r"^(local)?rule \w+:", line):
            rule = line.split()[-1].rstrip(":")
        elif rule == "train" and line.strip().startswith("wildcards:"):
            benches.add(re.search(r"benchmark=([\w-]+)", line)[1])
    return benches


def skip_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("skipping ")]


def test_the_paper_profile_plans_every_benchmark_with_data_and_names_those_it_skips(tmp_path):
    project = copy_project(tmp_path / "project")
    code, out = snakemake(project, "-n", "--config", "profile=paper")
    assert code == 0, out[-4000:]
    others = sorted(set(PAPER["benchmarks"]) - set(IMAGENET_BENCHMARKS))
    assert {"omniglot-5w1s", "sinusoid", "navigation-2d", "halfcheetah-vel", "ant-dir",
            "continual-sinusoid", "omniglot-alphabets"} <= set(others)
    assert planned_trainings(out) == set(others), out[-4000:]  # every one of them, and nothing of ImageNet
    assert "study_mtnet" in out and "download_omniglot" in out and "aggregate" in out
    lines = skip_lines(out)
    assert lines == [
        "skipping miniimagenet-5w1s, miniimagenet-5w5s: mini-ImageNet files not found at data/raw/miniimagenet "
        "(set data.miniimagenet.path in params.yaml; docs/data.md)",
        "skipping tieredimagenet-5w1s, tieredimagenet-5w5s: tiered-ImageNet files not found at "
        "data/raw/tieredimagenet (set data.tieredimagenet.path in params.yaml; docs/data.md)"], out[:3000]
    assert "Traceback" not in out

    # Explicit targets stay strict: an ImageNet job asked for by name fails, naming the files expected.
    code, out = snakemake(project, "-n", "models/miniimagenet-5w1s/maml/seed0/model.pt", "--config", "profile=paper")
    assert code != 0
    assert "mini-imagenet-cache-train.pkl" in out and "data.miniimagenet.path" in out, out[-3000:]
    assert "rule train" not in out

    # With the files where docs/data.md says to put them, the ImageNet benchmarks are planned too.
    make_mini_pickles(project / "data" / "raw" / "miniimagenet")
    make_tiered(project / "data" / "raw" / "tieredimagenet")
    code, out = snakemake(project, "-n", "--config", "profile=paper")
    assert code == 0, out[-4000:]
    assert planned_trainings(out) == set(PAPER["benchmarks"])
    assert not skip_lines(out)
    assert re.search(r"^prepare\s+\d+$", out, re.M)  # the ImageNet caches (beside Omniglot's)


def test_a_project_whose_every_benchmark_lacks_its_data_stops_with_the_files_expected(tmp_path):
    """Nothing could run: not an empty success, the full message (as `metalearn prepare`)."""
    project = copy_project(tmp_path / "project")
    bench = imagenet_params(tmp_path, "miniimagenet")["benchmarks"]["miniimagenet-3w1s"]
    params = {"profile": "default", "data": {"root": "data", "mirror": None}, "seeds": [0],
              "benchmarks": {"miniimagenet-3w1s": bench}, "profiles": {"default": {}}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    code, out = snakemake(project, "-n")
    assert code == 1, out[-3000:]
    assert "mini-imagenet-cache-train.pkl" in out and "data.miniimagenet.path" in out
    assert "Job stats" not in out and "Traceback" not in out


@pytest.mark.slow
def test_a_run_without_imagenet_runs_the_rest_and_exits_0(tmp_path):
    """Not only the plan: Snakemake runs the benchmarks it can (a short sinusoid training here) to the
    results table, the skipped one named, and exits 0."""
    project = copy_project(tmp_path / "project")
    params = pipeline.load_config(RAW, "quick")
    sinusoid = params["benchmarks"]["sinusoid"]
    sinusoid["algorithms"] = {"maml": sinusoid["algorithms"]["maml"]}
    sinusoid["train"].update(iterations=2, checkpoint_every=1, log_every=1)
    sinusoid.update(val_tasks=2, test_tasks=3)
    mini = imagenet_params(tmp_path, "miniimagenet")["benchmarks"]["miniimagenet-3w1s"]
    config = {"profile": "default", "data": {"root": "data", "mirror": None}, "seeds": [0],
              "benchmarks": {"sinusoid": sinusoid, "miniimagenet-3w1s": mini}, "profiles": {"default": {}}}
    (project / "params.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    code, out = snakemake(project)
    assert code == 0, out[-4000:]
    assert skip_lines(out) == ["skipping miniimagenet-3w1s: mini-ImageNet files not found at data/raw/miniimagenet "
                               "(set data.miniimagenet.path in params.yaml; docs/data.md)"]
    rows = list(csv.DictReader(open(project / "results" / "summary.csv")))
    assert [(r["benchmark"], r["algorithm"]) for r in rows] == [("sinusoid", "maml")]
    assert not (project / "data" / "prepared").exists()


def _paper_stages(monkeypatch, where) -> dict:
    monkeypatch.chdir(where)  # data.root is relative: the ImageNet files are looked for below `where`
    return pipeline.dvc_stages({**RAW, "profile": "paper"})["stages"]


def test_dvc_yaml_keeps_every_benchmark_whatever_files_the_machine_has(tmp_path, monkeypatch):
    """dvc.yaml is generated from params.yaml alone: the same text without the ImageNet files, with
    them in data/raw/ and with them in a data mirror (METALEARN_DATA_MIRROR, a machine's setting)."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    (tmp_path / "bare").mkdir()
    bare = _paper_stages(monkeypatch, tmp_path / "bare")
    for bench in IMAGENET_BENCHMARKS:
        assert {f"split-{bench}", f"train-{bench}-maml-seed0", f"evaluate-{bench}-maml-seed0"} <= set(bare)
    assert bare["prepare-miniimagenet"]["deps"] == ["data/raw/miniimagenet"]
    assert bare["prepare-tieredimagenet"]["deps"] == ["data/raw/tieredimagenet"]

    make_mini_pickles(tmp_path / "present" / "data" / "raw" / "miniimagenet")
    make_tiered(tmp_path / "present" / "data" / "raw" / "tieredimagenet")
    assert _paper_stages(monkeypatch, tmp_path / "present") == bare

    make_mini_pickles(tmp_path / "mirror" / "miniimagenet")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    assert _paper_stages(monkeypatch, tmp_path / "bare") == bare

    # a configured folder or download is declared as configured
    raw = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"profile": "paper"}
    raw["data"]["miniimagenet"] = {"path": "/datasets/mini-imagenet"}
    raw["data"]["tieredimagenet"] = {"files": {name: {"url": f"https://example.org/{name}", "sha256": "0" * 64}
                                               for name in imagenet_files.FORMATS["tieredimagenet"]["pickle"]}}
    stages = pipeline.dvc_stages(raw)["stages"]
    assert stages["prepare-miniimagenet"]["deps"] == ["/datasets/mini-imagenet"]
    assert "deps" not in stages["prepare-tieredimagenet"]
    assert "data.tieredimagenet" in stages["prepare-tieredimagenet"]["params"]


def test_planning_skips_benchmarks_and_studies_whose_data_are_missing_and_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    lines = []
    kept = pipeline.planned(PAPER, log=lines.append)
    assert set(kept["benchmarks"]) == set(PAPER["benchmarks"]) - set(IMAGENET_BENCHMARKS)
    assert kept["studies"] == PAPER["studies"]  # the MT-net study reads sinusoids
    assert len(lines) == 2 and all("set data." in line and "docs/data.md" in line for line in lines)
    assert set(PAPER["benchmarks"]) == set(pipeline.load_config(RAW, "paper")["benchmarks"])  # not changed in place
    assert pipeline.runs(kept) == [r for r in pipeline.runs(PAPER) if r[0] not in IMAGENET_BENCHMARKS]

    # a configured path that does not hold the files is named as such
    params = {**PAPER, "data": {**PAPER["data"], "miniimagenet": {"path": str(tmp_path / "nowhere")}}}
    lines = []
    pipeline.planned(params, log=lines.append)
    assert lines[0].startswith("skipping miniimagenet-5w1s, miniimagenet-5w5s: mini-ImageNet files not found at "
                               f"{tmp_path / 'nowhere'} (set data.miniimagenet.path")

    # nothing skipped, nothing said
    make_mini_pickles(tmp_path / "data" / "raw" / "miniimagenet")
    make_tiered(tmp_path / "data" / "raw" / "tieredimagenet")
    lines = []
    assert pipeline.planned(PAPER, log=lines.append) is PAPER and not lines
