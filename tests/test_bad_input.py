"""Bad input never ends in a traceback or a silently wrong result (issue #20).

Every expected failure of `metalearn` is a message naming the offending key, file or flag, with exit
code 2; only a bug shows a traceback (exit 3, with a line asking for a report). Here: one regression
test per example of the issue, then generated corrupted configurations (hundreds, each through
`metalearn` and a `snakemake -n` dry run, both in-process; the `snakemake` command itself on a fixed
sample) and corrupted files given to every command that reads them.
"""
from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, write_params
from metalearn import cli
from metalearn.config import Benchmark, deep_merge, load_yaml
from metalearn.errors import BadInput
from test_workflow import SNAKEMAKE, copy_project, workflow_env

RAW_TEXT = (ROOT / "params.yaml").read_text()
RAW = yaml.safe_load(RAW_TEXT)


def run(capsys, *argv) -> tuple[int, str]:
    """`metalearn ARGV` in-process: (exit code, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_bad_input(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "bug in metalearn" not in err, err
    assert "weights_only" not in err, err  # torch's own advice must not reach the user
    for name in names:
        assert name in err, f"{name!r} not named in:\n{err}"


# ----------------------------------------------------------------------------- shared artifacts
@pytest.fixture(scope="module")
def made(prepared_small, tmp_path_factory) -> dict:
    """A short sinusoid training's files (model, checkpoint, history), its evaluation, and the params
    file that made them; everything a command reads, to corrupt copies of."""
    root = tmp_path_factory.mktemp("made")
    params = deep_merge(prepared_small, {"benchmarks": {"sinusoid": {
        "train": {"iterations": 6, "checkpoint_every": 3, "log_every": 3}}}})
    params_file = write_params(root / "params.yaml", params)
    quiet = lambda s: None  # noqa: E731
    from metalearn.evaluate import evaluate, write_json
    from metalearn.train import train

    model = train(Benchmark.of(params, "sinusoid"), "maml", 0, root / "run", device="cpu", log=quiet)
    evaluation = root / "eval.json"
    write_json(evaluate(params, model, device="cpu", log=quiet), evaluation)
    from metalearn import benchmarks
    return {"params": params, "params_file": params_file, "model": model, "checkpoint": root / "run" / "checkpoint.pt",
            "history": root / "run" / "history.json", "evaluation": evaluation,
            "episodes": benchmarks.episodes_path(params, "sinusoid"), "root": root}


def _result(bench="omniglot-5w1s", algo="maml", seed=0, values=(100.0, 80.0, 60.0), **changes) -> dict:
    result = {"benchmark": bench, "algorithm": algo, "seed": seed, "split": "test", "ways": 5, "shots": 1,
              "metric": "accuracy", "mean": sum(values) / len(values), "ci95": 0.0, "episodes": len(values),
              "inner_steps": 1, "train_seconds": 2.0, "per_episode": list(values)}
    return {**result, **changes}


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ----------------------------------------------------------------------------- the examples
def test_duplicate_key_in_params_is_refused_naming_both_lines(tmp_path, capsys):
    """A second `maml:` line with inner_lr 5.0 used to win silently (and train to a loss of 4e5)."""
    first = "      maml:   {inner_lr: 0.01, inner_steps: 1, test_inner_steps: 10}\n"
    assert RAW_TEXT.count(first) == 1
    text = RAW_TEXT.replace(first, first + "      maml:   {inner_lr: 5.0, inner_steps: 1, test_inner_steps: 10}\n")
    (tmp_path / "params.yaml").write_text(text)
    line = RAW_TEXT[:RAW_TEXT.index(first)].count("\n") + 1
    code, err = run(capsys, "train", "--params", tmp_path / "params.yaml", "-b", "sinusoid", "-a", "maml",
                    "--out", tmp_path / "m")
    assert_bad_input(code, err, "benchmarks.sinusoid.algorithms.maml: duplicate key",
                     f"lines {line} and {line + 1}")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("text,key", [
    ("seeds: [0]\nseeds: [1]\n", "seeds: duplicate key (lines 1 and 2)"),
    ("a:\n  b: 1\n  c: 2\n  b: 3\n", "a.b: duplicate key (lines 2 and 4)"),
    ("x: &anchor {k: 1}\ny: *anchor\nz: {k: 1, k: 2}\n", "z.k: duplicate key (lines 3 and 3)"),
])
def test_strict_yaml_names_the_duplicate_key_path(text, key):
    with pytest.raises(yaml.YAMLError, match=re.escape(key)):
        load_yaml(text)


def test_strict_yaml_reads_the_committed_params_as_plain_yaml_does():
    """Anchors and aliases (the ImageNet benchmarks share their algorithms) still work."""
    assert load_yaml(RAW_TEXT) == RAW


def test_aggregate_refuses_the_same_evaluation_file_twice(tmp_path, capsys):
    """It used to count as a second seed (a narrower confidence interval)."""
    path = _write_json(tmp_path / "e.json", _result())
    code, err = run(capsys, "aggregate", "--params", ROOT / "params.yaml", path, path,
                    "--out", tmp_path / "results" / "summary.csv")
    assert_bad_input(code, err, str(path), "the same file twice", "omniglot-5w1s/maml/seed0")
    assert not (tmp_path / "results").exists()


def test_aggregate_refuses_one_run_in_two_files(tmp_path, capsys):
    a = _write_json(tmp_path / "a.json", _result())
    b = _write_json(tmp_path / "b.json", _result(values=(90.0, 80.0, 70.0)))
    code, err = run(capsys, "aggregate", "--params", ROOT / "params.yaml", a, b, "--out", tmp_path / "s.csv")
    assert_bad_input(code, err, str(a), str(b), "omniglot-5w1s/maml/seed0")


@pytest.mark.parametrize("change", [{"shots": 5}, {"split": "val"}, {"inner_steps": 3}, {"ways": 20},
                                    {"values": (1.0, 2.0)}])
def test_aggregate_refuses_runs_whose_settings_differ(tmp_path, capsys, change):
    a = _write_json(tmp_path / "a.json", _result())
    b = _write_json(tmp_path / "b.json", _result(seed=1, **change) if "values" not in change
                    else _result(seed=1, values=change["values"]))
    code, err = run(capsys, "aggregate", "--params", ROOT / "params.yaml", a, b, "--out", tmp_path / "s.csv")
    assert_bad_input(code, err, str(a), str(b), "different settings")


def test_aggregate_refuses_algorithms_evaluated_on_different_episodes(tmp_path, capsys):
    a = _write_json(tmp_path / "a.json", _result())
    b = _write_json(tmp_path / "b.json", _result(algo="fomaml", values=(1.0, 2.0)))
    code, err = run(capsys, "aggregate", "--params", ROOT / "params.yaml", a, b, "--out", tmp_path / "s.csv")
    assert_bad_input(code, err, "episodes 3 vs 2")


def test_evaluate_refuses_a_model_of_other_ways(prepared_small, tmp_path, capsys):
    """A 3-way model on the 5-way episodes used to end in IndexError."""
    from metalearn.train import train

    three = deep_merge(prepared_small, {"benchmarks": {"omniglot-5w1s": {"ways": 3, "train": {"iterations": 1}}}})
    model = train(Benchmark.of(three, "omniglot-5w1s"), "maml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    params_file = write_params(tmp_path / "params.yaml", prepared_small)
    code, err = run(capsys, "evaluate", "--params", params_file, "--model", model, "--out", tmp_path / "e.json")
    assert_bad_input(code, err, "benchmarks.omniglot-5w1s.ways", "trained with ways 3", "has 5", str(model))
    assert not (tmp_path / "e.json").exists()


def test_evaluate_refuses_a_model_of_other_shots(made, tmp_path, capsys):
    """A 5-shot sinusoid model on 10-shot episodes used to be scored silently and labelled 10-shot."""
    from metalearn.train import train

    five = deep_merge(made["params"], {"benchmarks": {"sinusoid": {"shots": 5, "train": {"iterations": 1}}}})
    model = train(Benchmark.of(five, "sinusoid"), "maml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    code, err = run(capsys, "evaluate", "--params", made["params_file"], "--model", model, "--out", tmp_path / "e.json")
    assert_bad_input(code, err, "benchmarks.sinusoid.shots", "trained with shots 5", "has 10")
    with pytest.raises(BadInput, match="benchmarks.sinusoid.shots"):
        from metalearn.evaluate import evaluate
        evaluate(made["params"], model, device="cpu", log=lambda s: None)


def test_evaluate_refuses_a_model_of_a_benchmark_not_configured(made, tmp_path, capsys):
    params = copy.deepcopy(made["params"])
    params["benchmarks"]["sinusoid-other"] = params["benchmarks"].pop("sinusoid")
    params["studies"]["mtnet"]["benchmark"] = "sinusoid-other"
    code, err = run(capsys, "evaluate", "--params", write_params(tmp_path / "p.yaml", params),
                    "--model", made["model"], "--out", tmp_path / "e.json")
    assert_bad_input(code, err, "benchmarks.sinusoid:", "does not configure")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
@pytest.mark.parametrize("key", ["benchmarks.sinusoid.train.meta_lr", "benchmarks.omniglot-5w1s.train.meta_lr"])
def test_nan_and_infinity_are_refused_naming_the_key(tmp_path, capsys, key, value):
    """`meta_lr: .nan` used to pass the schema and end in a ValueError traceback."""
    bench = key.split(".")[1]
    start = RAW_TEXT.index(f"  {bench}:\n")
    at = RAW_TEXT.index("meta_lr: 0.001", start)
    text = RAW_TEXT[:at] + f"meta_lr: {value}" + RAW_TEXT[at + len("meta_lr: 0.001"):]
    (tmp_path / "params.yaml").write_text(text)
    code, err = run(capsys, "train", "--params", tmp_path / "params.yaml", "-b", bench, "-a", "maml",
                    "--out", tmp_path / "m")
    assert_bad_input(code, err, f"{key}: ", "not a finite number")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("key,value", [
    ("benchmarks.sinusoid.algorithms.mtnet.logit_init", float("nan")),   # a number without bounds
    ("benchmarks.sinusoid.algorithms.imaml.cg_damping", float("inf")),
    ("studies.mtnet.inner_lrs", [0.01, float("inf")]),
    ("profiles.quick.benchmarks.sinusoid.train.meta_lr", float("nan")),  # in an overlay
])
def test_nan_and_infinity_anywhere_are_refused(tmp_path, capsys, key, value):
    raw = copy.deepcopy(RAW)
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    code, err = run(capsys, "split", "--params", write_params(tmp_path / "params.yaml", raw))
    shown = key.replace("profiles.quick.", "")
    assert_bad_input(code, err, shown, "not a finite number")


@pytest.mark.parametrize("key,value", [("seeds", [2**40]), ("benchmarks.sinusoid.episode_seed", -1),
                                       ("benchmarks.sinusoid.train.iterations", 10**30),
                                       ("benchmarks.sinusoid.test_tasks", 2**31)])
def test_out_of_range_values_are_refused(tmp_path, capsys, key, value):
    raw = copy.deepcopy(RAW)
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value
    code, err = run(capsys, "split", "--params", write_params(tmp_path / "params.yaml", raw))
    assert_bad_input(code, err, key)


def test_truncated_checkpoint_is_set_aside_and_training_restarts_cleanly(made, tmp_path, capsys):
    """A truncated checkpoint.pt used to block every rerun with `OSError: [Errno 22]`, no file named."""
    out = tmp_path / "run"
    out.mkdir()
    data = made["checkpoint"].read_bytes()
    (out / "checkpoint.pt").write_bytes(data[:len(data) // 2])
    code, err = run(capsys, "train", "--params", made["params_file"], "-b", "sinusoid", "-a", "maml",
                    "--out", out, "--device", "cpu")
    assert code == 0, err
    aside = out / "checkpoint.pt.corrupt"
    assert f"warning: {out / 'checkpoint.pt'}" in err and str(aside) in err
    assert aside.read_bytes() == data[:len(data) // 2]  # set aside, not deleted
    reference = torch.load(made["model"], weights_only=True)["state_dict"]
    restarted = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(reference[k], restarted[k]) for k in reference)  # from scratch, as an uninterrupted run


@pytest.mark.parametrize("command", ["evaluate", "adapt"])
@pytest.mark.parametrize("kind", ["truncated", "foreign"])
def test_unreadable_model_files_are_named_without_torch_traceback(made, tmp_path, capsys, command, kind):
    bad = tmp_path / "model.pt"
    if kind == "truncated":
        bad.write_bytes(made["model"].read_bytes()[:1000])
    else:
        bad.write_bytes(b"PK\x03\x04 certainly not a model")
    code, err = _read_model(capsys, made, command, bad, tmp_path)
    assert_bad_input(code, err, str(bad), "not a readable model file")


def _read_model(capsys, made, command, model, tmp_path):
    if command == "evaluate":
        return run(capsys, "evaluate", "--params", made["params_file"], "--model", model, "--out", tmp_path / "e.json")
    return run(capsys, "adapt", "--model", model, "--support", tmp_path / "support", "--query", tmp_path / "query",
               "--out", tmp_path / "p.csv")


@pytest.mark.parametrize("command", ["evaluate", "adapt"])
def test_checkpoint_given_as_model_is_named(made, tmp_path, capsys, command):
    """A checkpoint passed as --model used to give `KeyError: 'config'`."""
    code, err = _read_model(capsys, made, command, made["checkpoint"], tmp_path)
    assert_bad_input(code, err, str(made["checkpoint"]), "training checkpoint, not a model", "model.pt")


def test_checkpoints_carry_their_settings(made):
    state = torch.load(made["checkpoint"], weights_only=True)
    saved = torch.load(made["model"], weights_only=True)
    assert state["config"] == saved["config"] and state["config_hash"] == saved["config_hash"]


@pytest.mark.parametrize("profiles,key", [
    ("profiles: [quick, paper]\n", "profiles: expected a mapping"),
    ("profiles: 3\n", "profiles: expected a mapping"),
    ("profiles: []\n", "profiles: expected a mapping"),
    ("profiles: 0\n", "profiles: expected a mapping"),
    ("profiles:\n  quick: 3\n", "profiles.quick: expected a mapping"),
    ("profiles:\n  quick: [1, 2]\n", "profiles.quick: expected a mapping"),
    ("profiles:\n  quick:\n    benchmarks: 5\n", "benchmarks: 5 is not of type 'object'"),
    ("profiles:\n  quick:\n    benchmarks:\n      sinusoid: [1]\n", "benchmarks.sinusoid: [1] is not of type"),
    ("profiles:\n  quick:\n    seeds: {a: 1}\n", "seeds: {'a': 1} is not of type 'array'"),
    ("profiles:\n  7: {}\n", "profiles.7: a profile name must be text"),
])
def test_malformed_profiles_section_names_the_key(tmp_path, capsys, profiles, key):
    """A list or number as `profiles:` used to end in AttributeError / TypeError."""
    text = RAW_TEXT[:RAW_TEXT.index("\nprofiles:\n") + 1] + profiles
    (tmp_path / "params.yaml").write_text(text)
    code, err = run(capsys, "split", "--params", tmp_path / "params.yaml")
    assert_bad_input(code, err, key)


@pytest.mark.parametrize("profile", ["[a, b]", "{a: 1}", "3", "0", "false"])
def test_malformed_profile_choice_names_the_key(tmp_path, capsys, profile):
    (tmp_path / "params.yaml").write_text(RAW_TEXT.replace("profile: default\n", f"profile: {profile}\n", 1))
    code, err = run(capsys, "split", "--params", tmp_path / "params.yaml")
    assert_bad_input(code, err, "profile")


@pytest.mark.parametrize("argv,flag", [
    (["evaluate", "--model", "m.pt", "--out", "e.json", "--steps", "-3"], "--steps"),
    (["evaluate", "--model", "m.pt", "--out", "e.json", "--steps", "two"], "--steps"),
    (["adapt", "--model", "m.pt", "--support", "s", "--query", "q", "--steps", "-1"], "--steps"),
    (["train", "-b", "sinusoid", "-a", "maml", "--seed", "-1"], "--seed"),
    (["train", "-b", "sinusoid", "-a", "maml", "--seed", str(2**40)], "--seed"),
    (["train", "-b", "sinusoid", "-a", "maml", "--device", "gpu7"], "--device"),
    (["evaluate", "--model", "m.pt", "--out", "e.json", "--split", "train"], "--split"),
])
def test_bad_flags_are_refused_naming_the_flag(capsys, argv, flag):
    """`--steps -3` used to be accepted and recorded in the results."""
    code, err = run(capsys, *argv)
    assert_bad_input(code, err, f"argument {flag}")


def test_evaluate_refuses_negative_steps_in_the_api(made):
    from metalearn.evaluate import evaluate

    with pytest.raises(BadInput, match="--steps"):
        evaluate(made["params"], made["model"], steps=-3, device="cpu", log=lambda s: None)


@pytest.mark.parametrize("argv,names", [
    (["train", "-b", "nosuch", "-a", "maml"], ["benchmarks.nosuch: no such benchmark"]),
    (["train", "-b", "sinusoid", "-a", "reptile"], ["benchmarks.sinusoid.algorithms.reptile"]),
    (["split", "-b", "nosuch"], ["benchmarks.nosuch: no such benchmark"]),
])
def test_unknown_benchmark_or_algorithm_is_named(made, tmp_path, capsys, argv, names):
    code, err = run(capsys, *argv, "--params", made["params_file"])
    assert_bad_input(code, err, *names)


def test_outputs_are_checked_writable_before_the_work_starts(made, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = run(capsys, "train", "--params", made["params_file"], "-b", "sinusoid", "-a", "maml",
                    "--out", blocker / "run")
    assert_bad_input(code, err, "--out", str(blocker))
    assert "training" not in err  # refused before training started
    code, err = run(capsys, "evaluate", "--params", made["params_file"], "--model", made["model"],
                    "--out", tmp_path)  # a folder
    assert_bad_input(code, err, "--out", "exists as a folder")
    code, err = run(capsys, "aggregate", "--params", made["params_file"], made["evaluation"],
                    "--out", tmp_path / "s.csv", "--plots", blocker)
    assert_bad_input(code, err, "--plots", "exists as a file")
    assert not (tmp_path / "s.csv").exists()
    code, err = run(capsys, "study", "mtnet", "--params", made["params_file"], "--out", blocker / "x")
    assert_bad_input(code, err, "--out")


@pytest.mark.parametrize("content", [None, "", "- a\n- b\n", "a: [\n", b"\x80\x81\xfe\xff"])
def test_unreadable_params_file_is_named(tmp_path, capsys, content):
    path = tmp_path / "params.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code, err = run(capsys, "split", "--params", path)
    assert_bad_input(code, err, str(path))


def test_a_bug_shows_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    def broken(params, args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_split", broken)
    code, err = run(capsys, "split", "--params", ROOT / "params.yaml")
    assert code == cli.EXIT_BUG
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err and "please report it" in err


# ----------------------------------------------------------------------------- generated configurations
def _paths(node, prefix=()) -> list[tuple]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append(prefix + (key,))
            found += _paths(value, prefix + (key,))
    return found


PATHS = _paths(RAW)
ACTIONS = ["set", "set", "set", "delete", "rename"]
VALUES = ["25", "", [], {}, True, None, float("nan"), float("inf"), float("-inf"), -1, 0, 1, 10**30, 1e308,
          -1e308, 2.5, [0, 0], {"x": 1}, "maml", [1, "a"]]


def corrupted(mutations: list[tuple], duplicate: int | None) -> tuple[str, list[str]]:
    """params.yaml with the mutations (path, action, value) applied, and a key line duplicated when
    `duplicate` is given; returns (YAML text, names that may identify the fault in a message)."""
    raw = copy.deepcopy(RAW)
    names = []
    for path, action, value in mutations:
        node = raw
        for part in path[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                break
            node = node[part]
        else:
            last = path[-1]
            if last not in node and action != "set":
                continue
            if action == "set":
                node[last] = copy.deepcopy(value)
            elif action == "delete":
                del node[last]
            else:
                last_renamed = f"{last}_x"
                node[last_renamed] = node.pop(last)
            names.append(str(last))
    text = yaml.safe_dump(raw, sort_keys=False)
    if duplicate is not None:
        lines = text.splitlines(keepends=True)
        keys = [i for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z_][\w-]*:", line)]
        i = keys[duplicate % len(keys)]
        # "key: value" twice, or a block's "key:" header (the first then null); not its anchor twice
        lines.insert(i + 1, re.sub(r" &\w+", "", lines[i]))
        text = "".join(lines)
        names.append(lines[i].split(":")[0].strip())
    return text, names


def check_verdict(code: int, err: str, names: list[str]) -> str:
    """'valid' (the config passed; the missing model is reported) or 'invalid' (a key named)."""
    assert "Traceback" not in err and "bug in metalearn" not in err, err
    assert code == 2, err
    if "no such model file" in err:
        assert "is invalid" not in err
        return "valid"
    assert any(name in err for name in names), f"none of {names} named in:\n{err}"
    return "invalid"


MUTATION = st.tuples(st.sampled_from(PATHS), st.sampled_from(ACTIONS), st.sampled_from(VALUES))
_SNAKEMAKE_PROJECT: list[Path] = []


def snakemake_dry_run(text: str) -> tuple[int | str, str]:
    """`snakemake -n` on a project whose params.yaml is `text`, through Snakemake's Python API in this
    process (a process start per configuration would take seconds each): (exit code, output).
    'error' and the message when Snakemake raised instead of stopping with the workflow's code."""
    import contextlib
    import io
    import os
    import tempfile

    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, Quietness, ResourceSettings

    if not _SNAKEMAKE_PROJECT:
        _SNAKEMAKE_PROJECT.append(copy_project(Path(tempfile.mkdtemp(prefix="metalearn-smk-"))))
    project = _SNAKEMAKE_PROJECT[0]
    (project / "params.yaml").write_text(text)
    output, cwd = io.StringIO(), os.getcwd()
    try:
        with contextlib.redirect_stderr(output), contextlib.redirect_stdout(output):
            with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
                workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                        snakefile=project / "Snakefile", workdir=project)
                workflow.dag().execute_workflow(executor="dryrun")
        return 0, output.getvalue()
    except SystemExit as exc:
        return exc.code, output.getvalue()
    except Exception as exc:  # noqa: BLE001 -- reported by the test
        return "error", f"{type(exc).__name__}: {exc}\n{output.getvalue()}"
    finally:
        os.chdir(cwd)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3),
       duplicate=st.one_of(st.none(), st.none(), st.integers(0, 10_000)))
