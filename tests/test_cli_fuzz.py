"""Generated command lines (issue #37): every `metalearn` subcommand, each of its flags and
positionals given random or garbage values, or files of every kind (missing, empty, a folder, random
bytes, text, another command's output, a valid one). Whatever the input, the command ends with a
message and exit code 0, 1, 2 or 75, never exit 3 (a bug) or a traceback.

The flags are read from the parser itself (metalearn.cli.parser), so a new flag is fuzzed as soon as
it exists. Each command line runs in-process (cli.main) in a fresh copy of a small project folder:
a tiny valid params.yaml (2 meta-iterations, an empty data mirror: nothing is downloaded), a model,
its checkpoint, history and evaluation, saved episodes, image folders for `adapt` (with an image too
large to decode and one of 1x1 pixel) and damaged files. Half the command lines start from a valid
one (VALID) damaged in one or two places, so that they get past the first check; the others are
drawn whole. Not fuzzed: --track (MLflow's store, its own tests) and --help. 15 command lines per
subcommand (180 in all, about 20 s); FUZZ_EXAMPLES=200 for a longer search (passed: 2400 command lines).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import quick_params, write_params
from metalearn import cli
from metalearn.config import Benchmark
from metalearn.data.download import MIRROR_ENV

SKIPPED_FLAGS = {"--track", "--help"}

GARBAGE = ["", " ", "-", "-1", "0", "1", "3", "007", "1.5", "-0.5", "1e9", "nan", "inf", "-inf", str(2**40),
           str(2**64), "abc", "ünïcødé", "a b", "\udcff", "..", "/", "/dev/null", "/proc/self", "~",
           "cuda", "cuda:3", "cuda:-1", "cuda:x", "cpu", "mps", "meta", "auto", "sinusoid", "maml", "quick",
           "paper", "miniimagenet", "omniglot", "runs:/0123456789abcdef/model", "models:/x/1", "file:///nowhere"]
# What a flag plausibly takes, by its dest, besides garbage: deeper code runs when some are valid.
PLAUSIBLE = {
    "params": ["params.yaml", "other.yaml", "files/random", "files/empty", "files/list.yaml", "files/dir",
               "files/model.pt", "missing.yaml"],
    "profile": ["quick", "default", "paper", "nosuch"],
    "benchmark": ["sinusoid", "omniglot-5w1s", "nosuch", "continual-sinusoid"],
    "algorithm": ["maml", "fomaml", "reptile", "nosuch"],
    "dataset": ["omniglot-small", "miniimagenet"],
    "seed": ["0", "1", "-1", "1.5", str(2**32)],
    "model": ["files/model.pt", "files/checkpoint.pt", "files/episodes.pt", "files/omniglot.pt", "files/dir",
              "files/random", "files/empty", "missing.pt", "files", "runs:/0123456789abcdef/model"],
    "out": ["out", "out/x.csv", "files/model.pt", "files/dir", "files/random/x", "files"],
    "plots": ["plots", "files/random", "files/dir"],
    "support": ["support", "support-bomb", "support-tiny", "support-truncated", "files/dir", "files/random", "query",
                "missing"],
    "query": ["query", "query-bomb", "query-tiny", "query-truncated", "files/dir", "files/empty", "support", "missing"],
    "inputs": ["files/eval.json", "files/history.json", "files/random", "files/empty", "files/model.pt",
               "files/list.json", "missing.json", "files/dir"],
    "histories": ["files/history.json", "files/eval.json", "files/random", "files/dir", "missing.json"],
    "steps": ["0", "1", "2", "-3", "two"],
    "device": ["cpu", "auto", "cuda", "cuda:3", "gpu7"],
    "time_limit": ["1", "0", "-1", "2h", "1:30:00", "x", "1:2:3:4"],
    "dir": ["runtimes", "runtimes-bad", "runtimes-bad/train", "files/dir", "files/random", "missing"],
    "records": ["records", "files/dir", "files/random", "missing"],
    "models": ["files", "files/dir", "missing"],
    "evals": ["files", "files/dir", "missing"],
    "runtimes": ["runtimes", "files/dir", "missing"],
    "timing": ["timing.csv", "files/dir", "files/random/x"],
    "only": ["quick/sinusoid/*", "*", "["],
}
TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = _subcommands()


def value(dest: str):
    """Mostly a plausible value of the flag (valid or a near miss), else garbage or random text."""
    plausible = st.sampled_from(PLAUSIBLE.get(dest, GARBAGE))
    return st.one_of(plausible, plausible, plausible, st.sampled_from(GARBAGE), TEXT)


# A valid command line of each subcommand (the project's files; test_valid_command_lines_do_the_work),
# which the generator also starts from and damages in one or two places, to reach past the first check.
VALID = {
    "download": ["download"],  # (the mirror is empty: exit 1, nothing to download from)
    "prepare": ["prepare", "--dataset", "omniglot-small"],
    "split": ["split", "-b", "sinusoid"],
    "train": ["train", "-b", "sinusoid", "-a", "maml", "--out", "out", "--device", "cpu"],
    "evaluate": ["evaluate", "--model", "files/model.pt", "--out", "e.json", "--device", "cpu"],
    "aggregate": ["aggregate", "files/eval.json", "--histories", "files/history.json", "--out", "s.csv",
                  "--plots", "plots"],
    "study": ["study", "mtnet", "--out", "studies", "--device", "cpu"],
    "adapt": ["adapt", "--model", "files/omniglot.pt", "--support", "support", "--query", "query", "--out",
              "p.csv", "--device", "cpu"],
    "runtimes": ["runtimes", "--dir", "runtimes", "--out", "r.csv"],
    "record": ["record", "--out", "recorded"],
    "verify": ["verify", "--records", "records"],
    "pages": ["pages", "--records", "records"],
}


def _parts(argv: list[str]) -> list[list[str]]:
    """argv after the subcommand as groups: a flag and its values, or a positional."""
    groups: list[list[str]] = []
    for word in argv[1:]:
        if word.startswith("-") or not groups or not groups[-1][0].startswith("-"):
            groups.append([word])
        else:
            groups[-1].append(word)
    return groups


def _action(command: str, flag: str) -> argparse.Action | None:
    return next((a for a in COMMANDS[command]._actions if flag in a.option_strings), None)


@st.composite
def damaged(draw, command: str) -> list[str]:
    """VALID[command] with one or two of: a flag's value replaced (plausible, garbage or random),
    a flag left out, another flag added, a positional replaced."""
    parts = _parts(VALID[command])
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if kind == "add" or not parts:
            extra = draw(command_line(command))
            if len(extra) > 1:
                parts.append(draw(st.sampled_from(_parts(extra))))
            continue
        i = draw(st.integers(0, len(parts) - 1))
        if kind == "drop":
            del parts[i]
            continue
        action = _action(command, parts[i][0])
        if action is None:  # a positional
            positional = next(a for a in COMMANDS[command]._actions if not a.option_strings)
            parts[i] = [draw(value(positional.dest))]
        elif action.nargs != 0:
            parts[i] = [parts[i][0], draw(value(action.dest))]
    return [command, *(word for part in parts for word in part)]


@st.composite
def command_line(draw, command: str) -> list[str]:
    """`command` with a random subset of its flags (each with a plausible, garbage or random value)
    and its positionals, in a random order."""
    parts: list[list[str]] = []
    positionals: list[str] = []
    for action in COMMANDS[command]._actions:
        if not action.option_strings:  # positional
            count = {None: 1, "+": draw(st.integers(1, 3)), "*": draw(st.integers(0, 3))}.get(action.nargs, 1)
            choices = [st.sampled_from(list(action.choices))] if action.choices else []
            positionals += [draw(st.one_of(value(action.dest), *choices)) for _ in range(count)]
            continue
        if set(action.option_strings) & SKIPPED_FLAGS or not draw(st.booleans()) and not action.required:
            continue
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:  # store_true
            parts.append([flag])
        elif action.nargs in ("*", "+"):
            parts.append([flag] + [draw(value(action.dest)) for _ in range(draw(st.integers(0, 3)))])
        else:
            choices = [st.sampled_from(list(action.choices))] if action.choices else []
            parts.append([flag, draw(st.one_of(value(action.dest), *choices))])
    parts = draw(st.permutations(parts)) if parts else []
    return [command, *positionals, *(word for part in parts for word in part)]


# ----------------------------------------------------------------------------- the project folder
def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels (a decompression bomb's header; no pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _drawing(seed: int, size: int = 40) -> Image.Image:
    pixels = np.full((size, size), 255, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(6):
        x, y = rng.integers(4, size - 4, 2)
        pixels[y - 2:y + 2, x - 8 if x > 8 else 0:x + 8] = 0
    return Image.fromarray(pixels)


def _image_folders(root: Path, odd: bytes | Image.Image | None = None, name: str = "") -> None:
    for folder, per_class in (("support" + name, 1), ("query" + name, 2)):
        for c, cls in enumerate(("a", "b", "c")):
            (root / folder / cls).mkdir(parents=True)
            for i in range(per_class):
                _drawing(10 * c + i + per_class).save(root / folder / cls / f"{i}.png")
        if isinstance(odd, bytes):
            (root / folder / "a" / "odd.png").write_bytes(odd)
        elif odd is not None:
            odd.save(root / folder / "a" / "odd.png")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The folder each generated command line starts from (copied afresh for each)."""
    from metalearn import benchmarks
    from metalearn.evaluate import evaluate, write_json
    from metalearn.config import Run
    from metalearn.train import build, run_config, train
    from metalearn.data.images import preprocessing_for

    root, start = tmp_path_factory.mktemp("fuzz-project"), os.getcwd()
    files = root / "files"
    (files / "dir").mkdir(parents=True)
    quiet = lambda s: None  # noqa: E731
    params = quick_params(root, benchmarks={"sinusoid": {"train": {"iterations": 2, "checkpoint_every": 1}},
                                            "omniglot-5w1s": {"train": {"iterations": 2}}},
                          studies={"mtnet": {"iterations": 2, "degrees": [0], "inner_lrs": [0.1]}})
    params["data"] = {"root": "data", "mirror": None}
    os.chdir(root)  # data.root is relative (each command line runs in a copy of `root`)
    write_params(root / "params.yaml", params)
    other = yaml.safe_load(yaml.safe_dump(params))
    other["profile"] = "other"
    write_params(root / "other.yaml", other)
    benchmarks.make_episodes(Benchmark.of(params, "sinusoid"))
    model = train(Benchmark.of(params, "sinusoid"), "maml", 0, root / "run", device="cpu", log=quiet)
    write_json(evaluate(params, model, device="cpu", log=quiet), files / "eval.json")
    for name in ("model.pt", "checkpoint.pt", "history.json"):
        shutil.copy(root / "run" / name, files / name)
    shutil.copy(benchmarks.episodes_path(params, "sinusoid"), files / "episodes.pt")
    omniglot = build(Run.of(Benchmark.of(params, "omniglot-5w1s"), "maml", 0), torch.device("cpu"))  # untrained, for adapt
    config = run_config(params, "omniglot-5w1s", "maml", 0)
    torch.save({"format": 1, "config": config, "state_dict": omniglot.state_dict(), "train_seconds": 0.0,
                "iterations": 0, "preprocessing": preprocessing_for(config["settings"])}, files / "omniglot.pt")
    (files / "random").write_bytes(np.random.default_rng(0).bytes(2048))
    (files / "empty").write_bytes(b"")
    (files / "list.yaml").write_text("- a\n- b\n")
    (files / "list.json").write_text(json.dumps([1, 2]))
    _image_folders(root)
    _image_folders(root, _png_header(30000, 30000), "-bomb")
    _image_folders(root, Image.new("L", (1, 1), 255), "-tiny")
    png = io.BytesIO()
    _drawing(0).save(png, format="PNG")
    _image_folders(root, png.getvalue()[:120], "-truncated")
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (root / "runtimes" / "train" / "sinusoid" / "maml").mkdir(parents=True)
    (root / "runtimes" / "train" / "sinusoid" / "maml" / "seed0.tsv").write_text(
        header + "2.5\t0:00:02\t300\t900\t280\t290\t0\t1\t95\t2.4\n")
    (root / "runtimes-bad" / "train").mkdir(parents=True)
    (root / "runtimes-bad" / "train" / "x.tsv").write_text("s\n1\n")  # not where, nor what, Snakemake writes
    (root / "runtimes-bad" / "train" / "y.tsv").write_bytes(b"\xff\xfe\x00")
    (root / "records").mkdir()
    (root / "mirror").mkdir()
    os.chdir(start)
    return root


