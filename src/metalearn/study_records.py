"""Records of a study's runs (metalearn.studies), and their re-derivation.

    results/recorded/<profile>/studies/<study>/<run>/<algorithm>/record.json   the study's rows + provenance
                                                                  .../model.pt     the run's trained model

A study writes a table (results/studies/<study>.csv), not one number per benchmark; its record is one
folder per training run of the study holding that run's rows of the table as the study wrote them,
its model, the settings digest and the contents digest of the run's test episodes. `metalearn verify`
rebuilds the episodes from their seeds, re-evaluates the model (after the test steps and after the
training steps, as the study does) and compares every number of the rows with the record
(records.TOLERANCE). Only the MT-net study trains models; the protocols study is not recorded.
"""
from __future__ import annotations

import csv
import fnmatch
import json
import math
import tempfile
from pathlib import Path

from metalearn.errors import BadFile
from metalearn.records import (MODEL_LIMIT_BYTES, RECORD_FORMAT, RECORDED, Check, Log, _atomic_write, _close,
                               _stderr, checked_record, model_file_found, sha256)

STUDY = "mtnet"
STUDY_FIELDS = ("format", "kind", "study", "profile", "run", "rows", "settings", "settings_digest",
                "episodes_digest", "model", "provenance")
# The CSV's numbers a re-evaluation gives again (the rest: training facts, read from the model file).
RE_DERIVED = ("mse", "ci95", "mse_train_steps", "ci95_train_steps", "adapted_fraction")
COUNTS = ("test_steps", "train_steps", "diverged_episodes", "diverged_episodes_train_steps", "episodes")


def study_dir(root: Path, profile: str, run: dict) -> Path:
    return Path(root) / profile / "studies" / STUDY / run["name"] / run["algorithm"]


def _number(value: str):
    """A CSV cell as the study wrote it: '' (none), an int, or a float (nan and inf included)."""
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return float(value)


def _rows_of(run: dict, rows: list[dict]) -> list[dict]:
    def same(row: dict) -> bool:
        return (row["part"], row["algorithm"], row["degree"], row["inner_lr"]) == (
            run["part"], run["algorithm"], "" if run["degree"] is None else str(run["degree"]),
            str(run["inner_lr"]))
    return [{k: v if k in ("part", "algorithm", "status") else _number(v) for k, v in row.items()}
            for row in rows if same(row)]


def write_study_records(params: dict, studies: Path = Path("results/studies"), root: Path = RECORDED,
                        log: Log = _stderr) -> list[Path]:
    """A record for every finished run of the profile's MT-net study (its CSV written); none when the
    profile has no such study or it has not run."""
    from metalearn import provenance
    from metalearn.studies import mtnet_runs, run_params
    from metalearn.train import read_model_file, run_config

    table = Path(studies) / f"{STUDY}.csv"
    if STUDY not in (params.get("studies") or {}) or not table.is_file():
        return []
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    profile, seed = params.get("profile", "default"), params["studies"][STUDY]["seed"]
    written = []
    for run in mtnet_runs(params):
        work = Path(studies) / STUDY / run["name"] / run["algorithm"]
        mine, model = _rows_of(run, rows), work / "model.pt"
        if not mine or mine[0]["status"] != "ok" or not model.is_file():
            log(f"not recorded: study {STUDY} {run['name']}/{run['algorithm']} (not finished or diverged)")
            continue
        saved = read_model_file(model)
        config = run_config(run_params(params, run, work), run["name"], run["algorithm"], seed)
        if saved["config"] != config or table.stat().st_mtime < model.stat().st_mtime:
            raise BadFile(f"{model}: not the model of {table}'s rows under params.yaml's profile {profile}; "
                          "run the study again (`make reproduce`), then record")
        if model.stat().st_size > MODEL_LIMIT_BYTES:
            raise BadFile(f"{model}: {model.stat().st_size} bytes, over the {MODEL_LIMIT_BYTES} kept in git")
        episodes = work / "data" / "episodes" / f"{run['name']}.pt"
        record = {"format": RECORD_FORMAT, "kind": "study", "study": STUDY, "profile": profile,
                  "run": {k: run[k] for k in ("part", "algorithm", "degree", "inner_lr", "name")}, "seed": seed,
                  "rows": mine, "settings": config, "settings_digest": saved["config_hash"],
                  "episodes_digest": provenance.file_content_digest(episodes),
                  "model": {"file": "model.pt", "sha256": sha256(model), "bytes": model.stat().st_size},
                  "provenance": {"training": saved["provenance"]}}
        folder = study_dir(root, profile, run)
        _atomic_write(folder / "model.pt", model.read_bytes())
        _atomic_write(folder / "record.json", (json.dumps(record, indent=1) + "\n").encode())
        written.append(folder)
        log(f"recorded study {STUDY} {run['name']}/{run['algorithm']}: mse {mine[0]['mse']:.4g} -> {folder}")
    return written


