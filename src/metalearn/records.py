"""Records: the committed evidence of finished runs, and their re-derivation.

    results/recorded/<profile>/<benchmark>/<algorithm>/seed<S>/record.json   numbers + provenance
                                                                 .../model.pt      the trained model

`metalearn record` (make record) writes one folder per finished training and evaluation of a
pipeline run; nothing in a record is typed by hand. `metalearn verify` (make verify) rebuilds each
record's test episodes from their seeds, compares their contents digest with the record's,
re-evaluates the recorded model on them and compares every number with the record: equal within
TOLERANCE, else a per-record diff and a failure. The results pages (metalearn.pages) are generated
from these records.
"""
from __future__ import annotations

import contextlib
import csv
import fnmatch
import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from metalearn.errors import BadFile, BadInput

RECORDED = Path("results/recorded")
RECORD_FORMAT = 1
# Recorded models stay small enough for git: larger ones are shared through DVC (make push) and the
# record names them instead of holding them.
MODEL_LIMIT_BYTES = 5 * 2**20
TOTAL_LIMIT_BYTES = 100 * 2**20
# A re-derived metric equals its record when |ours - record| <= TOLERANCE * max(1, |record|) for the
# mean and the CI: float rounding of another CPU's kernels, not a changed result (one flipped query in
# 45 000 moves an Omniglot mean by 0.002 points, below it).
TOLERANCE = 1e-4
# The evaluation's bulky, derived parts that a record does not keep (figures' examples).
DROPPED_EVALUATION_KEYS = ("examples",)

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_dir(root: Path, profile: str, bench: str, algorithm: str, seed: int) -> Path:
    return Path(root) / profile / bench / algorithm / f"seed{seed}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_runtime(path: Path) -> dict | None:
    """A Snakemake `benchmark:` file's wall-clock and CPU seconds and peak memory (None: no file)."""
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        return None
    row = rows[-1]

    def number(key: str) -> float | None:
        try:
            return round(float(row[key]), 3)
        except (KeyError, TypeError, ValueError):
            return None

    return {"wall_seconds": number("s"), "cpu_seconds": number("cpu_time"), "max_rss_mb": number("max_rss")}


# ----------------------------------------------------------------------------- writing records
def make_record(params: dict, bench: str, algorithm: str, seed: int, model_path: Path, eval_path: Path,
                runtimes: Path | None = None) -> dict:
    """The record of one finished run, from its model file and its evaluation file."""
    from metalearn.aggregate import read_evaluation
    from metalearn.train import read_model_file, run_config

    saved = read_model_file(model_path)
    result = read_evaluation(eval_path)
    redo = "run `make reproduce` again (it re-evaluates), then record"
    if (result["benchmark"], result["algorithm"], result["seed"]) != (bench, algorithm, seed):
        raise BadFile(f"{eval_path}: evaluates {result['benchmark']}/{result['algorithm']}/seed{result['seed']}, "
                      f"not {bench}/{algorithm}/seed{seed}; {redo}")
    if "episodes_digest" not in result or "provenance" not in result:
        raise BadFile(f"{eval_path}: written by an older metalearn (no episodes digest or provenance); {redo}")
    if eval_path.stat().st_mtime < model_path.stat().st_mtime:
        raise BadFile(f"{eval_path}: older than {model_path}, so it does not evaluate this model; {redo}")
    if "provenance" not in saved:
        raise BadFile(f"{model_path}: written by an older metalearn (no provenance); train it again "
                      "(`make reproduce` after removing it), then record")
    config = run_config(params, bench, algorithm, seed)
    if config != saved["config"]:
        raise BadFile(f"{model_path}: trained with other settings than params.yaml's profile "
                      f"{params.get('profile')} has now; run `make reproduce` again, then record")
    settings = params["benchmarks"][bench]
    budget = config["hparams"].get("iterations", settings.get("train", {}).get("iterations"))
    history_path = model_path.with_name("history.json")
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    runtime = {}
    if runtimes is not None:
        for step in ("train", "evaluate"):
            found = read_runtime(Path(runtimes) / step / bench / algorithm / f"seed{seed}.tsv")
            if found is not None:
                runtime[step] = found
    evaluation = {k: v for k, v in result.items() if k not in DROPPED_EVALUATION_KEYS + ("provenance",)}
    return {
        "format": RECORD_FORMAT, "profile": params.get("profile", "default"),
        "benchmark": bench, "algorithm": algorithm, "seed": seed,
        "metric": {"name": result["metric"], "mean": result["mean"], "ci95": result["ci95"],
                   "episodes": result["episodes"], "test_steps": result["inner_steps"],
                   "curve": result.get("curve")},
        "training": {"iterations": saved.get("iterations"), "budget": budget,
                     "train_seconds": round(saved["train_seconds"], 3),
                     "cpu_seconds": saved["provenance"].get("cpu_seconds"),
                     "curve": history},
        "settings": config, "benchmark_settings": {k: v for k, v in settings.items() if k != "algorithms"},
        "settings_digest": saved["config_hash"],
        "episodes_digest": result["episodes_digest"],
        "model": {"file": "model.pt", "sha256": sha256(model_path), "bytes": model_path.stat().st_size},
        "provenance": {"training": saved["provenance"], "evaluation": result["provenance"]},
        "runtime": runtime,
        "evaluation": evaluation,
    }