def test_generated_corrupt_configs_validate_or_name_the_key(tmp_path, capsys, mutations, duplicate):
    """Each generated configuration through `metalearn` and through `snakemake -n` (Snakemake's API,
    in-process; test_snakemake_on_generated_corrupt_configs_agrees_with_metalearn runs the command
    itself on a sample): both accept it, or both stop with exit code 2 and a key named."""
    text, names = corrupted(mutations, duplicate)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    code, err = run(capsys, "evaluate", "--params", path, "--model", tmp_path / "missing" / "model.pt",
                    "--out", tmp_path / "e.json")
    verdict = check_verdict(code, err, names)
    assert not (tmp_path / "e.json").exists()
    smk_code, out = snakemake_dry_run(text)
    assert "Traceback" not in out, out
    if verdict == "valid":
        assert smk_code == 0, out
    else:
        assert smk_code == 2 and "ConfigError" in out and any(name in out for name in names), (smk_code, out)


def _snakemake_sample(tmp_path: Path, capsys, invalid: int = 4, valid: int = 2) -> list[tuple[str, list[str], str]]:
    """A fixed sample of generated configurations (one or two mutations each, every fourth with a
    duplicated key line), with `metalearn`'s verdict: the first `invalid` refused and `valid` accepted.
    A few suffice: the command's own part (exit code, message, no DAG) is one code path for every
    refused configuration (common.smk's ConfigError handler), one for every accepted one; the variety
    of configurations goes through the same Snakefile in-process (the generated test above). The
    test checks that its sample still holds both kinds of refusal (a duplicated key, a schema error)."""
    rng = random.Random(20)
    wanted, sample = {"invalid": invalid, "valid": valid}, []
    for i in range(1000):
        mutations = [(rng.choice(PATHS), rng.choice(ACTIONS), rng.choice(VALUES)) for _ in range(1 + i % 2)]
        text, names = corrupted(mutations, rng.randrange(10_000) if i % 4 == 3 else None)
        (tmp_path / "params.yaml").write_text(text)
        code, err = run(capsys, "evaluate", "--params", tmp_path / "params.yaml", "--model", tmp_path / "none.pt",
                        "--out", tmp_path / "e.json")
        verdict = check_verdict(code, err, names)
        if wanted[verdict]:
            wanted[verdict] -= 1
            sample.append((text, names, verdict))
        if not any(wanted.values()):
            return sample
    raise AssertionError(f"the generator gave too few of {wanted}")


