"""params.yaml: loading, profile overlays, and validation before any work starts.

The schema (params.schema.yaml, beside this file) checks keys, types and ranges; `check_semantics`
checks what a schema cannot express (ways larger than the classes a split holds, ...). Every error
names the offending key, e.g. ``benchmarks.omniglot-5w1s.ways``.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")
MIRROR_ENV = "METALEARN_DATA_MIRROR"


class ConfigError(ValueError):
    """An invalid params.yaml; the message names the key."""


def deep_merge(base: dict, overlay: dict) -> dict:
    """`overlay` merged into a copy of `base`; a None value in the overlay deletes the key."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_profile(raw: dict, profile: str | None = None) -> dict:
    """The configuration with profile `profile` (default: raw['profile']) merged in."""
    profiles = raw.get("profiles") or {}
    name = profile or raw.get("profile") or "default"
    # A file without `profiles:` is already merged (e.g. written by a test): its `profile` is a label.
    known = set(profiles) | {"default"} | (set() if profiles else {raw.get("profile")})
    if name not in known:
        raise ConfigError(f"profile: unknown profile {name!r}; params.yaml defines {sorted(known - {None})}")
    merged = deep_merge({k: v for k, v in raw.items() if k != "profiles"}, profiles.get(name) or {})
    merged["profile"] = name
    return merged


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_schema(params: dict, where: str = "params.yaml") -> None:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    lines = []
    for error in errors:
        # For "unknown key" errors the offending key is in the message, not the path: add it.
        key = _key_path(error)
        if error.validator == "additionalProperties":
            extra = set(error.instance) - set(error.schema.get("properties", {}))
            key = ", ".join(f"{key}.{name}" if error.absolute_path else name for name in sorted(extra))
            lines.append(f"{key}: unknown key (allowed here: {sorted(error.schema.get('properties', {}))})")
        elif error.validator == "not" and error.validator_value == {}:  # `key: {not: {}}` = forbidden
            lines.append(f"{key}: not allowed for this kind of benchmark")
        else:
            lines.append(f"{key}: {error.message}")
    raise ConfigError(f"{where} is invalid:\n  " + "\n  ".join(lines))


def check_semantics(params: dict) -> None:
    """Checks a JSON schema cannot express; each error names the key."""
    from metalearn.data.omniglot import split_sizes  # local import: keeps config light

    problems = []
    for name, bench in params["benchmarks"].items():
        key = f"benchmarks.{name}"
        if bench["task"] == "omniglot":
            sizes = split_sizes(bench["dataset"], bench["split"])
            smallest = min(sizes.values())
            if bench["ways"] > smallest:
                problems.append(
                    f"{key}.ways: {bench['ways']} ways but the {bench['dataset']}/{bench['split']} split "
                    f"has only {sizes} classes (train/val/test); use at most {smallest} ways")
            drawers = 20  # every Omniglot character has 20 drawings
            for queries_key in ("queries", "eval_queries"):
                if bench["shots"] + bench[queries_key] > drawers:
                    problems.append(
                        f"{key}.{queries_key}: shots + {queries_key} = {bench['shots'] + bench[queries_key]} "
                        f"exceeds the {drawers} images per Omniglot character")
        elif bench["task"] in ("miniimagenet", "tieredimagenet"):
            problems += _imagenet_problems(key, bench)
    problems += _imagenet_source_problems(params["data"])
    problems += _study_problems(params)
    if problems:
        raise ConfigError("params.yaml is invalid:\n  " + "\n  ".join(problems))


def _study_problems(params: dict) -> list[str]:
    study = (params.get("studies") or {}).get("mtnet")
    if study is None:
        return []
    bench = params["benchmarks"].get(study["benchmark"])
    if bench is None or bench["task"] != "sinusoid":
        return [f"studies.mtnet.benchmark: {study['benchmark']!r} is not a configured sinusoid benchmark"]
    missing = [a for a in ["mtnet", *study["algorithms"]] if a not in bench["algorithms"]]
    return [f"studies.mtnet.algorithms: {sorted(set(missing))} not configured in "
            f"benchmarks.{study['benchmark']}.algorithms (the study takes their hyperparameters)"] if missing else []


def _imagenet_problems(key: str, bench: dict) -> list[str]:
    """Ways and shots against the standard splits (the prepared data are checked again when used)."""
    from metalearn.data.imagenet import MIN_IMAGES_PER_CLASS, SPLIT_CLASSES

    problems = []
    sizes, fewest = SPLIT_CLASSES[bench["task"]], MIN_IMAGES_PER_CLASS[bench["task"]]
    if bench["ways"] > min(sizes.values()):
        problems.append(f"{key}.ways: {bench['ways']} ways but {bench['task']} has only {sizes} classes "
                        f"(train/val/test); use at most {min(sizes.values())} ways")
    for queries_key in ("queries", "eval_queries"):
        if bench["shots"] + bench[queries_key] > fewest:
            problems.append(f"{key}.{queries_key}: shots + {queries_key} = {bench['shots'] + bench[queries_key]} "
                            f"exceeds the {fewest} images of the smallest {bench['task']} class")
    return problems


def _imagenet_source_problems(data: dict) -> list[str]:
    problems = []
    for dataset in ("miniimagenet", "tieredimagenet"):
        source = data.get(dataset) or {}
        if source.get("files") and source.get("format") == "csv":
            problems.append(f"data.{dataset}.files: downloads are for the pickle format; the csv format's "
                            f"images are read from a folder (data.{dataset}.path)")
        if source.get("files") and source.get("path"):
            problems.append(f"data.{dataset}: give either path (files read in place) or files (URLs), not both")
        for name, remote in (source.get("files") or {}).items():
            if not (remote.get("sha256") or remote.get("md5")):
                problems.append(f"data.{dataset}.files.{name}: give its sha256 (or md5); downloads are verified")
    return problems


def validate(params: dict, where: str = "params.yaml") -> dict:
    validate_schema(params, where)
    check_semantics(params)
    return params


def load_params(path: str | os.PathLike = "params.yaml", profile: str | None = None) -> dict:
    """Read params.yaml, then `resolve` it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return resolve(raw, profile, where=str(path))


def resolve(raw: Any, profile: str | None = None, where: str = "params.yaml") -> dict:
    """Validate every profile of a raw params mapping (so a broken overlay fails early) and return
    the selected one, merged."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    for name in raw.get("profiles") or {}:
        validate(apply_profile(raw, name), where=f"{where} (profile {name})")
    params = apply_profile(raw, profile)
    return validate(params, where=f"{where} (profile {params['profile']})")


def data_mirror(params: dict) -> str | None:
    """The data mirror: METALEARN_DATA_MIRROR if set, else data.mirror."""
    return os.environ.get(MIRROR_ENV) or params["data"].get("mirror")


def benchmark(params: dict, name: str) -> dict:
    try:
        return params["benchmarks"][name]
    except KeyError:
        raise ConfigError(f"benchmarks.{name}: no such benchmark; params.yaml has {sorted(params['benchmarks'])}") from None


def algorithm_params(params: dict, bench_name: str, algorithm: str) -> dict[str, Any]:
    bench = benchmark(params, bench_name)
    try:
        return dict(bench["algorithms"][algorithm])
    except KeyError:
        raise ConfigError(
            f"benchmarks.{bench_name}.algorithms.{algorithm}: not configured for this benchmark; "
            f"it has {sorted(bench['algorithms'])}") from None
