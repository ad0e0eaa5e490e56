"""params.yaml: loading, profile overlays, and validation before any work starts.

The schema (params.schema.yaml, beside this file) checks keys, types and ranges; `check_semantics`
checks what a schema cannot express (ways larger than the classes a split holds, ...). Every error
names the offending key, e.g. ``benchmarks.omniglot-5w1s.ways``.
"""
from __future__ import annotations

import copy
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from metalearn import paths
from metalearn.data.imagenet_files import MIN_IMAGES_PER_CLASS, SPLIT_CLASSES
from metalearn.data.omniglot_splits import split_sizes, within_alphabet_problems
from metalearn.errors import ConfigError


SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")


class DuplicateKey(yaml.constructor.ConstructorError):
    pass


class StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's C parser where present: faster start-up
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one
    silently); the error names the key path and both lines."""

    def construct_document(self, node):
        self._paths = {}
        self._record_paths(node, "")
        return super().construct_document(node)

    def _record_paths(self, node, path: str) -> None:
        if id(node) in self._paths:  # an alias: already seen
            return
        self._paths[id(node)] = path
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                self._record_paths(value_node, f"{path}.{key}" if path else str(key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._record_paths(item, f"{path}[{i}]")

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if first is not key_node:
                    parent = getattr(self, "_paths", {}).get(id(node), "")
                    where = f"{parent}.{key}" if parent else str(key)
                    raise DuplicateKey(
                        None, None, f"{where}: duplicate key (lines {first.start_mark.line + 1} and "
                        f"{key_node.start_mark.line + 1}); keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml(text: str, name: str = "<text>"):
    """YAML text -> Python objects with `StrictLoader` (raises yaml.YAMLError)."""
    stream = io.StringIO(text)
    stream.name = name  # shown in the error's location
    return yaml.load(stream, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | os.PathLike, what: str = "a YAML settings file"):
    """A YAML file read strictly; every failure is a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file (run from the project root or pass --params)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as {what} ({exc}); pass a YAML text file") from None
    try:
        return load_yaml(text, str(path))
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


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


def _profiles(raw: dict) -> dict:
    """raw['profiles'], checked to be a mapping of overlays (mappings) before anything uses it."""
    profiles = raw.get("profiles")
    if profiles is None:
        return {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"profiles: expected a mapping of profile name -> overlay, not {_kind(profiles)}; "
                          "e.g. `profiles: {quick: {seeds: [0]}}`")
    for key, overlay in profiles.items():
        if not isinstance(key, str):
            raise ConfigError(f"profiles.{key}: a profile name must be text, not {_kind(key)}; quote it")
        if not (overlay is None or isinstance(overlay, dict)):
            raise ConfigError(f"profiles.{key}: expected a mapping (an overlay of params.yaml's keys), "
                              f"not {_kind(overlay)}; use {{}} for no changes")
    return profiles


def apply_profile(raw: dict, profile: str | None = None, where: str = "params.yaml") -> dict:
    """The configuration with profile `profile` (default: raw['profile']) merged in; `where`: the
    settings file, named in the errors."""
    profiles = _profiles(raw)
    if not isinstance(raw.get("profile", ""), str) or not isinstance(profile or "", str):
        raise ConfigError(f"profile: expected a profile name, not {_kind(raw.get('profile'))}")
    name = profile or raw.get("profile") or "default"
    # A file without `profiles:` is already merged (e.g. written by a test): its `profile` is a label.
    known = set(profiles) | {"default"} | (set() if profiles else {raw.get("profile")})
    if name not in known:
        raise ConfigError(f"profile: unknown profile {name!r}; {where} defines "
                          f"{sorted(map(str, known - {None}))}")
    merged = deep_merge({k: v for k, v in raw.items() if k != "profiles"}, profiles.get(name) or {})
    merged["profile"] = name
    return merged


