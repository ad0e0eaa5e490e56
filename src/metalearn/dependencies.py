"""What a benchmark's jobs depend on, known without importing torch: the settings that determine its
saved episodes and the package files whose edits change a run's results. The workflow plans every
job with these (workflow/pipeline.py), and every Snakemake start plans: the task families
(metalearn.families) answer from here rather than from their torch modules.

This module is where these facts are written: the continual, alphabets and RL modules take their
`EPISODE_SETTINGS`, `episode_settings` and `source_files` (which also feed a run's settings digest)
from here. The one fact also known elsewhere, an algorithm's modules (metalearn.algorithms.source_files
finds them by importing the algorithm), is checked equal to ALGORITHM_MODULES for every algorithm by
tests/test_planning_without_torch.py, and each family's files against the modules it imports.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # .../metalearn

# ----------------------------------------------------------------------------- episode settings
# The episodes (and RL) family's: benchmarks.episode_settings
EPISODE_SETTINGS = ("task", "dataset", "split", "split_seed", "ways", "shots", "eval_queries",
                    "episode_seed", "val_tasks", "test_tasks", "degree", "frequency", "rotations", "within_alphabet")
CONTINUAL_EPISODE_SETTINGS = ("task", "subtasks", "shots", "eval_queries", "episode_seed", "val_tasks", "test_tasks")
ALPHABETS_EPISODE_SETTINGS = ("task", "dataset", "ways", "train_alphabets", "test_alphabets", "split_seed")


def episode_settings(bench: dict) -> dict:
    """The settings that determine a benchmark's saved episodes (stored with them and checked on use)."""
    return {k: bench[k] for k in EPISODE_SETTINGS if k in bench}


def continual_episode_settings(bench: dict) -> dict:
    """What the saved validation/test sequences of a continual benchmark depend on."""
    return {k: bench[k] for k in CONTINUAL_EPISODE_SETTINGS}


def alphabets_episode_settings(bench: dict) -> dict:
    """What the saved alphabet split of a multi-shot (alphabets) benchmark depends on."""
    return {k: bench[k] for k in ALPHABETS_EPISODE_SETTINGS}


# ----------------------------------------------------------------------------- source files
# algorithm -> the modules of metalearn/algorithms/ that define it, in metalearn.algorithms.source_files's
# order: its class's module, its base classes' and the algorithm modules these use, transitively.
ALGORITHM_MODULES = {
    "maml": ("maml", "base"),
    "fomaml": ("maml", "base"),
    "imaml": ("imaml", "base", "maml"),
    "leap": ("leap", "maml", "base"),
    "reptile": ("reptile", "base"),
    "warpgrad": ("warpgrad", "base", "leap", "maml"),
    "warpmaml": ("warpgrad", "base", "leap", "maml"),
    "warpleap": ("warpgrad", "base", "leap", "maml"),
    "tnet": ("mtnet", "maml", "base"),
    "mtnet": ("mtnet", "maml", "base"),
    "metasgd": ("metasgd", "maml", "base"),
    "protomaml": ("protomaml", "maml", "base"),
    "foprotomaml": ("protomaml", "maml", "base"),
    "pretrained": ("pretrained", "maml", "base"),
    "oracle": ("pretrained", "maml", "base"),
}


def algorithm_files(name: str) -> list[Path]:
    """The files that define an algorithm (metalearn.algorithms.source_files, without importing it)."""
    return [PACKAGE / "algorithms" / f"{module}.py" for module in ALGORITHM_MODULES[name]]


def continual_files(method: str) -> list[Path]:
    """A continual run's (metalearn.continual.train.source_files): that subpackage's files, models.py
    and WarpGrad's, for either method."""
    files = sorted((PACKAGE / "continual").glob("*.py")) + [PACKAGE / "models.py"]
    return files + [p for p in algorithm_files("warpgrad") if p not in files]


def alphabets_files(method: str) -> list[Path]:
    """A multi-shot run's (metalearn.alphabets.train.source_files): that subpackage's files, models.py,
    tasks.py and the method's algorithm files (the baselines adapt with reptile.py's plain SGD)."""
    files = sorted((PACKAGE / "alphabets").glob("*.py")) + [PACKAGE / "models.py", PACKAGE / "tasks.py"]
    name = {"ft": "reptile", "scratch": "reptile"}.get(method, method)
    return files + [p for p in algorithm_files(name) if p not in files]


def rl_files(algorithm: str | None = None) -> list[Path]:
    """An RL run's (metalearn.rl.train.source_files): every file of metalearn/rl, which runs every method."""
    return sorted((PACKAGE / "rl").glob("*.py"))
