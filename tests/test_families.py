"""metalearn.families: every benchmark of params.yaml (every profile) has a family, every family is a
`Family` with every step's documented signature, and each step reaches its family's own function, so
`metalearn split/train/evaluate`, tracking and the workflow can dispatch without testing the task themselves."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from conftest import ROOT
from metalearn import families
from metalearn.config import Benchmark, load_params

# the documented signature of each step (metalearn/families.py, Family), positional names
SIGNATURES = {
    "episode_settings": ["bench"],
    "make_episodes": ["bench"],
    "train": ["bench", "algorithm", "seed", "out_dir", "device", "tracker", "log"],
    "evaluate": ["bench", "model_path", "saved", "split", "device", "steps", "log"],
    "source_files": ["algorithm"],
    "config_hash": ["config"],
}


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_every_family_has_every_step_with_the_documented_signature(name):
    family = families.FAMILIES[name]
    assert isinstance(family, families.Family) and family.name == name
    for step, expected in SIGNATURES.items():
        parameters = inspect.signature(getattr(family, step)).parameters
        assert list(parameters)[:len(expected)] == expected, (name, step, list(parameters))
        # anything beyond the documented parameters has a default (callers pass only those)
        extra = list(parameters.values())[len(expected):]
        assert all(p.default is not inspect.Parameter.empty for p in extra), (name, step)


def test_the_configured_benchmarks_fall_into_the_expected_families():
    seen = {}
    for profile in ("default", "quick", "regression", "paper", "metarl", "protocols"):
        params = load_params(ROOT / "params.yaml", profile=profile)
        for bench_name, settings in params["benchmarks"].items():
            seen[bench_name] = families.family(settings).name
    assert seen["sinusoid"] == seen["omniglot-5w1s"] == seen["miniimagenet-5w1s"] == "episodes"
    assert seen["continual-sinusoid"] == "continual"
    assert seen["omniglot-alphabets"] == "alphabets"
    assert {seen[b] for b in ("navigation-2d", "halfcheetah-vel", "halfcheetah-dir", "ant-vel", "ant-dir")} == {"rl"}


# the arguments each step is called with, positionally
BENCH = Benchmark("b", {"task": "x"}, {})
ARGS = {"episode_settings": ({"task": "x"},), "make_episodes": (BENCH,),
        "train": (BENCH, "maml", 0, "out", "cpu", None, print),
        "evaluate": (BENCH, "m", {}, "test", "cpu", None, print), "source_files": ("maml",), "config_hash": ({},)}
# the function (module, name) each family's step reaches; what the workflow plans with (episode settings,
# source files) is metalearn.dependencies', without torch (tests/test_planning_without_torch.py checks it
# against the families' own modules)
REACHES = {
    "episodes": {"episode_settings": ("metalearn.dependencies", "episode_settings"),
                 "make_episodes": ("metalearn.benchmarks", "make_episodes"),
                 "train": ("metalearn.train", "train"),
                 "evaluate": ("metalearn.episodic", "evaluate_episodes"),
                 "source_files": ("metalearn.dependencies", "algorithm_files"),
                 "config_hash": ("metalearn.train", "config_hash")},
    "continual": {"episode_settings": ("metalearn.dependencies", "continual_episode_settings"),
                  "make_episodes": ("metalearn.continual.tasks", "make_episodes"),
                  "train": ("metalearn.continual.train", "train"),
                  "evaluate": ("metalearn.continual.evaluate", "evaluate"),
                  "source_files": ("metalearn.dependencies", "continual_files"),
                  "config_hash": ("metalearn.continual.train", "config_hash")},
    "alphabets": {"episode_settings": ("metalearn.dependencies", "alphabets_episode_settings"),
                  "make_episodes": ("metalearn.alphabets.tasks", "make_episodes"),
                  "train": ("metalearn.alphabets.train", "train"),
                  "evaluate": ("metalearn.alphabets.evaluate", "evaluate"),
                  "source_files": ("metalearn.dependencies", "alphabets_files"),
                  "config_hash": ("metalearn.alphabets.train", "config_hash")},
    "rl": {"episode_settings": ("metalearn.dependencies", "episode_settings"),
           "make_episodes": ("metalearn.rl.tasks", "make_test_tasks"),
           "train": ("metalearn.rl.train", "train"),
           "evaluate": ("metalearn.rl.evaluate", "evaluate"),
           "source_files": ("metalearn.dependencies", "rl_files"),
           "config_hash": ("metalearn.rl.train", "config_hash")},
}
DISPATCH = [(name, step, *REACHES[name][step]) for name in sorted(REACHES) for step in SIGNATURES]
SYNONYMS = {"method": "algorithm", "name": "algorithm", "benchmark": "bench"}  # the same parameter under other names


@pytest.mark.parametrize("name, step, module, function", DISPATCH)
def test_dispatch_reaches_each_familys_own_functions(monkeypatch, name, step, module, function):
    """The step passes its arguments on, positionally, to its family's function, whose positional
    parameters are the documented ones."""
    import importlib

    target = importlib.import_module(module)
    parameters = list(inspect.signature(getattr(target, function)).parameters)
    assert [SYNONYMS.get(p, p) for p in parameters[:len(ARGS[step])]] == SIGNATURES[step][:len(ARGS[step])]
    calls = []
    monkeypatch.setattr(target, function, lambda *a, **k: calls.append((a, k)) or "done")
    assert getattr(families.FAMILIES[name], step)(*ARGS[step]) == "done"
    assert calls == [(ARGS[step], {})]


def test_a_benchmark_s_task_picks_its_family():
    assert families.family({"task": "omniglot"}).name == families.family({"task": "sinusoid"}).name == "episodes"
    assert families.family({"task": "continual"}).name == "continual"
    assert families.family({"task": "alphabets"}).name == "alphabets"
    assert {families.family({"task": t}).name for t in ("navigation", "ant-dir", "halfcheetah-vel")} == {"rl"}


def test_a_comment_or_docstring_edit_keeps_the_digest_and_a_code_edit_changes_it(tmp_path):
    """Checkpoints resume across sessions while the code around them is edited: the settings digest
    reads each source file's code (syntax tree), not its bytes."""
    from metalearn.train import settings_digest

    source = tmp_path / "algo.py"
    source.write_text('"""An algorithm."""\n\n\ndef step(x):\n    """One step."""\n    return x * 2  # doubled\n')
    config = {"benchmark": "b", "algorithm": "a"}
    before = settings_digest(config, [source])
    source.write_text('"""An algorithm, documented again."""\n\ndef step(x):\n    """One step, said\n    otherwise."""\n\n'
                      '    # a new comment\n    return x * 2\n')
    assert settings_digest(config, [source]) == before
    source.write_text('"""An algorithm."""\n\n\ndef step(x):\n    """One step."""\n    return x * 3  # doubled\n')
    assert settings_digest(config, [source]) != before
    changed = settings_digest(config, [source])
    source.write_text('"""An algorithm."""\n\n\ndef step(x):\n    x = "One step."\n    return x * 3\n')
    assert settings_digest(config, [source]) != changed  # a string that is code is code
    assert settings_digest({**config, "seed": 1}, [source]) != settings_digest(config, [source])


# Where a benchmark's name is resolved into its settings (config.Benchmark.of): the commands that take a
# name from the user, a model file or a record. Everything below them (the families' episodes, loops and
# evaluations, tracking, the studies' runs) receives the resolved config.Benchmark or config.Run.
RESOLVERS = {"metalearn.config", "metalearn.cli", "metalearn.evaluate", "metalearn.records", "metalearn.protocols",
             "metalearn.study_plans"}


def test_only_the_commands_look_a_benchmark_up_in_the_settings():
    import ast

    from test_layers import package_modules

    import metalearn

    found = []
    for module, path in package_modules(Path(metalearn.__file__).parent, "metalearn").items():
        if module in RESOLVERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                    and node.slice.value == "benchmarks"):
                found.append(f"{path}:{node.lineno}")
    assert not found, ("these look a benchmark up in the settings again; pass them the config.Benchmark "
                       "(or config.Run) their caller resolved:\n  " + "\n  ".join(found))