def _kind(value: Any) -> str:
    return {list: "a list", dict: "a mapping", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "empty (null)"}.get(type(value), type(value).__name__)


def _value_problems(node: Any, path: str = "") -> list[str]:
    """What a JSON schema cannot say: numbers must be finite (YAML's .nan/.inf), keys must be text."""
    problems = []
    if isinstance(node, float) and not math.isfinite(node):
        problems.append(f"{path or '(top level)'}: {node} is not a finite number; give a finite value")
    elif isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                problems.append(f"{where}: keys must be text, not {_kind(key)}; quote it")
            problems += _value_problems(value, where)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            problems += _value_problems(item, f"{path}[{i}]")
    return problems


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


_VALIDATORS: dict[tuple, jsonschema.Draft202012Validator] = {}


def _validator() -> jsonschema.Draft202012Validator:
    """The schema's validator, read once per version of the file (parsing it dominates a validation)."""
    stat = SCHEMA_PATH.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    if key not in _VALIDATORS:
        _VALIDATORS.clear()
        _VALIDATORS[key] = jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA_PATH.read_text()))
    return _VALIDATORS[key]


def validate_schema(params: dict, where: str = "params.yaml") -> None:
    validator = _validator()
    errors = sorted(validator.iter_errors(params), key=lambda e: [str(p) for p in e.absolute_path])
    lines = _value_problems(params)
    if not errors and not lines:
        return
    for error in errors:
        # For "unknown key" errors the offending key is in the message, not the path: add it.
        key = _key_path(error)
        if error.validator == "additionalProperties":
            extra = set(error.instance) - set(error.schema.get("properties", {}))
            key = ", ".join(f"{key}.{name}" if error.absolute_path else str(name) for name in sorted(extra, key=str))
            lines.append(f"{key}: unknown key (allowed here: {sorted(error.schema.get('properties', {}))})")
        elif error.validator == "not" and error.validator_value == {}:  # `key: {not: {}}` = forbidden
            lines.append(f"{key}: not allowed for this kind of benchmark")
        else:
            lines.append(f"{key}: {error.message}")
    raise ConfigError(f"{where} is invalid:\n  " + "\n  ".join(lines))


def check_semantics(params: dict, where: str = "params.yaml") -> None:
    """Checks a JSON schema cannot express; each error names the key (and the file, `where`)."""
    problems = []
    for name, bench in params["benchmarks"].items():
        key = f"benchmarks.{name}"
        if bench["task"] == "omniglot":
            sizes = split_sizes(bench["dataset"], bench["split"], bench["split_seed"])
            problems += within_alphabet_problems(key, bench)
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
        problems += _eval_heads_problems(params, name)
    problems += _imagenet_source_problems(params["data"])
    problems += _study_problems(params)
    if problems:
        raise ConfigError(f"{where} is invalid:\n  " + "\n  ".join(problems))


def eval_heads(bench: dict) -> list[tuple[str, str | None]]:
    """A benchmark's `eval_heads` as (head, other benchmark or None): 'proto@omniglot-alphabet-20w1s'."""
    return [(head, other or None) for head, _, other in (item.partition("@") for item in bench.get("eval_heads", []))]


def _eval_heads_problems(params: dict, name: str) -> list[str]:
    bench, key = params["benchmarks"][name], f"benchmarks.{name}.eval_heads"
    if "eval_heads" in bench and bench.get("ways") is None:
        return [f"{key}: output heads are for classification; {name} (task {bench['task']}) has none"]
    problems = []
    for _, other in eval_heads(bench):
        if other is None:
            continue
        found = params["benchmarks"].get(other)
        if found is None:
            problems.append(f"{key}: {other!r} is not a benchmark of this profile")
        elif found["task"] != bench["task"] or found.get("model") != bench.get("model"):
            problems.append(f"{key}: {other} (task {found['task']}, model {found.get('model')}) does not take "
                            f"{name}'s models (task {bench['task']}, model {bench.get('model')})")
    return problems


