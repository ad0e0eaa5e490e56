"""The studies' runs (metalearn.studies), planned without torch: what each study trains, on which
data, with which algorithms. The workflow's planning reads these for every Snakemake start; the
studies' training and measurements are metalearn.studies'.
"""
from __future__ import annotations

from pathlib import Path

from metalearn.config import algorithm_params, protocol_benchmark_name, protocol_variants, validate
from metalearn.errors import ConfigError


def mtnet_runs(params: dict) -> list[dict]:
    """The study's training runs: {part, algorithm, degree, inner_lr, name, bench, hparams}."""
    study = params["studies"]["mtnet"]
    base = benchmarks_copy(params, study["benchmark"])
    train = {**base["train"], "iterations": study["iterations"]}
    runs = []
    # The polynomials share the sinusoid benchmark's shots, queries, episodes and training settings;
    # sinusoid-only settings (frequency, eval_curve) do not apply to them.
    polynomial = {k: v for k, v in base.items() if k not in ("frequency", "eval_curve")}
    for degree in study["degrees"]:
        bench = {**polynomial, "task": "polynomial", "degree": degree, "train": train}
        hparams = {k: v for k, v in algorithm_params(params, study["benchmark"], "mtnet").items() if k != "iterations"}
        hparams["inner_lr"] = study.get("degree_inner_lr", hparams["inner_lr"])
        runs.append({"part": "degree", "algorithm": "mtnet", "degree": degree, "inner_lr": hparams["inner_lr"],
                     "name": f"polynomial-d{degree}", "bench": bench, "hparams": hparams})
    for algorithm in study["algorithms"]:
        for inner_lr in study["inner_lrs"]:
            hparams = {k: v for k, v in algorithm_params(params, study["benchmark"], algorithm).items()
                       if k != "iterations"}
            runs.append({"part": "inner_lr", "algorithm": algorithm, "degree": None, "inner_lr": inner_lr,
                         "name": f"{study['benchmark']}-lr{inner_lr:g}".replace(".", "p"), "bench": {**base, "train": train},
                         "hparams": {**hparams, "inner_lr": inner_lr}})
    return runs


def benchmarks_copy(params: dict, name: str) -> dict:
    bench = params["benchmarks"].get(name)
    if bench is None or bench["task"] not in ("sinusoid", "polynomial"):  # benchmarks.metric_name: mse
        raise ConfigError(f"studies.mtnet.benchmark: {name!r} must be a configured regression benchmark (sinusoid)")
    return {k: v for k, v in bench.items() if k != "algorithms"}


def run_params(params: dict, run: dict, work: Path) -> dict:
    """A params mapping holding just this run's benchmark and algorithm, its files under `work`."""
    bench = {**run["bench"], "algorithms": {run["algorithm"]: run["hparams"]}}
    return validate({"data": {**params["data"], "root": str(work / "data")}, "seeds": [params["studies"]["mtnet"]["seed"]],
                     "benchmarks": {run["name"]: bench}}, where="studies.mtnet")


def protocols_runs(params: dict) -> list[dict]:
    """The study's training runs: {variant, name, algorithm, bench}; `bench` holds the variant's settings."""
    study = params["studies"]["protocols"]
    return [{"variant": variant, "name": protocol_benchmark_name(study, variant), "algorithm": study["algorithm"],
             "bench": bench}
            for variant, bench in protocol_variants(params).items()]


def protocols_datasets(params: dict) -> list[str]:
    """The prepared image sets the variants read (the pipeline makes them before the study's job)."""
    return sorted({run["bench"]["dataset"] for run in protocols_runs(params)})


def study_runs(params: dict, name: str) -> list[dict]:
    """Everything that determines a study's runs (the pipeline reruns the study when it changes)."""
    study = params["studies"][name]
    runs = mtnet_runs(params) if name == "mtnet" else protocols_runs(params)
    return [{**run, "seed": study["seed"]} for run in runs]


def study_algorithms(params: dict, name: str) -> list[str]:
    study = params["studies"][name]
    return sorted({"mtnet", *study["algorithms"]}) if name == "mtnet" else [study["algorithm"]]


def study_datasets(params: dict, name: str) -> list[str]:
    return protocols_datasets(params) if name == "protocols" else []
