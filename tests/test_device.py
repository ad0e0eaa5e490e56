"""Device handling: `--device` and CUDA_VISIBLE_DEVICES decide where metalearn runs, and a model trained
on any device loads and scores on a CPU-only machine.

Tests marked `device` run on METALEARN_TEST_DEVICE (default cpu): bench/gpu_check.sh runs them with
`cuda` on a GPU machine, where "trained on the GPU, scored by a process that sees no GPU" is the real
check; on the CPU they hold too, for the same code paths.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, write_params
from metalearn.config import Benchmark

DEVICE = os.environ.get("METALEARN_TEST_DEVICE", "cpu")
METALEARN = str(Path(sys.executable).parent / "metalearn")


def _cpu_only_env() -> dict:
    """The environment of a process that sees no GPU (as on a CPU-only machine)."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}


@pytest.mark.device
def test_a_model_trained_on_the_device_loads_and_scores_the_same_in_a_process_without_a_gpu(prepared_small, tmp_path):
    from metalearn.config import deep_merge
    from metalearn.evaluate import evaluate
    from metalearn.train import read_checkpoint, train

    quiet = lambda s: None  # noqa: E731
    params = deep_merge(prepared_small, {"benchmarks": {"omniglot-5w1s": {
        "train": {"iterations": 4, "checkpoint_every": 2, "log_every": 2}}}})
    model = train(Benchmark.of(params, "omniglot-5w1s"), "maml", 0, tmp_path / "run", device=DEVICE, log=quiet)
    # the model file holds CPU tensors: torch.load needs no map_location, and no CUDA, to read it
    saved = torch.load(model, weights_only=True)
    assert {t.device.type for t in saved["state_dict"].values()} == {"cpu"}
    # the checkpoint holds the device's tensors (optimizer state too); it resumes on the CPU
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt", torch.device("cpu"), quiet)
    assert state is not None and {t.device.type for t in state["algorithm"].values()} == {"cpu"}

    on_device = evaluate(params, model, device=DEVICE, log=quiet)
    out = tmp_path / "cpu.json"
    done = subprocess.run([METALEARN, "evaluate", "--params", str(write_params(tmp_path / "params.yaml", params)),
                           "--model", str(model), "--out", str(out), "--device", "auto"],
                          env=_cpu_only_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    on_cpu = json.loads(out.read_text())
    assert on_cpu["episodes"] == on_device["episodes"]
    # the same episodes, the same weights: the same accuracy up to the odd query that float rounding
    # on another device tips to the other class (exactly the same when DEVICE is the CPU)
    agree = sum(a == b for a, b in zip(on_cpu["per_episode"], on_device["per_episode"]))
    assert agree >= 0.9 * on_cpu["episodes"] and on_cpu["mean"] == pytest.approx(on_device["mean"], abs=1.0)
    if DEVICE == "cpu":
        assert on_cpu["per_episode"] == on_device["per_episode"]


@pytest.mark.device
def test_auto_and_the_device_flag_follow_cuda_visible_devices():
    """`auto` is CUDA only where torch sees a GPU; with CUDA_VISIBLE_DEVICES empty every command refuses
    `--device cuda` at parse time (exit 2, naming the option) instead of failing inside a job."""
    probe = ("import sys; from metalearn.train import pick_device; from metalearn.cli import _device;\n"
             "print(pick_device('auto'))\n"
             "try:\n    _device(sys.argv[1])\nexcept Exception as e:\n    print('refused:', e)\n")
    hidden = subprocess.run([sys.executable, "-c", probe, "cuda"], env=_cpu_only_env(), capture_output=True, text=True)
    assert hidden.returncode == 0, hidden.stderr
    assert hidden.stdout.splitlines()[0] == "cpu" and "refused:" in hidden.stdout
    done = subprocess.run([METALEARN, "train", "-b", "sinusoid", "-a", "maml", "--device", "cuda"],
                          env=_cpu_only_env(), capture_output=True, text=True)
    assert done.returncode == 2 and "--device" in done.stderr and "CUDA" in done.stderr, done.stderr
    # ... as every command that picks a device, through the same option type
    from metalearn.cli import _device, parser

    (commands,) = [a for a in parser()._actions if a.dest == "command"]
    with_device = {name for name, sub in commands.choices.items()
                   if any(a.dest == "device" and a.type is _device for a in sub._actions)}
    assert {"train", "evaluate", "study", "adapt"} <= with_device
    visible = subprocess.run([sys.executable, "-c", probe, f"cuda:{max(torch.cuda.device_count(), 1) + 7}"],
                             env={k: v for k, v in _cpu_only_env().items() if k != "CUDA_VISIBLE_DEVICES"},
                             capture_output=True, text=True)
    assert visible.stdout.splitlines()[0] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "refused:" in visible.stdout  # no such device index (or no CUDA at all)


@pytest.mark.slow
def test_gpu_check_script_runs_its_steps_on_the_cpu(tmp_path, mirror):
    """bench/gpu_check.sh --device cpu, every step cut to a minimum: the benchmarks, the paper profile's
    MAML (2 meta-iterations on omniglot-small, 5 test episodes); not the device tests, which this suite
    runs itself (on the CPU they took 11 min inside a loaded suite run)."""
    env = {**os.environ, "METALEARN_DATA_MIRROR": str(mirror), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--iterations", "2",
                           "--episodes", "5", "--dataset", "omniglot-small", "--bench", "quick", "--skip-tests",
                           "--work", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table in done.stdout
    assert "| device tests (pytest -m device) | skipped (--skip-tests) |" in table
    assert "| bench/speed.py | " in table and "speed ours maml sinusoid-10shot |" in table
    assert "| bench/memory.py | 2 rows" in table
    assert "| train: 2 meta-iterations |" in table and "| evaluate: 5 test episodes |" in table
    assert "test accuracy (5 episodes, 10 steps)" in table and "device | CPU, torch" in table  # the MAML code's 10
    history = json.loads((tmp_path / "maml" / "history.json").read_text())
    assert history[-1]["iteration"] == 2