@pytest.fixture
def fresh(project, tmp_path, monkeypatch):
    """A function that gives each generated command line its own copy of the project, as cwd."""
    monkeypatch.setenv(MIRROR_ENV, str(project / "mirror"))  # empty: nothing is downloaded
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    counter, start = iter(range(10**6)), os.getcwd()

    def copy() -> Path:
        os.chdir(start)
        for used in tmp_path.glob("run*"):  # the previous command line's copy (a few MB each)
            shutil.rmtree(used, ignore_errors=True)
        folder = tmp_path / f"run{next(counter)}"
        shutil.copytree(project, folder, symlinks=True)
        os.chdir(folder)
        return folder
    yield copy
    os.chdir(start)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 15)), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_generated_command_lines_never_end_in_a_bug(fresh, command, data):
    argv = data.draw(st.one_of(damaged(command), command_line(command)))
    fresh()
    # (text streams: a name that is not UTF-8, "\udcff" as Python reads it from argv, is printed by the
    # real stderr with backslashes; pytest's capture would fail on it instead)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    err = err.getvalue()
    shown = f"metalearn {' '.join(map(repr, argv))} -> exit {code}:\n{err[-3000:]}"
    assert code in (0, 1, 2, cli.EXIT_SLICE_ENDED), shown
    assert "Traceback" not in err + out.getvalue() and "bug in metalearn" not in err, shown


def test_valid_command_lines_do_the_work(fresh, capsys):
    """The control: the valid command lines the generator starts from pass every check (so the
    damaged ones reach past argument parsing, not only into its errors)."""
    expected = {"download": 1, "prepare": 1, "verify": 2}  # the mirror is empty; no records
    for command, argv in VALID.items():
        fresh()
        capsys.readouterr()
        assert cli.main(argv) == expected.get(command, 0), (argv, capsys.readouterr().err[-2000:])