def _study_problems(params: dict) -> list[str]:
    return _mtnet_study_problems(params) + _protocols_study_problems(params)


def protocol_variants(params: dict) -> dict[str, dict]:
    """studies.protocols' variants as benchmarks: {variant: benchmark settings holding only the study's
    algorithm}, each the study's benchmark with the variant's overlays merged in (deep_merge) and the
    study's budget (`iterations`; a checkpoint, and a validation, every `eval_every`)."""
    study = params["studies"]["protocols"]
    base = benchmark(params, study["benchmark"])
    hparams = {k: v for k, v in algorithm_params(params, study["benchmark"], study["algorithm"]).items()
               if k != "iterations"}
    variants = {}
    for name, overlay in study["variants"].items():
        bench = deep_merge({k: v for k, v in base.items() if k != "algorithms"}, overlay.get("benchmark") or {})
        bench["train"] = {**bench["train"], "iterations": study["iterations"], "checkpoint_every": study["eval_every"]}
        bench["algorithms"] = {study["algorithm"]: deep_merge(hparams, overlay.get("algorithm") or {})}
        variants[name] = bench
    return variants


def protocol_benchmark_name(study: dict, variant: str) -> str:
    """A variant's benchmark name: the study's benchmark and the variant (it names its episode file)."""
    return f"{study['benchmark']}-{variant}"


def _protocols_study_problems(params: dict) -> list[str]:
    study = (params.get("studies") or {}).get("protocols")
    if study is None:
        return []
    bench = params["benchmarks"].get(study["benchmark"])
    if bench is None or bench["task"] != "omniglot":
        return [f"studies.protocols.benchmark: {study['benchmark']!r} is not a configured Omniglot benchmark "
                f"(benchmarks: {sorted(params['benchmarks'])})"]
    if study["algorithm"] not in bench["algorithms"]:
        return [f"studies.protocols.algorithm: {study['algorithm']!r} is not configured in "
                f"benchmarks.{study['benchmark']}.algorithms (the study takes its hyperparameters)"]
    problems = []
    for name, variant in protocol_variants(params).items():
        try:  # each variant must be a valid benchmark: its errors name the variant
            validate({"data": params["data"], "seeds": [study["seed"]],
                      "benchmarks": {protocol_benchmark_name(study, name): variant}},
                     where=f"studies.protocols.variants.{name}")
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _mtnet_study_problems(params: dict) -> list[str]:
    study = (params.get("studies") or {}).get("mtnet")
    if study is None:
        return []
    bench = params["benchmarks"].get(study["benchmark"])
    if bench is None or bench["task"] != "sinusoid":
        return [f"studies.mtnet.benchmark: {study['benchmark']!r} is not a configured sinusoid benchmark "
                f"(benchmarks: {sorted(params['benchmarks'])})"]
    missing = [a for a in ["mtnet", *study["algorithms"]] if a not in bench["algorithms"]]
    return [f"studies.mtnet.algorithms: {sorted(set(missing))} not configured in "
            f"benchmarks.{study['benchmark']}.algorithms (the study takes their hyperparameters)"] if missing else []


def _imagenet_problems(key: str, bench: dict) -> list[str]:
    """Ways and shots against the standard splits (the prepared data are checked again when used)."""
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
    check_semantics(params, where)
    return params


def load_params(path: str | os.PathLike = "params.yaml", profile: str | None = None) -> dict:
    """Read params.yaml, then `resolve` it."""
    path = Path(path)
    return resolve(read_yaml(path), profile, where=str(path))


