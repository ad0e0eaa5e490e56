"""The pipeline's jobs, defined once for both orchestrators.

Snakemake (workflow/rules/*.smk) and DVC (dvc.yaml, generated from this module by
``python workflow/pipeline.py dvc-yaml``) run the same commands on the same paths; this module is
the one place that says which jobs exist, which files they read and write, and which slice of
params.yaml each depends on. Giving every job only its own slice is what makes reruns precise:
changing one algorithm's hyperparameters changes only that algorithm's slices.

    python workflow/pipeline.py dvc-yaml [--check]   write dvc.yaml (or fail if it is stale)
    python workflow/pipeline.py push                 record the Snakemake outputs in DVC, dvc push
    python workflow/pipeline.py restore              dvc pull, check, mark current for Snakemake
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from metalearn.config import read_yaml, resolve
from metalearn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = "params.yaml"
# downloaded by the pipeline (official URLs); the -binary variants are the same archives, resized as the
# MAML code (data/omniglot.py), so one download rule per archive set (OMNIGLOT_ARCHIVE_SETS)
OMNIGLOT_DATASETS = ("omniglot", "omniglot-small", "omniglot-binary", "omniglot-small-binary")
OMNIGLOT_ARCHIVE_SETS = ("omniglot", "omniglot-small")
IMAGENET_DATASETS = ("miniimagenet", "tieredimagenet")  # user-supplied files (metalearn.data.imagenet_files)
DATASETS = OMNIGLOT_DATASETS + IMAGENET_DATASETS


COMMANDS = {
    "download": "metalearn download --profile {profile} --dataset {dataset}",
    "prepare": "metalearn prepare --profile {profile} --dataset {dataset}",
    "split": "metalearn split --profile {profile} --benchmark {benchmark}",
    # A finished run's checkpoint is removed: it only serves to resume an interrupted run, and a
    # rerun caused by a code change must train afresh rather than resume at the last iteration.
    "train": ("metalearn train --profile {profile} -b {benchmark} -a {algorithm} --seed {seed} "
              "--out {model_dir} --track && rm -f {model_dir}/checkpoint.pt"),
    "evaluate": "metalearn evaluate --profile {profile} --model {model} --out {out} --track",
    "study": "metalearn study {study} --profile {profile} --out {out}",
    "aggregate": ("metalearn aggregate --profile {profile} {evals} --histories {histories} "
                  "--out {summary} --plots {plots} --track"),
}


# ----------------------------------------------------------------------------- configuration
def load_config(raw: dict, profile: str | None = None) -> dict:
    """The selected profile of a raw params.yaml mapping, validated (metalearn.config.resolve)."""
    return resolve(raw, profile, where=PARAMS_FILE)


def runs(params: dict) -> list[tuple[str, str, int]]:
    """(benchmark, algorithm, seed) of every training job."""
    return [(b, a, s) for b in sorted(params["benchmarks"])
            for a in sorted(params["benchmarks"][b]["algorithms"]) for s in params["seeds"]]


def datasets(params: dict) -> list[str]:
    """The image data sets the configured benchmarks read."""
    return sorted({b["dataset"] for b in params["benchmarks"].values() if "dataset" in b})


def raw_inputs(params: dict, dataset: str) -> list[str]:
    """The files `prepare` reads: the Omniglot archives (made by `download`), or the ImageNet files
    where the user put them (none when prepare downloads them from data.<dataset>.files). Missing
    ImageNet files raise imagenet_files.MissingData, naming the files expected and the setting to change,
    while the DAG is built, so before any job starts, and only when a target needs the data set: the
    default target leaves out the benchmarks whose files are missing (`planned`), so this is for a
    job of theirs named as a target."""
    if dataset in OMNIGLOT_DATASETS:
        return raw_archives(params, dataset)
    from metalearn.data import imagenet_files

    source = imagenet_files.locate(params, dataset)
    return [] if source is None else [path.as_posix() for path in source.files()]


def declared_raw_inputs(params: dict, dataset: str) -> list[str]:
    """What dvc.yaml declares that `prepare` reads: from params.yaml alone, never from the files that
    happen to be on the machine writing dvc.yaml (`raw_inputs` looks for them, and the data mirror,
    METALEARN_DATA_MIRROR, is that machine's setting), so dvc.yaml is the same everywhere. Omniglot:
    its archives; ImageNet: nothing when data.<dataset>.files downloads them (their URLs and checksums
    are params of the stage), else the folder of data.<dataset>.path or <data.root>/raw/<dataset>,
    where docs/data.md says to put the files (absent: `dvc repro` stops at that stage, as DVC does on
    any missing dependency)."""
    if dataset in OMNIGLOT_DATASETS:
        return raw_archives(params, dataset)
    config = params["data"].get(dataset) or {}
    if config.get("files"):
        return []
    from metalearn.data import imagenet_files

    return [Path(config["path"]).as_posix() if config.get("path") else imagenet_files.raw_dir(params, dataset).as_posix()]


# ----------------------------------------------------------------------------- what Snakemake plans
def missing_data(params: dict) -> dict[str, str]:
    """The user-supplied data sets (IMAGENET_DATASETS: no official download) that the configured
    benchmarks read and whose files are neither where params.yaml says nor to be downloaded from
    data.<dataset>.files: {dataset: why, in one line, with the setting to change}."""
    from metalearn.data import imagenet_files

    missing = {}
    for dataset in datasets(params):
        if dataset in IMAGENET_DATASETS:
            try:
                imagenet_files.locate(params, dataset)
            except imagenet_files.MissingData:
                missing[dataset] = imagenet_files.not_found(params, dataset)
    return missing


def planned(params: dict, log=None) -> dict:
    """The configuration that Snakemake's default target (rule all) is planned from: `params` without
    the benchmarks whose user-supplied data are missing (mini-/tiered-ImageNet: `missing_data`) and
    without the studies that read them, so that e.g. the paper profile runs everything else (Omniglot,
    sinusoids, RL, ...). One line per data set on stderr (`log`) names the benchmarks skipped, why,
    and what to set to include them. Only the default target skips: a skipped benchmark's job named
    as a target still fails, with `raw_inputs`'s full message, and dvc.yaml keeps every benchmark
    (`dvc_stages`: it must not depend on the files of the machine that writes it). When every
    benchmark lacks its data nothing could run: imagenet_files.MissingData, the first data set's message."""
    from metalearn.data import imagenet_files
    from metalearn.study_plans import study_datasets

    missing = missing_data(params)
    if not missing:
        return params
    skipped = {b for b, settings in params["benchmarks"].items() if settings.get("dataset") in missing}
    if skipped == set(params["benchmarks"]):
        imagenet_files.locate(params, sorted(missing)[0])  # raises MissingData with the files expected
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    for dataset, why in sorted(missing.items()):
        log(f"skipping {', '.join(sorted(b for b in skipped if params['benchmarks'][b]['dataset'] == dataset))}: "
            f"{why}")
    studies_skipped = {}
    for study in studies(params):
        lacking = sorted(set(study_datasets(params, study)) & set(missing))
        if params["studies"][study].get("benchmark") in skipped:
            lacking.append(params["studies"][study]["benchmark"])
        if lacking:
            studies_skipped[study] = lacking
            log(f"skipping study {study}: it reads {', '.join(lacking)}, skipped above")
    kept = dict(params, benchmarks={b: s for b, s in params["benchmarks"].items() if b not in skipped})
    if params.get("studies"):
        kept["studies"] = {s: v for s, v in params["studies"].items() if s not in studies_skipped}
    return kept


def source_files(algorithm: str) -> list[str]:
    """The package files that define an algorithm (metalearn.algorithms.source_files: its module,
    its base classes' and the algorithm modules they use, e.g. warpleap -> warpgrad.py, leap.py,
    base.py; known without importing them: metalearn.dependencies); editing one reruns the algorithms
    defined with it."""
    from metalearn import dependencies

    if algorithm not in dependencies.ALGORITHM_MODULES:
        raise ConfigError(f"algorithm {algorithm!r} is configured but not implemented; "
                          f"known: {sorted(dependencies.ALGORITHM_MODULES)}")
    return _in_repository(dependencies.algorithm_files(algorithm))


def _in_repository(paths) -> list[str]:
    """Files of the metalearn package as paths of this repository (src/metalearn/...), wherever the
    package is installed."""
    import metalearn

    package = Path(metalearn.__file__).resolve().parent  # .../metalearn
    return [(ROOT / "src/metalearn" / Path(path).resolve().relative_to(package)).relative_to(ROOT).as_posix()
            for path in paths]


def train_sources(params: dict, bench: str, algorithm: str) -> list[str]:
    """The package files a training job depends on: its task family's (metalearn.families), i.e. the
    algorithm's (source_files) for episodes, and for the continual, multi-shot (alphabets) and RL
    families those of their own module, which runs its methods (e.g. sgd, ft, random) itself."""
    from metalearn import families

    settings = params["benchmarks"][bench]
    if families.family(settings).name == "episodes":
        return source_files(algorithm)  # with the error for an algorithm that is not implemented
    return _in_repository(families.family(settings).source_files(algorithm))


# ----------------------------------------------------------------------------- paths
def raw_archives(params: dict, dataset: str) -> list[str]:
    from metalearn import paths
    from metalearn.data.omniglot_splits import VARIANTS

    return [(paths.raw_dir(params) / name).as_posix() for name in VARIANTS[dataset]]


def prepared(params: dict, dataset: str) -> list[str]:
    from metalearn import paths

    path = paths.prepared_path(params, dataset)
    return [path.as_posix(), path.with_suffix(".json").as_posix()]


def bench_data(params: dict, bench: str) -> list[str]:
    """The prepared images a benchmark reads (none for synthetic tasks)."""
    settings = params["benchmarks"][bench]
    return prepared(params, settings["dataset"]) if "dataset" in settings else []


def episodes(params: dict, bench: str) -> str:
    from metalearn import paths

    return paths.episodes_path(params, bench).as_posix()


def model_dir(bench: str, algorithm: str, seed) -> str:
    return f"models/{bench}/{algorithm}/seed{seed}"


def eval_json(bench: str, algorithm: str, seed) -> str:
    return f"results/eval/{bench}/{algorithm}/seed{seed}.json"


SUMMARY = "results/summary.csv"
SUMMARY_MD = "results/summary.md"
PAPER_MD = "results/paper.md"    # paper vs ours (metalearn.paper), written by the aggregation
PAPER_CSV = "results/paper.csv"
PLOTS = "results/plots"


STUDIES = "results/studies"
# Snakemake's `benchmark:` files, one per training, evaluation and study job: its wall-clock and CPU
# seconds and peak memory (`metalearn runtimes` tabulates them; `make reproduce` prints the table).
# Not inputs of any rule: a tree restored by `make pull` has none, and must not retrain for them.
RUNTIMES = "results/runtimes"


def runtime_file(step: str, *parts) -> str:
    """The `benchmark:` file of a job, e.g. results/runtimes/train/sinusoid/maml/seed0.tsv."""
    return "/".join([RUNTIMES, step, *map(str, parts)]) + ".tsv"


# Data rules (download, prepare, split) outrank every training: they unblock the longest ones.
DATA_PRIORITY = 6


# One task's inner step in meta-training, relative to MAML's (per meta-iteration per task: cost x
# inner steps), so that the costliest trainings start first; from measured training seconds
# (docs/notes/reproduce-default-profile.md). Algorithms not listed count as MAML.
STEP_COST = {"maml": 1.0, "fomaml": 0.41, "metasgd": 1.06, "tnet": 1.13, "mtnet": 1.20, "imaml": 1.03,
             "leap": 0.28, "warpgrad": 1.76}
COST_SCALE = 50_000  # the cost whose fraction is 1/2: about the default profile's Omniglot MAML (48,000)


def training_cost(params: dict, bench: str, algorithm: str) -> float:
    """A training's estimated cost in MAML task-steps: meta-iterations x meta-batch x inner steps x
    STEP_COST. Comparable between the algorithms of one benchmark (it orders the default profile's
    Omniglot trainings as their measured seconds: docs/notes/reproduce-default-profile.md),
    only roughly between benchmarks."""
    settings = params["benchmarks"][bench]
    hparams = settings["algorithms"].get(algorithm) or {}
    iterations = hparams.get("iterations", settings["train"]["iterations"])
    steps = max(1, int(hparams.get("inner_steps", 1)))
    return iterations * settings["train"]["meta_batch"] * steps * STEP_COST.get(algorithm, 1.0)


def train_priority(params: dict, bench: str, algorithm: str | None = None) -> float:
    """Scheduling priority of a training (from 2 up to, not including, DATA_PRIORITY): the longest
    jobs first, so that the cores are not left idle at the end waiting for one long job that started
    late. Convolutional networks on images and policy-gradient trainings take minutes to tens of
    minutes on a CPU core (docs/notes/reproduce-default-profile.md); the sinusoid-sized
    ones seconds to a few minutes. Within each, the algorithms that adapt inside meta-training
    (`inner_steps`) before those that do not (pretrained, oracle, random): e.g. a meta-RL MAML
    iteration samples rollouts before and after its inner step and differentiates through it,
    costlier than a pretrained policy's step (docs/notes/meta-rl.md). Among those that
    adapt, the costlier first (`training_cost`, as a fraction below 1): Snakemake had started the
    default profile's iMAML, its longest training, last of the eight on Omniglot."""
    from metalearn import families

    settings = params["benchmarks"][bench]
    long = "dataset" in settings or families.family(settings).name == "rl"
    adapts = algorithm is not None and "inner_steps" in (settings["algorithms"].get(algorithm) or {})
    tier = 2 * (2 if long else 1) + int(adapts)
    if not adapts:
        return tier
    cost = training_cost(params, bench, algorithm)
    return tier + cost / (cost + COST_SCALE)


def studies(params: dict) -> list[str]:
    """The configured studies (metalearn.studies), each one job with a CSV and a figure."""
    return sorted((params.get("studies") or {}))


def study_outputs(name: str) -> list[str]:
    return [f"{STUDIES}/{name}.csv", f"{STUDIES}/{name}.png"]


def study_sources(params: dict, name: str) -> list[str]:
    """studies.py and study_plans.py (its runs), the source files of the algorithms the study trains and
    the images it reads."""
    from metalearn.study_plans import study_algorithms, study_datasets

    files = ["src/metalearn/studies.py", "src/metalearn/study_plans.py"]
    for algorithm in study_algorithms(params, name):
        files += [f for f in source_files(algorithm) if f not in files]
    return files + [f for dataset in study_datasets(params, name) for f in prepared(params, dataset)]


def study_settings(params: dict, name: str) -> list[dict]:
    """Everything that determines the study's runs (a change reruns the study, nothing else)."""
    from metalearn.study_plans import study_runs

    return study_runs(params, name)


def plot_files(params: dict) -> list[str]:
    from metalearn.figures import plot_kinds, plot_paths

    return [p.as_posix() for b in sorted(params["benchmarks"])
            for p in plot_paths(Path(PLOTS), b, plot_kinds(params["benchmarks"][b]))]


# ----------------------------------------------------------------------------- params slices
def split_settings(params: dict, bench: str) -> dict:
    """What a benchmark's saved episodes depend on (evaluation reads them with the same settings)."""
    from metalearn import families

    settings = params["benchmarks"][bench]
    return families.family(settings).episode_settings(settings)


# Benchmark settings that change what an evaluation reports, not the episodes or the training
EVAL_ONLY_SETTINGS = ("eval_curve", "eval_heads", "test_rollouts", "test_samples")


def scored_benchmarks(params: dict, bench: str) -> list[str]:
    """The benchmarks whose saved episodes a model of `bench` is evaluated on: its own, then those of
    its `eval_heads` (`HEAD@BENCHMARK`)."""
    from metalearn.config import eval_heads

    return [bench] + sorted({other for _, other in eval_heads(params["benchmarks"][bench]) if other and other != bench})


def eval_episodes(params: dict, bench: str) -> list[str]:
    return [episodes(params, b) for b in scored_benchmarks(params, bench)]


def eval_data(params: dict, bench: str) -> list[str]:
    return list(dict.fromkeys(f for b in scored_benchmarks(params, bench) for f in bench_data(params, b)))


def eval_settings(params: dict, bench: str) -> dict:
    """What an evaluation depends on: the episodes' settings, the evaluation-only settings, and the
    episodes' settings of the other benchmarks it scores on."""
    settings = params["benchmarks"][bench]
    slice_ = {**split_settings(params, bench), **{k: settings[k] for k in EVAL_ONLY_SETTINGS if k in settings}}
    others = scored_benchmarks(params, bench)[1:]
    return {**slice_, "scored_on": {b: split_settings(params, b) for b in others}} if others else slice_


def train_settings(params: dict, bench: str, algorithm: str, seed) -> dict:
    """Everything that determines a training run (metalearn.train.run_config, whose hash is stored in
    model.pt)."""
    from metalearn.config import Benchmark, Run

    return Run.of(Benchmark.of(params, bench), algorithm, int(seed)).config()


# ----------------------------------------------------------------------------- dvc.yaml
def _param_keys(raw: dict, profile: str, keys: list[str]) -> list[str]:
    """params.yaml keys for DVC: each key where it is set, in the base and in the profile overlay."""
    def present(tree, dotted):
        for part in dotted.split("."):
            if not isinstance(tree, dict) or part not in tree:
                return False
            tree = tree[part]
        return True

    found = ["profile"]
    for key in keys:
        for candidate in (key, f"profiles.{profile}.{key}"):
            if present(raw, candidate) and candidate not in found:
                found.append(candidate)
    return found


def dvc_stages(raw: dict) -> dict:
    params = load_config(raw)
    profile = params["profile"]
    stages: dict[str, dict] = {}
    for dataset in datasets(params):
        if dataset in OMNIGLOT_DATASETS:
            archive_set = dataset.removesuffix("-binary")  # one stage per archive set (-binary: the same files)
            stages[f"download-{archive_set}"] = {
                "cmd": COMMANDS["download"].format(profile=profile, dataset=archive_set),
                "params": _param_keys(raw, profile, ["data.root"]),
                "outs": raw_archives(params, archive_set)}
        stage = {"cmd": COMMANDS["prepare"].format(profile=profile, dataset=dataset)}
        if declared_raw_inputs(params, dataset):  # not raw_inputs: dvc.yaml must not depend on the files present
            stage["deps"] = declared_raw_inputs(params, dataset)
        if dataset in IMAGENET_DATASETS:
            stage["params"] = _param_keys(raw, profile, [f"data.{dataset}"])
        stages[f"prepare-{dataset}"] = {**stage, "outs": prepared(params, dataset)}
    for bench in sorted(params["benchmarks"]):
        keys = [f"benchmarks.{bench}.{k}" for k in split_settings(params, bench)]
        stage = {"cmd": COMMANDS["split"].format(profile=profile, benchmark=bench)}
        if bench_data(params, bench):
            stage["deps"] = bench_data(params, bench)
        stage["params"] = _param_keys(raw, profile, keys)
        stage["outs"] = [episodes(params, bench)]
        stages[f"split-{bench}"] = stage
    for bench, algorithm, seed in runs(params):
        name = f"{bench}-{algorithm}-seed{seed}"
        folder = model_dir(bench, algorithm, seed)
        settings = list(train_settings(params, bench, algorithm, seed)["settings"])
        keys = [f"benchmarks.{bench}.{k}" for k in settings] + [f"benchmarks.{bench}.algorithms.{algorithm}"]
        stages[f"train-{name}"] = {
            "cmd": COMMANDS["train"].format(profile=profile, benchmark=bench, algorithm=algorithm,
                                            seed=seed, model_dir=folder),
            "deps": bench_data(params, bench) + train_sources(params, bench, algorithm),
            "params": _param_keys(raw, profile, keys),
            "outs": [f"{folder}/model.pt", f"{folder}/history.json"]}
        keys = [f"benchmarks.{b}.{k}" for b in scored_benchmarks(params, bench) for k in split_settings(params, b)]
        keys += [f"benchmarks.{bench}.{k}" for k in EVAL_ONLY_SETTINGS if k in params["benchmarks"][bench]]
        stages[f"evaluate-{name}"] = {
            "cmd": COMMANDS["evaluate"].format(profile=profile, model=f"{folder}/model.pt",
                                               out=eval_json(bench, algorithm, seed)),
            "deps": [f"{folder}/model.pt", *eval_episodes(params, bench), *eval_data(params, bench)],
            "params": _param_keys(raw, profile, keys),
            "outs": [eval_json(bench, algorithm, seed)]}
    for study in studies(params):
        bench = params["studies"][study]["benchmark"]
        settings = [k for k in params["benchmarks"][bench] if k != "algorithms"]
        from metalearn.study_plans import study_algorithms

        keys = ([f"studies.{study}"] + [f"benchmarks.{bench}.{k}" for k in settings]
                + [f"benchmarks.{bench}.algorithms.{a}" for a in study_algorithms(params, study)])
        stages[f"study-{study}"] = {
            "cmd": COMMANDS["study"].format(study=study, profile=profile, out=STUDIES),
            "deps": study_sources(params, study),
            "params": _param_keys(raw, profile, keys),
            "outs": study_outputs(study)}
    evals = [eval_json(*r) for r in runs(params)]
    histories = [f"{model_dir(*r)}/history.json" for r in runs(params)]
    stages["aggregate"] = {
        "cmd": COMMANDS["aggregate"].format(profile=profile, evals=" ".join(evals),
                                            histories=" ".join(histories), summary=SUMMARY, plots=PLOTS),
        "deps": evals + histories,
        "outs": [SUMMARY, SUMMARY_MD, PAPER_MD, PAPER_CSV] + plot_files(params)}
    return {"stages": stages}


DVC_HEADER = ("# Generated from params.yaml by `python workflow/pipeline.py dvc-yaml` (`make dvc.yaml`);\n"
              "# do not edit: workflow/pipeline.py defines the jobs for Snakemake and DVC alike.\n")


def dvc_yaml_text(root: Path = ROOT) -> str:
    raw = read_yaml(root / PARAMS_FILE)  # strict: duplicate keys are refused, as everywhere
    return DVC_HEADER + yaml.safe_dump(dvc_stages(raw), sort_keys=False, width=1000)


# ----------------------------------------------------------------------------- sharing through DVC
def _run(cmd: list[str], root: Path, capture: bool = False) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=root, check=True, text=True, capture_output=capture)