def write_records(params: dict, root: Path = RECORDED, models: Path = Path("models"),
                  evals: Path = Path("results/eval"), runtimes: Path | None = Path("results/runtimes"),
                  log: Log = _stderr) -> list[Path]:
    """A record for every run of the profile whose model and evaluation exist; returns their folders.
    Runs not finished are listed and skipped. A model over MODEL_LIMIT_BYTES is not copied: its record
    names it (share it with `make push`)."""
    profile = params.get("profile", "default")
    written, missing = [], []
    for bench in sorted(params["benchmarks"]):
        for algorithm in sorted(params["benchmarks"][bench]["algorithms"]):
            for seed in params["seeds"]:
                model = Path(models) / bench / algorithm / f"seed{seed}" / "model.pt"
                result = Path(evals) / bench / algorithm / f"seed{seed}.json"
                folder = record_dir(root, profile, bench, algorithm, seed)
                if not (model.is_file() and result.is_file()):
                    checkpoint = model.with_name("checkpoint.pt")
                    if not model.is_file() and checkpoint.is_file():
                        written.append(write_in_progress(params, bench, algorithm, seed, checkpoint, folder, log))
                    else:
                        missing.append(f"{bench}/{algorithm}/seed{seed}")
                    continue
                record = make_record(params, bench, algorithm, seed, model, result, runtimes)
                (folder / "checkpoint.pt").unlink(missing_ok=True)  # an earlier in-progress record's
                if record["model"]["bytes"] <= MODEL_LIMIT_BYTES:
                    _atomic_write(folder / "model.pt", model.read_bytes())
                else:
                    record["model"].update(file=None, shared=f"{model.as_posix()} (DVC: make push / make pull)")
                    (folder / "model.pt").unlink(missing_ok=True)
                _atomic_write(folder / "record.json", (json.dumps(record, indent=1) + "\n").encode())
                written.append(folder)
                log(f"recorded {bench}/{algorithm}/seed{seed}: {record['metric']['name']} "
                    f"{record['metric']['mean']:.4g} +- {record['metric']['ci95']:.2g} -> {folder}")
    if missing:  # a profile meant for a GPU lists a hundred: the count and the first few
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        log(f"not recorded (no model or evaluation yet, profile {profile}): {len(missing)} runs: {shown}")
    total = sum(p.stat().st_size for p in Path(root).rglob("model.pt"))
    if total > TOTAL_LIMIT_BYTES:
        raise BadInput(f"{root}: recorded models take {total / 2**20:.1f} MB, over the {TOTAL_LIMIT_BYTES // 2**20} MB "
                       "kept in git; share the larger ones through DVC")
    return written


def write_in_progress(params: dict, bench: str, algorithm: str, seed: int, checkpoint: Path, folder: Path,
                      log: Log) -> Path:
    """A training stopped at a slice's end (or killed) and not finished: a record with status
    "in progress" (iterations done of the budget, the curve so far) and, when small, its checkpoint,
    so that another machine can resume it (copy it to models/<benchmark>/<algorithm>/seed<S>/)."""
    import torch

    from metalearn.train import run_config

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = run_config(params, bench, algorithm, seed)
    budget = config["hparams"].get("iterations", params["benchmarks"][bench].get("train", {}).get("iterations"))
    record = {"format": RECORD_FORMAT, "status": "in progress", "profile": params.get("profile", "default"),
              "benchmark": bench, "algorithm": algorithm, "seed": seed,
              "training": {"iterations": state["iteration"], "budget": budget,
                           "train_seconds": round(state["train_seconds"], 3),
                           "cpu_seconds": state.get("cpu_seconds"), "curve": state["history"]},
              "settings": config, "settings_digest": state["config_hash"],
              "checkpoint": {"file": None, "sha256": sha256(checkpoint), "bytes": checkpoint.stat().st_size}}
    if record["checkpoint"]["bytes"] <= MODEL_LIMIT_BYTES:
        _atomic_write(folder / "checkpoint.pt", checkpoint.read_bytes())
        record["checkpoint"]["file"] = "checkpoint.pt"
    (folder / "model.pt").unlink(missing_ok=True)
    _atomic_write(folder / "record.json", (json.dumps(record, indent=1) + "\n").encode())
    log(f"recorded {bench}/{algorithm}/seed{seed} in progress: {state['iteration']} of {budget} iterations -> {folder}")
    return folder


