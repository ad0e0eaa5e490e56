"""The quick profile, run once per test session in a copy of the project and shared by the tests that
need a finished run (tests/test_workflow.py's end-to-end test, tests/test_cluster.py's comparison with
a SLURM run, tests/test_report_browser.py). It is the costliest step of the suite: running it once
rather than once per test keeps CI's time down.

The end-to-end test goes on to edit its project (reruns, DVC); the others read `results`, a copy of the
project's results/ taken right after the run and the report, so test order does not matter.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from test_workflow import SNAKEMAKE, copy_project, edit, sh


@dataclass(frozen=True)
class QuickRun:
    project: Path  # the copy the run happened in (the end-to-end test edits it afterwards)
    source: Path   # that copy as it was before the run (a second run elsewhere starts from it)
    log: str       # Snakemake's output of the run
    results: Path  # results/ as the run and the report left it (a copy nobody edits)
    seconds: float
    models: Path   # models/ as the run left it (a copy nobody edits)


def prepare_project(dest: Path) -> Path:
    """A copy of the project set to the quick profile (params.yaml's `profile:`), with its dvc.yaml and
    a git commit (MLflow tags every run with it)."""
    project = copy_project(dest)
    edit(project / "params.yaml", "\nprofile: default\n", "\nprofile: quick\n")
    sh([sys.executable, "workflow/pipeline.py", "dvc-yaml"], project)
    sh(["git", "init", "-q"], project)
    sh(["git", "add", "-A"], project)
    sh(["git", "commit", "-qm", "project"], project)
    return project


def run_quick_profile(base: Path) -> QuickRun:
    """`make reproduce` with PROFILE taken from params.yaml: the run, the report, the runtime table."""
    project = prepare_project(base / "project")
    # The checkout may change while the session runs (other work in it): a later run that must match
    # this one starts from this exact tree, not from a new copy of the checkout.
    source = Path(shutil.copytree(project, base / "source", symlinks=True))
    start = time.perf_counter()
    log = sh([SNAKEMAKE, "--cores", "2", "--keep-going"], project)
    sh([SNAKEMAKE, "--report", "results/report.html"], project)
    sh([str(Path(SNAKEMAKE).with_name("metalearn")), "runtimes"], project)
    seconds = time.perf_counter() - start
    results = shutil.copytree(project / "results", base / "snapshot" / "results")
    models = shutil.copytree(project / "models", base / "snapshot" / "models")
    return QuickRun(project, source, log, Path(results), seconds, Path(models))