def _check_dvc_yaml(root: Path) -> None:
    if not (root / "dvc.yaml").exists() or (root / "dvc.yaml").read_text() != dvc_yaml_text(root):
        raise SystemExit("dvc.yaml does not match params.yaml: run `make dvc.yaml` and commit it")


def _snakemake(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("snakemake")), "--cores", "1", *args]


def _dvc(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("dvc")), *args]


def push(root: Path = ROOT) -> None:
    """Share the outputs Snakemake produced: they must be current for params.yaml and the code
    (Snakemake plans nothing), then `dvc commit` records them against the same deps/params that
    produced them, and `dvc push` uploads data, episodes, models and results."""
    _check_dvc_yaml(root)
    plan = _run(_snakemake("-n"), root, capture=True)
    if "Nothing to be done" not in plan.stdout + plan.stderr:
        raise SystemExit("the Snakemake outputs are not current; run `make reproduce` first:\n"
                         + (plan.stdout + plan.stderr)[-3000:])
    _run(_dvc("commit", "--force"), root)
    try:
        _run(_dvc("push"), root)
    except subprocess.CalledProcessError as exc:  # a lost connection, say: each object is uploaded whole or not
        raise SystemExit(f"dvc push failed (exit {exc.returncode}; its errors above). What it uploaded is on the "
                         "remote, complete; `make push` again uploads the rest.") from None


