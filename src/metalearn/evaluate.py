"""`metalearn evaluate`: a model file checked against params.yaml, then scored by its benchmark's task
family (metalearn.families; the episodes family's evaluation: metalearn.episodic), and the result file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from metalearn import families
from metalearn.config import Benchmark
from metalearn.errors import BadInput, ConfigError

# The settings a model is tied to: its network's shape and what it learned from. Evaluation-only
# settings (eval_queries, test_tasks, episode_seed, ...) may differ; queries only shape training batches.
MODEL_SETTINGS = ("task", "model", "dataset", "split", "split_seed", "ways", "shots", "degree", "frequency",
                  "within_alphabet")
# What may differ when a model is scored on another benchmark's episodes (--benchmark): the number of
# classes (its head is then zero or proto, --head) and whether the classes share an alphabet.
OTHER_BENCHMARK_MAY_DIFFER = ("ways", "within_alphabet")


def evaluate(params: dict, model_path: Path, split: str = "test", device: str = "auto",
             steps: int | None = None, log=lambda s: print(s, file=sys.stderr, flush=True),
             head: str | None = None, benchmark: str | None = None) -> dict:
    """`metalearn evaluate`: the model file is checked against params.yaml, then scored by its
    benchmark's task family (metalearn.families). `head` (classification episodes only; default auto:
    the trained head) and `benchmark` (another benchmark's saved episodes, of other ways) go to the
    episodes family's evaluation (metalearn.episodic)."""
    saved = check_inputs(params, model_path, steps, head, benchmark)
    scored = Benchmark.of(params, benchmark or saved["config"]["benchmark"])
    if head is None and benchmark is None:
        return families.family(scored.settings).evaluate(scored, model_path, saved, split, device, steps, log)
    from metalearn import episodic  # the episodes family's evaluation, with its head and benchmark options

    return episodic.evaluate_episodes(scored, model_path, saved, split, device, steps, log, head=head)


def check_model_fits(params: dict, saved: dict, model_path: Path, benchmark: str | None = None) -> None:
    """The model's settings against the benchmark it is evaluated on (params.yaml's, by name; the
    model's own, or `benchmark`): a model of other ways, shots, task, ... would fail, or be scored and
    labelled wrongly. On another benchmark (--benchmark) only OTHER_BENCHMARK_MAY_DIFFER may differ."""
    config = saved["config"]
    name, settings = config["benchmark"], config["settings"]
    where = f"params.yaml (profile {params.get('profile', 'default')})"
    if benchmark is not None and benchmark not in params["benchmarks"]:
        raise BadInput(f"--benchmark {benchmark}: {where} does not configure it (it has {sorted(params['benchmarks'])})")
    if name not in params["benchmarks"]:
        raise ConfigError(f"benchmarks.{name}: {model_path} was trained on {name}, which {where} does not "
                          f"configure (it has {sorted(params['benchmarks'])}); pass the profile it was trained with")
    target = benchmark or name
    bench = params["benchmarks"][target]
    keys = MODEL_SETTINGS if target == name else [k for k in MODEL_SETTINGS if k not in OTHER_BENCHMARK_MAY_DIFFER]
    differ = [f"benchmarks.{target}.{key}: the model {model_path} was trained with {key} {settings.get(key)!r}, "
              f"{where} has {bench.get(key)!r}"
              for key in keys if _setting(settings, key) != _setting(bench, key)]
    if differ:
        raise BadInput("\n  ".join(differ) + "\n  evaluate the model with the settings it was trained with "
                       "(--profile), or train it again with these"
                       + ("" if target == name else f" (on another benchmark only {', '.join(OTHER_BENCHMARK_MAY_DIFFER)} "
                                                    "may differ)"))


def _setting(settings: dict, key: str):
    """A model setting's value; within_alphabet unset is false."""
    return bool(settings.get(key)) if key == "within_alphabet" else settings.get(key)


# What an evaluation keeps of each of its benchmark's `eval_heads` (the per-step, per-episode values: too bulky)
HEAD_RESULT_KEYS = ("ways", "metric", "mean", "ci95", "episodes", "inner_steps", "per_episode", "curve")


def evaluate_heads(params: dict, model_path: Path, saved: dict, split: str = "test", device: str = "auto",
                   log=lambda s: print(s, file=sys.stderr, flush=True)) -> list[dict]:
    """The model scored with each of its benchmark's `eval_heads` (docs/adapt.md): one entry per head,
    with the head asked for, the policy it became (`auto` resolves to one), the benchmark whose saved
    episodes it was scored on and their contents digest. A head the model cannot take (Proto-MAML's
    zero head, a trained head at other ways) is kept as `refused`, with the reason."""
    from metalearn import benchmarks, provenance
    from metalearn.config import eval_heads
    from metalearn.head_policies import AdaptError, head_policy

    own = saved["config"]["benchmark"]
    entries, digests = [], {}  # each scored benchmark's episodes file hashed once
    for head, other in eval_heads(params["benchmarks"][own]):
        target = other or own
        entry = {"head": head, "benchmark": target}
        try:
            head_policy(saved, params["benchmarks"][target]["ways"], head)
        except AdaptError as exc:
            entries.append({**entry, "refused": str(exc)})
            continue
        result = evaluate(params, model_path, split, device, log=log, head=head, benchmark=other)
        if target not in digests:
            digests[target] = provenance.file_content_digest(benchmarks.episodes_path(params, target))
        entries.append({**entry, "policy": result["head"], **{k: result[k] for k in HEAD_RESULT_KEYS if k in result},
                        "episodes_digest": digests[target]})
        log(f"[evaluate {own}/{saved['config']['algorithm']}] head {head} on {target}: {result['metric']} "
            f"{result['mean']:.3f} +- {result['ci95']:.3f}")
    return entries


def check_inputs(params: dict, model_path: Path, steps: int | None, head: str | None = None,
                 benchmark: str | None = None) -> dict:
    """Before any work: the steps, the head, the model file and its fit to the benchmark; returns the
    model's record (the episode file is checked where it is read, benchmarks.read_episodes)."""
    from metalearn.head_policies import HEAD_POLICIES
    from metalearn.train import read_model_file

    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise BadInput(f"--steps: {steps!r} adaptation steps; give 0 or more")
    if head is not None and head not in HEAD_POLICIES:
        raise BadInput(f"--head: {head!r}; give one of {', '.join(HEAD_POLICIES)}")
    saved = read_model_file(Path(model_path))
    check_model_fits(params, saved, Path(model_path), benchmark)
    if head is not None or benchmark is not None:
        bench = params["benchmarks"][benchmark or saved["config"]["benchmark"]]
        if families.family(bench).name != "episodes" or bench.get("ways") is None:
            flag = "--head" if head is not None else "--benchmark"
            raise BadInput(f"{flag}: for benchmarks of classification episodes only; "
                           f"{benchmark or saved['config']['benchmark']} (task {bench['task']}) has no output head per class")
    return saved


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