def study_record_files(root: Path = RECORDED, profile: str | None = None) -> list[Path]:
    return sorted(Path(root).glob(f"{profile or '*'}/studies/*/*/*/record.json"))


def read_study_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadFile(f"{path}: not a readable record ({type(exc).__name__}); write it again with `make record`") from None
    return checked_record(path, record, STUDY_FIELDS, "a study record")


def load_study_rows(root: Path = RECORDED, profile: str | None = None) -> list[dict]:
    """Every recorded row of the profile's study table, in the study's order of runs."""
    return [row for path in study_record_files(root, profile) for row in read_study_record(path)["rows"]]


def verify_study_record(path: Path, params_file: Path, device: str = "cpu") -> Check:
    """One study run re-derived: model file, settings, rebuilt episodes, both re-evaluations."""
    import torch

    from metalearn import benchmarks, provenance
    from metalearn.config import Benchmark, load_params
    from metalearn.evaluate import evaluate
    from metalearn.studies import adapted_fractions, mtnet_runs, run_params
    from metalearn.train import config_hash, read_model_file, run_config

    record = read_study_record(path)
    run = record["run"]
    check = Check(f"{record['profile']}/studies/{record['study']}/{run['name']}/{run['algorithm']}")
    model = Path(path).with_name("model.pt")
    if not model_file_found(check, model, record["model"]["sha256"]):
        return check
    params = load_params(str(params_file), record["profile"])
    now = next((r for r in mtnet_runs(params) if (r["name"], r["algorithm"]) == (run["name"], run["algorithm"])),
               None) if STUDY in (params.get("studies") or {}) else None
    if now is None:
        check.problems.append(f"params.yaml's profile {record['profile']} no longer has this run of study {STUDY}")
        return check
    with tempfile.TemporaryDirectory(prefix="metalearn-verify-") as scratch:
        rp = run_params(params, now, Path(scratch))
        config = run_config(rp, now["name"], now["algorithm"], record["seed"])
        if config != record["settings"]:
            check.problems.append("settings changed since recording; rerun the study and `make record`")
            return check
        if read_model_file(model)["config"] != config:
            check.problems.append("model.pt was trained with other settings than the record's")
        if config_hash(config) != record["settings_digest"]:
            check.notes.append("the algorithm's source changed since recording (numbers re-derived below)")
        digest = provenance.file_content_digest(benchmarks.make_episodes(Benchmark.of(rp, now["name"])))
        if digest != record["episodes_digest"]:
            check.problems.append(f"test episodes rebuilt from their seeds have digest {digest[:16]}…, "
                                  f"the record's were {record['episodes_digest'][:16]}…")
            return check
        quiet = lambda s: None  # noqa: E731
        result = evaluate(rp, model, device=device, log=quiet)
        short = evaluate(rp, model, device=device, steps=now["hparams"]["inner_steps"], log=quiet)
    fractions = adapted_fractions(torch.load(model, weights_only=True)["state_dict"]) \
        if run["algorithm"] == "mtnet" else [None]
    for row in record["rows"]:
        fraction = fractions[row["layer"]] if row["layer"] is not None else None
        ours = {"mse": result["mean"], "ci95": result["ci95"], "mse_train_steps": short["mean"],
                "ci95_train_steps": short["ci95"], "adapted_fraction": fraction,
                "test_steps": result["inner_steps"], "train_steps": short["inner_steps"],
                "diverged_episodes": sum(not math.isfinite(v) for v in result["per_episode"]),
                "diverged_episodes_train_steps": sum(not math.isfinite(v) for v in short["per_episode"]),
                "episodes": result["episodes"]}
        where = "" if row["layer"] is None else f" (layer {row['layer']})"
        for key in RE_DERIVED:
            if (ours[key] is None) != (row[key] is None) or (
                    ours[key] is not None and not _close(round(ours[key], 6) if key == "adapted_fraction"
                                                         else ours[key], row[key])):
                check.problems.append(f"{key}{where}: re-derived {ours[key]!r}, recorded {row[key]!r}")
        for key in COUNTS:
            if ours[key] != row[key]:
                check.problems.append(f"{key}{where}: re-derived {ours[key]!r}, recorded {row[key]!r}")
    return check