@pytest.mark.slow
def test_snakemake_on_generated_corrupt_configs_agrees_with_metalearn(tmp_path, capsys):
    """`snakemake -n` on a fixed sample of the generated configurations: it plans the jobs where
    `metalearn` accepts the configuration, and otherwise stops before planning with the key named,
    a ConfigError and no traceback. Three at a time (each is mostly interpreter start-up)."""
    project = copy_project(tmp_path / "project")
    folders = []
    for i in range(3):
        folder = tmp_path / f"run{i}"
        shutil.copytree(project, folder, symlinks=True)
        folders.append(folder)
    sample = _snakemake_sample(tmp_path, capsys)
    failures, refusals = [], []
    for start in range(0, len(sample), len(folders)):
        running = []
        for folder, (text, names, verdict) in zip(folders, sample[start:start + len(folders)]):
            (folder / "params.yaml").write_text(text)
            proc = subprocess.Popen([SNAKEMAKE, "-n", "--cores", "1"], cwd=folder, env=workflow_env(folder),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.append((verdict, names, proc))
        for verdict, names, proc in running:
            out = proc.communicate()[0]
            ok = "Traceback" not in out and (
                (verdict == "valid" and proc.returncode == 0 and "Building DAG" in out) or
                (verdict == "invalid" and proc.returncode == 2 and "Building DAG" not in out
                 and "ConfigError" in out and any(name in out for name in names)))
            if not ok:
                failures.append(f"{verdict} per metalearn ({names}); snakemake exit {proc.returncode}:\n{out[-1500:]}")
            if verdict == "invalid":
                refusals.append("duplicate key" in out)
    assert not failures, "\n\n".join(failures)
    assert True in refusals and False in refusals, "the sample lacks a duplicated key or a schema error"


# ----------------------------------------------------------------------------- corrupted files
def _torch_file(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def corrupt_files(made: dict, folder: Path, original: Path) -> dict[str, Path]:
    """Damaged copies of `original`, and foreign files (other commands' outputs) in its place."""
    folder.mkdir(parents=True, exist_ok=True)
    data = original.read_bytes()
    rng = random.Random(len(data))
    files = {}
    for fraction in (0.0, 0.1, 0.5, 0.99):
        files[f"truncated-{fraction}"] = folder / f"truncated-{fraction}"
        files[f"truncated-{fraction}"].write_bytes(data[:int(len(data) * fraction)])
    files["one-byte-short"] = folder / "short"
    files["one-byte-short"].write_bytes(data.rstrip()[:-1])  # (a text file: its last character, not "\\n")
    files["random"] = folder / "random"
    files["random"].write_bytes(rng.randbytes(4096))
    files["text"] = folder / "text"
    files["text"].write_text("hello\n")
    foreign = {"model": made["model"], "checkpoint": made["checkpoint"], "episodes": made["episodes"],
               "evaluation": made["evaluation"], "history": made["history"], "params": made["params_file"]}
    for name, path in foreign.items():
        if path.read_bytes() != data:
            files[f"foreign-{name}"] = path
    files["torch-tensor"] = _torch_file(folder / "tensor.pt", torch.zeros(3))
    files["torch-dict"] = _torch_file(folder / "dict.pt", {"format": 1, "config": {"benchmark": 3}})
    files["json-list"] = _write_json(folder / "list.json", [1, 2])
    files["json-dict"] = _write_json(folder / "dict.json", {"benchmark": "sinusoid"})
    return files


FILE_KINDS = ["truncated-0.0", "truncated-0.1", "truncated-0.5", "truncated-0.99", "one-byte-short", "random",
              "text", "torch-tensor", "torch-dict", "json-list", "json-dict", "foreign-model", "foreign-checkpoint",
              "foreign-episodes", "foreign-evaluation", "foreign-history", "foreign-params"]


def assert_each(files: dict[str, Path], check) -> None:
    """check(kind, path) for every damaged or foreign file; the failures of all kinds reported at once."""
    failures = []
    for kind, path in files.items():
        try:
            check(kind, path)
        except AssertionError as exc:
            failures.append(f"{kind}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("command", ["evaluate", "adapt"])
def test_corrupt_model_files_are_named(made, tmp_path, capsys, command):
    def check(kind, path):
        code, err = _read_model(capsys, made, command, path, tmp_path)
        assert_bad_input(code, err, str(path))
    assert_each(corrupt_files(made, tmp_path / "files", made["model"]), check)


def test_corrupt_checkpoints_are_set_aside_and_training_restarts(made, tmp_path, capsys):
    for kind, path in corrupt_files(made, tmp_path / "files", made["checkpoint"]).items():
        out = tmp_path / "runs" / kind
        out.mkdir(parents=True)
        shutil.copy(path, out / "checkpoint.pt")
        code, err = run(capsys, "train", "--params", made["params_file"], "-b", "sinusoid", "-a", "maml",
                        "--out", out, "--device", "cpu")
        assert code == 0, f"{kind}: {err}"
        assert (out / "model.pt").exists(), kind
        if kind == "foreign-checkpoint":
            continue  # n/a: the original itself
        if (out / "checkpoint.pt.corrupt").exists():
            assert (out / "checkpoint.pt.corrupt").read_bytes() == path.read_bytes(), kind
            assert "warning:" in err and str(out / "checkpoint.pt") in err, kind
        else:  # a readable checkpoint of other settings: ignored, as before
            assert "belongs to other settings" in err, (kind, err)


def test_corrupt_episode_files_are_named(made, tmp_path, capsys):
    """The saved test episodes, damaged or replaced, given to `evaluate`."""
    def check(kind, path):
        params = deep_merge(made["params"], {"data": {"root": str(tmp_path / kind / "data")}})
        episodes = tmp_path / kind / "data" / "episodes" / "sinusoid.pt"
        episodes.parent.mkdir(parents=True)
        params_file = write_params(tmp_path / kind / "params.yaml", params)
        shutil.copy(path, episodes)
        code, err = run(capsys, "evaluate", "--params", params_file, "--model", made["model"],
                        "--out", tmp_path / kind / "e.json")
        assert_bad_input(code, err, str(episodes))
        assert not (tmp_path / kind / "e.json").exists()
    assert_each(corrupt_files(made, tmp_path / "files", made["episodes"]), check)


def test_missing_and_stale_episode_files_are_named(made, tmp_path, capsys):
    params = deep_merge(made["params"], {"data": {"root": str(tmp_path / "data")}})
    params_file = write_params(tmp_path / "params.yaml", params)
    code, err = run(capsys, "evaluate", "--params", params_file, "--model", made["model"], "--out", tmp_path / "e.json")
    assert_bad_input(code, err, "episodes/sinusoid.pt", "metalearn split -b sinusoid")
    other = deep_merge(params, {"benchmarks": {"sinusoid": {"episode_seed": 5}}})
    from metalearn import benchmarks
    benchmarks.make_episodes(Benchmark.of(other, "sinusoid"))
    code, err = run(capsys, "evaluate", "--params", params_file, "--model", made["model"], "--out", tmp_path / "e.json")
    assert_bad_input(code, err, "episodes/sinusoid.pt", "other settings")


def test_corrupt_evaluation_files_are_named(made, tmp_path, capsys):
    good = json.loads(made["evaluation"].read_text())
    files = corrupt_files(made, tmp_path / "files", made["evaluation"])
    files["short-per-episode"] = _write_json(tmp_path / "short.json", {**good, "per_episode": good["per_episode"][:3]})
    files["text-seed"] = _write_json(tmp_path / "seed.json", {**good, "seed": "0"})
    files["bool-values"] = _write_json(tmp_path / "bool.json", {**good, "per_episode": [True] * good["episodes"]})

    def check(kind, path):
        code, err = run(capsys, "aggregate", "--params", made["params_file"], path, "--out", tmp_path / kind / "s.csv")
        assert_bad_input(code, err, str(path))
        assert not (tmp_path / kind).exists()
    assert_each(files, check)


def test_corrupt_history_files_are_named(made, tmp_path, capsys):
    def check(kind, path):
        history = tmp_path / kind / "sinusoid" / "maml" / "seed0" / "history.json"
        history.parent.mkdir(parents=True)
        shutil.copy(path, history)
        code, err = run(capsys, "aggregate", "--params", made["params_file"], made["evaluation"],
                        "--histories", history, "--plots", tmp_path / kind / "plots", "--out", tmp_path / kind / "s.csv")
        assert_bad_input(code, err, str(history))
        assert not (tmp_path / kind / "s.csv").exists()
    assert_each(corrupt_files(made, tmp_path / "files", made["history"]), check)


def test_the_made_files_themselves_are_accepted(made, tmp_path, capsys):
    """The control of the tests above: the undamaged files pass every command that reads them."""
    code, err = run(capsys, "evaluate", "--params", made["params_file"], "--model", made["model"],
                    "--out", tmp_path / "e.json", "--device", "cpu")
    assert code == 0, err
    code, err = run(capsys, "aggregate", "--params", made["params_file"], tmp_path / "e.json",
                    "--histories", made["history"], "--plots", tmp_path / "plots", "--out", tmp_path / "s.csv")
    assert code == 0, err
    assert math.isfinite(json.loads((tmp_path / "e.json").read_text())["mean"])


# ----------------------------------------------------------------------------- everyday mistakes (issue #37)
def _denied(monkeypatch, folder: Path) -> None:
    """`folder` without write permission. As root (tests in containers) permissions do not bind, so
    there os.access answers as it does for a user without them."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: (
            False if mode & os.W_OK and (Path(path) == folder or folder in Path(path).parents) else real(path, mode, *a, **k)))


def test_output_folders_without_write_permission_are_refused_before_any_work(made, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    _denied(monkeypatch, locked)
    try:
        for argv, flag in [
            (["train", "-b", "sinusoid", "-a", "maml", "--out", locked / "run"], "--out"),
            (["train", "-b", "sinusoid", "-a", "maml", "--out", locked], "--out"),
            (["evaluate", "--model", made["model"], "--out", locked / "e.json"], "--out"),
            (["aggregate", made["evaluation"], "--out", locked / "s.csv"], "--out"),
            (["aggregate", made["evaluation"], "--out", tmp_path / "s.csv", "--plots", locked / "plots"], "--plots"),
            (["study", "mtnet", "--out", locked], "--out"),
        ]:
            code, err = run(capsys, *argv, "--params", made["params_file"], "--device", "cpu") if argv[0] != "aggregate" \
                else run(capsys, *argv, "--params", made["params_file"])
            assert_bad_input(code, err, flag, str(locked))
            assert "training" not in err and "resuming" not in err, argv  # refused before the work
        code, err = run(capsys, "adapt", "--model", made["model"], "--support", tmp_path, "--query", tmp_path,
                        "--out", locked / "p.csv")
        assert_bad_input(code, err, "--out", str(locked))
        # the data folder `metalearn split` writes the episodes to (data.root)
        params = deep_merge(made["params"], {"data": {"root": str(locked / "data")}})
        code, err = run(capsys, "split", "-b", "sinusoid", "--params", write_params(tmp_path / "p.yaml", params))
        assert_bad_input(code, err, "data.root", str(locked))
        assert list(locked.iterdir()) == [] and not (tmp_path / "s.csv").exists()
    finally:
        locked.chmod(0o755)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming width x height pixels, with no pixels: a decompression bomb as Pillow
    sees it before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def drawings_task(tmp_path_factory) -> dict:
    """An untrained Omniglot MAML model file and support/query folders of drawings (test_adapt's)."""
    from conftest import quick_params
    from test_adapt import drawing, image_folder, save_untrained

    root = tmp_path_factory.mktemp("drawings")
    model = save_untrained(quick_params(root), "omniglot-5w1s", "maml", root / "model.pt")
    return {"model": model, "make": lambda name: (image_folder(root / name / "support", {"a": 1, "b": 1, "c": 1}, drawing),
                                                  image_folder(root / name / "query", {"a": 2, "b": 2, "c": 2}, drawing))}


@pytest.mark.parametrize("where", ["support", "query"])
@pytest.mark.parametrize("size", [(30000, 30000), (10000, 10000)])  # Pillow's error, and its warning
def test_an_image_too_large_to_be_a_drawing_is_refused_unread(drawings_task, tmp_path, capsys, where, size):
    """A decompression bomb (a few hundred bytes claiming 900 or 100 million pixels) used to end in
    Pillow's DecompressionBombError traceback (exit 3), or be decoded into gigabytes."""
    support, query = drawings_task["make"](f"bomb-{where}-{size[0]}")
    bomb = (support if where == "support" else query) / "a" / "huge.png"
    bomb.write_bytes(_png_claiming(*size))
    out = tmp_path / "p.csv"
    code, err = run(capsys, "adapt", "--model", drawings_task["model"], "--support", support, "--query", query,
                    "--out", out, "--device", "cpu")
    assert_bad_input(code, err, str(bomb), "too large", f"{size[0]}x{size[1]}")
    assert not out.exists() and not out.with_name("p.csv.part").exists()


def test_an_image_too_small_to_carry_a_drawing_is_read_with_a_warning_naming_it(drawings_task, tmp_path, capsys):
    from PIL import Image

    support, query = drawings_task["make"]("tiny")
    Image.new("L", (1, 1), 255).save(query / "b" / "dot.png")
    out = tmp_path / "p.csv"
    code, err = run(capsys, "adapt", "--model", drawings_task["model"], "--support", support, "--query", query,
                    "--out", out, "--device", "cpu")
    assert code == 0, err
    assert f"warning: {query / 'b' / 'dot.png'}: 1x1 pixels, too small to carry a drawing" in err
    assert "b/dot.png" in out.read_text()  # still classified, as asked


def test_a_cuda_device_this_machine_lacks_is_refused_naming_the_flag(made, tmp_path, capsys):
    """`--device cuda` without CUDA, or `cuda:3` on a machine with fewer GPUs: before any work."""
    count = torch.cuda.device_count()
    devices = [f"cuda:{count}"] + (["cuda:3"] if count <= 3 else []) + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        for argv in (["train", "-b", "sinusoid", "-a", "maml", "--out", tmp_path / "m", "--params", made["params_file"]],
                     ["evaluate", "--model", made["model"], "--out", tmp_path / "e.json", "--params", made["params_file"]],
                     ["study", "mtnet", "--out", tmp_path / "s", "--params", made["params_file"]],
                     ["adapt", "--model", made["model"], "--support", tmp_path, "--query", tmp_path]):
            code, err = run(capsys, *argv, "--device", device)
            assert_bad_input(code, err, "argument --device", repr(device))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", ["-1", "1.5", "abc", "", "1e3", " 2"])
def test_a_negative_or_non_integer_seed_is_refused_naming_the_flag(made, tmp_path, capsys, seed):
    code, err = run(capsys, "train", "-b", "sinusoid", "-a", "maml", "--seed", seed, "--out", tmp_path / "m",
                    "--params", made["params_file"])
    if seed == " 2":  # int() reads it as 2: accepted, as before
        assert code == 0, err
        return
    assert_bad_input(code, err, "argument --seed")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_truncated_episodes_file_gives_the_command_that_rebuilds_it(made, tmp_path, capsys, damage):
    """With the settings file and profile this command was given, so that it rebuilds the file read."""
    params = deep_merge(made["params"], {"data": {"root": str(tmp_path / "data")}})
    params_file = write_params(tmp_path / "my-settings.yaml", params)
    episodes = tmp_path / "data" / "episodes" / "sinusoid.pt"
    if damage == "truncated":
        episodes.parent.mkdir(parents=True)
        episodes.write_bytes(made["episodes"].read_bytes()[:500])
    code, err = run(capsys, "evaluate", "--params", params_file, "--model", made["model"], "--out", tmp_path / "e.json")
    assert_bad_input(code, err, str(episodes), f"`metalearn split -b sinusoid --params {params_file}`")
    assert not (tmp_path / "e.json").exists()
    code, err = run(capsys, "evaluate", "--params", params_file, "--profile", "quick", "--model", made["model"],
                    "--out", tmp_path / "e.json")
    assert_bad_input(code, err, f"`metalearn split -b sinusoid --params {params_file} --profile quick`")
    before = episodes.read_bytes() if episodes.exists() else None
    assert before is None or len(before) == 500  # not touched


def test_errors_about_the_settings_name_the_file_given_with_params(tmp_path, capsys):
    """Not "params.yaml", when the settings came from another file."""
    given = tmp_path / "my-settings.yaml"
    given.write_text(RAW_TEXT.replace("profile: default\n", "profile: nosuch\n", 1))
    for argv in (["split"], ["train", "-b", "sinusoid", "-a", "maml", "--out", tmp_path / "m"]):
        code, err = run(capsys, *argv, "--params", given)
        assert_bad_input(code, err, f"profile: unknown profile 'nosuch'; {given} defines")
        assert "params.yaml" not in err
    given.write_text(RAW_TEXT)
    for argv, names in [
        (["split", "-b", "nosuch"], ["benchmarks.nosuch: no such benchmark", f"{given} has"]),
        (["study", "protocols", "--out", tmp_path / "s"], [f"studies.protocols: not configured in {given}"]),
        (["train", "-b", "sinusoid", "-a", "reptile", "--out", tmp_path / "m"], ["benchmarks.sinusoid.algorithms.reptile"]),
    ]:
        code, err = run(capsys, *argv, "--params", given)
        assert_bad_input(code, err, *names)
        assert "params.yaml" not in err
    raw = copy.deepcopy(RAW)
    raw["benchmarks"]["omniglot-5w1s"]["ways"] = 80  # more than the split's classes: a semantic check
    given.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, err = run(capsys, "split", "--params", given)
    assert_bad_input(code, err, f"{given} (profile ", "is invalid", "benchmarks.omniglot-5w1s.ways")
    assert "params.yaml" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists()


def test_a_second_training_into_the_same_folder_is_refused_and_the_first_is_unharmed(tmp_path, capsys):
    """Two trainings into one --out used to write one checkpoint and model in turns. The second is
    refused by the first's lock (exit 2, the folder named); the first, paused while the second tries
    (so they overlap whatever the machine's speed), ends with the model it makes alone."""
    import os
    import signal
    import sys
    import time

    from conftest import quick_params

    params = quick_params(tmp_path, benchmarks={"sinusoid": {"train": {"iterations": 40, "checkpoint_every": 10}}})
    params_file = write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "shared"
    argv = ["train", "--params", str(params_file), "-b", "sinusoid", "-a", "maml", "--device", "cpu"]
    first = subprocess.Popen([sys.executable, "-m", "metalearn.cli", *argv, "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    lock = out / cli.LOCK_NAME
    try:
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):  # locked (the pid follows the lock)
            assert first.poll() is None and time.time() < deadline, first.communicate()[0]
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        code, err = run(capsys, *argv, "--out", out)
        assert_bad_input(code, err, f"--out {out}", "another training is writing there", f"process {first.pid}")
        assert "training maml" not in err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    finally:
        first.send_signal(signal.SIGCONT)
    log = first.communicate(timeout=300)[0]
    assert first.returncode == 0, log
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "history.json", "model.pt"]  # lock released

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the first (OMP_NUM_THREADS=1): the same arithmetic
    try:
        code, err = run(capsys, *argv, "--out", tmp_path / "alone")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    alone = torch.load(tmp_path / "alone" / "model.pt", weights_only=True)["state_dict"]
    shared = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert alone.keys() == shared.keys() and all(torch.equal(alone[k], shared[k]) for k in alone)
    # and once the first has ended, the folder is free again: a rerun resumes (here: is complete)
    code, err = run(capsys, *argv, "--out", out)
    assert code == 0, err


def test_a_model_fetched_from_mlflow_is_checked_as_a_local_model_file_is(made, tmp_path, capsys, monkeypatch):
    """`metalearn adapt --model runs:/...` used to torch.load the fetched file unchecked: a truncated
    artifact or a checkpoint logged as the model ended in a traceback."""
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("adapt", artifact_location=str(tmp_path / "artifacts"))
    (tmp_path / "support").mkdir()
    (tmp_path / "query").mkdir()
    truncated = tmp_path / "truncated" / "model.pt"
    truncated.parent.mkdir()
    truncated.write_bytes(made["model"].read_bytes()[:1000])
    checkpoint = tmp_path / "checkpoint" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(made["checkpoint"].read_bytes())
    for local, kind in [(truncated, "not a readable model file"), (checkpoint, "training checkpoint, not a model")]:
        run_id = client.create_run(experiment).info.run_id
        client.log_artifact(run_id, str(local), "model")  # as tracking.log_model does
        uri = f"runs:/{run_id}/model"
        code, err = run(capsys, "adapt", "--model", uri, "--support", tmp_path / "support", "--query",
                        tmp_path / "query", "--out", tmp_path / "p.csv")
        assert_bad_input(code, err, uri, "fetched from MLflow", kind)
        code, err = run(capsys, "adapt", "--model", local, "--support", tmp_path / "support", "--query",
                        tmp_path / "query", "--out", tmp_path / "p.csv")
        assert_bad_input(code, err, str(local), kind)  # the same check as the local file
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_training_without_its_prepared_images_names_the_command_that_makes_them(made, tmp_path, capsys, damage):
    """A missing cache used to end in `[Errno 2] No such file or directory` (exit 1), a truncated
    one in torch's traceback."""
    params = deep_merge(made["params"], {"data": {"root": str(tmp_path / "data")}})
    params_file = write_params(tmp_path / "p.yaml", params)
    cache = tmp_path / "data" / "prepared" / "omniglot-small.pt"
    if damage == "truncated":
        cache.parent.mkdir(parents=True)
        cache.write_bytes(Path(made["params"]["data"]["root"], "prepared", "omniglot-small.pt").read_bytes()[:4096])
    code, err = run(capsys, "train", "--params", params_file, "-b", "omniglot-5w1s", "-a", "maml",
                    "--out", tmp_path / "m", "--device", "cpu")
    assert_bad_input(code, err, str(cache), f"`metalearn prepare --dataset omniglot-small --params {params_file}`")
    assert not (tmp_path / "m").exists()


def test_runtimes_of_a_folder_that_holds_other_tsv_files_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.tsv").write_text("s\n1\n")
    code, err = run(capsys, "runtimes", "--dir", tmp_path, "--out", tmp_path / "r.csv")
    assert_bad_input(code, err, f"--dir {tmp_path}", "not the pipeline's runtime files")
    assert not (tmp_path / "r.csv").exists()