def _locked_outputs(root: Path) -> list[str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text()) if (root / "dvc.lock").exists() else None
    return [out["path"] for stage in ((lock or {}).get("stages") or {}).values() for out in stage.get("outs", [])]


def restore(root: Path = ROOT) -> None:
    """Fetch shared outputs and make Snakemake consider them current, but only when they are.

    `dvc fetch` downloads into DVC's cache (.dvc/cache) without touching the working tree, so a
    remote that lacks files, or a pull interrupted while downloading, leaves no partial set of outputs
    behind (an output whose input is missing would look current to Snakemake, which does not rebuild
    a missing file whose consumers exist). Only with every file at hand are they checked out.
    `dvc checkout` writes files with fresh, arbitrary modification times, which Snakemake would read
    as changed inputs. `dvc status` compares the checked-out outputs and the current params and code
    with dvc.lock; only if nothing differs are the outputs touched in DAG order (`snakemake --touch`),
    which also records Snakemake's own metadata (params, code) for later change detection."""
    _check_dvc_yaml(root)
    nothing = "Nothing was checked out or marked current"
    try:
        _run(_dvc("fetch"), root)  # exits 0 when the remote lacks files (a warning): checked below
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"dvc fetch failed (exit {exc.returncode}; its error above). {nothing}.") from None
    data = json.loads(_run(_dvc("data", "status", "--json", "--granular"), root, capture=True).stdout or "{}")
    absent = set(sum((data.get("uncommitted", {}).get(k, []) for k in ("deleted", "modified")), []))
    if lacking := [path for path in data.get("not_in_cache", []) if path in absent]:
        raise SystemExit(f"the remote lacks {len(lacking)} of the shared files (neither it nor .dvc/cache holds "
                         "them):\n  " + "\n  ".join(lacking) + f"\n{nothing}. Push them from a complete run "
                         "(`make push`) and `make pull` again (what was fetched stays in .dvc/cache), or "
                         "`make reproduce`.")
    created = [root / path for path in _locked_outputs(root) if not (root / path).exists()]
    try:
        _run(_dvc("checkout"), root)
    except (subprocess.CalledProcessError, KeyboardInterrupt):
        for path in created:  # written by this checkout: nothing partial stays behind
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        raise SystemExit("dvc checkout failed (its error above); the outputs it had written were removed, "
                         "nothing was marked current") from None
    status = _run(_dvc("status", "--json"), root, capture=True)
    changed = json.loads(status.stdout or "{}")
    if changed:
        raise SystemExit("the pulled outputs do not match the current params.yaml and code "
                         f"(dvc status): {json.dumps(changed, indent=1)}\nrun `make reproduce`")
    _run(_snakemake("--touch", "--forceall", "--quiet"), root)


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from params.yaml")
    p.add_argument("--check", action="store_true", help="fail if dvc.yaml is stale instead of writing it")
    sub.add_parser("push", help="dvc commit + dvc push the current Snakemake outputs")
    sub.add_parser("restore", help="dvc pull, verify with dvc status, snakemake --touch")
    args = top.parse_args(argv)
    if args.command == "dvc-yaml":
        if args.check:
            _check_dvc_yaml(ROOT)
        else:
            (ROOT / "dvc.yaml").write_text(dvc_yaml_text(ROOT))
    elif args.command == "push":
        push(ROOT)
    else:
        restore(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