def matching_study_records(root: Path, only: list[str] | None) -> list[Path]:
    """The study records whose '<profile>/studies/<study>/<run>/<algorithm>' matches a pattern of `only`."""
    return [f for f in study_record_files(root)
            if not only or any(fnmatch.fnmatch(f.parent.relative_to(root).as_posix(), p) for p in only)]


def verify_studies(root: Path = RECORDED, params_file: Path = Path("params.yaml"), only: list[str] | None = None,
                   log: Log = _stderr, device: str = "cpu") -> list[Check]:
    """Every study record (or those whose '<profile>/studies/<study>/<run>/<algorithm>' matches `only`)."""
    files = matching_study_records(root, only)
    checks = []
    for number, path in enumerate(files, 1):
        check = verify_study_record(path, params_file, device)
        checks.append(check)
        log(f"[study {number}/{len(files)}] {'OK ' if not check.problems else 'FAIL'} {check.name}"
            + "".join(f"\n      note: {n}" for n in check.notes) + "".join(f"\n      - {p}" for p in check.problems))
    return checks


def _mse(mean, ci, diverged) -> str:
    if mean is None:
        return ""
    text = f"{mean:.3g} ± {ci:.2g}" if math.isfinite(mean) else "nan"
    return text + (f" ({diverged} diverged)" if diverged else "")


def markdown(rows: list[dict]) -> list[str]:
    """The recorded MT-net study as tables: adapted units against task complexity, and test MSE
    against the inner learning rate (MAML vs MT-net)."""
    if not rows:
        return []
    degree = sorted((r for r in rows if r["part"] == "degree"), key=lambda r: (r["degree"], r["layer"]))
    sweep = sorted((r for r in rows if r["part"] == "inner_lr" and r["layer"] in (None, 0)),
                   key=lambda r: (r["algorithm"], r["inner_lr"]))
    lines = ["## Study: MT-net (Lee & Choi 2018)", "",
             "The fraction of units MT-net adapts, mean P(M = 1) per layer, should rise with the polynomial degree "
             "(task complexity); MT-net's test MSE should depend less than MAML's on the inner learning rate. "
             "A mean over episodes some of which diverged is nan; the count is beside it.", ""]
    if degree:
        lines += ["| degree | layer | adapted fraction | test MSE (test steps) | meta-iterations |", "|---|---|---|---|---|"]
        lines += [f"| {r['degree']} | {r['layer'] + 1} | {r['adapted_fraction']:.3f} | "
                  f"{_mse(r['mse'], r['ci95'], r['diverged_episodes'])} ({r['test_steps']}) | {r['iterations']} |"
                  for r in degree] + [""]
    if sweep:
        lines += ["| algorithm | alpha | test MSE after the test steps | after the training steps | meta-iterations |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['algorithm']} | {r['inner_lr']:g} | {_mse(r['mse'], r['ci95'], r['diverged_episodes'])} "
                  f"({r['test_steps']}) | {_mse(r['mse_train_steps'], r['ci95_train_steps'], r['diverged_episodes_train_steps'])} "
                  f"({r['train_steps']}) | {r['iterations']} |" for r in sweep] + [""]
    return lines