# ----------------------------------------------------------------------------- reading records
IN_PROGRESS_FIELDS = ("format", "status", "profile", "benchmark", "algorithm", "seed", "training", "settings")
RECORD_FIELDS = ("format", "profile", "benchmark", "algorithm", "seed", "metric", "training", "settings",
                 "episodes_digest", "model", "provenance", "evaluation")


def read_record(path: Path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadFile(f"{path}: not a readable record ({type(exc).__name__}); write it again with `make record`") from None
    fields = IN_PROGRESS_FIELDS if isinstance(record, dict) and record.get("status") == "in progress" else RECORD_FIELDS
    return checked_record(path, record, fields, "a metalearn record")


def checked_record(path: Path, record, fields: tuple[str, ...], kind: str) -> dict:
    """A record read from `path` with every one of `fields` and this metalearn's format, else BadFile."""
    missing = [key for key in fields if not isinstance(record, dict) or key not in record]
    if missing:
        raise BadFile(f"{path}: not {kind} (missing: {', '.join(missing)}); write it again with `make record`")
    if record["format"] != RECORD_FORMAT:
        raise BadFile(f"{path}: record format {record['format']!r}; this metalearn reads {RECORD_FORMAT}")
    return record


def record_files(root: Path = RECORDED, only: list[str] | None = None) -> list[Path]:
    """Every record.json below `root`, sorted; `only`: shell patterns on '<profile>/<benchmark>/<algorithm>/seed<S>'."""
    files = sorted(Path(root).glob("*/*/*/seed*/record.json"))
    if only:
        files = [f for f in files if any(fnmatch.fnmatch(f.parent.relative_to(root).as_posix(), p) for p in only)]
    return files


def load_records(root: Path = RECORDED, profile: str | None = None, in_progress: bool = False) -> list[dict]:
    """The finished runs' records (with `in_progress`: only the unfinished trainings')."""
    found = [read_record(f) for f in record_files(root) if profile is None or f.relative_to(root).parts[0] == profile]
    return [r for r in found if (r.get("status") == "in progress") == in_progress]


def results_of(records: list[dict]) -> list[dict]:
    """The records' evaluations, in the shape of `metalearn evaluate`'s files (for aggregate and paper)."""
    return [dict(r["evaluation"]) for r in records]


# ----------------------------------------------------------------------------- verify
@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _close(ours: float, recorded: float) -> bool:
    if ours == recorded:  # (an infinite loss re-derived as the same infinity, too)
        return True
    if isinstance(ours, float) and isinstance(recorded, float) and math.isnan(ours) and math.isnan(recorded):
        return True
    return abs(ours - recorded) <= TOLERANCE * max(1.0, abs(recorded))


@contextlib.contextmanager
def rebuild_root(params: dict) -> Iterator[dict]:
    """The profile's settings with a fresh, temporary data root for episodes; the prepared data sets
    (and raw files) are the data root's own, linked in."""
    real = Path(params["data"]["root"]).resolve()
    with tempfile.TemporaryDirectory(prefix="metalearn-verify-") as tmp:
        for part in ("raw", "prepared"):
            (real / part).mkdir(parents=True, exist_ok=True)
            os.symlink(real / part, Path(tmp) / part)
        yield {**params, "data": {**params["data"], "root": tmp}}


def _prepare_data(params: dict, bench: str, log: Log) -> None:
    """The prepared image data a benchmark reads (download from the official URL or the mirror, then
    prepare), when the data root lacks it."""
    from metalearn import paths
    from metalearn.data.download import data_mirror
    from metalearn.data import omniglot

    dataset = params["benchmarks"][bench].get("dataset")
    if dataset is None or dataset not in omniglot.VARIANTS or paths.prepared_path(params, dataset).exists():
        return
    log(f"preparing {dataset} (download and prepare) for {bench}")
    archives = omniglot.download(dataset, paths.raw_dir(params), data_mirror(params))
    omniglot.prepare(dataset, archives, paths.prepared_path(params, dataset))


def _place_episodes(params: dict, scratch: dict, profile: str, bench: str, rebuilt: dict, log: Log) -> str:
    """A benchmark's test episodes in the scratch data root, rebuilt from their seeds once per profile
    and benchmark (`rebuilt` keeps them across records); returns their contents digest."""
    from metalearn import families, provenance

    from metalearn.config import Benchmark

    key, benchmark = (profile, bench), Benchmark.of(scratch, bench)
    if key not in rebuilt:
        _prepare_data(params, bench, log)
        episodes = families.family(benchmark.settings).make_episodes(benchmark)
        rebuilt[key] = provenance.file_content_digest(episodes)
        rebuilt[key + ("file",)] = Path(episodes).read_bytes()
    else:
        benchmark.episodes_path.parent.mkdir(parents=True, exist_ok=True)
        benchmark.episodes_path.write_bytes(rebuilt[key + ("file",)])
    return rebuilt[key]


def check_heads(check: Check, recorded: list[dict], ours: list[dict]) -> None:
    """The re-derived `eval_heads` entries against the record's: the same heads, refusals and numbers."""
    def name(entry: dict) -> str:
        return f"head {entry['head']} on {entry['benchmark']}"

    if [name(e) for e in ours] != [name(e) for e in recorded]:
        check.problems.append(f"heads: re-derived {[name(e) for e in ours]}, recorded {[name(e) for e in recorded]}")
        return
    for new, old in zip(ours, recorded):
        if ("refused" in new) != ("refused" in old):
            check.problems.append(f"{name(old)}: " + ("refused now" if "refused" in new else "scored now, refused when recorded"))
            continue
        if "refused" not in new:
            compare_scores(check, new, old, f"{name(old)}, ")


def compare_scores(check: Check, ours: dict, recorded: dict, prefix: str = "") -> None:
    """A re-derived evaluation's mean, ci95 and per-episode values against the record's (within the
    tolerance; a note where they are equal within it but not bit for bit)."""
    for key in ("mean", "ci95"):
        if not _close(ours[key], recorded[key]):
            check.problems.append(f"{prefix}{key}: re-derived {ours[key]!r}, recorded {recorded[key]!r}")
    if len(ours["per_episode"]) != len(recorded["per_episode"]):
        check.problems.append(f"{prefix}episodes: re-derived {len(ours['per_episode'])}, "
                              f"recorded {len(recorded['per_episode'])}")
        return
    differ = sum(not _close(a, b) for a, b in zip(ours["per_episode"], recorded["per_episode"]))
    if differ:
        check.problems.append(f"{prefix}per-episode values: {differ} of {len(recorded['per_episode'])} differ "
                              "from the record")
    elif ours["per_episode"] != recorded["per_episode"]:
        check.notes.append(f"{prefix}per-episode values equal within the tolerance, not bit for bit")


def model_file_found(check: Check, model: Path, recorded_sha256: str) -> bool:
    """Whether the record's model file is there (else a problem, and nothing to re-evaluate); a
    problem too when its sha256 is not the record's."""
    if not model.is_file():
        check.problems.append(f"{model}: missing (the record needs it; `make record` writes it)")
        return False
    found = sha256(model)
    if found != recorded_sha256:
        check.problems.append(f"model.pt: sha256 {found[:16]}…, the record says {recorded_sha256[:16]}…")
    return True


def verify_record(path: Path, params_file: Path, log: Log = _stderr, device: str = "cpu",
                  rebuilt: dict | None = None) -> Check:
    """One record re-derived: model file, settings, rebuilt episodes, re-evaluated numbers."""
    from metalearn import families
    from metalearn.config import load_params
    from metalearn.evaluate import evaluate, evaluate_heads
    from metalearn.train import read_model_file, run_config

    record = read_record(path)
    name = f"{record['profile']}/{record['benchmark']}/{record['algorithm']}/seed{record['seed']}"
    check = Check(name)
    if record.get("status") == "in progress":
        check.notes.append(f"in progress ({record['training']['iterations']} of {record['training']['budget']} "
                           "iterations): no result to re-derive yet")
        return check
    model = path.with_name("model.pt")
    if record["model"].get("file") is None:
        check.notes.append(f"model shared through DVC, not in git ({record['model'].get('shared')}): not re-evaluated")
        return check
    if not model_file_found(check, model, record["model"]["sha256"]):
        return check
    saved = read_model_file(model)
    params = load_params(str(params_file), record["profile"])
    bench, algorithm, seed = record["benchmark"], record["algorithm"], record["seed"]
    if bench not in params["benchmarks"] or algorithm not in params["benchmarks"][bench]["algorithms"]:
        check.problems.append(f"params.yaml's profile {record['profile']} no longer runs {bench}/{algorithm}")
        return check
    now = run_config(params, bench, algorithm, seed)
    if now != record["settings"]:
        changed = sorted(k for k in set(now["settings"]) | set(record["settings"]["settings"])
                         if now["settings"].get(k) != record["settings"]["settings"].get(k))
        changed += [f"hparams.{k}" for k in set(now["hparams"]) | set(record["settings"]["hparams"])
                    if now["hparams"].get(k) != record["settings"]["hparams"].get(k)]
        check.problems.append(f"settings changed since recording: {', '.join(changed) or 'run config'}; "
                              "rerun the profile and `make record`")
        return check
    if saved["config"] != record["settings"]:
        check.problems.append("model.pt was trained with other settings than the record's")
    digest = families.family(params["benchmarks"][bench]).config_hash(now)
    if digest != record.get("settings_digest"):
        check.notes.append("the algorithm's source changed since recording (numbers re-derived below)")
    rebuilt = {} if rebuilt is None else rebuilt
    recorded = record["evaluation"]
    heads = recorded.get("heads", [])
    digests = {bench: record["episodes_digest"], **{h["benchmark"]: h["episodes_digest"] for h in heads if "refused" not in h}}
    with rebuild_root(params) as scratch:
        for name, expected in digests.items():
            if name not in params["benchmarks"]:
                check.problems.append(f"params.yaml's profile {record['profile']} no longer has {name} (a head's episodes)")
                return check
            found = _place_episodes(params, scratch, record["profile"], name, rebuilt, log)
            if found != expected:
                check.problems.append(f"{name}'s test episodes rebuilt from their seeds have digest {found[:16]}…, "
                                      f"the record's were {expected[:16]}…")
                return check
        # the algorithm's own test steps: the settings checked above are the record's
        result = evaluate(scratch, model, device=device, log=lambda s: None)
        if heads:
            check_heads(check, heads, evaluate_heads(scratch, model, saved, device=device, log=lambda s: None))
    if result.get("inner_steps") != recorded.get("inner_steps"):
        check.problems.append(f"test steps: re-derived {result.get('inner_steps')}, recorded {recorded.get('inner_steps')}")
    compare_scores(check, result, recorded)
    for step, (ours, theirs) in enumerate(zip(result.get("curve") or [], recorded.get("curve") or [])):
        if not _close(ours["mean"], theirs["mean"]):
            check.problems.append(f"curve after {step} steps: re-derived {ours['mean']!r}, recorded {theirs['mean']!r}")
    return check


def verify(root: Path = RECORDED, params_file: Path = Path("params.yaml"), only: list[str] | None = None,
           log: Log = _stderr, device: str = "cpu") -> list[Check]:
    """Every record (or those matching `only`) re-derived; a line per record, a diff for each problem."""
    files = record_files(root, only)
    if not files:
        raise BadInput(f"{root}: no records" + (f" matching {only}" if only else "") + "; `make record` writes them")
    rebuilt: dict = {}
    checks = []
    for number, path in enumerate(files, 1):
        check = verify_record(path, params_file, log, device, rebuilt)
        checks.append(check)
        status = "OK " if not check.problems else "FAIL"
        log(f"[{number}/{len(files)}] {status} {check.name}" + "".join(f"\n      note: {n}" for n in check.notes)
            + "".join(f"\n      - {p}" for p in check.problems))
    return checks


def write_timing(path: Path, count: int, seconds: float, only: list[str] | None) -> None:
    """verify's wall time as a one-row CSV with the commit, date and machine (bench/results/verify.csv)."""
    from metalearn import provenance

    row = {"records": count, "only": " ".join(only or []) or "all", "seconds": round(seconds, 1),
           "threads": provenance.machine()["threads"], **provenance.stamp()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
