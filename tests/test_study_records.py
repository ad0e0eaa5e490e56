"""Records of the MT-net study's runs (metalearn.study_records): written by `metalearn record` from the
session's quick-profile run, re-derived by `metalearn verify`, a tampered row or model caught."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from metalearn import study_records
from test_records import _metalearn


@pytest.fixture(scope="module")
def study_recorded(quick_run, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("study-records")
    shutil.copy(quick_run.source / "params.yaml", work / "params.yaml")
    done = _metalearn(work, "record", "--models", str(quick_run.models), "--evals", str(quick_run.results / "eval"),
                      "--runtimes", str(quick_run.results / "runtimes"),
                      "--studies", str(quick_run.results / "studies"), "--out", "recorded")
    assert done.returncode == 0, done.stderr[-3000:]
    return work


def test_each_study_run_is_recorded_with_its_rows_and_model(study_recorded, quick_run):
    from metalearn.config import load_params
    from metalearn.studies import mtnet_runs

    table = quick_run.results / "studies" / "mtnet.csv"
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    runs = mtnet_runs(load_params(study_recorded / "params.yaml"))
    files = study_records.study_record_files(study_recorded / "recorded")
    assert len(files) == len(runs) == 6  # quick: degrees 0 and 2, MAML and MT-net at two alphas
    recorded = study_records.load_study_rows(study_recorded / "recorded", "quick")
    assert len(recorded) == len(rows)
    for path in files:
        record = study_records.read_study_record(path)
        run = record["run"]
        model = quick_run.results / "studies" / "mtnet" / run["name"] / run["algorithm"] / "model.pt"
        assert (path.parent / "model.pt").read_bytes() == model.read_bytes()
        assert record["provenance"]["training"]["command"].startswith("metalearn study mtnet")
        for row in record["rows"]:  # the CSV's numbers, as the study wrote them
            source = next(r for r in rows if (r["part"], r["algorithm"], r["degree"], r["inner_lr"], r["layer"]) ==
                          (row["part"], row["algorithm"], "" if row["degree"] is None else str(row["degree"]),
                           str(row["inner_lr"]), "" if row["layer"] is None else str(row["layer"])))
            assert repr(row["mse"]) == source["mse"] or (row["mse"] != row["mse"] and source["mse"] == "nan")


def test_verify_re_derives_the_study_and_names_a_tampered_row_or_model(study_recorded, tmp_path):
    done = _metalearn(study_recorded, "verify", "--records", "recorded", "--only", "quick/studies/*")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("] OK ") == 6, done.stderr

    tampered = tmp_path / "tampered"
    shutil.copytree(study_recorded / "recorded", tampered)
    first, second = study_records.study_record_files(tampered)[:2]
    record = json.loads(first.read_text())
    record["rows"][0]["mse"] = record["rows"][0]["mse"] * 1.01 + 1e-3
    first.write_text(json.dumps(record))
    saved = torch.load(second.with_name("model.pt"), weights_only=True)
    name = next(iter(saved["state_dict"]))
    saved["state_dict"][name] = saved["state_dict"][name] + 0.05
    torch.save(saved, second.with_name("model.pt"))
    only = [path.parent.relative_to(tampered).as_posix() for path in (first, second)]
    done = _metalearn(study_recorded, "verify", "--records", str(tampered), "--only", *only)
    assert done.returncode == 1
    assert "mse (layer 0): re-derived" in done.stderr or "mse: re-derived" in done.stderr, done.stderr
    assert "model.pt: sha256" in done.stderr
    assert done.stderr.count("FAIL") == 2, done.stderr
