"""Records (metalearn record), their re-derivation (metalearn verify) and the pages generated from
them (metalearn pages): on the session's quick-profile run, and on the records committed to git."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import MIRROR
from metalearn import pages, records, study_records

ROOT = Path(__file__).resolve().parents[1]


def _metalearn(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "METALEARN_DATA_MIRROR": str(MIRROR)}  # verify prepares Omniglot from the mirror
    return subprocess.run([sys.executable, "-m", "metalearn.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env)


@pytest.fixture(scope="module")
def recorded(quick_run, tmp_path_factory) -> Path:
    """The quick run's records, written by `metalearn record` in a folder holding the run's params.yaml."""
    work = tmp_path_factory.mktemp("records")
    shutil.copy(quick_run.source / "params.yaml", work / "params.yaml")
    done = _metalearn(work, "record", "--models", str(quick_run.models), "--evals", str(quick_run.results / "eval"),
                      "--runtimes", str(quick_run.results / "runtimes"), "--out", "recorded")
    assert done.returncode == 0, done.stderr[-3000:]
    return work


def test_record_holds_the_runs_numbers_model_and_provenance(recorded, quick_run):
    from metalearn.config import load_params

    params = load_params(recorded / "params.yaml")
    runs = [(b, a) for b in params["benchmarks"] for a in params["benchmarks"][b]["algorithms"]]
    files = records.record_files(recorded / "recorded")
    assert len(files) == len(runs) and len(runs) > 10
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=quick_run.source, capture_output=True,
                            text=True).stdout.strip()
    for path in files:
        record = records.read_record(path)
        evaluation = json.loads((quick_run.results / "eval" / record["benchmark"] / record["algorithm"] /
                                 "seed0.json").read_text())
        assert record["metric"]["mean"] == evaluation["mean"] and record["metric"]["ci95"] == evaluation["ci95"]
        assert record["evaluation"]["per_episode"] == evaluation["per_episode"]
        model = quick_run.models / record["benchmark"] / record["algorithm"] / "seed0" / "model.pt"
        assert (path.parent / "model.pt").read_bytes() == model.read_bytes()
        assert record["model"]["sha256"] == records.sha256(model)
        assert record["episodes_digest"] == evaluation["episodes_digest"]
        assert record["training"]["iterations"] == torch.load(model, weights_only=True)["iterations"]
        assert record["training"]["budget"] >= record["training"]["iterations"]
        for part in ("training", "evaluation"):
            made = record["provenance"][part]
            assert made["commit"] == commit and made["dirty"] is False
            assert made["torch"] == torch.__version__ and made["cpu"] and made["threads"] >= 1
            assert made["date"].startswith("20")
        assert record["provenance"]["training"]["command"].startswith("metalearn train --profile quick")
        assert record["runtime"]["train"]["wall_seconds"] > 0


def test_verify_re_derives_every_record_and_names_each_tampered_one(recorded, tmp_path):
    done = _metalearn(recorded, "verify", "--records", "recorded")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count(" OK ") == len(records.record_files(recorded / "recorded"))

    tampered = tmp_path / "tampered"
    shutil.copytree(recorded / "recorded", tampered)
    record_path = tampered / "quick/sinusoid/maml/seed0/record.json"
    record = json.loads(record_path.read_text())
    record["evaluation"]["mean"] += 0.01
    record_path.write_text(json.dumps(record))
    model_path = tampered / "quick/omniglot-5w1s/fomaml/seed0/model.pt"
    saved = torch.load(model_path, weights_only=True)
    first = next(iter(saved["state_dict"]))
    saved["state_dict"][first] = saved["state_dict"][first] + 0.05
    torch.save(saved, model_path)
    done = _metalearn(recorded, "verify", "--records", str(tampered), "--only", "quick/sinusoid/maml/*",
                      "quick/omniglot-5w1s/fomaml/*", "quick/sinusoid/fomaml/*")
    assert done.returncode == 1, done.stderr[-3000:]
    out = done.stderr
    assert "OK  quick/sinusoid/fomaml/seed0" in out
    assert "FAIL quick/sinusoid/maml/seed0" in out and f"recorded {record['evaluation']['mean']!r}" in out
    assert "FAIL quick/omniglot-5w1s/fomaml/seed0" in out and "model.pt: sha256" in out
    assert "2 of 3 records do not re-derive" in out


def test_verify_fails_when_the_settings_moved_on(recorded, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    text = (recorded / "params.yaml").read_text()
    moved = text.replace("meta_lr: 0.001", "meta_lr: 0.002", 1)  # the first benchmark's, sinusoid
    assert moved != text
    (work / "params.yaml").write_text(moved)
    done = _metalearn(work, "verify", "--records", str(recorded / "recorded"), "--only", "quick/sinusoid/maml/*")
    assert done.returncode == 1 and "settings changed since recording: train" in done.stderr


def test_pages_are_generated_from_the_records_and_a_stale_page_is_caught(recorded, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{pages.BEGIN}\n{pages.END}\n\nrest\n")
    files = pages.generate(recorded / "recorded", tmp_path / "docs", readme, ROOT / "bench" / "results")
    page = files[tmp_path / "docs" / "quick.md"]
    record = records.read_record(recorded / "recorded/quick/sinusoid/maml/seed0/record.json")
    row = f"| sinusoid | maml |  | 10 | mse | {round(record['metric']['mean'], 4)} | {round(record['metric']['ci95'], 4)} |"
    assert row in page
    assert "| omniglot-5w1s | maml | 3 | 98.7 ± 0.4 |" in page and "not comparable" in page
    assert record["provenance"]["training"]["commit"] in page
    assert "No run of the default profile is recorded yet" in files[readme]
    pages.write(files, tmp_path / "docs")
    assert pages.stale(files, tmp_path / "docs") == []
    (tmp_path / "docs" / "quick.md").write_text(page.replace(str(round(record["metric"]["mean"], 4)), "0.1234"))
    (tmp_path / "docs" / "old.md").write_text("a page no record gives\n")
    assert pages.stale(files, tmp_path / "docs") == [tmp_path / "docs" / "quick.md", tmp_path / "docs" / "old.md"]


def test_the_committed_pages_are_what_the_committed_records_give():
    """docs/results/ and the README's headline block, regenerated from results/recorded/ and
    bench/results/: equal to what is committed (else: `make pages`)."""
    files = pages.generate(ROOT / records.RECORDED, ROOT / pages.PAGES, ROOT / pages.README, ROOT / pages.BENCH_RESULTS)
    files = {path.relative_to(ROOT): text for path, text in files.items()}
    stale = [path for path, text in files.items() if (ROOT / path).read_text() != text]
    assert stale == [], f"run `make pages`: {stale}"
    extra = [p.relative_to(ROOT) for p in (ROOT / pages.PAGES).glob("*.md")
             if p.relative_to(ROOT) not in files]
    assert extra == []


def ci_part(root: Path) -> list[str]:
    """One committed record per benchmark: every task family's evaluation and episodes re-derived on
    every test run, in under a minute. Of the records of a benchmark (one per profile and algorithm),
    the one whose recorded evaluation took the fewest CPU seconds, so that a profile's full-budget
    records (a 600-episode Omniglot evaluation at the paper's steps) do not set CI's time. Records that
    also score output heads (`eval_heads`: several 600-episode 20-way evaluations each, minutes) are
    left out; `make verify` does every record, and tests/test_within_alphabet.py re-derives records
    with heads on small data."""
    def cost(record: dict) -> float:
        seconds = ((record.get("runtime") or {}).get("evaluate") or {}).get("cpu_seconds")
        return float("inf") if seconds is None else seconds

    chosen: dict[str, tuple[float, str]] = {}
    for path in records.record_files(root):
        record = records.read_record(path)
        if record.get("status") == "in progress" or record["evaluation"].get("heads"):
            continue
        profile, bench, algorithm, seed = path.parent.relative_to(root).parts
        candidate = (cost(record), f"{profile}/{bench}/{algorithm}/{seed}")
        chosen[bench] = min(chosen.get(bench, candidate), candidate)
    part = [name for _, name in chosen.values()]
    for path in study_records.study_record_files(root):  # and one run of each profile's study
        profile, _, study, run, algorithm = path.parent.relative_to(root).parts
        if not any(p.startswith(f"{profile}/studies/{study}/") for p in part):
            part.append(f"{profile}/studies/{study}/{run}/{algorithm}")
    return sorted(part)


def test_the_committed_records_re_derive(tmp_path):
    """`metalearn verify` on a part of results/recorded/ (ci_part), from params.yaml as committed: a
    record that the code or the settings no longer give fails here, naming it (`make verify` does all)."""
    root = ROOT / records.RECORDED
    part = ci_part(root)
    assert part, f"{root}: no committed records (make reproduce, make record)"
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # data and rebuilt episodes below tmp_path
    done = _metalearn(tmp_path, "verify", "--records", str(root), "--only", *part)
    assert done.returncode == 0, done.stderr[-5000:]
    assert done.stderr.count(" OK ") == len(part)


def test_re_derived_scores_within_the_tolerance_are_noted_and_beyond_it_are_problems():
    """records.compare_scores, for a record's own score (no prefix) and a head's (its name as prefix):
    equal within the tolerance but not bit for bit is a note naming what; beyond it, a problem."""
    from metalearn.records import TOLERANCE, Check, compare_scores

    recorded = {"mean": 50.0, "ci95": 1.0, "per_episode": [40.0, 60.0]}
    nudged = {**recorded, "per_episode": [40.0 * (1 + TOLERANCE / 10), 60.0]}
    for prefix in ("", "head proto on omniglot-5w1s, "):
        same, close, off = Check("same"), Check("close"), Check("off")
        compare_scores(same, dict(recorded), recorded, prefix)
        compare_scores(close, nudged, recorded, prefix)
        compare_scores(off, {**recorded, "mean": 51.0, "per_episode": [41.0, 61.0]}, recorded, prefix)
        assert same.problems == same.notes == [] and close.problems == []
        assert close.notes == [f"{prefix}per-episode values equal within the tolerance, not bit for bit"]
        assert off.problems == [f"{prefix}mean: re-derived 51.0, recorded 50.0",
                                f"{prefix}per-episode values: 2 of 2 differ from the record"]
