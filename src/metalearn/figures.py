"""The names of the results' figure files (drawn by metalearn.report): what the pipeline plans, read
without matplotlib or torch (every Snakemake start plans)."""
from __future__ import annotations

from pathlib import Path

from metalearn.rl import RL_TASKS

KINDS = ("curves", "scores", "paired")


def plot_kinds(bench: dict) -> tuple[str, ...]:
    """The figures of a benchmark, from its params.yaml settings."""
    if bench["task"] == "continual":  # forgetting curves (metalearn.continual.plot)
        return KINDS + ("continual",)
    if not bench.get("eval_curve") and bench["task"] not in RL_TASKS:  # RL: always the return vs steps
        return KINDS
    return KINDS + (("steps", "fits") if bench["task"] == "sinusoid" else ("steps",))


def plot_paths(folder: Path, benchmark: str, kinds: tuple[str, ...] = KINDS) -> list[Path]:
    return [Path(folder) / f"{benchmark}-{kind}.png" for kind in kinds]
