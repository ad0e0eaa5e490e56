"""The figures of the results, one set per benchmark (PNG, matplotlib's Agg backend):

  <benchmark>-curves.png  meta-training curves (history.json of every run; mean over seeds)
  <benchmark>-scores.png  test score of each algorithm with its 95% confidence interval
  <benchmark>-paired.png  paired comparison on the shared episodes: mean per-episode difference
                          between two algorithms with its 95% CI (an interval excluding 0 is a
                          difference the episodes resolve)
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

KINDS = ("curves", "scores", "paired")


def plot_paths(folder: Path, benchmark: str) -> list[Path]:
    return [Path(folder) / f"{benchmark}-{kind}.png" for kind in KINDS]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(histories: dict[str, list[list[dict]]], title: str, path: Path) -> Path:
    """`histories`: algorithm -> one history (list of logged records) per seed."""
    keys = sorted({k for runs in histories.values() for run in runs for record in run for k in record}
                  - {"iteration", "seconds"})
    keys = keys or ["loss"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for algorithm, runs in sorted(histories.items()):
            # Seeds log at the same iterations: average them point by point.
            by_iteration: dict[int, list[float]] = {}
            for run in runs:
                for record in run:
                    if key in record:
                        by_iteration.setdefault(record["iteration"], []).append(record[key])
            if by_iteration:
                xs = sorted(by_iteration)
                ax.plot(xs, [sum(by_iteration[x]) / len(by_iteration[x]) for x in xs], label=algorithm)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(f"meta-training {key}")
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_scores(rows: list[dict], title: str, path: Path) -> Path:
    """`rows`: summary rows of one benchmark (algorithm, mean, ci95, metric)."""
    fig, ax = plt.subplots(figsize=(1.2 * max(len(rows), 2) + 2, 3.4))
    names = [r["algorithm"] for r in rows]
    ax.errorbar(range(len(rows)), [r["mean"] for r in rows], yerr=[r["ci95"] for r in rows],
                fmt="o", capsize=6)
    ax.set_xticks(range(len(rows)), names)
    metric = rows[0]["metric"] if rows else ""
    ax.set_ylabel("test accuracy (%)" if metric == "accuracy" else f"test {metric}")
    ax.set_title(f"{title}: mean and 95% CI")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_paired(pairs: list[dict], title: str, path: Path) -> Path:
    """`pairs`: paired comparisons of one benchmark (a, b, mean, ci95, metric), see aggregate.paired."""
    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.5 * max(len(pairs), 1)))
    if not pairs:
        ax.text(0.5, 0.5, "only one algorithm: nothing to compare", ha="center", va="center")
        ax.set_axis_off()
    else:
        ys = list(range(len(pairs)))
        ax.errorbar([p["mean"] for p in pairs], ys, xerr=[p["ci95"] for p in pairs], fmt="o", capsize=5)
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_yticks(ys, [f"{p['a']} - {p['b']}" for p in pairs])
        unit = "accuracy points" if pairs[0]["metric"] == "accuracy" else pairs[0]["metric"]
        ax.set_xlabel(f"mean per-episode difference ({unit}), 95% CI")
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{title}: paired on the same episodes")
    return _save(fig, path)


def plot_benchmark(benchmark: str, rows: list[dict], pairs: list[dict],
                   histories: dict[str, list[list[dict]]], folder: Path) -> list[Path]:
    curves, scores, paired = plot_paths(folder, benchmark)
    return [plot_curves(histories, benchmark, curves), plot_scores(rows, benchmark, scores),
            plot_paired(pairs, benchmark, paired)]
