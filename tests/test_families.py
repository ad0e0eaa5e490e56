"""metalearn.families: every benchmark of params.yaml (every profile) has a family, and every family
has every step with the documented signature, so `metalearn split/train/evaluate`, tracking and the
workflow can dispatch without testing the task themselves."""
from __future__ import annotations

import importlib
import inspect

import pytest

from conftest import ROOT
from metalearn import families
from metalearn.config import load_params

# the documented signature of each step (metalearn/families.py), positional names
SIGNATURES = {
    "episode_settings": ["bench"],
    "make_episodes": ["params", "bench_name"],
    "train": ["params", "bench_name", "algorithm", "seed", "out_dir", "device", "tracker"],
    "evaluate": ["params", "model_path", "saved", "split", "device", "steps", "log"],
    "source_files": ["algorithm"],
    "config_hash": ["config"],
}


# the same parameter under another name in some modules
SYNONYMS = {"method": "algorithm", "name": "algorithm"}


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_every_family_has_every_step_with_the_documented_signature(name):
    assert set(families.FAMILIES[name]) == set(families.STEPS) == set(SIGNATURES)
    for step, expected in SIGNATURES.items():
        module, function = families.FAMILIES[name][step].split(":")
        parameters = inspect.signature(getattr(importlib.import_module(module), function)).parameters
        positional = [SYNONYMS.get(p, p) for p in parameters][:len(expected)]
        assert positional == expected, (name, step, list(parameters))
        # anything beyond the documented parameters has a default (callers pass only those)
        extra = list(parameters.values())[len(expected):]
        assert all(p.default is not inspect.Parameter.empty for p in extra), (name, step)


def test_the_configured_benchmarks_fall_into_the_expected_families():
    seen = {}
    for profile in ("default", "quick", "regression", "paper", "metarl", "protocols"):
        params = load_params(ROOT / "params.yaml", profile=profile)
        for bench_name, settings in params["benchmarks"].items():
            seen[bench_name] = families.family(settings)
    assert seen["sinusoid"] == seen["omniglot-5w1s"] == seen["miniimagenet-5w1s"] == "episodes"
    assert seen["continual-sinusoid"] == "continual"
    assert seen["omniglot-alphabets"] == "alphabets"
    assert {seen[b] for b in ("navigation-2d", "halfcheetah-vel", "halfcheetah-dir", "ant-vel", "ant-dir")} == {"rl"}


def test_dispatch_reaches_each_familys_own_functions():
    from metalearn import alphabets, benchmarks, continual, evaluate, train
    from metalearn.rl import evaluate as rl_evaluate, tasks as rl_tasks, train as rl_train

    assert families.step({"task": "omniglot"}, "evaluate") is evaluate.evaluate_episodes
    assert families.step({"task": "sinusoid"}, "train") is train.train
    assert families.step({"task": "sinusoid"}, "make_episodes") is benchmarks.make_episodes
    assert families.step({"task": "continual"}, "train") is continual.train
    assert families.step({"task": "alphabets"}, "evaluate") is alphabets.evaluate
    assert families.step({"task": "navigation"}, "make_episodes") is rl_tasks.make_test_tasks
    assert families.step({"task": "ant-dir"}, "evaluate") is rl_evaluate.evaluate
    assert families.step({"task": "halfcheetah-vel"}, "config_hash") is rl_train.config_hash