def resolve(raw: Any, profile: str | None = None, where: str = "params.yaml") -> dict:
    """Validate every profile of a raw params mapping (so a broken overlay fails early) and return
    the selected one, merged."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    for name in _profiles(raw):
        validate(apply_profile(raw, name, where), where=f"{where} (profile {name})")
    params = apply_profile(raw, profile, where)
    return validate(params, where=f"{where} (profile {params['profile']})")


def benchmark(params: dict, name: str) -> dict:
    try:
        return params["benchmarks"][name]
    except KeyError:
        raise ConfigError(f"benchmarks.{name}: no such benchmark; params.yaml has {sorted(params['benchmarks'])}") from None


def algorithm_params(params: dict, bench_name: str, algorithm: str) -> dict[str, Any]:
    return Benchmark.of(params, bench_name).algorithm(algorithm)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark, looked up in params once and passed on: the command line, the workflow's jobs and
    the records resolve a name into this; the task families' episodes, loops and evaluations receive it.
    `settings` is the benchmark's (every key, as params.yaml has it); `params` the whole configuration,
    for what lies outside the benchmark (the data folder and mirror, the profile)."""

    name: str
    settings: dict[str, Any]
    params: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, params: dict, name: str) -> "Benchmark":
        """params.yaml's benchmark `name` (a ConfigError names an unknown one)."""
        return cls(name, benchmark(params, name), params)

    def algorithm(self, algorithm: str) -> dict[str, Any]:
        """The algorithm's settings on this benchmark (a ConfigError names one it does not configure)."""
        try:
            return dict(self.settings["algorithms"][algorithm])
        except KeyError:
            raise ConfigError(
                f"benchmarks.{self.name}.algorithms.{algorithm}: not configured for this benchmark; "
                f"it has {sorted(self.settings['algorithms'])}") from None

    @property
    def episodes_path(self) -> Path:
        """Its saved validation and test episodes (metalearn.paths)."""
        return paths.episodes_path(self.params, self.name)


# Evaluation-only settings and the paper-row label (`reproduces`, read by results/paper.md): left out of a
# run's config, so that changing them does not invalidate a trained model.
NOT_TRAINING_SETTINGS = ("algorithms", "val_tasks", "test_tasks", "eval_queries", "episode_seed", "eval_curve",
                         "eval_heads", "reproduces", "test_rollouts", "test_samples")


@dataclass(frozen=True)
class Run:
    """The settings of one training run (benchmark, algorithm, seed), looked up in params once and
    passed on: `settings` is the benchmark's (every key, as params.yaml has it), `hparams` the
    algorithm's on it. `config()` is what determines the run (its hash guards checkpoints)."""

    benchmark: str
    algorithm: str
    seed: int
    settings: dict[str, Any]
    hparams: dict[str, Any]

    @classmethod
    def of(cls, bench: Benchmark, algorithm: str, seed: int) -> "Run":
        """The run of `algorithm` on `bench` (a ConfigError names an algorithm it does not configure)."""
        return cls(bench.name, algorithm, seed, bench.settings, bench.algorithm(algorithm))

    @classmethod
    def of_config(cls, config: dict) -> "Run":
        """The run a model file's config (`config()`, its training settings) describes."""
        return cls(config["benchmark"], config["algorithm"], config["seed"], config["settings"], config["hparams"])

    @property
    def name(self) -> str:
        return f"{self.benchmark}/{self.algorithm}/seed{self.seed}"

    @property
    def train(self) -> dict[str, Any]:
        """The benchmark's `train` settings."""
        return self.settings["train"]

    @property
    def iterations(self) -> int:
        """The meta-iterations: the algorithm's own budget on the benchmark if it has one (e.g.
        equal-time comparisons), else the benchmark's."""
        return self.hparams.get("iterations", self.train["iterations"])

    def config(self) -> dict:
        """Everything that determines the run, evaluation-only settings left out (NOT_TRAINING_SETTINGS)."""
        settings = {k: v for k, v in self.settings.items() if k not in NOT_TRAINING_SETTINGS}
        return {"benchmark": self.benchmark, "algorithm": self.algorithm, "seed": self.seed,
                "settings": settings, "hparams": dict(self.hparams)}
